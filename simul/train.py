"""Training the zh->en translator for simultaneous translation, stage by stage.

    interpres train simul simul/configs/pretrain.yaml                  general pairs
    interpres train simul simul/configs/domain.yaml   init=runs/simul_pretrain/model
    interpres train simul simul/configs/segments.yaml init=... segmenter=...
    interpres train simul simul/configs/waitk.yaml    init=runs/simul_pretrain/model

Every stage runs :func:`speech.loop.run` (exact resume, averaging, ``torchrun``), on
examples made from the stream corpus (:mod:`simul.data`):

- ``pretrain``: general train documents as sentence pairs, plus each whole document and
  one window of consecutive sentences (stream-level pairs, so the model also translates
  several sentences without punctuation, as wait-k and local agreement ask of it);
  ``lexicon`` adds CC-CEDICT entries (headword -> first gloss) to the pairs, ``catalogs``
  the new pairs of many more packages' zh_CN catalogs (``interpres data simul --catalogs``);
- ``domain``: the same, from the target domain's train documents (fine-tuning), with
  ``general_mix`` times as many general pairs mixed in;
- ``segments``: sentence-length adaptation: the train documents (general and domain) cut
  by the boundary detector, each segment paired with its part of the translation (the
  English words of the sentences it covers; a sentence cut inside gets the share of its
  words proportional to the share of its characters), plus the true sentence pairs;
- ``waitk``: prefix-to-prefix training (STACL): a causal encoder, and target token ``i``
  attends to the first ``k + i`` source characters only.

A stage that starts from ``init`` keeps that model's tokenizers and architecture
(``model_overrides`` may still change e.g. ``causal_encoder``).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sacrebleu
import torch

from compress.distill import (KDConfig, SeqKDCorpus, batch_kd_mask, kd_loss, targets_from_outputs,
                             teacher_log_probs, truncate_targets)
from compress.files import write_json_atomic
from simul.data import (Document, StreamCorpusConfig, build_catalog_pairs, build_stream_corpus, catalog_pairs_path,
                        lexicon_pairs, load_split, read_catalog_pairs)
from simul.model import MTConfig, MTModel, preset
from simul.policies import SEGMENT_LENPEN
from simul.translator import SRC_SPM, TGT_SPM, Translator
from speech.checkpoint import load_model_dir, model_device, model_dir_hash, save_model_dir
from speech.config import ConfigError, config_to_dict
from speech.dataset import batches_by_frames
from speech.decode import encode, search
from speech.loop import LoopConfig, Progress, barrier, resolve_device, run, start_run, to_device
from speech.losses import label_smoothed_nll_loss
from speech.model import param_count
from speech.model_config import EOS_ID, PAD_ID
from speech.text_model import text_batch
from speech.tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger(__name__)

STAGES = ("pretrain", "domain", "segments", "waitk", "segmenter")


@dataclass
class SimulTrainConfig(LoopConfig):
    """A stage of the simultaneous translator's recipe (simul/configs/*.yaml)."""

    stage: str = "pretrain"
    corpus: str = "default"  # a stream corpus under $INTERPRES_HOME/simul (built when missing)
    out: str = "runs/simul_pretrain"
    model: str = "small"  # preset of simul.model (ignored with init)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # model directory to start from (weights, tokenizers, architecture)
    src_vocab_size: int = 6000  # Chinese characters (the rarest 0.05% map to <unk>)
    vocab_size: int = 4000  # English unigram pieces
    windows: bool = True  # add stream-level pairs (whole documents, a window of each)
    # stage pretrain: up to this many CC-CEDICT entries (simul.data.lexicon_pairs, a seeded
    # draw of those whose characters the source vocabulary knows) join the training pairs
    lexicon: int = 0
    # stage pretrain: add the corpus's general/catalogs.tsv (simul.data.build_catalog_pairs: about
    # 196k new pairs from 1,269 more packages' zh_CN catalogs; built when missing)
    catalogs: bool = False
    # stage domain: general train pairs mixed into the domain's, as a multiple of their
    # number (a seeded draw), so that adaptation does not forget the general test
    general_mix: float = 0.0
    waitk: int = 0  # > 0: prefix-to-prefix training, target token i sees k + i source characters
    segmenter: str | None = None  # stage segments: the boundary detector's directory
    seg_threshold: float = 0.5
    seg_max_len: int = 40
    max_tokens: int = 6000  # batch size x longest sequence (source or target)
    max_items: int = 256
    label_smoothing: float = 0.1
    dev_bleu_max: int = 400  # dev sentences translated greedily for the final BLEU
    # distillation (compress/): teachers (several = an ensemble), word-level KD (kd.alpha 0 = none),
    # sequence-level KD (train on the teachers' beam outputs)
    teacher: list[str] = field(default_factory=list)
    kd: KDConfig = field(default_factory=KDConfig)
    seq_kd: bool = False
    seq_kd_beam: int = 4
    # a teacher output caught in a loop (a 3-gram three times: compress.distill.degenerate) leaves
    # the pair its reference, as in the speech recipe; false keeps every output
    seq_kd_filter: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got '{self.stage}'")
        if self.stage == "segments" and not self.segmenter:
            raise ConfigError("stage 'segments' needs 'segmenter' (a boundary detector directory)")
        if self.stage in ("domain", "segments") and not self.init:
            raise ConfigError(f"stage '{self.stage}' fine-tunes: set 'init' to a model directory")
        if self.stage == "waitk" and self.waitk < 1:
            raise ConfigError("stage 'waitk' needs 'waitk' >= 1")
        if self.lexicon < 0 or self.general_mix < 0:
            raise ConfigError("lexicon and general_mix must be >= 0")
        if self.lexicon and self.stage != "pretrain":
            raise ConfigError("lexicon adds dictionary pairs to stage pretrain only")
        if self.catalogs and self.stage != "pretrain":
            raise ConfigError("catalogs adds catalog pairs to stage pretrain only")
        if self.general_mix and self.stage != "domain":
            raise ConfigError("general_mix mixes general pairs into stage domain only")
        if self.seq_kd and not self.teacher:
            raise ConfigError("seq_kd needs teacher: the model directories whose outputs are learned")


# ----------------------------------------------------------------------------- examples


def document_pairs(docs: list[Document], windows: bool, seed: int) -> list[tuple[str, str]]:
    """Sentence pairs, plus (with ``windows``) each whole document and one window of it."""
    pairs = [(z, e) for d in docs for z, e in zip(d.zh, d.en)]
    if windows:
        rng = random.Random(seed)
        for d in docs:
            n = len(d.zh)
            pairs.append((d.source, d.reference))
            if n > 2:
                size = rng.randint(2, n - 1)
                start = rng.randint(0, n - size)
                pairs.append(("".join(d.zh[start:start + size]), " ".join(d.en[start:start + size])))
    return pairs


def segment_translation(doc: Document, start: int, end: int) -> str:
    """The English of source characters [start, end): whole sentences inside, and the
    proportional share of the words of a sentence cut inside."""
    words: list[str] = []
    pos = 0
    for zh, en in zip(doc.zh, doc.en):
        s, e = pos, pos + len(zh)
        pos = e
        lo, hi = max(start, s), min(end, e)
        if lo >= hi:
            continue
        w = en.split()
        a = round(len(w) * (lo - s) / len(zh))
        b = round(len(w) * (hi - s) / len(zh))
        words.extend(w[a:b])
    return " ".join(words)


def segment_pairs(docs: list[Document], segmenter: Any, threshold: float, max_len: int) -> list[tuple[str, str]]:
    """Each document cut as the streaming segmenter cuts it; segments with their English."""
    from simul.segmenter import cut_positions  # noqa: PLC0415 - only this stage needs it

    pairs = []
    for d in docs:
        src = d.source
        cuts = cut_positions(segmenter.boundary_probs(src), threshold, max_len)
        bounds = [0, *[c for c in cuts if 0 < c < len(src)], len(src)]
        for a, b in zip(bounds, bounds[1:]):
            en = segment_translation(d, a, b)
            if b > a and en:
                pairs.append((src[a:b], en))
    return pairs


@dataclass
class Examples:
    src: list[list[int]]
    tgt: list[list[int]]  # [bos, pieces..., eos]
    refs: list[str]
    srcs: list[str]

    @property
    def lengths(self) -> list[int]:
        return [max(len(s), len(t)) for s, t in zip(self.src, self.tgt)]


def to_examples(pairs: list[tuple[str, str]], src_tok: Tokenizer, tgt_tok: Tokenizer) -> Examples:
    src, tgt, refs, srcs = [], [], [], []
    for zh, en in pairs:
        s = src_tok.encode(zh)
        if s and en:
            src.append(s + [EOS_ID])
            tgt.append(tgt_tok.target_ids(en))
            refs.append(en)
            srcs.append(zh)
    return Examples(src, tgt, refs, srcs)


def make_batch(ex: Examples, idx: list[int]) -> dict[str, torch.Tensor]:
    return text_batch([ex.src[i] for i in idx], [ex.tgt[i] for i in idx])


def source_limit(u: int, k: int, device: torch.device | None = None) -> torch.Tensor:
    """Wait-k: target position i (0-based) sees the first k + i source tokens."""
    return torch.arange(u, device=device) + k


# ----------------------------------------------------------------------------- the recipe


class MTRecipe:
    name = "simul"

    def __init__(self, cfg: SimulTrainConfig, train: Examples, dev: Examples, mcfg: MTConfig, recipe: dict,
                 out: Path, world: int, teachers: list[MTModel] | None = None):
        self.cfg, self.train, self.dev, self.mcfg, self.recipe, self.out, self.world = (
            cfg, train, dev, mcfg, recipe, out, world)
        self.name = f"simul {cfg.stage}" + (" (distill)" if teachers else "")
        self.teachers = teachers if teachers and cfg.kd.alpha > 0 else []

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return batches_by_frames(self.train.lengths, self.cfg.max_tokens, self.cfg.max_items,
                                 seed=self.cfg.seed, epoch=epoch)

    def make_batch(self, key: list[int], gen: torch.Generator) -> dict[str, torch.Tensor]:
        return make_batch(self.train, key)

    def _forward(self, module: torch.nn.Module, b: dict[str, torch.Tensor], prev: torch.Tensor | None = None
                 ) -> torch.Tensor:
        prev = b["prev"] if prev is None else prev
        limit = source_limit(prev.shape[1], self.cfg.waitk, prev.device) if self.cfg.waitk else None
        return module(b["src"], b["src_lens"], prev, limit)["logits"]

    def backward(self, module: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        kd = dataclasses.replace(self.cfg.kd, label_smoothing=self.cfg.label_smoothing)
        cut = [truncate_targets(b["prev"], b["target"], kd.truncate, PAD_ID) for b in batches]
        n_tok = sum(int((target != PAD_ID).sum()) for _, target in cut)
        loss_sum, nll_sum, kd_sum = 0.0, 0.0, 0.0
        for b, (prev, target) in zip(batches, cut):
            teacher = teacher_log_probs(self.teachers, lambda t: self._forward(t, b, prev))
            ls, parts = kd_loss(self._forward(module, b, prev), teacher, target, kd, PAD_ID,
                                batch_kd_mask(target, PAD_ID, kd))
            loss = ls / max(1, n_tok)
            loss.backward()
            loss_sum += float(loss.detach())
            nll_sum += parts["nll"]
            kd_sum += parts["kd"]
        stats = {"loss": loss_sum, "nll": nll_sum / max(1, n_tok)}
        if self.teachers:
            stats["kd"] = kd_sum / max(1, n_tok)
        return stats

    def dev_loss(self, model: torch.nn.Module) -> float:
        total, tokens = 0.0, 0
        device = model_device(model)
        for idx in batches_by_frames(self.dev.lengths, self.cfg.max_tokens, self.cfg.max_items, shuffle=False):
            b = to_device(make_batch(self.dev, idx), device)
            _, nll = label_smoothed_nll_loss(self._forward(model, b), b["target"], 0.0, PAD_ID)
            total += float(nll)
            tokens += int((b["target"] != PAD_ID).sum())
        return total / max(1, tokens)

    def finish(self, model: torch.nn.Module, averaged: list[Path], state: dict) -> None:
        final = self.out / "model"
        final.mkdir(parents=True, exist_ok=True)
        for name in (SRC_SPM, TGT_SPM):
            shutil.copyfile(self.out / name, final / name)
        scores = {}
        n = min(self.cfg.dev_bleu_max, len(self.dev.refs))
        if n:
            tr = Translator(final, model=model)
            hyps = [tr.detokenize(ids) for ids in tr.translate(self.dev.srcs[:n])]
            scores = {"bleu": round(sacrebleu.corpus_bleu(hyps, [self.dev.refs[:n]]).score, 2), "sentences": n}
        extra = {"task": "simul-mt", "stage": self.cfg.stage, "waitk": self.cfg.waitk, "recipe": self.recipe,
                 "averaged": [p.name for p in averaged], "dev_scores": scores,
                 "train_seconds": round(state["seconds"], 1), "updates": state["update"],
                 "threads": torch.get_num_threads(), "processes": self.world}
        save_model_dir(model, self.mcfg, final, extra=extra)
        log.info("model written to %s (dev: %s)", final, scores)


def stage_pairs(cfg: SimulTrainConfig, split: str) -> list[tuple[str, str]]:
    if cfg.stage in ("pretrain", "waitk"):
        pairs = document_pairs(load_split(cfg.corpus, "general", split), cfg.windows, cfg.seed)
        if split == "train" and cfg.catalogs:
            extra = read_catalog_pairs(catalog_pairs_path(cfg.corpus))
            log.info("catalogs: %d pairs beside the %d of the streams", len(extra), len(pairs))
            pairs += extra
        return pairs
    if cfg.stage == "domain":
        pairs = document_pairs(load_split(cfg.corpus, "domain", split), cfg.windows, cfg.seed)
        if split == "train" and cfg.general_mix > 0:
            general = document_pairs(load_split(cfg.corpus, "general", split), cfg.windows, cfg.seed)
            k = min(len(general), round(cfg.general_mix * len(pairs)))
            pairs += random.Random(cfg.seed).sample(general, k)
        return pairs
    from simul.segmenter import Segmenter  # noqa: PLC0415

    seg = Segmenter.load(cfg.segmenter)
    docs = load_split(cfg.corpus, "general", split) + load_split(cfg.corpus, "domain", split)
    # the true sentences stay in, so whole sentences are not forgotten for fragments
    return segment_pairs(docs, seg, cfg.seg_threshold, cfg.seg_max_len) + document_pairs(docs, False, cfg.seed)


def known_lexicon_pairs(src_tok: Tokenizer, n: int, seed: int) -> list[tuple[str, str]]:
    """Up to ``n`` CC-CEDICT pairs whose headword the source vocabulary spells without <unk>
    (a seeded draw; the tokenizers are trained on the corpus alone)."""
    known = [(z, e) for z, e in lexicon_pairs() if src_tok.unk_id not in src_tok.encode(z)]
    random.Random(seed).shuffle(known)
    log.info("lexicon: %d of the CC-CEDICT pairs spelled by the source vocabulary, %d used", len(known),
             min(n, len(known)))
    return known[:n]


def train_segmenter_stage(cfg: SimulTrainConfig) -> Path:
    """The boundary detector, on the train streams of both parts (``model_overrides``
    sets :class:`simul.segmenter.SegmenterConfig` fields); dev precision/recall/F1 go
    into its ``scores.json``."""
    from simul.segmenter import SegmenterConfig, train_segmenter  # noqa: PLC0415

    out = Path(cfg.out)
    final = out / "model"
    if (final / "config.json").exists() and (out / "scores.json").exists():
        log.info("%s: the segmenter is already trained", final)
        return final
    build_stream_corpus(StreamCorpusConfig(name=cfg.corpus))
    try:
        scfg = SegmenterConfig(**{"seed": cfg.seed, **cfg.model_overrides})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model_overrides (SegmenterConfig): {e}") from e
    streams = [d.zh for part in ("general", "domain") for d in load_split(cfg.corpus, part, "train")]
    dev = [d.zh for part in ("general", "domain") for d in load_split(cfg.corpus, part, "dev")]
    seg = train_segmenter(streams, scfg, dev_streams=dev)
    seg.save(final)
    scores = {f"{t:g}": seg.evaluate(dev, threshold=t) for t in (0.1, 0.3, 0.5, 0.7, 0.9)}
    write_json_atomic(out / "scores.json", {"dev": scores, "recipe": config_to_dict(cfg)})
    log.info("segmenter written to %s (dev at 0.5: %s)", final, scores["0.5"])
    return final


def train(cfg: SimulTrainConfig) -> Path:
    """Run (or resume) one stage; return its model directory."""
    if cfg.stage == "segmenter":
        return train_segmenter_stage(cfg)
    rank, world, recipe = start_run(cfg)
    out = Path(cfg.out)
    if rank == 0 and not Path(cfg.corpus).is_dir():
        build_stream_corpus(StreamCorpusConfig(name=cfg.corpus))
        if cfg.catalogs:
            build_catalog_pairs(cfg.corpus)
    barrier(world)

    train_pairs = stage_pairs(cfg, "train")
    dev_pairs = stage_pairs(cfg, "dev")
    if rank == 0:
        if cfg.init:
            for name in (SRC_SPM, TGT_SPM):
                if not (out / name).exists():
                    shutil.copyfile(Path(cfg.init) / name, out / name)
        else:
            if not (out / SRC_SPM).exists():
                train_tokenizer([z for z, _ in train_pairs], out / SRC_SPM, cfg.src_vocab_size, model_type="char",
                                character_coverage=0.9995, add_dummy_prefix=False)
            if not (out / TGT_SPM).exists():
                train_tokenizer([e for _, e in train_pairs], out / TGT_SPM, cfg.vocab_size)
    barrier(world)
    src_tok, tgt_tok = Tokenizer(out / SRC_SPM), Tokenizer(out / TGT_SPM)
    if cfg.lexicon:
        train_pairs += known_lexicon_pairs(src_tok, cfg.lexicon, cfg.seed)
    train_ex, dev_ex = to_examples(train_pairs, src_tok, tgt_tok), to_examples(dev_pairs, src_tok, tgt_tok)
    if not train_ex.src:
        raise ConfigError(f"stage {cfg.stage}: no training pairs")
    log.info("stage %s: %d train pairs, %d dev pairs", cfg.stage, len(train_ex.src), len(dev_ex.src))

    if cfg.init:
        init_model, init_conf = load_model_dir(cfg.init, config_cls=MTConfig, model_cls=MTModel)
        fields = {**dataclasses.asdict(init_model.cfg), **cfg.model_overrides}
        try:
            mcfg = MTConfig(**fields)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model_overrides: {e}") from e
        model = MTModel(mcfg)
        model.load_state_dict(init_model.state_dict())
        log.info("initialized from %s (stage %s)", cfg.init, init_conf.get("stage"))
    else:
        mcfg = preset(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size, **cfg.model_overrides)
        model = MTModel(mcfg)
    if cfg.waitk and not mcfg.causal_encoder:
        raise ConfigError("waitk training needs model_overrides: {causal_encoder: true}")
    log.info("model: %.2fM parameters", param_count(model) / 1e6)
    teachers = []
    for path in cfg.teacher:
        t, _ = load_model_dir(path, config_cls=MTConfig, model_cls=MTModel)
        if (t.cfg.vocab_size, t.cfg.src_vocab_size) != (mcfg.vocab_size, mcfg.src_vocab_size):
            raise ConfigError(f"teacher {path}: its vocabularies differ from the student's; distillation needs the same")
        teachers.append(t)
    if cfg.seq_kd:  # the teachers decode on the CPU (the simultaneous Translator's device)
        train_ex = seq_kd_examples(train_ex, teachers, out / "seq_kd.jsonl", cfg)
    teachers = [t.to(resolve_device(cfg.device)) for t in teachers]  # word KD: where the student trains
    return run(MTRecipe(cfg, train_ex, dev_ex, mcfg, recipe, out, world, teachers), model, cfg, rank, world)


def seq_kd_examples(ex: Examples, teachers: list[MTModel], path: Path, cfg: SimulTrainConfig) -> Examples:
    """Sequence-level KD: each target replaced by the teachers' beam output (an ensemble when
    several), cached and resumable in ``path`` (:class:`compress.distill.SeqKDCorpus`). With
    ``seq_kd_filter`` a degenerate output keeps the reference; the filter reads the cached
    outputs, so it leaves the cache as it is."""
    settings = {"teachers": [str(Path(t).resolve()) for t in cfg.teacher],
                "teacher_sha256": [model_dir_hash(t) for t in cfg.teacher], "beam": cfg.seq_kd_beam,
                "stage": cfg.stage, "corpus": cfg.corpus, "items": len(ex.src)}
    corpus = SeqKDCorpus(path, settings)
    ids = sorted((str(i) for i in range(len(ex.src))), key=lambda i: len(ex.src[int(i)]))

    # decoded as the policies decode a segment: the translator's limits and length penalty
    opts = Translator(cfg.teacher[0], model=teachers[0]).options(cfg.seq_kd_beam, SEGMENT_LENPEN)

    def translate(chunk: list[str]) -> list[list[int]]:
        b = make_batch(ex, [int(i) for i in chunk])
        states = encode(teachers, b["src"], b["src_lens"])
        return [r.tokens for r in search(teachers, states, [[teachers[0].cfg.bos_id]] * len(chunk), opts)]

    progress = Progress(len(ids), "seq-KD targets", "sent")
    outs = corpus.build(ids, translate, batch_size=64, progress=progress)
    progress.close()
    tgt, kept = targets_from_outputs(ex.tgt, [outs[str(i)] for i in range(len(ex.tgt))], cfg.seq_kd_filter)
    log.info("seq-KD: %d targets from %s%s", len(tgt), ", ".join(cfg.teacher),
             f"; {kept} degenerate ones keep their reference" if cfg.seq_kd_filter else "")
    return dataclasses.replace(ex, tgt=tgt)
