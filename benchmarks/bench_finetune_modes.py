"""Fine-tuning Whisper base into the teacher: which parameters to train, at equal wall time.

    python benchmarks/bench_finetune_modes.py [--seconds 300] [--out runs/finetune_modes]
                                              [--modes full,frozen-encoder,...] [key=value ...]

Each mode is the teacher recipe (speech/configs/st_whisper.yaml, with any key=value
overrides given here) trained for ``--seconds`` of active time from the same imported
Whisper base, then validated once on the whole dev set (per-token NLL, no label
smoothing). The modes:

- ``full``: every parameter trains (the encoder's backward too);
- ``frozen-encoder``: the encoder is frozen, the decoder (embeddings included) trains;
- ``decoder-layers``: the encoder and the tied token embedding are frozen, the decoder's
  layers, norms and positions train (what a bundle over the base must ship: about 25M);
- ``lora``: rank-32 adapters on every Linear of the decoder, everything else frozen,
  with a higher learning rate (``--lora-lr``, 1e-3; the others ``--lr``, 3e-4), as
  adapters are usually trained.

A mode whose run folder already finished is read, not trained again (delete the folder
to measure it again). Prints a Markdown table (trainable parameters, updates, seconds per
update, final dev NLL) and writes it with the runs' histories to OUT/report.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.lora import add_lora  # noqa: E402
from speech.config import load_config  # noqa: E402
from speech.loop import iter_history  # noqa: E402
from speech.checkpoint import load_model_dir  # noqa: E402
from speech.train import TrainConfig, freeze_modules, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "speech/configs/st_whisper.yaml"
LORA_TARGETS = "[q_proj,k_proj,v_proj,out_proj,fc1,fc2]"


def mode_overrides(mode: str, lr: float, lora_lr: float) -> list[str]:
    plain = ["lora.rank=0", f"lr={lr}"]
    if mode == "full":
        return [*plain, "freeze=[]"]
    if mode == "frozen-encoder":
        return [*plain, "freeze=[encoder]"]
    if mode == "decoder-layers":
        return [*plain, "freeze=[encoder,decoder.embed_tokens]"]
    if mode == "lora":
        return ["freeze=[]", "lora.rank=32", "lora.alpha=64", "lora.modules=[decoder]",
                f"lora.targets={LORA_TARGETS}", f"lr={lora_lr}"]
    raise SystemExit(f"--modes: unknown mode {mode!r} (full, frozen-encoder, decoder-layers, lora)")


def trainable(cfg: TrainConfig) -> int:
    model, _ = load_model_dir(cfg.init)
    freeze_modules(model, cfg.freeze)
    if cfg.lora.rank:
        add_lora(model, cfg.lora)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--out", default="runs/finetune_modes")
    ap.add_argument("--modes", default="full,frozen-encoder,decoder-layers,lora")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the modes without adapters")
    ap.add_argument("--lora-lr", type=float, default=1e-3, help="peak learning rate of the adapters")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe, for every mode")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    rows = []
    for mode in args.modes.split(","):
        out = Path(args.out) / mode
        cfg = load_config(TrainConfig, RECIPE, [*args.overrides, *mode_overrides(mode, args.lr, args.lora_lr),
                                                f"out={out}", f"max_seconds={args.seconds}", "max_updates=1000000",
                                                "validate_interval_updates=1000000", "dev_bleu_max=0",
                                                "average_last=1"])
        train(cfg)
        history = list(iter_history(out))
        steps = [h for h in history if "nll" in h]
        dev = [h["dev_nll"] for h in history if "dev_nll" in h]
        last = steps[-1]
        rows.append({"mode": mode, "trainable": trainable(cfg), "updates": last["update"],
                     "seconds": last["seconds"], "s_per_update": last["seconds"] / last["update"],
                     "train_nll_last10": sum(h["nll"] for h in steps[-10:]) / len(steps[-10:]),
                     "dev_nll": dev[-1], "lr": cfg.lr, "history": history})
    print(f"\n{args.seconds:.0f} s of training each (recipe {RECIPE.relative_to(ROOT)}"
          f"{', ' + ' '.join(args.overrides) if args.overrides else ''})\n")
    print("| mode | trainable | updates | s / update | train NLL (last 100) | dev NLL |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['trainable'] / 1e6:.2f}M | {r['updates']} | {r['s_per_update']:.2f} | "
              f"{r['train_nll_last10']:.3f} | {r['dev_nll']:.3f} |")
    report = Path(args.out) / "report.json"
    report.write_text(json.dumps({"seconds": args.seconds, "overrides": args.overrides, "rows": rows}, indent=1))
    print(f"\nwritten: {report}")


if __name__ == "__main__":
    main()
