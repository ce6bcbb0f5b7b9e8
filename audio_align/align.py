"""``interpres align``: preference optimization of the LALM against hallucination (issue 25).

    interpres align audio_align/configs/align_dpo.yaml     # DPO, the whole model
    interpres align audio_align/configs/align_sta.yaml     # STA: one steering token

From an instruction-tuned model (``init``, which is also the frozen reference) and the
training scenes:

1. **Preference pairs** (:mod:`audio_align.prefs`): counterfactual hard negatives made by
   rules from the ground truth, and the model's own wrong answers (greedy and sampled) on
   ``model_scenes`` training scenes, each pair with its provenance -> ``out/pairs.jsonl``
   (and ``out/pairs_dev.jsonl`` from the dev scenes, rules only). ``paraphrases: N`` asks
   the training scenes N times (other questions, other training wording);
   ``counterfactual: N`` adds N training scenes of each edit of
   :mod:`audio_align.counterfactual` (the prior's sounds swapped, its consequent cut out:
   the same questions, answers flipped by the audio; their encoder states cached under
   ``out/counterfactual``).
2. **Reference log-probabilities** of every chosen and rejected answer under ``init``,
   computed once -> ``out/reference.safetensors`` (keyed by the model's weights and the
   pairs: a rerun reuses them, a change recomputes them).
3. **Training** in the shared loop (:func:`speech.loop.run`: exact resume after a kill,
   checkpoint averaging, ``device: auto``) on one of the losses, with ``h`` the policy's
   log-ratio margin minus the reference's (``beta`` scales it):

   - ``dpo``: ``-log σ(βh)``; with ``label_smoothing`` ε, conservative DPO
     ``-(1-ε) log σ(βh) - ε log σ(-βh)``;
   - ``robust``: the unbiased robust DPO of Chowdhury et al. (TRL's ``robust``):
     ``((1-ε)(-log σ(βh)) + ε log σ(-βh)) / (1-2ε)``;
   - ``ipo``: ``(h - 1/(2β))²`` on per-token mean log-probabilities;

   plus ``sft_weight`` times the chosen answers' per-token NLL. ``train_params``: ``all``,
   ``lora`` (adapters on the LM, merged when the model is written), ``projector`` (the LM
   frozen) or ``prefix`` (**STA**: ``prefix_tokens`` trainable embeddings before every
   sequence, everything else frozen). STA's hard weighting drops the pairs the reference
   already separates by more than ``drop_margin_above`` nats (and any below
   ``drop_margin_below``); its focal weight ``(1 - σ(βh))^focal_gamma`` (no gradient)
   puts the rest of the weight on the pairs the policy still gets wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from audio_align import prefs, qa
from audio_align.lalm import (IGNORE, TOKENIZER_FILE, WEIGHTS_FILE, AudioFrontEnd, AudioLanguageModel, ChatTokenizer,
                              load_lalm_dir, save_lalm_dir, sequence_logps)
from audio_align.train import SceneSet, chat_batch, dev_scores, load_scene_set
from compress.files import atomic_path
from speech.checkpoint import model_device
from speech.config import ConfigError
from speech.dataset import batches_by_frames
from speech.loop import LoopConfig, Progress, barrier, hash_seed, run, start_run, to_device

log = logging.getLogger(__name__)

METHODS = ("dpo", "ipo", "robust")
TRAIN_PARAMS = ("all", "lora", "projector", "prefix")


@dataclass
class AlignConfig(LoopConfig):
    """One alignment run (audio_align/configs/align_*.yaml)."""

    out: str = "runs/align"
    scenes: str = "default"  # the corpus $INTERPRES_HOME/scenes/NAME
    init: str = "runs/lalm_sft/model"  # the instruction-tuned LALM: the starting point and the reference
    method: str = "dpo"  # dpo | ipo | robust
    beta: float = 0.1
    label_smoothing: float = 0.0  # dpo: conservative DPO's epsilon; robust: the assumed label-noise rate
    sft_weight: float = 0.0  # weight of the chosen answers' per-token NLL added to the loss
    train_params: str = "all"  # all | lora | projector | prefix (STA)
    lora: dict = field(default_factory=lambda: {"rank": 8, "alpha": 16.0,
                                                "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    prefix_tokens: int = 1  # STA's steering tokens (train_params: prefix)
    drop_margin_above: float = math.inf  # STA hard weighting: drop pairs the reference separates by more
    drop_margin_below: float = -math.inf  # ... or that it ranks the wrong way by more than this (noise)
    focal_gamma: float = 0.0  # focal weight (1 - sigmoid(beta h))^gamma on each pair; 0: off
    # preference data
    sources: list = field(default_factory=lambda: ["rule", "model"])
    captions: bool = True  # rule pairs on captions too
    paraphrases: int = 1  # rule pairs of the training scenes asked in this many draws of the training wording
    counterfactual: int = 0  # prior-keeping training scenes edited per kind (audio_align.counterfactual); 0: none
    model_scenes: int = 400  # training scenes whose questions the model answers for its own negatives
    samples: int = 2  # sampled answers per question besides the greedy one
    temperature: float = 1.0
    max_pairs: int = 0  # at most this many training pairs (the model's own and the counterfactual ones first,
    # then a sample of the rule-made ones); 0: all
    max_dev_pairs: int = 600  # a seeded subset of the dev pairs (the dev loss is computed on them)
    pairs_from: str = ""  # another align run whose pairs to reuse when they were made with these settings
    max_tokens: int = 8000  # padded tokens per batch (chosen and rejected rows together)
    max_items: int = 32  # pairs per batch
    dev_eval_scenes: int = 60  # dev scenes whose questions the final model answers (config.json dev_scores)
    lr: float = 5e-5
    warmup_updates: int = 50
    max_updates: int = 600
    save_interval_updates: int = 100
    validate_interval_updates: int = 100
    average_last: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        if self.train_params not in TRAIN_PARAMS:
            raise ConfigError(f"train_params={self.train_params!r}: expected one of {', '.join(TRAIN_PARAMS)}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"beta must be a positive number, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ConfigError(f"sft_weight must be a number >= 0, got {self.sft_weight}")
        if not (math.isfinite(self.focal_gamma) and self.focal_gamma >= 0):
            raise ConfigError(f"focal_gamma must be a number >= 0, got {self.focal_gamma}")
        bad = [s for s in self.sources if s not in ("rule", "model")]
        if bad or not self.sources:
            raise ConfigError(f"sources={self.sources!r}: expected a non-empty list of rule, model")
        if self.train_params == "prefix" and self.prefix_tokens < 1:
            raise ConfigError("train_params=prefix needs prefix_tokens >= 1")
        if not self.init:
            raise ConfigError("init: the instruction-tuned model directory to align is required")
        if self.counterfactual < 0:
            raise ConfigError(f"counterfactual must be >= 0, got {self.counterfactual}")
        if self.paraphrases < 1:
            raise ConfigError(f"paraphrases must be >= 1, got {self.paraphrases}")


# ---------------------------------------------------------------- losses

def preference_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                    method: str = "dpo", beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Per-pair loss and margin h = (pi_c - pi_r) - (ref_c - ref_r). For ``ipo`` pass
    per-token mean log-probabilities (as IPO and TRL do), for the others sums."""
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    eps = label_smoothing
    if method == "dpo":
        loss = -(1 - eps) * nn.functional.logsigmoid(beta * h) - eps * nn.functional.logsigmoid(-beta * h)
    elif method == "robust":
        loss = ((1 - eps) * -nn.functional.logsigmoid(beta * h) + eps * nn.functional.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif method == "ipo":
        loss = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {method!r}")
    return loss, h


# ---------------------------------------------------------------- data

@dataclass
class PairSet:
    """Pairs of one split with the scene each asks about, and the reference log-probs."""

    pairs: list[prefs.Pair]
    scene_index: list[int]  # into the SceneSet
    ref: dict[str, Tensor] = field(default_factory=dict)  # chosen, rejected, chosen_n, rejected_n


def pair_batch(tok: ChatTokenizer, model_cfg: Any, scenes: Any, ps: PairSet, idx: list[int]) -> dict[str, Tensor]:
    """Rows 0..N-1 the chosen answers of pairs ``idx``, rows N..2N-1 the rejected ones."""
    rows, states = [], []
    for side in ("chosen", "rejected"):
        for i in idx:
            p, si = ps.pairs[i], ps.scene_index[i]
            rows.append(tok.conversation([(p.question, getattr(p, side))], model_cfg.audio_tokens(len(scenes.states[si]))))
            states.append(scenes.states[si])
    out = chat_batch(rows, states)
    if ps.ref:
        sel = torch.tensor(idx)
        out.update({f"ref_{k}": v[sel] for k, v in ps.ref.items()})
    return out


@torch.no_grad()
def reference_logps(model: AudioLanguageModel, tok: ChatTokenizer, scenes: Any, ps: PairSet, batch_pairs: int = 32,
                    desc: str = "reference") -> dict[str, Tensor]:
    """log p(chosen), log p(rejected) and their token counts under ``model`` for every pair."""
    model.eval()
    device = model_device(model)
    order = sorted(range(len(ps.pairs)), key=lambda i: len(scenes.states[ps.scene_index[i]]))
    out = {k: torch.zeros(len(ps.pairs)) for k in ("chosen", "rejected", "chosen_n", "rejected_n")}
    progress = Progress(len(order), desc, "pairs", every=2000)
    bare = PairSet(ps.pairs, ps.scene_index)
    for k in range(0, len(order), batch_pairs):
        idx = order[k:k + batch_pairs]
        b = to_device(pair_batch(tok, model.cfg, scenes, bare, idx), device)
        lp, n = sequence_logps(model(b["input_ids"], b["attention_mask"], b["audio"], b["audio_lens"]), b["labels"])
        m = len(idx)
        sel = torch.tensor(idx)
        out["chosen"][sel], out["rejected"][sel] = lp[:m].cpu(), lp[m:].cpu()
        out["chosen_n"][sel], out["rejected_n"][sel] = n[:m].float().cpu(), n[m:].float().cpu()
        progress(k + len(idx), len(order))
    progress.close()
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _model_answers(model: AudioLanguageModel, tok: ChatTokenizer, states: list[Tensor], questions: list[str],
                   temperature: float, seed: int) -> list[str]:
    from audio_align.evaluate import answer

    # short answers are what is asked (captions are not); a rambling sample is cut at 24 pieces
    return answer(model, tok, states, questions, max_new_tokens=24, temperature=temperature, seed=seed)


# ---------------------------------------------------------------- the recipe

class AlignRecipe:
    def __init__(self, cfg: AlignConfig, model: AudioLanguageModel, tok: ChatTokenizer, scenes: dict, pairs: dict,
                 out: Path, recipe: dict, world: int, extra: dict):
        self.cfg, self.model_cfg, self.tok, self.scenes, self.pairs = cfg, model.cfg, tok, scenes, pairs
        self.out, self.recipe, self.world, self.extra = out, recipe, world, extra
        self.name = f"align {cfg.method} ({cfg.train_params})"
        train = pairs["train"]
        self._len = []
        for i, p in enumerate(train.pairs):
            n = model.cfg.audio_tokens(len(scenes["train"].states[train.scene_index[i]]))
            q = len(tok.user_turn(p.question)) + n + 4
            self._len.append(2 * q + len(tok.tok.encode(p.chosen)) + len(tok.tok.encode(p.rejected)) + 2)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return batches_by_frames(self._len, self.cfg.max_tokens, self.cfg.max_items, seed=self.cfg.seed, epoch=epoch)

    def make_batch(self, key: list[int], gen: torch.Generator) -> dict[str, Tensor]:
        return pair_batch(self.tok, self.model_cfg, self.scenes["train"], self.pairs["train"], key)

    def _losses(self, module: nn.Module, b: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        lp, n = sequence_logps(module(b["input_ids"], b["attention_mask"], b["audio"], b["audio_lens"]), b["labels"])
        m = lp.shape[0] // 2
        pc, pr, rc, rr = lp[:m], lp[m:], b["ref_chosen"], b["ref_rejected"]
        if self.cfg.method == "ipo":
            nc, nr = n[:m].clamp(min=1), n[m:].clamp(min=1)
            pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
        loss, h = preference_loss(pc, pr, rc, rr, self.cfg.method, self.cfg.beta, self.cfg.label_smoothing)
        if self.cfg.focal_gamma:
            loss = loss * (1 - torch.sigmoid(self.cfg.beta * h.detach())) ** self.cfg.focal_gamma
        return loss, h, -lp[:m], n[:m], n[m:]

    def backward(self, module: nn.Module, batches: list[dict[str, Tensor]]) -> dict[str, float]:
        n_pairs = sum(int(b["input_ids"].shape[0]) // 2 for b in batches)
        n_tok = sum(int(b["labels"][: b["labels"].shape[0] // 2, 1:].ne(IGNORE).sum()) for b in batches)
        total = nll_total = correct = margin = 0.0
        for b in batches:
            loss, h, nll, _, _ = self._losses(module, b)
            obj = loss.sum() / n_pairs
            if self.cfg.sft_weight:
                obj = obj + self.cfg.sft_weight * nll.sum() / max(1, n_tok)
            obj.backward()
            total += float(loss.detach().sum())
            nll_total += float(nll.detach().sum())
            correct += float((h.detach() > 0).sum())
            margin += float(h.detach().sum())
        return {"loss": total / n_pairs, "nll": nll_total / max(1, n_tok), "reward_acc": correct / n_pairs,
                "margin": margin / n_pairs}

    def dev_loss(self, model: nn.Module) -> float:
        dev = self.pairs["dev"]
        device = model_device(model)
        total = 0.0
        for k in range(0, len(dev.pairs), 32):
            b = to_device(pair_batch(self.tok, self.model_cfg, self.scenes["dev"], dev, list(range(k, min(len(dev.pairs), k + 32)))),
                          device)
            loss, _, _, _, _ = self._losses(model, b)
            total += float(loss.sum())
        return total / max(1, len(dev.pairs))

    def finish(self, model: nn.Module, averaged: list[Path], state: dict) -> None:
        from compress.lora import merge_lora

        merged = merge_lora(model)
        scores, n = dev_scores(model, self.tok, self.scenes["dev"], self.cfg.dev_eval_scenes)
        extra = {"task": "lalm", "stage": "align", "method": self.cfg.method, "train_params": self.cfg.train_params,
                 "recipe": self.recipe, "scenes": self.cfg.scenes, "init": self.cfg.init, **self.extra,
                 "lora_layers_merged": merged, "averaged": [p.name for p in averaged], "dev_scores": scores,
                 "dev_questions": n, "train_seconds": round(state["seconds"], 1), "updates": state["update"],
                 "threads": torch.get_num_threads(), "processes": self.world}
        save_lalm_dir(model, self.out / TOKENIZER_FILE, self.out / "model", extra=extra)
        log.info("model written to %s (dev accuracy: %s)", self.out / "model", scores)


# ---------------------------------------------------------------- the run

def _pairs_for(cfg: AlignConfig, model: AudioLanguageModel, tok: ChatTokenizer, scenes: Any, split: str,
               classes: list[str], rules: list[tuple[str, str]]) -> list[prefs.Pair]:
    pairs: list[prefs.Pair] = []
    if "rule" in cfg.sources or split == "dev":
        asked = [scenes.questions]
        if split == "train":  # the same scenes asked again: other questions, other training paraphrases
            asked += [qa.questions_by_scene(scenes.scenes, "train", classes, rules, cfg.seed + k)
                      for k in range(1, cfg.paraphrases)]
        # the counterfactual pairs: the questions about the prior's two sounds, on an edited scene
        # (answers flipped by the edit) and on its original (the same questions, the prior kept),
        # so that the pairs teach the audio's answer, not a new prior
        edited = {s["id"]: s["counterfactual"]["edit"] for s in scenes.scenes if "counterfactual" in s}
        edited.update({s["counterfactual"]["of"]: "original" for s in scenes.scenes if "counterfactual" in s})
        seen: set[tuple[str, str, str, str]] = set()
        for questions in asked:
            flipped = {(q.scene, q.question) for qs in questions for q in qs if q.probes_prior and q.scene in edited}
            for p in prefs.build_pairs(scenes.scenes, questions, classes, rules, cfg.seed, cfg.captions):
                if (p.scene, p.question, p.chosen, p.rejected) not in seen:
                    seen.add((p.scene, p.question, p.chosen, p.rejected))
                    if (p.scene, p.question) in flipped:  # e.g. counterfactual:swap_order/reverse_order
                        p.source = f"counterfactual:{edited[p.scene]}/{p.source.split(':', 1)[-1]}"
                    pairs.append(p)
    if "model" in cfg.sources and split == "train" and cfg.model_scenes:
        items = [(si, q) for si in range(min(cfg.model_scenes, len(scenes.scenes))) for q in scenes.questions[si]
                 if q.kind != qa.CAPTION]
        log.info("the model answers %d questions of %d training scenes (%d samples each at temperature %g)",
                 len(items), min(cfg.model_scenes, len(scenes.scenes)), cfg.samples, cfg.temperature)

        def answer_fn(idx: list[int], temperature: float, seed: int) -> list[str]:
            return _model_answers(model, tok, [scenes.states[items[i][0]] for i in idx], [items[i][1].question for i in idx],
                                  temperature, hash_seed(cfg.seed, seed))

        got = prefs.sample_answers(answer_fn, len(items), cfg.samples, cfg.temperature)
        pairs += prefs.model_pairs([q for _, q in items], got)
    if split == "train" and cfg.max_pairs and len(pairs) > cfg.max_pairs:
        # the model's own hallucinations first, then the counterfactual scenes', then a seeded
        # sample of the rule-made ones
        first = lambda p: p.source == "model" or p.source.startswith("counterfactual:")  # noqa: E731
        own = [i for i, p in enumerate(pairs) if first(p)][: cfg.max_pairs]
        rest = [i for i, p in enumerate(pairs) if not first(p)]
        keep = sorted(own + random.Random(cfg.seed).sample(rest, cfg.max_pairs - len(own)))
        pairs = [pairs[i] for i in keep]
    if split == "dev" and cfg.max_dev_pairs and len(pairs) > cfg.max_dev_pairs:
        keep = sorted(random.Random(cfg.seed).sample(range(len(pairs)), cfg.max_dev_pairs))
        pairs = [pairs[i] for i in keep]
    return pairs


def _with_counterfactuals(cfg: AlignConfig, root: Path, manifest: dict, train: SceneSet, frontend: AudioFrontEnd,
                          out: Path) -> SceneSet:
    """The training scenes and, after them, ``cfg.counterfactual`` edited scenes of each kind
    with their questions and encoder states (cached under ``out/counterfactual``)."""
    from audio_align.counterfactual import edit_scenes, edited_wave
    from audio_align.scenes import manifest_rules
    from audio_align.encoded import encode_scenes
    from speech.audio import load_audio

    edits = edit_scenes(train.scenes, manifest_rules(manifest), cfg.counterfactual)
    original = {s["id"]: s for s in train.scenes}
    how = {s["id"]: e for s, e in edits}
    edited = [s for s, _ in edits]
    log.info("counterfactual scenes: %d (%s)", len(edited),
             ", ".join(f"{k}: {sum(e.kind == k for e in how.values())}" for k in dict.fromkeys(e.kind for e in how.values())))

    def load(s: dict) -> Any:
        e = how[s["id"]]
        return edited_wave(e, load_audio(root / "train" / original[e.original]["wav"]))

    states = encode_scenes(out / "counterfactual", "train", edited, frontend, load=load)
    sentences = qa.spoken_sentences(train.scenes)  # the originals' options of "what was said"
    questions = [qa.questions_for(s, "train", manifest["classes"], qa.rules_of(manifest), sentences, cfg.seed)
                 for s in edited]
    return SceneSet(train.scenes + edited, train.questions + questions, train.states + [states[s["id"]] for s in edited])


def _data_key(cfg: AlignConfig, split: str, init_digest: str) -> dict:
    keys = ("scenes", "init", "sources", "captions", "paraphrases", "counterfactual", "model_scenes", "samples",
            "temperature", "max_pairs", "max_dev_pairs", "seed")
    return {"split": split, "init_weights": init_digest, **{k: getattr(cfg, k) for k in keys}}


def prepare(cfg: AlignConfig, base: AudioLanguageModel, model: AudioLanguageModel, tok: ChatTokenizer, scenes: dict,
            classes: list[str], rules: list[tuple[str, str]], out: Path, init_digest: str) -> dict[str, PairSet]:
    """Pairs (the model's own negatives from ``base``, the instruction-tuned model) and
    reference log-probs (under ``model`` as training starts) of both splits: read from
    ``out`` (or ``pairs_from``) when they were made for this model and these settings, else
    made and written to ``out``."""
    sets = {}
    for split in ("train", "dev"):
        name = f"pairs{'' if split == 'train' else '_dev'}.jsonl"
        path = out / name
        key = _data_key(cfg, split, init_digest)
        pairs = None
        for where in [path] + ([Path(cfg.pairs_from) / name] if cfg.pairs_from else []):
            if where.is_file():
                header, got = prefs.read_pairs(where)
                if header.get("key") == key:
                    pairs = got
                    if where != path:
                        shutil.copyfile(where, path)
                    break
        if pairs is None:
            pairs = _pairs_for(cfg, base, tok, scenes[split], split, classes, rules)
            prefs.write_pairs(path, pairs, {"key": key, "provenance": prefs.provenance(pairs)})
        index = {s["id"]: i for i, s in enumerate(scenes[split].scenes)}
        sets[split] = PairSet(pairs, [index[p.scene] for p in pairs])
        log.info("%s pairs: %d %s", split, len(pairs), prefs.provenance(pairs))
        ref_path = out / f"reference{'' if split == 'train' else '_dev'}.safetensors"
        ref_key = hashlib.sha256((str(key) + _file_digest(path) + str(cfg.prefix_tokens if cfg.train_params == "prefix" else 0))
                                 .encode()).hexdigest()[:16]
        ref = None
        if ref_path.is_file():
            try:
                from safetensors import safe_open

                with safe_open(str(ref_path), "pt") as f:
                    same = (f.metadata() or {}).get("key") == ref_key
                ref = load_file(str(ref_path)) if same else None
            except Exception:  # a damaged cache: recompute it
                ref = None
        if ref is None:
            ref = reference_logps(model, tok, scenes[split], sets[split], desc=f"reference log-probs ({split})")
            with atomic_path(ref_path) as tmp:
                save_file({k: v.contiguous() for k, v in ref.items()}, str(tmp), metadata={"key": ref_key})
        sets[split].ref = ref
    return sets


def _keep_pairs(ps: PairSet, cfg: AlignConfig) -> tuple[PairSet, dict]:
    """STA's hard weighting: drop pairs by the reference's own margin."""
    margin = ps.ref["chosen"] - ps.ref["rejected"]
    keep = [i for i in range(len(ps.pairs)) if cfg.drop_margin_below <= float(margin[i]) <= cfg.drop_margin_above]
    sel = torch.tensor(keep, dtype=torch.long)
    out = PairSet([ps.pairs[i] for i in keep], [ps.scene_index[i] for i in keep], {k: v[sel] for k, v in ps.ref.items()})
    return out, {"pairs": len(ps.pairs), "kept": len(keep)}


def _prefix_model(model: AudioLanguageModel, tok: ChatTokenizer, n: int) -> AudioLanguageModel:
    """The same model with ``n`` prefix embeddings, each starting as ``<|im_start|>``'s."""
    cfg = dataclasses.replace(model.cfg, prefix_tokens=n)
    new = AudioLanguageModel(cfg, model.audio_id)
    state = {k: v for k, v in model.state_dict().items() if k != "prefix"}
    new.load_state_dict(state, strict=False)
    new.lm.tie_weights()
    with torch.no_grad():
        new.prefix.copy_(new.lm.get_input_embeddings().weight[tok.im_start].expand(n, -1))
    return new


def align(cfg: AlignConfig) -> Path:
    from audio_align.scenes import corpus_root, read_manifest
    from compress.lora import LoraConfig, add_lora

    rank, world, recipe = start_run(cfg)
    out = Path(cfg.out)
    init = Path(cfg.init)
    base, _, _ = load_lalm_dir(init)
    if rank == 0 and not (out / TOKENIZER_FILE).is_file():
        shutil.copyfile(init / TOKENIZER_FILE, out / TOKENIZER_FILE)
    tok = ChatTokenizer(init / TOKENIZER_FILE)
    model = base
    if cfg.train_params == "prefix" and base.cfg.prefix_tokens != cfg.prefix_tokens:
        model = _prefix_model(base, tok, cfg.prefix_tokens)
    root = corpus_root(cfg.scenes)
    manifest = read_manifest(root)
    classes, rules = manifest["classes"], qa.rules_of(manifest)
    frontend = AudioFrontEnd.of(model.cfg, ear=model.ear)
    if rank != 0:  # rank 0 fills the encoder cache, the pairs and the reference log-probs; the others read them
        barrier(world)
    scenes = {split: load_scene_set(root, split, frontend, manifest, cfg.seed) for split in ("train", "dev")}
    if cfg.counterfactual:
        scenes["train"] = _with_counterfactuals(cfg, root, manifest, scenes["train"], frontend, out)
    del frontend
    pairs = prepare(cfg, base, model, tok, scenes, classes, rules, out, _file_digest(init / WEIGHTS_FILE))
    if rank == 0:
        barrier(world)
    del base
    pairs["train"], kept = _keep_pairs(pairs["train"], cfg)
    if not pairs["train"].pairs:
        raise ConfigError(f"drop_margin_above={cfg.drop_margin_above}, drop_margin_below={cfg.drop_margin_below} "
                          f"leave none of the {kept['pairs']} pairs")
    if cfg.train_params == "lora":
        model.requires_grad_(False)
        add_lora(model.lm, LoraConfig(**cfg.lora))
    elif cfg.train_params != "all":
        model.requires_grad_(False)
        (model.projector if cfg.train_params == "projector" else model.prefix).requires_grad_(True)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("align %s (%s): %d of %d parameters trainable; %d of %d pairs kept", cfg.method, cfg.train_params,
             n_params, total, kept["kept"], kept["pairs"])
    extra = {"trainable_parameters": n_params, "pairs": kept, "provenance": prefs.provenance(pairs["train"].pairs)}
    return run(AlignRecipe(cfg, model, tok, scenes, pairs, out, recipe, world, extra), model, cfg, rank, world)
