"""The MuST-C reader on tiny real corpora written here, good ones and broken ones."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speech.data.mustc import MustcError, MustcSplit, available_pairs, load_segment, read_split

SR = 16000
# (talk, first frame, frames): offsets fall between 6-decimal seconds, as in MuST-C and our builder
UTTS = [
    ("ted_1.wav", 4003, 12800),
    ("ted_1.wav", 20800, 16000),
    ("ted_1.wav", 40000, 8000),
    ("ted_2.wav", 1601, 19200),
    ("ted_2.wav", 24000, 14400),
]
TALK_FRAMES = {"ted_1.wav": 3 * SR, "ted_2.wav": 40000}
EN = [f"english sentence {i}" for i in range(len(UTTS))]
DE = ["Grüße, Welt", "zweiter\u2028Satz", "dritter Satz", "vierter Satz", "fünfter Satz"]


def yaml_line(wav: str, offset: float, duration: float) -> str:
    return f"- {{duration: {duration}, offset: {offset}, rW: 3, uW: 0, speaker_id: spk.{wav[4]}, wav: {wav}}}"


def build(root: Path, pair: str = "en-de", split: str = "dev") -> dict[str, np.ndarray]:
    """Write a two-talk split in the MuST-C layout; return the talks' int16 samples."""
    rng = np.random.default_rng(0)
    base = root / pair / "data" / split
    (base / "wav").mkdir(parents=True)
    (base / "txt").mkdir()
    talks = {name: rng.integers(-20000, 20000, size=n, dtype=np.int16) for name, n in TALK_FRAMES.items()}
    for name, audio in talks.items():
        sf.write(base / "wav" / name, audio, SR, subtype="PCM_16")
    lines = [yaml_line(w, round(s / SR, 6), round(n / SR, 6)) for w, s, n in UTTS]
    txt = base / "txt"
    (txt / f"{split}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (txt / f"{split}.en").write_text("".join(f"{t}\n" for t in EN), encoding="utf-8")
    tgt = pair.split("-")[1]
    if tgt != "asr":
        (txt / f"{split}.{tgt}").write_text("".join(f"{t}\n" for t in DE), encoding="utf-8")
    return talks


def txt(root: Path, name: str) -> Path:
    return root / "en-de" / "data" / "dev" / "txt" / name


def set_yaml_line(root: Path, line: int, text: str) -> None:
    path = txt(root, "dev.yaml")
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_reads_a_good_split(tmp_path):
    talks = build(tmp_path)
    split = read_split(tmp_path, "en-de", "dev", check_audio=True)
    assert len(split) == 5 and len(split.talks) == 2
    assert [s.id for s in split] == ["ted_1_0", "ted_1_1", "ted_1_2", "ted_2_0", "ted_2_1"]
    assert [s.src for s in split] == EN
    assert [s.tgt for s in split] == DE  # U+2028 inside a line does not split it
    assert [s.line for s in split] == [1, 2, 3, 4, 5]
    assert [s.index for s in split] == list(range(5))
    assert split[3].speaker_id == "spk.2" and split[3].wav.name == "ted_2.wav"
    for seg, (wav, start, n) in zip(split, UTTS):
        audio = load_segment(seg)
        assert audio.dtype == np.float32 and audio.shape == (n,)
        np.testing.assert_array_equal(audio, talks[wav][start:start + n].astype(np.float32) / 32768)
    assert pickle.loads(pickle.dumps(split[0])) == split[0]


def test_asr_split_has_no_target(tmp_path):
    build(tmp_path, pair="en-asr")
    build(tmp_path, pair="en-de")
    assert available_pairs(tmp_path) == ["en-asr", "en-de"]
    split = MustcSplit(tmp_path, "en-asr", "dev")
    assert split.tgt_lang is None and split.tgt_path is None
    assert [s.tgt for s in split] == [None] * 5
    assert [s.src for s in split] == EN


def test_resamples_a_44k_stereo_talk_to_16k_mono(tmp_path):
    build(tmp_path)
    sr = 44100
    t = np.arange(3 * sr) / sr
    tone = np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "en-de/data/dev/wav/ted_2.wav", np.stack([0.5 * tone, 0.3 * tone], axis=1), sr,
             subtype="FLOAT")
    set_yaml_line(tmp_path, 4, yaml_line("ted_2.wav", 0.5, 1.5))
    set_yaml_line(tmp_path, 5, yaml_line("ted_2.wav", 2.0, 1.0))
    split = read_split(tmp_path, "en-de", "dev", check_audio=True)
    audio = load_segment(split[3])
    assert audio.dtype == np.float32 and audio.shape == (24000,)
    expected = 0.4 * np.sin(2 * np.pi * 440 * (0.5 + np.arange(24000) / SR))
    np.testing.assert_allclose(audio[200:-200], expected[200:-200], atol=1e-3)
    assert load_segment(split[4]).shape == (16000,)


def test_segment_ending_within_10ms_of_the_talk_end_is_clipped(tmp_path):
    build(tmp_path)
    set_yaml_line(tmp_path, 3, yaml_line("ted_1.wav", 2.5, 0.505))
    split = read_split(tmp_path, "en-de", "dev", check_audio=True)
    assert load_segment(split[2]).shape == (8000,)


def test_text_line_count_mismatch(tmp_path):
    build(tmp_path)
    txt(tmp_path, "dev.de").write_text("".join(f"{t}\n" for t in DE[:4]), encoding="utf-8")
    with pytest.raises(MustcError, match=r"dev\.de: 4 lines, but \S*dev\.yaml has 5 entries"):
        read_split(tmp_path, "en-de", "dev")


def test_source_line_count_mismatch(tmp_path):
    build(tmp_path)
    txt(tmp_path, "dev.en").write_text("".join(f"{t}\n" for t in EN + ["one too many"]), encoding="utf-8")
    with pytest.raises(MustcError, match=r"dev\.en: 6 lines, but \S*dev\.yaml has 5 entries"):
        read_split(tmp_path, "en-de", "dev")


def test_missing_target_file(tmp_path):
    build(tmp_path)
    txt(tmp_path, "dev.de").unlink()
    with pytest.raises(MustcError, match=r"dev\.de: no such file"):
        read_split(tmp_path, "en-de", "dev")


def test_missing_talk(tmp_path):
    build(tmp_path)
    (tmp_path / "en-de/data/dev/wav/ted_2.wav").unlink()
    with pytest.raises(MustcError, match=r"dev\.yaml:4: talk \S*ted_2\.wav does not exist"):
        read_split(tmp_path, "en-de", "dev")


def test_missing_split_names_the_available_ones(tmp_path):
    build(tmp_path)
    with pytest.raises(MustcError, match=r"train\.yaml: no such file.*available: dev"):
        read_split(tmp_path, "en-de", "train")
    with pytest.raises(MustcError, match=r"en-fr: no such pair \(available: en-de\)"):
        read_split(tmp_path, "en-fr", "dev")


@pytest.mark.parametrize("offset, duration, what", [
    (3.5, 0.5, "starts past the end"),
    (2.9, 0.2, "ends past the end"),
])
def test_segment_past_the_end_of_its_talk(tmp_path, offset, duration, what):
    build(tmp_path)
    set_yaml_line(tmp_path, 3, yaml_line("ted_1.wav", offset, duration))
    split = read_split(tmp_path, "en-de", "dev")  # structure is fine; the audio is checked on demand
    pattern = rf"dev\.yaml:3: segment ted_1_2 {what}.*offset {offset} s.*ted_1\.wav is 3\.000 s long"
    with pytest.raises(MustcError, match=pattern):
        load_segment(split[2])
    with pytest.raises(MustcError, match=pattern):
        split.validate()
    with pytest.raises(MustcError, match=pattern):
        read_split(tmp_path, "en-de", "dev", check_audio=True)


def test_talk_that_is_not_audio(tmp_path):
    build(tmp_path)
    (tmp_path / "en-de/data/dev/wav/ted_2.wav").write_text("not audio at all\n", encoding="utf-8")
    split = read_split(tmp_path, "en-de", "dev")
    load_segment(split[0])  # the other talk is fine
    with pytest.raises(MustcError, match=r"dev\.yaml:5: talk \S*ted_2\.wav is not a readable audio file"):
        load_segment(split[4])  # the line of the segment asked for
    with pytest.raises(MustcError, match=r"dev\.yaml:4: talk \S*ted_2\.wav is not a readable audio file"):
        split.validate()  # the line of the talk's first segment


def test_empty_segment(tmp_path):
    build(tmp_path)
    set_yaml_line(tmp_path, 2, yaml_line("ted_1.wav", 1.3, 0))
    split = read_split(tmp_path, "en-de", "dev")
    with pytest.raises(MustcError, match=r"dev\.yaml:2: segment ted_1_1 is empty"):
        load_segment(split[1])
    with pytest.raises(MustcError, match=r"dev\.yaml:2: segment ted_1_1 is empty"):
        split.validate()


@pytest.mark.parametrize("entry, message", [
    ("- {duration: abc, offset: 1.0, speaker_id: spk.1, wav: ted_1.wav}", "'duration' must be a number >= 0"),
    ("- {duration: 0.5, offset: -1.0, speaker_id: spk.1, wav: ted_1.wav}", "'offset' must be a number >= 0"),
    ("- {duration: 0.5, speaker_id: spk.1, wav: ted_1.wav}", "entry has no 'offset'"),
    ("- {duration: 0.5, offset: 1.0, speaker_id: spk.1}", "'wav' must be the file name of a talk"),
    ("- just a string", "entry is not a mapping"),
    ("- {duration: 0.5, offset: 1.0, wav: ted_1.wav", "invalid YAML"),
])
def test_malformed_yaml_entry(tmp_path, entry, message):
    build(tmp_path)
    set_yaml_line(tmp_path, 3, entry)
    with pytest.raises(MustcError, match=rf"dev\.yaml:3: {message}"):
        read_split(tmp_path, "en-de", "dev")


def test_yaml_that_is_not_a_list(tmp_path):
    build(tmp_path)
    txt(tmp_path, "dev.yaml").write_text("duration: 1.0\n", encoding="utf-8")
    with pytest.raises(MustcError, match=r"dev\.yaml:1: expected a list of entries"):
        read_split(tmp_path, "en-de", "dev")
