"""ASR pretraining and multilingual ST training: one recipe you can read top to bottom.

    interpres train asr speech/configs/asr_small.yaml [key=value ...]
    interpres train st  speech/configs/st_small.yaml  init_encoder=runs/asr_small/model
    torchrun --nproc-per-node 2 -m interpres train st ...        (DDP, gloo on CPU)

ASR is the same recipe with English as the only target language: the decoder's first
token is ``<lang:en>``, so an ST model trained with ``transcripts: true`` also
transcribes. The steps:

1. data: the train/dev splits of every pair, read through the MuST-C reader, with fbank
   features cached once per split; batches by frames per language, drawn with
   temperature-based language sampling.
2. tokenizer: sentencepiece unigram over the targets (``<lang:xx>`` tags as symbols).
3. model: a preset from speech.model; for ST the encoder may start from an ASR model.
4. loss: label-smoothed cross-entropy + CTC on the English transcript, SpecAugment
   (:class:`SpeechRecipe`).
5. :func:`speech.loop.run`, the loop every recipe shares: Adam with inverse-square-root
   warmup, clipping and accumulation, exact resume from checkpoints, dev loss and early
   stopping, then the last ``average_last`` checkpoints averaged into ``OUT/model/``, a
   model directory that ``interpres translate --model`` loads (with greedy dev BLEU/WER).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from compress.distill import (KDConfig, SeqKDCorpus, batch_kd_mask, check_seq_kd_select, closest_to_reference, degenerate,
                              kd_loss, targets_from_outputs, teacher_log_probs, truncate_targets)
from compress.files import atomic_path
from compress.lora import LoraConfig, add_lora, lora_state_dict, merge_lora
from speech.augment import POLICIES, SpecAugmentConfig, spec_augment
from speech.checkpoint import load_model_dir, model_device, model_dir_hash, save_model_dir
from speech.config import ConfigError
from speech.data.cache import interpres_home
from speech.data.mustc import MustcSplit
from speech.data.text import TARGET_LANGS
from speech.dataset import SplitFeatures, batches_by_frames, interleave_by_weight, language_weights, pad_features
from speech.features import FbankConfig, FeatureConfig, model_features
from speech.loop import LoopConfig, Progress, barrier, resolve_device, run, start_run, to_device
from speech.losses import ctc_loss, label_smoothed_nll_loss
from speech.metrics import score_hypotheses  # one scoring rule for training and evaluation
from speech.model import S2TModel, param_count
from speech.model_config import PAD_ID, ModelConfig, preset
from speech.tokenizer import Tokenizer, train_st_tokenizer

if TYPE_CHECKING:
    from speech.whisper import WhisperTokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainConfig(LoopConfig):
    """A training recipe (speech/configs/{asr,st}_*.yaml); every key can be overridden.

    The optimizer, schedule, checkpoint and averaging keys are :class:`speech.loop.LoopConfig`'s.
    """

    task: str = "st"  # "asr": English targets only; "st": the languages below
    corpus: str = "small"  # a folder under $INTERPRES_HOME/speech/, or a path to a MuST-C root
    langs: list[str] = field(default_factory=lambda: list(TARGET_LANGS))
    transcripts: bool = True  # st: also train <lang:en> transcription on the English sides
    asr_corpus_pair: str = "en-asr"  # asr (and st transcripts): extra English-only pair, if present
    out: str = "runs/st"
    model: str = "small"  # preset of speech.model
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # the filterbank of a model trained from scratch (Kaldi's option names; the model's n_mels
    # follows num_mel_bins); a model started from another (init) keeps that one's features
    features: FbankConfig = field(default_factory=FbankConfig)
    vocab_size: int = 2000
    init_encoder: str | None = None  # model directory whose encoder starts this one (ASR pretraining)
    # text model directory (interpres train mt) whose decoder and spm.model start this one
    init_decoder: str | None = None
    init: str | None = None  # model directory to start from whole: weights, tokenizer, architecture (a student)
    # modules (dotted prefixes of parameter names) kept as they are, e.g. [encoder]: no gradient,
    # no optimizer state, and in eval mode (their dropout off)
    freeze: list[str] = field(default_factory=list)
    # low-rank adapters (lora.rank > 0): only they train; the model directory holds the merged
    # weights, and lora.safetensors the adapters alone
    lora: LoraConfig = field(default_factory=LoraConfig)
    # distillation (compress/): teachers' model directories (several = an ensemble), word-level KD
    # settings (kd.alpha 0 = none), and sequence-level KD (train on the teachers' beam outputs)
    teacher: list[str] = field(default_factory=list)
    kd: KDConfig = field(default_factory=KDConfig)
    seq_kd: bool = False
    seq_kd_beam: int = 5
    seq_kd_langs: list[str] = field(default_factory=list)  # targets the teachers rewrite; empty: all
    seq_kd_select: str = "best"  # the teachers' top hypothesis, or "closest": the n-best entry nearest the reference
    # a teacher output caught in a loop (a 3-gram three times: compress.distill.degenerate) leaves
    # the pair its reference, so the student does not learn the loop; false keeps every output
    seq_kd_filter: bool = True
    # the teachers' beam search: fairseq's ban on repeating an n-gram (0: none; 3 keeps the
    # loops out of the targets in the first place, so none falls back to its reference) and
    # its length bound, a * encoder frames + b pieces
    seq_kd_no_repeat_ngram_size: int = 0
    seq_kd_max_len_a: float = 0.0
    seq_kd_max_len_b: int = 200
    # also let the teachers translate, into each seq_kd language, the English audio that has no
    # reference in it (the ASR corpus's sentences and the other pairs'): more pairs, their top hypothesis
    seq_kd_unpaired: bool = False
    max_frames: int = 12000  # fbank frames per batch (batch size x longest utterance)
    max_items: int = 128
    label_smoothing: float = 0.1
    ctc_weight: float = 0.3
    specaugment: str = "LB"  # a policy of speech.augment.POLICIES, or "none"
    lang_temperature: float = 3.0
    dev_bleu_max: int = 100  # dev utterances per language decoded for BLEU/WER at validation

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in ("asr", "st"):
            raise ConfigError(f"task must be 'asr' or 'st', got '{self.task}'")
        if self.specaugment != "none" and self.specaugment not in POLICIES:
            raise ConfigError(f"specaugment must be 'none' or one of {sorted(POLICIES)}, got '{self.specaugment}'")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ConfigError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.max_frames < 1:
            raise ConfigError("max_frames must be at least 1")
        if self.init and (self.init_encoder or self.init_decoder):
            raise ConfigError("init excludes init_encoder and init_decoder: init already sets the whole model")
        if self.seq_kd and not self.teacher:
            raise ConfigError("seq_kd needs teacher: the model directories whose outputs are learned")
        try:
            check_seq_kd_select(self.seq_kd_select)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.seq_kd_unpaired and not (self.seq_kd and self.task == "st" and self.transcripts):
            raise ConfigError("seq_kd_unpaired needs seq_kd: true, task: st and transcripts: true "
                              "(the English audio comes with the transcription data)")
        if self.seq_kd_no_repeat_ngram_size < 0:
            raise ConfigError(f"seq_kd_no_repeat_ngram_size must be >= 0, got {self.seq_kd_no_repeat_ngram_size}")
        if not 0 <= self.seq_kd_max_len_a < math.inf:
            raise ConfigError(f"seq_kd_max_len_a must be a finite number >= 0, got {self.seq_kd_max_len_a}")
        if self.seq_kd_max_len_b < 0:
            raise ConfigError(f"seq_kd_max_len_b must be >= 0, got {self.seq_kd_max_len_b}")
        if self.seq_kd_max_len_a == 0 and self.seq_kd_max_len_b == 0:
            raise ConfigError("seq_kd_max_len_a and seq_kd_max_len_b are both 0: the teachers could output nothing")
        unknown = [lang for lang in self.seq_kd_langs if lang not in self.targets]
        if unknown:
            raise ConfigError(f"seq_kd_langs: {', '.join(unknown)} not among the targets ({', '.join(self.targets)})")

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


def build_lang_data(texts: dict[str, list[tuple[MustcSplit, int, str, str]]], tok: Tokenizer | WhisperTokenizer,
                    fbank_cfg: FeatureConfig) -> dict[str, LangData]:
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
               gen: torch.Generator | None, pad: int = PAD_ID) -> dict[str, torch.Tensor]:
    feats = [data.features(k) for k in idx]
    if augment is not None:
        feats = [spec_augment(f, augment, generator=gen) for f in feats]
    x, x_lens = pad_features(feats)
    seqs = [data.targets[k] for k in idx]
    u = max(len(s) for s in seqs) - 1
    prev = torch.full((len(idx), u), pad, dtype=torch.long)
    tgt = torch.full((len(idx), u), pad, dtype=torch.long)
    for b, s in enumerate(seqs):
        prev[b, : len(s) - 1] = torch.tensor(s[:-1])
        tgt[b, : len(s) - 1] = torch.tensor(s[1:])
    ctc = [data.ctc[k] for k in idx]
    ctc_lens = torch.tensor([len(c) for c in ctc], dtype=torch.long)
    ctc_t = torch.full((len(idx), max(1, int(ctc_lens.max()))), pad, dtype=torch.long)
    for b, c in enumerate(ctc):
        ctc_t[b, : len(c)] = torch.tensor(c, dtype=torch.long)
    return {"features": x, "feat_lens": x_lens, "prev": prev, "target": tgt, "ctc": ctc_t, "ctc_lens": ctc_lens}


# ----------------------------------------------------------------------------- model


def _load_part(model: S2TModel, src_state: dict[str, torch.Tensor], part: str, path: str, hint: str) -> int:
    """Copy the ``part.*`` tensors ``src_state`` into ``model``: every one, of the same shape."""
    own = model.state_dict()
    bad = [k for k, v in src_state.items() if k not in own or own[k].shape != v.shape]
    bad += [k for k in own if k.startswith(f"{part}.") and k not in src_state]  # a layer it lacks
    if bad:
        raise ConfigError(f"init_{part}: {path}: {part} of another shape ({bad[0]}); {hint}")
    model.load_state_dict(src_state, strict=False)
    return len(src_state)


def init_decoder_from(model: S2TModel, path: str) -> int:
    """Copy the decoder of the text model directory ``path`` (``interpres train mt``) into ``model``."""
    from speech.text_pretrain import decoder_state  # noqa: PLC0415

    return _load_part(model, decoder_state(path)[0], "decoder", path,
                      "pretrain it ('interpres train mt') with this run's model preset")


def init_encoder_from(model: S2TModel, path: str) -> int:
    """Copy the encoder weights of the model directory ``path`` into ``model``."""
    src, _ = load_model_dir(path)
    src_state = {k: v for k, v in src.state_dict().items() if k.startswith("encoder.")}
    return _load_part(model, src_state, "encoder", path, "train the ASR model with the same model preset")


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def dev_loss(model: S2TModel, data: dict[str, LangData], cfg: TrainConfig) -> float:
    total, tokens = 0.0, 0
    device, pad = model_device(model), model.cfg.pad_id
    for lang, d in data.items():
        for idx in batches_by_frames(d.lengths, cfg.max_frames, cfg.max_items, shuffle=False):
            b = to_device(make_batch(d, idx, None, None, pad), device)
            out = model(b["features"], b["feat_lens"], b["prev"])
            _, nll = label_smoothed_nll_loss(out["logits"], b["target"], 0.0, pad)
            total += float(nll)
            tokens += int((b["target"] != pad).sum())
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
            b = to_device(make_batch(d, idx, None, None, model.cfg.pad_id), model_device(model))
            enc = model.encode(b["features"], b["feat_lens"])
            opts = DecodingOptions(beam_size=1, suppress_tokens=tok.suppress_ids)
            results = greedy_search([model], [enc], [tok.prefix(lang)] * len(idx), opts)
            for k, r in zip(idx, results):
                hyps[k] = tok.decode(r.tokens)
        scores.update(score_hypotheses(lang, hyps, d.refs[:n]))
    return scores


# ----------------------------------------------------------------------------- the recipe


def epoch_batches(data: dict[str, LangData], cfg: TrainConfig, epoch: int) -> list[tuple[str, list[int]]]:
    """The whole epoch's (language, batch) sequence: a pure function of the seed and epoch."""
    per_lang = {lang: batches_by_frames(d.lengths, cfg.max_frames, cfg.max_items, seed=cfg.seed, epoch=epoch)
                for lang, d in data.items()}
    weights = language_weights({lang: len(d.items) for lang, d in data.items()}, cfg.lang_temperature)
    return list(interleave_by_weight(per_lang, weights, cfg.seed, epoch))


class SpeechRecipe:
    """ASR or ST for :func:`speech.loop.run`: batches by frames, label-smoothed CE + CTC."""

    def __init__(self, cfg: TrainConfig, tok: Tokenizer | WhisperTokenizer, data: dict[str, LangData],
                 dev: dict[str, LangData], mcfg: ModelConfig, fbank_cfg: FeatureConfig, recipe: dict, world: int,
                 teachers: list[S2TModel] | None = None, carried: dict[str, Any] | None = None,
                 shared_encoder: bool = False):
        self.cfg, self.tok, self.data, self.dev, self.mcfg = cfg, tok, data, dev, mcfg
        self.fbank_cfg, self.recipe, self.world = fbank_cfg, recipe, world
        self.pad = mcfg.pad_id
        self.carried = carried or {}  # config.json keys of the init model that describe its tokenizer
        self.name = cfg.task if not teachers else f"{cfg.task} (distill)"
        self.augment = POLICIES[cfg.specaugment] if cfg.specaugment != "none" else None
        # word-level KD only when it weighs something; seq-KD teachers have done their work already
        self.teachers = teachers if teachers and cfg.kd.alpha > 0 else []
        # the student's frozen encoder is the teachers' (shares_encoder): encode once for both
        self.shared_encoder = shared_encoder and bool(self.teachers)

    def epoch_batches(self, epoch: int) -> list[tuple[str, list[int]]]:
        return epoch_batches(self.data, self.cfg, epoch)

    def make_batch(self, key: tuple[str, list[int]], gen: torch.Generator) -> dict[str, torch.Tensor]:
        lang, idx = key
        return make_batch(self.data[lang], idx, self.augment, gen, self.pad)

    def backward(self, module: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        cfg = self.cfg
        kd = dataclasses.replace(cfg.kd, label_smoothing=cfg.label_smoothing)
        # selective KD may train on the first part of each target only (kd.truncate)
        pad = self.pad
        cut = [truncate_targets(b["prev"], b["target"], kd.truncate, pad) for b in batches]
        n_tok = sum(int((target != pad).sum()) for _, target in cut)
        n_ctc = sum(int(b["ctc_lens"].sum()) for b in batches)
        loss_sum, nll_sum, ctc_sum, kd_sum = 0.0, 0.0, 0.0, 0.0
        for b, (prev, target) in zip(batches, cut):
            if self.shared_encoder:
                with torch.no_grad():
                    enc_out, _, enc_mask = module.encode(b["features"], b["feat_lens"])
                out = {"logits": module.decoder(prev, enc_out, enc_mask), "ctc_logits": None}
                teacher = teacher_log_probs(self.teachers, lambda t: t.decoder(prev, enc_out, enc_mask))
            else:
                out = module(b["features"], b["feat_lens"], prev)
                teacher = teacher_log_probs(self.teachers,
                                            lambda t: t(b["features"], b["feat_lens"], prev)["logits"])
            ls, parts = kd_loss(out["logits"], teacher, target, kd, pad, batch_kd_mask(target, pad, kd))
            loss = (1 - cfg.ctc_weight) * ls / max(1, n_tok)
            if cfg.ctc_weight > 0 and out["ctc_logits"] is not None:
                c = ctc_loss(out["ctc_logits"], out["enc_lens"], b["ctc"], b["ctc_lens"], self.mcfg.blank_id)
                loss = loss + cfg.ctc_weight * c / max(1, n_ctc)
                ctc_sum += float(c.detach())
            loss.backward()
            loss_sum += float(loss.detach())
            nll_sum += parts["nll"]
            kd_sum += parts["kd"]
        stats = {"loss": loss_sum, "nll": nll_sum / max(1, n_tok), "ctc": ctc_sum / max(1, n_ctc)}
        if self.teachers:
            stats["kd"] = kd_sum / max(1, n_tok)
        return stats

    def dev_loss(self, model: torch.nn.Module) -> float:
        return dev_loss(model, self.dev, self.cfg)

    def finish(self, model: torch.nn.Module, averaged: list[Path], state: dict) -> None:
        cfg = self.cfg
        final = Path(cfg.out) / "model"
        scores = dev_scores(model, self.tok, self.dev, cfg) if cfg.dev_bleu_max > 0 else {}
        extra = {**self.carried, "task": cfg.task, "languages": cfg.targets,
                 "features": dataclasses.asdict(self.fbank_cfg),
                 "recipe": self.recipe, "averaged": [p.name for p in averaged], "dev_scores": scores,
                 "train_seconds": round(state["seconds"], 1), "updates": state["update"],
                 "threads": torch.get_num_threads(), "processes": self.world,
                 "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        adapters = lora_state_dict(model)
        if adapters:
            merge_lora(model)
            extra["lora"] = dataclasses.asdict(cfg.lora)
        save_model_dir(model, self.mcfg, final, extra=extra)
        if adapters:
            _save_tensors(adapters, final / "lora.safetensors")
        shutil.copyfile(self.tok.path, final / self.tok.path.name)
        log.info("model written to %s (dev: %s)", final, scores)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) the recipe; return the final model directory."""
    rank, world, recipe = start_run(cfg)
    out = Path(cfg.out)
    init_config = _init_config(cfg.init) if cfg.init else {}
    fbank_cfg: FeatureConfig = cfg.features
    if cfg.init:  # a model keeps the features it was trained on (Whisper's log-mel, say)
        fbank_cfg = model_features(init_config, f"{cfg.init}/config.json")
    # config.json keys that describe the init model's tokenizer, carried into this run's model
    carried = {k: init_config[k] for k in ("tokenizer", "whisper") if k in init_config}

    # 1. data and 2. tokenizer (rank 0 trains it; the others wait and read it)
    train_texts = read_texts(cfg, "train")
    if carried.get("tokenizer") == "whisper":
        return _train(cfg, rank, world, recipe, train_texts, _whisper_tokenizer(cfg.init, init_config),
                      fbank_cfg, carried)
    spm_path = out / "spm.model"
    vocab_from = cfg.init or cfg.init_decoder
    given_spm = Path(vocab_from) / "spm.model" if vocab_from else None
    if rank == 0 and given_spm is not None:
        # a student keeps its vocabulary; a pretrained decoder brings the one it was trained with
        if not given_spm.exists():
            raise ConfigError(f"{given_spm.parent}: no spm.model; init and init_decoder name model directories")
        if not spm_path.exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(given_spm, spm_path)
        elif spm_path.read_bytes() != given_spm.read_bytes():
            raise ConfigError(f"{spm_path} differs from {given_spm}: this run was started with another "
                              f"vocabulary; use a new 'out' folder")
    if rank == 0 and not spm_path.exists():
        by_lang = {lang: [t for _, _, t, _ in rows] for lang, rows in train_texts.items()}
        by_lang.setdefault("en", [])
        by_lang["en"] = by_lang["en"] + [src for rows in train_texts.values() for _, _, _, src in rows]
        train_st_tokenizer(by_lang, spm_path, cfg.vocab_size)
    barrier(world)
    return _train(cfg, rank, world, recipe, train_texts, Tokenizer(spm_path), fbank_cfg, carried)


def _init_config(path: str) -> dict[str, Any]:
    config_path = Path(path) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"init: {config_path}: not found (init names a model directory)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path}: must be a mapping")
    return config


def _whisper_tokenizer(path: str, config: dict) -> WhisperTokenizer:
    from speech.whisper import load_tokenizer_for  # noqa: PLC0415

    vocab = config.get("model", {}).get("vocab_size", 0)
    return load_tokenizer_for(Path(path), config, int(vocab))


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file  # noqa: PLC0415

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def freeze_modules(model: torch.nn.Module, prefixes: list[str]) -> int:
    """Stop the gradients of every parameter under the dotted ``prefixes``; the number of
    parameters frozen. A prefix that names no parameter is a ConfigError listing the modules."""
    frozen = 0
    for prefix in prefixes:
        hits = [p for name, p in model.named_parameters() if name == prefix or name.startswith(prefix + ".")]
        if not hits:
            top = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
            raise ConfigError(f"freeze: '{prefix}' names no parameters (the model's modules: {', '.join(top)}, ...)")
        for p in hits:
            if p.requires_grad:
                p.requires_grad_(False)
                frozen += p.numel()
    return frozen


def _train(cfg: TrainConfig, rank: int, world: int, recipe: dict, train_texts: dict,
           tok: Tokenizer | WhisperTokenizer, fbank_cfg: FeatureConfig, carried: dict[str, Any]) -> Path:
    """Steps 1 (features) and 3 to 5, once the tokenizer is known."""
    out = Path(cfg.out)
    data = build_lang_data(train_texts, tok, fbank_cfg)
    dev = build_lang_data(read_texts(cfg, "dev"), tok, fbank_cfg)
    log.info("train: %s", {lang: len(d.items) for lang, d in data.items()})

    # 3. model (a distillation student starts from a whole model directory, maybe pruned)
    if cfg.init:
        model, _ = load_model_dir(cfg.init)
        mcfg = model.cfg
        log.info("initialized from %s", cfg.init)
    else:
        mcfg = preset(cfg.model, vocab_size=tok.vocab_size, **({"n_mels": fbank_cfg.num_mel_bins} | cfg.model_overrides))
        if mcfg.n_mels != fbank_cfg.num_mel_bins:
            raise ConfigError(f"model_overrides.n_mels is {mcfg.n_mels} but features.num_mel_bins is "
                              f"{fbank_cfg.num_mel_bins}")
        model = S2TModel(mcfg)
    if mcfg.vocab_size != tok.vocab_size:
        raise ConfigError(f"{tok.path}: {tok.vocab_size} pieces, but the model's vocab_size is {mcfg.vocab_size}")
    # teachers decode (seq-KD) and score (word KD) on the training device
    teachers = [load_model_dir(t, device=resolve_device(cfg.device))[0] for t in cfg.teacher]
    for path, t in zip(cfg.teacher, teachers):
        if t.cfg.vocab_size != mcfg.vocab_size:
            raise ConfigError(f"teacher {path}: vocabulary of {t.cfg.vocab_size} pieces, the student has "
                              f"{mcfg.vocab_size}; distillation needs one vocabulary")
    if cfg.seq_kd:  # rank 0 decodes; the others read its finished cache
        if rank == 0:
            data = seq_kd_targets(data, teachers, tok, out / "seq_kd.jsonl", cfg)
        barrier(world)
        if rank != 0:
            data = seq_kd_targets(data, teachers, tok, out / "seq_kd.jsonl", cfg)
    if cfg.init_encoder:
        n = init_encoder_from(model, cfg.init_encoder)
        log.info("encoder initialized from %s (%d tensors)", cfg.init_encoder, n)
    if cfg.init_decoder:
        n = init_decoder_from(model, cfg.init_decoder)
        log.info("decoder initialized from %s (%d tensors)", cfg.init_decoder, n)
    if cfg.freeze:
        log.info("frozen: %s (%.2fM parameters)", ", ".join(cfg.freeze), freeze_modules(model, cfg.freeze) / 1e6)
    if cfg.lora.rank:
        wrapped = add_lora(model, cfg.lora)
        log.info("LoRA rank %d on %d layers; %.2fM parameters train", cfg.lora.rank, len(wrapped),
                 sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6)
    log.info("model %s: %.2fM parameters", cfg.init or cfg.model, param_count(model) / 1e6)
    shared = world == 1 and cfg.kd.alpha > 0 and bool(teachers) and shares_encoder(model, teachers)
    if shared:
        log.info("word KD: the student's frozen encoder is its teachers' own: it runs once for both")

    # 4. and 5.: the shared loop, checkpoints and averaging
    speech_recipe = SpeechRecipe(cfg, tok, data, dev, mcfg, fbank_cfg, recipe, world, teachers, carried, shared)
    return run(speech_recipe, model, cfg, rank, world)


def shares_encoder(model: S2TModel, teachers: list[S2TModel]) -> bool:
    """Whether the student's encoder is frozen and equal, tensor for tensor, to every
    teacher's (a student cut from its teacher's decoder, as Distil-Whisper's): then one
    encoder forward serves the student and the teachers' word-level KD. A student with a
    CTC head keeps the usual path (its CTC loss reads the encoder's output per student)."""
    mine = model.encoder.state_dict()
    if any(p.requires_grad for p in model.encoder.parameters()) or model.ctc_head is not None:
        return False
    for t in teachers:
        theirs = t.encoder.state_dict()
        if set(theirs) != set(mine) or not all(
                theirs[k].shape == v.shape and torch.equal(theirs[k].to(v.device, v.dtype), v) for k, v in mine.items()):
            return False
    return True


def _seq_kd_decoding(cfg: TrainConfig, tok: Tokenizer, nbest: int) -> tuple[dict[str, Any], Any]:
    """What every seq-KD cache records (teachers, by path and by the hash of their weights, so
    that a teacher retrained in place is a new cache; beam and the n-gram ban and length bound
    where they are set; corpus) and the teachers' beam search (``nbest`` hypotheses, never a
    language tag)."""
    from speech.decode import DecodingOptions  # noqa: PLC0415

    settings = {"teachers": [str(Path(t).resolve()) for t in cfg.teacher],
                "teacher_sha256": [model_dir_hash(t) for t in cfg.teacher], "beam": cfg.seq_kd_beam,
                "corpus": str(corpus_root(cfg.corpus))}
    # recorded only when set, so the caches made before these options existed stay valid
    if cfg.seq_kd_no_repeat_ngram_size:
        settings["no_repeat_ngram_size"] = cfg.seq_kd_no_repeat_ngram_size
    if (cfg.seq_kd_max_len_a, cfg.seq_kd_max_len_b) != (0.0, 200):
        settings["max_len"] = [float(cfg.seq_kd_max_len_a), cfg.seq_kd_max_len_b]
    tags = tuple(tok.lang_tag(lang) for lang in tok.languages)
    return settings, DecodingOptions(beam_size=cfg.seq_kd_beam, nbest=nbest, suppress_tokens=tags,
                                     no_repeat_ngram_size=cfg.seq_kd_no_repeat_ngram_size,
                                     max_len_a=float(cfg.seq_kd_max_len_a), max_len_b=cfg.seq_kd_max_len_b)


def seq_kd_targets(data: dict[str, LangData], teachers: list[S2TModel], tok: Tokenizer, path: Path,
                   cfg: TrainConfig) -> dict[str, LangData]:
    """Sequence-level KD: the training targets of ``seq_kd_langs`` (every language when empty)
    replaced by the teachers' beam-search output (an ensemble when several): its best
    hypothesis, or with ``seq_kd_select: closest`` the one of its n-best nearest the reference
    (Seq-Inter). Cached in ``path`` and resumed after a kill (:class:`compress.distill.SeqKDCorpus`).
    With ``seq_kd_filter`` a degenerate output (:func:`compress.distill.degenerate`) keeps
    the reference: the filter is applied to the cached outputs, so it leaves the cache as it is."""
    from speech.decode import encode, search  # noqa: PLC0415 - decode imports the model

    langs = [lang for lang in data if not cfg.seq_kd_langs or lang in cfg.seq_kd_langs]
    closest = cfg.seq_kd_select == "closest"
    settings, opts = _seq_kd_decoding(cfg, tok, nbest=cfg.seq_kd_beam if closest else 1)
    settings["sizes"] = {lang: len(data[lang].items) for lang in langs}
    if closest:  # caches made before the choice existed hold the best hypotheses: same fingerprint
        settings["select"] = "closest"
    corpus = SeqKDCorpus(path, settings)
    by_id = {f"{lang}:{k}": (lang, k) for lang in langs for k in range(len(data[lang].items))}
    lengths = {lang: d.lengths for lang, d in data.items()}
    # batches of similar lengths decode fastest: order the ids by audio length
    ids = sorted(by_id, key=lambda i: lengths[by_id[i][0]][by_id[i][1]])

    def translate(chunk: list[str]) -> list[list[int]]:
        feats = [data[by_id[i][0]].features(by_id[i][1]) for i in chunk]
        x, lens = to_device(pad_features(feats), model_device(teachers[0]))
        states = encode(teachers, x, lens)
        prefix = [data[by_id[i][0]].targets[by_id[i][1]][:1] for i in chunk]  # the language tag
        results = search(teachers, states, prefix, opts)
        if not closest:
            return [r.tokens for r in results]
        picked = []
        for i, r in zip(chunk, results):
            lang, k = by_id[i]
            hyps = r.nbest or [r.best]
            picked.append(hyps[closest_to_reference([tok.decode(h.tokens) for h in hyps], data[lang].refs[k])].tokens)
        return picked

    progress = Progress(len(ids), "seq-KD targets", "utt")
    outs = corpus.build(ids, translate, batch_size=32, progress=progress)
    progress.close()
    fresh = dict(data)  # the languages not in seq_kd_langs keep their references
    kept = 0
    for lang in langs:
        d = data[lang]
        targets, n = targets_from_outputs(d.targets, [outs[f"{lang}:{k}"] for k in range(len(d.items))],
                                          cfg.seq_kd_filter)
        fresh[lang] = dataclasses.replace(d, targets=targets)
        kept += n
    log.info("seq-KD: %d targets (%s) from %s%s", len(ids), ", ".join(langs), ", ".join(cfg.teacher),
             f"; {kept} degenerate ones keep their reference" if cfg.seq_kd_filter else "")
    if cfg.seq_kd_unpaired:
        fresh = unpaired_seq_kd(fresh, teachers, tok, path.with_name("seq_kd_unpaired.jsonl"), cfg,
                                [lang for lang in langs if lang != "en"])
    return fresh


def unpaired_english(data: dict[str, LangData], lang: str) -> list[int]:
    """The rows of ``data['en']`` whose English sentence has no translation into ``lang``
    in its training data (compared by transcript pieces, as the pairs share sentences)."""
    have = {tuple(c) for c in data[lang].ctc}
    return [k for k, c in enumerate(data["en"].ctc) if tuple(c) not in have]


def unpaired_seq_kd(data: dict[str, LangData], teachers: list[S2TModel], tok: Tokenizer, path: Path,
                    cfg: TrainConfig, langs: list[str]) -> dict[str, LangData]:
    """Sequence-level KD on more source audio: the teachers translate the English training
    audio that has no reference in ``lang`` (see :func:`unpaired_english`) into it, and each
    (audio, top hypothesis) becomes one more training pair of ``lang``, with the English
    transcript for CTC. Cached in ``path`` apart from the paired targets, so either cache
    survives a change of the other. An empty or degenerate hypothesis (a 3-gram three times,
    :func:`compress.distill.degenerate`) makes no pair: with no reference to choose by, the
    filter is what keeps the teacher's runaway repetitions out of the student."""
    from speech.decode import encode, search  # noqa: PLC0415

    en = data["en"]  # present: the config requires transcripts
    rows = {lang: unpaired_english(data, lang) for lang in langs}
    settings, opts = _seq_kd_decoding(cfg, tok, nbest=1)
    settings["unpaired"] = {lang: len(r) for lang, r in rows.items()}
    corpus = SeqKDCorpus(path, settings)
    by_id = {f"{lang}+en:{k}": (lang, k) for lang, r in rows.items() for k in r}
    lengths = en.lengths
    ids = sorted(by_id, key=lambda i: lengths[by_id[i][1]])

    def translate(chunk: list[str]) -> list[list[int]]:
        x, lens = to_device(pad_features([en.features(by_id[i][1]) for i in chunk]), model_device(teachers[0]))
        states = encode(teachers, x, lens)
        return [r.tokens for r in search(teachers, states, [[tok.lang_tag(by_id[i][0])] for i in chunk], opts)]

    progress = Progress(len(ids), "seq-KD targets, unpaired audio", "utt")
    outs = corpus.build(ids, translate, batch_size=32, progress=progress)
    progress.close()
    fresh = dict(data)
    dropped = 0
    for lang, r in rows.items():
        d = data[lang]
        feats = list(d.feats)
        where = {id(f): n for n, f in enumerate(feats)}
        items, targets, ctc, refs = list(d.items), list(d.targets), list(d.ctc), list(d.refs)
        for k in r:
            hyp = outs[f"{lang}+en:{k}"]
            if not hyp or degenerate(hyp):
                dropped += 1
                continue
            f, row = en.items[k]
            src = en.feats[f]
            if id(src) not in where:
                where[id(src)] = len(feats)
                feats.append(src)
            items.append((where[id(src)], row))
            targets.append([tok.lang_tag(lang)] + hyp + [tok.eos_id])
            ctc.append(en.ctc[k])
            refs.append(tok.decode(hyp))  # no reference: the teacher's translation stands in
        fresh[lang] = LangData(lang, feats, items, targets, ctc, refs)
    log.info("seq-KD on unpaired audio: %d more pairs (%s translated; %d empty or degenerate hypotheses "
             "left out)", len(ids) - dropped, ", ".join(f"{lang} {len(r)}" for lang, r in rows.items()), dropped)
    return fresh
