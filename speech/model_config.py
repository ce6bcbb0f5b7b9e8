"""The speech-to-text model's architecture as data: :class:`ModelConfig`, its presets, and
the per-layer sizes a structurally pruned model keeps (``encoder_layout`` /
``decoder_layout``). The layouts stay here, not in the pruner: a pruned model's
config.json is the only thing that says what shapes its tensors have, so loading it
needs them (as Hugging Face configs carry ``pruned_heads``); empty means uniform layers.

    cfg = preset("small", vocab_size=2000, n_mels=80)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from speech.config import ConfigError


PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3  # speech.tokenizer's fixed ids


@dataclass
class ModelConfig:
    """The architecture. The defaults are fairseq's ``s2t_transformer_s``; see :data:`PRESETS`."""

    vocab_size: int = 0  # 0 = not set yet: a recipe takes it from spm.model
    n_mels: int = 80
    conv_channels: int = 1024  # the first conv's output channels (GLU halves them)
    conv_kernel_sizes: list[int] = field(default_factory=lambda: [5, 5])
    d_model: int = 256
    encoder_layers: int = 12
    decoder_layers: int = 6
    heads: int = 4
    ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    max_source_positions: int = 6000  # input feature frames (60 s at a 10 ms shift)
    max_target_positions: int = 1024  # decoder tokens
    share_decoder_input_output_embed: bool = True
    ctc: bool = True  # a CTC head on the encoder output (ASR pretraining, joint CTC loss)
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    blank_id: int = PAD_ID  # CTC blank: the pad id (never a CTC target)
    # A pruned model (compress/) has its own sizes per layer; empty/0 = the uniform sizes above.
    head_dim: int = 0  # 0: d_model // heads
    encoder_layout: list[list[int]] = field(default_factory=list)  # per encoder layer: [heads, ffn_dim]
    decoder_layout: list[list[int]] = field(default_factory=list)  # per decoder layer: [self heads, cross heads, ffn_dim]
    # The family's variants (the "whisper" preset sets all four to Whisper's choices):
    frontend: str = "glu"  # "glu": stride-2 Conv1d + GLU layers; "gelu": Conv1d + GELU, the first of stride 1
    activation: str = "relu"  # of the feed-forward blocks: "relu" or "gelu"
    scale_embedding: bool = True  # multiply token embeddings and subsampled frames by sqrt(d_model)
    decoder_positions: str = "sinusoidal"  # or "learned": max_target_positions embeddings

    def __post_init__(self) -> None:
        positive = ("n_mels", "conv_channels", "d_model", "encoder_layers", "decoder_layers",
                    "heads", "ffn_dim", "max_source_positions", "max_target_positions")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be at least 1, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ValueError(f"'vocab_size' must be positive (or 0 = not set), got {self.vocab_size}")
        check_layout(self)
        for name, known in (("frontend", FRONTENDS), ("activation", ACTIVATIONS),
                            ("decoder_positions", ("sinusoidal", "learned"))):
            if getattr(self, name) not in known:
                raise ValueError(f"'{name}' must be one of {', '.join(known)}, got {getattr(self, name)!r}")
        if self.frontend == "glu" and self.conv_channels % 2:
            raise ValueError(f"'conv_channels' must be even (GLU halves it), got {self.conv_channels}")
        if not self.conv_kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.conv_kernel_sizes):
            raise ValueError(f"'conv_kernel_sizes' must be odd sizes, got {self.conv_kernel_sizes}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"'{name}' must be in [0, 1), got {getattr(self, name)}")
        for name in ("pad_id", "bos_id", "eos_id", "blank_id"):
            value = getattr(self, name)
            if value < 0 or (self.vocab_size and value >= self.vocab_size):
                raise ValueError(f"'{name}' ({value}) is outside the vocabulary of {self.vocab_size}")


FRONTENDS = ("glu", "gelu")
ACTIVATIONS = ("relu", "gelu")

PRESETS: dict[str, dict[str, Any]] = {
    # for tests: builds and runs in milliseconds
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, heads=4, ffn_dim=128, conv_channels=64),
    # the CPU default: about a third of s's compute per frame
    # the CPU default: 6.5M parameters at a 4k vocabulary train at 46 utterances/s on 2 cores,
    # against 25/s for d=256 with 8+4 layers (13.4M), so the 2-hour recipe sees twice the epochs
    "small": dict(d_model=192, encoder_layers=6, decoder_layers=3, heads=4, ffn_dim=768, conv_channels=384),
    # fairseq s2t_transformer_s
    "s": dict(d_model=256, encoder_layers=12, decoder_layers=6, heads=4, ffn_dim=2048, conv_channels=1024),
    # OpenAI's Whisper base (74M): GELU conv front end (30 s = 3000 frames in, 1500 out), no
    # embedding scale, learned decoder positions, no CTC head; speech.whisper imports its weights
    "whisper-base": dict(d_model=512, encoder_layers=6, decoder_layers=6, heads=8, ffn_dim=2048, conv_channels=512,
                         conv_kernel_sizes=[3, 3], frontend="gelu", activation="gelu", scale_embedding=False,
                         decoder_positions="learned", max_source_positions=3000, max_target_positions=448,
                         ctc=False, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0),
}


# fields a config.json written before they existed may lack (their defaults mean "uniform")
OPTIONAL_FIELDS = ("head_dim", "encoder_layout", "decoder_layout", "frontend", "activation", "scale_embedding",
                   "decoder_positions")


def check_layout(cfg: Any) -> None:
    """Validate the per-layer sizes of a config with ``heads``, ``ffn_dim``, ``head_dim``,
    ``encoder_layout`` and ``decoder_layout`` (ModelConfig and simul's MTConfig)."""
    if cfg.head_dim < 0:
        raise ValueError(f"'head_dim' must be positive (or 0 = d_model // heads), got {cfg.head_dim}")
    if not cfg.head_dim and cfg.d_model % cfg.heads:
        raise ValueError(f"'d_model' ({cfg.d_model}) must be a multiple of 'heads' ({cfg.heads})")
    for name, layers, width in (("encoder_layout", cfg.encoder_layers, 2), ("decoder_layout", cfg.decoder_layers, 3)):
        layout = getattr(cfg, name)
        if not layout:
            continue
        if len(layout) != layers:
            raise ValueError(f"'{name}' has {len(layout)} entries for {layers} layers")
        for i, entry in enumerate(layout):
            if len(entry) != width or any(v < 1 for v in entry):
                raise ValueError(f"'{name}[{i}]' must be {width} positive sizes, got {entry}")


def head_dim(cfg: Any) -> int:
    return cfg.head_dim or cfg.d_model // cfg.heads


def encoder_layer_sizes(cfg: Any, i: int) -> tuple[int, int]:
    """(heads, ffn_dim) of encoder layer ``i``."""
    return tuple(cfg.encoder_layout[i]) if cfg.encoder_layout else (cfg.heads, cfg.ffn_dim)  # type: ignore[return-value]


def decoder_layer_sizes(cfg: Any, i: int) -> tuple[int, int, int]:
    """(self-attention heads, cross-attention heads, ffn_dim) of decoder layer ``i``."""
    return tuple(cfg.decoder_layout[i]) if cfg.decoder_layout else (cfg.heads, cfg.heads, cfg.ffn_dim)  # type: ignore[return-value]


def preset(name: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """The :data:`PRESETS` entry ``name`` for a vocabulary, with any field overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}' (known: {', '.join(PRESETS)})")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for key in overrides:
        if key not in fields:
            raise ConfigError(f"preset '{name}': unknown ModelConfig field '{key}'")
    try:
        return ModelConfig(**{**PRESETS[name], "vocab_size": vocab_size, **overrides})
    except ValueError as e:
        raise ConfigError(f"preset '{name}': {e}") from e
