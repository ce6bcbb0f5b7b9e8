"""The bundled simultaneous model: complete, small, documented, and it translates."""

import json

from simul.bundled import DEFAULT_MODEL, policy_settings, resolve_model
from simul.policies import Segmentation, run_stream
from simul.segmenter import Segmenter
from simul.translator import Translator


def test_the_bundle_is_complete_and_small():
    model, seg = resolve_model(None)
    assert model == DEFAULT_MODEL and seg == DEFAULT_MODEL / "segmenter"
    for name in ("config.json", "model.safetensors", "spm.model", "src_spm.model", "README.md",
                 "segmenter/config.json", "segmenter/model.safetensors"):
        assert (model / name).is_file(), name
    assert sum(p.stat().st_size for p in model.rglob("*") if p.is_file()) < 25e6
    card = (model / "README.md").read_text(encoding="utf-8")
    for words in ("## Recipe", "## Data", "## Scores", "simul/configs/pretrain.yaml", "BLEU"):
        assert words in card
    conf = json.loads((model / "config.json").read_text())
    assert conf["task"] == "simul-mt" and 0 < policy_settings(model)["threshold"] < 1


def test_the_bundle_translates_a_stream(one_thread):
    model, seg_dir = resolve_model(None)
    tr = Translator(model)
    agent = Segmentation(tr, Segmenter.load(seg_dir), policy_settings(model)["threshold"])
    words, delays, _ = run_stream(agent, "输入一个有效的整数输入一个有效的时间")
    text = " ".join(words)
    assert "valid" in text.lower() and delays == sorted(delays) and delays[-1] == 18


def test_the_demo_stream_says_each_sentence_once(one_thread):
    """Issue 28: `make demo`'s stream printed "Enter a valid number. Enter a valid number. Enter a
    valid number" for its first segment: the model does not stop after its sentence, and the
    guard only watched 4-grams. Each segment's translation now says its sentence once."""
    from simul.evaluate import repeated_sentences

    model, seg_dir = resolve_model(None)
    agent = Segmentation(Translator(model), Segmenter.load(seg_dir), policy_settings(model)["threshold"])
    source = "输入一个有效的整数输入一个有效的时间输入一个有效的值"
    words, _, _ = run_stream(agent, source)
    text = " ".join(words)
    assert repeated_sentences(text, "") == 0, text
    assert text.lower().count("enter a valid") == 3, text  # one per source sentence
