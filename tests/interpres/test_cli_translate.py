"""`interpres translate` and `interpres transcribe`, run in-process on a tiny random model."""

import json
import re

import numpy as np
import pytest
import soundfile as sf

from interpres.cli import main
from speech import translate

from builders import make_model_dir

SR = 16000
BURSTS = [(0.3, 1.0), (1.6, 2.4)]
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("cli") / "model")


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    """A tone burst, a pause, a tone burst, over faint noise."""
    path = tmp_path_factory.mktemp("audio") / "talk.wav"
    t = np.arange(3 * SR) / SR
    wave = 1e-3 * np.random.default_rng(0).standard_normal(len(t))
    for start, end in BURSTS:
        on = (t >= start) & (t < end)
        wave[on] += 0.5 * np.sin(2 * np.pi * 440 * t[on])
    sf.write(path, wave.astype(np.float32), SR)
    return path


def error_of(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("interpres: error: ") and "Traceback" not in err
    return err


def test_translate_json_has_one_entry_per_language(model_dir, wav, capsys):
    assert main(["translate", str(wav), "--tgt", "de,fr", "--model", str(model_dir), "--format", "json",
                 "--beam", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(d["file"], d["lang"]) for d in data] == [(str(wav), "de"), (str(wav), "fr")]
    for entry in data:
        assert len(entry["segments"]) == 2
        for seg, (start, end) in zip(entry["segments"], BURSTS):
            assert abs(seg["start"] - start) <= 0.05 and abs(seg["end"] - end) <= 0.05
            assert isinstance(seg["text"], str)


def test_translate_text_and_srt(model_dir, wav, tmp_path, capsys):
    assert main(["translate", str(wav), "--tgt", "de", "--model", str(model_dir), "--beam", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    out = tmp_path / "talk.srt"
    assert main(["translate", str(wav), "--tgt", "de,fr", "--model", str(model_dir), "--format", "srt",
                 "--out", str(out)]) == 0
    assert "talk.de.srt" in capsys.readouterr().err
    srt = (tmp_path / "talk.fr.srt").read_text()
    assert re.match(r"1\n00:00:00,\d{3} --> 00:00:01,\d{3}\n.+\n\n2\n00:00:01,\d{3} --> 00:00:02,\d{3}\n", srt)


def test_transcribe_decodes_into_english(tmp_path, wav, capsys):
    asr = make_model_dir(tmp_path / "asr", langs=("en",), task="asr")
    assert main(["transcribe", str(wav), "--model", str(asr), "--format", "json", "--beam", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["lang"] for d in data] == ["en"] and len(data[0]["segments"]) == 2


def test_errors_are_messages_naming_the_culprit(model_dir, wav, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "missing.wav"
    assert str(missing) in error_of(capsys, ["translate", str(missing), "--tgt", "de", "--model", str(model_dir)])
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio at all")
    err = error_of(capsys, ["translate", str(not_audio), "--tgt", "de", "--model", str(model_dir)])
    assert str(not_audio) in err and "not a readable audio file" in err
    err = error_of(capsys, ["translate", str(wav), "--tgt", "de,xx", "--model", str(model_dir)])
    assert "'xx'" in err and "de, fr" in err
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert "config.json" in error_of(capsys, ["translate", str(wav), "--tgt", "de", "--model", str(empty)])
    assert "no such model directory" in error_of(capsys, ["transcribe", str(wav), "--model", str(tmp_path / "no")])
    err = error_of(capsys, ["transcribe", str(wav), "--model", str(model_dir)])
    assert "cannot transcribe English" in err
    monkeypatch.setattr(translate, "BUNDLED_MODEL_DIR", tmp_path / "bundled")
    monkeypatch.setattr(translate, "BUNDLED_ASR_DIR", tmp_path / "bundled-asr")
    assert "no bundled model yet; pass --model DIR" in error_of(capsys, ["translate", str(wav), "--tgt", "de"])
    assert "no bundled model yet" in error_of(capsys, ["transcribe", str(wav)])
    assert "--tgt names no language" in error_of(capsys, ["translate", str(wav), "--tgt", ","])


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "translate" in out and "transcribe" in out
    with pytest.raises(SystemExit):
        main(["translate", "--help"])
    out = capsys.readouterr().out
    for option in ("--tgt", "--model", "--beam", "--format", "--batch-frames", "--lenpen", "--no-repeat-ngram-size",
                   "--max-len-a", "--max-len-b", "--out"):
        assert option in out
    with pytest.raises(SystemExit) as e:
        main(["translate", "a.wav", "--tgt", "de", "--beam", "0"])
    assert e.value.code == 2


@pytest.mark.slow
@pytest.mark.skipif(not translate.BUNDLED_MODEL_DIR.joinpath("config.json").exists(), reason="no bundled model")
def test_the_bundled_model_needs_no_model_argument(wav, capsys):
    """After install, translate and transcribe work with the model shipped in the package."""
    langs = ["de", "es", "fr", "it", "nl", "pt", "ro", "ru", "ja", "zh"]
    assert main(["translate", str(wav), "--tgt", ",".join(langs), "--format", "json", "--beam", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["lang"] for r in out] == langs
    assert all(r["segments"] and r["segments"][0]["end"] > r["segments"][0]["start"] for r in out)
    assert main(["transcribe", str(wav), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["lang"] == "en"
    card = (translate.BUNDLED_MODEL_DIR / "README.md").read_text()
    assert "## Recipe" in card and "tst-VOICE" in card
    assert (translate.BUNDLED_MODEL_DIR / "model.safetensors").stat().st_size < 25e6


@pytest.mark.slow
@pytest.mark.skipif(not translate.BUNDLED_ASR_DIR.joinpath("config.json").exists(), reason="no bundled ASR model")
def test_the_bundled_asr_model_transcribes_with_no_model_argument(wav, capsys):
    """The ASR model ships beside the translator, and transcribe uses it with no model argument."""
    assert translate.load_translator(None, task="asr").model_dirs == [translate.BUNDLED_ASR_DIR]
    assert main(["transcribe", str(wav), "--format", "json", "--beam", "2"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["lang"] == "en"
    card = (translate.BUNDLED_ASR_DIR / "README.md").read_text()
    assert card.startswith("# interpres ASR model") and "tst-VOICE" in card and "en-asr" in card
    sizes = [(d / "model.safetensors").stat().st_size for d in (translate.BUNDLED_ASR_DIR, translate.BUNDLED_MODEL_DIR)]
    assert max(sizes) < 25e6 and sum(sizes) < 25e6  # each within the limit, and both together


def test_a_bad_out_fails_before_any_decoding(model_dir, wav, tmp_path, capsys, monkeypatch):
    decoded = []
    real = translate.translate_files
    monkeypatch.setattr(translate, "translate_files", lambda *a, **k: decoded.append(1) or real(*a, **k))
    base = ["translate", str(wav), "--tgt", "de", "--model", str(model_dir)]
    assert "is a directory; name a file" in error_of(capsys, [*base, "--out", str(tmp_path)])
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    err = error_of(capsys, [*base, "--out", str(blocker / "sub" / "out.txt")])
    assert f"{blocker} is not a directory" in err
    err = error_of(capsys, ["translate", str(wav), str(wav), "--tgt", "de", "--model", str(model_dir),
                            "--format", "srt", "--out", str(tmp_path / "t.srt")])
    assert "would write the same SRT" in err
    assert decoded == []
    assert main([*base, "--out", str(tmp_path / "new" / "dir" / "out.txt")]) == 0  # folders are made
    assert decoded == [1] and (tmp_path / "new" / "dir" / "out.txt").read_text().strip()


def test_one_bad_file_does_not_stop_the_others(model_dir, wav, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    missing = tmp_path / "missing.wav"
    out = tmp_path / "out.json"
    argv = ["translate", str(bad), str(wav), str(missing), "--tgt", "de", "--model", str(model_dir),
            "--format", "json", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"interpres: error: {bad}: not a readable audio file" in err
    assert f"interpres: error: {missing}: no such file" in err and "2 of 3 files could not be read" in err
    assert [r["file"] for r in json.loads(out.read_text())] == [str(wav)]
    assert main([*argv, "--skip-bad"]) == 0
    assert f"interpres: warning: {bad}" in capsys.readouterr().err
    assert main(["translate", str(bad), str(missing), "--tgt", "de", "--model", str(model_dir), "--skip-bad"]) == 2
    assert "none of the 2 files could be read" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["translate", "x.wav", "--tgt", "de", "--lenpen", "nan"],
    ["translate", "x.wav", "--tgt", "de", "--ctc-weight", "inf"],
    ["transcribe", "x.wav", "--max-len-a", "nan"],
    ["simul", "--realtime", "nan"],
    ["simul", "--threshold", "nan"],
    ["stream", "x.wav", "--tgt", "de", "--min-pause-s", "inf"],
    ["eval", "mustc", "--root", "r", "--pairs", "en-de", "--lenpen", "inf"],
])
def test_nan_or_infinite_numbers_are_refused_by_name(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "must be a finite number" in err and "Traceback" not in err
    assert argv[-2] in err  # the option is named
