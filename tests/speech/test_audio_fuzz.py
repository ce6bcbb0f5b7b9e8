"""A bounded fuzz of the audio readers: mutated WAVs are read or refused with a message naming
the file, never a traceback or a hang (issue 30; benchmarks/bench_fuzz_audio.py runs 1,000
through the CLI too)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speech.audio import AudioError, decode_audio, load_audio
from wav_fuzz import base_wavs, mutations

REPO = Path(__file__).resolve().parents[2]


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang


def test_100_mutated_wavs_are_read_or_refused(tmp_path: Path):
    signal.signal(signal.SIGALRM, _alarm)
    outcomes = {"read": 0, "refused": 0}
    for name, data in mutations(base_wavs(0.25), 100, seed=7):
        path = tmp_path / f"{name}.wav"
        path.write_bytes(data)
        signal.alarm(20)  # a hang fails the test, naming the file
        try:
            audio = load_audio(path)
            assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all(), name
            outcomes["read"] += 1
        except AudioError as e:
            assert str(e).startswith(str(path)), (name, str(e))  # the message names the file
            with pytest.raises(AudioError, match=rf"^{name}\.wav: "):
                decode_audio(data, f"{name}.wav")  # uploads are refused the same way
            outcomes["refused"] += 1
        except Hang:
            pytest.fail(f"{name}: load_audio took over 20 s")
        finally:
            signal.alarm(0)
    # the mutations reach both outcomes: the fuzz is not all garbage, nor all harmless
    assert outcomes["read"] >= 10 and outcomes["refused"] >= 30, outcomes


@pytest.mark.slow
def test_the_cli_meets_broken_and_good_files_together(tmp_path: Path):
    """Several files in one transcribe: the broken ones are reported by name, the good ones
    transcribed, the exit status says something failed; --skip-bad makes it 0."""
    files = []
    for name, data in mutations(base_wavs(0.25), 12, seed=3):
        (tmp_path / f"{name}.wav").write_bytes(data)
        files.append(tmp_path / f"{name}.wav")
    good = tmp_path / "good.wav"
    sf.write(good, (0.3 * np.sin(np.arange(8000) / 7)).astype(np.float32), 16000, subtype="PCM_16")
    forged = tmp_path / "forged.wav"
    raw = bytearray(good.read_bytes())
    raw[24:28] = (7).to_bytes(4, "little")
    forged.write_bytes(bytes(raw))
    cmd = [sys.executable, "-m", "interpres", "transcribe", str(good), str(forged), *map(str, files),
           "--beam", "1", "--format", "json", "--out", str(tmp_path / "out.json")]
    for flag, want_rc in (([], 2), (["--skip-bad"], 0)):
        p = subprocess.run(cmd + flag, capture_output=True, text=True, timeout=600, cwd=REPO)
        assert "Traceback" not in p.stderr, p.stderr
        assert p.returncode == want_rc, p.stderr
        assert f"{forged}: its header says 7 Hz" in p.stderr
        assert str(good) in (tmp_path / "out.json").read_text()
