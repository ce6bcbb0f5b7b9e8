"""A tiny random Whisper written by CTranslate2's own converter classes (not by our writer),
with a tokenizer.json made by the ``tokenizers`` library: the fixture the import is checked on.

Ids: 256 plain tokens ``t0``..``t255``, then Whisper's special tokens in Whisper's order (eot
256, sot 257, languages en 258, de 259 and fr 260, translate, transcribe, startoflm, startofprev,
nocaptions, notimestamps 266), then timestamps up to the vocabulary size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|fr|>", "<|translate|>",
            "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
EOT, SOT, EN, DE, FR, TRANSCRIBE, NO_TIMESTAMPS = 256, 257, 258, 259, 260, 262, 266
D_MODEL, FFN, HEADS, VOCAB, N_MELS = 32, 64, 4, 300, 80


def _sinusoids(n: int, channels: int) -> np.ndarray:
    inc = math.log(10000) / (channels // 2 - 1)
    t = np.arange(n)[:, None] * np.exp(-inc * np.arange(channels // 2))[None]
    return np.concatenate([np.sin(t), np.cos(t)], 1).astype(np.float32)


def write_tokenizer_json(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(256)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path))


def tiny_ct2_whisper(out: Path, seed: int = 0, layers: int = 2) -> Path:
    """Write a CTranslate2 Whisper folder (model.bin, config.json, vocabulary, tokenizer.json)."""
    from ctranslate2.specs import whisper_spec

    rng = np.random.RandomState(seed)
    spec = whisper_spec.WhisperSpec(layers, HEADS, layers, HEADS)

    def lin(s, o: int, i: int) -> None:
        s.weight = (rng.randn(o, i) * 0.2).astype(np.float32)
        s.bias = (rng.randn(o) * 0.1).astype(np.float32)

    def ln(s) -> None:
        s.gamma = (1 + 0.1 * rng.randn(D_MODEL)).astype(np.float32)
        s.beta = (0.1 * rng.randn(D_MODEL)).astype(np.float32)

    def no_key_bias(s, start: int) -> None:  # Whisper's key projections have no bias
        s.bias[start:start + D_MODEL] = 0.0

    enc = spec.encoder
    enc.conv1.weight = (rng.randn(D_MODEL, N_MELS, 3) * 0.2).astype(np.float32)
    enc.conv1.bias = (rng.randn(D_MODEL) * 0.1).astype(np.float32)
    enc.conv2.weight = (rng.randn(D_MODEL, D_MODEL, 3) * 0.2).astype(np.float32)
    enc.conv2.bias = (rng.randn(D_MODEL) * 0.1).astype(np.float32)
    enc.position_encodings.encodings = _sinusoids(1500, D_MODEL)
    ln(enc.layer_norm)
    for layer in enc.layer:
        ln(layer.self_attention.layer_norm)
        lin(layer.self_attention.linear[0], 3 * D_MODEL, D_MODEL)
        no_key_bias(layer.self_attention.linear[0], D_MODEL)
        lin(layer.self_attention.linear[1], D_MODEL, D_MODEL)
        ln(layer.ffn.layer_norm)
        lin(layer.ffn.linear_0, FFN, D_MODEL)
        lin(layer.ffn.linear_1, D_MODEL, FFN)
    dec = spec.decoder
    dec.embeddings.weight = (rng.randn(VOCAB, D_MODEL) * 0.5).astype(np.float32)
    dec.position_encodings.encodings = (rng.randn(448, D_MODEL) * 1.5).astype(np.float32)  # varied outputs
    dec.projection.weight = dec.embeddings.weight
    ln(dec.layer_norm)
    for layer in dec.layer:
        ln(layer.self_attention.layer_norm)
        lin(layer.self_attention.linear[0], 3 * D_MODEL, D_MODEL)
        no_key_bias(layer.self_attention.linear[0], D_MODEL)
        lin(layer.self_attention.linear[1], D_MODEL, D_MODEL)
        ln(layer.attention.layer_norm)
        lin(layer.attention.linear[0], D_MODEL, D_MODEL)
        lin(layer.attention.linear[1], 2 * D_MODEL, D_MODEL)
        no_key_bias(layer.attention.linear[1], 0)
        lin(layer.attention.linear[2], D_MODEL, D_MODEL)
        ln(layer.ffn.layer_norm)
        lin(layer.ffn.linear_0, FFN, D_MODEL)
        lin(layer.ffn.linear_1, D_MODEL, FFN)
    tokens = [f"t{i}" for i in range(256)] + SPECIALS
    tokens += ["<|%.2f|>" % (i * 0.02) for i in range(VOCAB - len(tokens))]
    spec.register_vocabulary(tokens)
    spec.config.suppress_ids = [1, 2]
    spec.config.suppress_ids_begin = [EOT]
    spec.config.lang_ids = [EN, DE, FR]
    spec.config.alignment_heads = [[layers - 1, 0]]
    spec.validate()
    spec.optimize(quantization="float16")
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    write_tokenizer_json(out / "tokenizer.json")
    assert json.loads((out / "config.json").read_text())["suppress_ids"] == [1, 2]
    return out
