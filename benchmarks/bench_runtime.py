"""Decoding speed of one model on four runtimes: torch fp32, torch int8, ONNX Runtime fp32 and int8.

    python benchmarks/bench_runtime.py [--model DIR] [--n 40] [--corpus small] [--pair en-de] [--threads 2]

For each runtime and each beam size (1 = greedy, and 5), with the same decoding options:

- latency: every utterance decoded alone (batch 1), features excluded; p50 and p95 in ms
  after two warm-up utterances;
- throughput: the utterances sorted by length in batches of 16; utterances per second;
- "same": the share of utterances whose output equals torch fp32's at batch 1.

Utterances: the first N of ``$INTERPRES_HOME/speech/CORPUS/PAIR/data/tst-COMMON`` (MuST-C
layout) when it exists, else N synthesized 1-6 s signals (voiced-like harmonics with
pauses; a random model's speed does not depend on what is said). The ONNX export is
made once into ``$INTERPRES_HOME/onnx/`` (as ``interpres translate --runtime onnx-int8`` does).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.quantize import quantize_torch_int8  # noqa: E402
from speech.decode import DecodingOptions  # noqa: E402
from speech.translate import Translator, load_translator  # noqa: E402


def utterances(corpus: str, pair: str, n: int) -> tuple[list[np.ndarray], str]:
    from speech.data.cache import interpres_home
    from speech.data.mustc import MustcSplit, load_segment

    root = interpres_home() / "speech" / corpus
    if (root / pair / "data" / "tst-COMMON").is_dir():
        segs = list(MustcSplit(root, pair, "tst-COMMON"))[:n]
        return [load_segment(s) for s in segs], f"{root / pair}/tst-COMMON, first {len(segs)}"
    rng = np.random.default_rng(0)
    waves = []
    for _ in range(n):
        t = np.arange(int(16000 * rng.uniform(1.0, 6.0))) / 16000
        f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
        voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 8))
        gate = (np.sin(2 * np.pi * rng.uniform(1.5, 3.0) * t) > -0.3).astype(float)
        waves.append((0.1 * voice * gate + 1e-3 * rng.standard_normal(len(t))).astype(np.float32))
    return waves, f"{n} synthesized signals"


def run(tr: Translator, feats: list[torch.Tensor], lang: str, opts: DecodingOptions) -> dict:
    for f in feats[:2]:
        tr.decode([f], [lang], opts)
    times, outputs = [], []
    with torch.inference_mode():
        for f in feats:
            t0 = time.perf_counter()
            outputs.append(tr.decode([f], [lang], opts)[0][0].tokens)
            times.append(time.perf_counter() - t0)
        order = sorted(range(len(feats)), key=lambda i: len(feats[i]))
        t0 = time.perf_counter()
        for k in range(0, len(order), 16):
            tr.decode([feats[i] for i in order[k:k + 16]], [lang], opts)
        wall16 = time.perf_counter() - t0
    ms = sorted(1000 * t for t in times)
    return {"p50": statistics.median(ms), "p95": ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))],
            "utt_s": len(feats) / wall16, "outputs": outputs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--corpus", default="small")
    ap.add_argument("--pair", default="en-de")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--beams", default="1,5", help="beam sizes, comma-separated (default: 1,5)")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default: 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # onnxruntime sessions take torch's thread count

    base = load_translator(args.model)
    waves, source = utterances(args.corpus, args.pair, args.n)
    feats = [base.features(w) for w in waves]
    lang = args.pair.split("-")[1] if args.pair.split("-")[1] in base.languages else base.languages[0]
    audio_s = sum(len(w) for w in waves) / 16000

    t0 = time.perf_counter()
    onnx_int8 = load_translator(args.model, runtime="onnx-int8")
    export_s = time.perf_counter() - t0
    onnx_fp32 = load_translator(args.model, runtime="onnx")
    torch_int8 = load_translator(args.model)
    torch_int8.models = [quantize_torch_int8(m) for m in torch_int8.models]
    runtimes = {"torch fp32": base, "torch int8": torch_int8, "onnx fp32": onnx_fp32, "onnx int8": onnx_int8}

    print(f"model {base.name}; {source} ({audio_s:.1f} s of audio), into '{lang}'; {args.threads} threads; "
          f"ONNX export or cache lookup {export_s:.1f} s\n")
    print("| runtime | beam | batch 1 p50 (ms) | batch 1 p95 (ms) | p50 speedup | batch 16 (utt/s) | "
          "same as torch fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for beam in [int(b) for b in args.beams.split(",")]:
        opts = DecodingOptions(beam_size=beam)
        results = {name: run(tr, feats, lang, opts) for name, tr in runtimes.items()}
        ref = results["torch fp32"]
        for name, r in results.items():
            same = sum(a == b for a, b in zip(r["outputs"], ref["outputs"])) / len(feats)
            print(f"| {name} | {beam} | {r['p50']:.1f} | {r['p95']:.1f} | {ref['p50'] / r['p50']:.2f}x | "
                  f"{r['utt_s']:.1f} | {100 * same:.0f}% |")


if __name__ == "__main__":
    main()
