"""ASR pretraining and multilingual ST training: one recipe you can read top to bottom.

    interpres train asr configs/speech/asr_small.yaml [key=value ...]
    interpres train st  configs/speech/st_small.yaml  init_encoder=runs/asr_small/model
    torchrun --nproc-per-node 2 -m interpres train st ...        (DDP, gloo on CPU)

ASR is the same recipe with English as the only target language: the decoder's first
token is ``<lang:en>``, so an ST model trained with ``transcripts: true`` also
transcribes. The steps:

1. data: the train/dev splits of every pair, read through the MuST-C reader, with fbank
   features cached once per split; batches by frames per language, drawn with
   temperature-based language sampling.
2. tokenizer: sentencepiece unigram over the targets (``<lang:xx>`` tags as symbols).
3. model: a preset from speech.model; for ST the encoder may start from an ASR model.
4. loop: label-smoothed cross-entropy + CTC on the English transcript, Adam with
   inverse-square-root warmup, gradient clipping and accumulation, SpecAugment.
5. checkpoints every ``save_interval_updates``: model, optimizer, RNG states and the
   data position, so a run killed at any moment and started again ends with exactly
   the weights of an uninterrupted run; validation loss and BLEU on dev, early
   stopping; at the end the last ``average_last`` checkpoints are averaged into
   ``OUT/model/``, a model directory that ``interpres translate --model`` loads.

Nothing here is pickled: weights and optimizer moments are safetensors, the rest JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from speech.augment import POLICIES, SpecAugmentConfig, spec_augment
from speech.config import ConfigError, config_to_dict
from speech.data.cache import interpres_home, write_json_atomic
from speech.data.mustc import MustcSplit
from speech.data.text import TARGET_LANGS
from speech.dataset import SplitFeatures, batches_by_frames, interleave_by_weight, language_weights, pad_features
from speech.evaluate import score_hypotheses  # one scoring rule for training and evaluation
from speech.features import FbankConfig
from speech.model import (PAD_ID, ModelConfig, S2TModel, ctc_loss, label_smoothed_nll_loss, load_model_dir,
                          param_count, preset, save_model_dir)
from speech.tokenizer import Tokenizer, train_st_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """A training recipe (configs/speech/{asr,st}_*.yaml); every key can be overridden."""

    task: str = "st"  # "asr": English targets only; "st": the languages below
    corpus: str = "small"  # a folder under $INTERPRES_HOME/speech/, or a path to a MuST-C root
    langs: list[str] = field(default_factory=lambda: list(TARGET_LANGS))
    transcripts: bool = True  # st: also train <lang:en> transcription on the English sides
    asr_corpus_pair: str = "en-asr"  # asr (and st transcripts): extra English-only pair, if present
    out: str = "runs/st"
    model: str = "small"  # preset of speech.model
    model_overrides: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 2000
    init_encoder: str | None = None  # model directory whose encoder starts this one (ASR pretraining)
    max_frames: int = 12000  # fbank frames per batch (batch size x longest utterance)
    max_items: int = 128
    update_freq: int = 1  # gradient accumulation
    lr: float = 2e-3
    warmup_updates: int = 500
    warmup_init_lr: float = 1e-7
    max_updates: int = 5000
    max_epochs: int = 100
    max_seconds: float = 0.0  # stop (after a checkpoint) when the run has trained this long; 0: no limit
    clip_norm: float = 10.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    ctc_weight: float = 0.3
    specaugment: str = "LB"  # a policy of speech.augment.POLICIES, or "none"
    lang_temperature: float = 3.0
    save_interval_updates: int = 250
    keep_last: int = 5
    validate_interval_updates: int = 250
    dev_bleu_max: int = 100  # dev utterances per language decoded for BLEU/WER at validation
    patience: int = 0  # stop after this many validations without a better dev loss; 0: never
    average_last: int = 5
    seed: int = 1
    threads: int = 0  # torch intra-op threads; 0: torch's default

    def __post_init__(self) -> None:
        if self.task not in ("asr", "st"):
            raise ConfigError(f"task must be 'asr' or 'st', got '{self.task}'")
        if self.specaugment != "none" and self.specaugment not in POLICIES:
            raise ConfigError(f"specaugment must be 'none' or one of {sorted(POLICIES)}, got '{self.specaugment}'")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ConfigError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.update_freq < 1 or self.max_frames < 1:
            raise ConfigError("update_freq and max_frames must be at least 1")

    @property
    def targets(self) -> list[str]:
        """The target languages the decoder learns (``en`` means transcription)."""
        if self.task == "asr":
            return ["en"]
        return list(self.langs) + (["en"] if self.transcripts else [])


# ----------------------------------------------------------------------------- data


@dataclass
class LangData:
    """The examples of one target language: cached features plus token ids."""

    lang: str
    feats: list[SplitFeatures]  # one per source split
    items: list[tuple[int, int]]  # (which feats, row)
    targets: list[list[int]]  # decoder sequence: [tag, pieces..., eos]
    ctc: list[list[int]]  # English pieces for CTC
    refs: list[str]  # target text, for BLEU

    @property
    def lengths(self) -> list[int]:
        return [int(self.feats[f].lengths[i]) for f, i in self.items]

    def features(self, k: int) -> torch.Tensor:
        f, i = self.items[k]
        return self.feats[f].get(i)


def corpus_root(corpus: str) -> Path:
    path = Path(corpus).expanduser()
    if path.is_dir():
        return path
    root = interpres_home() / "speech" / corpus
    if not root.is_dir():
        raise ConfigError(f"corpus: '{corpus}' is neither a folder nor a corpus under {root.parent} "
                          f"(build one with 'interpres data speech --size {corpus}')")
    return root


def read_texts(cfg: TrainConfig, split: str) -> dict[str, list[tuple[MustcSplit, int, str, str]]]:
    """Per target language: (split object, row, target text, English transcript).

    English (``en``) examples are the sentences of ``asr_corpus_pair`` (when the corpus
    has it) and the English sides of every pair, each sentence once: the pairs share
    their English audio.
    """
    root = corpus_root(cfg.corpus)
    out: dict[str, list[tuple[MustcSplit, int, str, str]]] = {lang: [] for lang in cfg.targets}
    pairs = [f"en-{lang}" for lang in cfg.langs]
    if "en" in out and (root / cfg.asr_corpus_pair).is_dir():
        pairs = [cfg.asr_corpus_pair] + pairs
    seen_en: set[str] = set()
    for pair in pairs:
        s = MustcSplit(root, pair, split)
        for i, seg in enumerate(s):
            if s.tgt_lang in out and seg.tgt is not None:
                out[s.tgt_lang].append((s, i, seg.tgt, seg.src))
            if "en" in out and seg.src not in seen_en:
                seen_en.add(seg.src)
                out["en"].append((s, i, seg.src, seg.src))
    missing = [lang for lang, rows in out.items() if not rows]
    if missing:
        raise ConfigError(f"corpus {root}: no {split} data for {', '.join(missing)}")
    return out


def build_lang_data(texts: dict[str, list[tuple[MustcSplit, int, str, str]]], tok: Tokenizer,
                    fbank_cfg: FbankConfig) -> dict[str, LangData]:
    cache: dict[tuple[str, str], SplitFeatures] = {}
    data = {}
    for lang, rows in texts.items():
        feats: list[SplitFeatures] = []
        index: dict[tuple[str, str], int] = {}
        items = []
        for split, i, _, _ in rows:
            key = (split.pair, split.split)
            if key not in cache:
                cache[key] = SplitFeatures.load_or_compute(split, fbank_cfg)
            if key not in index:
                index[key] = len(feats)
                feats.append(cache[key])
            items.append((index[key], i))
        data[lang] = LangData(
            lang, feats, items,
            targets=[tok.target_ids(tgt, lang) for _, _, tgt, _ in rows],
            ctc=[tok.encode(src) for _, _, _, src in rows],
            refs=[tgt for _, _, tgt, _ in rows],
        )
    return data


def make_batch(data: LangData, idx: list[int], augment: SpecAugmentConfig | None,
               gen: torch.Generator | None) -> dict[str, torch.Tensor]:
    feats = [data.features(k) for k in idx]
    if augment is not None:
        feats = [spec_augment(f, augment, generator=gen) for f in feats]
    x, x_lens = pad_features(feats)
    seqs = [data.targets[k] for k in idx]
    u = max(len(s) for s in seqs) - 1
    prev = torch.full((len(idx), u), PAD_ID, dtype=torch.long)
    tgt = torch.full((len(idx), u), PAD_ID, dtype=torch.long)
    for b, s in enumerate(seqs):
        prev[b, : len(s) - 1] = torch.tensor(s[:-1])
        tgt[b, : len(s) - 1] = torch.tensor(s[1:])
    ctc = [data.ctc[k] for k in idx]
    ctc_lens = torch.tensor([len(c) for c in ctc], dtype=torch.long)
    ctc_t = torch.full((len(idx), max(1, int(ctc_lens.max()))), PAD_ID, dtype=torch.long)
    for b, c in enumerate(ctc):
        ctc_t[b, : len(c)] = torch.tensor(c, dtype=torch.long)
    return {"features": x, "feat_lens": x_lens, "prev": prev, "target": tgt, "ctc": ctc_t, "ctc_lens": ctc_lens}


# ----------------------------------------------------------------------------- model


def inverse_sqrt_lr(update: int, cfg: TrainConfig) -> float:
    """fairseq's inverse_sqrt: linear warmup to ``lr``, then ``lr * sqrt(warmup / update)``."""
    if update < cfg.warmup_updates:
        return cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * update / max(1, cfg.warmup_updates)
    return cfg.lr * math.sqrt(cfg.warmup_updates / max(1, update)) if cfg.warmup_updates else cfg.lr


def init_encoder_from(model: S2TModel, path: str) -> int:
    """Copy the encoder weights of the model directory ``path`` into ``model``."""
    src, _ = load_model_dir(path)
    src_state = {k: v for k, v in src.state_dict().items() if k.startswith("encoder.")}
    own = model.state_dict()
    bad = [k for k, v in src_state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ConfigError(f"init_encoder: {path} has an encoder of another shape ({bad[0]}); "
                          f"train the ASR model with the same model preset")
    model.load_state_dict(src_state, strict=False)
    return len(src_state)


# ----------------------------------------------------------------------------- checkpoints


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return {"rng.torch": torch.get_rng_state()}, {"python_random": list(random.getstate()[1]),
                                                  "python_random_pos": random.getstate()[2]}


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Write ``path/`` (model, optimizer moments, RNG, JSON state) atomically."""
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = opt.state.get(p, {})
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().clone().contiguous()
    rng_t, rng_j = _rng_state()
    tensors.update(rng_t)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "checkpoint.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, **rng_j}, indent=1))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    tensors = load_file(str(path / "checkpoint.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if st:
            opt.state[p] = st
    state = json.loads((path / "state.json").read_text())
    torch.set_rng_state(tensors["rng.torch"])
    random.setstate((3, tuple(state.pop("python_random")), state.pop("python_random_pos")))
    return state


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the model weights of ``paths`` (fairseq's average_checkpoints)."""
    total: dict[str, torch.Tensor] = {}
    for p in paths:
        tensors = load_file(str(p / "checkpoint.safetensors"))
        for k, v in tensors.items():
            if k.startswith("model."):
                v = v.double() if v.is_floating_point() else v
                total[k[6:]] = total[k[6:]] + v if k[6:] in total and v.is_floating_point() else v
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    found = [p for p in ckpt_dir.glob("checkpoint_*") if p.is_dir() and p.name.split("_")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def dev_loss(model: S2TModel, data: dict[str, LangData], cfg: TrainConfig) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for lang, d in data.items():
        for idx in batches_by_frames(d.lengths, cfg.max_frames, cfg.max_items, shuffle=False):
            b = make_batch(d, idx, None, None)
            out = model(b["features"], b["feat_lens"], b["prev"])
            _, nll = label_smoothed_nll_loss(out["logits"], b["target"], 0.0, PAD_ID)
            total += float(nll)
            tokens += int((b["target"] != PAD_ID).sum())
    model.train()
    return total / max(1, tokens)


@torch.no_grad()
def dev_scores(model: S2TModel, tok: Tokenizer, data: dict[str, LangData], cfg: TrainConfig) -> dict[str, float]:
    """Greedy-decoded BLEU (WER for en) on the first ``dev_bleu_max`` dev utterances of each language."""
    from speech.decode import DecodingOptions, greedy_search  # noqa: PLC0415 - decode imports the model

    model.eval()
    scores = {}
    for lang, d in data.items():
        n = min(cfg.dev_bleu_max, len(d.items))
        hyps = [""] * n
        for idx in batches_by_frames(d.lengths[:n], cfg.max_frames, cfg.max_items, shuffle=False):
            b = make_batch(d, idx, None, None)
            enc = model.encode(b["features"], b["feat_lens"])
            results = greedy_search([model], [enc], [tok.prefix(lang)] * len(idx), DecodingOptions(beam_size=1))
            for k, r in zip(idx, results):
                hyps[k] = tok.decode(r.tokens)
        scores.update(score_hypotheses(lang, hyps, d.refs[:n]))
    model.train()
    return scores


# ----------------------------------------------------------------------------- the loop


def _dist() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_batches(data: dict[str, LangData], cfg: TrainConfig, epoch: int, world: int) -> list[tuple[str, list[int]]]:
    """The whole epoch's (language, batch) sequence: a pure function of the seed and epoch."""
    per_lang = {lang: batches_by_frames(d.lengths, cfg.max_frames, cfg.max_items, seed=cfg.seed, epoch=epoch)
                for lang, d in data.items()}
    weights = language_weights({lang: len(d.items) for lang, d in data.items()}, cfg.lang_temperature)
    seq = list(interleave_by_weight(per_lang, weights, cfg.seed, epoch))
    return seq[: len(seq) - len(seq) % (world * cfg.update_freq)] if world * cfg.update_freq > 1 else seq


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) the recipe; return the final model directory."""
    rank, world = _dist()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    recipe = config_to_dict(cfg)
    if rank == 0:
        write_json_atomic(out / "recipe.json", recipe)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    fbank_cfg = FbankConfig()

    # 1. data and 2. tokenizer (rank 0 trains it; the others wait and read it)
    train_texts = read_texts(cfg, "train")
    spm_path = out / "spm.model"
    if rank == 0 and not spm_path.exists():
        by_lang = {lang: [t for _, _, t, _ in rows] for lang, rows in train_texts.items()}
        by_lang.setdefault("en", [])
        by_lang["en"] = by_lang["en"] + [src for rows in train_texts.values() for _, _, _, src in rows]
        train_st_tokenizer(by_lang, spm_path, cfg.vocab_size)
    if world > 1:
        dist.barrier()
    tok = Tokenizer(spm_path)
    data = build_lang_data(train_texts, tok, fbank_cfg)
    dev = build_lang_data(read_texts(cfg, "dev"), tok, fbank_cfg)
    log.info("train: %s", {lang: len(d.items) for lang, d in data.items()})

    # 3. model
    mcfg: ModelConfig = preset(cfg.model, vocab_size=tok.vocab_size, **cfg.model_overrides)
    model = S2TModel(mcfg)
    if cfg.init_encoder:
        n = init_encoder_from(model, cfg.init_encoder)
        log.info("encoder initialized from %s (%d tensors)", cfg.init_encoder, n)
    log.info("model %s: %.2fM parameters", cfg.model, param_count(model) / 1e6)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=cfg.weight_decay)
    augment = POLICIES[cfg.specaugment] if cfg.specaugment != "none" else None

    # resume
    state = {"update": 0, "epoch": 0, "pos": 0, "best_dev_loss": None, "bad_validations": 0,
             "seconds": 0.0, "history": [], "done": False}
    ckpts = list_checkpoints(ckpt_dir)
    final = out / "model"
    if ckpts and json.loads((ckpts[-1] / "state.json").read_text()).get("done") and (final / "config.json").exists():
        log.info("%s: this run has already finished (%s); nothing to do", out, ckpts[-1].name)
        return final
    if ckpts:
        state = load_checkpoint(ckpts[-1], model, opt)
        log.info("resumed from %s (update %d, epoch %d, batch %d)", ckpts[-1], state["update"], state["epoch"], state["pos"])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    def checkpoint() -> None:
        if rank == 0:
            save_checkpoint(ckpt_dir / f"checkpoint_{state['update']}", model, opt, state)
            for old in list_checkpoints(ckpt_dir)[: -max(cfg.keep_last, cfg.average_last)]:
                shutil.rmtree(old)
            kill_at = os.environ.get("INTERPRES_TEST_KILL_AT_UPDATE")  # for the resume test
            if kill_at and int(kill_at) == state["update"]:
                os.kill(os.getpid(), signal.SIGKILL)
        if world > 1:
            dist.barrier()

    # 4. the loop
    model.train()
    t_start = time.perf_counter() - state["seconds"]
    bar = tqdm(total=cfg.max_updates, initial=state["update"], desc=f"train {cfg.task}", unit="upd",
               disable=None if rank == 0 else True)
    stop = state["done"]
    while not stop and state["epoch"] < cfg.max_epochs:
        seq = epoch_batches(data, cfg, state["epoch"], world)
        steps = len(seq) // world
        while state["pos"] < steps and not stop:
            accum = []
            for _ in range(cfg.update_freq):
                if state["pos"] >= steps:
                    break
                lang, idx = seq[state["pos"] * world + rank]
                # the mask of each batch depends on where it stands, not on what ran before
                gen = torch.Generator().manual_seed(hash_seed(cfg.seed, state["epoch"], state["pos"], rank))
                accum.append(make_batch(data[lang], idx, augment, gen))
                state["pos"] += 1
            for g in opt.param_groups:
                g["lr"] = inverse_sqrt_lr(state["update"] + 1, cfg)
            opt.zero_grad(set_to_none=True)
            n_tok = sum(int((b["target"] != PAD_ID).sum()) for b in accum)
            n_ctc = sum(int(b["ctc_lens"].sum()) for b in accum)
            loss_sum, nll_sum, ctc_sum = 0.0, 0.0, 0.0
            for b in accum:
                out_ = ddp(b["features"], b["feat_lens"], b["prev"])
                ls, nll = label_smoothed_nll_loss(out_["logits"], b["target"], cfg.label_smoothing, PAD_ID)
                loss = (1 - cfg.ctc_weight) * ls / max(1, n_tok)
                if cfg.ctc_weight > 0 and out_["ctc_logits"] is not None:
                    c = ctc_loss(out_["ctc_logits"], out_["enc_lens"], b["ctc"], b["ctc_lens"], PAD_ID)
                    loss = loss + cfg.ctc_weight * c / max(1, n_ctc)
                    ctc_sum += float(c.detach())
                loss.backward()
                loss_sum += float(loss.detach())
                nll_sum += float(nll.detach())
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            state["update"] += 1
            state["seconds"] = time.perf_counter() - t_start
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}", nll=f"{nll_sum / max(1, n_tok):.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
            if state["update"] % 50 == 0 and rank == 0:  # progress in logs too, where tqdm is off
                log.info("update %d/%d epoch %d: loss %.3f lr %.2e %.1f s", state["update"], cfg.max_updates,
                         state["epoch"], loss_sum, opt.param_groups[0]["lr"], state["seconds"])
            if state["update"] % 10 == 0:
                state["history"].append({"update": state["update"], "loss": round(loss_sum, 4),
                                         "nll": round(nll_sum / max(1, n_tok), 4),
                                         "ctc": round(ctc_sum / max(1, n_ctc), 4), "gnorm": round(float(gnorm), 3),
                                         "seconds": round(state["seconds"], 1)})
            if state["update"] % cfg.validate_interval_updates == 0 or state["update"] >= cfg.max_updates:
                stop = validate(model, tok, dev, cfg, state, rank) or stop
            if state["update"] >= cfg.max_updates or (cfg.max_seconds and state["seconds"] >= cfg.max_seconds):
                stop = True
            if stop or state["update"] % cfg.save_interval_updates == 0:
                state["done"] = stop
                checkpoint()
        if not stop:
            state["epoch"] += 1
            state["pos"] = 0
    bar.close()
    state["done"] = True

    # 5. average the last checkpoints into the model directory
    if rank == 0:
        paths = list_checkpoints(ckpt_dir)[-cfg.average_last:] if cfg.average_last > 0 else list_checkpoints(ckpt_dir)[-1:]
        model.load_state_dict(average_checkpoints(paths))
        scores = dev_scores(model, tok, dev, cfg) if cfg.dev_bleu_max > 0 else {}
        extra = {"task": cfg.task, "languages": cfg.targets, "features": dataclasses.asdict(fbank_cfg),
                 "recipe": recipe, "averaged": [p.name for p in paths], "dev_scores": scores,
                 "train_seconds": round(state["seconds"], 1), "updates": state["update"],
                 "threads": torch.get_num_threads(), "processes": world}
        save_model_dir(model, mcfg, final, extra=extra)
        shutil.copyfile(spm_path, final / "spm.model")
        log.info("model written to %s (dev: %s)", final, scores)
    if world > 1:
        dist.barrier()
    return final


def hash_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big") & (2**63 - 1)


def validate(model: S2TModel, tok: Tokenizer, dev: dict[str, LangData], cfg: TrainConfig, state: dict, rank: int) -> bool:
    """Dev loss into the history (dev BLEU/WER is scored once, on the final model); True when
    early stopping says stop."""
    # keep the dropout RNG where it was: validation must not change what training draws next
    rng = torch.get_rng_state()
    loss = dev_loss(model, dev, cfg)
    torch.set_rng_state(rng)
    entry = {"update": state["update"], "dev_nll": round(loss, 4)}
    state["history"].append(entry)
    if rank == 0:
        log.info("update %d: dev nll %.4f", state["update"], loss)
    best = state["best_dev_loss"]
    if best is None or loss < best:
        state["best_dev_loss"] = loss
        state["bad_validations"] = 0
    else:
        state["bad_validations"] += 1
    return bool(cfg.patience and state["bad_validations"] >= cfg.patience)


def iter_history(out: str | Path) -> Iterator[dict]:
    """The logged history of the newest checkpoint of a run (for plots and reports)."""
    ckpts = list_checkpoints(Path(out) / "checkpoints")
    if ckpts:
        yield from json.loads((ckpts[-1] / "state.json").read_text())["history"]
