"""Where the bundled simultaneous model lives, and how a model directory names its parts.

The bundled model (``simul/models/default/``) is a translator directory with its boundary
detector inside (``segmenter/``) and, in ``config.json``, the policy settings its model
card reports (``"policy": {"threshold": ..., "max_len": ...}``).
"""

from __future__ import annotations

import json
from pathlib import Path

from speech.config import ConfigError

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default"
SEGMENTER_DIR = "segmenter"


def resolve_model(model: Path | None, segmenter: Path | None = None) -> tuple[Path, Path | None]:
    """(translator directory, boundary detector directory or None) with the defaults filled in."""
    model = Path(model) if model is not None else DEFAULT_MODEL
    if not (model / "config.json").exists():
        where = "the bundled simultaneous model" if model == DEFAULT_MODEL else str(model)
        raise ConfigError(f"{model / 'config.json'}: not found ({where} is not a model directory)")
    if segmenter is None and (model / SEGMENTER_DIR / "config.json").exists():
        segmenter = model / SEGMENTER_DIR
    return model, segmenter


def policy_settings(model: Path) -> dict:
    """The ``policy`` block of a model's config.json (threshold, max_len), or {}."""
    return json.loads((model / "config.json").read_text(encoding="utf-8")).get("policy", {})
