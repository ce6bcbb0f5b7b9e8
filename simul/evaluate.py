"""``interpres eval simul``: every policy over the test streams, scored as SimulEval scores.

For each part (general, domain) and each agent (a policy at one parameter value) it
writes, in SimulEval's layout::

    OUT/PART/AGENT/instances.log   JSON lines: index, prediction, delays, elapsed,
                                   prediction_length, reference, source, source_length
    OUT/PART/AGENT/scores.tsv      BLEU AL AP DAL LAAL StartOffset EndOffset

and over all of them ``OUT/scores.json`` (with ``BLEU_ci``: the 95% bootstrap interval of
BLEU over the streams, and ``repeated_sentences``: output sentences of three words or more
that copy one the stream already said, beyond the copies its reference has), ``OUT/scores.md`` and ``OUT/bleu_al.png`` (BLEU
against AL, one curve per policy over its parameter). BLEU is sacrebleu's corpus BLEU of
the detokenized predictions against the references (as SimulEval's sacrebleu scorer);
latency is :mod:`simul.latency` over source characters.

Each finished instance is appended to its ``instances.log`` and fsynced; run the same
command again and an agent resumes after its last finished instance (a ``run.json`` of
the settings decides whether the log can be reused).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import sacrebleu
from tqdm import tqdm

from compress.errors import UserError
from compress.files import atomic_path, write_json_atomic
from compress.report import BOOTSTRAP_SAMPLES, sacrebleu_resampler
from simul.data import PARTS, Document, StreamCorpusConfig, build_stream_corpus, corpus_dir, load_split
from simul.latency import corpus_latency
from simul.policies import Agent, policies_from_spec, run_stream, sentence_key, split_sentences
from simul.translator import Translator

log = logging.getLogger(__name__)

DEFAULT_POLICIES = ["full", "seg:0.3,0.5,0.7,0.9", "waitk:2,4,7,12", "la:3,6"]
METRIC_ORDER = ("BLEU", "AL", "AP", "DAL", "LAAL", "StartOffset", "EndOffset")


class SimulEvalError(UserError, ValueError):
    """Bad options or files for ``eval simul``; the message names them."""


@dataclass
class SimulEvalOptions:
    model: Path
    segmenter: Path | None = None
    waitk_model: Path | None = None
    corpus: str = "default"
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    split: str = "test"
    policies: list[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    max_len: int = 40
    max_docs: int = 0  # 0: all documents of the split
    out: Path = Path("eval-simul")


def _fingerprint(agent: Agent, opts: SimulEvalOptions, part: str, n_docs: int) -> str:
    files = [opts.model / "model.safetensors"]
    files += [opts.segmenter / "model.safetensors"] if opts.segmenter else []
    files += [opts.waitk_model / "model.safetensors"] if opts.waitk_model else []
    # what decides the output: the agent, its decoding settings, the data, the weights
    tr = getattr(agent, "tr", None)
    decoding = [getattr(agent, "beam", 1)] + ([tr.max_len_a, tr.max_len_b, tr.repeat_max_ngram, tr.repeat_max_times] if tr else [])
    h = hashlib.sha256(json.dumps([agent.name, decoding, part, opts.split, opts.corpus, opts.max_len,
                                   n_docs]).encode())
    for f in files:
        h.update(f.read_bytes() if f.exists() else b"")
    return h.hexdigest()[:16]


def run_agent(agent: Agent, docs: list[Document], out_dir: Path, fingerprint: str) -> list[dict]:
    """Instances of ``agent`` on ``docs``, resuming ``out_dir/instances.log``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path, run_path = out_dir / "instances.log", out_dir / "run.json"
    done: list[dict] = []
    if run_path.exists() and json.loads(run_path.read_text()).get("fingerprint") == fingerprint and log_path.exists():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                done.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: decode it again
        done = done[: len(docs)]
    write_json_atomic(run_path, {"fingerprint": fingerprint, "agent": agent.name})
    with atomic_path(log_path) as tmp:  # rewrite what is kept (drops a torn last line)
        tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in done), encoding="utf-8")
    with open(log_path, "a", encoding="utf-8") as f:
        for i in tqdm(range(len(done), len(docs)), desc=agent.name, unit="doc", disable=None,
                      initial=len(done), total=len(docs)):
            doc = docs[i]
            words, delays, elapsed = run_stream(agent, doc.source, doc)
            rec = {"index": i, "prediction": " ".join(words), "delays": delays, "elapsed": elapsed,
                   "prediction_length": len(words), "reference": doc.reference, "source": doc.source,
                   "source_length": len(doc.source)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done.append(rec)
    return done


def repeated_sentences(prediction: str, reference: str) -> int:
    """How many sentences of ``prediction`` (of three words or more) are copies of one it
    already said, beyond the copies the reference has (a source that repeats a sentence
    may be translated so)."""
    def keys(text: str) -> Counter:
        return Counter(k for k in map(sentence_key, split_sentences(text)) if k is not None)

    ref = keys(reference)
    return sum(max(0, n - max(1, ref[k])) for k, n in keys(prediction).items())


def bleu_draws(instances: list[dict], samples: int = BOOTSTRAP_SAMPLES, seed: int = 12345):
    """Corpus BLEU of ``samples`` bootstrap draws of the streams (a numpy array). The draws
    depend only on the number of streams and ``seed``, so two agents' arrays are paired."""
    import numpy as np  # noqa: PLC0415

    n = len(instances)
    score = sacrebleu_resampler(sacrebleu.BLEU(), [d["prediction"] for d in instances],
                                [d["reference"] for d in instances])
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    return np.array([score(d) for d in draws])


def _interval(values) -> list[float]:
    """The central 95% of bootstrap values, rounded as the reports print them."""
    import numpy as np  # noqa: PLC0415

    return [round(float(np.percentile(values, 2.5)), 2), round(float(np.percentile(values, 97.5)), 2)]


def paired_bleu_difference(a: list[dict], b: list[dict]) -> dict[str, float | list[float]]:
    """BLEU of ``b`` minus BLEU of ``a`` on the same streams, with the 95% interval of the
    difference under paired bootstrap draws of the streams (Koehn 2004)."""
    if [d["reference"] for d in a] != [d["reference"] for d in b]:
        raise SimulEvalError("paired BLEU difference: the two runs are not on the same streams")
    full = [sacrebleu.corpus_bleu([d["prediction"] for d in x], [[d["reference"] for d in x]]).score for x in (a, b)]
    diff = bleu_draws(b) - bleu_draws(a)
    return {"difference": round(full[1] - full[0], 2), "ci": _interval(diff)}


def score_instances(instances: list[dict]) -> dict[str, float]:
    hyps = [d["prediction"] for d in instances]
    refs = [d["reference"] for d in instances]
    scores = {"BLEU": sacrebleu.corpus_bleu(hyps, [refs]).score}
    if len(instances) > 1:
        scores["BLEU_ci"] = _interval(bleu_draws(instances))
    repeats = [repeated_sentences(h, r) for h, r in zip(hyps, refs)]
    scores["repeated_sentences"] = sum(repeats)
    scores["streams_with_repeats"] = sum(1 for r in repeats if r)
    scores.update(corpus_latency(instances))
    scores["instances"] = len(instances)
    return scores


def write_scores_tsv(path: Path, scores: dict[str, float]) -> None:
    keys = [k for k in METRIC_ORDER if k in scores]
    with atomic_path(path) as tmp:
        tmp.write_text("\t".join(keys) + "\n" + "\t".join(f"{scores[k]:.3f}" for k in keys) + "\n")


def evaluate_simul(opts: SimulEvalOptions) -> dict:
    """Run every policy on every part; write the per-agent logs and the report; return it."""
    from simul.segmenter import Segmenter  # noqa: PLC0415

    for part in opts.parts:
        if part not in PARTS:
            raise SimulEvalError(f"unknown part '{part}' (known: {', '.join(PARTS)})")
    ensure_corpus(opts.corpus)
    translator = Translator(opts.model)
    waitk_tr = Translator(opts.waitk_model) if opts.waitk_model else None
    segmenter = Segmenter.load(opts.segmenter) if opts.segmenter else None
    agents: list[Agent] = []
    for spec in opts.policies:
        try:
            agents += policies_from_spec(spec, translator, waitk_tr, segmenter, opts.max_len)
        except ValueError as e:
            raise SimulEvalError(f"--policies {spec}: {e}") from None
    report: dict = {"model": str(opts.model), "segmenter": str(opts.segmenter) if opts.segmenter else None,
                    "waitk_model": str(opts.waitk_model) if opts.waitk_model else None,
                    "split": opts.split, "corpus": opts.corpus, "max_len": opts.max_len, "parts": {}}
    for part in opts.parts:
        docs = load_split(opts.corpus, part, opts.split)
        if opts.max_docs:
            docs = docs[: opts.max_docs]
        report["parts"][part] = {"documents": len(docs), "agents": {}}
        for agent in agents:
            if hasattr(agent, "segment_seconds"):
                agent.segment_seconds = []  # timings of this part only
            agent_dir = opts.out / part / agent.name
            inst = run_agent(agent, docs, agent_dir, _fingerprint(agent, opts, part, len(docs)))
            scores = {**score_instances(inst), **_segment_timing(agent)}
            write_scores_tsv(agent_dir / "scores.tsv", scores)
            report["parts"][part]["agents"][agent.name] = {k: round(v, 3) if isinstance(v, float) else v
                                                           for k, v in scores.items()}
            log.info("%s %s: %s", part, agent.name, report["parts"][part]["agents"][agent.name])
    write_json_atomic(opts.out / "scores.json", report)
    with atomic_path(opts.out / "scores.md") as tmp:
        tmp.write_text(report_markdown(report), encoding="utf-8")
    plot_bleu_al(report, opts.out / "bleu_al.png")
    return report


def ensure_corpus(name: str) -> None:
    """Build the named stream corpus (and the text corpus under it) when it is not there yet,
    so ``eval simul`` runs on the built test set right after install."""
    if Path(name).is_dir() or (corpus_dir(name) / "summary.json").exists():
        return
    from speech.data.cache import interpres_home  # noqa: PLC0415
    from speech.data.text import TextCorpusConfig, build_text_corpus  # noqa: PLC0415

    if not (interpres_home() / "text" / "zh-en" / "test.tsv").exists():
        log.info("building the text corpus first (interpres data text)")
        build_text_corpus(TextCorpusConfig())
    build_stream_corpus(StreamCorpusConfig(name=name))


def _segment_timing(agent: Agent) -> dict[str, float]:
    secs = getattr(agent, "segment_seconds", None)
    if not secs:
        return {}
    ms = sorted(1000 * s for s in secs)
    return {"segment_ms_p50": statistics.median(ms), "segment_ms_p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
            "segments": len(ms)}


def family_of(name: str) -> str:
    """The policy of an agent name: ``waitk-3`` -> ``waitk``, ``seg-0.5`` -> ``seg``."""
    return name.rsplit("-", 1)[0] if name[-1].isdigit() else name


def report_markdown(report: dict) -> str:
    lines = []
    for part, r in report["parts"].items():
        lines += [f"### {part} {report['split']} ({r['documents']} streams)", "",
                  "| policy | BLEU | BLEU 95% interval | AL | LAAL | DAL | AP | StartOffset | EndOffset | "
                  "repeated sentences |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, s in r["agents"].items():
            ci = f"[{s['BLEU_ci'][0]:.2f}, {s['BLEU_ci'][1]:.2f}]" if s.get("BLEU_ci") else ""
            lines.append(f"| {name} | {s['BLEU']:.2f} | {ci} | {s['AL']:.2f} | {s['LAAL']:.2f} | {s['DAL']:.2f} | "
                         f"{s['AP']:.3f} | {s['StartOffset']:.2f} | {s['EndOffset']:.2f} | "
                         f"{s.get('repeated_sentences', '')} |")
        lines.append("")
    return "\n".join(lines)


def plot_bleu_al(report: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    parts = list(report["parts"])
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.5), squeeze=False)
    for ax, part in zip(axes[0], parts):
        fams: dict[str, list[tuple[float, float, str]]] = {}
        for name, s in report["parts"][part]["agents"].items():
            fams.setdefault(family_of(name), []).append((s["AL"], s["BLEU"], name))
        for fam, pts in fams.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fam)
            for al, bleu, name in pts:
                ax.annotate(name.rsplit("-", 1)[-1] if name != fam else "", (al, bleu), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_title(f"{part} {report['split']}")
        ax.set_xlabel("AL (source characters)")
        ax.set_ylabel("BLEU")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
