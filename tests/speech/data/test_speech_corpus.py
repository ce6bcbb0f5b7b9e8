"""End to end: synthesize a tiny MuST-C-layout corpus with the real TTS engines."""

import shutil

import numpy as np
import pytest
import soundfile as sf
import yaml

from speech.config import ConfigError, load_config
from speech.data import tts
from speech.data.speech_corpus import SpeechCorpusConfig, build_speech_corpus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(shutil.which(p) is None for p in ("espeak-ng", "flite", "text2wave", "sox")),
                       reason="needs espeak-ng, flite, festival and sox (make install)"),
]

CFG = dict(
    name="t", langs=["de", "fr"], train_per_lang=5, dev_per_lang=2, test_per_lang=3,
    asr_train=4, asr_dev=2, asr_test=2, utterances_per_talk=2, workers=2,
    train_voices=["espeak:en-us+m1", "flite:kal16", "festival:kal_diphone"],
    heldout_voices=["espeak:en-gb-scotland+m7", "flite:awb"],
)


def read_split(root, pair, split):
    txt = root / pair / "data" / split / "txt"
    entries = yaml.safe_load((txt / f"{split}.yaml").read_text())
    en = (txt / f"{split}.en").read_text().splitlines()
    tgt_lang = pair.split("-")[1]
    tgt = (txt / f"{split}.{tgt_lang}").read_text().splitlines() if tgt_lang != "asr" else None
    return entries, en, tgt


def test_builds_mustc_layout(text_home):
    summary = build_speech_corpus(SpeechCorpusConfig(**CFG), home=text_home)
    root = text_home / "speech" / "t"
    assert set(summary["splits"]) == {"en-de", "en-fr", "en-asr"}
    speakers = {}
    for pair in ("en-de", "en-fr", "en-asr"):
        for split in ("train", "dev", "tst-COMMON", "tst-VOICE"):
            entries, en, tgt = read_split(root, pair, split)
            assert len(entries) == len(en) and (tgt is None or len(tgt) == len(en))
            assert summary["splits"][pair][split]["utterances"] == len(en)
            speakers[(pair, split)] = {e["speaker_id"] for e in entries}
            for e in entries:
                assert set(e) == {"duration", "offset", "speaker_id", "wav"}
                info = sf.info(root / pair / "data" / split / "wav" / e["wav"])
                assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
                assert 0 < e["offset"] and e["offset"] + e["duration"] <= info.duration + 1e-6
                assert 0.3 < e["duration"] < 10
            # entries of one talk are together, in time order
            talks = [e["wav"] for e in entries]
            assert talks == sorted(talks)
            for w in set(talks):
                offs = [e["offset"] for e in entries if e["wav"] == w]
                assert offs == sorted(offs)
    # what is spoken: speakable strings only, dev/test sentences where they belong
    entries, en, tgt = read_split(root, "en-de", "train")
    assert "Quit" not in en and not any("/usr" in s for s in en) and len(en) == 5
    assert dict(zip(en, tgt))["The printer is out of paper."] == "Der Drucker hat kein Papier mehr."
    # the same sentences, grouped into other talks by other voices
    assert sorted(read_split(root, "en-de", "tst-COMMON")[1]) == sorted(read_split(root, "en-de", "tst-VOICE")[1])
    # tst-VOICE is spoken by voices no other split has
    held = speakers[("en-de", "tst-VOICE")] | speakers[("en-fr", "tst-VOICE")] | speakers[("en-asr", "tst-VOICE")]
    others = set().union(*(v for (p, s), v in speakers.items() if s != "tst-VOICE"))
    assert held and not (held & others)
    assert held <= {tts.Voice.parse(v).slug for v in CFG["heldout_voices"]}
    # an utterance is the same audio in every pair it occurs in (one cache)
    assert summary["synthesized"] < sum(s["utterances"] for p in summary["splits"].values() for s in p.values())


def test_segment_audio_is_the_cached_utterance(text_home):
    build_speech_corpus(SpeechCorpusConfig(**CFG), home=text_home)
    root = text_home / "speech" / "t"
    entries, en, _ = read_split(root, "en-fr", "dev")
    audio, sr = sf.read(root / "en-fr/data/dev/wav" / entries[0]["wav"], dtype="int16")
    start = round(entries[0]["offset"] * sr)
    seg = audio[start:start + round(entries[0]["duration"] * sr)]
    cached = [sf.read(p, dtype="int16")[0] for p in (text_home / "speech/utterances").rglob("*.wav")]
    assert any(len(c) == len(seg) and np.array_equal(c, seg) for c in cached)
    # the pause before the utterance is silence
    assert np.all(audio[:start] == 0)


def test_deterministic_and_resumable(text_home, make_text_home, tmp_path):
    cfg = SpeechCorpusConfig(**CFG)
    build_speech_corpus(cfg, home=text_home)
    root = text_home / "speech" / "t"
    files = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "summary.json"}

    # a second home gives byte-identical files
    other = make_text_home(tmp_path / "other")
    build_speech_corpus(cfg, home=other)
    files2 = {p.relative_to(other / "speech/t"): p.read_bytes()
              for p in (other / "speech/t").rglob("*") if p.is_file() and p.name != "summary.json"}
    assert files2 == files

    # lose a split and a talk: the rerun makes them again from the cache, identical
    shutil.rmtree(root / "en-de/data/dev")
    (root / "en-fr/data/train/txt/train.yaml").unlink()
    again = build_speech_corpus(cfg, home=text_home)
    assert again["synthesized"] == 0
    files3 = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "summary.json"}
    assert files3 == files


def test_interrupted_synthesis_leaves_no_partial_file(text_home, monkeypatch):
    cfg = SpeechCorpusConfig(**{**CFG, "workers": 1, "batch": 2})
    real = tts._postprocess
    calls = {"n": 0}

    def dying(job, raw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise tts.SynthesisError("killed")
        real(job, raw)

    monkeypatch.setattr(tts, "_postprocess", dying)
    with pytest.raises(tts.SynthesisError, match="killed"):
        build_speech_corpus(cfg, home=text_home)
    cache = text_home / "speech/utterances"
    done = list(cache.rglob("*.wav"))
    assert 0 < len(done) < 20 and not [p for p in cache.rglob("*") if ".tmp" in p.name]
    assert all(sf.info(p).frames > 0 for p in done)
    monkeypatch.setattr(tts, "_postprocess", real)
    summary = build_speech_corpus(cfg, home=text_home)
    assert summary["cached"] == len(done)


def test_config_errors(text_home):
    with pytest.raises(ConfigError, match="heldout_voices must not be training voices"):
        SpeechCorpusConfig(train_voices=["flite:awb"], heldout_voices=["flite:awb"])
    with pytest.raises(ConfigError, match="voice 'nosuch' is not of the form"):
        load_config(SpeechCorpusConfig, None, ["train_voices=[nosuch]"])
    with pytest.raises(ConfigError, match="tempo must be"):
        load_config(SpeechCorpusConfig, None, ["tempo=[1.2, 0.8]"])
    build_speech_corpus(SpeechCorpusConfig(**CFG), home=text_home)
    with pytest.raises(ConfigError, match=r"build\.json.*differs in train_per_lang"):
        build_speech_corpus(SpeechCorpusConfig(**{**CFG, "train_per_lang": 4}), home=text_home)
    with pytest.raises(ConfigError, match=r"en-ja/train\.tsv: missing"):
        build_speech_corpus(SpeechCorpusConfig(**{**CFG, "name": "ja", "langs": ["ja"]}), home=text_home)


def test_the_mustc_reader_reads_what_the_builder_wrote(text_home):
    from speech.data.mustc import MustcSplit, available_pairs, load_segment

    build_speech_corpus(SpeechCorpusConfig(**CFG), home=text_home)
    root = text_home / "speech" / "t"
    assert available_pairs(root) == ["en-asr", "en-de", "en-fr"]
    for pair in ("en-de", "en-asr"):
        split = MustcSplit(root, pair, "tst-VOICE", check_audio=True)
        entries, en, tgt = read_split(root, pair, "tst-VOICE")
        assert [s.src for s in split] == en and [s.tgt for s in split] == (tgt or [None] * len(en))
        for seg, e in zip(split, entries):
            audio = load_segment(seg)
            talk, sr = sf.read(root / pair / "data/tst-VOICE/wav" / e["wav"], dtype="float32")
            start = round(float(e["offset"]) * sr)
            assert audio.dtype == np.float32 and sr == 16000
            np.testing.assert_array_equal(audio, talk[start:start + len(audio)])
            assert abs(len(audio) - float(e["duration"]) * sr) <= 1
