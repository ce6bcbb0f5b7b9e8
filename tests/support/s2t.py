"""Tiny random S2T models and padded features, for the decoding and ONNX tests."""

import torch

from speech.model import S2TModel
from speech.model_config import preset

VOCAB = 30
N_MELS = 16


def tiny_model(seed: int = 0, **overrides) -> S2TModel:
    # untied output embeddings: a random tied model mostly repeats its input token
    torch.manual_seed(seed)
    overrides.setdefault("share_decoder_input_output_embed", False)
    return S2TModel(preset("tiny", VOCAB, n_mels=N_MELS, **overrides)).eval()


def features(lens, seed: int = 1):
    """(B, max(lens), N_MELS) random features, zero past each length, and the lengths."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lens), max(lens), N_MELS, generator=g)
    for b, n in enumerate(lens):
        x[b, n:] = 0.0
    return x, torch.tensor(lens)
