"""Speed and memory of a speech model on 2 CPU cores: RTF at batch 1 and 16, training throughput.

    python benchmarks/bench_speech.py [--model DIR] [--corpus small] [--pair en-de] [--n 96] [--beam 5]
    python benchmarks/bench_speech.py --pair en-asr [--ctc-weight 0.3]   # transcription, joint CTC

Each measurement runs in a fresh process so its peak memory (max RSS) is its own:
- decode: the first N utterances of tst-COMMON, features included, sorted by length
  into batches of 1 or 16; RTF = decoding wall time / audio seconds (median of 3 runs).
- train: 30 updates of the model's architecture on the pair's training features,
  after 5 warm-up updates: utterances and audio seconds per wall second.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _decode(model: str, corpus: str, pair: str, n: int, beam: int, batch: int, ctc_weight: float | None) -> dict:
    import torch

    from speech.data.mustc import MustcSplit, load_segment
    from speech.decode import DecodingOptions
    from speech.train import corpus_root
    from speech.translate import load_translator, resolve_ctc_weight

    tr = load_translator(model or None)
    split = MustcSplit(corpus_root(corpus), pair, "tst-COMMON")
    segs = list(split)[:n]
    waves = [load_segment(s) for s in segs]
    audio_s = sum(len(w) for w in waves) / 16000
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    lang = pair.split("-")[1]
    lang = "en" if lang == "asr" else lang  # en-asr: transcription
    opts = DecodingOptions(beam_size=beam, ctc_weight=resolve_ctc_weight(tr, ctc_weight) if lang == "en" else 0.0)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        with torch.inference_mode():
            for k in range(0, len(order), batch):
                feats = [tr.features(waves[i]) for i in order[k:k + batch]]
                tr.decode(feats, [lang], opts)
        runs.append(time.perf_counter() - t0)
    wall = statistics.median(runs)
    return {"mode": f"decode batch {batch}" + (f", CTC weight {opts.ctc_weight}" if lang == "en" else ""),
            "utterances": len(segs), "audio_s": round(audio_s, 1),
            "wall_s": round(wall, 2), "rtf": round(wall / audio_s, 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _train(model: str, corpus: str, pair: str) -> dict:
    import torch

    from speech.data.mustc import MustcSplit
    from speech.dataset import SplitFeatures, batches_by_frames, pad_features
    from speech.features import FbankConfig
    from speech.losses import label_smoothed_nll_loss
    from speech.model import S2TModel
    from speech.model_config import PAD_ID
    from speech.train import corpus_root
    from speech.translate import load_translator

    cfg = load_translator(model or None).models[0].cfg
    feats = SplitFeatures.load_or_compute(MustcSplit(corpus_root(corpus), pair, "train"), FbankConfig())
    net = S2TModel(cfg).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    batches = batches_by_frames(feats.lengths, max_frames=8000, max_items=64, seed=1)
    utts = frames = 0
    t0 = 0.0
    for step, idx in enumerate(batches[:35]):
        if step == 5:
            t0, utts, frames = time.perf_counter(), 0, 0
        x, lens = pad_features([feats.get(i) for i in idx])
        prev = torch.full((len(idx), 12), 4, dtype=torch.long)
        out = net(x, lens, prev)
        loss, _ = label_smoothed_nll_loss(out["logits"], prev, 0.1, PAD_ID)
        opt.zero_grad()
        (loss / prev.numel()).backward()
        opt.step()
        utts += len(idx)
        frames += int(lens.sum())
    wall = time.perf_counter() - t0
    return {"mode": "train (30 updates, 8000 frames/batch)", "utterances_per_s": round(utts / wall, 1),
            "audio_s_per_s": round(frames / 100 / wall, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="model directory (default: the bundled model)")
    ap.add_argument("--corpus", default="small")
    ap.add_argument("--pair", default="en-de")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--ctc-weight", type=float, default=None,
                    help="joint CTC weight of transcription (en-asr); default: the CLI's")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child.split(":")
        res = _train(args.model, args.corpus, args.pair) if kind == "train" else \
            _decode(args.model, args.corpus, args.pair, args.n, args.beam, int(rest[0]), args.ctc_weight)
        print(json.dumps(res))
        return
    results = []
    for child in ("decode:1", "decode:16", "train"):
        cmd = [sys.executable, __file__, "--model", args.model, "--corpus", args.corpus, "--pair", args.pair,
               "--n", str(args.n), "--beam", str(args.beam), "--child", child]
        cmd += ["--ctc-weight", str(args.ctc_weight)] if args.ctc_weight is not None else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"| measurement ({os.cpu_count()} cores) | result | peak RSS (MB) |\n|---|---|---:|")
    for r in results:
        if "rtf" in r:
            text = f"RTF {r['rtf']} ({r['utterances']} utts, {r['audio_s']} s audio, {r['wall_s']} s, beam {args.beam})"
        else:
            text = f"{r['utterances_per_s']} utt/s, {r['audio_s_per_s']} s audio/s"
        print(f"| {r['mode']} | {text} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
