"""A property test of the MuST-C reader: on a tree broken at random it reads, or it raises a
MustcError naming a file, for every seed; never another exception (issue 30)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from speech.data.mustc import MustcError, MustcSplit, load_segment
from builders import SPLIT, build_eval_corpus
from wav_fuzz import mutate

BAD_ENTRIES = [
    "- {duration: .nan, offset: 0.1, speaker_id: s, wav: ted_7.wav}",
    "- {duration: -1, offset: 0.1, speaker_id: s, wav: ted_7.wav}",
    "- {duration: 1e300, offset: 1e300, speaker_id: s, wav: ted_7.wav}",
    "- {duration: .inf, offset: 0, speaker_id: s, wav: ted_7.wav}",
    "- {duration: one, offset: 0.1, speaker_id: s, wav: ted_7.wav}",
    "- {offset: 0.1, wav: ted_7.wav}",
    "- {duration: 0.5, offset: 0.1, wav: ../../../../etc/passwd}",
    "- {duration: 0.5, offset: 0.1, wav: .}",
    "- {duration: 0.5, offset: 0.1, wav: [a, b]}",
    "- {duration: 0.5, offset: 0.1, wav: null}",
    "- just a string",
    "- [1, 2, 3]",
    "- {duration: 0.5, offset: 0.1, wav: ted_7.wav",  # unclosed: a YAML syntax error
    "key: not a list",
    "\x00\x01 binary",
]


def _break(root: Path, rng: np.random.Generator) -> list[str]:
    base = root / "en-de" / "data" / SPLIT
    files = sorted(p for p in base.rglob("*") if p.is_file())
    done = []
    for _ in range(int(rng.integers(1, 4))):
        what = rng.choice(["delete", "truncate", "garbage", "entry", "lines", "wav", "dir", "empty"])
        target = files[int(rng.integers(0, len(files)))]
        if not target.exists():
            continue
        if what == "delete":
            target.unlink()
        elif what == "truncate":
            data = target.read_bytes()
            target.write_bytes(data[: int(rng.integers(0, max(1, len(data))))])
        elif what == "garbage":
            data = bytearray(target.read_bytes())
            for i in rng.integers(0, max(1, len(data)), size=int(rng.integers(1, 20))):
                if data:
                    data[int(i)] = int(rng.integers(0, 256))
            target.write_bytes(bytes(data))
        elif what == "entry":
            yaml = base / "txt" / f"{SPLIT}.yaml"
            lines = yaml.read_text(encoding="utf-8", errors="replace").splitlines() if yaml.exists() else []
            k = int(rng.integers(0, len(lines) + 1))
            lines[k:k + 1] = [BAD_ENTRIES[int(rng.integers(0, len(BAD_ENTRIES)))]]
            yaml.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif what == "lines":
            with open(base / "txt" / f"{SPLIT}.de", "a", encoding="utf-8") as f:
                f.write("one line too many\n")
        elif what == "wav":
            talk = base / "wav" / "ted_7.wav"
            if talk.exists():
                talk.write_bytes(mutate(talk.read_bytes(), rng)[1])
        elif what == "dir":
            shutil.rmtree(base / "wav", ignore_errors=True)
            (base / "wav").write_text("a file where the folder was")
            files = [p for p in files if p.parent.name != "wav"]
        else:
            target.write_bytes(b"")
        done.append(f"{what}:{target.name}")
    return done


@pytest.mark.parametrize("seed", range(60))
def test_a_randomly_broken_tree_reads_or_names_the_file(tmp_path: Path, seed: int):
    rng = np.random.default_rng(seed)
    root = build_eval_corpus(tmp_path / "mustc", pairs=("en-de",))
    what = _break(root, rng)
    for check_audio in (False, True):
        try:
            split = MustcSplit(root, "en-de", SPLIT, check_audio=check_audio)
            for seg in split:
                try:
                    audio = load_segment(seg)
                    assert np.isfinite(audio).all(), what
                except MustcError as e:
                    assert str(root) in str(e), (what, str(e))
        except MustcError as e:
            assert str(root) in str(e) or "en-de" in str(e), (what, str(e))
