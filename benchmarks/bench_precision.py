"""One training update of Whisper base in float32 and under bfloat16 autocast, side by side.

    python benchmarks/bench_precision.py [--model runs/whisper-base] [--rounds 5]
                                         [--batch 24] [--frames 300] [--tokens 30]

The teacher recipe's update (speech/configs/st_whisper.yaml): the frozen encoder's
forward, the decoder's forward and backward with a full-vocabulary cross-entropy, on a
batch of ``--batch`` utterances of ``--frames`` log-mel frames (10 ms each) with
``--tokens``-token targets. Rounds alternate fp32 and bf16 (the order flips each round);
prints the median seconds of each part and the ratio. bf16 pays off where the CPU has
AVX512-BF16 or AMX (``lscpu | grep -o 'avx512_bf16\\|amx_bf16'``); elsewhere it can be slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from speech.checkpoint import load_model_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/whisper-base")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=30)
    args = ap.parse_args()

    model, _ = load_model_dir(args.model)
    model.train()
    model.encoder.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.frames, model.cfg.n_mels, generator=gen)
    lens = torch.full((args.batch,), args.frames)
    prev = torch.randint(0, model.cfg.vocab_size, (args.batch, args.tokens), generator=gen)
    target = torch.randint(0, model.cfg.vocab_size, (args.batch, args.tokens), generator=gen)

    def update(bf16: bool) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                enc, _, mask = model.encode(x, lens)
            t1 = time.perf_counter()
            logits = model.decoder(prev, enc, mask)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten())
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, t3 - t2

    update(False), update(True)  # warm-up
    times: dict[str, list[tuple[float, float, float]]] = {"fp32": [], "bf16": []}
    for r in range(args.rounds):
        for name in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            times[name].append(update(name == "bf16"))
    print(f"batch {args.batch} x {args.frames} frames, {args.tokens} target tokens, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    print("| precision | encoder fwd (s) | decoder fwd (s) | backward (s) | update (s) |")
    print("|---|---:|---:|---:|---:|")
    med = {}
    for name, rows in times.items():
        parts = [statistics.median(r[i] for r in rows) for i in range(3)]
        med[name] = statistics.median(sum(r) for r in rows)
        print(f"| {name} | {parts[0]:.3f} | {parts[1]:.3f} | {parts[2]:.3f} | {med[name]:.3f} |")
    print(f"\nbf16 / fp32 update time: {med['bf16'] / med['fp32']:.2f}")


if __name__ == "__main__":
    main()
