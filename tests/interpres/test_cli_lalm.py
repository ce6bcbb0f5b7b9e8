"""The audio-language model end to end through the CLI, at the tiny scale: `data scenes`,
`train lalm` (hearing through a tiny speech model), `eval aha` (resumable) and `ask`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from builders import make_model_dir
from interpres.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "audio_align" / "configs"


@pytest.mark.slow
def test_scenes_train_eval_and_ask(tmp_path, capsys, monkeypatch):
    if any(shutil.which(p) is None for p in ("apt-get", "dpkg", "espeak-ng", "flite", "sox")):
        pytest.skip("needs apt-get/dpkg for the sound packages and espeak-ng, flite and sox (make install)")
    monkeypatch.delenv("INTERPRES_HOME", raising=False)
    home = tmp_path / "home"
    assert main(["data", "scenes", "--size", "tiny", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "scene corpus in" in out and "questions" in out
    root = home / "scenes" / "tiny"
    for split in ("train", "dev", "test"):
        assert (root / split / "qa.jsonl").read_text().strip()

    encoder = make_model_dir(tmp_path / "ear", langs=("en",), task="asr")
    run = tmp_path / "run"
    assert main(["train", "lalm", str(CONFIGS / "lalm_tiny.yaml"), f"out={run}", f"lalm.audio_encoder={encoder}",
                 "--home", str(home)]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["family"] == "lalm" and config["updates"] == 6 and "overall" in config["dev_scores"]

    report = tmp_path / "aha"
    args = ["eval", "aha", "--model", str(run / "model"), "--scenes", "tiny", "--out", str(report), "--home", str(home)]
    assert main(args) == 0
    scores = json.loads((report / "scores.json").read_text())
    assert {"overall", "general", "omission", "identity", "temporal", "quantitative"} <= set(scores)
    assert all(0.0 <= scores[k] <= 1.0 for k in ("overall", "general"))
    assert (report / "scores.png").stat().st_size > 0 and "| overall |" in (report / "scores.md").read_text()
    lines = (report / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 1 + scores["questions"]
    # a run killed half way resumes: the answers already written are kept, the rest redone
    (report / "predictions.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n" + lines[len(lines) // 2][:9])
    assert main(args) == 0
    assert json.loads((report / "scores.json").read_text())["table"] == scores["table"]
    resumed = (report / "predictions.jsonl").read_text().splitlines()
    assert len(resumed) == len(lines) and [json.loads(x)["i"] for x in resumed[1:]] == list(range(len(lines) - 1))

    # the language prior alone: the same questions with the encoder states zeroed
    assert main([*args[:-4], "--out", str(tmp_path / "blind"), "--no-audio", "--home", str(home)]) == 0
    blind = json.loads((tmp_path / "blind" / "scores.json").read_text())
    assert blind["no_audio"] and not scores["no_audio"] and blind["questions"] == scores["questions"]

    # alignment: pairs with provenance, cached reference log-probs, DPO; resumed runs do nothing
    from audio_align import prefs

    aligned = tmp_path / "dpo"
    align_args = ["align", str(CONFIGS / "align_tiny.yaml"), f"out={aligned}", f"init={run / 'model'}", "--home", str(home)]
    assert main(align_args) == 0
    config = json.loads((aligned / "model" / "config.json").read_text())
    assert config["stage"] == "align" and config["method"] == "dpo" and config["updates"] == 4
    header, pairs = prefs.read_pairs(aligned / "pairs.jsonl")
    assert pairs and len(pairs) <= 200 and header["provenance"] == prefs.provenance(pairs)
    assert any(p.source.startswith("rule:") for p in pairs)
    # the counterfactual scenes (two of each edit) and their pairs, the prior's answers rejected
    edited = [p for p in pairs if p.source.startswith("counterfactual:")]
    assert {p.scene.rsplit("~", 1)[1] for p in edited if "~" in p.scene} == {"swap", "cut"}
    assert {p.source.split("/")[0] for p in edited if "~" not in p.scene} == {"counterfactual:original"}
    assert any(p.source == "counterfactual:swap_order/reverse_order" for p in edited)
    assert len(list((aligned / "counterfactual" / "encoded").rglob("*.safetensors"))) == 1
    assert all(p.chosen != p.rejected for p in pairs)
    assert (aligned / "reference.safetensors").is_file() and (aligned / "pairs_dev.jsonl").is_file()
    weights = (aligned / "model" / "model.safetensors").read_bytes()
    assert main(align_args) == 0 and (aligned / "model" / "model.safetensors").read_bytes() == weights
    # STA on the same pairs: one steering token is all that trains
    sta = tmp_path / "sta"
    assert main([*align_args[:2], f"out={sta}", f"init={run / 'model'}", "train_params=prefix", f"pairs_from={aligned}",
                 "lr=0.01", "--home", str(home)]) == 0
    assert (sta / "pairs.jsonl").read_text() == (aligned / "pairs.jsonl").read_text()
    config = json.loads((sta / "model" / "config.json").read_text())
    assert config["trainable_parameters"] == config["lalm"]["hidden_size"] and config["lalm"]["prefix_tokens"] == 1
    # before/after: paired differences against the instruction-tuned model's evaluation
    after = tmp_path / "aha-dpo"
    assert main(["eval", "aha", "--model", str(aligned / "model"), "--scenes", "tiny", "--out", str(after),
                 "--baseline", str(report), "--home", str(home)]) == 0
    cmp = json.loads((after / "scores.json").read_text())["vs_baseline"]["table"]
    assert cmp["overall"]["baseline"] == pytest.approx(scores["overall"]) and "difference" in (after / "scores.md").read_text()
    capsys.readouterr()
    assert main(["eval", "aha", "--model", str(aligned / "model"), "--scenes", "tiny", "--out", str(after),
                 "--baseline", str(tmp_path / "blind"), "--home", str(home)]) == 2
    assert "not the same questions" in capsys.readouterr().err
    # CoDA: heads chosen on dev scenes, amplified while decoding; compared with the plain run
    coda = tmp_path / "aha-coda"
    assert main([*args[:-4], "--out", str(coda), "--coda", "1.5:1", "--baseline", str(report), "--home", str(home)]) == 0
    got = json.loads((coda / "scores.json").read_text())
    assert got["coda"]["scale"] == 1.5 and len(got["coda"]["heads"]) == 1 and got["answer_seconds"] > 0
    # guided choice: every general question's answer is one of its options; the free answers of the
    # other questions are those of the plain run
    guided = tmp_path / "aha-guided"
    assert main([*args[:-4], "--out", str(guided), "--guided-choice", "--baseline", str(report), "--home", str(home)]) == 0
    rows = [json.loads(x) for x in (guided / "predictions.jsonl").read_text().splitlines()[1:]]
    plain = {r["i"]: r for r in (json.loads(x) for x in (report / "predictions.jsonl").read_text().splitlines()[1:])}
    assert any(r["options"] for r in rows) and json.loads((guided / "scores.json").read_text())["guided_choice"]
    assert all(r["prediction"] in r["options"] if r["options"] else r["prediction"] == plain[r["i"]]["prediction"]
               for r in rows)
    with pytest.raises(SystemExit) as bad:
        main([*args[:-4], "--out", str(coda), "--coda", "0:1", "--home", str(home)])
    assert bad.value.code == 2 and "SCALE must be a positive number" in capsys.readouterr().err

    # the compression chain (issue 25, item 5): the model's own encoder copy pruned by Taylor
    # scores, re-distilled (its states, then the answers by KD), int8, a report of every variant
    monkeypatch.setenv("INTERPRES_HOME", str(home))
    comp = tmp_path / "compress"
    assert main(["compress", str(CONFIGS / "compress_lalm_tiny.yaml"), f"out={comp}", f"teacher=[{run / 'model'}]"]) == 0
    pruned = json.loads((comp / "2-prune" / "model" / "config.json").read_text())
    assert pruned["lalm"]["ear"]["model"]["encoder_layers"] == 1 and pruned["lalm"]["ear"]["model"]["encoder_layout"] == [[2, 64]]
    ear_stage = json.loads((comp / "3-redistill" / "ear" / "model" / "config.json").read_text())
    assert ear_stage["stage"] == "ear" and ear_stage["updates"] == 3 and ear_stage["dev_mse"] >= 0
    student = json.loads((comp / "3-redistill" / "lm" / "model" / "config.json").read_text())
    assert student["stage"] == "sft" and student["recipe"]["teacher"] == str(run / "model")
    report_md = (comp / "report" / "report.md").read_text()
    for name in ("teacher", "pruned", "re-distilled", "teacher int8", "student int8"):
        assert f"| {name} |" in report_md, report_md
    # the student answers through its own encoder, from the CLI like any model
    capsys.readouterr()
    wav0 = root / "test" / "wav" / "test-000000.wav"
    assert main(["ask", str(wav0), "Is there a bell?", "--model", str(comp / "3-redistill" / "lm" / "model")]) == 0
    assert capsys.readouterr().out.strip()

    # the bundle: fp16 weights, the card with the AHA-Eval table; it loads and answers
    from audio_align.lalm import load_lalm_dir
    from audio_align.model_card import main as card_main

    bundle = tmp_path / "bundle"
    assert card_main(["bundle", str(run / "model"), str(bundle), "--scores", str(report / "scores.json"),
                      "--scores", str(tmp_path / "blind" / "scores.json")]) == 0
    card = (bundle / "README.md").read_text()
    assert "## AHA-Eval" in card and "| set | held-out templates | held-out templates, no audio |" in card
    assert "| overall | " in card
    assert load_lalm_dir(bundle)[2]["family"] == "lalm"

    wav = root / "test" / "wav" / "test-000000.wav"
    capsys.readouterr()
    assert main(["ask", str(wav), "Is there a bell in the recording?", "--model", str(run / "model")]) == 0
    from audio_align.evaluate import ask
    from speech.audio import load_audio

    assert capsys.readouterr().out == ask(run / "model", load_audio(wav), "Is there a bell in the recording?") + "\n"
    assert main(["ask", str(wav), "Is there a bell?", "What was the first sound?", "--model", str(run / "model")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:3] for line in lines] == ["Q: ", "A: ", "Q: ", "A: "] and lines[2] == "Q: What was the first sound?"
    assert main(["ask", str(wav), "Is there a bell?", "--choice", "yes", "--choice", "no", "--model", str(run / "model")]) == 0
    assert capsys.readouterr().out in ("yes\n", "no\n")
    assert main(["ask", str(wav), "Is there a bell?", "--choice", " ", "--model", str(run / "model")]) == 2
    assert "non-empty options" in capsys.readouterr().err
    assert main(["ask", str(wav), "  ", "--model", str(run / "model")]) == 2
    assert "the question is empty" in capsys.readouterr().err
    assert main(["eval", "aha", "--model", str(tmp_path / "nothing"), "--scenes", "tiny", "--home", str(home)]) == 2
    assert "not a LALM model directory" in capsys.readouterr().err
