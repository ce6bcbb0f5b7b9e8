"""MuST-C evaluation on a tiny corpus written here and a tiny random model: scores, order, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU, CHRF

from speech import evaluate as ev
from speech import metrics
from speech.config import ConfigError
from speech.data.mustc import MustcError
from speech.decode import DecodingOptions
from speech.evaluate import EvalOptions, evaluate_mustc
from speech.features import num_frames
from speech.metrics import word_error_rate
from speech.translate import TranslateError, load_translator

from builders import SPLIT, SR, TEXTS, UTTS, build_eval_corpus, make_model_dir

FAST = DecodingOptions(beam_size=2, max_len_b=10)


def read_lines(path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("eval") / "model", langs=("de", "fr", "en"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_eval_corpus(tmp_path_factory.mktemp("mustc"))


def options(root, out, **kw) -> EvalOptions:
    return EvalOptions(**{"root": root, "pairs": ["en-de", "en-fr"], "split": SPLIT, "decoding": FAST,
                          "batch_frames": 250, "out": out, **kw})


def oracle(translator):
    """Make ``translator`` answer each utterance with its reference (known by its frame count)."""
    by_frames = {num_frames(round(d * SR), translator.feature_cfg): i for i, (_, _, d) in enumerate(UTTS)}
    translator.decode = lambda feats, langs, opts: [[(by_frames[len(f)], lang) for lang in langs] for f in feats]
    translator.text = lambda r: TEXTS[r[1]][r[0]]
    return translator


def comparable(report: dict) -> dict:
    """The report without what depends on the clock or the output directory."""
    report = json.loads(json.dumps(report))
    for e in report["pairs"].values():
        for key in ("wall_seconds", "rtf", "hypotheses"):
            e.pop(key)
    return report


def test_scores_are_sacrebleus_on_the_written_files(corpus, model_dir, tmp_path):
    out = tmp_path / "out"
    report = evaluate_mustc(options(corpus, out, models=[model_dir], also_asr=True))
    assert json.loads((out / "scores.json").read_text()) == report
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "scores.md").read_text()
    assert "| en-de |" in md and "| en-fr |" in md and "tok:13a" in md
    for pair, lang in (("en-de", "de"), ("en-fr", "fr")):
        e = report["pairs"][pair]
        hyps = read_lines(out / pair / f"{SPLIT}.hyp.{lang}")
        refs = read_lines(corpus / pair / "data" / SPLIT / "txt" / f"{SPLIT}.{lang}")
        assert len(hyps) == len(UTTS) == e["n_utterances"] and e["n_skipped"] == 0
        bleu, chrf = BLEU(tokenize="13a"), CHRF()
        assert e["bleu"] == bleu.corpus_score(hyps, [refs]).score
        assert e["chrf"] == chrf.corpus_score(hyps, [refs]).score
        assert e["bleu_signature"] == str(bleu.get_signature()) and "tok:13a" in e["bleu_signature"]
        assert e["chrf_signature"] == str(chrf.get_signature())
        en = read_lines(out / pair / f"{SPLIT}.hyp.en")
        assert len(en) == len(UTTS) and e["wer"] == word_error_rate(en, TEXTS["en"])
        assert e["audio_seconds"] == pytest.approx(sum(d for _, _, d in UTTS))
        assert e["wall_seconds"] > 0 and e["rtf"] == pytest.approx(e["wall_seconds"] / e["audio_seconds"], abs=1e-3)
    assert report["beam"] == 2 and report["split"] == SPLIT and report["models"] == [str(model_dir)]


def test_hypotheses_come_back_in_yaml_order_from_every_shard(corpus, model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    translator = oracle(load_translator(model_dir))
    # two ranks, one after the other: rank 1 only logs its shard, rank 0 merges both
    for rank in (1, 0):
        monkeypatch.setattr(ev, "_dist", lambda rank=rank: (rank, 2, False))
        report = evaluate_mustc(options(corpus, out, batch_frames=120), translator)
        assert (report is None) == (rank == 1)
    assert sorted(p.name for p in (out / "en-de").glob("*.progress*")) == [
        f"{SPLIT}.progress.rank0-of-2.jsonl", f"{SPLIT}.progress.rank1-of-2.jsonl"]
    for pair, lang in (("en-de", "de"), ("en-fr", "fr")):
        assert read_lines(out / pair / f"{SPLIT}.hyp.{lang}") == TEXTS[lang]
        assert report["pairs"][pair]["bleu"] == pytest.approx(100.0) and report["workers"] == 2


def test_asr_pair_and_task_asr_score_wer(tmp_path, model_dir):
    root = build_eval_corpus(tmp_path / "c", pairs=("en-asr", "en-de"))
    translator = oracle(load_translator(model_dir))
    report = evaluate_mustc(options(root, tmp_path / "o", pairs=["en-asr", "en-de"], task="asr"), translator)
    for pair in ("en-asr", "en-de"):
        e = report["pairs"][pair]
        assert e["wer"] == 0.0 and "bleu" not in e and e["langs"] == ["en"]
        assert "lower-cased" in e["wer_signature"]
        assert read_lines(tmp_path / "o" / pair / f"{SPLIT}.hyp.en") == TEXTS["en"]


def test_interrupted_run_resumes_without_decoding_twice(corpus, model_dir, tmp_path, caplog):
    whole = evaluate_mustc(options(corpus, tmp_path / "a", models=[model_dir]))

    translator = load_translator(model_dir)
    real = translator.decode
    calls: list[int] = []

    def counting(feats, langs, opts, stop_at=None):
        if stop_at is not None and len(calls) == stop_at:
            raise KeyboardInterrupt
        calls.append(len(feats))
        return real(feats, langs, opts)

    translator.decode = lambda f, l, o: counting(f, l, o, stop_at=4)  # en-de has 3 batches, en-fr 1 of 3
    with pytest.raises(KeyboardInterrupt):
        evaluate_mustc(options(corpus, tmp_path / "b"), translator)
    assert len(calls) == 4 and sum(calls[:3]) == len(UTTS)
    header, *batches = [json.loads(x) for x in read_lines(tmp_path / "b/en-de" / f"{SPLIT}.progress.jsonl")]
    assert "fingerprint" in header and len(batches) == 3
    log = tmp_path / "b" / "en-fr" / f"{SPLIT}.progress.jsonl"
    header, *batches = [json.loads(x) for x in read_lines(log)]
    assert "fingerprint" in header and len(batches) == 1 and len(batches[0]["utts"]) == calls[3]
    assert not (tmp_path / "b" / "scores.json").exists()
    with open(log, "ab") as f:  # a line cut short by a kill
        f.write(b'{"batch": 1, "seconds": 0.1, "utts": [{"ind')

    translator.decode = lambda f, l, o: counting(f, l, o)
    resumed = evaluate_mustc(options(corpus, tmp_path / "b"), translator)
    assert sum(calls) == 2 * len(UTTS)  # every utterance of both pairs decoded once
    assert comparable(resumed) == comparable(whole)
    for pair, lang in (("en-de", "de"), ("en-fr", "fr")):
        assert (tmp_path / "a" / pair / f"{SPLIT}.hyp.{lang}").read_text() == \
               (tmp_path / "b" / pair / f"{SPLIT}.hyp.{lang}").read_text()
    assert "cut short" in caplog.text

    # finished: running again decodes nothing; other settings start the pair over
    calls.clear()
    assert comparable(evaluate_mustc(options(corpus, tmp_path / "b"), translator)) == comparable(whole)
    assert calls == []
    evaluate_mustc(options(corpus, tmp_path / "b", pairs=["en-de"], decoding=DecodingOptions(beam_size=1,
                                                                                           max_len_b=10)), translator)
    assert sum(calls) == len(UTTS) and "(decoding differ); starting en-de over" in caplog.text


def test_skip_bad_counts_bad_segments_and_scores_them_empty(tmp_path, model_dir):
    root = build_eval_corpus(tmp_path / "c")
    yaml = root / "en-de" / "data" / SPLIT / "txt" / f"{SPLIT}.yaml"
    lines = yaml.read_text().splitlines()
    lines[2] = lines[2].replace("offset: 2.3", "offset: 9.5")  # past the end of the 4 s talk
    yaml.write_text("\n".join(lines) + "\n")
    (root / "en-de" / "data" / SPLIT / "wav" / "ted_9.wav").write_text("not audio")
    (root / "en-fr" / "data" / SPLIT / "wav" / "ted_9.wav").unlink()
    fr_yaml = root / "en-fr" / "data" / SPLIT / "txt" / f"{SPLIT}.yaml"
    fr_yaml.write_text(fr_yaml.read_text().replace("duration: 0.8,", "duration: 0.0,"))  # an empty segment

    with pytest.raises(MustcError, match=rf"{yaml}:3: segment ted_7_2 starts past the end"):
        evaluate_mustc(options(root, tmp_path / "o", pairs=["en-de"]), load_translator(model_dir))
    with pytest.raises(MustcError, match=r"ted_9.wav does not exist"):
        evaluate_mustc(options(root, tmp_path / "o", pairs=["en-fr"]), load_translator(model_dir))
    yaml.write_text(yaml.read_text().replace("offset: 9.5", "offset: 2.3"))
    with pytest.raises(MustcError, match=r"ted_9.wav is not a readable audio file"):
        evaluate_mustc(options(root, tmp_path / "o", pairs=["en-de"]), load_translator(model_dir))
    yaml.write_text(yaml.read_text().replace("offset: 2.3", "offset: 9.5"))

    translator = oracle(load_translator(model_dir))
    report = evaluate_mustc(options(root, tmp_path / "o", skip_bad=True), translator)
    de, fr = report["pairs"]["en-de"], report["pairs"]["en-fr"]
    assert [s["id"] for s in de["skipped"]] == ["ted_7_2", "ted_9_0", "ted_9_1"] and de["n_skipped"] == 3
    assert f"{yaml}:3: segment ted_7_2 starts past the end" in de["skipped"][0]["reason"]
    assert "not a readable audio file" in de["skipped"][1]["reason"]
    assert [s["id"] for s in fr["skipped"]] == ["ted_7_0", "ted_9_0", "ted_9_1"] and fr["n_skipped"] == 3
    assert f"{fr_yaml}:1: segment ted_7_0 is empty" in fr["skipped"][0]["reason"]
    talk = root / "en-fr" / "data" / SPLIT / "wav" / "ted_9.wav"
    assert fr["skipped"][1]["reason"] == f"{fr_yaml}:4: talk {talk} does not exist"
    assert "interpres-eval-" not in json.dumps(report)  # reasons name the real corpus, not the shadow
    for pair, lang, bad in (("en-de", "de", {2, 3, 4}), ("en-fr", "fr", {0, 3, 4})):
        hyps = read_lines(tmp_path / "o" / pair / f"{SPLIT}.hyp.{lang}")
        assert hyps == ["" if i in bad else t for i, t in enumerate(TEXTS[lang])]  # kept, as empty lines
        e = report["pairs"][pair]
        assert e["bleu"] == BLEU().corpus_score(hyps, [TEXTS[lang]]).score < 100
        assert e["n_utterances"] == len(UTTS)
        assert e["audio_seconds"] == pytest.approx(sum(d for i, (_, _, d) in enumerate(UTTS) if i not in bad))
        assert e["bleu"] > 0
    assert "skipped" in (tmp_path / "o" / "scores.md").read_text()

    def no_decoding(*args):
        raise AssertionError("decoded again")

    translator.decode = no_decoding  # finished, with a talk missing: the run resumes, it does not start over
    assert evaluate_mustc(options(root, tmp_path / "o", skip_bad=True), translator)["pairs"] == report["pairs"]


def test_split_level_problems_stay_errors_with_skip_bad(tmp_path, model_dir):
    root = build_eval_corpus(tmp_path / "c", pairs=("en-de",))
    de = root / "en-de" / "data" / SPLIT / "txt" / f"{SPLIT}.de"
    de.write_text("".join(s + "\n" for s in TEXTS["de"][:4]))
    with pytest.raises(MustcError, match=rf"{de}: 4 lines, but .* has 5 entries"):
        evaluate_mustc(options(root, tmp_path / "o", pairs=["en-de"], skip_bad=True), load_translator(model_dir))


def test_errors_name_the_culprit(corpus, model_dir, tmp_path):
    translator = load_translator(model_dir)
    with pytest.raises(MustcError, match=r"en-xx: no such pair \(available: en-de, en-fr\)"):
        evaluate_mustc(options(corpus, tmp_path / "o", pairs=["en-xx"]), translator)
    with pytest.raises(MustcError, match=r"split 'dev' is missing \(available: tst-COMMON\)"):
        evaluate_mustc(options(corpus, tmp_path / "o", split="dev"), translator)
    only_de = tmp_path / "only_de"
    shutil.copytree(model_dir, only_de)
    config = json.loads((only_de / "config.json").read_text())
    (only_de / "config.json").write_text(json.dumps({**config, "languages": ["de"]}))
    with pytest.raises(TranslateError, match=r"unknown target language 'fr' \(the model knows: de\)"):
        evaluate_mustc(options(corpus, tmp_path / "o", models=[only_de]))
    with pytest.raises(TranslateError, match=r"unknown target language 'en' \(the model knows: de\)"):
        evaluate_mustc(options(corpus, tmp_path / "o", pairs=["en-de"], models=[only_de], also_asr=True))
    (only_de / "config.json").unlink()
    with pytest.raises(TranslateError, match=rf"{only_de / 'config.json'}: not found"):
        evaluate_mustc(options(corpus, tmp_path / "o", models=[only_de]))
    with pytest.raises(ConfigError, match=r"--runtime: unknown runtime 'tensorrt' \(known: torch, torch-int8, onnx, onnx-int8\)"):
        evaluate_mustc(options(corpus, tmp_path / "o", runtime="tensorrt"), translator)
    assert not (tmp_path / "o").exists()


def test_japanese_falls_back_to_characters_and_says_so(monkeypatch):
    monkeypatch.setattr(metrics, "mecab_available", lambda: False)
    scores = metrics.score_translation("ja", ["今日は晴れです"], ["今日は晴れです"])
    assert "tok:char" in scores["bleu_signature"] and "ja-mecab" in scores["note"]
    assert metrics.bleu_tokenizer("zh") == ("zh", None) and metrics.bleu_tokenizer("de") == ("13a", None)
    assert metrics.asr_normalize("Hello, World! It's \"done\".") == "hello world it's done"
