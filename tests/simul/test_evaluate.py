"""``eval simul`` on the tiny model: SimulEval's files, scores that equal the references'
own computations, and resuming after a kill."""

import json

import pytest
import sacrebleu

import simul.evaluate as ev
from simul.evaluate import SimulEvalOptions, evaluate_simul
from simul.latency import corpus_latency

KEYS = {"index", "prediction", "delays", "elapsed", "prediction_length", "reference", "source", "source_length"}


def opts_for(tiny_simul, out, **kw):
    kw = {"policies": ["full", "seg:0.5", "waitk:3", "la:4"], "max_docs": 4, **kw}
    return SimulEvalOptions(model=tiny_simul.bundle, segmenter=tiny_simul.bundle / "segmenter",
                            corpus=str(tiny_simul.corpus), out=out, **kw)


def read_log(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def report(tiny_simul, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("eval")
    return out, evaluate_simul(opts_for(tiny_simul, out))


def test_writes_simuleval_files_and_scores_them_as_the_references_do(report):
    out, rep = report
    assert set(rep["parts"]) == {"general", "domain"}
    for part, r in rep["parts"].items():
        assert r["documents"] == 4
        assert set(r["agents"]) == {"full-sentence", "seg-0.5", "waitk-3", "la-4"}
        for name, scores in r["agents"].items():
            log = read_log(out / part / name / "instances.log")
            assert [d["index"] for d in log] == [0, 1, 2, 3]
            for d in log:
                assert set(d) == KEYS
                assert d["prediction_length"] == len(d["prediction"].split()) == len(d["delays"])
                assert d["source_length"] == len(d["source"])
                assert all(1 <= x <= d["source_length"] for x in d["delays"]) and d["delays"] == sorted(d["delays"])
            bleu = sacrebleu.corpus_bleu([d["prediction"] for d in log], [[d["reference"] for d in log]]).score
            assert scores["BLEU"] == pytest.approx(bleu, abs=1e-3)
            for k, v in corpus_latency(log).items():
                assert scores[k] == pytest.approx(v, abs=1e-3)
            header, values = (out / part / name / "scores.tsv").read_text().splitlines()
            tsv = dict(zip(header.split("\t"), map(float, values.split("\t"))))
            assert tsv["BLEU"] == pytest.approx(scores["BLEU"], abs=1e-3)
            assert tsv["LAAL"] == pytest.approx(scores["LAAL"], abs=1e-3)
            lo, hi = scores["BLEU_ci"]
            assert lo <= hi and (lo <= scores["BLEU"] + 1e-6 or hi == 0)
        # the oracle waits for whole sentences: never earlier than any other policy starts
        assert r["agents"]["full-sentence"]["segments"] >= 4
    assert (out / "bleu_al.png").stat().st_size > 1000
    md = (out / "scores.md").read_text()
    assert "| waitk-3 |" in md and "### domain test" in md
    assert json.loads((out / "scores.json").read_text()) == json.loads(json.dumps(rep))


def test_resumes_after_the_last_finished_instance(report, tiny_simul, monkeypatch):
    out, _ = report
    log_path = out / "general" / "waitk-3" / "instances.log"
    before = read_log(log_path)
    lines = log_path.read_text(encoding="utf-8").splitlines(keepends=True)
    log_path.write_text("".join(lines[:2]) + lines[2][:15], encoding="utf-8")  # killed mid-write

    calls = []
    real = ev.run_stream

    def counting(agent, source, doc=None):
        calls.append(agent.name)
        return real(agent, source, doc)

    monkeypatch.setattr(ev, "run_stream", counting)
    evaluate_simul(opts_for(tiny_simul, out))
    assert calls == ["waitk-3", "waitk-3"]  # only the two lost instances, nothing else
    after = read_log(log_path)
    strip = [{k: v for k, v in d.items() if k != "elapsed"} for d in before]
    assert [{k: v for k, v in d.items() if k != "elapsed"} for d in after] == strip


def test_other_settings_do_not_reuse_a_log(report, tiny_simul, monkeypatch):
    out, _ = report
    calls = []
    real = ev.run_stream
    monkeypatch.setattr(ev, "run_stream", lambda a, s, d=None: calls.append(a.name) or real(a, s, d))
    rep = evaluate_simul(opts_for(tiny_simul, out, max_docs=2, parts=["domain"]))
    assert len(calls) == 4 * 2 and rep["parts"]["domain"]["documents"] == 2
    assert len(read_log(out / "domain" / "la-4" / "instances.log")) == 2


def test_bad_options_name_the_culprit(tiny_simul, tmp_path):
    with pytest.raises(ev.SimulEvalError, match="part 'nope'"):
        evaluate_simul(opts_for(tiny_simul, tmp_path, parts=["nope"]))
    o = opts_for(tiny_simul, tmp_path)
    o.policies = ["waitk-trained:3"]
    with pytest.raises(ev.SimulEvalError, match="waitk-trained"):
        evaluate_simul(o)


def test_repeated_sentences_counts_copies_the_reference_does_not_have():
    from simul.evaluate import repeated_sentences

    demo = "Enter a valid number. Enter a valid number. Enter a valid number"
    assert repeated_sentences(demo, "Enter a valid integer. Enter a valid time.") == 2
    assert repeated_sentences(demo, "Enter a valid number. Enter a valid number. Enter a valid number.") == 0
    assert repeated_sentences("Really? (y/N) Really? (y/N)", "") == 0  # under three words: not counted
    assert repeated_sentences("Sets the dialog. Sets the layer.", "") == 0


def test_paired_bleu_difference_is_zero_on_itself_and_signed():
    refs = ["Open the file in a new window", "Save the file now and quit", "Close the window of the editor",
            "The value is not valid here", "Enter a number between one and ten"]
    good = [{"prediction": r, "reference": r} for r in refs]
    bad = [{"prediction": "the", "reference": r} for r in refs]
    same = ev.paired_bleu_difference(good, good)
    assert same == {"difference": 0.0, "ci": [0.0, 0.0]}
    worse = ev.paired_bleu_difference(good, bad)
    assert worse["difference"] < -50 and worse["ci"][1] < 0
    with pytest.raises(ev.SimulEvalError, match="same streams"):
        ev.paired_bleu_difference(good, bad[:4])
