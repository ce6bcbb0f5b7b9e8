"""interpres compress end to end on the tiny simultaneous translator: distill -> prune ->
re-distill -> int8, the report, resuming, and the CLI's errors."""

import json
from pathlib import Path

import pytest
import torch

from compress.family import CompressError, load_family
from compress.pipeline import CompressConfig, run_pipeline
from interpres.cli import main
from simul.model import load_mt_model

ROOT = Path(__file__).resolve().parents[2]


def recipe(tiny_simul, out):
    train = {"lr": 0.002, "warmup_updates": 5, "max_updates": 40, "save_interval_updates": 20,
             "validate_interval_updates": 20, "average_last": 1, "dev_bleu_max": 0, "threads": 1,
             "stage": "pretrain", "kd": {"alpha": 0.5, "temperature": 2.0}}
    return CompressConfig(
        family="simul.compressing:SimulFamily",
        teacher=[str(tiny_simul.model)],
        out=str(out),
        options={"corpus": str(tiny_simul.corpus), "docs": 4, "segmenter": str(tiny_simul.segmenter),
                 "threshold": 0.5, "train_config": str(ROOT / "simul/configs/tiny.yaml")},
        distill={**train, "max_updates": 10},
        prune={"importance": "taylor", "heads": 0.5, "ffn": 0.5, "layers": {"encoder.layers": 1},
               "calibration_batches": 2},
        redistill=train,
        studies={"truncate-50": {"kd": {"truncate": 0.5}, "max_updates": 10}},
        quantize={"runtime": ["torch-int8", "onnx-int8"]},  # both, side by side
        report={"threads": 1, "batch": 4},
    )


@pytest.mark.slow
def test_pipeline_end_to_end_and_resume(tiny_simul, tmp_path, one_thread):
    cfg = recipe(tiny_simul, tmp_path / "run")
    report = run_pipeline(cfg)
    names = [r["name"] for r in report["rows"]]
    assert names == ["teacher", "distilled", "pruned", "re-distilled", "study truncate-50", "teacher torch-int8",
                     "student torch-int8", "teacher onnx-int8", "student onnx-int8"]
    rows = {r["name"]: r for r in report["rows"]}
    teacher, _ = load_mt_model(tiny_simul.model)
    pruned, conf = load_mt_model(tmp_path / "run/2-prune/model")  # loads from its own config
    assert len(pruned.encoder.layers) == 1 and pruned.cfg.encoder_layout[0][0] == teacher.cfg.heads // 2
    assert rows["pruned"]["params"] < 0.75 * rows["teacher"]["params"]
    assert conf["compress"]["prune_result"]["params_after"] == rows["pruned"]["params"]
    for r in report["rows"]:
        assert r["p50"] > 0 and r["p95"] >= r["p50"] and r["throughput"] > 0 and r["peak_mb"] > 0
        assert {"BLEU", "AL", "LAAL", "stream BLEU"} <= set(r["scores"])
    assert rows["teacher"]["speedup"] == 1.0 and rows["teacher"]["thr_ratio"] == 1.0
    if rows["teacher"]["quality"] > 0:
        assert rows["teacher"]["retained"] == pytest.approx(100.0)

    # recovery: the re-distilled student fits the training data better than the pruned one
    family = load_family(cfg.family, cfg.options)
    batches = family.calibration(tiny_simul.model, 3)
    with torch.no_grad():
        loss = {name: sum(float(family.loss(family.load(tmp_path / f"run/{d}/model"), b)) for b in batches)
                for name, d in (("pruned", "2-prune"), ("re-distilled", "3-redistill"))}
    assert loss["re-distilled"] < loss["pruned"]

    out = tmp_path / "run/report"
    assert (out / "pareto.png").stat().st_size > 5000
    md = (out / "report.md").read_text()
    assert "| student torch-int8 | torch-int8 |" in md and "| student onnx-int8 | onnx-int8 |" in md
    assert "BLEU kept" in md
    assert json.loads((out / "report.json").read_text())["quality"] == "BLEU"
    # each variant's outputs are kept for the bootstrap, whose full draw is the BLEU reported
    items = family.test_items({})
    for name in ("teacher", "student onnx-int8"):
        kept = json.loads((out / f"measure-{name.replace(' ', '_')}.json").read_text())["outputs"]
        assert family.resampler(items, kept)(range(len(items))) == pytest.approx(rows[name]["quality"])
    for r in report["rows"][1:]:
        assert r["retained_ci"] is None or r["retained_ci"][0] <= r["retained_ci"][1]

    # a second run trains nothing and measures nothing again
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("model.safetensors")}
    measured = {p: p.stat().st_mtime_ns for p in out.glob("measure-*.json")}
    again = run_pipeline(cfg)
    assert [r["p50"] for r in again["rows"]] == [r["p50"] for r in report["rows"]]
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("model.safetensors")}
    assert measured == {p: p.stat().st_mtime_ns for p in out.glob("measure-*.json")}


def test_config_errors_are_named(tmp_path, capsys):
    with pytest.raises(CompressError, match="teacher"):
        CompressConfig(teacher=[])
    with pytest.raises(CompressError, match="prune: .*'heads'"):
        CompressConfig(teacher=["x"], prune={"heads": 2.0})
    with pytest.raises(CompressError, match="decodings.greedy"):
        CompressConfig(teacher=["x"], quantize={"runtime": "onnx-int8"}, decodings={"greedy": 1})
    with pytest.raises(CompressError, match="no quantize stage"):
        CompressConfig(teacher=["x"], decodings={"greedy": {"beam": 1}})
    with pytest.raises(CompressError, match="quantized teacher; the config has no quantize stage"):
        CompressConfig(teacher=["x"], teacher_decodings={"greedy": {"beam": 1}})
    with pytest.raises(CompressError, match="teacher_decodings.greedy"):
        CompressConfig(teacher=["x"], quantize={"runtime": "onnx-int8"}, teacher_decodings={"greedy": None})
    with pytest.raises(CompressError, match="package.module:Class"):
        load_family("speech", {})
    with pytest.raises(CompressError, match="cannot load"):
        load_family("speech.nothing:Family", {})
    bad = tmp_path / "c.yaml"
    bad.write_text(f"teacher: [{tmp_path / 'missing'}]\nout: {tmp_path / 'out'}\n")
    assert main(["compress", str(bad)]) == 2
    assert "is not a model directory" in capsys.readouterr().err
    assert main(["compress", str(bad), "prune.heads=0"]) == 2
    assert "'heads'" in capsys.readouterr().err
    assert main(["compress", str(bad), "family=simul.compressing:SimulFamily", "trim.top=0"]) == 2
    assert "trim: the family simul.compressing:SimulFamily cannot trim a vocabulary" in capsys.readouterr().err
