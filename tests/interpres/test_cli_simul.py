"""The simultaneous-translation commands from the console: ``simul``, ``eval simul``, and the
help of ``data simul`` and ``train simul``; errors are messages with exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simul.data import load_split

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tiny_simul):
    return tiny_simul.root, tiny_simul.corpus, tiny_simul.bundle


def run(*args, home, stdin=None):
    env = {**os.environ, "INTERPRES_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "interpres", *args], input=stdin, capture_output=True, env=env,
                          cwd=ROOT, timeout=300)


def text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


@pytest.mark.slow
def test_simul_jsonl_from_stdin(tiny, tmp_path):
    _, corpus, bundle = tiny
    lines = [d.source for d in load_split(str(corpus), "general", "test")[:2]]
    res = run("simul", "--model", str(bundle), "--format", "jsonl", home=tmp_path,
              stdin="".join(s + "\n" for s in lines).encode())
    assert res.returncode == 0, text(res.stderr)
    records = [json.loads(x) for x in text(res.stdout).splitlines()]
    assert records and {r["line"] for r in records} == {1, 2}
    for n, src in enumerate(lines, start=1):
        recs = [r for r in records if r["line"] == n]
        assert "".join(r["source"] for r in recs) == src
        assert recs[-1]["final"] and not any(r["final"] for r in recs[:-1])
        assert all(isinstance(r["translation"], str) for r in recs)


def test_simul_missing_model_is_a_message(tmp_path):
    res = run("simul", "--model", "/nonexistent", home=tmp_path, stdin="打开文件\n".encode())
    err = text(res.stderr)
    assert res.returncode == 2
    assert "interpres: error:" in err and "/nonexistent" in err and "Traceback" not in err


def test_simul_missing_file_and_bad_rate_are_messages(tmp_path):
    res = run("simul", str(tmp_path / "nope.txt"), home=tmp_path)
    assert res.returncode == 2 and "nope.txt: no such file" in text(res.stderr)
    res = run("simul", "--realtime", "0", home=tmp_path, stdin=b"")
    assert res.returncode == 2 and "argument --realtime: must be above 0, got 0" in text(res.stderr)
    assert "Traceback" not in text(res.stderr)


INSTANCE_KEYS = {"index", "prediction", "delays", "elapsed", "prediction_length", "reference", "source",
                 "source_length"}


@pytest.mark.slow
def test_eval_simul(tiny, tmp_path):
    _, corpus, bundle = tiny
    out = tmp_path / "out"
    res = run("eval", "simul", "--model", str(bundle), "--corpus", str(corpus), "--parts", "general",
              "--policies", "waitk:3;seg:0.5", "--max-docs", "3", "--out", str(out), home=tmp_path)
    assert res.returncode == 0, text(res.stderr)
    docs = load_split(str(corpus), "general", "test")[:3]
    for agent in ("waitk-3", "seg-0.5"):
        lines = (out / "general" / agent / "instances.log").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 3
        for i, (line, doc) in enumerate(zip(lines, docs)):
            rec = json.loads(line)
            assert set(rec) == INSTANCE_KEYS
            assert rec["index"] == i and rec["source"] == doc.source and rec["reference"] == doc.reference
            assert rec["source_length"] == len(doc.source)
            assert rec["prediction_length"] == len(rec["prediction"].split()) == len(rec["delays"])
            assert len(rec["elapsed"]) == len(rec["delays"])
            assert rec["delays"] == sorted(rec["delays"]) and all(1 <= d <= len(doc.source) for d in rec["delays"])
        assert (out / "general" / agent / "scores.tsv").exists()
    for name in ("scores.json", "scores.md", "bleu_al.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert list(report["parts"]) == ["general"] and report["parts"]["general"]["documents"] == 3
    assert set(report["parts"]["general"]["agents"]) == {"waitk-3", "seg-0.5"}
    assert "waitk-3" in text(res.stdout) and "seg-0.5" in text(res.stdout)


@pytest.mark.slow
def test_eval_simul_bad_policy_is_a_message(tiny, tmp_path):
    _, corpus, bundle = tiny
    res = run("eval", "simul", "--model", str(bundle), "--corpus", str(corpus), "--parts", "general",
              "--policies", "foo:1", "--out", str(tmp_path / "out"), home=tmp_path)
    err = text(res.stderr)
    assert res.returncode == 2
    assert "interpres: error:" in err and "foo" in err and "Traceback" not in err


@pytest.mark.parametrize("args, words", [
    (("data", "simul", "--help"), ("min_sentences", "domain_families", "--config")),
    (("train", "simul", "--help"), ("simul",)),
])
def test_help(tmp_path, args, words):
    res = run(*args, home=tmp_path)
    assert res.returncode == 0, text(res.stderr)
    assert all(w in text(res.stdout) for w in words)
