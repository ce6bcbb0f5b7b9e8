"""The speech translator as a compression family (speech.compressing): the test items, the
runner of a variant, and decoding settings per variant (compress's ``decodings``)."""

import json

import pytest

from compress.family import CompressError
from speech.compressing import SpeechFamily
from speech.dataset import pad_features
from speech.decode import DecodingOptions, encode, greedy_search, beam_search

from builders import SPLIT, build_eval_corpus, make_model_dir


@pytest.fixture(scope="module")
def family_and_model(tmp_path_factory):
    root = build_eval_corpus(tmp_path_factory.mktemp("corpus"), pairs=("en-de", "en-fr", "en-asr"))
    model = make_model_dir(tmp_path_factory.mktemp("model") / "st", seed=3)
    return SpeechFamily(corpus=str(root), split=SPLIT, per_lang=3, langs=["de", "fr"], beam=3), model


def direct(runner, items, search, beam, **options):
    """What decoding the items with ``search`` by hand gives."""
    tr = runner.translator
    tags = tuple(tr.tokenizer.lang_tag(lang) for lang in tr.tokenizer.languages)
    x, lens = pad_features([it["feats"] for it in items])
    results = search(tr.models, encode(tr.models, x, lens), [tr.prefix(it["lang"]) for it in items],
                     DecodingOptions(beam_size=beam, suppress_tokens=tags, **options))
    return results, [tr.text(r) for r in results]


def test_a_variant_decodes_with_its_own_beam(family_and_model, one_thread):
    family, model = family_and_model
    items = family.test_items({})
    assert [it["pair"] for it in items] == ["en-de"] * 3 + ["en-fr"] * 3 + ["en-asr"] * 3
    variant = {"name": "teacher", "path": str(model), "runtime": "torch"}
    default = family.open(variant, threads=1)
    greedy = family.open({**variant, "name": "teacher greedy", "decode": {"beam": 1}}, threads=1)
    assert (default.decoding.beam_size, greedy.decoding.beam_size) == (3, 1)
    assert family.infer(default, items) == direct(default, items, beam_search, 3)[1]
    assert family.infer(greedy, items) == direct(greedy, items, greedy_search, 1)[1]
    outputs = family.infer(greedy, items)
    scores = family.score(greedy, items, outputs)
    assert {"chrF", "BLEU", "WER"} <= set(scores)
    # the bootstrap's score of the whole draw is the headline chrF (English items left out)
    assert family.resampler(items, outputs)(range(len(items))) == pytest.approx(scores["chrF"])


def test_no_repeat_ngram_size_per_variant_and_for_all(family_and_model, one_thread):
    family, model = family_and_model
    items = family.test_items({})
    variant = {"name": "student greedy", "path": str(model), "runtime": "torch"}
    free = family.open({**variant, "decode": {"beam": 1}}, threads=1)
    banned = family.open({**variant, "decode": {"beam": 1, "no_repeat_ngram_size": 1}}, threads=1)
    assert (free.decoding.no_repeat_ngram_size, banned.decoding.no_repeat_ngram_size) == (0, 1)
    results, texts = direct(banned, items, greedy_search, 1, no_repeat_ngram_size=1)
    assert family.infer(banned, items) == texts
    for r in results:  # no piece twice in one output: the random tiny model repeats without the ban
        assert len(set(r.tokens)) == len(r.tokens)
    assert any(len(set(r.tokens)) < len(r.tokens) for r in direct(free, items, greedy_search, 1)[0])
    # the family's option applies to every variant, the teacher included; a variant's decode overrides it
    everywhere = SpeechFamily(corpus=family.corpus, split=family.split, per_lang=3, langs=["de", "fr"], beam=3,
                              no_repeat_ngram_size=2)
    teacher = everywhere.open({**variant, "name": "teacher"}, threads=1)
    assert (teacher.decoding.beam_size, teacher.decoding.no_repeat_ngram_size) == (3, 2)
    free_here = everywhere.open({**variant, "decode": {"no_repeat_ngram_size": 0}}, threads=1)
    assert free_here.decoding.no_repeat_ngram_size == 0


def test_max_len_per_variant_and_for_all(family_and_model, one_thread):
    family, model = family_and_model
    items = family.test_items({})
    variant = {"name": "student greedy", "path": str(model), "runtime": "torch"}
    free = family.open({**variant, "decode": {"beam": 1}}, threads=1)
    short = family.open({**variant, "decode": {"beam": 1, "max_len_a": 0.0, "max_len_b": 2}}, threads=1)
    assert (free.decoding.max_len_a, free.decoding.max_len_b, short.decoding.max_len_b) == (0.0, 200, 2)
    lengths = [len(r.tokens) for r in direct(free, items, greedy_search, 1)[0]]
    assert max(lengths) > 2  # the random tiny model runs on without the bound
    results, texts = direct(short, items, greedy_search, 1, max_len_b=2)
    assert family.infer(short, items) == texts and all(len(r.tokens) <= 2 for r in results)
    # a * encoder frames + b for every variant, the teacher included; a variant's decode overrides it
    everywhere = SpeechFamily(corpus=family.corpus, split=family.split, per_lang=3, langs=["de", "fr"], beam=3,
                              max_len_a=0.1, max_len_b=1)
    teacher = everywhere.open({**variant, "name": "teacher"}, threads=1)
    assert (teacher.decoding.max_len_a, teacher.decoding.max_len_b) == (0.1, 1)
    assert everywhere.open({**variant, "decode": {"max_len_b": 200}}, threads=1).decoding.max_len_b == 200


@pytest.mark.parametrize("decode", [{"beam": 0}, {"beam": "1"}, {"length_penalty": 1.0},
                                    {"no_repeat_ngram_size": -1}, {"beam": True}, {"max_len_a": -0.1},
                                    {"max_len_b": 1.5}, {"max_len_a": "0.2"}])
def test_decoding_settings_it_cannot_follow_are_named(family_and_model, decode):
    family, model = family_and_model
    with pytest.raises(CompressError, match="student greedy"):
        family.open({"name": "student greedy", "path": str(model), "runtime": "torch", "decode": decode}, threads=1)


def test_test_items_take_the_features_of_the_model_named(family_and_model, tmp_path):
    """features_from: the items carry that model's features (a Whisper teacher's log-mel),
    not the training recipe's filterbank."""
    pytest.importorskip("ctranslate2")
    import torch

    from speech.data.mustc import MustcSplit, load_segment
    from speech.features import LogMelConfig, features_of, model_features
    from speech.whisper import import_whisper
    from whisper_fixtures import tiny_ct2_whisper

    family, _ = family_and_model
    whisper = import_whisper(str(tiny_ct2_whisper(tmp_path / "ct2")), tmp_path / "whisper", pad_to_s=0.0)
    cfg = model_features(json.loads((whisper / "config.json").read_text()), str(whisper / "config.json"))
    assert isinstance(cfg, LogMelConfig)
    mel = SpeechFamily(corpus=family.corpus, split=family.split, per_lang=3, langs=["de", "fr"],
                       features_from=str(whisper))
    items, fbank = mel.test_items({}), family.test_items({})
    first = next(iter(MustcSplit(family.corpus, "en-de", family.split)))
    want = features_of(torch.from_numpy(load_segment(first)), cfg)
    torch.testing.assert_close(items[0]["feats"].float(), want, atol=2e-3, rtol=1e-3)  # cached as float16
    assert items[0]["feats"].shape != fbank[0]["feats"].shape or not torch.equal(items[0]["feats"], fbank[0]["feats"])


def test_trim_keeps_the_pieces_of_the_models_languages(tmp_path):
    """The family's trim stage reads the text corpus's training sentences of the model's languages."""
    pytest.importorskip("ctranslate2")
    from speech.config import ConfigError
    from speech.whisper import import_whisper
    from builders import write_text_corpus
    from whisper_fixtures import tiny_ct2_whisper

    whisper = import_whisper(str(tiny_ct2_whisper(tmp_path / "ct2")), tmp_path / "whisper", pad_to_s=0.0)
    config = json.loads((whisper / "config.json").read_text())
    (whisper / "config.json").write_text(json.dumps({**config, "languages": ["de", "en"]}))
    text = write_text_corpus(tmp_path / "home") / "text"
    family = SpeechFamily(corpus=str(tmp_path), langs=["de"])
    # the tiny word-level tokenizer reads every word as t0: the 256 byte pieces and the
    # prompt's tokens (sot, eot, <|de|>, <|en|>, translate, transcribe, startoflm, notimestamps)
    assert family.trim(whisper, tmp_path / "trim", {"corpus": str(text)}) == {"vocab_before": 300, "vocab_after": 264}
    note = json.loads((tmp_path / "trim" / "config.json").read_text())["compress"]
    assert note["trimmed_from"] == str(whisper) and note["trim_settings"] == {"corpus": str(text)}
    with pytest.raises(CompressError, match="top: an integer"):
        family.trim(whisper, tmp_path / "no", {"top": -1})
    with pytest.raises(CompressError, match="top: an integer"):
        family.trim(whisper, tmp_path / "no", {"vocab": 3})
    with pytest.raises(ConfigError, match="neither a folder"):
        family.trim(whisper, tmp_path / "no", {"corpus": str(tmp_path / "missing")})
    (whisper / "config.json").write_text(json.dumps({**config, "languages": ["de", "es"]}))
    with pytest.raises(CompressError, match=r"en-es/train.tsv not found"):
        family.trim(whisper, tmp_path / "no", {"corpus": str(text)})
    assert not (tmp_path / "no").exists()
