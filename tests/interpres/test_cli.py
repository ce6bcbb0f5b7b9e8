"""The console entry point: help, errors as messages (never tracebacks), a real run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from interpres.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(*args, home=None):
    env = {**os.environ, "INTERPRES_HOME": str(home)} if home else dict(os.environ)
    return subprocess.run([sys.executable, "-m", "interpres", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "data" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert "text" in out and "speech" in out
    with pytest.raises(SystemExit):
        main(["data", "speech", "--help"])
    out = capsys.readouterr().out
    for key in ("--size", "--config", "--home", "train_per_lang", "heldout_voices", "utterances_per_talk"):
        assert key in out
    with pytest.raises(SystemExit):
        main(["data", "text", "--help"])
    out = capsys.readouterr().out
    for key in ("langs", "pip_packages", "dev_fraction", "sentence_sources"):
        assert key in out


def test_bad_override_is_a_message_naming_the_key(tmp_path, capsys):
    assert main(["data", "speech", "--size", "tiny", "--home", str(tmp_path), "trian_per_lang=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'trian_per_lang'" in err and "data_speech_tiny.yaml" in err and "Traceback" not in err
    assert main(["data", "speech", "--size", "tiny", "--home", str(tmp_path), "train_per_lang=many"]) == 2
    assert "'train_per_lang' must be an integer" in capsys.readouterr().err
    assert main(["data", "text", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="needs espeak-ng and sox")
def test_data_speech_runs_from_the_console(text_home):
    args = ["data", "speech", "--size", "tiny", "name=cli", "langs=[de]", "train_per_lang=3", "dev_per_lang=1",
            "test_per_lang=1", "asr_train=0", "train_voices=[espeak:en-us+m1]", "heldout_voices=[espeak:en-gb-scotland+m7]"]
    res = run(*args, home=text_home)
    assert res.returncode == 0, res.stderr
    assert "en-de" in res.stdout and "tst-VOICE" in res.stdout
    assert (text_home / "speech/cli/en-de/data/train/txt/train.yaml").exists()
    # the installed console script is the same program
    exe = Path(sys.executable).with_name("interpres")
    if exe.exists():
        again = subprocess.run([str(exe), *args], capture_output=True, text=True,
                               env={**os.environ, "INTERPRES_HOME": str(text_home)})
        assert again.returncode == 0 and "synthesized 0 utterances" in again.stdout
