"""Installed as `pip install` users get it: the wheel built from this tree, installed into a
fresh virtual environment beside the CPU torch, run from outside the checkout (issue 30: the
presets were not in the wheel, so `interpres data speech --size tiny` failed there)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}"
    return p


@pytest.mark.slow
def test_the_wheel_runs_presets_and_translates_outside_the_checkout(tmp_path: Path):
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
         str(REPO)], cwd=tmp_path)
    (wheel,) = wheels.glob("interpres-*.whl")
    venv = tmp_path / "venv"
    base_python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    run([str(base_python), "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    # the dependencies (the CPU torch first) come from this environment's site-packages; a
    # plain path in a .pth file adds it without running its .pth files, so the checkout's
    # editable install stays out
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  cwd=tmp_path).stdout.strip()
    Path(purelib, "interpres_deps.pth").write_text(site.getsitepackages()[0] + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "INTERPRES_HOME": str(tmp_path / "home"), "PYTHONPATH": ""}
    where = run([str(python), "-c", "import speech, simul, torch; print(speech.__file__, simul.__file__)"],
                cwd=outside, env=env).stdout
    assert str(REPO) not in where and str(venv) in where
    cli = str(venv / "bin" / "interpres")
    version = run([cli, "--version"], cwd=outside, env=env).stdout
    assert version.startswith("interpres ")

    # a preset by its path inside the package, and one by its size
    out = run([cli, "data", "scenes", "--config", "audio_align/configs/data_scenes_tiny.yaml"], cwd=outside,
              env=env).stdout
    assert "scene corpus in" in out
    out = run([cli, "data", "speech", "--size", "tiny"], cwd=outside, env=env).stdout  # the command
    assert "speech corpus in" in out and "tst-COMMON" in out

    wav = outside / "tone.wav"
    t = np.arange(32000) / 16000
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t))).astype(np.float32), 16000, subtype="PCM_16")
    res = run([cli, "translate", str(wav), "--tgt", "de", "--beam", "1", "--format", "json"], cwd=outside, env=env)
    assert '"lang": "de"' in res.stdout and "Traceback" not in res.stderr
