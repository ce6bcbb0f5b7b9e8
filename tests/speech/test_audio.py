"""load_audio on small files written here: other rates and channels, and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speech.audio import SAMPLE_RATE, AudioError, decode_audio, load_audio


def tone(n: int, sr: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return float(np.fft.rfftfreq(8 * len(x), 1 / sr)[spectrum.argmax()])


def test_stereo_flac_at_44k1_becomes_16k_mono(tmp_path: Path):
    left = tone(22050, 44100)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, 0.5 * left], axis=1), 44100, format="FLAC", subtype="PCM_16")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.shape == (8000,)  # 0.5 s
    assert abs(peak_hz(audio, SAMPLE_RATE) - 440) < 2
    middle = audio[1000:-1000]  # channels averaged: amplitude 0.75 * 0.5
    assert abs(np.abs(middle).max() - 0.375) < 0.005


def test_8k_wav_becomes_16k(tmp_path: Path):
    path = tmp_path / "phone.wav"
    sf.write(path, tone(12345, 8000, freq=1000), 8000, subtype="PCM_16")
    audio = load_audio(str(path))
    assert audio.dtype == np.float32 and audio.shape == (24690,)
    assert abs(peak_hz(audio, SAMPLE_RATE) - 1000) < 2


def test_16k_wav_is_read_as_is(tmp_path: Path):
    samples = np.random.default_rng(0).integers(-20000, 20000, size=3210, dtype=np.int16)
    path = tmp_path / "a.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(path), samples.astype(np.float32) / 32768)


def broken(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "no_frames":
        sf.write(path, np.zeros(0, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    elif kind == "text":
        path.write_text("this is not audio, only a text file with a .wav name\n")
    elif kind == "silent":
        sf.write(path, np.zeros(16000, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    elif kind == "one_lsb":  # dither-level noise of +-1 int16 step: digital silence too
        lsb = np.random.default_rng(0).integers(-1, 2, size=16000, dtype=np.int16)
        sf.write(path, lsb, SAMPLE_RATE, subtype="PCM_16")
    elif kind == "nan":
        x = tone(1600, SAMPLE_RATE)
        x[100] = np.nan
        sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    return path


@pytest.mark.parametrize("kind, why", [("empty", "empty file"), ("no_frames", "0 frames"),
                                       ("text", "not a readable audio file"), ("silent", "silent"),
                                       ("one_lsb", "silent"), ("nan", "NaN")])
def test_bad_files_name_the_file(tmp_path: Path, kind: str, why: str):
    path = broken(tmp_path, kind)
    with pytest.raises(AudioError, match=why) as err:
        load_audio(path)
    assert str(err.value).startswith(f"{path}: ")
    assert isinstance(err.value, ValueError)


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError, match="no such file") as err:
        load_audio(path)
    assert str(path) in str(err.value)


def test_audio_in_memory_reads_as_the_file_and_errors_name_it(tmp_path: Path):
    """decode_audio (an upload's bytes) gives load_audio's samples; errors carry the given name."""
    path = tmp_path / "in.flac"
    t = np.arange(22050) / 22050
    sf.write(path, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 22050)
    np.testing.assert_array_equal(decode_audio(path.read_bytes(), "upload.flac"), load_audio(path))
    with pytest.raises(AudioError, match=r"^upload.wav: empty file \(0 bytes\)$"):
        decode_audio(b"", "upload.wav")
    with pytest.raises(AudioError, match=r"^upload.wav: not a readable audio file") as e:
        decode_audio(b"RIFF but not audio", "upload.wav")
    assert "BytesIO" not in str(e.value)
    with pytest.raises(AudioError, match=r"^upload.wav: silent"):
        decode_audio(_silent_wav(tmp_path / "s.wav"), "upload.wav")


def _silent_wav(path: Path) -> bytes:
    sf.write(path, np.zeros(1600, dtype=np.float32), SAMPLE_RATE)
    return path.read_bytes()


def _with_rate(path: Path, rate: int) -> None:
    data = bytearray(path.read_bytes())
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = (rate * 2).to_bytes(4, "little")  # byte rate of 16-bit mono
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("rate", [1, 7, 100, 999, 384_001, 2**31 - 1])
def test_an_absurd_header_sample_rate_is_refused_before_reading(tmp_path: Path, rate: int):
    """Issue 30: a 1 Hz header made a 3.6 GiB MemoryError; 7 Hz ran for minutes ("4571 s" of
    audio from 64 KB)."""
    path = tmp_path / "forged.wav"
    sf.write(path, tone(32000, 16000), 16000, subtype="PCM_16")
    _with_rate(path, rate)
    with pytest.raises(AudioError, match=rf"^{path}: its header says {rate} Hz, outside 1,000 \.\. 384,000 Hz"):
        load_audio(path)
    with pytest.raises(AudioError, match=r"^up\.wav: its header says"):
        decode_audio(path.read_bytes(), "up.wav")


def test_the_edges_of_the_rates_are_read(tmp_path: Path):
    for rate in (1000, 384_000):
        path = tmp_path / f"r{rate}.wav"
        sf.write(path, tone(rate // 5, rate, freq=300), rate, subtype="PCM_16")
        assert load_audio(path).shape == (3200,)


def test_a_truncated_wav_is_a_warning_and_what_is_there_is_used(tmp_path: Path, caplog):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(16000, 16000), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:44 + 2 * 4000])  # the header still says 16000 frames
    with caplog.at_level("WARNING", logger="speech.audio"):
        audio = load_audio(path)
    assert audio.shape == (4000,)
    assert f"{path}: truncated: its header declares 32000 bytes of audio, the file holds 8000" in caplog.text


def test_a_whole_wav_or_a_streamed_one_is_not_called_truncated(tmp_path: Path, caplog):
    from speech.audio import wav_shortfall

    path = tmp_path / "whole.wav"
    sf.write(path, tone(16000, 16000), 16000, subtype="PCM_16")
    data = path.read_bytes()
    assert wav_shortfall(data, len(data)) is None
    streamed = bytearray(data)
    streamed[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # the size a pipe writer leaves unknown
    assert wav_shortfall(bytes(streamed), len(streamed)) is None
    assert wav_shortfall(data, len(data) - 10) == (32000, 31990)
    assert wav_shortfall(b"fLaC" + data[4:], len(data) - 10) is None  # not a WAV: not judged
    with caplog.at_level("WARNING", logger="speech.audio"):
        load_audio(path)
    assert "truncated" not in caplog.text


def test_audio_under_a_tenth_of_a_second_is_a_warning(tmp_path: Path, caplog):
    path = tmp_path / "blip.wav"
    sf.write(path, tone(800, 16000), 16000, subtype="PCM_16")
    with caplog.at_level("WARNING", logger="speech.audio"):
        assert load_audio(path).shape == (800,)
    assert f"{path}: only 50 ms of audio (under 0.1 s)" in caplog.text
