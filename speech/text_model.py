"""A text encoder-decoder: speech's Transformer blocks over a token source.

    src_tokens (B, S) --TextEncoder--> enc_out (B, S, D)
    prev_tokens (B, U) + enc_out --speech.model.TextDecoder--> logits (B, U, V)

Two recipes train it: the zh->en simultaneous translator (:mod:`simul.model` holds its
presets; the source unit there is one Chinese character) and the text pretraining of the
speech translator's decoder (:mod:`speech.text_pretrain`: English pieces in, any target
language out, the decoder then copied into an :class:`speech.model.S2TModel`).

:class:`MTModel` has the interface of :class:`speech.model.S2TModel` that decoding uses
(``cfg``, ``encode``, ``decoder``), so :mod:`speech.decode`'s greedy and beam search and
its ensembles run it unchanged. With ``causal_encoder`` each source position sees only the
positions before it, so the states of a prefix do not change as the stream grows: the
encoder of a prefix-to-prefix (wait-k) model, trained with ``source_limit``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from speech.config import ConfigError
from speech.checkpoint import load_model_dir
from speech.model import EncoderLayer, TextDecoder, _check_length, additive_mask, lengths_to_padding_mask, sinusoids
from speech.model_config import BOS_ID, EOS_ID, PAD_ID, check_layout


@dataclass
class MTConfig:
    """The architecture (field names shared with speech.model_config.ModelConfig where they mean the same)."""

    src_vocab_size: int = 0  # 0 = not set yet: a recipe takes it from the tokenizers
    vocab_size: int = 0
    d_model: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 3
    heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    max_source_positions: int = 1024
    max_target_positions: int = 512
    share_decoder_input_output_embed: bool = True
    causal_encoder: bool = False  # unidirectional: a prefix-to-prefix (wait-k) model
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    # per-layer sizes of a pruned model, as in speech.model_config.ModelConfig; empty/0 = uniform
    head_dim: int = 0
    encoder_layout: list[list[int]] = field(default_factory=list)
    decoder_layout: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("d_model", "encoder_layers", "decoder_layers", "heads", "ffn_dim",
                     "max_source_positions", "max_target_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be at least 1, got {getattr(self, name)}")
        check_layout(self)
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"'{name}' must be in [0, 1), got {getattr(self, name)}")


class TextEncoder(nn.Module):
    def __init__(self, cfg: MTConfig):
        super().__init__()
        self.max_source_positions = cfg.max_source_positions
        self.causal = cfg.causal_encoder
        self.embed_tokens = nn.Embedding(cfg.src_vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=cfg.d_model**-0.5)
        nn.init.zeros_(self.embed_tokens.weight[cfg.pad_id])
        self.embed_scale = math.sqrt(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg, i) for i in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """tokens (B, S), lengths (B,) -> enc_out (B, S, D) (zero at padding), lengths (B,),
        enc_mask (B, S) True at padding"""
        _check_length(tokens.shape[1], self.max_source_positions, "source tokens")
        s = tokens.shape[1]
        mask = lengths_to_padding_mask(lengths, s)
        pos = torch.arange(s, device=tokens.device)
        x = self.embed_scale * self.embed_tokens(tokens) + sinusoids(pos, self.embed_tokens.embedding_dim).to(
            self.embed_tokens.weight.dtype)
        x = self.dropout(x)
        attn_mask = ~mask[:, None, None, :]
        if self.causal:
            attn_mask = attn_mask & (pos[None, :] <= pos[:, None])[None, None]
        attn_mask = additive_mask(attn_mask, x.dtype)  # each row may attend to its first token at least
        for layer in self.layers:
            x = layer(x, attn_mask)
        x = self.layer_norm(x).masked_fill(mask[..., None], 0.0)
        return x, lengths, mask


class MTModel(nn.Module):
    """Text-to-text: a TextEncoder and speech's TextDecoder."""

    def __init__(self, cfg: MTConfig):
        super().__init__()
        special = max(cfg.pad_id, cfg.bos_id, cfg.eos_id)
        if min(cfg.vocab_size, cfg.src_vocab_size) <= special:
            raise ConfigError(f"MTConfig: 'vocab_size' ({cfg.vocab_size}) and 'src_vocab_size' "
                              f"({cfg.src_vocab_size}) must be set above the special ids")
        self.cfg = cfg
        self.encoder = TextEncoder(cfg)
        self.decoder = TextDecoder(cfg)

    def encode(self, src_tokens: Tensor, src_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encoder(src_tokens, src_lens)

    def forward(self, src_tokens: Tensor, src_lens: Tensor, prev_tokens: Tensor,
                source_limit: Tensor | None = None) -> dict[str, Tensor]:
        """src_tokens (B, S), src_lens (B,), prev_tokens (B, U), source_limit (U,) or None
        -> {"logits": (B, U, V)}"""
        enc_out, _, enc_mask = self.encode(src_tokens, src_lens)
        return {"logits": self.decoder(prev_tokens, enc_out, enc_mask, source_limit=source_limit)}


def text_batch(sources: list[list[int]], targets: list[list[int]]) -> dict[str, Tensor]:
    """Padded training tensors for :class:`MTModel`: ``src`` (B, S), ``src_lens`` (B,), and
    from each target sequence ``[start, pieces..., eos]`` the decoder input ``prev`` (all
    but the last) and ``target`` (all but the first), each (B, U), padded with PAD_ID."""
    s_len = max(len(x) for x in sources)
    u = max(len(t) for t in targets) - 1
    src = torch.full((len(sources), s_len), PAD_ID, dtype=torch.long)
    prev = torch.full((len(sources), u), PAD_ID, dtype=torch.long)
    tgt = torch.full((len(sources), u), PAD_ID, dtype=torch.long)
    for b, (x, t) in enumerate(zip(sources, targets)):
        src[b, : len(x)] = torch.tensor(x)
        prev[b, : len(t) - 1] = torch.tensor(t[:-1])
        tgt[b, : len(t) - 1] = torch.tensor(t[1:])
    lens = torch.tensor([len(x) for x in sources], dtype=torch.long)
    return {"src": src, "src_lens": lens, "prev": prev, "target": tgt}


def load_mt_model(path: str | Path, dtype: torch.dtype | None = None) -> tuple[MTModel, dict[str, Any]]:
    """A model directory of this family -> (model in eval mode, config.json)."""
    return load_model_dir(path, dtype=dtype, config_cls=MTConfig, model_cls=MTModel)
