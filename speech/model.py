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

The architecture is :class:`speech.model_config.ModelConfig`; the losses are in
:mod:`speech.losses`; model directories (config.json + model.safetensors, no pickle) are
written and read by :mod:`speech.checkpoint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speech.config import ConfigError
from speech.model_config import ModelConfig, decoder_layer_sizes, encoder_layer_sizes, head_dim


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


def param_count(model: nn.Module) -> int:
    """Trainable and frozen parameters, a tied weight counted once."""
    return sum(p.numel() for p in model.parameters())
