"""``interpres eval stream``: streaming policies on whole talks, scored as SimulEval scores speech.

Each talk of a MuST-C-layout split is fed to a policy whole, unsegmented, as a live talk
is: in pieces of ``chunk_ms`` (SimulEval's ``--source-segment-size``), as fast as the
policy takes them. Every word written gets a delay (ms of audio read then) and an
elapsed time (that delay plus the wall-clock ms since the talk began to be sent:
SimulEval's computation-aware time on this machine). The talk's words are re-aligned
to its reference segments (:mod:`simul.resegment`, as mwerSegmenter does), and then:

- quality: sacrebleu chrF and BLEU of the re-aligned segments (WER too into English);
- latency per reference segment (as the IWSLT simultaneous track's StreamLAAL): a
  word's delay counts from the segment's start in the talk, |X| is the segment's
  duration; AL, LAAL, DAL, ATD, StartOffset, EndOffset as SimulEval's scorers compute
  them (:mod:`simul.latency`), computation-unaware and aware (``_CA``), averaged over
  segments;
- the same metrics with the whole talk as one instance (``talk_`` in scores.json).

``offline`` is the reference point: each gold segment translated with the full beam
once its end has been read (its quality is the offline quality the policies keep a
share of). Policies: :func:`simul.speech_stream.make_policy`. Written::

    OUT/POLICY/instances.log   one SimulEval instance per reference segment (JSON lines:
                               index, talk, prediction, delays, elapsed, source_length, reference)
    OUT/POLICY/talks.log       one per talk (what resumes: a finished talk is not redone)
    OUT/POLICY/scores.tsv      chrF BLEU AL LAAL DAL ATD StartOffset EndOffset and their _CA
    OUT/scores.json, OUT/scores.md, OUT/quality_latency.png (chrF against LAAL_CA)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from compress.errors import UserError
from compress.files import atomic_path, write_json_atomic
from simul.latency import SPEECH_METRICS, reference_length, speech_latency
from simul.resegment import CJK_LANGS, join_units, resegment, units
from simul.speech_stream import PauseSettings, make_policy
from speech.audio import SAMPLE_RATE, load_audio
from speech.data.mustc import MustcSplit, Segment
from speech.decode import DecodingOptions
from speech.metrics import score_translation, word_error_rate

log = logging.getLogger(__name__)

DEFAULT_POLICIES = ["offline", "pause", "la:1", "la:0.5", "waitk:3:0.5", "waitk:6:0.5"]
TIMELINES = ("", "_CA", "_RT")  # computation-unaware; SimulEval's computation-aware; live (see run_talk)
LATENCY_COLUMNS = [m + s for s in TIMELINES for m in SPEECH_METRICS]


class StreamEvalError(UserError, ValueError):
    """Bad options or data for ``eval stream``; the message names them."""


@dataclass
class StreamEvalOptions:
    root: Path
    pair: str = "en-de"
    split: str = "tst-COMMON"
    model: str = "default"
    runtime: str = "onnx-int8"  # speech.runtime.DECODING_RUNTIMES
    policies: list[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    chunk_ms: float = 100.0
    beam: int = 5
    min_pause_s: float = PauseSettings.min_pause_s  # the pause that closes a segment
    max_talks: int = 0  # 0: every talk
    out: Path = Path("eval-stream")


@dataclass
class Talk:
    wav: Path
    segments: list[Segment]


def talks_of(split: MustcSplit, max_talks: int = 0) -> list[Talk]:
    """The split's talks in order of first appearance, each with its segments in time order."""
    by_wav: dict[Path, list[Segment]] = {}
    for seg in split:
        by_wav.setdefault(seg.wav, []).append(seg)
    talks = [Talk(w, sorted(s, key=lambda x: x.offset)) for w, s in by_wav.items()]
    return talks[:max_talks] if max_talks else talks


def _lang(split: MustcSplit) -> str:
    return split.tgt_lang or split.src_lang


def _reference(seg: Segment) -> str:
    return seg.tgt if seg.tgt is not None else seg.src


# ---------------------------------------------------------------------- running a policy on a talk


def run_talk(policy_spec: str, translator, lang: str, talk: Talk, chunk_ms: float, opts: DecodingOptions,
             settings: PauseSettings | None = None, clock=time.perf_counter) -> dict:
    """One talk through one policy -> the talk's length ``source_ms`` and per word: ``delays``
    (ms of audio read when it was written), ``elapsed`` (SimulEval's computation-aware time: the delay plus the wall-clock
    ms since the talk began to be sent, the audio sent as fast as the policy takes it) and
    ``realtime`` (when a live run would print it: audio arrives in real time, each piece is
    processed once it has arrived and the piece before it is done, taking the time it took
    here; so a system faster than real time catches up during the talk, which SimulEval's
    computation-aware time never does)."""
    wave = load_audio(talk.wav)
    if policy_spec == "offline":
        return _offline(translator, lang, talk, wave, opts, clock)
    policy = make_policy(policy_spec, translator, [lang], settings or PauseSettings(), opts, clock)
    step = max(1, int(round(chunk_ms / 1000 * SAMPLE_RATE)))
    out: dict = {"words": [], "delays": [], "elapsed": [], "realtime": [], "source_ms": len(wave) / SAMPLE_RATE * 1000.0}
    free = 0.0  # talk seconds at which the system is done with what it was given

    def feed(chunk: np.ndarray | None, arrived: float) -> None:
        nonlocal free
        begin = max(arrived, free)
        w0 = clock() - policy.t0
        commits = policy.push(chunk) if chunk is not None else policy.finish()
        free = begin + (clock() - policy.t0 - w0)
        for c in commits:
            new = units(c.texts.get(lang, ""), lang)
            out["words"] += new
            out["delays"] += [c.committed_at * 1000.0] * len(new)
            out["elapsed"] += [(c.committed_at + c.wall) * 1000.0] * len(new)
            out["realtime"] += [(begin + c.wall - w0) * 1000.0] * len(new)

    for i in range(0, len(wave), step):
        feed(wave[i:i + step], min(i + step, len(wave)) / SAMPLE_RATE)
    feed(None, len(wave) / SAMPLE_RATE)
    out["decodes"] = getattr(policy, "decodes", None)
    return out


def _offline(translator, lang: str, talk: Talk, wave: np.ndarray, opts: DecodingOptions, clock) -> dict:
    """The gold segments, each translated once its end is read (the offline reference point)."""
    t0 = clock()
    out: dict = {"words": [], "delays": [], "elapsed": [], "realtime": [], "decodes": len(talk.segments),
                 "source_ms": len(wave) / SAMPLE_RATE * 1000.0}
    free = 0.0
    for seg in talk.segments:
        a, b = int(round(seg.offset * SAMPLE_RATE)), min(len(wave), int(round((seg.offset + seg.duration) * SAMPLE_RATE)))
        w0 = clock()
        feats = translator.features(wave[a:b])
        text = ""
        if len(feats):
            ((result,),) = translator.decode([feats], [lang], opts)
            text = translator.text(result)
        new = units(text, lang)
        end_ms = b / SAMPLE_RATE * 1000.0
        free = max(b / SAMPLE_RATE, free) + (clock() - w0)
        out["words"] += new
        out["delays"] += [end_ms] * len(new)
        out["elapsed"] += [end_ms + (clock() - t0) * 1000.0] * len(new)
        out["realtime"] += [free * 1000.0] * len(new)
    return out


# ---------------------------------------------------------------------- scoring


def segment_instances(talk_index: int, talk: Talk, run: dict, lang: str, first_index: int) -> list[dict]:
    """The talk's output re-aligned to its reference segments: one SimulEval instance each,
    delays and elapsed counted from the segment's start (ms)."""
    refs = [_reference(s) for s in talk.segments]
    spans = resegment(run["words"], [units(r, lang) for r in refs])
    out = []
    for k, (seg, ref, (a, b)) in enumerate(zip(talk.segments, refs, spans)):
        start = seg.offset * 1000.0
        out.append({"index": first_index + k, "talk": talk_index, "source": f"{talk.wav.name}:{seg.offset:.3f}",
                    "prediction": join_units(run["words"][a:b], lang),
                    "delays": [d - start for d in run["delays"][a:b]],
                    "elapsed": [e - start for e in run["elapsed"][a:b]],
                    "realtime": [e - start for e in run["realtime"][a:b]],
                    "prediction_length": b - a, "source_length": seg.duration * 1000.0, "reference": ref})
    return out


def _latency_unit(lang: str) -> str:
    return "char" if lang in CJK_LANGS else "word"


def mean_latency(instances: list[dict], lang: str) -> dict[str, float]:
    """Each latency metric averaged over the instances that have words (as SimulEval skips the rest)."""
    per = [speech_latency(i["delays"], i["source_length"], reference_length(i["reference"], _latency_unit(lang)),
                          _CA=i["elapsed"], _RT=i["realtime"])
           for i in instances if i["delays"]]
    if not per:
        return {k: float("nan") for k in LATENCY_COLUMNS}
    return {k: float(statistics.mean(p[k] for p in per)) for k in LATENCY_COLUMNS}


def score_policy(instances: list[dict], talk_instances: list[dict], lang: str) -> dict:
    hyps, refs = [i["prediction"] for i in instances], [i["reference"] for i in instances]
    q = score_translation(lang, hyps, refs)
    scores = {"chrF": q["chrf"], "BLEU": q["bleu"]}
    if lang == "en":
        scores["WER"] = word_error_rate(hyps, refs)
    scores.update(mean_latency(instances, lang))
    scores.update({f"talk_{k}": v for k, v in mean_latency(talk_instances, lang).items()})
    scores["segments"], scores["talks"] = len(instances), len(talk_instances)
    return scores


# ---------------------------------------------------------------------- the whole evaluation


def _fingerprint(spec: str, opts: StreamEvalOptions, translator) -> str:
    h = hashlib.sha256(json.dumps([spec, opts.pair, opts.split, str(opts.root), opts.chunk_ms, opts.beam,
                                   opts.min_pause_s, opts.runtime, translator.name]).encode())
    for d in translator.model_dirs:
        for f in sorted(Path(d).glob("*.safetensors")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _run_policy(spec: str, translator, lang: str, talks: list[Talk], out_dir: Path, fingerprint: str,
                opts: DecodingOptions, chunk_ms: float, settings: PauseSettings) -> list[dict]:
    """Every talk through ``spec``, resuming ``out_dir/talks.log`` (one fsynced line per finished talk)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path, run_path = out_dir / "talks.log", out_dir / "run.json"
    done: list[dict] = []
    if run_path.exists() and log_path.exists():
        try:
            same = json.loads(run_path.read_text()).get("fingerprint") == fingerprint
        except (json.JSONDecodeError, OSError):
            same = False
        if same:
            for line in log_path.read_text(encoding="utf-8").splitlines():
                try:
                    done.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: that talk is run again
            done = done[:len(talks)]
    write_json_atomic(run_path, {"fingerprint": fingerprint, "policy": spec})
    with atomic_path(log_path) as tmp:
        tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in done), encoding="utf-8")
    with open(log_path, "a", encoding="utf-8") as f:
        for t in tqdm(range(len(done), len(talks)), desc=spec, unit="talk", disable=None,
                      initial=len(done), total=len(talks)):
            talk = talks[t]
            run = run_talk(spec, translator, lang, talk, chunk_ms, opts, settings)
            seconds = sum(s.duration for s in talk.segments)
            rec = {"index": t, "talk": talk.wav.name, "prediction": join_units(run["words"], lang),
                   "words": run["words"], "delays": run["delays"], "elapsed": run["elapsed"],
                   "realtime": run["realtime"],
                   "prediction_length": len(run["words"]), "decodes": run["decodes"],
                   "source_length": run["source_ms"],
                   "reference": join_units([w for s in talk.segments for w in units(_reference(s), lang)], lang),
                   "speech_s": round(seconds, 3)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done.append(rec)
    return done


def evaluate_stream(opts: StreamEvalOptions, translator=None) -> dict:
    """Run every policy over the split's talks; write the logs and the report; return it."""
    from speech.translate import load_translator  # noqa: PLC0415

    split = MustcSplit(opts.root, opts.pair, opts.split)
    lang = _lang(split)
    talks = talks_of(split, opts.max_talks)
    if not talks:
        raise StreamEvalError(f"{opts.root}/{opts.pair}/data/{opts.split}: no talks")
    for spec in opts.policies:  # a bad spec fails before any decoding
        try:
            if spec != "offline":
                make_policy(spec, _NoModel(), [lang])
        except ValueError as e:
            raise StreamEvalError(f"policies: {e}") from None
    if translator is None:
        translator = load_translator(opts.model, runtime=opts.runtime)
    translator.check_languages([lang])
    decoding = DecodingOptions(beam_size=opts.beam)
    try:
        settings = PauseSettings(min_pause_s=opts.min_pause_s)
    except ValueError as e:
        raise StreamEvalError(str(e)) from None
    report = {"pair": opts.pair, "split": opts.split, "model": translator.name, "runtime": opts.runtime,
              "chunk_ms": opts.chunk_ms, "beam": opts.beam, "min_pause_s": opts.min_pause_s, "talks": len(talks),
              "audio_s": round(sum(split.talk_info(t.segments[0]).seconds for t in talks), 1),  # from the headers
              "policies": {}}
    segment_outputs: dict[str, list[str]] = {}
    for spec in opts.policies:
        name = spec.replace(":", "-")
        out_dir = opts.out / name
        done = _run_policy(spec, translator, lang, talks, out_dir, _fingerprint(spec, opts, translator),
                           decoding, opts.chunk_ms, settings)
        instances: list[dict] = []
        for t, (talk, rec) in enumerate(zip(talks, done)):
            instances += segment_instances(t, talk, rec, lang, len(instances))
        talk_instances = [{k: v for k, v in r.items() if k != "words"} for r in done]
        with atomic_path(out_dir / "instances.log") as tmp:
            tmp.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in instances), encoding="utf-8")
        segment_outputs[spec] = [i["prediction"] for i in instances]
        refs = [i["reference"] for i in instances]
        scores = score_policy(instances, talk_instances, lang)
        scores["decodes"] = sum(r["decodes"] or 0 for r in done)
        write_scores_tsv(out_dir / "scores.tsv", scores)
        report["policies"][spec] = scores
    offline = report["policies"].get("offline")
    if offline and offline["chrF"] > 0:
        intervals = chrf_share_intervals(segment_outputs, refs)
        for spec, s in report["policies"].items():
            s["chrF_of_offline"] = s["chrF"] / offline["chrF"]
            s["chrF_of_offline_95"] = intervals[spec]
    write_json_atomic(opts.out / "scores.json", report)
    with atomic_path(opts.out / "scores.md") as tmp:
        tmp.write_text(report_markdown(report), encoding="utf-8")
    plot_quality_latency(report, opts.out / "quality_latency.png")
    return report


def chrf_share_intervals(outputs: dict[str, list[str]], refs: list[str], samples: int = 1000,
                         seed: int = 12345) -> dict[str, list[float]]:
    """Per policy, the 95% paired-bootstrap interval (Koehn 2004) of its chrF as a share of
    offline's, the reference segments drawn with replacement (the same draws for every policy)."""
    from sacrebleu.metrics import CHRF  # noqa: PLC0415

    from compress.report import sacrebleu_resampler  # noqa: PLC0415

    draws = np.random.default_rng(seed).integers(0, len(refs), size=(samples, len(refs)))
    base = sacrebleu_resampler(CHRF(), outputs["offline"], refs)
    base_vals = np.array([base(d) for d in draws])
    out = {}
    for spec, hyps in outputs.items():
        f = sacrebleu_resampler(CHRF(), hyps, refs)
        ratios = np.array([f(d) for d in draws]) / base_vals
        ratios = ratios[np.isfinite(ratios)]
        out[spec] = [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]
    return out


class _NoModel:
    """Stands in for a translator while policy specs are checked."""

    max_segment_s = 30.0

    def check_languages(self, langs) -> None:
        pass


def write_scores_tsv(path: Path, scores: dict) -> None:
    keys = [k for k in ["chrF", "BLEU", "WER", *LATENCY_COLUMNS] if k in scores]
    with atomic_path(path) as tmp:
        tmp.write_text("\t".join(keys) + "\n" + "\t".join(f"{scores[k]:.3f}" for k in keys) + "\n")


def report_markdown(report: dict) -> str:
    lines = [f"# eval stream: {report['pair']} {report['split']}, {report['talks']} talks "
             f"({report['audio_s']} s), {report['model']} ({report['runtime']}), chunks of {report['chunk_ms']:g} ms, "
             f"beam {report['beam']}, pauses of {report['min_pause_s']:g} s close a segment",
             "",
             "Latency in ms per reference segment after re-alignment (StreamLAAL-style); _CA: SimulEval's "
             "computation-aware time on this machine (the audio sent as fast as it is taken); _RT: when a live "
             "run would print it (real-time arrival, measured compute). talk_LAAL_CA: the whole talk as one "
             "instance.",
             "",
             "| policy | chrF | % of offline [95%] | BLEU | LAAL | LAAL_CA | LAAL_RT | AL_CA | DAL_CA | ATD_CA "
             "| StartOffset_CA | EndOffset_CA | talk_LAAL_CA | decodes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for spec, s in report["policies"].items():
        share = ""
        if "chrF_of_offline" in s:
            lo, hi = s["chrF_of_offline_95"]
            share = f"{100 * s['chrF_of_offline']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
        lines.append(f"| {spec} | {s['chrF']:.1f} | {share} | {s['BLEU']:.1f} | {s['LAAL']:.0f} | {s['LAAL_CA']:.0f} "
                     f"| {s['LAAL_RT']:.0f} | {s['AL_CA']:.0f} | {s['DAL_CA']:.0f} | {s['ATD_CA']:.0f} "
                     f"| {s['StartOffset_CA']:.0f} | {s['EndOffset_CA']:.0f} | {s['talk_LAAL_CA']:.0f} | {s['decodes']} |")
    return "\n".join(lines) + "\n"


def plot_quality_latency(report: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    families: dict[str, list[tuple[float, float, str]]] = {}
    for spec, s in report["policies"].items():
        families.setdefault(spec.split(":")[0], []).append((s["LAAL_CA"], s["chrF"], spec))
    for fam, pts in families.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fam)
        for x, y, spec in pts:
            ax.annotate(spec, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.axvline(2000, color="grey", ls=":", lw=1)
    ax.set_xlabel("LAAL, computation-aware (ms)")
    ax.set_ylabel("chrF")
    ax.set_title(f"{report['pair']} {report['split']}: quality and latency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
