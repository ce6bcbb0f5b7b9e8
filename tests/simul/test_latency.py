"""simul.latency against hand-computed values and against SimulEval 1.1.4's own scorers.

SimulEval is a declared dev dependency: if it cannot be imported this module fails to
collect (no skip). Its scorers are driven the way ``simuleval --score-only`` drives them:
``instances.log`` lines read back as ``LogInstance`` objects, each scorer's ``compute``
per instance and its ``__call__`` over the whole dict for the corpus score.
"""

import json
import logging
import math
import random
import warnings
from argparse import Namespace

import pytest

with warnings.catch_warnings():  # pydub warns at import that there is no ffmpeg
    warnings.simplefilter("ignore")
    from simuleval.data.segments import TextSegment
    from simuleval.evaluator.instance import LogInstance, TextToTextInstance
    from simuleval.evaluator.scorers.latency_scorer import (
        ALScorer,
        APScorer,
        DALScorer,
        EndOffsetScorer,
        LAALScorer,
        StartOffsetScorer,
    )

from simul.latency import (
    METRICS,
    average_lagging,
    average_proportion,
    corpus_latency,
    differentiable_average_lagging,
    end_offset,
    latency_scores,
    length_adaptive_average_lagging,
    reference_length,
    start_offset,
)

SCORERS = {
    "AP": APScorer,
    "AL": ALScorer,
    "DAL": DALScorer,
    "LAAL": LAALScorer,
    "StartOffset": StartOffsetScorer,
    "EndOffset": EndOffsetScorer,
}


def close(a, b):
    # relative 1e-9; the tiny absolute floor only covers lags that cancel to ~0
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# ---------------------------------------------------------------- hand-computed cases


def wait_k(k, source_length, words):
    """Delays of wait-k: word i (1-based) is written after reading min(k + i - 1, |X|)."""
    return [min(k + i, source_length) for i in range(words)]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10])
def test_wait_k_on_equal_lengths_lags_exactly_k(k):
    delays = wait_k(k, 10, 10)
    assert average_lagging(delays, 10, 10) == pytest.approx(k, abs=1e-12)
    assert length_adaptive_average_lagging(delays, 10, 10) == pytest.approx(k, abs=1e-12)
    assert start_offset(delays) == k
    assert end_offset(delays, 10) == 0


def test_full_sentence_waits_for_the_whole_source():
    delays = [12] * 5
    scores = latency_scores(delays, 12, 5)
    assert scores == {"AP": 1.0, "AL": 12.0, "DAL": 12.0, "LAAL": 12.0,
                      "StartOffset": 12.0, "EndOffset": 0.0}


def test_over_generation_by_hand():
    # |X| = 4, reference of 2 words, 6 hypothesis words
    delays = [1, 2, 3, 4, 4, 4]
    ref = reference_length("two words")
    assert ref == 2
    # AL: c = 4/2; tau = 4 (first D_i = |X|): (1 + 0 - 1 - 2) / 4
    assert average_lagging(delays, 4, ref) == pytest.approx(-0.5)
    # LAAL: c = 4/max(2, 6); (1 + 4/3 + 5/3 + 2) / 4
    assert length_adaptive_average_lagging(delays, 4, ref) == pytest.approx(1.5)
    # AP sums all 6 delays over |X||Y| = 8, so over-generation goes above 1
    assert average_proportion(delays, 4, ref) == pytest.approx(18 / 8)
    # DAL: c = 4/6; D' = 1, 2, 3, 4, 14/3, 16/3; lags 1, 4/3, 5/3, 2, 2, 2
    assert differentiable_average_lagging(delays, 4) == pytest.approx(10 / 6)


def test_reference_length_counts_space_separated_words():
    assert reference_length("I see the sea") == 4
    assert reference_length("") == 1  # "".split(" ") == [""]
    assert reference_length("a  b ") == 4  # every space separates, even doubled ones
    assert reference_length(None) is None
    assert reference_length(" ab c ", unit="char") == 4


def test_empty_output_has_no_latency():
    with pytest.raises(ValueError):
        latency_scores([], 10, 3)
    with pytest.raises(ValueError):
        latency_scores([1, 2], 10, 3, prediction_length=3)
    # no instance with delays: nothing to average (SimulEval's mean([]) fails too)
    with pytest.raises(ValueError):
        corpus_latency([{"index": 0, "delays": [], "source_length": 3, "reference": "a"}])


# ---------------------------------------------------------------- against SimulEval


def random_case(rng, index):
    """One random instances.log record; the kind cycles so every kind is well covered."""
    source_length = rng.randint(1, 80)
    ref_words = rng.randint(1, 40)
    kind = index % 8
    if kind == 0:  # monotone random, any length
        words = rng.randint(1, 60)
    elif kind == 1:  # over-generation
        words = ref_words + rng.randint(1, 30)
    elif kind == 2:  # under-generation
        words = rng.randint(1, ref_words)
    elif kind == 3:  # same length as the reference
        words = ref_words
    else:
        words = rng.randint(1, 50)
    if kind == 4:  # full sentence: everything written after reading everything
        delays = [source_length] * words
    elif kind == 5:  # wait-0-ish: everything written after the first unit
        delays = [1] * words
    elif kind == 6:  # wait-k
        k = rng.randint(1, source_length)
        delays = wait_k(k, source_length, words)
    elif kind == 7 and rng.random() < 0.5:  # empty output
        delays = []
    else:  # random monotone in [1, |X|], maybe never reaching |X|
        top = source_length if rng.random() < 0.7 else rng.randint(1, source_length)
        delays = sorted(rng.randint(1, top) for _ in range(words))
    reference = " ".join(f"w{j}" for j in range(ref_words))
    if rng.random() < 0.05:
        reference = " " + reference + "  x"  # stray spaces count as words in SimulEval
    prediction = " ".join(f"h{j}" for j in range(len(delays)))
    return {
        "index": index,
        "prediction": prediction,
        "delays": delays,
        "elapsed": [0] * len(delays),
        "prediction_length": len(delays),
        "reference": reference,
        "source": " ".join("字" * source_length),
        "source_length": source_length,
    }


CASES = [random_case(random.Random(1234 + i), i) for i in range(300)]
# a few beyond plain text: float delays, D_1 > |X| (AL's early return), a null reference
CASES += [
    {"index": 300, "delays": [2.5, 3.25, 7.0], "source_length": 7, "reference": "a b c d"},
    {"index": 301, "delays": [9, 9, 12], "source_length": 8, "reference": "a b"},
    {"index": 302, "delays": [1, 3, 3, 5], "source_length": 5, "reference": None},
    {"index": 303, "delays": [2, 4], "source_length": 6},  # no reference key: ""
]


def log_instance(record):
    return LogInstance(json.dumps(record), "word")


def test_cases_cover_every_kind():
    lengths = [(len(c["delays"]), reference_length(c.get("reference", ""))) for c in CASES]
    assert sum(1 for h, r in lengths if h == 0) >= 10
    assert sum(1 for h, r in lengths if r is not None and h > r) >= 50
    assert sum(1 for h, r in lengths if r is not None and 0 < h < r) >= 50


def test_every_metric_matches_simuleval_per_instance():
    checked = 0
    failures = []
    for record in CASES:
        if not record["delays"]:
            continue
        ins = log_instance(record)
        ref = reference_length(record.get("reference", ""))
        ours = latency_scores(record["delays"], record["source_length"], ref)
        for name, scorer_class in SCORERS.items():
            theirs = scorer_class().compute(ins)
            checked += 1
            if not close(ours[name], theirs):
                failures.append((record["index"], name, ours[name], theirs))
    assert checked >= 280 * len(SCORERS)
    assert not failures, failures[:10]


def test_corpus_scores_match_simuleval_and_skip_empty_outputs():
    instances = {i: log_instance(r) for i, r in enumerate(CASES)}
    ours = corpus_latency(CASES)
    assert set(ours) == set(METRICS)
    logging.getLogger("simuleval.latency_scorer").disabled = True  # "no delay" warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its logger.warn
            for name, scorer_class in SCORERS.items():
                assert close(ours[name], scorer_class()(instances)), name
    finally:
        logging.getLogger("simuleval.latency_scorer").disabled = False


def test_live_text_to_text_instance_wait_k_on_characters():
    """Drive SimulEval's own text-to-text instance with a wait-3 policy on characters."""
    source = list("我们今天在这里讨论同声传译的延迟")
    reference = "today we are here to discuss the latency of simultaneous interpretation"
    ins = TextToTextInstance(0, None, Namespace(eval_latency_unit="word"))
    ins.source, ins.reference = source, reference
    hypothesis = "we today here discuss simultaneous interpretation latency and more words".split()
    k, written = 3, 0
    while written < len(hypothesis):
        if ins.step < min(k + written, len(source)):
            ins.send_source({})  # read one more character
            continue
        ins.receive_prediction(TextSegment(content=hypothesis[written]))
        written += 1
    assert ins.delays == wait_k(k, len(source), len(hypothesis))
    ours = latency_scores(ins.delays, ins.source_length, reference_length(reference))
    for name, scorer_class in SCORERS.items():
        assert close(ours[name], scorer_class().compute(ins)), name
    assert corpus_latency([ins.summarize()]) == pytest.approx(ours, rel=1e-12)
