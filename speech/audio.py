"""Read audio files as the models hear them: mono float32 at 16 kHz.

Any format libsndfile reads (WAV, FLAC, OGG/Vorbis, Opus, MP3 with libsndfile >= 1.1,
...) at any sample rate and channel count. Channels are averaged; other rates are
resampled with soxr (``soxr_hq``). A file that cannot serve as input is an
:class:`AudioError` whose message starts with the file's path: missing, empty, not
audio, holding NaN or infinity, or digitally silent.

    audio = load_audio("question.flac")  # (samples,) float32 in [-1, 1] at 16 kHz
    audio = decode_audio(upload_bytes, "question.flac")  # the same, from memory
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4  # below this everywhere (about 3 int16 steps) a file holds no sound, only digital silence


class AudioError(ValueError):
    """An audio file cannot be used as input; the message names the file."""


def load_audio(path: str | Path) -> np.ndarray:
    """The audio of ``path``: shape (samples,), float32, mono, at 16 kHz.

    ``samples`` is ``round(frames * 16000 / sr)`` for a file of ``frames`` frames at
    ``sr`` Hz. Raises :class:`AudioError` naming the file if it is missing, empty
    (0 bytes or 0 frames), not readable as audio, holds non-finite samples, or is
    silent (every sample of the mono mix below 1e-4 in magnitude).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except OSError as e:
        raise AudioError(f"{path}: cannot read ({e.strerror or e})") from e
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    return _read(str(path), str(path))


def decode_audio(data: bytes, name: str) -> np.ndarray:
    """:func:`load_audio` of audio held in memory (an upload); ``name`` is what errors call it."""
    if not data:
        raise AudioError(f"{name}: empty file (0 bytes)")
    return _read(io.BytesIO(data), name)


def _read(source: str | io.BytesIO, name: str) -> np.ndarray:
    try:
        audio, sr = sf.read(source, dtype="float32", always_2d=True)  # (frames, channels)
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        why = str(e).replace(repr(source), name)  # libsndfile names what it opened: the name, not a BytesIO
        raise AudioError(f"{name}: not a readable audio file ({why})") from e
    if audio.shape[0] == 0:
        raise AudioError(f"{name}: no audio (0 frames)")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError(f"{name}: holds NaN or infinite samples")
    peak = float(np.abs(mono).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name}: silent (peak {peak:.1e} over {audio.shape[0] / sr:.2f} s, "
                         f"below {SILENCE_PEAK:g})")
    if sr != SAMPLE_RATE or audio.shape[1] > 1:
        log.debug("%s: %d Hz, %d channels -> %d Hz mono", name, sr, audio.shape[1], SAMPLE_RATE)
    return resample(mono, sr, SAMPLE_RATE)


def resample(audio: np.ndarray, orig_sr: float, target_sr: float = SAMPLE_RATE) -> np.ndarray:
    """``audio`` (samples,) at ``orig_sr`` resampled to ``target_sr`` with soxr (``soxr_hq``).

    Returns float32 of ``round(samples * target_sr / orig_sr)`` samples; when the rates
    are equal, ``audio`` as contiguous float32 (``audio`` itself if it already is).
    """
    if orig_sr == target_sr:
        return np.ascontiguousarray(audio, dtype=np.float32)
    n = round(len(audio) * target_sr / orig_sr)
    if n == 0 or len(audio) == 0:
        return np.zeros(n, dtype=np.float32)
    import librosa  # slow to import; only resampled audio needs it

    out = librosa.resample(np.asarray(audio, dtype=np.float32), orig_sr=orig_sr, target_sr=target_sr,
                           res_type="soxr_hq")
    out = librosa.util.fix_length(out, size=n)
    return np.ascontiguousarray(out, dtype=np.float32)
