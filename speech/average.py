"""Checkpoint averaging into a model directory (fairseq's ``scripts/average_checkpoints.py``).

A training run averages its last ``average_last`` checkpoints into ``OUT/model`` when it
ends. This makes any other choice a model directory of its own: the last N checkpoints
up to an update (``--upper-bound``, fairseq's ``--checkpoint-upper-bound``), one
checkpoint alone (N = 1: the "single model" of a comparison), or checkpoints named one
by one.

    interpres average runs/st_small --last 1 --out runs/st_small_single
    interpres average runs/st_small --last 5 --upper-bound 1500 --out runs/st_small_1500
    interpres average runs/st_small --checkpoint runs/st_small/checkpoints/checkpoint_900 ... --out DIR

The architecture, tokenizer, languages and features come from the run's own model
directory (``RUN/model``, or ``--like DIR``); ``config.json`` records which checkpoints
were averaged and the update of the newest, and drops the run's dev scores (they belong
to its own average). Checkpoints are safetensors: nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from compress.files import atomic_dir
from speech.checkpoint import CONFIG_FILE, CheckpointError, load_model_dir, save_model_dir
from speech.loop import average_checkpoints, list_checkpoints
from speech.tokenizer import tokenizer_file

CHECKPOINT_FILE = "checkpoint.safetensors"


def select_checkpoints(run: str | Path, last: int, upper_bound: int | None = None) -> list[Path]:
    """The newest ``last`` checkpoints of ``run`` (``RUN/checkpoints/checkpoint_N``) with
    N <= ``upper_bound`` (None: all), oldest first. Raises CheckpointError naming the
    folder when there are fewer."""
    if last < 1:
        raise CheckpointError(f"--last must be at least 1, got {last}")
    ckpt_dir = Path(run) / "checkpoints"
    found = [p for p in list_checkpoints(ckpt_dir)
             if upper_bound is None or int(p.name.split("_")[1]) <= upper_bound]
    if len(found) < last:
        bound = "" if upper_bound is None else f" at or before update {upper_bound}"
        raise CheckpointError(f"{ckpt_dir}: {len(found)} checkpoints{bound}, {last} asked for "
                              f"(there: {', '.join(p.name for p in list_checkpoints(ckpt_dir)) or 'none'})")
    return found[-last:]


def _update_of(ckpt: Path) -> int:
    state = ckpt / "state.json"
    try:
        return int(json.loads(state.read_text(encoding="utf-8"))["update"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{state}: not a checkpoint's state ({e})") from e


def average_into_model_dir(checkpoints: Sequence[str | Path], like: str | Path, out: str | Path) -> Path:
    """Average ``checkpoints`` (folders holding checkpoint.safetensors and state.json) into
    the model directory ``out``, with the architecture and files of the model directory
    ``like``. ``out`` appears whole or not at all."""
    paths = [Path(p) for p in checkpoints]
    if not paths:
        raise CheckpointError("no checkpoints to average")
    for p in paths:
        if not (p / CHECKPOINT_FILE).is_file():
            raise CheckpointError(f"{p}: no {CHECKPOINT_FILE} (a checkpoint folder of a training run)")
    like = Path(like)
    if not (like / CONFIG_FILE).is_file():
        raise CheckpointError(f"{like / CONFIG_FILE}: not found (--like names a model directory)")
    model, conf = load_model_dir(like)
    tok_file = tokenizer_file(conf)
    if not (like / tok_file).is_file():
        raise CheckpointError(f"{like / tok_file}: not found (--like names a model directory)")
    try:
        model.load_state_dict(average_checkpoints(paths))
    except RuntimeError as e:
        raise CheckpointError(f"{paths[0]}: does not fit the architecture of {like}: {e}") from e
    extra = {k: v for k, v in conf.items() if k not in ("model", "dev_scores")}
    extra.update(averaged=[p.name for p in paths], updates=max(_update_of(p) for p in paths),
                 averaged_from=[str(p) for p in paths])
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_model_dir(model, model.cfg, tmp, extra=extra)
        shutil.copyfile(like / tok_file, tmp / tok_file)
        (tmp / "README.md").write_text(
            f"# Checkpoint average of {like}\n\nAverage of {', '.join(str(p) for p in paths)} "
            f"(`interpres average`); architecture, tokenizer and settings of `{like}`. "
            "See that directory's model card for the recipe and data.\n", encoding="utf-8")
    return out
