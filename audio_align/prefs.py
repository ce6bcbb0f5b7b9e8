"""Preference pairs against hallucination: counterfactual hard negatives (issue 25, AHA).

A pair is one question about one scene with a ``chosen`` answer (the ground truth) and a
``rejected`` one: fluent, plausible under the co-occurrence priors, and contradicted by the
audio. Two sources, each pair keeping its provenance in ``source``:

- ``rule:*``: perturbations of the ground truth, by hallucination kind:

  ====================  ==============================================================
  omission              ``rule:flip_presence`` (a present sound denied, an absent one,
                        the prior's usual follower first, affirmed); ``rule:drop_event``
                        and ``rule:add_prior_event`` on lists and captions
  identity              ``rule:swap_identity``: the sound at T named as a class that
                        co-occurs with it (its rule partner, another sound of the scene)
  temporal              ``rule:reverse_order``: before/after flipped, the other sound
                        of the pair, the second sound as the first
  quantitative          ``rule:change_count`` (one more or one less),
                        ``rule:move_onset``, ``rule:change_duration`` (outside the
                        tolerance)
  general               ``rule:distractor``: the most plausible wrong option
  ====================  ==============================================================

- ``model``: answers the instruction-tuned model itself gave (greedy, and sampled at a
  temperature) that :func:`audio_align.qa.is_correct` refutes: the hallucinations it
  actually makes.

- ``counterfactual:<edit>/<perturbation>``: on a training scene edited in its audio
  (:mod:`audio_align.counterfactual`: the prior's two sounds in the other order, or its
  consequent cut out), the questions about those two sounds, whose answers the edit flipped,
  with the rule-made negative: the answer the original audio and the prior give; and
  ``counterfactual:original/<perturbation>``, the same kind of questions on the unedited scene.

Every rejected answer is checked against the ground truth: a perturbation that happens to
be right is dropped, never paired.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from audio_align import qa


@dataclass
class Pair:
    """One preference pair about one scene."""

    scene: str
    type: str
    kind: str
    question: str
    chosen: str
    rejected: str
    source: str  # rule:<perturbation> | model | counterfactual:<edit or original>/<perturbation>
    prior: str = "none"

    def to_json(self) -> dict:
        return asdict(self)


def _rng(*key: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _events(scene: dict) -> list[dict]:
    return sorted(scene["events"], key=lambda e: (e["onset"], e["offset"]))


def _present(scene: dict) -> list[str]:
    return list(dict.fromkeys(e["class"] for e in _events(scene)))


def _partners(c: str, rules: Sequence[tuple[str, str]]) -> list[str]:
    return [b for a, b in rules if a == c] + [a for a, b in rules if b == c]


def _list_text(names: Sequence[str]) -> str:
    return ", ".join(names)


def _caption(parts: Sequence[str]) -> str:
    """A caption in the reference's shape from ``a bell``-like parts."""
    if not parts:
        return "Only background noise."
    text = ", then ".join(parts)
    return text[0].upper() + text[1:] + "."


def rule_negatives(q: qa.Question, scene: dict, classes: Sequence[str], rules: Sequence[tuple[str, str]],
                   seed: int = 0) -> list[tuple[str, str]]:
    """Counterfactual wrong answers to ``q`` made from the ground truth: (answer, source)."""
    rng = _rng(seed, q.scene, q.question)
    present = _present(scene)
    absent = [c for c in classes if c not in present]
    out: list[tuple[str, str]] = []
    t, a = q.type, q.answer
    if t in ("present", "before"):
        out.append(("no" if a == "yes" else "yes", "rule:flip_presence" if t == "present" else "rule:reverse_order"))
    elif t == "list":
        names = a.split(", ")
        likely = [b for x, b in rules if x in names and b in absent]
        if likely:  # the prior's follower, heard though it is not there
            out.append((_list_text(names + [likely[int(rng.integers(len(likely)))]]), "rule:add_prior_event"))
        if len(names) >= 2:
            drop = int(rng.integers(len(names)))
            out.append((_list_text(names[:drop] + names[drop + 1:]), "rule:drop_event"))
    elif t == "sound_at":
        cands = [p for p in _partners(a, rules) if p != a] + [c for c in present if c != a]
        cands = list(dict.fromkeys(cands)) or [c for c in classes if c != a]
        out.append((cands[0] if _partners(a, rules) else cands[int(rng.integers(len(cands)))], "rule:swap_identity"))
    elif t in ("which_first", "louder", "longer"):  # the other sound the question names
        other = [c for c in present if c != a and re.search(rf"\bthe {re.escape(c)}\b", q.question)]
        if other:
            out.append((other[0], "rule:reverse_order" if t == "which_first" else "rule:distractor"))
    elif t in ("first", "last"):
        ev = _events(scene)
        order = list(dict.fromkeys(e["class"] for e in (ev if t == "first" else ev[::-1])))
        if len(order) >= 2:
            out.append((order[1], "rule:reverse_order"))
    elif t == "count":
        n = int(a)
        out.append((str(n + 1 if n == 1 or rng.random() < 0.5 else n - 1), "rule:change_count"))
    elif t == "start":
        x = float(a)
        dur = float(scene["duration"])
        shift = max(1.5, 2 * q.tolerance + 0.5)
        y = x + shift if x + shift < dur or x - shift < 0 else x - shift
        out.append((f"{y:.1f}", "rule:move_onset"))
    elif t == "duration":
        x = float(a)
        y = x * 2 + q.tolerance if rng.random() < 0.5 or x < 3 * q.tolerance else x / 2 - q.tolerance
        out.append((f"{max(0.1, y):.1f}", "rule:change_duration"))
    elif t in ("loudest", "longest", "said", "length"):
        wrong = [o for o in q.options if o != a]
        if t in ("loudest", "longest"):  # a sound that is there beats an absent one
            there = [o for o in wrong if o in present]
            wrong = there or wrong
        if wrong:
            out.append((wrong[int(rng.integers(len(wrong)))], "rule:distractor"))
    elif t == qa.CAPTION:
        parts = a.rstrip(".").split(", then ")
        parts = [parts[0][0].lower() + parts[0][1:]] + parts[1:] if parts and parts[0] else parts
        likely = [b for x, b in rules if x in present and b in absent]
        if likely:
            out.append((_caption(parts + [qa.a_np(likely[int(rng.integers(len(likely)))])]), "rule:add_prior_event"))
        if len(parts) >= 2:
            drop = int(rng.integers(len(parts)))
            out.append((_caption(parts[:drop] + parts[drop + 1:]), "rule:drop_event"))
    return [(x, s) for x, s in out if x.strip() and not _right(q, x)]


def _right(q: qa.Question, answer: str) -> bool:
    if q.kind == qa.CAPTION:
        return qa._norm(answer) == qa._norm(q.answer)
    return qa.is_correct(q, answer)


def build_pairs(scenes: Sequence[dict], questions: Sequence[Sequence[qa.Question]], classes: Sequence[str],
                rules: Sequence[tuple[str, str]], seed: int = 0, captions: bool = True) -> list[Pair]:
    """Rule-based pairs for every question of every scene (``questions[i]`` are scene i's)."""
    out = []
    for scene, qs in zip(scenes, questions):
        for q in qs:
            if q.kind == qa.CAPTION and not captions:
                continue
            for rejected, source in rule_negatives(q, scene, classes, rules, seed):
                out.append(Pair(q.scene, q.type, q.kind, q.question, q.answer, rejected, source, q.prior))
    return out


def model_pairs(questions: Sequence[qa.Question], answers: Sequence[Sequence[str]]) -> list[Pair]:
    """Pairs from the model's own answers (several per question): each distinct one the
    ground truth refutes, against the right answer. Captions are never paired this way
    (a caption in other words is not wrong)."""
    out = []
    for q, got in zip(questions, answers):
        if q.kind == qa.CAPTION:
            continue
        for x in dict.fromkeys(g.strip() for g in got):
            if x and not qa.is_correct(q, x):
                out.append(Pair(q.scene, q.type, q.kind, q.question, q.answer, x, "model", q.prior))
    return out


def sample_answers(answer_fn: Callable[[list[int], float, int], list[str]], n: int, samples: int,
                   temperature: float, batch: int = 256) -> list[list[str]]:
    """The greedy answer and ``samples`` sampled ones for each of ``n`` questions:
    ``answer_fn(indices, temperature, seed)`` answers a batch of them."""
    out: list[list[str]] = [[] for _ in range(n)]
    for k in range(0, n, batch):
        idx = list(range(k, min(n, k + batch)))
        for draw in range(samples + 1):
            for i, a in zip(idx, answer_fn(idx, 0.0 if draw == 0 else temperature, draw * 1_000_003 + k)):
                out[i].append(a)
    return out


def write_pairs(path: Path, pairs: Iterable[Pair], header: dict) -> None:
    from compress.files import write_text_atomic

    lines = [json.dumps(header)] + [json.dumps(p.to_json(), ensure_ascii=False) for p in pairs]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_pairs(path: Path) -> tuple[dict, list[Pair]]:
    """(header, pairs) of a file :func:`write_pairs` wrote."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0]) if lines else {}
    return header, [Pair(**json.loads(x)) for x in lines[1:] if x.strip()]


def provenance(pairs: Sequence[Pair]) -> dict[str, dict[str, int]]:
    """How many pairs each source gave, per kind."""
    table: dict[str, dict[str, int]] = {}
    for p in pairs:
        row = table.setdefault(p.source, {})
        row[p.kind] = row.get(p.kind, 0) + 1
    return table
