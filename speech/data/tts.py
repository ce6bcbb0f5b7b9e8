"""English speech synthesis with the engines Debian ships: espeak-ng, flite, festival.

A voice is named ``engine:name`` (``espeak:en-gb-x-rp+f2``, ``flite:slt``,
``festival:kal_diphone``). Every utterance is synthesized at the engine's own rate,
then sox changes its tempo and pitch, mixes it to mono, peak-normalizes it and
resamples it to 16 kHz 16-bit. Festival starts slowly (about a second), so it
synthesizes a whole batch of texts in one process.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from compress.errors import UserError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
ENGINES = {"espeak": "espeak-ng", "flite": "flite", "festival": "text2wave"}


class SynthesisError(UserError, RuntimeError):
    """A TTS engine or sox failed; the message names the voice and the text."""


@dataclass(frozen=True)
class Voice:
    engine: str
    name: str

    @classmethod
    def parse(cls, spec: str) -> "Voice":
        engine, sep, name = spec.partition(":")
        if not sep or engine not in ENGINES or not name:
            raise SynthesisError(f"voice '{spec}' is not of the form ENGINE:NAME with ENGINE in {sorted(ENGINES)}")
        return cls(engine, name)

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"

    @property
    def slug(self) -> str:
        """A file-name-safe form, used as the MuST-C speaker id."""
        return f"{self.engine}-{self.name}".replace("+", "-").replace(":", "-").replace("_", "-")


@dataclass(frozen=True)
class Job:
    """One utterance to synthesize into ``out`` (a 16 kHz mono 16-bit wav)."""

    text: str
    voice: Voice
    tempo: float
    pitch_cents: float
    out: Path


def check_engines(voices: Sequence[Voice]) -> None:
    """Fail early, naming the missing program, if an engine or sox is not installed."""
    needed = {ENGINES[v.engine] for v in voices} | {"sox"}
    missing = sorted(p for p in needed if shutil.which(p) is None)
    if missing:
        raise SynthesisError(
            f"missing programs: {', '.join(missing)} (run 'make install' or apt-get install "
            "espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox)"
        )


def _run(cmd: list[str], job_desc: str, stdin: str | None = None) -> None:
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if res.returncode != 0:
        raise SynthesisError(f"{job_desc}: '{cmd[0]}' failed ({res.returncode}): {res.stderr.strip()[:300]}")


def _desc(job: Job) -> str:
    return f"voice {job.voice.id}, text {job.text[:60]!r}"


def _raw_espeak(job: Job, raw: Path) -> None:
    # text on stdin, so a text that starts with '-' is never read as an option
    _run(["espeak-ng", "-v", job.voice.name, "-w", str(raw), "--stdin"], _desc(job), stdin=job.text)


def _raw_flite(job: Job, raw: Path) -> None:
    txt = raw.with_suffix(".txt")
    txt.write_text(job.text, encoding="utf-8")
    _run(["flite", "-voice", job.voice.name, "-f", str(txt), "-o", str(raw)], _desc(job))


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _raw_festival_batch(jobs: Sequence[Job], raws: Sequence[Path]) -> None:
    """One festival process for many texts of one voice."""
    voice = jobs[0].voice
    lines = [f"(voice_{voice.name})"]
    for job, raw in zip(jobs, raws):
        lines.append(f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(job.text)})) "
                     f"{_scheme_string(str(raw))} 'riff)")
    script = raws[0].parent / "batch.scm"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _run(["festival", "--batch", str(script)], f"festival batch of {len(jobs)} ({voice.id}), first {jobs[0].text[:60]!r}")
    for job, raw in zip(jobs, raws):
        if not raw.exists() or raw.stat().st_size <= 44:
            raise SynthesisError(f"{_desc(job)}: festival wrote no audio")


def _postprocess(job: Job, raw: Path) -> None:
    """Tempo, pitch, mono, peak -1 dBFS, 16 kHz 16-bit; written atomically to job.out."""
    effects: list[str] = ["remix", "-"]
    if abs(job.tempo - 1.0) > 1e-6:
        effects += ["tempo", "-s", f"{job.tempo:.4f}"]
    if abs(job.pitch_cents) > 1e-6:
        effects += ["pitch", f"{job.pitch_cents:.1f}"]
    effects += ["norm", "-1", "rate", "-v", str(SAMPLE_RATE)]
    job.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.out.with_name(f".{job.out.stem}.tmp.wav")
    _run(["sox", "-q", "-R", str(raw), "-b", "16", "-e", "signed-integer", "-c", "1", str(tmp), *effects], _desc(job))
    tmp.replace(job.out)


def synthesize(jobs: Sequence[Job]) -> None:
    """Synthesize all jobs (festival ones in one process per voice)."""
    if not jobs:
        return
    with tempfile.TemporaryDirectory(prefix="interpres-tts-") as tmpdir:
        tmp = Path(tmpdir)
        raws = [tmp / f"raw{i}.wav" for i in range(len(jobs))]
        festival: dict[Voice, list[int]] = {}
        for i, job in enumerate(jobs):
            if job.voice.engine == "espeak":
                _raw_espeak(job, raws[i])
            elif job.voice.engine == "flite":
                _raw_flite(job, raws[i])
            else:
                festival.setdefault(job.voice, []).append(i)
        for idx in festival.values():
            _raw_festival_batch([jobs[i] for i in idx], [raws[i] for i in idx])
        for job, raw in zip(jobs, raws):
            if not raw.exists() or raw.stat().st_size <= 44:
                raise SynthesisError(f"{_desc(job)}: the engine wrote no audio")
            _postprocess(job, raw)
