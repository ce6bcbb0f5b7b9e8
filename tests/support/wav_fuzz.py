"""Broken audio files as a hostile user makes them: mutations of real WAVs.

Used by the fuzz test (tests/speech/test_audio_fuzz.py) and its benchmark
(benchmarks/bench_fuzz_audio.py). Each mutation is named, so a failure says what broke:

    for name, data in mutations(base_wavs(), n=100, seed=0):
        path.write_bytes(data)
"""

from __future__ import annotations

import io
import struct
from typing import Iterator

import numpy as np
import soundfile as sf

# the fields of a canonical 44-byte WAV header: (offset, struct format)
FIELDS = {"riff_size": (4, "<I"), "fmt_size": (16, "<I"), "format": (20, "<H"), "channels": (22, "<H"),
          "rate": (24, "<I"), "byte_rate": (28, "<I"), "block_align": (32, "<H"), "bits": (34, "<H"),
          "data_size": (40, "<I")}
EDGE_VALUES = [0, 1, 2, 7, 100, 999, 1000, 8000, 44100, 384000, 384001, 2**15, 2**16 - 1, 2**31 - 1, 2**32 - 1]


def _wav(samples: np.ndarray, sr: int, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, subtype=subtype, format="WAV")
    return buf.getvalue()


def base_wavs(seconds: float = 0.5) -> list[bytes]:
    """Whole, valid WAVs of a few kinds (a voiced chirp with noise): PCM 16 mono 16 kHz,
    PCM 24 stereo 44.1 kHz, float 32 mono 16 kHz, unsigned 8-bit mono 8 kHz."""
    out = []
    for sr, channels, subtype in ((16000, 1, "PCM_16"), (44100, 2, "PCM_24"), (16000, 1, "FLOAT"),
                                  (8000, 1, "PCM_U8")):
        t = np.arange(int(seconds * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * (150 + 300 * t) * t) + 0.01 * np.random.default_rng(0).standard_normal(len(t))
        x = np.repeat(x[:, None], channels, axis=1) if channels > 1 else x
        out.append(_wav(x.astype(np.float32), sr, subtype))
    return out


def _set(data: bytearray, field: str, value: int) -> None:
    off, fmt = FIELDS[field]
    if off + struct.calcsize(fmt) <= len(data):
        struct.pack_into(fmt, data, off, value % (256 ** struct.calcsize(fmt)))


def mutate(base: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One mutation of ``base`` (a canonical WAV): (what was done, the bytes)."""
    data = bytearray(base)
    kind = rng.choice(["field", "field", "truncate", "flip_header", "flip_data", "garbage", "nan_float",
                       "huge_float", "chunk", "append", "empty_data", "zeros"])
    if kind == "field":
        field = str(rng.choice(list(FIELDS)))
        value = int(rng.choice(EDGE_VALUES)) if rng.random() < 0.7 else int(rng.integers(0, 2**32))
        _set(data, field, value)
        return f"{field}={value}", bytes(data)
    if kind == "truncate":
        n = int(rng.integers(0, len(data)))
        return f"truncate@{n}", bytes(data[:n])
    if kind in ("flip_header", "flip_data"):
        lo, hi = (0, 44) if kind == "flip_header" else (44, len(data))
        k = int(rng.integers(1, 9))
        for i in rng.integers(lo, hi, size=k):
            data[int(i)] ^= 1 << int(rng.integers(0, 8))
        return f"{kind}x{k}", bytes(data)
    if kind == "garbage":
        n = int(rng.integers(1, 4096))
        head = b"RIFF" + struct.pack("<I", n) + b"WAVE" if rng.random() < 0.5 else b""
        return f"garbage{n}", head + rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
    if kind in ("nan_float", "huge_float"):
        x = rng.standard_normal(int(rng.integers(100, 8000))).astype(np.float32) * 0.1
        bad = np.nan if kind == "nan_float" else float(rng.choice([np.inf, -np.inf, 1e30, 3e38]))
        x[rng.integers(0, len(x), size=int(rng.integers(1, 10)))] = bad
        return kind, _wav(x, 16000, "FLOAT")
    if kind == "chunk":  # an extra chunk before the data, its size lying
        size = int(rng.choice([0, 1, 3, 2**31, 2**32 - 1, len(data)]))
        chunk = b"LIST" + struct.pack("<I", size) + b"INFOxxxx"
        return f"chunk{size}", bytes(data[:36] + chunk + data[36:])
    if kind == "append":
        n = int(rng.integers(1, 2000))
        return f"append{n}", bytes(data) + rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
    if kind == "empty_data":
        _set(data, "data_size", 0)
        return "header_only", bytes(data[:44])
    n = int(rng.integers(1, 4000))  # digital silence, or a very short file
    return f"zeros{n}", _wav(np.zeros(n, dtype=np.float32), 16000, "PCM_16")


def mutations(bases: list[bytes], n: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``n`` mutated files from ``bases`` in turn; the same for a seed."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        name, data = mutate(bases[i % len(bases)], rng)
        yield f"{i:04d}-{name}", data
