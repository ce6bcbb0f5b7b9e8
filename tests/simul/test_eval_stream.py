"""interpres eval stream: speech latency as SimulEval 1.1.4 scores it (its own scorers and its own
speech instance are the reference), mwerSegmenter-style re-alignment, and the whole command on a
tiny MuST-C-layout corpus (files, resume, errors)."""

import json
import logging
import math
import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

with warnings.catch_warnings():  # pydub warns at import that there is no ffmpeg
    warnings.simplefilter("ignore")
    from simuleval.data.segments import TextSegment
    from simuleval.evaluator.instance import LogInstance, SpeechToTextInstance
    from simuleval.evaluator.scorers.latency_scorer import (
        ALScorer,
        ATDScorer,
        DALScorer,
        EndOffsetScorer,
        LAALScorer,
        StartOffsetScorer,
    )

from builders import TALKS, TEXTS, UTTS, build_eval_corpus, make_parrot_model_dir
from interpres.cli import main
from simul import eval_stream
from simul.eval_stream import Talk, run_talk
from simul.latency import average_token_delay, reference_length, speech_latency
from simul.resegment import resegment, units
from simul.speech_stream import PauseSettings, make_policy
from speech.decode import DecodingOptions
from speech.translate import load_translator

SCORERS = {"AL": ALScorer, "LAAL": LAALScorer, "DAL": DALScorer, "StartOffset": StartOffsetScorer,
           "EndOffset": EndOffsetScorer}
SR = 16000


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def theirs(record, computation_aware):
    """SimulEval's scores of one instances.log record, as ``simuleval --score-only`` computes them."""
    ins = LogInstance(json.dumps(record))
    out = {name: cls(computation_aware=computation_aware).compute(ins) for name, cls in SCORERS.items()}
    logging.getLogger("simuleval.latency_scorer").disabled = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["ATD"] = ATDScorer(computation_aware=computation_aware)({0: ins})
    return out


def random_record(rng):
    source = rng.uniform(300, 20000)
    delays = sorted(rng.choice([rng.uniform(0, source), source]) for _ in range(rng.randint(1, 25)))
    delays = [round(d / 320) * 320.0 for d in delays]  # words written together share a delay
    elapsed, spent = [], 0.0
    for d in delays:
        spent += rng.choice([0.0, rng.uniform(0, 300)])
        elapsed.append(d + spent)
    reference = " ".join("w" for _ in range(rng.randint(1, 25)))
    return {"index": 0, "prediction": " ".join("h" for _ in delays), "delays": delays, "elapsed": elapsed,
            "source_length": source, "reference": reference, "prediction_length": len(delays)}


def test_speech_latency_matches_simuleval_unaware_and_computation_aware():
    rng = random.Random(7)
    failures, checked = [], 0
    for _ in range(300):
        rec = random_record(rng)
        ours = speech_latency(rec["delays"], rec["source_length"], reference_length(rec["reference"]),
                              _CA=rec["elapsed"])
        for aware, suffix in ((False, ""), (True, "_CA")):
            for name, value in theirs(rec, aware).items():
                checked += 1
                if not close(ours[name + suffix], value):
                    failures.append((name + suffix, ours[name + suffix], value))
    assert checked == 300 * 12 and not failures, failures[:5]


def test_average_token_delay_by_hand():
    # 1,000 ms of speech; two words at 600 ms, one at 1,000: source words of 300 ms end at 300, 600,
    # then 900 and 1,000; chunk 1 pairs target words 1, 2 with source words 1, 2; chunk 2 word 3 with 3
    assert average_token_delay([600.0, 600.0, 1000.0]) == pytest.approx(((600 - 300) + (600 - 600) + (1000 - 900)) / 3)
    # computation-aware: 50 ms of computing before the first chunk's words, 100 more before the last;
    # unlike AL_CA, ATD adds only the computing since the previous word: word 3 ends at 1,000 + 100
    assert average_token_delay([600.0, 600.0, 1000.0], [650.0, 650.0, 1150.0]) == pytest.approx(
        ((650 - 300) + (650 - 600) + (1100 - 900)) / 3)


def test_resegment_follows_the_words_and_keeps_every_word_once():
    refs = ["Hello there my friend.".split(), "How are you today?".split(), "Fine.".split()]
    hyp = "hello there friend how are you , today fine thanks".split()
    assert resegment(hyp, refs) == [(0, 3), (3, 8), (8, 10)]
    assert resegment([], refs) == [(0, 0)] * 3
    spans = resegment("a b c d e f".split(), [list("pqrs"), list("tuvw"), list("xyzo")])
    assert spans == [(0, 2), (2, 4), (4, 6)]  # nothing in common: spread evenly, not piled at the end
    chars = units("你好朋友今天怎么样", "zh")
    assert resegment(chars, [units("你好，朋友。", "zh"), units("你今天怎么样？", "zh")]) == [(0, 4), (4, 9)]


@pytest.fixture(scope="module")
def parrot(tmp_path_factory):
    return load_translator(make_parrot_model_dir(tmp_path_factory.mktemp("parrot") / "st", TEXTS["de"][1]))


def burst_talk(path, spans=((0.3, 2.3), (3.0, 4.6)), seconds=5.2):
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    wave = 1e-3 * rng.standard_normal(len(t))
    for a, b in spans:
        on = (t >= a) & (t < b)
        wave[on] += 0.4 * np.sin(2 * np.pi * 300 * t[on])
    sf.write(path, wave.astype(np.float32), SR)
    return wave.astype(np.float32)


def test_delays_are_what_simulevals_own_speech_instance_records(parrot, tmp_path):
    """Drive SimulEval's SpeechToTextInstance with a policy: its delays equal run_talk's."""
    wave = burst_talk(tmp_path / "talk.wav")
    opts = DecodingOptions(beam_size=2, max_len_b=40)
    ours = run_talk("waitk:2:0.4", parrot, "de", Talk(tmp_path / "talk.wav", []), 100.0, opts)
    ins = SpeechToTextInstance(0, None, SimpleNamespace(eval_latency_unit="word"))
    ins.sample_list, ins.sample_rate_value = list(wave), SR
    ins.audio_info = SimpleNamespace(samplerate=SR)
    ins.reference, ins.tgt_lang = TEXTS["de"][1], "de"
    policy = make_policy("waitk:2:0.4", parrot, ["de"], PauseSettings(), opts)
    while not ins.source_finished_reading:
        segment = ins.send_source(100)
        commits = policy.push(np.asarray(segment.content, dtype=np.float32))
        commits += policy.finish() if segment.finished else []
        for c in commits:
            ins.receive_prediction(TextSegment(content=c.texts["de"], finished=False))
    assert ins.prediction_list == ours["words"] and len(ours["words"]) == 12
    assert ins.delays == pytest.approx(ours["delays"], abs=1e-6)
    assert ins.delays[0] < 2300  # wait-k wrote before the first burst ended
    assert all(e >= d for e, d in zip(ours["elapsed"], ours["delays"]))
    assert all(r >= d for r, d in zip(ours["realtime"], ours["delays"]))


def test_eval_stream_writes_simuleval_files_and_resumes(parrot, tmp_path, capsys, monkeypatch):
    root = build_eval_corpus(tmp_path / "corpus", pairs=("en-de",))
    out = tmp_path / "out"
    argv = ["eval", "stream", "--root", str(root), "--pair", "en-de", "--model", str(parrot.model_dirs[0]),
            "--runtime", "torch", "--policies", "offline,pause,la:0.5,waitk:2:0.4", "--beam", "2",
            "--out", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| waitk:2:0.4 |" in table and "LAAL_CA" in table
    report = json.loads((out / "scores.json").read_text())
    assert report["talks"] == 2 and set(report["policies"]) == {"offline", "pause", "la:0.5", "waitk:2:0.4"}
    assert (out / "quality_latency.png").read_bytes()[:4] == b"\x89PNG"
    for spec, scores in report["policies"].items():
        d = out / spec.replace(":", "-")
        records = [json.loads(x) for x in (d / "instances.log").read_text().splitlines()]
        talks = [json.loads(x) for x in (d / "talks.log").read_text().splitlines()]
        assert len(records) == 5 and len(talks) == 2  # one instance per reference segment
        for t in talks:  # every word of a talk lands in exactly one of its segments, in order
            assert " ".join(r["prediction"] for r in records if r["talk"] == t["index"] and r["prediction"]) \
                == t["prediction"]
        with_words = [r for r in records if r["delays"]]
        for aware, suffix in ((False, ""), (True, "_CA")):
            per = [theirs(r, aware) for r in with_words]
            for name in ("AL", "LAAL", "DAL", "ATD", "StartOffset", "EndOffset"):
                assert close(scores[name + suffix], sum(p[name] for p in per) / len(per)), (spec, name + suffix)
        assert (d / "scores.tsv").read_text().splitlines()[0].split("\t")[:3] == ["chrF", "BLEU", "AL"]
    ends = {name: sorted(round((o + d) * 1000) for w, o, d in UTTS if w == name) for name in TALKS}
    for t in map(json.loads, (out / "offline" / "talks.log").read_text().splitlines()):
        # each gold segment is written when its end has been read, one segment's words at a time
        assert sorted({round(d) for d in t["delays"]}) == ends[t["talk"]]
    assert report["policies"]["offline"]["chrF_of_offline"] == 1.0

    def no_decoding(*args, **kwargs):
        raise AssertionError("a finished talk was decoded again")

    monkeypatch.setattr(eval_stream, "run_talk", no_decoding)
    assert main(argv) == 0
    again = json.loads((out / "scores.json").read_text())
    assert again["policies"]["la:0.5"]["chrF"] == report["policies"]["la:0.5"]["chrF"]
    capsys.readouterr()
    assert main(argv[:-2] + ["--policies", "pause,la:zero", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "policies" in err and "la:zero" in err and "Traceback" not in err
