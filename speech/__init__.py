"""speech: audio I/O and features, tokenizers, Transformer blocks, ASR/ST models, data."""
