"""Time the corpus builders from nothing, then again (the resume / no-op path).

    python benchmarks/bench_data.py [--home DIR] [--size small] [--out results.json]

Runs ``interpres data text`` and ``interpres data speech --size SIZE`` in a fresh
``$INTERPRES_HOME`` (packages are fetched again, every utterance is synthesized
again), then both once more on the finished cache, and prints a Markdown table of
wall times, the counts per language and split, and the hours of speech per split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], home: Path) -> float:
    env = {**os.environ, "INTERPRES_HOME": str(home)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="empty cache root (default: a new temporary folder)")
    ap.add_argument("--size", default="small", choices=["tiny", "small", "full"])
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="interpres-bench-"))
    cli = [sys.executable, "-m", "interpres", "data"]

    times = {
        "text (first run)": timed(cli + ["text"], home),
        f"speech --size {args.size} (first run)": timed(cli + ["speech", "--size", args.size], home),
    }
    # read the summaries of the first runs: the second runs rewrite them
    text = json.loads((home / "text" / "summary.json").read_text())
    speech = json.loads((home / "speech" / args.size / "summary.json").read_text())
    times["text (second run)"] = timed(cli + ["text"], home)
    times[f"speech --size {args.size} (second run)"] = timed(cli + ["speech", "--size", args.size], home)
    result = {"cores": os.cpu_count(), "home": str(home), "seconds": {k: round(v, 1) for k, v in times.items()},
              "text_counts": text["counts"], "sentence_sources": text["sentence_sources"],
              "speech_splits": speech["splits"], "synthesized": speech["synthesized"],
              "seconds_synthesis": speech["seconds_synthesis"]}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"## Builder times ({os.cpu_count()} cores)\n\n| step | seconds |\n|---|---:|")
    for k, v in times.items():
        print(f"| {k} | {v:.1f} |")
    print("\n## Text pairs\n\n| pair | train | dev | test |\n|---|---:|---:|---:|")
    for pair, c in text["counts"].items():
        print(f"| {pair} | {c['train']} | {c['dev']} | {c['test']} |")
    print(f"\n## Speech, --size {args.size} ({speech['synthesized']} utterances synthesized "
          f"in {speech['seconds_synthesis']} s)\n")
    splits = ["train", "dev", "tst-COMMON", "tst-VOICE"]
    print("| pair | " + " | ".join(f"{s} utts / h" for s in splits) + " |\n|---|" + "---:|" * len(splits))
    for pair, by in speech["splits"].items():
        print(f"| {pair} | " + " | ".join(f"{by[s]['utterances']} / {by[s]['hours']:.2f}" for s in splits) + " |")


if __name__ == "__main__":
    main()
