"""Overlay model directories: what fine-tuning changed, over a pinned imported base."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.lora import LoraConfig, add_lora, lora_state_dict, merge_lora
from speech.checkpoint import CheckpointError, load_model_dir, model_dir_hash, save_model_dir
from speech.model_card import bundle
from speech.overlay import write_overlay
from speech.translate import TranslateError, load_translator
from speech.whisper import MODEL_NAMES, PACKAGES, import_whisper
from whisper_fixtures import tiny_ct2_whisper

pytest.importorskip("ctranslate2")  # the tiny CTranslate2 model is written by its spec classes
BASE = "whisper-base"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """$INTERPRES_HOME with a tiny Whisper where the pinned base is imported: its config
    claims the pin, so that overlays over it resolve without the 145 MB package."""
    monkeypatch.setenv("INTERPRES_HOME", str(tmp_path / "home"))
    base = import_whisper(str(tiny_ct2_whisper(tmp_path / "ct2")), tmp_path / "home/whisper" / MODEL_NAMES[BASE],
                          pad_to_s=0.0)
    config = json.loads((base / "config.json").read_text())
    config["whisper"]["sha256"] = PACKAGES[MODEL_NAMES[BASE]].sha256
    (base / "config.json").write_text(json.dumps(config))
    return base


def tuned_copy(base: Path, out: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``base`` with the tensors under ``names`` changed, written as a model directory."""
    model, config = load_model_dir(base)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(names):
                p.add_(0.1 * torch.randn_like(p))
    save_model_dir(model, model.cfg, out, extra={k: v for k, v in config.items() if k != "model"})
    (out / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    return model.state_dict()


def test_overlay_holds_the_changed_tensors_in_small_files_and_loads_back(home, tmp_path):
    tuned = tuned_copy(home, tmp_path / "tuned", ("decoder.layers.1", "decoder.embed_tokens"))
    out = write_overlay(tmp_path / "tuned", BASE, tmp_path / "overlay", max_file_mb=0.01, card="# card\n")
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" not in files and {"config.json", "tokenizer.json", "README.md"} <= set(files)
    shards = [out / f for f in files if f.startswith("overlay-")]
    assert len(shards) > 1 and all(p.stat().st_size <= 0.01e6 for p in shards)
    stored = {k for p in shards for k in load_file(str(p))}
    assert any(k.startswith("decoder.embed_tokens.weight#") for k in stored)  # cut in parts
    assert not any(k.startswith(("encoder.", "decoder.layers.0.")) for k in stored)  # unchanged: from the base

    model, config = load_model_dir(out)
    base, _ = load_model_dir(home)
    for name, t in model.state_dict().items():
        if name.startswith(("decoder.layers.1", "decoder.embed_tokens", "decoder.output_projection")):
            assert torch.equal(t, tuned[name].half().float()), name
            assert not torch.equal(t, base.state_dict()[name]), name
        else:
            assert torch.equal(t, base.state_dict()[name]), name
    assert config["base"]["model"] == BASE and config["base"]["files"] == [p.name for p in shards]
    tr = load_translator(out)  # tokenizer, features and languages as the tuned directory's
    assert tr.prefix("de") == load_translator(tmp_path / "tuned").prefix("de")

    before = model_dir_hash(out)
    t = load_file(str(shards[0]))
    first = sorted(t)[0]
    t[first] = t[first] + 1
    save_file(t, str(shards[0]))
    assert model_dir_hash(out) != before  # an export or a seq-KD cache sees the change
    shards[-1].unlink()
    with pytest.raises(TranslateError, match=f"{shards[-1].name}: not found"):
        load_translator(out)


def test_overlay_of_a_lora_run_ships_the_adapters(home, tmp_path):
    model, config = load_model_dir(home)
    lora = LoraConfig(rank=2, alpha=4.0, targets=["q_proj", "fc1"], modules=["decoder"])
    add_lora(model, lora)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.normal_()
    adapters = lora_state_dict(model)
    merge_lora(model)  # what train writes: the merged model directory, and the adapters beside it
    tuned = tmp_path / "tuned"
    save_model_dir(model, model.cfg, tuned, extra={**{k: v for k, v in config.items() if k != "model"},
                                                   "lora": dataclasses.asdict(lora)})
    save_file({k: v.contiguous() for k, v in adapters.items()}, str(tuned / "lora.safetensors"))
    (tuned / "tokenizer.json").write_bytes((home / "tokenizer.json").read_bytes())

    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"split": "tst-COMMON", "beam": 5, "pairs": {"en-de": {"bleu": 9.0, "chrf": 40.0}}}))
    librivox = tmp_path / "librivox.json"  # benchmarks/bench_whisper.py --json: the base's row and the model's
    librivox.write_text(json.dumps([{"system": "faster-whisper (CTranslate2 fp32)", "wer": 2.82},
                                    {"system": "interpres torch, padded to 30 s", "wer": 2.82},
                                    {"system": f"{tuned} (its own features)", "wer": 12.68}]))
    out = bundle(tuned, tmp_path / "overlay", [scores], over=BASE, real_speech=librivox)  # what ships
    assert not any(p.name.startswith("overlay-") for p in out.iterdir())  # nothing else changed
    card = (out / "README.md").read_text()
    assert card.startswith("# interpres teacher: Whisper base fine-tuned into English speech to en")
    assert "M parameters trained; low-rank adapters (LoRA rank 2, alpha 4) on the q_proj/fc1 layers" in card
    assert "| tst-COMMON | en-de | 9.0 | 40.0 |" in card and "make teacher-model" in card
    assert "English WER 12.7 against Whisper base's 2.8" in card
    assert set(load_file(str(out / "lora.safetensors"))) == set(adapters)
    back, _ = load_model_dir(out)
    for name, t in model.state_dict().items():
        assert torch.allclose(back.state_dict()[name], t, atol=1e-6), name


def test_overlay_of_a_student_that_kept_some_layers(home, tmp_path):
    """A student cut from the base (decoder layer 1 of 2 kept) and fine-tuned there: the
    overlay names the layer it stands on and holds only what changed."""
    from compress.prune import PruneConfig, prune
    from speech.compressing import SpeechFamily

    family = SpeechFamily()
    cut = family.load(home)
    prune(cut, PruneConfig(importance="magnitude", layers={"decoder.layers": [1]}))
    family.save(cut, home, tmp_path / "cut", {})
    tuned = tuned_copy(tmp_path / "cut", tmp_path / "tuned", ("decoder.layers.0.ffn",))
    with pytest.raises(CheckpointError, match="names those it kept"):
        write_overlay(tmp_path / "tuned", BASE, tmp_path / "no-layers")
    assert not (tmp_path / "no-layers").exists()
    out = write_overlay(tmp_path / "tuned", BASE, tmp_path / "overlay", layers={"decoder.layers": [1]})
    config = json.loads((out / "config.json").read_text())
    assert config["base"]["layers"] == {"decoder.layers": [1]} and config["model"]["decoder_layers"] == 1
    stored = {k for f in config["base"]["files"] for k in load_file(str(out / f))}
    assert stored == {"decoder.layers.0.ffn.fc1.weight", "decoder.layers.0.ffn.fc1.bias",
                      "decoder.layers.0.ffn.fc2.weight", "decoder.layers.0.ffn.fc2.bias"}
    model, _ = load_model_dir(out)
    for name, t in model.state_dict().items():
        assert torch.equal(t, tuned[name].half().float() if name in stored else tuned[name]), name
    config["base"]["layers"] = {"decoder.layers": "1"}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'base.layers' must map layer stacks"):
        load_model_dir(out)


def test_an_overlay_over_another_base_is_refused(home, tmp_path):
    tuned_copy(home, tmp_path / "tuned", ("decoder.layers.0",))
    out = write_overlay(tmp_path / "tuned", BASE, tmp_path / "overlay")
    config = json.loads((home / "config.json").read_text())
    config["whisper"]["sha256"] = "0" * 64
    (home / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"made over {BASE} with sha256 .* but .*{MODEL_NAMES[BASE]} holds 0000"):
        load_model_dir(out)
    with pytest.raises(CheckpointError, match="expected one of whisper-base"):
        write_overlay(tmp_path / "tuned", "whisper-huge", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_overlay_command(home, tmp_path, capsys):
    from interpres.cli import main

    tuned_copy(home, tmp_path / "tuned", ("decoder.layers.0",))
    (tmp_path / "tuned/README.md").write_text("# tuned\n")
    assert main(["overlay", str(tmp_path / "tuned"), str(tmp_path / "ov"), "--base", BASE]) == 0
    assert "overlay directory:" in capsys.readouterr().out
    assert (tmp_path / "ov/README.md").read_text() == "# tuned\n"
    assert main(["overlay", str(tmp_path / "nope"), str(tmp_path / "ov2"), "--base", BASE]) == 2
    assert f"{tmp_path / 'nope' / 'config.json'}" in capsys.readouterr().err
    assert not (tmp_path / "ov2").exists()
