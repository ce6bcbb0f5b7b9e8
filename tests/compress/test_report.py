"""The compression report's interleaved timing rounds: medians, per-round ratios, the cache
of rounds (a rerun measures only what is missing) and the settings' errors. The variants are
real (tiny) matrix workloads measured in child processes, as every family's are."""

import statistics
from pathlib import Path

import pytest

from compress.pipeline import CompressConfig, CompressError
from compress.report import measure_all, write_report

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def config(out, rounds):
    return CompressConfig(teacher=["big"], family="matmul_family:MatmulFamily", out=str(out),
                          report={"threads": 1, "batch": 3, "rounds": rounds})


VARIANTS = [{"name": "teacher", "path": "big", "runtime": "torch", "decode": {"size": 96}, "stage": "teacher"},
            {"name": "small", "path": "small", "runtime": "torch", "decode": {"size": 8}, "stage": "quantize"}]


def test_interleaved_rounds_medians_ratios_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(SUPPORT))
    out = tmp_path / "report"
    results = measure_all(config(tmp_path, 2), VARIANTS, out)
    for r in results:
        assert len(r["rounds"]) == 2
        for key in ("latency_p50_ms", "throughput", "peak_rss_mb"):
            assert r[key] == statistics.median(x[key] for x in r["rounds"])
        assert r["scores"] == r["rounds"][1]["scores"]  # deterministic outputs, scored every round

    report = write_report(config(tmp_path, 2), results, out, "positive")
    teacher, small = report["rows"]
    assert teacher["speedup"] == 1.0 and teacher["speedup_range"] == [1.0, 1.0] and teacher["rounds"] == 2
    per_round = [a["latency_p50_ms"] / b["latency_p50_ms"] for a, b in zip(results[0]["rounds"], results[1]["rounds"])]
    assert small["speedup"] == pytest.approx(statistics.median(per_round))
    assert small["speedup_range"] == [min(per_round), max(per_round)]
    md = (out / "report.md").read_text()
    assert "medians of 2 interleaved rounds" in md
    assert f"| {small['speedup']:.2f} ({min(per_round):.2f}-{max(per_round):.2f}) |" in md

    # raising rounds adds one round per variant and keeps the old ones; the same count measures nothing
    again = measure_all(config(tmp_path, 3), VARIANTS, out)
    assert [r["rounds"][:2] for r in again] == [r["rounds"] for r in results]
    assert [len(r["rounds"]) for r in again] == [3, 3]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("measure-*.json")}
    assert measure_all(config(tmp_path, 3), VARIANTS, out) == again
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("measure-*.json")}
    # a changed variant is measured again from its first round; the other keeps its rounds
    changed = [VARIANTS[0], {**VARIANTS[1], "decode": {"size": 9}}]
    third = measure_all(config(tmp_path, 1), changed, out)
    assert third[0] == again[0] and len(third[1]["rounds"]) == 1


def test_rounds_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(CompressError, match="report.rounds"):
            CompressConfig(teacher=["x"], report={"rounds": bad})
    assert CompressConfig(teacher=["x"], report={"rounds": 3}).report["rounds"] == 3
