"""Streaming speech translation (simul.speech_stream, interpres stream): segments close at pauses
whatever the chunking, memory stays bounded, raw PCM input survives odd bytes; local agreement
and wait-k write inside a segment, at word boundaries, and lose or repeat nothing."""

import io
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from builders import TEXTS, make_model_dir, make_parrot_model_dir
from interpres.cli import main
from simul.speech_stream import (LocalAgreement, PauseSegmentation, PauseSettings, WaitK, file_chunks, make_policy,
                                 pcm_chunks, run)
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


# ---------------------------------------------------------------- policies that write early

LONG = [(0.3, 3.3), (4.0, 6.6)]  # two segments long enough for several chunks each
SAID = TEXTS["de"][1]  # what the parrot says, whatever it hears


@pytest.fixture(scope="module")
def parrot(tmp_path_factory):
    return load_translator(make_parrot_model_dir(tmp_path_factory.mktemp("parrot") / "st", SAID))


def early(cls, translator, **kw):
    return cls(translator, ["de"], settings=PauseSettings(), opts=DecodingOptions(beam_size=2, max_len_b=40), **kw)


def test_commits_end_at_word_boundaries(translator):
    policy = early(LocalAgreement, translator)
    tok = translator.tokenizer
    ids = tok.encode("Alle Änderungen vor dem Schließen")
    assert len(ids) > 5  # a tiny vocabulary: words are several pieces
    cuts = policy._cuts("de", ids, ended=False)
    texts = [tok.decode(ids[:c]) for c in cuts]
    assert texts == ["Alle", "Alle Änderungen", "Alle Änderungen vor", "Alle Änderungen vor dem"]
    assert policy._cuts("de", ids, ended=True)[-1] == len(ids)  # the end of a finished hypothesis is a boundary


def test_local_agreement_commits_what_the_last_n_hypotheses_share(translator):
    tok = translator.tokenizer
    a, b = tok.encode("Alle Änderungen vor dem"), tok.encode("Alle Änderungen nach dem")
    policy = early(LocalAgreement, translator, n=2)
    assert policy._choose("de", a, policy._cuts("de", a, False), 100) == 0  # one hypothesis agrees with nothing
    take = policy._choose("de", b, policy._cuts("de", b, False), 200)
    assert tok.decode(b[:policy._cuts("de", b, False)[take - 1]]) == "Alle Änderungen"
    three = early(LocalAgreement, translator, n=3)
    three._choose("de", a, [], 100)
    assert three._choose("de", a, three._cuts("de", a, False), 200) == 0  # n = 3 waits for a third


@pytest.mark.parametrize("spec", ["la:0.5", "la:0.3:3", "waitk:2:0.4", "waitk:1:0.2"])
def test_early_policies_write_inside_segments_and_lose_nothing(parrot, spec):
    wave = talk(LONG, seconds=7.2)
    policy = make_policy(spec, parrot, ["de"], PauseSettings(), DecodingOptions(beam_size=2, max_len_b=40))
    commits = feed(policy, wave, 1600)
    finals = feed(stream_of(parrot), wave, 1600)
    assert len(finals) == 2
    assert policy.decodes > 2  # it decoded while the segments were open
    for seg in finals:
        mine = [c for c in commits if c.start == seg.start]
        assert mine and mine[-1].end == seg.end  # the last commit of a segment is its close
        early_ones = mine[:-1]
        assert all(c.committed_at <= seg.end + 0.5 for c in mine)
        # nothing lost or said twice, no word cut in two: the pieces joined are the sentence
        assert " ".join(c.texts["de"] for c in mine if c.texts["de"]) == SAID
        if isinstance(policy, WaitK):
            for c in early_ones:  # wait-k: k chunks first, then at most one word per chunk
                chunks = int(round((c.committed_at - c.start) * 100)) // policy.step
                assert chunks >= policy.k
                words = sum(len(x.texts.get("de", "").split()) for x in early_ones if x.committed_at <= c.committed_at)
                assert words <= chunks - policy.k + 1
    assert any(c.end < s.end for s in finals for c in commits if c.start == s.start), "nothing was written early"


def test_local_agreement_with_chunks_longer_than_the_segments_is_the_pause_policy(translator):
    wave = talk()
    la = make_policy("la:10", translator, ["de"], PauseSettings(), DecodingOptions(beam_size=2, max_len_b=12))
    pause = make_policy("pause", translator, ["de"], PauseSettings(), DecodingOptions(beam_size=2, max_len_b=12))
    got = [(c.start, c.end, c.texts) for c in feed(la, wave, 1600)]
    assert got == [(c.start, c.end, c.texts) for c in feed(pause, wave, 1600)] and la.decodes == 3


@pytest.mark.parametrize("spec", ["pause:1", "la:x", "la:1:1", "waitk:1.5", "waitk:0", "beam", "la:1:2:3"])
def test_bad_policy_specs_are_refused(translator, spec):
    with pytest.raises(ValueError):
        make_policy(spec, translator, ["de"])


def test_stream_command_runs_every_policy(parrot, tmp_path, capsys):
    path = tmp_path / "talk.wav"
    sf.write(path, talk(LONG, seconds=7.2), SR)
    model = str(parrot.model_dirs[0])
    for policy in ("la:0.5", "waitk:2:0.5"):
        assert main(["stream", str(path), "--tgt", "de", "--model", model, "--runtime", "torch", "--format", "jsonl",
                     "--beam", "1", "--policy", policy]) == 0
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert " ".join(x["texts"]["de"] for x in lines) == f"{SAID} {SAID}"
        assert lines[0]["committed_at"] < LONG[0][1]  # written while the first segment was still spoken
    assert main(["stream", str(path), "--tgt", "de", "--model", model, "--runtime", "torch", "--policy", "la:0"]) == 2
    err = capsys.readouterr().err
    assert "--policy" in err and "chunk_s must be positive" in err and "Traceback" not in err


@pytest.mark.parametrize("spec", ["la:0.3", "waitk:1:0.2"])
def test_partial_output_shows_the_unstable_tail_until_it_is_committed(parrot, spec):
    wave = talk(LONG, seconds=7.2)
    policy = make_policy(spec, parrot, ["de"], PauseSettings(), DecodingOptions(beam_size=2, max_len_b=40))
    out = io.StringIO()
    run(policy, (wave[i:i + 1600] for i in range(0, len(wave), 1600)), "jsonl", out, partial=True)
    records = [json.loads(x) for x in out.getvalue().splitlines()]
    assert any("partial" in r for r in records), "no partial output"
    committed = []
    for r in records:  # the committed words so far and the tail are whole words of the hypothesis
        if "partial" in r:
            shown = " ".join(committed + [r["partial"]["de"]])
            assert shown == SAID if spec.startswith("la") else (SAID + " ").startswith(shown + " ")
        elif r["texts"]["de"]:
            committed.append(r["texts"]["de"])
            if " ".join(committed) == SAID:
                committed = []  # the segment is complete; the next one starts
    with pytest.raises(ValueError, match="partial output is text or jsonl"):
        run(policy, iter([]), "srt", io.StringIO(), partial=True)
