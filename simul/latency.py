"""Latency metrics of simultaneous text translation, as SimulEval 1.1.4 computes them.

A hypothesis of ``|Y*|`` target words is written while reading a source of ``|X|``
units (here: characters). ``delays[i]`` is the number of source units read when target
word ``i + 1`` was written (SimulEval's ``delays`` for text input: the step, 1-based,
non-decreasing, at most ``|X|``). ``|Y|`` is the reference length in words,
``len(reference.split(" "))`` (:func:`reference_length`). With ``D_i = delays[i - 1]``:

- AP  = sum_{i=1..|Y*|} D_i / (|X| * |Y|)
- AL  = 1/tau * sum_{i=1..tau} (D_i - (i - 1) * |X| / |Y|)
- LAAL = 1/tau * sum_{i=1..tau} (D_i - (i - 1) * |X| / max(|Y|, |Y*|))
- DAL = 1/|Y*| * sum_{i=1..|Y*|} (D'_i - (i - 1) * |X| / |Y*|),
  D'_1 = D_1, D'_i = max(D_i, D'_{i-1} + |X| / |Y*|)
- StartOffset = D_1;  EndOffset = D_{|Y*|} - |X|

where tau = the first i with D_i >= |X| (all |Y*| words if none reaches |X|).

SimulEval details kept on purpose (they change the numbers):

- AL and AP use the *reference* length; LAAL the larger of reference and hypothesis;
  DAL only the hypothesis. Without a reference (``reference_length=None``, SimulEval's
  ``--no-use-ref-len`` or a null reference) the hypothesis length stands in for it.
- AP sums *all* hypothesis delays, so over-generation can push it above 1.
- AL and LAAL return ``D_1`` itself when ``D_1 > |X|`` (only possible with
  non-text input; kept for exactness). DAL has no such case and no tau cut.
- EndOffset of text output is ``<= 0`` (0 for a system that finishes at the end).
- An output with no words has no delays: SimulEval skips it when averaging, so the
  per-instance functions here raise ``ValueError`` and :func:`corpus_latency` skips it.
- Corpus scores are the plain mean (``statistics.mean``) of the per-instance scores
  over the instances that have delays; ``scores.tsv`` shows them rounded to 3 decimals,
  the values here are not rounded.

Speech input (``interpres eval stream``) uses the same formulas in milliseconds: ``|X|``
is the audio's length in ms and ``D_i`` the ms of audio read when word ``i`` was written.
SimulEval's computation-aware scores (``--computation-aware``, names ending in ``_CA``)
put ``elapsed`` in place of ``delays``: ``elapsed_i = D_i`` + the wall-clock ms since the
source began to be sent (the source is sent as fast as the system takes it, so that
clock is the system's computing time). :func:`average_token_delay` adds ATD (Kano et
al. 2023) as SimulEval's ATD scorer computes it for speech input and text output.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence

METRICS = ("AP", "AL", "DAL", "LAAL", "StartOffset", "EndOffset")
SPEECH_METRICS = ("AL", "LAAL", "DAL", "ATD", "StartOffset", "EndOffset")  # what eval stream reports, each also _CA
ATD_SOURCE_WORD_MS = 300.0  # SimulEval's ATD: speech is cut into "words" of 300 ms


def reference_length(reference: str | None, unit: str = "word") -> int | None:
    """Reference length as SimulEval's instances count it.

    ``"word"`` (SimulEval's default ``--eval-latency-unit``): ``len(reference.split(" "))``,
    so an empty reference counts 1 and every extra space adds an (empty) word.
    ``"char"``: ``len(reference.strip())``. ``None`` (no reference) gives ``None``.
    """
    if reference is None:
        return None
    if unit == "word":
        return len(reference.split(" "))
    if unit == "char":
        return len(reference.strip())
    raise ValueError(f"unknown latency unit {unit!r} (use 'word' or 'char')")


def _check_delays(delays: Sequence[float]) -> None:
    if len(delays) == 0:
        raise ValueError("no delays (empty output): SimulEval skips such instances")


def _check(delays: Sequence[float], source_length: float) -> None:
    _check_delays(delays)
    if not source_length > 0:
        raise ValueError(f"source_length must be positive, got {source_length!r}")


def _target_length(delays: Sequence[float], reference_length: int | None) -> int:
    """|Y| of AL/AP: the reference length, or the hypothesis length without a reference."""
    length = len(delays) if reference_length is None else reference_length
    if length < 1:
        raise ValueError(f"reference_length must be positive, got {length!r}")
    return length


def _lagging(delays: Sequence[float], source_length: float, target_length: int) -> float:
    """1/tau * sum_{i<=tau} (D_i - (i - 1) * |X| / target_length), tau cut at D_i >= |X|."""
    if delays[0] > source_length:
        return delays[0]
    rate = source_length / target_length  # source units per target word (c = |X|/|Y|)
    total = 0.0
    tau = 0
    for i, d in enumerate(delays):  # i = index - 1
        total += d - i * rate
        tau = i + 1
        if d >= source_length:
            break
    return total / tau


def average_proportion(
    delays: Sequence[float], source_length: float, reference_length: int | None
) -> float:
    """AP = sum_i D_i / (|X| * |Y|), the sum over all hypothesis words, |Y| the reference length."""
    _check(delays, source_length)
    return sum(delays) / (source_length * _target_length(delays, reference_length))


def average_lagging(
    delays: Sequence[float], source_length: float, reference_length: int | None
) -> float:
    """AL = 1/tau * sum_{i<=tau} (D_i - (i - 1) * |X| / |Y|), |Y| the reference length."""
    _check(delays, source_length)
    return _lagging(delays, source_length, _target_length(delays, reference_length))


def length_adaptive_average_lagging(
    delays: Sequence[float],
    source_length: float,
    reference_length: int | None,
    prediction_length: int | None = None,
) -> float:
    """LAAL = 1/tau * sum_{i<=tau} (D_i - (i - 1) * |X| / max(|Y|, |Y*|))."""
    _check(delays, source_length)
    hyp = _prediction_length(delays, prediction_length)
    ref = hyp if reference_length is None else reference_length
    return _lagging(delays, source_length, max(ref, hyp))


def differentiable_average_lagging(
    delays: Sequence[float], source_length: float, prediction_length: int | None = None
) -> float:
    """DAL = 1/|Y*| * sum_i (D'_i - (i - 1) * |X| / |Y*|), D'_i = max(D_i, D'_{i-1} + |X| / |Y*|).

    Uses the hypothesis length only; every word counts (no tau cut).
    """
    _check(delays, source_length)
    hyp = _prediction_length(delays, prediction_length)
    rate = source_length / hyp
    total = 0.0
    previous = 0.0
    for i, d in enumerate(delays):
        current = d if i == 0 else max(d, previous + rate)
        total += current - i * rate
        previous = current
    return total / hyp


def start_offset(delays: Sequence[float]) -> float:
    """StartOffset = D_1, the source read before the first target word."""
    _check_delays(delays)
    return delays[0]


def end_offset(delays: Sequence[float], source_length: float) -> float:
    """EndOffset = D_{|Y*|} - |X| (<= 0 for text output, 0 when the last word waits for all)."""
    _check_delays(delays)
    return delays[-1] - source_length


def _prediction_length(delays: Sequence[float], prediction_length: int | None) -> int:
    if prediction_length is None:
        return len(delays)
    if prediction_length != len(delays):
        raise ValueError(
            f"prediction_length {prediction_length} != {len(delays)} delays: text output "
            "has one delay per target word (SimulEval uses len(delays))"
        )
    return prediction_length


def latency_scores(
    delays: Sequence[float],
    source_length: int,
    reference_length: int | None,
    prediction_length: int | None = None,
) -> dict[str, float]:
    """All six metrics of one instance: keys AP, AL, DAL, LAAL, StartOffset, EndOffset.

    ``reference_length`` is |Y| in words (:func:`reference_length`), or ``None`` for no
    reference; ``prediction_length`` (|Y*|) defaults to, and must equal, ``len(delays)``.
    Raises ``ValueError`` for an empty output (no delays).
    """
    hyp = _prediction_length(delays, prediction_length)
    scores = {
        "AP": average_proportion(delays, source_length, reference_length),
        "AL": average_lagging(delays, source_length, reference_length),
        "DAL": differentiable_average_lagging(delays, source_length, hyp),
        "LAAL": length_adaptive_average_lagging(delays, source_length, reference_length, hyp),
        "StartOffset": start_offset(delays),
        "EndOffset": end_offset(delays, source_length),
    }
    return {name: float(value) for name, value in scores.items()}


def instance_latency(instance: Mapping, unit: str = "word") -> dict[str, float] | None:
    """Scores of one ``instances.log`` record, or ``None`` when it has no delays.

    Reads ``delays``, ``source_length`` and ``reference`` as SimulEval's ``--score-only``
    does: a missing reference is ``""`` (1 word), a null one means no reference.
    """
    delays = instance.get("delays")
    if not delays:
        return None
    source_length = instance.get("source_length")
    if source_length is None:
        raise ValueError(f"instance {instance.get('index')!r} has no source_length")
    ref_len = reference_length(instance.get("reference", ""), unit)
    return latency_scores(delays, source_length, ref_len)


def corpus_latency(instances: Iterable[Mapping], unit: str = "word") -> dict[str, float]:
    """Corpus scores: for each metric, the mean of the per-instance scores.

    Instances are ``instances.log`` records (index, prediction, delays, elapsed,
    prediction_length, reference, source, source_length). Those without delays (empty
    output) are skipped, as SimulEval's scorers skip them; if none has delays there is
    nothing to average and ``ValueError`` is raised (SimulEval fails there too).
    """
    per_instance = [s for s in (instance_latency(ins, unit) for ins in instances) if s is not None]
    if not per_instance:
        raise ValueError("no instance has delays: no latency to average")
    return {name: float(statistics.mean(s[name] for s in per_instance)) for name in METRICS}


def average_token_delay(delays: Sequence[float], elapsed: Sequence[float] | None = None) -> float:
    """ATD of speech input and text output, as SimulEval 1.1.4's ATD scorer computes it.

    The output is cut into chunks of words written at the same delay; the source into
    chunks between consecutive distinct delays, each of them into 300 ms "words" (the
    last one shorter). A target word ends when it is written (target words have no
    length): at ``max(D_i, end of the previous word)`` plus, computation-aware (with
    ``elapsed``), the computing time spent since the previous word (the growth of
    ``elapsed_i - D_i``). Word ``t`` of chunk ``c`` is paired with source word
    ``t - max(0, |target words before c| - |source words before c|)``, at most the last
    source word of chunk ``c``; ATD is the mean gap between their ends.
    """
    _check_delays(delays)
    n = len(delays)
    if elapsed is None:
        compute = [0.0] * n
    elif len(elapsed) != n:
        raise ValueError(f"{len(elapsed)} elapsed times for {n} delays")
    elif all(e == 0 for e in elapsed):
        compute = list(elapsed)  # SimulEval's case of a log without computation times
    else:
        spent = [e - d for e, d in zip(elapsed, delays)]
        compute = [x - y for x, y in zip(spent, [0.0] + spent[:-1])]
    tgt_sizes, tgt_chunk = [0], [0]
    for i, d in enumerate(delays):
        if i == 0 or d != delays[i - 1]:
            tgt_sizes.append(0)
        tgt_sizes[-1] += 1
        tgt_chunk.append(len(tgt_sizes) - 1)
    distinct = list(dict.fromkeys(delays))
    src_sizes, src_end = [0], [0.0]
    for prev, d in zip([0.0] + distinct[:-1], distinct):
        whole, rest = divmod(d - prev, ATD_SOURCE_WORD_MS)
        lengths = [ATD_SOURCE_WORD_MS] * int(whole) + ([rest] if rest != 0 else [])
        src_sizes.append(len(lengths))
        for length in lengths:
            src_end.append(src_end[-1] + length)
    tgt_end = [0.0]
    for d, c in zip(delays, compute):
        tgt_end.append(max(d, tgt_end[-1]) + c)
    gaps = []
    for t in range(1, n + 1):
        c = tgt_chunk[t]
        before_x, before_y = sum(src_sizes[:c]), sum(tgt_sizes[:c])
        s = min(t - max(0, before_y - before_x), sum(src_sizes[:c + 1]))
        gaps.append(tgt_end[t] - src_end[s])
    return float(statistics.mean(gaps))


def speech_latency(delays: Sequence[float], source_ms: float, reference_length: int | None,
                   **timelines: Sequence[float]) -> dict[str, float]:
    """The :data:`SPEECH_METRICS` of one speech instance: computation-unaware from ``delays`` (ms
    of audio read), and again from each named timeline of the same words, its name the suffix
    (``_CA=elapsed`` gives SimulEval's computation-aware scores); ``source_ms`` is |X|."""
    out: dict[str, float] = {}
    for suffix, times in (("", delays), *timelines.items()):
        if len(times) != len(delays):
            raise ValueError(f"{suffix}: {len(times)} times for {len(delays)} delays")
        scores = latency_scores(times, source_ms, reference_length)
        for name in SPEECH_METRICS:
            if name != "ATD":
                out[name + suffix] = scores[name]
        out["ATD" + suffix] = average_token_delay(delays, times if suffix else None)
    return out
