"""Streaming speech translation (simul.speech_stream, interpres stream): segments close at pauses
whatever the chunking, memory stays bounded, raw PCM input survives odd bytes."""

import io
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from builders import make_model_dir
from interpres.cli import main
from simul.speech_stream import PauseSegmentation, PauseSettings, file_chunks, pcm_chunks, run
from speech.decode import DecodingOptions
from speech.translate import load_translator

SR = 16000
BURSTS = [(0.5, 1.5), (2.4, 3.0), (4.0, 5.2)]


def talk(spans=BURSTS, seconds=6.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wave = 1e-3 * rng.standard_normal(len(t))
    for start, end in spans:
        on = (t >= start) & (t < end)
        wave[on] += 0.4 * np.sin(2 * np.pi * 300 * t[on]) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t[on]))
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    return load_translator(make_model_dir(tmp_path_factory.mktemp("stream") / "st", langs=("de", "fr", "en")))


def stream_of(translator, langs=("de",), **settings):
    return PauseSegmentation(translator, list(langs), PauseSettings(**settings),
                             DecodingOptions(beam_size=1, max_len_b=6))


def feed(stream, wave, chunk):
    out = []
    for i in range(0, len(wave), chunk):
        out += stream.push(wave[i:i + chunk])
    return out + stream.finish()


def test_segments_close_at_the_pauses_and_are_committed_after_them(translator):
    commits = feed(stream_of(translator, ("de", "fr")), talk(), 1600)
    assert len(commits) == 3
    for c, (start, end) in zip(commits, BURSTS):
        assert start - 0.15 <= c.start <= start and end <= c.end <= end + 0.15
        assert set(c.texts) == {"de", "fr"}
        assert c.end + 0.35 <= c.committed_at <= c.end + 0.5  # the pause that closes it (less the pad), no more
    assert commits[-1].committed_at < 6.0  # the last one did not wait for the end of the stream


def test_the_chunking_does_not_change_what_is_committed(translator):
    wave = talk()
    want = [(c.start, c.end, c.texts, c.committed_at) for c in feed(stream_of(translator), wave, len(wave))]
    for chunk in (1, 333, 1600, 16000):
        got = [(c.start, c.end, c.texts, c.committed_at) for c in feed(stream_of(translator), wave, chunk)]
        assert got == want, chunk


def test_long_speech_is_cut_and_memory_stays_bounded(translator):
    wave = talk([(0.2, 9.8)], seconds=10.0)
    stream = stream_of(translator, max_segment_s=3.0)
    commits, longest = [], 0
    for i in range(0, len(wave), 800):
        commits += stream.push(wave[i:i + 800])
        if stream.open is not None:
            longest = max(longest, sum(len(s) for s in stream.open.samples))
    commits += stream.finish()
    assert longest <= 3.0 * SR
    assert len(commits) >= 4 and all(c.end - c.start <= 3.0 + 1e-6 for c in commits)
    assert all(a.end == pytest.approx(b.start) for a, b in zip(commits, commits[1:]))  # nothing lost between


def test_minutes_of_silence_give_nothing_and_keep_nothing(translator):
    stream = stream_of(translator)
    silence = (1e-4 * np.random.default_rng(1).standard_normal(SR)).astype(np.float32)
    for _ in range(180):
        assert stream.push(silence) == []
    assert stream.open is None and len(stream.tail) <= 10
    assert stream.finish() == []
    assert stream.read == 180 * SR


def test_an_unfinished_segment_is_closed_by_the_end_of_the_stream(translator):
    wave = talk([(0.5, 2.0)], seconds=2.0)  # speech to the last sample
    commits = feed(stream_of(translator), wave, 1000)
    assert len(commits) == 1 and commits[0].end == pytest.approx(2.0, abs=0.01)


class Trickle(io.RawIOBase):
    """A pipe that hands out a few bytes at a time, odd counts included."""

    def __init__(self, data, sizes=(3, 1, 7, 2, 5)):
        self.data, self.sizes, self.i = data, sizes, 0

    def readable(self):
        return True

    def read(self, n=-1):
        size = min(n, self.sizes[self.i % len(self.sizes)])
        self.i += 1
        out, self.data = self.data[:size], self.data[size:]
        return out


def test_raw_pcm_survives_odd_reads_and_a_cut_last_sample():
    samples = (np.random.default_rng(2).standard_normal(101) * 3000).astype("<i2")
    warnings = []
    got = np.concatenate(list(pcm_chunks(Trickle(samples.tobytes() + b"\x01"), warn=warnings.append)))
    np.testing.assert_array_equal(got, samples.astype(np.float32) / 32768.0)
    assert warnings == ["the stream ended in the middle of a sample: its last byte was dropped"]


def test_a_file_plays_in_real_time(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, talk(seconds=1.0), SR)
    now, slept = [0.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s

    chunks = list(file_chunks(path, realtime=2.0, sleep=sleep, clock=lambda: now[0]))
    assert sum(len(c) for c in chunks) == SR and len(chunks) == 10
    assert sum(slept) == pytest.approx(0.5)  # 1 s of audio at twice real speed
    assert slept[0] == pytest.approx(0.05)  # each chunk waits until it has been "recorded"


def test_ctrl_c_still_prints_what_was_heard(translator):
    wave = talk([(0.5, 1.5)], seconds=1.5)

    def chunks():
        yield wave[:8000]
        yield wave[8000:]
        raise KeyboardInterrupt

    out = io.StringIO()
    assert run(stream_of(translator), chunks(), "jsonl", out) == 1
    assert json.loads(out.getvalue())["start"] == pytest.approx(0.4, abs=0.15)


def test_stream_command_formats_and_errors(translator, tmp_path, capsys, monkeypatch):
    model = str(translator.model_dirs[0])
    path = tmp_path / "talk.wav"
    sf.write(path, talk(), SR)
    assert main(["stream", str(path), "--tgt", "de,fr", "--model", model, "--runtime", "torch",
                 "--format", "srt", "--beam", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("1\n00:00:00,") and "\n[de] " in out and "\n[fr] " in out and "\n\n3\n" in out
    assert "3 segments from 6.0 s of audio" in err

    pcm = (talk() * 32767).astype("<i2").tobytes()
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(pcm + b"\x00")))
    assert main(["stream", "-", "--tgt", "en", "--model", model, "--runtime", "torch", "--format", "vtt",
                 "--beam", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("WEBVTT\n\n00:00:00.") and out.count(" --> ") == 3
    assert "warning: -: the stream ended in the middle of a sample" in err

    for argv, message in ((["stream", str(tmp_path / "nope.wav"), "--tgt", "de"], "nope.wav: no such file"),
                          (["stream", str(path), "--tgt", "ja", "--model", model, "--runtime", "torch"],
                           "unknown target language 'ja'"),
                          (["stream", "-", "--tgt", "de", "--realtime", "1"], "--realtime plays a file")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
