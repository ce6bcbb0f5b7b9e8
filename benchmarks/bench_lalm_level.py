"""Does a LALM hear level? Its loudness and duration answers with the level column as it
is, zeroed, and raised by 20 dB.

    python benchmarks/bench_lalm_level.py --model runs/lalm24l_sft/model [--scenes default] [--max-scenes 500]

For a model whose config has ``level: true`` (audio_align.lalm.frame_levels): the test
split's "loudest" questions (held-out templates, guided choice among the options, as
``interpres eval aha --guided-choice`` asks them) and the training split's "loudest",
"louder" and "longer" questions (training templates; the pairwise ones answered freely).
A model that uses the column answers differently when it is zeroed or shifted; one that
ignores it does not. Prints a Markdown table of accuracies (%).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audio_align import qa  # noqa: E402
from audio_align.encoded import encode_scenes  # noqa: E402
from audio_align.evaluate import answer, choose, resolve_model  # noqa: E402
from audio_align.lalm import LEVEL_SCALE_DB, AudioFrontEnd, load_lalm_dir  # noqa: E402
from audio_align.scenes import corpus_root, read_manifest, read_scenes  # noqa: E402

VARIANTS = {
    "as heard": lambda x: x,
    "level zeroed": lambda x: torch.cat([x[:, :-1], torch.zeros_like(x[:, -1:])], 1),
    "level +20 dB": lambda x: torch.cat([x[:, :-1], x[:, -1:] + 20.0 / LEVEL_SCALE_DB], 1),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--scenes", default="default")
    p.add_argument("--max-scenes", type=int, default=500, help="first N scenes of each split")
    args = p.parse_args()
    model, tok, _ = load_lalm_dir(resolve_model(args.model))
    if not model.cfg.level:
        print(f"{args.model}: the model has no level column (config lalm.level is false)", file=sys.stderr)
        return 2
    model.eval()
    frontend = AudioFrontEnd.of(model.cfg, ear=model.ear)
    root = corpus_root(args.scenes)
    manifest = read_manifest(root)
    print("| split | questions | n | " + " | ".join(VARIANTS) + " |")
    print("|---|---|---:|" + "---:|" * len(VARIANTS))
    for split, types in (("test", ("loudest",)), ("train", ("loudest", "louder", "longer"))):
        scenes = read_scenes(root, split)[: args.max_scenes]
        states = encode_scenes(root, split, scenes, frontend)
        qs = qa.build_questions(scenes, split, manifest["classes"], qa.rules_of(manifest))
        for qtype in types:
            sel = [q for q in qs if q.type == qtype]
            accs = []
            for f in VARIANTS.values():
                heard = [f(states[q.scene].float()) for q in sel]
                texts = [q.question for q in sel]
                preds = choose(model, tok, heard, texts, [q.options for q in sel]) if sel[0].options \
                    else answer(model, tok, heard, texts)
                accs.append(100.0 * sum(qa.is_correct(q, x) for q, x in zip(sel, preds)) / len(sel))
            print(f"| {split} | {qtype} | {len(sel)} | " + " | ".join(f"{a:.1f}" for a in accs) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
