"""The CNN+Transformer speech-to-text model (fairseq's S2T Transformer), in one file.

    features (B, T, n_mels) --Conv1dSubsampler--> (B, T/4, D) --AudioEncoder layers--> enc_out
    prev_tokens (B, U) + enc_out --TextDecoder--> logits (B, U, V)
    enc_out --ctc_head--> ctc_logits (B, T/4, V)          (when ``ModelConfig.ctc``)

The blocks stack visibly: :class:`MultiHeadAttention` -> :class:`EncoderLayer` /
:class:`DecoderLayer` -> :class:`AudioEncoder` / :class:`TextDecoder` -> :class:`S2TModel`.
Both stacks are pre-LayerNorm with a final LayerNorm (fairseq's ``--*-normalize-before``),
ReLU feed-forward blocks, sinusoidal positions (no parameters) and embeddings scaled by
sqrt(d_model), as in fairseq's ``s2t_transformer``. Two deliberate differences:

- The subsampler zeroes padded frames before each convolution, so a padded utterance
  gives the same encoder output as the utterance alone (fairseq lets padding leak into
  the last frames through the convolution windows).
- Positions count from 0 (fairseq starts them at ``padding_idx + 1``).

Token ids (the same as :mod:`speech.tokenizer`): pad 0, unk 1, bos 2, eos 3. The CTC blank
is the pad id: pad never occurs inside a CTC target, so it needs no vocabulary entry of
its own. The decoder's first input token is the start token (the target-language tag,
or bos for a model without tags); the targets are the inputs shifted left, ending in eos.

Masks: ``enc_mask`` is (B, T') bool, **True at padding frames** (fairseq's and
nn.Transformer's key-padding convention). Inside attention it becomes an ``attn_mask``
as ``scaled_dot_product_attention`` takes it: boolean with True = may attend, or (the
encoders, and the exported decoder step) the same mask as an additive float bias,
0 or -inf (:func:`additive_mask`: cheaper once exported); all masks are built from
``torch.arange`` so they export with dynamic batch and length.

A model directory holds ``config.json`` (``{"model": ModelConfig fields, ...extra}``) and
``model.safetensors``; :func:`save_model_dir` and :func:`load_model_dir` write and read it
without pickle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from speech.config import ConfigError, config_to_dict
from speech.data.cache import atomic_dir, atomic_path

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3  # speech.tokenizer's fixed ids

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A model.safetensors does not fit its config; the message names the file and tensor."""


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


def layout_of(model: nn.Module) -> dict[str, Any]:
    """The size fields of a model's config read off its modules (after structured pruning):
    ``encoder_layers``, ``decoder_layers``, ``head_dim``, ``encoder_layout``, ``decoder_layout``,
    and ``conv_channels`` where the encoder has a :class:`Conv1dSubsampler`.
    Works for every model whose ``encoder.layers`` / ``decoder.layers`` are this file's layers."""
    enc, dec = list(model.encoder.layers), list(model.decoder.layers)
    sizes: dict[str, Any] = {}
    subsample = getattr(model.encoder, "subsample", None)
    if isinstance(subsample, Conv1dSubsampler) and len(subsample.conv_layers) > 1:
        inner = {conv.out_channels for conv in list(subsample.conv_layers)[:-1]}
        if len(inner) > 1:
            raise ValueError(f"layout_of: the subsampler's inner convs differ in size ({sorted(inner)})")
        sizes["conv_channels"] = inner.pop()
    dims = {layer.self_attn.head_dim for layer in enc} | {m.head_dim for layer in dec
                                                          for m in (layer.self_attn, layer.encoder_attn)}
    if len(dims) > 1:
        raise ValueError(f"layout_of: attention head sizes differ between layers ({sorted(dims)})")
    return {
        "encoder_layers": len(enc),
        "decoder_layers": len(dec),
        "head_dim": dims.pop() if dims else 0,
        "encoder_layout": [[layer.self_attn.heads, layer.ffn.fc1.out_features] for layer in enc],
        "decoder_layout": [[layer.self_attn.heads, layer.encoder_attn.heads, layer.ffn.fc1.out_features]
                           for layer in dec],
        **sizes,
    }


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


def param_count(model: nn.Module) -> int:
    """Trainable and frozen parameters, a tied weight counted once."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- blocks


def sinusoids(positions: Tensor, dim: int) -> Tensor:
    """fairseq's sinusoidal positions: sin in the first half, cos in the second.

    positions (...,) integer -> (..., dim) float32
    """
    half = dim // 2
    step = math.log(10000.0) / max(half - 1, 1)
    inv_freq = torch.exp(torch.arange(half, dtype=torch.float32, device=positions.device) * -step)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def lengths_to_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """lengths (B,) -> (B, max_len) bool, True at padding."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean attention mask (True = may attend) as the float bias that attention adds
    to its scores: 0 where allowed, -inf elsewhere. The same arithmetic as the boolean mask
    in torch; exported to ONNX, though, a boolean mask costs every attention two Where and
    an IsNaN over its (B, H, T, S) scores (the exporter's guard against rows that may
    attend nowhere), 14% of an int8 encoder's time; a float one is one Add. Only for masks
    in which every row may attend somewhere (a row that may not would give NaN)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def _check_length(length: int, limit: int, what: str) -> None:
    # Shape checks in Python would become guards on the dynamic axes during export.
    if not torch.compiler.is_compiling() and length > limit:
        raise ValueError(f"{what}: {length} is longer than the model's limit of {limit}")


class Conv1dSubsampler(nn.Module):
    """Strided Conv1d + GLU layers: 2x fewer frames per layer.

    features (B, T, in_channels), lengths (B,) -> (B, T', out_channels), lengths' (B,)
    with T' = floor((T - 1) / 2) + 1 per layer (kernel k, stride 2, padding k // 2).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_sizes: list[int]):
        super().__init__()
        n = len(kernel_sizes)
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(
                in_channels if i == 0 else mid_channels // 2,
                mid_channels if i < n - 1 else out_channels * 2,
                k,
                stride=2,
                padding=k // 2,
            )
            for i, k in enumerate(kernel_sizes)
        )

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for _ in self.conv_layers:
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        return lengths

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = x.transpose(1, 2)  # (B, C, T)
        for conv in self.conv_layers:
            # zero the padding so it reads like the conv's own zero padding
            x = x.masked_fill(lengths_to_padding_mask(lengths, x.shape[-1])[:, None, :], 0.0)
            x = F.glu(conv(x), dim=1)
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        return x.transpose(1, 2), lengths


class GeluConvFrontEnd(nn.Module):
    """Whisper's front end: Conv1d + GELU layers, the first of stride 1, the others of stride 2.

    features (B, T, in_channels), lengths (B,) -> (B, T', channels), lengths' (B,)
    with T' = floor((T - 1) / 2) + 1 per stride-2 layer (kernel k, padding k // 2). Padded
    frames are zeroed before each conv, as in :class:`Conv1dSubsampler`.
    """

    def __init__(self, in_channels: int, channels: int, kernel_sizes: list[int]):
        super().__init__()
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(in_channels if i == 0 else channels, channels, k, stride=1 if i == 0 else 2, padding=k // 2)
            for i, k in enumerate(kernel_sizes)
        )

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for conv in list(self.conv_layers)[1:]:
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        return lengths

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = x.transpose(1, 2)  # (B, C, T)
        for conv in self.conv_layers:
            x = x.masked_fill(lengths_to_padding_mask(lengths, x.shape[-1])[:, None, :], 0.0)
            x = F.gelu(conv(x))
            if conv.stride[0] == 2:
                lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        return x.transpose(1, 2), lengths


class MultiHeadAttention(nn.Module):
    """Attention with separate q/k/v/out projections, computed by scaled_dot_product_attention.

    ``heads`` and ``head_dim`` are attributes, read at run time: a module whose projections
    were sliced to fewer heads (rows of q/k/v, columns of out) keeps working once
    ``heads`` is updated.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, head_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim or d_model // heads
        self.dropout = dropout
        inner = heads * self.head_dim
        self.q_proj = nn.Linear(d_model, inner)
        self.k_proj = nn.Linear(d_model, inner)
        self.v_proj = nn.Linear(d_model, inner)
        self.out_proj = nn.Linear(inner, d_model)
        # fairseq's initialisation
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, H, T, hd)

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """source (B, S, D) -> keys, values, each (B, H, S, head_dim): what a cache holds."""
        return self._split(self.k_proj(source)), self._split(self.v_proj(source))

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, Tq, D), k/v (B, H, S, head_dim), mask broadcastable to (B, H, Tq, S): bool,
        True = may attend, or an additive float one (:func:`additive_mask`) -> (B, Tq, D)"""
        q = self._split(self.q_proj(x))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def attend_keys_transposed(self, x: Tensor, k_t: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """:meth:`forward` (without dropout) with the keys given transposed, k_t (B, H,
        head_dim, S): the exported decoder holds the encoder's keys this way, so that each
        step multiplies by them instead of transposing them again (a quarter of its time)."""
        q = self._split(self.q_proj(x)) * self.head_dim ** -0.5
        scores = q @ k_t  # (B, H, Tq, S)
        if mask is not None:  # boolean (True = may attend) or an additive float one
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        out = scores.softmax(-1) @ v
        return self.out_proj(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, activation_dropout: float, activation: str = "relu"):
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.activation = F.gelu if activation == "gelu" else F.relu

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(self.activation(self.fc1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int = 0):
        super().__init__()
        heads, ffn_dim = encoder_layer_sizes(cfg, index)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, heads, cfg.attention_dropout, head_dim(cfg))
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, ffn_dim, cfg.activation_dropout, getattr(cfg, "activation", "relu"))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        h = self.self_attn_layer_norm(x)
        x = x + self.dropout(self.self_attn(h, *self.self_attn.keys_values(h), attn_mask))
        return x + self.dropout(self.ffn(self.final_layer_norm(x)))


@dataclass
class LayerCache:
    """One decoder layer's keys and values, each (B, H, S, head_dim)."""

    self_k: Tensor | None = None  # grows by one step per decoded token
    self_v: Tensor | None = None
    cross_k: Tensor | None = None  # computed once per source
    cross_v: Tensor | None = None
    cross_k_transposed: bool = False  # cross_k, given, is (B, H, head_dim, S) (the ONNX decoder graph)


class DecoderCache:
    """The state of incremental decoding: :meth:`TextDecoder.new_cache` makes an empty one."""

    def __init__(self, n_layers: int):
        self.layers = [LayerCache() for _ in range(n_layers)]

    def __len__(self) -> int:
        """How many target tokens are cached."""
        k = self.layers[0].self_k if self.layers else None
        return 0 if k is None else k.shape[2]

    def reorder(self, index: Tensor, cross: bool = True) -> None:
        """Keep batch rows ``index`` (B',) in this order, e.g. the surviving beams.
        ``cross=False`` leaves the cross-attention keys and values as they are: the caller
        knows row i and row ``index[i]`` attend to the same source (beams of one utterance)."""
        names = ("self_k", "self_v", "cross_k", "cross_v") if cross else ("self_k", "self_v")
        for layer in self.layers:
            for name in names:
                t = getattr(layer, name)
                if t is not None:
                    setattr(layer, name, t.index_select(0, index))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int = 0):
        super().__init__()
        self_heads, cross_heads, ffn_dim = decoder_layer_sizes(cfg, index)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, self_heads, cfg.attention_dropout, head_dim(cfg))
        self.encoder_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.encoder_attn = MultiHeadAttention(cfg.d_model, cross_heads, cfg.attention_dropout, head_dim(cfg))
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, ffn_dim, cfg.activation_dropout, getattr(cfg, "activation", "relu"))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, enc_out: Tensor, self_mask: Tensor | None, cross_mask: Tensor | None,
                cache: LayerCache | None = None) -> Tensor:
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.keys_values(h)
        if cache is not None:
            if cache.self_k is not None:
                k, v = torch.cat([cache.self_k, k], dim=2), torch.cat([cache.self_v, v], dim=2)
            cache.self_k, cache.self_v = k, v
        x = x + self.dropout(self.self_attn(h, k, v, self_mask))

        h = self.encoder_attn_layer_norm(x)
        if cache is not None and cache.cross_k is not None:
            k, v = cache.cross_k, cache.cross_v
        else:
            k, v = self.encoder_attn.keys_values(enc_out)
            if cache is not None:
                cache.cross_k, cache.cross_v = k, v
        attend = self.encoder_attn.attend_keys_transposed if cache is not None and cache.cross_k_transposed \
            else self.encoder_attn
        x = x + self.dropout(attend(h, k, v, cross_mask))
        return x + self.dropout(self.ffn(self.final_layer_norm(x)))


class AudioEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_source_positions = cfg.max_source_positions
        if cfg.frontend == "gelu":
            if cfg.conv_channels != cfg.d_model:
                raise ConfigError(f"ModelConfig: the gelu front end's 'conv_channels' ({cfg.conv_channels}) "
                                  f"must equal 'd_model' ({cfg.d_model})")
            self.subsample: nn.Module = GeluConvFrontEnd(cfg.n_mels, cfg.d_model, cfg.conv_kernel_sizes)
        else:
            self.subsample = Conv1dSubsampler(cfg.n_mels, cfg.conv_channels, cfg.d_model, cfg.conv_kernel_sizes)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg, i) for i in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, features: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """features (B, T, n_mels), feat_lens (B,)
        -> enc_out (B, T', D) (zero at padding), enc_lens (B,), enc_mask (B, T') True at padding"""
        _check_length(features.shape[1], self.max_source_positions, "input frames")
        x, lens = self.subsample(features, feat_lens)
        mask = lengths_to_padding_mask(lens, x.shape[1])
        x = self.embed_scale * x + sinusoids(torch.arange(x.shape[1], device=x.device), x.shape[-1]).to(x.dtype)
        x = self.dropout(x)
        attn_mask = additive_mask(~mask[:, None, None, :], x.dtype)  # every length >= 1: no row is all padding
        for layer in self.layers:
            x = layer(x, attn_mask)
        x = self.layer_norm(x).masked_fill(mask[..., None], 0.0)
        return x, lens, mask


class TextDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_target_positions = cfg.max_target_positions
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=cfg.d_model**-0.5)
        nn.init.zeros_(self.embed_tokens.weight[cfg.pad_id])
        # simul's MTConfig has neither field: its decoders are fairseq's (scaled, sinusoidal)
        self.embed_scale = math.sqrt(cfg.d_model) if getattr(cfg, "scale_embedding", True) else 1.0
        self.embed_positions = (nn.Embedding(cfg.max_target_positions, cfg.d_model)
                                if getattr(cfg, "decoder_positions", "sinusoidal") == "learned" else None)
        if self.embed_positions is not None:
            nn.init.normal_(self.embed_positions.weight, mean=0.0, std=0.01)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model)
        self.output_projection = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.share_decoder_input_output_embed:
            self.output_projection.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=cfg.d_model**-0.5)

    def new_cache(self) -> DecoderCache:
        return DecoderCache(len(self.layers))

    def embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens (B, N), positions (N,) -> the layers' input (B, N, D): scaled token
        embeddings plus sinusoidal or learned positions."""
        emb = self.embed_scale * self.embed_tokens(tokens)
        if self.embed_positions is not None:
            return emb + self.embed_positions(positions)
        return emb + sinusoids(positions, self.embed_tokens.embedding_dim).to(emb.dtype)

    def forward(self, tokens: Tensor, enc_out: Tensor, enc_mask: Tensor | None,
                cache: DecoderCache | None = None, source_limit: Tensor | None = None) -> Tensor:
        """tokens (B, U) all tokens so far, enc_out (B, S, D), enc_mask (B, S) True at padding
        or None -> logits (B, N, V) for the N tokens not yet in ``cache``.

        Without a cache, N = U (teacher forcing: causal self-attention over the whole
        prefix). With one, only the tokens past ``len(cache)`` are run (normally the last
        one) and their keys/values are appended; the cross-attention keys/values are
        computed on the first call and reused.

        ``source_limit`` (N,) long: query ``i`` sees only the first ``source_limit[i]``
        source positions (prefix-to-prefix training of wait-k models); None: all of them.
        """
        start = len(cache) if cache is not None else 0
        total = tokens.shape[1]
        if not torch.compiler.is_compiling() and total <= start:
            raise ValueError(f"decoder: {total} tokens given but {start} are already cached")
        _check_length(total, self.max_target_positions, "target tokens")
        new = tokens[:, start:]
        q_pos = torch.arange(start, total, device=tokens.device)
        x = self.dropout(self.embed(new, q_pos))
        # token i may attend to every position up to its own (cached ones included)
        self_mask = torch.arange(total, device=tokens.device)[None, :] <= q_pos[:, None]  # (N, U)
        cross_mask = None if enc_mask is None else ~enc_mask[:, None, None, :]
        if source_limit is not None:
            seen = torch.arange(enc_out.shape[1], device=tokens.device)[None, :] < source_limit[:, None]  # (N, S)
            cross_mask = seen[None, None] if cross_mask is None else cross_mask & seen[None, None]
        for i, layer in enumerate(self.layers):
            x = layer(x, enc_out, self_mask, cross_mask, None if cache is None else cache.layers[i])
        return self.output_projection(self.layer_norm(x))


class S2TModel(nn.Module):
    """Speech-to-text: an AudioEncoder, a TextDecoder and an optional CTC head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        special = max(cfg.pad_id, cfg.bos_id, cfg.eos_id, cfg.blank_id)
        if cfg.vocab_size <= special:
            raise ConfigError(f"ModelConfig: 'vocab_size' ({cfg.vocab_size}) must be set above the "
                              f"special ids (largest: {special})")
        self.cfg = cfg
        self.encoder = AudioEncoder(cfg)
        self.decoder = TextDecoder(cfg)
        self.ctc_head = nn.Linear(cfg.d_model, cfg.vocab_size) if cfg.ctc else None

    def encode(self, features: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """features (B, T, n_mels), feat_lens (B,)
        -> enc_out (B, T', D), enc_lens (B,), enc_mask (B, T') bool True at padding"""
        return self.encoder(features, feat_lens)

    def forward(self, features: Tensor, feat_lens: Tensor, prev_tokens: Tensor) -> dict[str, Tensor | None]:
        """features (B, T, n_mels), feat_lens (B,), prev_tokens (B, U)
        -> {"logits": (B, U, V), "ctc_logits": (B, T', V) or None, "enc_lens": (B,)}"""
        enc_out, enc_lens, enc_mask = self.encode(features, feat_lens)
        logits = self.decoder(prev_tokens, enc_out, enc_mask)
        ctc_logits = self.ctc_head(enc_out) if self.ctc_head is not None else None
        return {"logits": logits, "ctc_logits": ctc_logits, "enc_lens": enc_lens}


# --------------------------------------------------------------------------- losses


def label_smoothed_nll_loss(logits: Tensor, target: Tensor, epsilon: float = 0.1,
                            ignore_index: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """fairseq's label-smoothed cross entropy, summed over the non-pad targets.

    logits (B, U, V), target (B, U) -> (loss, nll_loss), both scalar sums in float32;
    divide by the number of target tokens for a per-token loss.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)
    target = target.unsqueeze(-1)
    nll = -lprobs.gather(-1, target).squeeze(-1)
    smooth = -lprobs.sum(-1)
    keep = target.squeeze(-1) != ignore_index
    nll = nll.masked_fill(~keep, 0.0).sum()
    smooth = smooth.masked_fill(~keep, 0.0).sum()
    eps_i = epsilon / (lprobs.shape[-1] - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return loss, nll


def ctc_loss(ctc_logits: Tensor, enc_lens: Tensor, targets: Tensor, target_lens: Tensor,
             blank: int = PAD_ID) -> Tensor:
    """CTC summed over the batch. ctc_logits (B, T', V), enc_lens (B,), targets (B, S)
    padded, target_lens (B,) -> scalar float32. Impossible alignments count as 0."""
    lprobs = F.log_softmax(ctc_logits.float(), dim=-1).transpose(0, 1)  # (T', B, V)
    return F.ctc_loss(lprobs, targets, enc_lens, target_lens, blank=blank, reduction="sum",
                      zero_infinity=True)


# --------------------------------------------------------------------------- model directories


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def _saved_names(state: dict[str, Tensor]) -> list[str]:
    """State-dict names without the aliases of an earlier tensor (the tied output projection)."""
    seen: set[tuple] = set()
    names = []
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if key in seen:
            continue
        seen.add(key)
        names.append(name)
    return names


def model_device(model: object) -> torch.device:
    """Where a model takes its inputs: its parameters' device; the CPU for a model without
    any (an ONNX Runtime model, say)."""
    if isinstance(model, nn.Module):
        param = next(model.parameters(), None)
        if param is not None:
            return param.device
    return torch.device("cpu")


def save_model_dir(model: nn.Module, cfg: Any, path: str | Path, extra: dict[str, Any] | None = None,
                   dtype: torch.dtype | None = None) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.json`` = {"model": cfg, **extra}.

    ``extra`` holds what else a model directory records (languages, feature settings,
    the recipe). ``dtype`` (e.g. torch.float16) converts the floating tensors for storage.
    A tied weight is stored once. Each file is written to a temporary name, then renamed.
    """
    path = Path(path)
    extra = dict(extra or {})
    if "model" in extra:
        raise ValueError("save_model_dir: 'model' is reserved in config.json for the ModelConfig")
    path.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    tensors = {}
    for name in _saved_names(state):
        t = state[name].detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    config = {"model": config_to_dict(cfg), **extra}
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(path / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    return isinstance(value, tp)


def model_config_from_dict(data: Any, where: str, config_cls: type = ModelConfig) -> Any:
    """A ``config_cls`` (a ModelConfig by default) from a config.json's "model" mapping;
    every field must be present."""
    name = config_cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: 'model' must be a mapping of {name} fields")
    hints = typing.get_type_hints(config_cls)
    fields = [f.name for f in dataclasses.fields(config_cls)]
    for key in data:
        if key not in hints:
            raise ConfigError(f"{where}: unknown key 'model.{key}' (known keys: {', '.join(fields)})")
    for key in fields:
        if key not in data:
            if key in OPTIONAL_FIELDS:
                continue
            raise ConfigError(f"{where}: missing key 'model.{key}'")
        if not _type_ok(data[key], hints[key]):
            raise ConfigError(f"{where}: 'model.{key}' must be {hints[key]}, got {data[key]!r}")
    kwargs = {k: float(v) if hints[k] is float else v for k, v in data.items()}
    try:
        return config_cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{where}: {name}: {e}") from e


def load_weights(model: nn.Module, weights_path: Path, error: type[Exception] = CheckpointError) -> None:
    """Fill ``model`` strictly from a safetensors file: every tensor of its state dict
    (a tied weight once) with its shape and kind (floating or not), and nothing else.
    Raises ``error`` naming the file and the tensor. Nothing is unpickled."""
    if not weights_path.is_file():
        raise error(f"{weights_path}: not found")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise error(f"{weights_path}: cannot read ({e})") from e
    fill_weights(model, tensors, str(weights_path), error)


def fill_weights(model: nn.Module, tensors: dict[str, Tensor], where: str,
                 error: type[Exception] = CheckpointError) -> None:
    """Copy ``tensors`` into ``model`` strictly (see :func:`load_weights`); errors name ``where``."""
    state = model.state_dict()
    expected = _saved_names(state)
    for name in expected:
        if name not in tensors:
            raise error(f"{where}: missing tensor '{name}'")
        got, want = tensors[name], state[name]
        if tuple(got.shape) != tuple(want.shape) or got.is_floating_point() != want.is_floating_point():
            raise error(f"{where}: tensor '{name}' has shape {tuple(got.shape)} ({got.dtype}), "
                        f"the config wants {tuple(want.shape)} ({want.dtype})")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise error(f"{where}: unexpected tensor '{unexpected[0]}'"
                    + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    with torch.no_grad():
        for name in expected:
            state[name].copy_(tensors[name])  # state-dict tensors share storage with the parameters


def model_dir_hash(model_dir: str | Path) -> str:
    """sha256 of a model directory's config.json and weight files (model.safetensors, or an
    overlay's): what an export, or a teacher's cached translations, depends on."""
    from speech.overlay import weight_files  # noqa: PLC0415 - overlays build on this module

    h = hashlib.sha256()
    config = json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    for path in [Path(model_dir) / CONFIG_FILE, *weight_files(Path(model_dir), config)]:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def load_model_dir(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                   config_cls: type = ModelConfig, model_cls: type = S2TModel) -> tuple[Any, dict[str, Any]]:
    """Read a model directory -> (model in eval mode, the whole config.json as a dict).

    The weights load strictly; fp16 storage is upcast to ``dtype`` (float32 by default).
    ``config_cls`` and ``model_cls`` say which family the directory holds (S2T by default).
    """
    path = Path(path)
    config_path = path / CONFIG_FILE
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: not found (is {path} a model directory?)") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(config, dict) or "model" not in config:
        raise ConfigError(f"{config_path}: missing key 'model'")
    cfg = model_config_from_dict(config["model"], str(config_path), config_cls)

    model = model_cls(cfg)
    if "base" in config:  # an overlay over a base model (speech.overlay)
        from speech.overlay import load_overlay  # noqa: PLC0415 - overlays build on this module

        load_overlay(model, path, config)
    else:
        load_weights(model, path / WEIGHTS_FILE)
    model.to(device=device, dtype=dtype or torch.float32)
    return model.eval(), config


def save_resized_model_dir(model: nn.Module, like: str | Path, out: str | Path, note: dict[str, Any],
                           files: Sequence[str], config_cls: type = ModelConfig, model_cls: type = S2TModel) -> Path:
    """Write a model whose sizes changed (structured pruning) as a model directory ``out``:
    its config read off its modules (:func:`layout_of`), the other config.json keys of the
    model directory ``like`` plus ``{"compress": note}``, and ``like``'s ``files`` (the
    tokenizers). The folder is written whole or not at all, and must load back."""
    like = Path(like)
    config = json.loads((like / CONFIG_FILE).read_text(encoding="utf-8"))
    cfg = dataclasses.replace(model.cfg, **layout_of(model))
    extra = {k: v for k, v in config.items() if k != "model"} | {"compress": note}
    with atomic_dir(out) as tmp:
        save_model_dir(model, cfg, tmp, extra=extra)
        for name in files:
            shutil.copyfile(like / name, tmp / name)
        load_model_dir(tmp, config_cls=config_cls, model_cls=model_cls)  # loads from its own config
    return Path(out)

