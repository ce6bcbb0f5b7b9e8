"""CoDA's decoding overhead: the same questions answered with and without it, alternating.

    python benchmarks/bench_coda.py [--model audio_align/models/default] [--scale 1.5] [--top-k 2]
                                    [--questions 512] [--reps 5] [--json OUT]

Loads the LALM once, chooses CoDA's heads on 40 dev scenes (as ``interpres eval aha
--coda`` does), then answers the first ``--questions`` test questions ``--reps`` times
each way, plain and amplified alternating (batch 32, greedy), and prints the median wall
time of each, their ratio, and whether the answers differ. Accuracy is measured by
``interpres eval aha --coda SCALE:K --baseline DIR`` (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audio_align import qa  # noqa: E402
from audio_align.coda import amplified, select_heads  # noqa: E402
from audio_align.encoded import encode_scenes  # noqa: E402
from audio_align.evaluate import answer, resolve_model  # noqa: E402
from audio_align.lalm import AudioFrontEnd, load_lalm_dir  # noqa: E402
from audio_align.scenes import corpus_root, read_manifest, read_scenes  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--scenes", default="default")
    p.add_argument("--scale", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--questions", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    path = resolve_model(args.model)
    model, tok, _ = load_lalm_dir(path)
    root = corpus_root(args.scenes)
    manifest = read_manifest(root)
    frontend = AudioFrontEnd.of(model.cfg, ear=model.ear)
    dev = read_scenes(root, "dev")[:40]
    dev_states = encode_scenes(root, "dev", dev, frontend)
    dev_q = [q for q in qa.build_questions(dev, "dev", manifest["classes"], qa.rules_of(manifest)) if q.kind != qa.CAPTION]
    t0 = time.perf_counter()
    heads = select_heads(model, tok, [dev_states[q.scene] for q in dev_q], [q.question for q in dev_q], args.top_k)
    select_s = time.perf_counter() - t0
    test = read_scenes(root, "test")
    states = encode_scenes(root, "test", test, frontend)
    qs = [q for q in qa.build_questions(test, "test", manifest["classes"], qa.rules_of(manifest))
          if q.kind != qa.CAPTION][: args.questions]
    st, text = [states[q.scene] for q in qs], [q.question for q in qs]
    times: dict[str, list[float]] = {"plain": [], "coda": []}
    outputs: dict[str, list[str]] = {}
    answer(model, tok, st[:64], text[:64])  # warm-up
    for _ in range(args.reps):
        for mode in ("plain", "coda"):
            t = time.perf_counter()
            if mode == "coda":
                with amplified(model, heads, args.scale):
                    outputs[mode] = answer(model, tok, st, text)
            else:
                outputs[mode] = answer(model, tok, st, text)
            times[mode].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    changed = sum(a != b for a, b in zip(outputs["plain"], outputs["coda"]))
    result = {"model": str(path), "questions": len(qs), "reps": args.reps, "scale": args.scale, "heads": heads,
              "select_heads_s": round(select_s, 2), "median_s": {k: round(v, 3) for k, v in med.items()},
              "ratio": round(med["coda"] / med["plain"], 4), "answers_changed": changed,
              "threads": torch.get_num_threads()}
    print(f"| decoding | median s ({len(qs)} questions, {args.reps} reps) |\n|---|---:|\n"
          f"| plain | {med['plain']:.2f} |\n| CoDA x{args.scale} heads {heads} | {med['coda']:.2f} |\n\n"
          f"ratio {result['ratio']:.3f}; {changed} of {len(qs)} answers changed; heads chosen in {select_s:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
