"""The compression report's interleaved timing rounds: medians, per-round ratios, the cache
of rounds (a rerun measures only what is missing) and the settings' errors. The variants are
real (tiny) matrix workloads measured in child processes, as every family's are. Then the
quality intervals: sacrebleu scores of bootstrap draws from summed sentence statistics, and
the paired intervals of the quality retained."""

import logging
import random
import statistics
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU, CHRF

from compress.family import CompressError
from compress.pipeline import CompressConfig
from compress.report import bootstrap_intervals, measure_all, sacrebleu_resampler, write_report

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def config(out, rounds):
    return CompressConfig(teacher=["big"], family="matmul_family:MatmulFamily", out=str(out),
                          report={"threads": 1, "batch": 3, "rounds": rounds})


VARIANTS = [{"name": "teacher", "path": "big", "runtime": "torch", "decode": {"size": 96}, "stage": "teacher"},
            {"name": "small", "path": "small", "runtime": "torch", "decode": {"size": 8}, "stage": "quantize"}]


def test_interleaved_rounds_medians_ratios_and_resume(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PYTHONPATH", str(SUPPORT))
    out = tmp_path / "report"
    caplog.set_level(logging.INFO, logger="compress.report")
    results = measure_all(config(tmp_path, 2), VARIANTS, out)
    order = [r.getMessage().split(" (")[0] for r in caplog.records if r.getMessage().startswith("measuring ")]
    assert order == ["measuring teacher", "measuring small", "measuring small", "measuring teacher"]  # ABBA
    caplog.clear()
    for r in results:
        assert len(r["rounds"]) == 2
        for key in ("latency_p50_ms", "throughput", "peak_rss_mb"):
            assert r[key] == statistics.median(x[key] for x in r["rounds"])
        assert r["scores"] == r["rounds"][1]["scores"]  # deterministic outputs, scored every round
        assert len(r["outputs"]) == 6 and all("outputs" not in x for x in r["rounds"])  # round 1's, once

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
    # a changed variant is measured again from its first round, and so is every other
    # variant: a round's ratios never pair a new measurement with one from an earlier run
    changed = [VARIANTS[0], {**VARIANTS[1], "decode": {"size": 9}}]
    caplog.clear()
    third = measure_all(config(tmp_path, 1), changed, out)
    assert [len(r["rounds"]) for r in third] == [1, 1]
    measured = [r.getMessage() for r in caplog.records if r.getMessage().startswith("measuring ")]
    assert [m.split(" (")[0] for m in measured] == ["measuring teacher", "measuring small"]
    assert any("teacher: 0 of its 3 earlier round(s) kept" in r.getMessage() for r in caplog.records)
    assert len(third[0]["outputs"]) == 6


def test_rounds_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(CompressError, match="report.rounds"):
            CompressConfig(teacher=["x"], report={"rounds": bad})
    assert CompressConfig(teacher=["x"], report={"rounds": 3}).report["rounds"] == 3


WORDS = "the cat sat on a mat while dogs ran past the old house near trees".split()


def corpus(n=40, seed=0):
    rng = random.Random(seed)
    refs = [" ".join(rng.choices(WORDS, k=rng.randint(5, 12))) for _ in range(n)]
    near = [" ".join(w if rng.random() < 0.8 else rng.choice(WORDS) for w in r.split()) for r in refs]
    return refs, near


def test_resampled_scores_equal_sacrebleu_on_the_drawn_items():
    refs, hyps = corpus()
    langs = [["de", "ja", None][i % 3] for i in range(len(refs))]  # None: an item left out (English, WER)
    rng = random.Random(1)
    for draw in (range(len(refs)), [rng.randrange(len(refs)) for _ in refs]):
        b = sacrebleu_resampler(BLEU(), hyps, refs)(draw)
        assert b == pytest.approx(BLEU().corpus_score([hyps[i] for i in draw], [[refs[i] for i in draw]]).score)
        c = sacrebleu_resampler(CHRF(), hyps, refs, langs)(draw)
        per = [CHRF().corpus_score([hyps[i] for i in draw if langs[i] == g], [[refs[i] for i in draw if langs[i] == g]]).score
               for g in ("de", "ja")]
        assert c == pytest.approx(sum(per) / 2)
    with pytest.raises(ValueError, match="3 hypotheses, 2 references"):
        sacrebleu_resampler(BLEU(), ["a", "b", "c"], ["a", "b"])


class TextFamily:
    quality = "BLEU"

    def resampler(self, items, outputs):
        return sacrebleu_resampler(BLEU(), outputs, items)


def test_paired_bootstrap_intervals_of_the_quality_kept(tmp_path):
    refs, near = corpus()
    garbled = [h if i % 2 else "mat mat" for i, h in enumerate(near)]  # half the sentences lost
    one_off = near[:-1] + ["mat mat"]
    results = [{"outputs": near}, {"outputs": list(near)}, {"outputs": garbled}, {"outputs": one_off}, {}]
    same, half, one, missing = bootstrap_intervals(TextFamily(), refs, results)[1:]
    assert same == pytest.approx([100.0, 100.0])  # the same outputs: the same score on every draw
    point = 100 * BLEU().corpus_score(garbled, [refs]).score / BLEU().corpus_score(near, [refs]).score
    assert half[0] < point < half[1] < 100.0
    assert one[1] - one[0] < half[1] - half[0]  # one sentence lost: a narrower interval, closer to 100
    assert missing is None
    assert bootstrap_intervals(object(), refs, results) == [None] * 5  # a family without a resampler

    rows = [{"variant": {"name": name, "runtime": "torch"}, "scores": {"BLEU": BLEU().corpus_score(o, [refs]).score},
             "latency_p50_ms": 10.0, "latency_p95_ms": 12.0, "throughput": 5.0, "peak_rss_mb": 1.0,
             "model_rss_mb": 1.0, "items": len(refs)} for name, o in (("teacher", near), ("half", garbled))]
    cfg = config(tmp_path, 1)
    report = write_report(cfg, rows, tmp_path, "BLEU", [[100.0, 100.0], half])
    assert report["rows"][1]["retained_ci"] == half
    md = (tmp_path / "report.md").read_text()
    assert f"| {point:.1f}% ({half[0]:.1f}-{half[1]:.1f}) |" in md and "| 100.0% |" in md
    assert "95% paired-bootstrap interval (1000 draws of the 40 test items" in md
