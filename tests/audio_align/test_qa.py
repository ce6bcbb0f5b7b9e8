"""Questions and answers from a scene's ground truth, and their scoring."""

from __future__ import annotations

import re

from audio_align import qa

CLASSES = ["bell", "phone ringing", "speech", "drum", "alarm", "siren", "crow", "beep"]
RULES = [("phone ringing", "speech"), ("alarm", "siren")]


def _event(cls, onset, offset, level=-20.0, text=None):
    return {"class": cls, "source": "synth", "onset": onset, "offset": offset, "gain_db": 0.0, "level_db": level,
            "text": text, "voice": "espeak:en-us" if text else None}


def _scene(events, prior="none", rule=None, sid="s-1", duration=10.0):
    return {"id": sid, "split": "train", "wav": f"wav/{sid}.wav", "duration": duration, "events": events,
            "background": {"source": "pink noise", "gain_db": -30}, "prior": prior, "prior_rule": rule}


SENTENCES = ["Please close the door.", "The train leaves at noon.", "Turn left at the bank.", "It is cold today."]


def test_answers_follow_the_ground_truth():
    scene = _scene([_event("bell", 0.5, 1.5, -10), _event("drum", 2.0, 2.4, -25), _event("drum", 3.0, 3.4, -25),
                    _event("speech", 5.0, 7.0, -22, "Please close the door."), _event("drum", 8.0, 8.4, -25)])
    qs = qa.questions_for(scene, "train", CLASSES, RULES, SENTENCES, seed=3)
    by = {}
    for q in qs:
        by.setdefault(q.type, []).append(q)
    assert {"present", "list", "sound_at", "first", "last", "before", "which_first", "count", "start",
            "loudest", "said", "caption"} <= set(by)
    assert [q.answer for q in by["present"]] == ["yes", "no"]
    assert by["list"][0].answer == "bell, drum, speech"
    assert by["first"][0].answer == "bell" and by["last"][0].answer == "drum"
    counts = {"bell": "1", "drum": "3", "speech": "1"}
    for q in by["count"]:
        assert q.answer == counts[next(c for c in counts if f"the {c}" in q.question)]
    loud = by["loudest"][0]
    assert loud.answer == "bell" and "bell" in loud.options and "(A)" in loud.question
    said = by["said"][0]
    assert said.answer == "Please close the door." and len(set(said.options)) == 4
    assert qa.caption_of(scene) == 'A bell, then a drum three times, then speech saying "Please close the door".'
    for q in qs:  # every canonical answer scores as correct
        assert qa.is_correct(q, q.answer), q


def test_training_scenes_compare_pairs_of_their_sounds():
    """"Which is louder/longer, A or B?" on each pair whose gap is clear (3 dB, 0.5 s), in
    training scenes only: the dev and test questions stay exactly what they were."""
    scene = _scene([_event("bell", 0.5, 1.5, -10), _event("drum", 2.0, 2.4, -25), _event("drum", 3.0, 3.4, -25),
                    _event("crow", 5.0, 6.9, -11)])
    for seed in range(5):
        qs = qa.questions_for(scene, "train", CLASSES, RULES, SENTENCES, seed=seed)
        louder = [q for q in qs if q.type == "louder"]
        longer = [q for q in qs if q.type == "longer"]
        # levels: bell -10, crow -11, drum -25: bell/crow is within 3 dB, so two pairs
        assert sorted(q.answer for q in louder) == ["bell", "crow"]
        assert all("drum" in q.question for q in louder)
        # durations: bell 1.0, drum 0.8 (two), crow 1.9: bell/drum is within 0.5 s
        assert sorted(q.answer for q in longer) == ["crow", "crow"]
        for q in louder + longer:
            assert q.kind == qa.GENERAL and qa.is_correct(q, q.answer) and not qa.is_correct(q, "drum" if q.answer != "drum" else "bell")
        for split in ("dev", "test"):
            assert not [q for q in qa.questions_for(scene, split, CLASSES, RULES, SENTENCES, seed=seed)
                        if q.type in ("louder", "longer")]
        # drawn after the rest: a dev scene (training wording) gets the same other questions
        dev = qa.questions_for(scene, "dev", CLASSES, RULES, SENTENCES, seed=seed)
        keep = [q.question for q in qs if q.type not in ("louder", "longer", qa.CAPTION)]
        assert keep == [q.question for q in dev if q.type != qa.CAPTION]


def test_prior_breaking_scene_probes_the_missing_consequent():
    scene = _scene([_event("phone ringing", 1.0, 3.0), _event("bell", 5.0, 6.0)], prior="breaking",
                   rule="phone ringing->speech")
    qs = qa.questions_for(scene, "test", CLASSES, RULES, SENTENCES, seed=0)
    probe = [q for q in qs if q.type == "present" and q.answer == "no"]
    assert probe and probe[0].probes_prior and "speech" in probe[0].question and probe[0].prior == "breaking"
    # the order can break the rule too: speech before the phone
    scene = _scene([_event("speech", 0.5, 2.0, text="It is cold today."), _event("phone ringing", 4.0, 6.0)],
                   prior="breaking", rule="phone ringing->speech")
    before = [q for q in qa.questions_for(scene, "test", CLASSES, RULES, SENTENCES, seed=1) if q.type == "before"]
    assert before[0].probes_prior
    first = "phone ringing" if before[0].question.index("phone") < before[0].question.index("speech") else "speech"
    assert before[0].answer == ("no" if first == "phone ringing" else "yes")


def test_test_split_asks_only_held_out_templates():
    scene = _scene([_event("bell", 0.5, 1.5), _event("drum", 2.0, 2.4), _event("speech", 4.0, 6.0, text="It is cold today.")])
    for split in ("train", "dev", "test"):
        for seed in range(5):
            for q in qa.questions_for(scene, split, CLASSES, RULES, SENTENCES, seed=seed):
                held = q.template >= len(qa.TRAIN_TEMPLATES[q.type])
                assert held == (split == "test"), (split, q)
                if split == "test":  # asked exactly in a held-out wording, never framed
                    assert any(q.question.startswith(h.split("{")[0]) for h in qa.HELDOUT[q.type]), q.question


def _four_grams(template: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\{\w+\}|[a-z]+", template.lower())
    return {tuple(words[i:i + 4]) for i in range(len(words) - 3)}


def test_held_out_templates_are_not_near_copies_of_training_ones():
    """The test wording is unseen: no training paraphrase (framed or not) shares four
    consecutive words with a held-out one."""
    for qtype, held in qa.HELDOUT.items():
        assert len(held) >= 2 and len(qa.TRAIN_TEMPLATES[qtype]) >= 8, qtype
        for h in held:
            for t in qa.TRAIN_TEMPLATES[qtype] + [f.format(q="x") for f in qa.FRAMES]:
                assert not _four_grams(h) & _four_grams(t), (qtype, h, t)


def test_training_questions_are_sometimes_framed():
    scene = _scene([_event("bell", 0.5, 1.5), _event("drum", 2.0, 2.4)])
    texts = [q.question for seed in range(40) for q in qa.questions_for(scene, "train", CLASSES, RULES, SENTENCES, seed=seed)]
    framed = [t for t in texts if any(t != f.format(q=t) and t.startswith(f.split("{q}")[0]) and t.endswith(f.split("{q}")[1])
                                      for f in qa.FRAMES)]
    assert 0.1 < len(framed) / len(texts) < 0.45


def test_scoring_parses_free_answers():
    q = qa.Question("s", "present", "omission", "yesno", "Is there a bell?", "yes", 0)
    assert qa.is_correct(q, "Yes, there is.") and not qa.is_correct(q, "no") and not qa.is_correct(q, "")
    q = qa.Question("s", "count", "quantitative", "count", "How many?", "3", 0)
    assert qa.is_correct(q, "three times") and qa.is_correct(q, "3") and not qa.is_correct(q, "twice")
    q = qa.Question("s", "start", "quantitative", "seconds", "When?", "2.4", 0, tolerance=0.5)
    assert qa.is_correct(q, "at 2.8 seconds") and not qa.is_correct(q, "3.0") and not qa.is_correct(q, "soon")
    q = qa.Question("s", "loudest", "general", "choice", "Which?", "drum", 0, options=["bell", "drum", "crow", "beep"])
    assert qa.is_correct(q, "(B) drum") and qa.is_correct(q, "B") and qa.is_correct(q, "the drum")
    assert not qa.is_correct(q, "A") and not qa.is_correct(q, "Bell")
    q = qa.Question("s", "list", "omission", "list", "List.", "bell, drum, speech", 0)
    assert qa.is_correct(q, "speech, the bell and drum") and not qa.is_correct(q, "bell, drum")
    assert qa.caption_events("A phone ringing, then speech.", ["phone ringing", "speech", "ringing"]) == {
        "phone ringing", "speech"}


def test_rules_of_reads_both_forms():
    assert qa.rules_of({"rules": ["a->b", {"trigger": "c", "consequent": "d"}]}) == [("a", "b"), ("c", "d")]
