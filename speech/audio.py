"""Read audio files as the models hear them: mono float32 at 16 kHz.

Any format libsndfile reads (WAV, FLAC, OGG/Vorbis, Opus, MP3 with libsndfile >= 1.1,
...) at any sample rate and channel count. Channels are averaged; other rates are
resampled with soxr (``soxr_hq``). A file that cannot serve as input is an
:class:`AudioError` whose message starts with the file's path: missing, empty, not
audio, holding NaN or infinity, digitally silent, or with a header sample rate outside
1 kHz .. 384 kHz (a broken header: at 1 Hz, 64 KB would "hold" hours of audio). What can
still be used but looks wrong is a warning naming the file: a WAV whose header promises
more audio than the file holds (truncated; what is there is used), audio under 0.1 s.

    audio = load_audio("question.flac")  # (samples,) float32 in [-1, 1] at 16 kHz
    audio = decode_audio(upload_bytes, "question.flac")  # the same, from memory
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import soundfile as sf

from compress.errors import UserError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4  # below this everywhere (about 3 int16 steps) a file holds no sound, only digital silence
MIN_RATE, MAX_RATE = 1_000, 384_000  # header sample rates a real recording has (Hz)
SHORT_S = 0.1  # less audio than this is a warning: too short for most of a word


class AudioError(UserError, ValueError):
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
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    return _read(str(path), str(path), head, size)


def decode_audio(data: bytes, name: str) -> np.ndarray:
    """:func:`load_audio` of audio held in memory (an upload); ``name`` is what errors call it."""
    if not data:
        raise AudioError(f"{name}: empty file (0 bytes)")
    return _read(io.BytesIO(data), name, data[:_HEAD_BYTES], len(data))


def check_rate(sr: int, name: str) -> None:
    """Raise :class:`AudioError` naming ``name`` unless ``sr`` is a sample rate a real
    recording has (1 kHz .. 384 kHz)."""
    if not MIN_RATE <= sr <= MAX_RATE:
        raise AudioError(f"{name}: its header says {sr} Hz, outside {MIN_RATE:,} .. {MAX_RATE:,} Hz "
                         "(a broken or forged header)")


def check_finite(samples: np.ndarray, name: str) -> None:
    """Raise :class:`AudioError` naming ``name`` if ``samples`` hold NaN or infinity."""
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: holds NaN or infinite samples")


_HEAD_BYTES = 1 << 16  # where a WAV's chunks before its data are looked for
_UNKNOWN_LENGTH = (0, 0xFFFFFFFF)  # what streaming writers put in a data chunk's size


def wav_shortfall(head: bytes, size: int) -> tuple[int, int] | None:
    """(bytes the data chunk's header declares, bytes the file holds after it) for a RIFF
    WAV of ``size`` bytes starting with ``head`` that is shorter than its header says;
    None for a whole WAV, a size left unknown by a streaming writer, or another format."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        cid, n = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if cid == b"data":
            have = size - (pos + 8)
            return (n, have) if n not in _UNKNOWN_LENGTH and n > have else None
        pos += 8 + n + (n & 1)  # chunks are padded to an even length
    return None


def _read(source: str | io.BytesIO, name: str, head: bytes, size: int) -> np.ndarray:
    try:
        with sf.SoundFile(source) as f:  # the header first: a forged rate must not size the read
            sr = f.samplerate
            check_rate(sr, name)
            audio = f.read(dtype="float32", always_2d=True)  # (frames, channels)
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        why = str(e).replace(repr(source), name)  # libsndfile names what it opened: the name, not a BytesIO
        raise AudioError(f"{name}: not a readable audio file ({why})") from e
    if audio.shape[0] == 0:
        raise AudioError(f"{name}: no audio (0 frames)")
    short = wav_shortfall(head, size)
    if short is not None:
        log.warning("%s: truncated: its header declares %d bytes of audio, the file holds %d; using the "
                    "%.2f s that are there", name, short[0], short[1], audio.shape[0] / sr)
    if audio.shape[0] < SHORT_S * sr:
        log.warning("%s: only %.0f ms of audio (under %.1f s): too short to say much", name,
                    1000 * audio.shape[0] / sr, SHORT_S)
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    check_finite(mono, name)
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
