"""The zh->en text translator: speech's text encoder-decoder over a character source.

The model itself (:class:`MTConfig`, :class:`MTModel`) lives in :mod:`speech.text_model`,
shared with the speech translator's text pretraining; this module holds the presets of
the simultaneous translator. The source unit is one Chinese character (a sentencepiece
``char`` vocabulary), the unit the stream arrives in and latency is counted in, so "k
characters read" is "k source tokens". The target is a sentencepiece unigram vocabulary
over English.
"""

from __future__ import annotations

from typing import Any

from speech.config import ConfigError
from speech.text_model import MTConfig, MTModel, TextEncoder, load_mt_model

__all__ = ["MTConfig", "MTModel", "TextEncoder", "load_mt_model", "PRESETS", "preset"]


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, heads=4, ffn_dim=128),
    # the CPU default: d=256 (7.8M parameters) ran at about 1.7 s per 6000-token update on
    # 2 cores, 6 epochs in the 25 minutes the 1-hour recipe gives pretraining; d=192 has
    # about 60% of its compute per token
    "small": dict(d_model=192, encoder_layers=4, decoder_layers=3, heads=4, ffn_dim=768),
    "base": dict(d_model=256, encoder_layers=4, decoder_layers=3, heads=4, ffn_dim=1024),
}


def preset(name: str, src_vocab_size: int, vocab_size: int, **overrides: Any) -> MTConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}' (known: {', '.join(PRESETS)})")
    try:
        return MTConfig(**{**PRESETS[name], "src_vocab_size": src_vocab_size, "vocab_size": vocab_size, **overrides})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"preset '{name}': {e}") from e
