"""Bundling a simultaneous translator: fp16 weights, the segmenter inside, the policy block,
and a model card that names its recipe, its data and its scores with their intervals."""

import json

from simul.model import load_mt_model
from simul.model_card import bundle


def test_bundle_writes_a_card_with_the_recipe_data_and_scores(tiny_simul, tmp_path):
    report = {"split": "test", "parts": {"general": {"documents": 4, "agents": {
        "full-sentence": {"BLEU": 12.345, "BLEU_ci": [9.1, 15.6], "AL": 4.0, "LAAL": 5.0, "DAL": 6.0, "AP": 0.7},
        "seg-0.5": {"BLEU": 10.0, "AL": 2.0, "LAAL": 4.0, "DAL": 5.0, "AP": 0.8}}}}}
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(report))
    out = bundle(tiny_simul.model, tmp_path / "bundle", tiny_simul.segmenter, threshold=0.6, max_len=30,
                 report_path=scores)
    model, conf = load_mt_model(out)
    assert conf["policy"] == {"threshold": 0.6, "max_len": 30}
    assert (out / "segmenter" / "config.json").exists()
    card = (out / "README.md").read_text()
    assert "| full-sentence | 12.35 [9.1, 15.6] |" in card and "| seg-0.5 | 10.00 |" in card
    assert "stage `pretrain`" in card and "cut at boundary probability >= 0.6" in card
    assert "CC-CEDICT" not in card  # the tiny model was not trained with the lexicon
    assert "--catalogs" not in card and "catalogs.tsv" not in card


def test_the_card_names_the_catalog_pairs_a_stage_read(tiny_simul, tmp_path):
    import shutil

    src = tmp_path / "model"
    shutil.copytree(tiny_simul.model, src)
    conf = json.loads((src / "config.json").read_text())
    conf["recipe"]["catalogs"] = True
    (src / "config.json").write_text(json.dumps(conf))
    card = (bundle(src, tmp_path / "bundle", tiny_simul.segmenter, threshold=0.6, max_len=30) / "README.md").read_text()
    assert "interpres data simul --catalogs" in card and "the catalog pairs (general/catalogs.tsv)" in card
    assert "1,269 more Debian packages" in card
