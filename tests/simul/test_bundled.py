"""The bundled simultaneous model: complete, small, documented, and it translates."""

import json

from simul.bundled import DEFAULT_MODEL, policy_settings, resolve_model
from simul.agents import Segmentation, run_stream
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
    for words in ("## Recipe", "## Data", "## Scores", "configs/simul/pretrain.yaml", "BLEU"):
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
