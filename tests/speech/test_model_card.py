"""The bundled model's card (speech.model_card): what it says about the recipe and the scores."""

import json

import torch
from safetensors import safe_open

from speech.checkpoint import load_model_dir
from speech.model_card import bundle, model_card

from builders import make_model_dir


def test_the_card_names_the_text_pretraining_it_came_from(tmp_path):
    model = make_model_dir(tmp_path / "st")
    mt = tmp_path / "mt"
    mt.mkdir()
    (mt / "config.json").write_text(json.dumps({"updates": 2600, "recipe": {"denoise_share": 0.1}}))
    conf = json.loads((model / "config.json").read_text())
    conf["recipe"] = {"init_decoder": str(mt), "init_encoder": "runs/asr_small/model", "specaugment": "none"}
    (model / "config.json").write_text(json.dumps(conf))
    card = model_card(model)
    assert "en->xx, 2600 updates; 10% English denoising" in card
    assert "noised, back into themselves" in card
    (mt / "config.json").write_text(json.dumps({"updates": 1600, "recipe": {}}))
    card = model_card(model)
    assert "en->xx, 1600 updates)" in card and "denoising" not in card

    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"split": "tst-COMMON", "beam": 5, "decoding": {"ctc_weight": 0.5}, "pairs": {
        "en-de": {"bleu": 1.5, "chrf": 12.0}, "en-fr": {"bleu": 0.5, "chrf": 10.0}}}))
    out = bundle(model, tmp_path / "bundle", [scores])
    card = (out / "README.md").read_text()
    assert "tst-COMMON 11.0 (2 languages)" in card
    with safe_open(str(out / "model.safetensors"), "pt") as f:  # fp16 on disk
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    load_model_dir(out)  # and it loads
    assert (out / "model.safetensors").stat().st_size < 0.6 * (model / "model.safetensors").stat().st_size


def test_the_asr_model_has_its_own_card(tmp_path):
    model = make_model_dir(tmp_path / "asr", langs=("en",), task="asr")
    conf = json.loads((model / "config.json").read_text())
    conf |= {"recipe": {"corpus": "small", "asr_corpus_pair": "en-asr", "langs": ["de", "fr"], "ctc_weight": 0.5,
                        "specaugment": "none"}, "updates": 2400, "train_seconds": 2460, "dev_scores": {"wer_en": 107.0}}
    (model / "config.json").write_text(json.dumps(conf))
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"split": "tst-VOICE", "beam": 5, "decoding": {"ctc_weight": 0.5}, "pairs": {
        "en-asr": {"wer": 85.5, "n_utterances": 200}}}))
    card = (bundle(model, tmp_path / "bundle", [scores]) / "README.md").read_text()
    assert card.startswith("# interpres ASR model: English speech to English text")
    assert "interpres train asr speech/configs/asr_small.yaml" in card and "train st" not in card
    assert "| tst-VOICE | en-asr |  |  | 85.5 | 200 |" in card and "joint CTC/attention weight 0.5" in card
    assert "English sides of its 2 translation pairs" in card and "<lang:xx>" not in card
    assert "2400 updates in 41.0 min" in card
