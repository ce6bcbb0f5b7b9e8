"""interpres average: checkpoints of a run into a model directory."""

import json

import pytest
import torch

from interpres.cli import main
from speech.average import average_into_model_dir, select_checkpoints
from speech.loop import save_checkpoint
from speech.checkpoint import load_model_dir

from builders import make_model_dir


@pytest.fixture()
def run(tmp_path):
    """A run folder: RUN/model and checkpoints 100, 200, 300 whose weights are 1, 2 and 3 times the model's."""
    run = tmp_path / "run"
    make_model_dir(run / "model", n_mels=20)
    model, _ = load_model_dir(run / "model")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters())
    for i, update in enumerate((100, 200, 300), start=1):
        model.load_state_dict({k: v * i for k, v in base.items()})
        save_checkpoint(run / "checkpoints" / f"checkpoint_{update}", model, opt, {"update": update, "history": []})
    return run, base


def test_averages_the_chosen_checkpoints(run, tmp_path):
    run, base = run
    assert [p.name for p in select_checkpoints(run, 2)] == ["checkpoint_200", "checkpoint_300"]
    assert [p.name for p in select_checkpoints(run, 2, upper_bound=250)] == ["checkpoint_100", "checkpoint_200"]
    out = average_into_model_dir(select_checkpoints(run, 2, upper_bound=250), run / "model", tmp_path / "avg")
    model, conf = load_model_dir(out)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, base[k] * 1.5, atol=1e-6), k  # (1 + 2) / 2
    assert conf["averaged"] == ["checkpoint_100", "checkpoint_200"] and conf["updates"] == 200
    assert conf["languages"] == ["de", "fr"] and "dev_scores" not in conf
    assert (out / "spm.model").read_bytes() == (run / "model" / "spm.model").read_bytes()


def test_cli_single_checkpoint_and_errors(run, tmp_path, capsys):
    run, base = run
    assert main(["average", str(run), "--last", "1", "--out", str(tmp_path / "single")]) == 0
    model, conf = load_model_dir(tmp_path / "single")
    assert all(torch.allclose(v, base[k] * 3) for k, v in model.state_dict().items())
    assert json.loads((tmp_path / "single" / "config.json").read_text())["averaged"] == ["checkpoint_300"]
    assert main(["average", str(run), "--last", "4", "--out", str(tmp_path / "x")]) == 2
    assert "3 checkpoints, 4 asked for" in capsys.readouterr().err
    assert main(["average", "--checkpoint", str(run / "model"), "--like", str(run / "model"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint.safetensors" in capsys.readouterr().err
    other = make_model_dir(tmp_path / "other", n_mels=40)  # another architecture
    assert main(["average", str(run), "--last", "1", "--like", str(other), "--out", str(tmp_path / "x")]) == 2
    assert "does not fit the architecture" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
