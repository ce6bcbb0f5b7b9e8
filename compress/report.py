"""Measuring compressed variants side by side, and the report (Markdown table + Pareto PNG).

Each variant is measured in a fresh process (``python -m compress.report``), so its peak
memory is its own and no variant warms another's caches. In that process, on the
family's test items:

- latency: every item alone (batch 1), after 2 warm-up items; p50 and p95 per item;
- throughput: the same items in batches of ``batch`` (16), items per second;
- quality: the family's scores of the batch-1 outputs;
- peak memory: the peak resident set (VmHWM) while the variant is loaded and run (its
  peak is reset once the imports and test data are in memory, so it still includes
  them, as a user's process would), and the part added by the variant: that peak minus
  the resident set just before loading it.

Interleaved rounds (``rounds: R`` in the report settings, default 1): every variant is
measured once, then every variant again, R times over, each time in a fresh process, the
odd rounds in reverse order (teacher first, then teacher last: a drift within a round
does not always favour the same side of a ratio). A machine whose speed drifts over
minutes (a shared VM drifts by +-20%) then slows every variant of a round alike, so the
report's ratios are the median over rounds of each round's
ratio to the teacher (its range over rounds is in the table), and its times and memory are
the medians of the rounds. Quality is scored in every round and should not change between
rounds (decoding is deterministic; a change is logged); the first round's scores are
reported.

Quality retained comes with a 95% paired-bootstrap interval (Koehn 2004): the test items
are drawn with replacement ``BOOTSTRAP_SAMPLES`` times, the same draws for every variant,
and each draw gives a variant's quality over the teacher's on that draw; the interval is
the 2.5th to 97.5th percentile of those ratios. A family makes it possible by giving
``resampler(items, outputs)``, a function from a draw (item indices) to the headline
quality of those items, which :func:`sacrebleu_resampler` builds from sacrebleu's own
per-sentence statistics (so a draw costs a sum, not a re-scoring). Each variant's outputs
are kept with its first round for that.

Results are cached per variant in ``OUT/report/measure-NAME.json`` with a fingerprint of
the variant, its files and the settings (``rounds`` excepted), with every round measured so
far: a rerun, or a run killed half-way, measures only the rounds that are missing, and
raising ``rounds`` adds rounds to the old ones. A round is kept only where every variant
has it: when one variant changed (new weights, a new export), or a kill cut a round short,
that round and the later ones are measured again for every variant, so that no round pairs
a new measurement with one taken in an earlier run. The report always compares results
from one machine and one settings block.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from compress.files import atomic_path, write_json_atomic

log = logging.getLogger(__name__)


def _stamp(variant: dict[str, Any]) -> list:
    """Sizes and mtimes of a variant's files, so a changed model is measured again."""
    out = []
    for f in _files(variant):
        st = f.stat()
        out.append([str(f), st.st_size, int(st.st_mtime)])
    return out


def _files(variant: dict[str, Any]) -> list[Path]:
    if variant.get("files"):
        return [Path(f) for f in variant["files"]]
    path = Path(variant["path"])
    return [p for p in (path / "model.safetensors",) if p.is_file()]


def file_bytes(variant: dict[str, Any]) -> int:
    return sum(f.stat().st_size for f in _files(variant))


def _status_mb(key: str) -> float | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in MB; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def measure(family: Any, variant: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Latency, throughput, quality and memory of one variant, in this process."""
    import torch  # noqa: PLC0415

    threads = int(settings.get("threads", 2))
    batch = int(settings.get("batch", 16))
    torch.set_num_threads(threads)
    items = family.test_items(settings)
    if not items:
        raise ValueError(f"{variant['name']}: the family gave no test items")
    # the peak is measured from here: imports and test data are the same for every variant
    gc.collect()
    base = _status_mb("VmRSS") if _reset_peak() else None
    base = base if base is not None else _maxrss_mb()
    runner = family.open(variant, threads)
    for it in items[:2]:
        family.infer(runner, [it])
    outputs, latency = [], []
    for it in items:
        t0 = time.perf_counter()
        outputs += family.infer(runner, [it])
        latency.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(0, len(items), batch):
        family.infer(runner, items[i:i + batch])
    batch_seconds = time.perf_counter() - t0
    scores = family.score(runner, items, outputs)
    peak = _status_mb("VmHWM") or _maxrss_mb()
    return {
        "items": len(items),
        "latency_p50_ms": 1000 * statistics.median(latency),
        "latency_p95_ms": 1000 * percentile(latency, 95),
        "throughput": len(items) / batch_seconds,
        "peak_rss_mb": peak,
        "model_rss_mb": peak - base,
        "scores": scores,
        "outputs": list(outputs),
        "threads": threads,
        "batch": batch,
    }


ROUND_KEYS = ("latency_p50_ms", "latency_p95_ms", "throughput", "peak_rss_mb", "model_rss_mb")


def rounds_setting(settings: dict[str, Any]) -> int:
    rounds = settings.get("rounds", 1)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"report.rounds: a positive integer, got {rounds!r}")
    return rounds


def aggregate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's result from its rounds: medians of the timings and memory, the first
    round's scores (and the rounds themselves, for the per-round ratios of the report)."""
    out = {k: v for k, v in rounds[0].items() if k not in ROUND_KEYS}
    for k in ROUND_KEYS:
        out[k] = statistics.median(r[k] for r in rounds)
    out["rounds"] = rounds
    return out


def measure_all(cfg: Any, variants: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """Measure every variant in its own process, in ``rounds`` interleaved rounds (cached per
    variant and round, and reused only where every variant has that round); results in the
    order of ``variants``."""
    out.mkdir(parents=True, exist_ok=True)
    n_rounds = rounds_setting(cfg.report)
    settings = {k: v for k, v in cfg.report.items() if k != "rounds"}
    slots = []  # per variant: the variant, its cache file, fingerprint, rounds measured so far
    outputs_of: dict[str, list[str]] = {}  # per variant: the outputs of its first round
    for v in variants:
        key = {"variant": {k: v[k] for k in ("name", "path", "runtime", "decode") if k in v}, "files": _stamp(v),
               "settings": settings, "family": cfg.family, "options": cfg.options}
        fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = out / f"measure-{v['name'].replace(' ', '_')}.json"
        cached = json.loads(path.read_text()) if path.is_file() else None
        done: list[dict[str, Any]] = []
        if cached and cached.get("fingerprint") == fp:
            # a cache written before rounds existed is its own first round
            done = cached.get("rounds") or [{k: x for k, x in cached.items()
                                             if k not in ("fingerprint", "variant", "file_bytes")}]
        slots.append((v, path, fp, done))
        if done and cached.get("outputs") is not None:
            outputs_of[v["name"]] = cached["outputs"]
    # A round is measured for every variant together: a round's ratios compare measurements
    # taken minutes apart, not a variant measured today against a teacher measured in an
    # earlier run (a changed variant, or a kill mid-round, re-measures the whole round).
    complete = min((len(done) for *_, done in slots), default=0)
    for v, path, _, done in slots:
        if len(done) > complete:
            log.info("%s: %d of its %d earlier round(s) kept: the other variants have only %d", v["name"],
                     complete, len(done), complete)
            del done[complete:]
            if not done:
                outputs_of.pop(v["name"], None)
    for r in range(n_rounds):
        # odd rounds run the variants in reverse order (ABBA): a drift over the minutes of a
        # round then slows the teacher in one round and the last variant in the next, rather
        # than always the same side of every ratio
        for v, path, fp, done in (slots if r % 2 == 0 else slots[::-1]):
            if len(done) > r:
                if r == 0:
                    log.info("%s: measured before (%s, %d round(s))", v["name"], path, len(done))
                continue
            log.info("measuring %s (%s, %s), round %d of %d", v["name"], v["runtime"], v["path"], r + 1, n_rounds)
            result = _measure_in_child(cfg, v, settings, out)
            outputs = result.pop("outputs", None)
            if done and result["scores"] != done[0]["scores"]:
                log.warning("%s: round %d scored %s, round 1 %s; the report keeps round 1's", v["name"], r + 1,
                            result["scores"], done[0]["scores"])
            done.append(result)
            kept = outputs_of.setdefault(v["name"], outputs)  # the first round's
            write_json_atomic(path, {**aggregate(done), "fingerprint": fp, "variant": v, "file_bytes": file_bytes(v),
                              **({"outputs": kept} if kept is not None else {})})
    return [json.loads(path.read_text()) for _, path, _, _ in slots]


def _measure_in_child(cfg: Any, v: dict[str, Any], settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """One round of one variant, in a fresh ``python -m compress.report`` process."""
    stem = v["name"].replace(" ", "_")
    job_path, raw = out / f".job-{stem}.json", out / f".raw-measure-{stem}.json"
    job_path.write_text(json.dumps({"family": cfg.family, "options": cfg.options, "variant": v, "settings": settings}))
    proc = subprocess.run([sys.executable, "-m", "compress.report", str(job_path), str(raw)],
                          env={**os.environ, "OMP_NUM_THREADS": str(settings.get("threads", 2))})
    job_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {v['name']} failed (exit {proc.returncode}); see the messages above")
    result = json.loads(raw.read_text())
    raw.unlink()
    return result


# --------------------------------------------------------------------------- bootstrap intervals

BOOTSTRAP_SAMPLES = 1000


def sacrebleu_resampler(metric: Any, hyps: Sequence[str], refs: Sequence[str],
                        groups: Sequence[Any] | None = None) -> Callable[[Sequence[int]], float]:
    """The corpus score of ``metric`` (a sacrebleu BLEU or CHRF) on any draw of the items,
    from its per-sentence sufficient statistics summed over the draw. With ``groups`` (one
    key per item; None leaves the item out) the score is the mean over the groups present in
    the draw of each group's corpus score, as a mean over languages is. On the draw
    ``range(n)`` it is the full corpus score."""
    import numpy as np  # noqa: PLC0415

    if len(hyps) != len(refs):
        raise ValueError(f"sacrebleu_resampler: {len(hyps)} hypotheses, {len(refs)} references")
    groups = list(groups) if groups is not None else [0] * len(hyps)
    keys = sorted({g for g in groups if g is not None}, key=str)
    stats = np.zeros((len(hyps), 0))
    rows = [i for i, g in enumerate(groups) if g is not None]
    if rows:
        per = metric._extract_corpus_statistics([hyps[i] for i in rows], [[refs[i] for i in rows]])
        stats = np.zeros((len(hyps), len(per[0])))
        stats[rows] = np.asarray(per, dtype=float)
    gid = np.array([keys.index(g) if g is not None else -1 for g in groups])

    def score(draw: Sequence[int]) -> float:
        idx = np.asarray(draw, dtype=int)
        vals = []
        for k in range(len(keys)):
            sel = idx[gid[idx] == k]
            if len(sel):
                summed = [int(x) if float(x).is_integer() else float(x) for x in stats[sel].sum(axis=0)]
                vals.append(metric._compute_score_from_stats(summed).score)
        return sum(vals) / len(vals) if vals else float("nan")

    return score


def bootstrap_intervals(family: Any, items: list[Any], results: list[dict[str, Any]],
                        samples: int = BOOTSTRAP_SAMPLES, seed: int = 12345) -> list[list[float] | None]:
    """Per result, the 95% paired-bootstrap interval of its quality in percent of the first
    result's (the teacher's); None where the family has no ``resampler`` or the outputs of
    the result or the teacher were not kept."""
    import numpy as np  # noqa: PLC0415

    if not hasattr(family, "resampler") or not results or results[0].get("outputs") is None:
        return [None] * len(results)
    n = len(items)
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    ref = family.resampler(items, results[0]["outputs"])
    ref_vals = np.array([ref(d) for d in draws])
    out: list[list[float] | None] = []
    for i, r in enumerate(results):
        if r.get("outputs") is None or len(r["outputs"]) != n:
            out.append(None)
            continue
        if i == 0:  # the teacher against itself: its draws are already scored
            vals = ref_vals
        else:
            f = family.resampler(items, r["outputs"])
            vals = np.array([f(d) for d in draws])
        ratios = 100.0 * vals / ref_vals
        ratios = ratios[np.isfinite(ratios)]
        out.append([float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))] if len(ratios) else None)
    return out


# --------------------------------------------------------------------------- the report


def _runtime(variant: dict[str, Any]) -> str:
    """The runtime column: the runtime, and the decoding settings a variant changes."""
    decode = variant.get("decode") or {}
    return ", ".join([variant["runtime"]] + [f"{k} {v}" for k, v in decode.items()])


def round_ratios(ref: dict[str, Any], result: dict[str, Any]) -> dict[str, list[float]]:
    """Latency and throughput ratios to ``ref`` (the teacher), one per round both have."""
    pairs = list(zip(ref.get("rounds") or [ref], result.get("rounds") or [result]))
    return {"speedup": [a["latency_p50_ms"] / b["latency_p50_ms"] for a, b in pairs],
            "thr_ratio": [b["throughput"] / a["throughput"] for a, b in pairs]}


def _rows(results: list[dict[str, Any]], quality: str,
          intervals: list[list[float] | None] | None = None) -> list[dict[str, Any]]:
    ref = results[0]
    q0 = ref["scores"][quality]
    rows = []
    for r, ci in zip(results, intervals or [None] * len(results)):
        q = r["scores"][quality]
        ratios = round_ratios(ref, r)
        rows.append({
            "name": r["variant"]["name"], "runtime": _runtime(r["variant"]), "params": r["variant"].get("params"),
            "file_mb": r["file_bytes"] / 1e6 if r.get("file_bytes") else None,
            "p50": r["latency_p50_ms"], "p95": r["latency_p95_ms"], "throughput": r["throughput"],
            "peak_mb": r["peak_rss_mb"], "model_mb": r["model_rss_mb"], "quality": q, "retained": 100.0 * q / q0 if q0 else float("nan"),
            "retained_ci": ci,
            "speedup": statistics.median(ratios["speedup"]), "thr_ratio": statistics.median(ratios["thr_ratio"]),
            "rounds": len(ratios["speedup"]),
            "speedup_range": [min(ratios["speedup"]), max(ratios["speedup"])],
            "thr_ratio_range": [min(ratios["thr_ratio"]), max(ratios["thr_ratio"])],
            "scores": r["scores"], "train_seconds": r["variant"].get("train_seconds"),
            "updates": r["variant"].get("updates"),
        })
    return rows


def markdown(rows: list[dict[str, Any]], quality: str, settings: dict[str, Any]) -> str:
    extra = sorted({k for r in rows for k in r["scores"]} - {quality})
    head = ["variant", "runtime", "params (M)", "file (MB)", "p50 ms (b=1)", "p95 ms (b=1)",
            f"items/s (b={settings.get('batch', 16)})", "peak RSS (MB)", "RSS added by the model (MB)", quality, f"{quality} kept",
            "latency x", "throughput x", "training (s / updates)"] + extra
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]

    def ratio(r: dict[str, Any], key: str) -> str:
        lo, hi = r.get(f"{key}_range") or (r[key], r[key])
        return f"{r[key]:.2f}" + (f" ({lo:.2f}-{hi:.2f})" if r.get("rounds", 1) > 1 else "")

    def kept(r: dict[str, Any]) -> str:
        if not math.isfinite(r["retained"]):
            return ""
        ci = r.get("retained_ci") if r is not rows[0] else None
        return f"{r['retained']:.1f}%" + (f" ({ci[0]:.1f}-{ci[1]:.1f})" if ci else "")

    for r in rows:
        cells = [r["name"], r["runtime"], f"{r['params'] / 1e6:.2f}" if r["params"] else "",
                 f"{r['file_mb']:.1f}" if r["file_mb"] else "", f"{r['p50']:.1f}", f"{r['p95']:.1f}",
                 f"{r['throughput']:.1f}", f"{r['peak_mb']:.0f}", f"{r['model_mb']:.0f}", f"{r['quality']:.2f}", kept(r),
                 ratio(r, "speedup"), ratio(r, "thr_ratio"),
                 f"{r['train_seconds']:.0f} / {r['updates']}" if r.get("train_seconds") is not None else ""]
        cells += [f"{r['scores'][k]:.2f}" if isinstance(r["scores"].get(k), (int, float)) else "" for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The variants no other variant beats on both latency (lower) and quality (higher)."""
    front = [r for r in rows if not any((o["p50"] <= r["p50"] and o["quality"] >= r["quality"])
                                        and (o["p50"] < r["p50"] or o["quality"] > r["quality"]) for o in rows)]
    return sorted(front, key=lambda r: r["p50"])


def plot(rows: list[dict[str, Any]], quality: str, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["p50"], r["quality"], s=40)
        kept = f", {r['retained']:.0f}%" if math.isfinite(r["retained"]) else ""
        ax.annotate(f"{r['name']} ({r['runtime']}{kept})", (r["p50"], r["quality"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    front = pareto_front(rows)
    ax.plot([r["p50"] for r in front], [r["quality"] for r in front], "--", color="gray", label="Pareto front")
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter  # noqa: PLC0415

    for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):  # 20, 30, not 2x10^1
        axis(FormatStrFormatter("%g"))
    ax.set_xlabel("latency per item, p50 at batch 1 (ms, log scale)")
    ax.set_ylabel(f"{quality} (labels: % of the fp32 teacher's)")
    ax.set_title("compression: quality against latency")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")  # the fast, low-quality corner is where labels crowd
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_report(cfg: Any, results: list[dict[str, Any]], out: Path, quality: str,
                 intervals: list[list[float] | None] | None = None) -> dict[str, Any]:
    rows = _rows(results, quality, intervals)
    n = max(r["rounds"] for r in rows)
    how = (f"Times and memory: medians of {n} interleaved rounds; latency x and throughput x: the median of "
           f"the rounds' ratios to the teacher (range over rounds in brackets).\n\n" if n > 1 else "")
    if any(r.get("retained_ci") for r in rows[1:]):
        how += (f"{quality} kept: in brackets its 95% paired-bootstrap interval ({BOOTSTRAP_SAMPLES} draws of the "
                f"{results[0]['items']} test items, the same draws for every variant).\n\n")
    md = (f"# Compression report: {cfg.family}\n\nTeacher: {', '.join(cfg.teacher)}; settings: "
          f"{json.dumps(cfg.report, sort_keys=True)}\n\n" + how + markdown(rows, quality, cfg.report))
    report = {"quality": quality, "rows": rows, "settings": cfg.report, "teacher": cfg.teacher}
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    write_json_atomic(out / "report.json", report)
    plot(rows, quality, out / "pareto.png")
    log.info("report: %s, %s", out / "report.md", out / "pareto.png")
    return report


def _child(job_path: str, out_path: str) -> None:
    from compress.family import load_family  # noqa: PLC0415

    job = json.loads(Path(job_path).read_text())
    family = load_family(job["family"], job["options"])
    result = measure(family, job["variant"], job["settings"])
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _child(sys.argv[1], sys.argv[2])
