"""The speech translator as a compression family (speech.compressing): the test items, the
runner of a variant, and decoding settings per variant (compress's ``decodings``)."""

import pytest

from compress.pipeline import CompressError
from speech.compressing import SpeechFamily
from speech.dataset import pad_features
from speech.decode import DecodingOptions, encode, greedy_search, beam_search

from builders import SPLIT, build_eval_corpus, make_model_dir


@pytest.fixture(scope="module")
def family_and_model(tmp_path_factory):
    root = build_eval_corpus(tmp_path_factory.mktemp("corpus"), pairs=("en-de", "en-fr", "en-asr"))
    model = make_model_dir(tmp_path_factory.mktemp("model") / "st", seed=3)
    return SpeechFamily(corpus=str(root), split=SPLIT, per_lang=3, langs=["de", "fr"], beam=3), model


def direct(runner, items, search, beam):
    """What decoding the items with ``search`` by hand gives."""
    tr = runner.translator
    tags = tuple(tr.tokenizer.lang_tag(lang) for lang in tr.tokenizer.languages)
    x, lens = pad_features([it["feats"] for it in items])
    results = search(tr.models, encode(tr.models, x, lens), [tr.prefix(it["lang"]) for it in items],
                     DecodingOptions(beam_size=beam, suppress_tokens=tags))
    return [tr.text(r) for r in results]


def test_a_variant_decodes_with_its_own_beam(family_and_model, one_thread):
    family, model = family_and_model
    items = family.test_items({})
    assert [it["pair"] for it in items] == ["en-de"] * 3 + ["en-fr"] * 3 + ["en-asr"] * 3
    variant = {"name": "teacher", "path": str(model), "runtime": "torch"}
    default = family.open(variant, threads=1)
    greedy = family.open({**variant, "name": "teacher greedy", "decode": {"beam": 1}}, threads=1)
    assert (default.beam, greedy.beam) == (3, 1)
    assert family.infer(default, items) == direct(default, items, beam_search, 3)
    assert family.infer(greedy, items) == direct(greedy, items, greedy_search, 1)
    outputs = family.infer(greedy, items)
    scores = family.score(greedy, items, outputs)
    assert {"chrF", "BLEU", "WER"} <= set(scores)
    # the bootstrap's score of the whole draw is the headline chrF (English items left out)
    assert family.resampler(items, outputs)(range(len(items))) == pytest.approx(scores["chrF"])


@pytest.mark.parametrize("decode", [{"beam": 0}, {"beam": "1"}, {"length_penalty": 1.0}])
def test_decoding_settings_it_cannot_follow_are_named(family_and_model, decode):
    family, model = family_and_model
    with pytest.raises(CompressError, match="student greedy"):
        family.open({"name": "student greedy", "path": str(model), "runtime": "torch", "decode": decode}, threads=1)
