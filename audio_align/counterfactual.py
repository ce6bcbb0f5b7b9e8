"""Counterfactual scenes: a training scene edited so that the prior's answer becomes wrong (issue 25).

A training scene that keeps a co-occurrence prior (the rule's consequent follows its trigger)
is edited in its waveform, where the ground truth says exactly where each event lies:

- ``swap_order``: the consequent's span and the trigger's span change places (the gap
  between them stays), so the consequent now comes first;
- ``remove_event``: the consequent's span is cut out (what follows moves earlier), so the
  trigger sounds alone.

An edit is made only where no other event overlaps the spans it moves or cuts, and the edited
scene's ground truth (``scene_prior``) must say ``breaking``. The same questions asked of the
edited scene then have the answers the prior would not give ("Did the speech come before the
phone?" yes; "Is there speech?" no), and the rule-made negatives of those questions
(:mod:`audio_align.prefs`) are the prior's answers, contradicted by the audio: counterfactual
hard negatives whose audio, not only whose wording, differs from the original pair's.

    edits = edit_scenes(train_scenes, rules, n=400)          # [(edited scene dict, Edit)]
    wave = edited_wave(edit, load_audio(root / "train" / original["wav"]))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from audio_align.scenes import Rule, scene_prior
from speech.audio import SAMPLE_RATE

EDITS = ("swap_order", "remove_event")


@dataclass(frozen=True)
class Edit:
    """How an edited scene's waveform is made from its original's: ``pieces`` are
    (start, end) seconds of the original, concatenated."""

    kind: str
    original: str  # the original scene's id
    pieces: tuple[tuple[float, float], ...]


def _rule_of(scene: dict, rules: Sequence[Rule]) -> Rule | None:
    name = scene.get("prior_rule")
    return next((r for r in rules if r.name == name), None)


def _alone(events: Sequence[dict], keep: Sequence[dict], start: float, end: float) -> bool:
    """No event but ``keep`` overlaps [start, end]."""
    return not any(e["onset"] < end and start < e["offset"] for e in events if not any(e is k for k in keep))


def _shifted(e: dict, by: float) -> dict:
    return dict(e, onset=round(e["onset"] + by, 3), offset=round(e["offset"] + by, 3))


def edit_scene(scene: dict, kind: str, rules: Sequence[Rule]) -> tuple[dict, Edit] | None:
    """The scene edited by ``kind`` (see the module's docstring), or None where the edit does
    not apply: the scene keeps no prior, or another event overlaps what the edit moves."""
    if kind not in EDITS:
        raise ValueError(f"unknown counterfactual edit {kind!r}: expected one of {', '.join(EDITS)}")
    rule = _rule_of(scene, rules)
    if rule is None or scene.get("prior") != "consistent":
        return None
    events = sorted(scene["events"], key=lambda e: (e["onset"], e["offset"]))
    trig = [e for e in events if e["class"] == rule.trigger]
    cons = [e for e in events if e["class"] == rule.consequent]
    if len(trig) != 1 or len(cons) != 1 or cons[0]["onset"] < trig[0]["offset"]:
        return None
    t, c = trig[0], cons[0]
    dur = float(scene["duration"])
    others = [e for e in events if e is not t and e is not c]
    if kind == "swap_order":
        if not _alone(events, [t, c], t["onset"], c["offset"]):
            return None
        t0, t1, c0, c1 = t["onset"], t["offset"], c["onset"], c["offset"]
        pieces = ((0.0, t0), (c0, c1), (t1, c0), (t0, t1), (c1, dur))
        new_c = dict(c, onset=t0, offset=round(t0 + (c1 - c0), 3))
        new_t = dict(t, onset=round(c1 - (t1 - t0), 3), offset=c1)
        new_events = others + [new_c, new_t]
        new_dur = dur
    else:
        c0, c1 = c["onset"], c["offset"]
        if not _alone(events, [c], c0, c1):
            return None
        cut = c1 - c0
        pieces = ((0.0, c0), (c1, dur))
        new_events = [e if e["offset"] <= c0 else _shifted(e, -cut) for e in others + [t]]
        new_dur = round(dur - cut, 3)
    new_events.sort(key=lambda e: (e["onset"], e["offset"]))
    prior, _ = scene_prior(new_events, rules)
    if prior != "breaking":
        return None
    edited = copy.deepcopy(scene)
    suffix = "swap" if kind == "swap_order" else "cut"
    edited.update(id=f"{scene['id']}~{suffix}", duration=new_dur, prior="breaking", events=copy.deepcopy(new_events),
                  counterfactual={"edit": kind, "of": scene["id"]})
    return edited, Edit(kind, scene["id"], pieces)


def edit_scenes(scenes: Sequence[dict], rules: Sequence[Rule], n: int, kinds: Sequence[str] = EDITS
                ) -> list[tuple[dict, Edit]]:
    """Up to ``n`` edited scenes of each kind, from the first prior-keeping scenes that allow it."""
    out = []
    for kind in kinds:
        made = 0
        for s in scenes:
            if made >= n:
                break
            got = edit_scene(s, kind, rules)
            if got is not None:
                out.append(got)
                made += 1
    return out


def edited_wave(edit: Edit, original: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The edited scene's waveform from the original's: its pieces, end to end. Cuts fall on
    event boundaries (where the events are faded to silence), so only the background is cut."""
    bounds = [(int(round(a * sr)), int(round(b * sr))) for a, b in edit.pieces]
    return np.concatenate([original[a:b] for a, b in bounds]) if bounds else original[:0]
