"""Evaluate a model on MuST-C splits: decode, score, report; resumable and sharded by rank.

    report = evaluate_mustc(EvalOptions(root="data/mustc", pairs=["en-de", "en-fr"], split="tst-COMMON",
                                        models=["models/st_small"], out=Path("eval-tst-COMMON")))
    report["pairs"]["en-de"]["bleu"]

The steps, per pair:

1. read the split with the one reader (:class:`speech.data.mustc.MustcSplit`) and, unless
   ``skip_bad``, check every segment against its talk before decoding anything;
2. sort the utterances by length (feature frames estimated from the YAML durations) into
   batches of at most ``batch_frames`` padded frames: the same batches on every run;
3. per batch: cut the segments from their talks, compute features, decode into the
   pair's languages (one encoder pass for all of them), and append the hypotheses to
   the progress log;
4. merge the hypotheses in YAML order and score them against the reference files.

What is decoded and scored. ``en-XX`` with an ST model: ``XX``, scored with sacrebleu's
BLEU and chrF at corpus level; tokenizer ``zh`` for Chinese, ``ja-mecab`` for Japanese
when mecab-python3 and ipadic are importable, else ``char`` (the report says so), ``13a``
otherwise. ``en-asr``, or any pair with ``task="asr"``: English, scored with WER (jiwer)
against the ``.en`` file, lower-cased and without punctuation as the S2T recipes do;
``also_asr`` adds English to an ST pair. A skipped utterance is scored as an empty
hypothesis: it stays in the corpus score.

Files under ``out``, each final one written to a temporary name and renamed:

- ``<pair>/<split>.hyp.<lang>``: one line per YAML entry, so ``sacrebleu REF < HYP`` rescores it;
- ``scores.json`` (per pair: scores, sacrebleu signatures, counts, audio and wall seconds,
  real-time factor; and the models, decoding options and split), ``scores.md``, ``scores.png``;
- ``<pair>/<split>.progress.jsonl`` (``.progress.rank{R}-of-{W}.jsonl`` under torchrun): the resume log.

Resume. The progress log starts with a header line holding a fingerprint of everything
that decides the hypotheses (model files, decoding options, batch size, corpus files,
pair, split, rank and world size), then one JSON line per finished batch,
``{"batch", "seconds", "utts": [{"index", "hyp": {lang: text}, ["skipped"], ["truncated"]}]}``,
flushed and fsynced before the next batch starts. A run started again with the same
arguments reads it, drops a line torn by a kill, and decodes only the utterances it
does not hold: the batches are the same, so the scores are those of an uninterrupted
run. A header with another fingerprint means other settings: the log is started over
(and the log says which settings differ).

Scale. Under ``torchrun`` (``WORLD_SIZE`` > 1) rank ``r`` of ``W`` decodes the
utterances with ``index % W == r`` into its own progress log; after a barrier (gloo)
rank 0 reads every rank's log, merges in YAML order, scores and writes the report.
:func:`launch_workers` starts that on one machine (``interpres eval mustc --workers N``).
``wall_seconds`` is the time spent on batches summed over ranks and runs, so ``rtf``
(``wall_seconds / audio_seconds``) is the real-time factor of one process.

Bad input. By default a broken split or segment is a :class:`MustcError` naming the
file and line. With ``skip_bad`` a segment whose audio cannot be had (its talk missing or
unreadable, an offset past the end, an empty segment) is skipped, logged, counted and
scored as empty. A split that is broken as a whole (a missing YAML, a text file with
another line count, an entry without an offset) stays an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from compress.errors import UserError
from compress.files import atomic_path, write_json_atomic, write_text_atomic
from speech.audio import SAMPLE_RATE
from speech.checkpoint import CONFIG_FILE
from speech.data.mustc import MustcError, MustcSplit, Segment, load_segment
from speech.dataset import batches_by_frames
from speech.decode import DecodingOptions
from speech.features import frames_of
from speech.metrics import WER_NORMALIZATION, jiwer_version, score_translation, word_error_rate
from speech.overlay import weight_files
from speech.runtime import DECODING_RUNTIMES, check_runtime
from speech.tokenizer import tokenizer_file
from speech.translate import Translator, load_translator, resolve_ctc_weight

log = logging.getLogger(__name__)

KILL_HOOK = "INTERPRES_TEST_KILL_AFTER_BATCHES"  # tests: SIGKILL this process after N new batches
PROGRESS_VERSION = 1


class EvalError(UserError, ValueError):
    """An evaluation cannot run or finish; the message names the option, file or pair at fault."""


@dataclass
class EvalOptions:
    """What ``interpres eval mustc`` evaluates, and how."""

    root: Path  # the corpus: ROOT/en-XX/data/SPLIT/...
    pairs: list[str]  # "en-de", ...; "en-asr" is transcription
    split: str = "tst-COMMON"
    models: list[Path] | None = None  # model directories (several: an ensemble); None: the bundled model
    task: str | None = None  # "st" or "asr"; None: the model's task
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    batch_frames: int = 20000  # padded feature frames per batch
    out: Path | None = None  # None: ./eval-SPLIT
    skip_bad: bool = False
    also_asr: bool = False
    runtime: str = "torch"
    # joint CTC/attention weight of the English outputs (it replaces decoding.ctc_weight); None:
    # speech.translate.DEFAULT_CTC_WEIGHT when every model has a CTC head, else 0
    ctc_weight: float | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path(f"eval-{self.split}")


# --------------------------------------------------------------------------- reading a pair


@dataclass
class PairPlan:
    """One pair to evaluate: its split, what to decode it into, what to score."""

    pair: str
    split: MustcSplit
    langs: list[str]  # decoded, in this order
    bleu_lang: str | None  # scored with BLEU/chrF against the target file
    wer_lang: str | None  # "en", scored with WER against the .en file
    missing_talks: set[str] = field(default_factory=set)  # talks of the YAML that do not exist (skip_bad)

    @property
    def base(self) -> Path:
        """The split's folder: ROOT/PAIR/data/SPLIT."""
        return self.split.wav_dir.parent


def plan_pairs(opts: EvalOptions, translator: Translator) -> list[PairPlan]:
    """Read every pair's split and check the model knows its languages and, unless ``skip_bad``,
    every segment fits its talk (from the headers): the errors come before any decoding."""
    check_runtime(opts.runtime, DECODING_RUNTIMES, "--runtime")
    task = opts.task or translator.task
    if task not in ("st", "asr"):
        raise EvalError(f"task must be 'st' or 'asr', got {task!r}")
    if not opts.pairs:
        raise EvalError("no pair given (e.g. --pairs en-de,en-fr)")
    if len(set(opts.pairs)) != len(opts.pairs):
        raise EvalError(f"a pair is given twice: {', '.join(opts.pairs)}")
    plans: list[PairPlan] = []
    for pair in opts.pairs:
        # with --skip-bad a missing talk skips its utterances instead of failing the split
        split = MustcSplit(Path(opts.root), pair, opts.split, check_talks=not opts.skip_bad)
        if task == "asr" or split.tgt_lang is None:
            langs, bleu_lang, wer_lang = ["en"], None, "en"
        else:
            bleu_lang = split.tgt_lang
            wer_lang = "en" if opts.also_asr else None
            langs = [bleu_lang] + (["en"] if opts.also_asr else [])
        plans.append(PairPlan(pair, split, langs, bleu_lang, wer_lang, split.missing_talks))
        translator.check_languages(langs)
    if not opts.skip_bad:
        for plan in plans:
            plan.split.validate()
    return plans


# --------------------------------------------------------------------------- the progress log


def _file_stamp(path: Path) -> list:
    if not path.exists():
        return [str(path), "missing"]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def progress_settings(plan: PairPlan, translator: Translator, opts: EvalOptions, rank: int, world: int) -> dict:
    """Everything that decides a rank's hypotheses for a pair: a change starts its log over."""
    models = []
    for d in translator.model_dirs:
        d = Path(d)
        config = (d / CONFIG_FILE).read_bytes()
        tok_file = tokenizer_file(json.loads(config))
        models.append({"dir": str(d.resolve()), "config_sha1": hashlib.sha1(config).hexdigest(),
                       "files": [_file_stamp(f) for f in (*weight_files(d, json.loads(config)), d / tok_file)]})
    split = plan.split
    corpus = [_file_stamp(p) for p in (split.yaml_path, split.src_path, split.tgt_path) if p is not None]
    corpus += [_file_stamp(talk) for talk in split.talks]
    return {"version": PROGRESS_VERSION, "pair": plan.pair, "split": split.split, "langs": plan.langs,
            "decoding": _decoding_dict(opts.decoding), "batch_frames": opts.batch_frames,
            "runtime": opts.runtime, "models": models, "corpus": corpus, "rank": rank, "world": world}


def _decoding_dict(decoding: DecodingOptions) -> dict:
    """The decoding options as JSON has them (lists, not tuples), so that a read log compares equal."""
    return json.loads(json.dumps(dataclasses.asdict(decoding)))


def fingerprint(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def progress_path(out: Path, pair: str, split: str, rank: int, world: int) -> Path:
    name = f"{split}.progress.jsonl" if world == 1 else f"{split}.progress.rank{rank}-of-{world}.jsonl"
    return out / pair / name


def _read_log(path: Path) -> tuple[dict | None, list[dict], int]:
    """(header, batch records, bytes of whole lines): a line cut short by a kill ends the log."""
    data = path.read_bytes()
    header, records, good = None, [], 0
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is unfinished
        try:
            rec = json.loads(line)
        except ValueError:
            break
        if header is None:
            if not isinstance(rec, dict) or "fingerprint" not in rec:
                break
            header = rec
        else:
            records.append(rec)
        good += len(line) + 1
    return header, records, good


class ProgressLog:
    """The append-only log of one rank's finished batches for one pair (see the module docstring)."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.settings = settings
        self.fingerprint = fingerprint(settings)
        self.records: list[dict] = []
        self._file = None

    def open(self) -> "ProgressLog":
        """Read what earlier runs finished (or start over) and open the log for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header, records, good = _read_log(self.path) if self.path.exists() else (None, [], 0)
        if header is not None and header.get("fingerprint") == self.fingerprint:
            self.records = records
            if good < self.path.stat().st_size:
                log.warning("%s: dropping a line cut short (the last run was killed while writing it)", self.path)
                os.truncate(self.path, good)
            if records:
                log.info("%s: resuming after %d finished batches", self.path, len(records))
            self._file = open(self.path, "ab")
            return self
        if header is not None:
            old = header.get("settings", {})
            changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            log.warning("%s: made with other settings (%s differ); starting %s over", self.path,
                        ", ".join(changed) or "unknown", self.settings["pair"])
        elif self.path.exists():
            log.warning("%s: no valid header; starting %s over", self.path, self.settings["pair"])
        self._file = open(self.path, "wb")
        self._write({"fingerprint": self.fingerprint, "settings": self.settings})
        return self

    @property
    def done(self) -> set[int]:
        return {u["index"] for rec in self.records for u in rec["utts"]}

    def append(self, batch: int, seconds: float, utts: list[dict]) -> None:
        rec = {"batch": batch, "seconds": round(seconds, 6), "utts": utts}
        self._write(rec)
        self.records.append(rec)

    def _write(self, obj: dict) -> None:
        assert self._file is not None
        self._file.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_finished(path: Path, settings: dict) -> list[dict]:
    """The batch records of a finished rank's log; EvalError if it is missing or made otherwise."""
    if not path.exists():
        raise EvalError(f"{path}: missing; rank {settings['rank']} did not write its progress log")
    header, records, _ = _read_log(path)
    if header is None or header.get("fingerprint") != fingerprint(settings):
        raise EvalError(f"{path}: made with other settings than this run's rank {settings['rank']}")
    return records


# --------------------------------------------------------------------------- decoding


def _dist() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size(), True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    return 0, 1, False


def _max_frames(translator: Translator) -> int:
    return min(m.cfg.max_source_positions for m in translator.models)


def shard_batches(plan: PairPlan, translator: Translator, batch_frames: int, rank: int, world: int) -> list[list[int]]:
    """The batches (YAML indices) of rank ``rank``: utterances with ``index % world == rank``, sorted by
    their length estimated from the YAML durations; the same on every run."""
    mine = [seg.index for seg in plan.split if seg.index % world == rank]
    cap = _max_frames(translator)
    lengths = [min(cap, frames_of(round(plan.split[i].duration * SAMPLE_RATE), translator.feature_cfg)) for i in mine]
    return [[mine[k] for k in batch] for batch in batches_by_frames(lengths, batch_frames, shuffle=False)]


def _segment_features(plan: PairPlan, seg: Segment, translator: Translator, skip_bad: bool
                      ) -> tuple[torch.Tensor | None, dict]:
    """(features, extra fields of its record) or (None, {"skipped": why}) for a bad segment with skip_bad."""
    try:
        if seg.wav.name in plan.missing_talks:
            raise MustcError(f"{seg.where}: talk {seg.wav} does not exist")
        feats = translator.features(load_segment(seg))
        if len(feats) == 0:
            raise MustcError(f"{seg.where}: segment {seg.id} ({seg.duration} s) is too short for one feature frame")
    except MustcError as e:
        why = str(e)
        if not skip_bad:
            raise MustcError(why) from None
        log.warning("skipping %s: %s", seg.id, why)
        return None, {"skipped": why}
    extra = {}
    cap = _max_frames(translator)
    if len(feats) > cap:
        log.warning("%s: segment %s has %d frames; the model takes %d: decoding its first %.1f s",
                    seg.where, seg.id, len(feats), cap, cap * translator.feature_cfg.frame_shift_ms / 1000)
        feats, extra = feats[:cap], {"truncated": True}
    return feats, extra


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def decode_shard(plan: PairPlan, translator: Translator, opts: EvalOptions, progress: ProgressLog,
                 batches: list[list[int]], kill_after: list[int] | None = None) -> int:
    """Decode the batches ``progress`` does not hold yet, logging each; return how many were decoded."""
    done = progress.done
    todo = [(b, [i for i in batch if i not in done]) for b, batch in enumerate(batches)]
    todo = [(b, idx) for b, idx in todo if idx]
    decoded = 0
    bar = tqdm(todo, desc=f"eval {plan.pair}", unit="batch", disable=None)
    for b, idx in bar:
        start = time.perf_counter()
        utts: list[dict] = []
        feats, rows = [], []
        for i in idx:
            f, extra = _segment_features(plan, plan.split[i], translator, opts.skip_bad)
            utts.append({"index": i, "hyp": {lang: "" for lang in plan.langs}, **extra})
            if f is not None:
                feats.append(f)
                rows.append(len(utts) - 1)
        if feats:
            with torch.inference_mode():
                results = translator.decode(feats, plan.langs, opts.decoding)
            for row, per_lang in zip(rows, results):
                utts[row]["hyp"] = {lang: _one_line(translator.text(r)) for lang, r in zip(plan.langs, per_lang)}
        progress.append(b, time.perf_counter() - start, utts)
        decoded += 1
        if kill_after is not None:
            kill_after[0] -= 1
            if kill_after[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)
    return decoded


# --------------------------------------------------------------------------- merging and scoring


def merge(plan: PairPlan, records: list[dict]) -> dict[str, Any]:
    """The ranks' batch records in YAML order: hyps per language, skipped, truncated, seconds."""
    n = len(plan.split)
    hyps = {lang: [None] * n for lang in plan.langs}
    skipped: dict[int, str] = {}
    truncated = 0
    seconds = 0.0
    for rec in records:
        seconds += float(rec["seconds"])
        for u in rec["utts"]:
            i = u["index"]
            for lang in plan.langs:
                hyps[lang][i] = u["hyp"][lang]
            if "skipped" in u:
                skipped[i] = u["skipped"]
            truncated += bool(u.get("truncated"))
    missing = [i for i in range(n) if hyps[plan.langs[0]][i] is None]
    if missing:
        raise EvalError(f"{plan.pair}: {len(missing)} utterances have no hypothesis (the first: entry {missing[0]})")
    return {"hyps": hyps, "skipped": skipped, "truncated": truncated, "seconds": seconds}


def hyp_path(out: Path, pair: str, split: str, lang: str) -> Path:
    return out / pair / f"{split}.hyp.{lang}"


def score_pair(plan: PairPlan, merged: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the pair's hypothesis files and return its entry of scores.json."""
    split = plan.split
    for lang, hyps in merged["hyps"].items():
        write_text_atomic(hyp_path(out, plan.pair, split.split, lang), "".join(h + "\n" for h in hyps))
    skipped = merged["skipped"]
    audio = sum(seg.duration for seg in split if seg.index not in skipped)
    entry: dict[str, Any] = {
        "src": split.src_lang, "tgt": split.tgt_lang, "langs": plan.langs,
        "n_utterances": len(split), "n_skipped": len(skipped),
        "skipped": [{"id": split[i].id, "reason": why} for i, why in sorted(skipped.items())],
        "n_truncated": merged["truncated"],
        "audio_seconds": round(audio, 3), "wall_seconds": round(merged["seconds"], 3),
        "rtf": round(merged["seconds"] / audio, 4) if audio > 0 else None,
        "hypotheses": {lang: str(hyp_path(out, plan.pair, split.split, lang)) for lang in plan.langs},
        "references": {},
    }
    if plan.bleu_lang is not None:
        entry["references"][plan.bleu_lang] = str(plan.base / "txt" / f"{split.split}.{plan.bleu_lang}")
        if len(split):
            entry.update(score_translation(plan.bleu_lang, merged["hyps"][plan.bleu_lang], [s.tgt for s in split]))
    if plan.wer_lang is not None:
        entry["references"][plan.wer_lang] = str(plan.base / "txt" / f"{split.split}.{split.src_lang}")
        entry["wer"] = word_error_rate(merged["hyps"][plan.wer_lang], [s.src for s in split])
        entry["wer_signature"] = f"jiwer {jiwer_version()}; {WER_NORMALIZATION}"
    return entry


# --------------------------------------------------------------------------- the report


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def report_markdown(report: dict) -> str:
    """``scores.md``: one row per pair, then the signatures and notes."""
    lines = [f"# MuST-C {report['split']}", "",
             f"models: {', '.join(report['models'])}; task {report['task']}; beam {report['beam']}; "
             f"lenpen {report['lenpen']}; CTC weight (English outputs) "
             f"{report.get('decoding', {}).get('ctc_weight', 0.0)}; batch frames {report['batch_frames']}; "
             f"workers {report['workers']}", "",
             "| pair | BLEU | chrF | WER | utterances | skipped | audio (s) | wall (s) | RTF |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pair, e in report["pairs"].items():
        lines.append(f"| {pair} | {_fmt(e.get('bleu'))} | {_fmt(e.get('chrf'))} | {_fmt(e.get('wer'))} | "
                     f"{e['n_utterances']} | {e['n_skipped']} | {e['audio_seconds']:.1f} | "
                     f"{e['wall_seconds']:.2f} | {_fmt(e['rtf'], 3)} |")
    lines += ["", "Signatures:", ""]
    for pair, e in report["pairs"].items():
        for key, name in (("bleu_signature", "BLEU"), ("chrf_signature", "chrF"), ("wer_signature", "WER")):
            if key in e:
                lines.append(f"- {pair} {name}: `{e[key]}`")
    notes = [f"- {pair}: {e['note']}" for pair, e in report["pairs"].items() if "note" in e]
    notes += [f"- {pair}: {e['n_skipped']} utterances skipped and scored as empty (see scores.json)"
              for pair, e in report["pairs"].items() if e["n_skipped"]]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def plot_scores(report: dict, path: Path) -> None:
    """``scores.png``: BLEU and chrF per target language (and WER where decoded into English)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - only the report plots
    from matplotlib.figure import Figure  # noqa: PLC0415

    pairs = report["pairs"]
    st = [(p, e) for p, e in pairs.items() if "bleu" in e]
    asr = [(p, e) for p, e in pairs.items() if "wer" in e]
    panels = [x for x in (st, asr) if x] or [[]]
    # each panel as wide as its bars need: a language pair of bars ~0.8 in, a WER bar ~0.6 in
    widths = [max(2.5, (0.8 if items is st else 0.6) * len(items) + 1.2) for items in panels]
    fig = Figure(figsize=(sum(widths), 3.6))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, len(panels), width_ratios=widths)
    for k, items in enumerate(panels):
        ax = fig.add_subplot(grid[0, k])
        x = list(range(len(items)))
        if items is st:
            w = 0.38
            labels = [e["tgt"] or p for p, e in items]
            b1 = ax.bar([i - w / 2 for i in x], [e["bleu"] for _, e in items], w, label="BLEU")
            b2 = ax.bar([i + w / 2 for i in x], [e["chrf"] for _, e in items], w, label="chrF")
            ax.bar_label(b1, fmt="%.1f", fontsize=7)
            ax.bar_label(b2, fmt="%.1f", fontsize=7)
            ax.set_title(f"translation, {report['split']}")
            ax.legend(fontsize=8)
        elif items is asr:
            labels = [p for p, _ in items]
            bars = ax.bar(x, [e["wer"] for _, e in items], 0.5, color="tab:red", label="WER")
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
            ax.set_title(f"WER (en), {report['split']}")
        else:
            labels = []
            ax.set_title("nothing scored")
        ax.set_xticks(x, labels)
        ax.set_ylim(0, 1.05 * max([100.0] + [b.get_height() for b in ax.patches]))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def write_report(report: dict, out: Path) -> dict[str, Path]:
    """Write scores.json, scores.md and scores.png under ``out``; return their paths."""
    paths = {"json": out / "scores.json", "md": out / "scores.md", "png": out / "scores.png"}
    write_json_atomic(paths["json"], report)
    write_text_atomic(paths["md"], report_markdown(report))
    plot_scores(report, paths["png"])
    return paths


# --------------------------------------------------------------------------- the whole run


def bundle_task(opts: EvalOptions) -> str | None:
    """Which bundled model evaluates when no model is given: the ASR model for ``--task asr``
    or when every pair is en-asr; the translator otherwise (its ``<lang:en>`` transcribes)."""
    return opts.task or ("asr" if opts.pairs and all(p == "en-asr" for p in opts.pairs) else None)


def evaluate_mustc(opts: EvalOptions, translator: Translator | None = None) -> dict | None:
    """Decode and score every pair; return the report (rank 0), or None on the other ranks.

    ``translator`` (a loaded model) replaces ``opts.models``. Raises MustcError for a broken
    split or, without ``skip_bad``, segment; TranslateError for a model or language;
    EvalError for the rest.
    """
    if opts.batch_frames < 1:
        raise EvalError(f"batch_frames must be at least 1, got {opts.batch_frames}")
    if translator is None:
        translator = load_translator(opts.models, runtime=opts.runtime, task=bundle_task(opts))
    weight = resolve_ctc_weight(translator, opts.ctc_weight)
    opts = dataclasses.replace(opts, decoding=dataclasses.replace(opts.decoding, ctc_weight=weight))
    plans = plan_pairs(opts, translator)
    rank, world, started = _dist()
    out = opts.out_dir
    try:
        kill = os.environ.get(KILL_HOOK)
        kill_after = [int(kill)] if kill else None
        for plan in plans:
            batches = shard_batches(plan, translator, opts.batch_frames, rank, world)
            settings = progress_settings(plan, translator, opts, rank, world)
            progress = ProgressLog(progress_path(out, plan.pair, opts.split, rank, world), settings).open()
            try:
                n = decode_shard(plan, translator, opts, progress, batches, kill_after)
            finally:
                progress.close()
            log.info("%s/%s rank %d of %d: %d batches decoded now, %d before", plan.pair, opts.split, rank,
                     world, n, len(batches) - n)
        if world > 1 and dist.is_initialized():
            dist.barrier()
        if rank != 0:
            return None
        report: dict[str, Any] = {
            "split": opts.split, "root": str(Path(opts.root)), "models": [str(d) for d in translator.model_dirs],
            "task": opts.task or translator.task, "beam": opts.decoding.beam_size,
            "lenpen": opts.decoding.length_penalty, "decoding": _decoding_dict(opts.decoding),
            "batch_frames": opts.batch_frames, "workers": world, "runtime": opts.runtime,
            "skip_bad": opts.skip_bad, "pairs": {},
        }
        for plan in plans:
            records = []
            for r in range(world):
                settings = progress_settings(plan, translator, opts, r, world)
                records += read_finished(progress_path(out, plan.pair, opts.split, r, world), settings)
            report["pairs"][plan.pair] = score_pair(plan, merge(plan, records), out)
        write_report(report, out)
        return report
    finally:
        if started:
            dist.destroy_process_group()


def launch_workers(opts: EvalOptions, n: int, argv: Sequence[str]) -> int:
    """Check ``opts`` here (so that a bad pair or model is one clear error), then run
    ``interpres ARGV`` in ``n`` processes under torchrun on this machine; its exit status."""
    # with onnx: exports once, before the workers
    translator = load_translator(opts.models, runtime=opts.runtime, task=bundle_task(opts))
    plan_pairs(opts, translator)
    del translator
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "interpres", *argv]
    log.info("running %d workers: %s", n, " ".join(cmd))
    return subprocess.run(cmd, env=env).returncode
