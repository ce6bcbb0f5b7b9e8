"""A long stdin stream through ``interpres stream``: memory over time, no segment lost or doubled.

    python benchmarks/bench_stream.py [--minutes 60] [--model default] [--runtime onnx-int8] [--policy pause]
                                      [--json OUT] [--plot OUT.png]

The stream: the tst-COMMON en-de utterances of the ``small`` corpus, in order and again,
each followed by 1.0 s of faint noise, as raw 16 kHz s16le PCM on the command's stdin (as
``arecord`` would send it, but as fast as the command reads). ``interpres stream - --tgt de
--format jsonl`` prints each segment; its resident memory (VmRSS) is sampled four times a
second and compared between the second tenth of the audio (model loaded, stream under way)
and the last tenth.

Checks, from the segments' times: every utterance is covered by at least one segment
(none lost), no two segments overlap (none doubled), and no segment spans two utterances.
A policy that writes before a segment closes (``--policy la:0.5``) prints several commits
per segment, all with the segment's start; the segment is its last commit, the close.
Prints a Markdown table; ``--plot`` draws RSS against the audio read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SR = 16000
GAP_S = 1.0


def utterances() -> list[np.ndarray]:
    from speech.data.cache import interpres_home
    from speech.data.mustc import MustcSplit, load_segment

    root = interpres_home() / "speech" / "small"
    if not (root / "en-de" / "data" / "tst-COMMON").is_dir():
        raise SystemExit(f"{root}: build it first: interpres data speech --size small")
    return [load_segment(s) for s in MustcSplit(root, "en-de", "tst-COMMON")]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--model", default="default")
    ap.add_argument("--runtime", default="onnx-int8")
    ap.add_argument("--policy", default="pause")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()

    utts = utterances()
    rng = np.random.default_rng(0)
    spans, total = [], 0  # (start_s, end_s) of each utterance placed in the stream
    n_total = int(args.minutes * 60 * SR)

    def pcm():
        """The stream, one utterance and its gap at a time (never all in memory)."""
        nonlocal total
        i = 0
        while total < n_total:
            u = utts[i % len(utts)]
            gap = (2e-3 * rng.standard_normal(int(GAP_S * SR))).astype(np.float32)
            spans.append((total / SR, (total + len(u)) / SR))
            piece = np.concatenate([u, gap])
            total += len(piece)
            i += 1
            yield (np.clip(piece, -1, 1) * 32767).astype("<i2").tobytes()

    cmd = [sys.executable, "-m", "interpres", "stream", "-", "--tgt", "de", "--model", args.model,
           "--runtime", args.runtime, "--format", "jsonl", "--policy", args.policy]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    commits: list[dict] = []
    samples: list[tuple[float, float, float]] = []  # (wall s, audio s committed so far, RSS MB)

    def writer():
        for chunk in pcm():
            proc.stdin.write(chunk)
        proc.stdin.close()

    def reader():
        for line in proc.stdout:
            commits.append(json.loads(line))

    threads = [threading.Thread(target=writer, daemon=True), threading.Thread(target=reader, daemon=True)]
    for t in threads:
        t.start()
    while proc.poll() is None:
        mb = rss_mb(proc.pid)
        if mb is not None:
            samples.append((time.perf_counter() - t0, commits[-1]["committed_at"] if commits else 0.0, mb))
        time.sleep(0.25)
    for t in threads:
        t.join(10)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"interpres stream failed: {proc.stderr.read().decode()[-2000:]}")

    # lost: an utterance no segment overlaps; doubled: segments overlapping each other; merged:
    # a segment overlapping two utterances
    def overlaps(a, b):
        return min(a[1], b[1]) - max(a[0], b[0]) > 0.05

    closes: dict[float, float] = {}  # a segment's start -> the end its last commit (the close) gives
    for c in commits:
        closes[c["start"]] = c["end"]
    segs = sorted(closes.items())
    lost = sum(not any(overlaps(u, s) for s in segs) for u in spans)
    doubled = sum(overlaps(a, b) for a, b in zip(segs, segs[1:]))
    merged = sum(sum(overlaps(u, s) for u in spans) > 1 for s in segs)
    rss = [mb for _, _, mb in samples]
    audio_s = total / SR

    def rss_between(lo: float, hi: float) -> float:
        inside = [mb for _, a, mb in samples if lo * audio_s <= a <= hi * audio_s]
        return round(float(np.median(inside)), 1) if inside else float("nan")
    row = {"policy": args.policy, "commits": len(commits), "audio_min": round(total / SR / 60, 1), "utterances": len(spans), "segments": len(segs), "lost": lost,
           "doubled": doubled, "merged": merged, "wall_s": round(wall, 1),
           "rss_second_tenth_mb": rss_between(0.1, 0.2), "rss_last_tenth_mb": rss_between(0.9, 1.0),
           "rss_max_mb": round(max(rss), 1)}
    print("| audio (min) | utterances | segments | lost | doubled | merged | wall (s) | RSS 10-20% of the audio (MB) | "
          "RSS last 10% (MB) | RSS max (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {row['audio_min']} | {row['utterances']} | {row['segments']} | {lost} | {doubled} | {merged} | "
          f"{row['wall_s']} | {row['rss_second_tenth_mb']} | {row['rss_last_tenth_mb']} | {row['rss_max_mb']} |")
    if args.json is not None:
        args.json.write_text(json.dumps({**row, "rss": samples}, indent=1))
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([a / 60 for _, a, _ in samples], rss)
        ax.set_xlabel("audio committed (min)")
        ax.set_ylabel("interpres stream RSS (MB)")
        ax.set_ylim(0, max(rss) * 1.1)
        ax.set_title(f"{row['audio_min']} min on stdin: {row['segments']} segments, {lost} lost")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
