"""Files in, segments out: pause detection, model directories, batching, output formats."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speech import translate
from speech.decode import DecodingOptions
from speech.translate import (
    FileResult,
    Segment,
    TranslateError,
    format_results,
    load_translator,
    split_on_pauses,
    srt_timestamp,
    to_srt,
    to_vtt,
    translate_files,
    write_results,
)

from builders import make_model_dir

SR = 16000
def bursts(spans, duration, seed=0, noise=1e-3):
    """Tone bursts (start_s, end_s) over faint noise."""
    rng = np.random.default_rng(seed)
    wave = noise * rng.standard_normal(int(duration * SR))
    t = np.arange(len(wave)) / SR
    for start, end in spans:
        on = (t >= start) & (t < end)
        wave[on] += 0.5 * np.sin(2 * np.pi * 440 * t[on])
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model") / "st", n_mels=20)


def test_cuts_fall_on_the_pauses():
    # a 0.1 s gap inside the second burst is no pause; a 50 ms blip is no speech
    wave = bursts([(0.5, 1.5), (2.0, 2.5), (2.6, 3.2), (4.0, 4.6), (5.3, 5.35)], duration=6.0)
    segs = split_on_pauses(wave, SR)
    assert len(segs) == 3
    for (start, end), (want_start, want_end) in zip(segs, [(0.5, 1.5), (2.0, 3.2), (4.0, 4.6)]):
        assert abs(start - want_start) <= 0.05 and abs(end - want_end) <= 0.05
    # a longer minimum pause joins the first two
    assert len(split_on_pauses(wave, SR, min_pause_s=0.6)) == 2


def test_long_speech_is_cut_into_pieces_of_at_most_20_s():
    rng = np.random.default_rng(1)
    wave = (0.3 * rng.standard_normal(50 * SR)).astype(np.float32)
    segs = split_on_pauses(wave, SR)
    assert len(segs) >= 3
    assert all(0 < end - start <= 20.0 for start, end in segs)
    assert segs[0][0] <= 0.05 and segs[-1][1] >= 49.95
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))  # contiguous: no audio lost


def test_long_speech_is_cut_at_its_quietest_point():
    t = np.arange(30 * SR) / SR
    amplitude = np.where((t >= 17.0) & (t < 17.4), 0.02, 0.5)  # 28 dB quieter, still above the threshold
    wave = (amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    segs = split_on_pauses(wave, SR)
    assert len(segs) == 2
    assert 17.0 <= segs[0][1] <= 17.4


def test_silence_and_short_input_give_no_segments():
    assert split_on_pauses(np.zeros(100, dtype=np.float32), SR) == []
    assert split_on_pauses(bursts([(0.2, 0.25)], 1.0), SR) == []


def test_srt_timestamps_and_cues():
    assert srt_timestamp(0) == "00:00:00,000"
    assert srt_timestamp(3725.5) == "01:02:05,500"
    assert srt_timestamp(59.9996) == "00:01:00,000"
    assert srt_timestamp(0.0014) == "00:00:00,001"
    assert srt_timestamp(36000 + 61.25) == "10:01:01,250"
    segs = [Segment(0.5, 1.5, "Hallo."), Segment(2.0, 2.5, ""), Segment(62.042, 3601.0, " Welt ")]
    assert to_srt(segs) == ("1\n00:00:00,500 --> 00:00:01,500\nHallo.\n\n"
                            "2\n00:01:02,042 --> 01:00:01,000\nWelt\n\n")


def test_vtt_cues():
    segs = [Segment(0.5, 1.5, "Hallo."), Segment(2.0, 2.5, ""), Segment(62.042, 3601.0, " Welt ")]
    assert to_vtt(segs) == ("WEBVTT\n\n00:00:00.500 --> 00:00:01.500\nHallo.\n\n"
                            "00:01:02.042 --> 01:00:01.000\nWelt\n\n")


def test_formats(tmp_path):
    one = FileResult("a.wav", "de", [Segment(0.5, 1.5, "Hallo"), Segment(2.0, 3.0, "Welt")])
    two = FileResult("a.wav", "fr", [Segment(0.5, 1.5, "Bonjour")])
    assert format_results([one], "text") == "Hallo Welt\n"
    assert format_results([one, two], "text") == "a.wav\tde\tHallo Welt\na.wav\tfr\tBonjour\n"
    data = json.loads(format_results([one, two], "json"))
    assert data[1] == {"file": "a.wav", "lang": "fr", "segments": [{"start": 0.5, "end": 1.5, "text": "Bonjour"}]}
    printed = format_results([one, two], "srt")
    assert printed.startswith("==> a.wav [de] <==\n1\n00:00:00,500 --> 00:00:01,500\nHallo\n")
    assert "==> a.wav [fr] <==\n1\n" in printed
    assert write_results([one, two], "srt", tmp_path / "out.srt") == [tmp_path / "out.de.srt", tmp_path / "out.fr.srt"]
    assert (tmp_path / "out.fr.srt").read_text() == to_srt(two.segments)
    other = FileResult("b.wav", "de", [])
    assert write_results([one, other], "srt", tmp_path / "x.srt") == [tmp_path / "x.a.de.srt", tmp_path / "x.b.de.srt"]
    with pytest.raises(TranslateError, match="same name"):
        write_results([one, FileResult("other/a.wav", "de", [])], "srt", tmp_path / "y.srt")
    assert write_results([one], "json", tmp_path / "o.json") == [tmp_path / "o.json"]
    assert json.loads((tmp_path / "o.json").read_text())[0]["lang"] == "de"


def test_load_translator_reads_a_model_directory(model_dir):
    tr = load_translator(model_dir)
    assert tr.task == "st" and tr.languages == ["de", "fr"] and tr.feature_cfg.num_mel_bins == 20
    assert len(tr.models) == 1 and not tr.models[0].training
    assert tr.prefix("de") == [tr.tokenizer.lang_tag("de")]
    with pytest.raises(TranslateError, match="cannot transcribe English"):
        tr.transcription_language()
    with pytest.raises(TranslateError, match=r"unknown target language 'xx' \(the model knows: de, fr\)"):
        tr.check_languages(["de", "xx"])
    ensemble = load_translator([model_dir, model_dir])
    assert len(ensemble.models) == 2 and ensemble.languages == ["de", "fr"]


def test_which_language_transcribe_decodes_into(tmp_path):
    asr = load_translator(make_model_dir(tmp_path / "asr", langs=("en",), task="asr"))
    assert asr.transcription_language() == "en" and asr.prefix("en") == [asr.tokenizer.lang_tag("en")]
    st = load_translator(make_model_dir(tmp_path / "st", langs=("de", "en")))
    assert st.transcription_language() == "en"


def test_load_translator_names_what_is_missing(model_dir, tmp_path, monkeypatch):
    with pytest.raises(TranslateError, match="nowhere: no such model directory"):
        load_translator(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.safetensors", "spm.model"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    (broken / "spm.model").unlink()
    with pytest.raises(TranslateError, match=r"broken/spm.model: not found"):
        load_translator(broken)
    (broken / "config.json").unlink()
    with pytest.raises(TranslateError, match=r"broken/config.json: not found"):
        load_translator(broken)
    monkeypatch.setattr(translate, "BUNDLED_MODEL_DIR", tmp_path / "bundled")
    monkeypatch.setattr(translate, "BUNDLED_ASR_DIR", tmp_path / "bundled-asr")
    with pytest.raises(TranslateError, match="no bundled model yet; pass --model DIR"):
        load_translator(None)
    with pytest.raises(TranslateError, match="no bundled model yet; pass --model DIR"):
        load_translator(None, task="asr")
    bad_task = make_model_dir(tmp_path / "bad", task="mt")
    with pytest.raises(TranslateError, match="'task' must be one of st, asr, got 'mt'"):
        load_translator(bad_task)


def test_translate_files_per_file_and_language(model_dir, tmp_path):
    spans = [(0.4, 1.2), (1.8, 2.6)]
    a, b = tmp_path / "a.wav", tmp_path / "b.flac"
    sf.write(a, bursts(spans, 3.0), SR)
    sf.write(b, bursts([(0.3, 0.9)], 1.5, seed=2), SR)
    tr = load_translator(model_dir)
    opts = DecodingOptions(beam_size=2, max_len_b=8)
    results = translate_files(tr, [a, b], ["de", "fr"], opts, batch_frames=100_000)
    assert [(r.file, r.lang) for r in results] == [(str(a), "de"), (str(a), "fr"), (str(b), "de"), (str(b), "fr")]
    assert len(results[0].segments) == 2 and len(results[2].segments) == 1
    for seg, (start, end) in zip(results[0].segments, spans):
        assert abs(seg.start - start) <= 0.05 and abs(seg.end - end) <= 0.05
    assert [s.start for s in results[0].segments] == [s.start for s in results[1].segments]
    # one segment per batch decodes the same as all in one batch
    alone = translate_files(tr, [a, b], ["de", "fr"], opts, batch_frames=1)
    assert [[s.text for s in r.segments] for r in alone] == [[s.text for s in r.segments] for r in results]
    with pytest.raises(TranslateError, match="'es'"):
        translate_files(tr, [a], ["es"], opts)


def test_joint_ctc_applies_to_the_english_rows_only(tmp_path):
    from speech.decode import encode, search

    tr = load_translator(make_model_dir(tmp_path / "st", langs=("de", "en"), n_mels=20, seed=3))
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(n, 20, generator=g) for n in (90, 60)]
    plain = DecodingOptions(beam_size=3, max_len_b=8)
    joint = DecodingOptions(beam_size=3, max_len_b=8, ctc_weight=0.5)
    with_ctc = tr.decode(feats, ["de", "en"], joint)
    without = tr.decode(feats, ["de", "en"], plain)
    tags = tuple(tr.tokenizer.lang_tag(lang) for lang in tr.tokenizer.languages)
    for i, f in enumerate(feats):
        # German (a translation) is decoded with attention alone, English with CTC as well
        assert with_ctc[i][0].tokens == without[i][0].tokens
        states = encode(tr.models, f[None], torch.tensor([len(f)]))
        want = search(tr.models, states, [tr.prefix("en")], DecodingOptions(
            beam_size=3, max_len_b=8, ctc_weight=0.5, suppress_tokens=tags))[0]
        assert with_ctc[i][1].tokens == want.tokens
        assert with_ctc[i][1].log_prob == pytest.approx(want.log_prob, abs=1e-4)
    assert [r[1].log_prob for r in with_ctc] != [r[1].log_prob for r in without]
    assert translate.resolve_ctc_weight(tr, None) == translate.DEFAULT_CTC_WEIGHT
    assert translate.resolve_ctc_weight(tr, 0.0) == 0.0
    with pytest.raises(TranslateError, match=r"ctc_weight must be in \[0, 1\]"):
        translate.resolve_ctc_weight(tr, 2.0)
    tr.models[0].ctc_head = None  # as an ONNX export: no CTC head
    assert translate.resolve_ctc_weight(tr, None) == 0.0
    with pytest.raises(TranslateError, match="needs a CTC head"):
        tr.decode(feats, ["en"], joint)


def test_decode_each_gives_each_utterance_its_own_language_as_decode_does(tmp_path):
    """Mixed languages (and joint CTC on the English rows) in one batch: each row's result is the
    one :meth:`Translator.decode` gives that utterance alone into that language."""
    tr = load_translator(make_model_dir(tmp_path / "st", langs=("de", "fr", "en"), n_mels=20, seed=4))
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(n, 20, generator=g) for n in (90, 40, 70, 55)]
    langs = ["fr", "en", "de", "en"]
    opts = DecodingOptions(beam_size=3, max_len_b=8, ctc_weight=0.5)
    got = tr.decode_each(feats, langs, opts)
    for f, lang, res in zip(feats, langs, got):
        (want,), = tr.decode([f], [lang], opts)
        assert res.tokens == want.tokens and res.best.log_prob == pytest.approx(want.best.log_prob, abs=1e-4)
    with pytest.raises(TranslateError, match="4 utterances but 3 languages"):
        tr.decode_each(feats, langs[:3], opts)
    with pytest.raises(TranslateError, match="unknown target language 'ja'"):
        tr.decode_each(feats, ["ja"] * 4, opts)


def test_the_bundled_asr_model_transcribes_and_the_translator_translates(tmp_path, monkeypatch):
    st = make_model_dir(tmp_path / "default", langs=("de", "en"))
    monkeypatch.setattr(translate, "BUNDLED_MODEL_DIR", st)
    monkeypatch.setattr(translate, "BUNDLED_ASR_DIR", tmp_path / "asr")
    # no ASR model in the package: the translator transcribes under <lang:en>
    assert load_translator(None, task="asr").model_dirs == [st]
    asr = make_model_dir(tmp_path / "asr", langs=("en",), task="asr", seed=1)
    tr = load_translator(None, task="asr")
    assert tr.model_dirs == [asr] and tr.task == "asr" and tr.transcription_language() == "en"
    for task in (None, "st"):
        assert load_translator(None, task=task).model_dirs == [st]
    assert load_translator(st, task="asr").model_dirs == [st]  # a model given is the model used
