"""`interpres eval mustc` end to end: in-process, killed and resumed, and in two processes under torchrun."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from interpres.cli import main
from speech import translate

from builders import SPLIT, UTTS, build_eval_corpus, make_model_dir

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("cli_eval") / "model", langs=("de", "fr", "en"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_eval_corpus(tmp_path_factory.mktemp("mustc"))


def eval_args(corpus, model_dir, out, *extra) -> list[str]:
    return ["eval", "mustc", "--root", str(corpus), "--pairs", "en-de,en-fr", "--split", SPLIT,
            "--model", str(model_dir), "--beam", "1", "--batch-frames", "250", "--out", str(out), *extra]


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("interpres: error: ") and "Traceback" not in err
    return err


def hyps(out) -> dict[str, str]:
    return {lang: (out / f"en-{lang}" / f"{SPLIT}.hyp.{lang}").read_text(encoding="utf-8") for lang in ("de", "fr")}


def test_eval_writes_hypotheses_and_the_report(corpus, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(eval_args(corpus, model_dir, out, "--also-asr")) == 0
    printed = capsys.readouterr()
    assert "| en-de |" in printed.out and "| en-fr |" in printed.out and "scores.json" in printed.err
    for name in ("scores.json", "scores.md", "scores.png", f"en-de/{SPLIT}.hyp.de", f"en-de/{SPLIT}.hyp.en",
                 f"en-fr/{SPLIT}.hyp.fr", f"en-fr/{SPLIT}.hyp.en"):
        assert (out / name).is_file(), name
    report = json.loads((out / "scores.json").read_text())
    assert report["beam"] == 1 and report["workers"] == 1 and list(report["pairs"]) == ["en-de", "en-fr"]
    for e in report["pairs"].values():
        assert {"bleu", "chrf", "bleu_signature", "chrf_signature", "wer", "rtf"} <= set(e)
    assert all(len(text.split("\n")) == len(UTTS) + 1 for text in hyps(out).values())


def test_no_repeat_ngram_size_and_max_len_reach_the_decoding(corpus, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*eval_args(corpus, model_dir, out), "--pairs", "en-de", "--no-repeat-ngram-size", "2",
                 "--max-len-a", "0", "--max-len-b", "3"]) == 0
    capsys.readouterr()
    report = json.loads((out / "scores.json").read_text())
    assert report["decoding"]["no_repeat_ngram_size"] == 2
    assert (report["decoding"]["max_len_a"], report["decoding"]["max_len_b"]) == (0.0, 3)
    lines = (out / "en-de" / f"{SPLIT}.hyp.de").read_text(encoding="utf-8").split("\n")
    assert all(len(line.split()) <= 3 for line in lines)  # at most 3 pieces, so at most 3 words
    assert "must be at least 0" in error_of_usage(capsys, [*eval_args(corpus, model_dir, out), "--no-repeat-ngram-size", "-1"])
    for bad, why in (("-0.5", "must be at least 0, got -0.5"), ("inf", "must be a finite number, got inf"),
                     ("nan", "must be a finite number, got nan")):
        assert why in error_of_usage(capsys, [*eval_args(corpus, model_dir, out), "--max-len-a", bad])


def error_of_usage(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_default_output_directory_is_eval_split(corpus, model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [a for a in eval_args(corpus, model_dir, "x") if a not in ("--out", "x")]
    assert main([*args, "--pairs", "en-de"]) == 0
    assert (tmp_path / f"eval-{SPLIT}" / "scores.json").is_file()


def test_errors_exit_2_naming_the_culprit(corpus, model_dir, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    err = error_of(capsys, [*eval_args(corpus, model_dir, out), "--pairs", "en-de,en-xx"])
    assert "en-xx: no such pair (available: en-de, en-fr)" in err
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert f"{empty / 'config.json'}: not found" in error_of(capsys, eval_args(corpus, empty, out))
    only_de = tmp_path / "only_de"
    shutil.copytree(model_dir, only_de)
    config = json.loads((only_de / "config.json").read_text())
    (only_de / "config.json").write_text(json.dumps({**config, "languages": ["de"]}))
    err = error_of(capsys, eval_args(corpus, only_de, out))
    assert "unknown target language 'fr'" in err and "(the model knows: de)" in err

    broken = build_eval_corpus(tmp_path / "broken", pairs=("en-de",))
    yaml = broken / "en-de" / "data" / SPLIT / "txt" / f"{SPLIT}.yaml"
    yaml.write_text(yaml.read_text().replace("offset: 1.1,", "offset: 7.0,"))
    args = [*eval_args(broken, model_dir, out), "--pairs", "en-de"]
    assert f"{yaml}:2: segment ted_7_1 starts past the end" in error_of(capsys, args)
    assert main([*args, "--skip-bad"]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert report["pairs"]["en-de"]["n_skipped"] == 1 and report["skip_bad"] is True

    monkeypatch.setattr(translate, "BUNDLED_MODEL_DIR", tmp_path / "bundled")
    monkeypatch.setattr(translate, "BUNDLED_ASR_DIR", tmp_path / "bundled-asr")
    args = [a for a in eval_args(corpus, model_dir, out) if a not in ("--model", str(model_dir))]
    assert "no bundled model yet; pass --model DIR" in error_of(capsys, args)
    assert not (tmp_path / "out" / "en-fr").exists()


def test_without_a_model_asr_evaluation_uses_the_bundled_asr_model(tmp_path, monkeypatch, capsys):
    corpus = build_eval_corpus(tmp_path / "c", pairs=("en-asr", "en-de"))
    monkeypatch.setattr(translate, "BUNDLED_MODEL_DIR", make_model_dir(tmp_path / "default", langs=("de", "en")))
    monkeypatch.setattr(translate, "BUNDLED_ASR_DIR", make_model_dir(tmp_path / "asr", langs=("en",), task="asr"))
    base = ["eval", "mustc", "--root", str(corpus), "--split", SPLIT, "--beam", "1", "--batch-frames", "250"]
    for extra, model in ((["--pairs", "en-asr"], "asr"), (["--pairs", "en-de", "--task", "asr"], "asr"),
                         (["--pairs", "en-asr,en-de"], "default")):
        out = tmp_path / f"out-{len(extra)}"
        assert main([*base, *extra, "--out", str(out)]) == 0
        capsys.readouterr()
        report = json.loads((out / "scores.json").read_text())
        assert report["models"] == [str(tmp_path / model)], extra
        assert all(s.get("wer") is not None for s in report["pairs"].values()) or model == "default"


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "mustc", "--help"])
    out = capsys.readouterr().out
    for option in ("--root", "--pairs", "--split", "--model", "--task", "--beam", "--batch-frames", "--runtime",
                   "--out", "--workers", "--skip-bad", "--also-asr"):
        assert option in out
    with pytest.raises(SystemExit) as e:
        main(["eval", "mustc", "--pairs", "en-de"])
    assert e.value.code == 2 and "--root" in capsys.readouterr().err


def run_cli(*args, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "interpres", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def comparable(report: dict) -> dict:
    for e in report["pairs"].values():
        for key in ("wall_seconds", "rtf", "hypotheses"):
            e.pop(key)
    return report


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_scores(corpus, model_dir, tmp_path, capsys):
    assert main(eval_args(corpus, model_dir, tmp_path / "a")) == 0
    args = eval_args(corpus, model_dir, tmp_path / "b")
    killed = run_cli(*args, env_extra={"INTERPRES_TEST_KILL_AFTER_BATCHES": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    log = (tmp_path / "b" / "en-de" / f"{SPLIT}.progress.jsonl").read_text().splitlines()
    assert len(log) == 2 and not (tmp_path / "b" / "en-fr").exists()  # the header and one batch
    resumed = run_cli(*args, "--verbose")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after 1 finished batches" in resumed.stderr
    assert hyps(tmp_path / "b") == hyps(tmp_path / "a")
    a, b = (json.loads((tmp_path / d / "scores.json").read_text()) for d in ("a", "b"))
    assert comparable(a) == comparable(b)


@pytest.mark.slow
def test_two_workers_under_torchrun_match_one_process(corpus, model_dir, tmp_path, monkeypatch, capsys):
    assert main(eval_args(corpus, model_dir, tmp_path / "one")) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(eval_args(corpus, model_dir, tmp_path / "two", "--workers", "2")) == 0
    assert hyps(tmp_path / "two") == hyps(tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "two" / "en-fr").glob("*.progress*")) == [
        f"{SPLIT}.progress.rank0-of-2.jsonl", f"{SPLIT}.progress.rank1-of-2.jsonl"]
    one, two = (json.loads((tmp_path / d / "scores.json").read_text()) for d in ("one", "two"))
    assert two["workers"] == 2
    one.pop("workers"), two.pop("workers")
    assert comparable(one) == comparable(two)


def test_a_talk_holding_nan_is_an_error_or_a_skip_never_a_score(model_dir, tmp_path, capsys):
    """Issue 30: eval mustc read segments without the NaN check translate has, and scored a talk
    of NaN as "⁇ ⁇ ⁇ ⁇" with exit 0 and n_skipped 0."""
    import numpy as np
    import soundfile as sf

    root = build_eval_corpus(tmp_path / "nan", pairs=("en-de",))
    wav_dir = root / "en-de" / "data" / SPLIT / "wav"
    talk = sorted(wav_dir.iterdir())[0]
    wave, sr = sf.read(talk, dtype="float32")
    wave[: sr // 2] = np.nan  # the first half second: the talk's first segment at least
    sf.write(talk, wave, sr, subtype="FLOAT")
    out = tmp_path / "out"
    args = ["eval", "mustc", "--root", str(root), "--pairs", "en-de", "--split", SPLIT, "--model", str(model_dir),
            "--beam", "1", "--out", str(out)]
    err = error_of(capsys, args)
    assert f"of {talk}: holds NaN or infinite samples" in err
    assert main([*args, "--skip-bad"]) == 0
    capsys.readouterr()
    report = json.loads((out / "scores.json").read_text())
    assert report["pairs"]["en-de"]["n_skipped"] >= 1
