"""Questions, answers and captions from a scene's exact ground truth (audio_align.scenes).

Every question belongs to one of AHA's four hallucination kinds, or to ``general`` (a
multiple-choice audio QA set standing in for MMAU/MMAR), or is a ``caption`` request, or
asks for a transcript (``asr``):

- ``omission``: is there a X? (the absent classes are chosen among those the training
  priors make likely), list every sound;
- ``identity``: what made the sound at T seconds?
- ``temporal``: did A come before B? which came first? what was the first/last sound?
- ``quantitative``: how many times, when did it start, how long did it last;
- ``general``: four lettered options (MMAU's form): the loudest sound, the longest sound,
  what the speaker said, about how long the recording is. The canonical answer is the
  option's text (a small LM learns to name what it heard more easily than to point at a
  letter); a prediction is right if it names the option or its letter. Training scenes
  also ask ``louder``/``longer`` ("which is louder, A or B?") about pairs of their sounds:
  more to learn level and duration from than one loudest/longest question a scene.
- ``asr`` (training only, never about a scene): what an utterance of the speech corpus
  says (``LalmTrainConfig.asr_corpus``), the speech recognition Qwen2-Audio trains on.

Each question type has a dozen or so training paraphrases (sometimes framed: "Question: ...")
and two held-out ones (``HELDOUT``) that only the test split uses, so the test set asks in
words never trained on.
Answers are canonical strings, scored by :func:`is_correct` by the question's ``type``
(yes/no, a class name, a set of names, a count, seconds within a tolerance, an option).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

KINDS = ("omission", "identity", "temporal", "quantitative")
GENERAL = "general"
CAPTION = "caption"
ASR = "asr"  # transcribing an utterance of the speech corpus (training only)
LETTERS = "ABCD"

# type -> the paraphrases training and dev questions use; {x} {a} {b} {t} are filled from the
# ground truth, {opts} with the options
TRAIN_TEMPLATES: dict[str, list[str]] = {
    "present": [
        "Is there {a_x} in the recording?", "Can you hear {a_x}?", "Does the audio contain {a_x}?",
        "Is {a_x} audible in this clip?", "Is {a_x} present in the audio?", "Does this clip include {a_x}?",
        "Can {a_x} be heard in this recording?", "Is there any sign of {a_x}?", "Does {a_x} occur in the clip?",
        "Did you hear {a_x}?", "Is {a_x} part of this sound scene?", "Answer yes or no: is there {a_x}?",
        "Tell me whether {a_x} is in the audio.", "Is {a_x} among the sounds?",
        "Does the recording have {a_x} in it?", "Could you detect {a_x} in this audio?"],
    "list": [
        "List every sound you hear.", "Which sounds are in the recording?", "Name all the sounds in this clip.",
        "What sounds can be heard?", "What do you hear in this audio?", "List the sounds in the clip.",
        "Name every sound source.", "Which sound sources can you hear?", "What kinds of sounds occur here?",
        "Give all the sounds in this recording.", "Tell me which sounds are present.",
        "What are all the sounds in the audio?", "Identify every sound in the clip.", "Which events are audible?",
        "List each sound that occurs.", "What sources of sound does the recording contain?"],
    "sound_at": [
        "What made the sound at {t} seconds?", "What is heard at {t} seconds?", "Which sound occurs at {t} s?",
        "What can you hear {t} seconds in?", "What sound is playing at {t} seconds?", "Name the sound at {t} s.",
        "What do you hear at {t} seconds?", "Which sound is heard at {t} seconds?",
        "Identify the sound at {t} seconds.", "At {t} s, what do you hear?",
        "What was playing {t} seconds into the clip?", "Tell me what makes the sound at {t} seconds.",
        "Which source produces the sound at {t} seconds?", "At the time {t} seconds, which sound is it?"],
    "before": [
        "Did {the_a} come before {the_b}?", "Was {the_a} heard before {the_b}?",
        "Does {the_a} occur earlier than {the_b}?", "Is {the_a} heard prior to {the_b}?",
        "Is {the_a} heard earlier than {the_b}?", "Did {the_a} start before {the_b}?", "Was {the_a} before {the_b}?",
        "Does {the_a} begin before {the_b}?", "Answer yes or no: did {the_a} come before {the_b}?",
        "Did you hear {the_a} before {the_b}?", "Is {the_a} earlier than {the_b}?", "Did {the_a} precede {the_b}?",
        "Was {the_a} heard sooner than {the_b}?", "Does {the_a} start earlier than {the_b}?",
        "Before {the_b}, was there {the_a}?"],
    "which_first": [
        "Which came first, {the_a} or {the_b}?", "What was heard first: {the_a} or {the_b}?",
        "Which is earlier, {the_a} or {the_b}?", "Between {the_a} and {the_b}, what starts first?",
        "Which started first, {the_a} or {the_b}?", "Which one is heard first: {the_a} or {the_b}?",
        "What comes earlier, {the_a} or {the_b}?", "Which begins first, {the_a} or {the_b}?",
        "Which sound starts earlier, {the_a} or {the_b}?", "Which is heard sooner, {the_a} or {the_b}?",
        "Which occurs first, {the_a} or {the_b}?", "Tell me which came first: {the_a} or {the_b}.",
        "Which happened earlier: {the_a} or {the_b}?"],
    "first": [
        "What was the first sound?", "Which sound comes first?", "What do you hear first?",
        "What is the first sound in the clip?", "What sound do you hear first?", "Which sound starts the clip?",
        "What is heard first in the recording?", "What opens the recording?", "Name the first sound.",
        "Identify the first sound.", "Which sound begins the audio?", "What sound starts earliest?",
        "Tell me the first sound you hear.", "Which sound is earliest?", "What comes first in the audio?",
        "What sound does the clip begin with?"],
    "last": [
        "What was the last sound?", "Which sound comes last?", "What do you hear last?",
        "What is the final sound in the clip?", "What sound do you hear last?", "Which sound ends the clip?",
        "What is heard last in the recording?", "Name the last sound.", "Identify the last sound.",
        "Which sound begins last?", "What sound starts latest?", "Tell me the last sound you hear.",
        "What comes last in the audio?", "Which sound is the final one?", "What sound does the clip end on?",
        "Which event starts last?"],
    "count": [
        "How many times did {the_x} sound?", "How many times is {the_x} heard?", "Count the occurrences of {the_x}.",
        "How often does {the_x} occur?", "How many times do you hear {the_x}?", "Count how often {the_x} sounds.",
        "How many times does {the_x} occur?", "How many occurrences of {the_x} are there?",
        "How frequently is {the_x} heard?", "How many separate times does {the_x} sound?",
        "Count {the_x}: how many times?", "How many instances of {the_x} are there?", "Give the count of {the_x}.",
        "Tell me the count for {the_x}."],
    "start": [
        "When did {the_x} start?", "At what time does {the_x} begin?", "When is {the_x} first heard?",
        "How many seconds in does {the_x} start?", "When does {the_x} begin?", "At what second does {the_x} start?",
        "When do you first hear {the_x}?", "What is the start time of {the_x}?",
        "How far into the clip does {the_x} start?", "Tell me when {the_x} starts.",
        "At what point does {the_x} begin?", "When does {the_x} first sound?", "What time does {the_x} start at?",
        "Give the start time of {the_x} in seconds.", "When is the onset of {the_x}?"],
    "duration": [
        "How long did {the_x} last?", "For how many seconds is {the_x} heard?", "What is the duration of {the_x}?",
        "How long does {the_x} go on?", "How long is {the_x}?", "How many seconds does {the_x} last?",
        "How long does {the_x} sound?", "For how long is {the_x} heard?", "How long can you hear {the_x}?",
        "Tell me how long {the_x} lasts.", "What duration does {the_x} have?", "How many seconds long is {the_x}?",
        "How long is {the_x} audible?", "What is the time span of {the_x}?"],
    "loudest": [
        "Which sound is the loudest? {opts}", "What is the loudest sound? {opts}",
        "Which of these is heard most loudly? {opts}", "Which sound has the highest volume? {opts}",
        "Which sound is heard loudest? {opts}", "Which is the loudest of these sounds? {opts}",
        "Name the loudest sound. {opts}", "Which sound has the most energy? {opts}",
        "What sound is the strongest? {opts}", "Which sound stands out as the loudest? {opts}",
        "Which one is loudest? {opts}", "Choose the loudest sound. {opts}",
        "Which sound is played at the highest level? {opts}", "Select the sound with the greatest volume. {opts}"],
    "longest": [
        "Which sound lasts the longest? {opts}", "What is the longest sound? {opts}",
        "Which of these goes on for the most time? {opts}", "Which sound has the longest duration? {opts}",
        "Which sound goes on the longest? {opts}", "Which of these lasts longest? {opts}",
        "Name the longest sound. {opts}", "What sound continues the longest? {opts}",
        "Which sound is heard for the most time? {opts}", "Choose the sound with the longest duration. {opts}",
        "Which one lasts the longest? {opts}", "Which sound takes up the most time? {opts}",
        "Select the longest-lasting sound. {opts}"],
    # training only (every pair of sounds a scene holds, where the gap is clear): a comparison
    # of two, so that the loudest/longest of several has more to learn from than one question a scene
    "louder": [
        "Which is louder, {the_a} or {the_b}?", "Which sound is louder: {the_a} or {the_b}?",
        "Between {the_a} and {the_b}, which is louder?", "Which is heard more loudly, {the_a} or {the_b}?",
        "Of {the_a} and {the_b}, which has more volume?", "Which is stronger, {the_a} or {the_b}?",
        "Which one is louder, {the_a} or {the_b}?", "Is {the_a} or {the_b} the louder sound?",
        "Which has the higher volume, {the_a} or {the_b}?"],
    "longer": [
        "Which lasts longer, {the_a} or {the_b}?", "Which sound is longer: {the_a} or {the_b}?",
        "Between {the_a} and {the_b}, which goes on longer?", "Which is heard for more time, {the_a} or {the_b}?",
        "Of {the_a} and {the_b}, which lasts longer?", "Which one has the longer duration, {the_a} or {the_b}?",
        "Which continues longer, {the_a} or {the_b}?", "Is {the_a} or {the_b} the longer sound?",
        "Which takes up more time, {the_a} or {the_b}?"],
    "said": [
        "What did the speaker say? {opts}", "What words are spoken? {opts}", "What is said in the recording? {opts}",
        "Which sentence is spoken? {opts}", "What does the voice say? {opts}", "What was said? {opts}",
        "Which words are heard? {opts}", "What does the speaker say? {opts}", "Choose what is said. {opts}",
        "What is spoken in the clip? {opts}", "What words does the voice speak? {opts}",
        "Which of these is said? {opts}", "What do you hear someone say? {opts}",
        "Select the spoken sentence. {opts}", "Which phrase is spoken? {opts}", "What is the voice saying? {opts}"],
    "length": [
        "About how long is the recording? {opts}", "What is the length of this clip? {opts}",
        "Roughly how many seconds does the audio last? {opts}", "How long is this audio? {opts}",
        "How long does the recording last? {opts}", "What is the duration of the audio? {opts}",
        "About how many seconds long is the clip? {opts}", "How long is the recording? {opts}",
        "Roughly how long is this clip? {opts}", "What is the total length of the audio? {opts}",
        "Choose the length of the recording. {opts}", "How many seconds does the clip run? {opts}"],
    # not asked about scenes: the speech corpus's utterances (LalmTrainConfig.asr_corpus), as
    # Qwen2-Audio trains on speech recognition besides captions
    "transcribe": [
        "Transcribe the speech.", "Write out what the speaker says.", "What does the speaker say in this audio?",
        "Transcribe this recording.", "Write down what is said.", "What words are spoken in this clip?",
        "Give the transcript of this audio.", "Repeat exactly what you hear said.",
        "Transcribe what the voice says.", "What is being said?"],
    "caption": [
        "Describe the recording.", "Write a caption for this audio.", "What happens in this clip?",
        "Give a short description of the audio.", "Describe what you hear.", "Describe this audio.",
        "Write a description of the recording.", "Tell me what happens in the audio.",
        "Give a caption for this clip.", "Describe the sound scene.", "Summarize the audio.",
        "Write a short caption.", "What goes on in this recording?"],
}
# type -> the paraphrases only the test split uses (no training paraphrase shares four
# consecutive words with one of them: tests/audio_align/test_qa.py)
HELDOUT: dict[str, list[str]] = {
    "present": [
        "Do you hear {a_x} anywhere in this audio?", "Would you say {a_x} can be heard here?"],
    "list": [
        "Tell me each kind of sound that occurs in this audio.", "Enumerate the sound sources present."],
    "sound_at": [
        "Identify the sound playing at the {t} second mark.", "At {t} seconds, what is the source of the sound?"],
    "before": [
        "Did {the_a} happen ahead of {the_b}?", "Comes {the_a} first, before {the_b}?"],
    "which_first": [
        "Of {the_a} and {the_b}, which one do you hear sooner?", "Which precedes the other, {the_a} or {the_b}?"],
    "first": [
        "Identify the sound the recording opens with.", "Name the earliest sound."],
    "last": [
        "Identify the sound the recording ends with.", "Name the latest sound to begin."],
    "count": [
        "What is the number of times {the_x} can be heard?", "Tally how many times {the_x} appears."],
    "start": [
        "Give the onset time of {the_x}.", "At which second does {the_x} first begin?"],
    "duration": [
        "Give the length of {the_x} in seconds.", "For how much time does {the_x} continue?"],
    "loudest": [
        "Pick the sound that is loudest in the clip. {opts}", "Identify the most intense sound. {opts}"],
    "longest": [
        "Pick the sound heard for the longest stretch. {opts}", "Identify the most sustained sound. {opts}"],
    "louder": [
        "Compare {the_a} with {the_b}: which is more intense?", "Say which sounds more forceful: {the_a} or {the_b}."],
    "longer": [
        "Compare {the_a} with {the_b}: which is more sustained?", "Say which stretches out further, {the_a} or {the_b}."],
    "said": [
        "Pick what the voice says. {opts}", "Identify the spoken words. {opts}"],
    "length": [
        "Estimate the total duration of the clip. {opts}", "The recording runs for about how long? {opts}"],
    "transcribe": [
        "Put the speech into writing.", "Quote the utterance word for word."],
    "caption": [
        "Summarize what can be heard.", "Caption this sound scene."],
}
# a template's index is its place in TEMPLATES[type]: the training ones, then the held-out ones
TEMPLATES: dict[str, list[str]] = {k: TRAIN_TEMPLATES[k] + HELDOUT[k] for k in TRAIN_TEMPLATES}
# training and dev questions are sometimes framed (never test questions): {q} is the question
FRAMES = ["{q} Answer briefly.", "Listen to the audio. {q}", "Question: {q}", "Please answer: {q}",
          "Listen carefully, then answer: {q}", "{q} Keep the answer short."]
FRAME_RATE = 0.25
# type -> (kind, answer type)
TYPES: dict[str, tuple[str, str]] = {
    "present": ("omission", "yesno"), "list": ("omission", "list"),
    "sound_at": ("identity", "class"),
    "before": ("temporal", "yesno"), "which_first": ("temporal", "class"), "first": ("temporal", "class"),
    "last": ("temporal", "class"),
    "count": ("quantitative", "count"), "start": ("quantitative", "seconds"), "duration": ("quantitative", "seconds"),
    "loudest": (GENERAL, "choice"), "longest": (GENERAL, "choice"), "said": (GENERAL, "choice"),
    "louder": (GENERAL, "class"), "longer": (GENERAL, "class"),
    "length": (GENERAL, "choice"), "transcribe": (ASR, "caption"), "caption": (CAPTION, "caption"),
}
LOUDER_DB = 3.0  # the level gap (dB) that makes one sound clearly the louder one
LONGER_S = 0.5  # the duration gap (s) that makes one sound clearly the longer one
PAIRS_PER_SCENE = 3  # "louder"/"longer" training questions a scene gives at most, each
_MASS_NOUNS = {"speech", "music", "applause", "laughter", "noise", "static", "clicks"}
_NUMBER_WORDS = {"zero": 0, "none": 0, "no": 0, "once": 1, "one": 1, "twice": 2, "two": 2, "three": 3,
                 "thrice": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times", 5: "five times"}


@dataclass
class Question:
    """One question about one scene, with its canonical answer."""

    scene: str
    type: str  # a key of TEMPLATES
    kind: str  # omission | identity | temporal | quantitative | general | caption
    answer_type: str  # yesno | class | list | count | seconds | choice | caption
    question: str
    answer: str
    template: int  # index into TEMPLATES[type]
    options: list[str] = field(default_factory=list)
    tolerance: float = 0.0  # seconds answers: accepted distance
    prior: str = "none"  # the scene's co-occurrence prior: consistent | breaking | none
    probes_prior: bool = False  # the question asks about the prior rule's consequent

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def a_np(name: str) -> str:
    """'a bell', 'an alarm', 'speech'."""
    if name in _MASS_NOUNS:
        return name
    return ("an " if name[0] in "aeiou" else "a ") + name


def the_np(name: str) -> str:
    return "the " + name


def _rng(*key: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def template_indices(qtype: str, split: str) -> list[int]:
    """The paraphrases a split may use: the test split only the held-out ones."""
    n, held = len(TEMPLATES[qtype]), len(HELDOUT[qtype])
    return list(range(n - held, n)) if split == "test" else list(range(n - held))


def _options_text(options: Sequence[str]) -> str:
    return "Options: " + " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options)) + "."


def _seconds(x: float) -> str:
    return f"{x:.1f}"


class _Builder:
    def __init__(self, scene: dict, split: str, classes: Sequence[str], rules: Sequence[tuple[str, str]],
                 sentences: Sequence[str], seed: int):
        self.scene, self.split, self.classes, self.rules = scene, split, list(classes), list(rules)
        self.sentences = list(sentences)
        self.rng = _rng(seed, scene["id"])
        self.events = sorted(scene["events"], key=lambda e: (e["onset"], e["offset"]))
        self.present = list(dict.fromkeys(e["class"] for e in self.events))
        self.count = {c: sum(e["class"] == c for e in self.events) for c in self.present}
        self.out: list[Question] = []

    def add(self, qtype: str, answer: str, options: Sequence[str] = (), tolerance: float = 0.0,
            probes_prior: bool = False, **fill: str) -> None:
        kind, answer_type = TYPES[qtype]
        t = int(self.rng.choice(template_indices(qtype, self.split)))
        text = TEMPLATES[qtype][t].format(opts=_options_text(options) if options else "", **fill).strip()
        if self.split != "test" and self.rng.random() < FRAME_RATE:
            text = FRAMES[int(self.rng.integers(len(FRAMES)))].format(q=text)
        self.out.append(Question(self.scene["id"], qtype, kind, answer_type, text, answer, t, list(options),
                                 tolerance, self.scene.get("prior") or "none", probes_prior))

    def pick(self, items: Sequence[Any]) -> Any:
        return items[int(self.rng.integers(len(items)))]

    def consequent(self) -> str | None:
        rule = self.scene.get("prior_rule")
        return rule.split("->", 1)[1] if rule else None

    def omission(self) -> None:
        cons = self.consequent()
        if cons in self.present:  # the rule's consequent is there: ask about it (a prior-probing "yes")
            self.add("present", "yes", probes_prior=True, x=cons, a_x=a_np(cons))
        elif self.present:
            x = self.pick(self.present)
            self.add("present", "yes", x=x, a_x=a_np(x))
        absent = [c for c in self.classes if c not in self.present]
        if absent:
            # hard negatives: what the priors make likely given what is there
            likely = [b for a, b in self.rules if a in self.present and b in absent]
            if cons in absent:
                x, probe = cons, True
            elif likely and self.rng.random() < 0.7:
                x, probe = self.pick(likely), False
            else:
                x, probe = self.pick(absent), False
            self.add("present", "no", probes_prior=probe, x=x, a_x=a_np(x))
        if self.present:
            self.add("list", ", ".join(self.present))

    def _isolated(self) -> list[dict]:
        """Events that overlap no other event."""
        return [e for e in self.events
                if not any(o is not e and o["onset"] < e["offset"] and e["onset"] < o["offset"] for o in self.events)]

    def identity(self) -> None:
        iso = [e for e in self._isolated() if e["offset"] - e["onset"] >= 0.2]
        if iso:
            e = self.pick(iso)
            self.add("sound_at", e["class"], t=_seconds((e["onset"] + e["offset"]) / 2))

    def _first(self, c: str) -> dict:
        return next(e for e in self.events if e["class"] == c)

    def temporal(self) -> None:
        ev = self.events
        if len(ev) >= 2 and ev[1]["onset"] - ev[0]["onset"] >= 0.3 and ev[0]["class"] != ev[1]["class"]:
            self.add("first", ev[0]["class"])
        if len(ev) >= 2 and ev[-1]["onset"] - ev[-2]["onset"] >= 0.3 and ev[-1]["class"] != ev[-2]["class"]:
            self.add("last", ev[-1]["class"])
        pairs = [(a, b) for a in self.present for b in self.present if a < b
                 and abs(self._first(a)["onset"] - self._first(b)["onset"]) >= 0.5]
        rule = self.scene.get("prior_rule")
        if rule:  # ask about the rule's two classes when both are there: the order may break the prior
            a, b = rule.split("->", 1)
            ruled = [p for p in pairs if set(p) == {a, b}]
        else:
            ruled = []
        if pairs:
            a, b = ruled[0] if ruled else self.pick(pairs)
            if self.rng.random() < 0.5:
                a, b = b, a
            earlier = a if self._first(a)["onset"] < self._first(b)["onset"] else b
            self.add("before", "yes" if earlier == a else "no", probes_prior=bool(ruled),
                     the_a=the_np(a), the_b=the_np(b))
            a, b = self.pick(pairs)
            if self.rng.random() < 0.5:
                a, b = b, a
            earlier = a if self._first(a)["onset"] < self._first(b)["onset"] else b
            self.add("which_first", earlier, the_a=the_np(a), the_b=the_np(b))

    def quantitative(self) -> None:
        if not self.present:
            return
        repeated = [c for c in self.present if self.count[c] > 1]
        # most classes sound once: lean toward the repeated ones so that counts are not all "1"
        x = self.pick(repeated) if repeated and self.rng.random() < 0.7 else self.pick(self.present)
        self.add("count", str(self.count[x]), the_x=the_np(x))
        x = self.pick(self.present)
        self.add("start", _seconds(self._first(x)["onset"]), tolerance=0.5, the_x=the_np(x))
        once = [c for c in self.present if self.count[c] == 1]
        if once:
            x = self.pick(once)
            e = self._first(x)
            d = e["offset"] - e["onset"]
            self.add("duration", _seconds(d), tolerance=max(0.3, 0.25 * d), the_x=the_np(x))

    def _choice(self, qtype: str, right: str, pool: Sequence[str]) -> None:
        others = [p for p in dict.fromkeys(pool) if p != right]
        if len(others) < 3:
            return
        picked = list(self.rng.choice(len(others), size=3, replace=False))
        options = [others[i] for i in picked] + [right]
        order = self.rng.permutation(4)
        options = [options[i] for i in order]
        self.add(qtype, right, options=options)

    def general(self) -> None:
        # (most-question, pair-question, each sound's value, the gap that puts one sound clearly ahead)
        scales: list[tuple[str, str, dict[str, float], float]] = []
        if len(self.present) >= 2:
            scales = [
                ("loudest", "louder", {c: max(e["level_db"] for e in self.events if e["class"] == c)
                                       for c in self.present}, LOUDER_DB),
                ("longest", "longer", {c: sum(e["offset"] - e["onset"] for e in self.events if e["class"] == c)
                                       for c in self.present}, LONGER_S)]
        for most, _, value, margin in scales:
            ranked = sorted(self.present, key=lambda c: -value[c])
            if value[ranked[0]] - value[ranked[1]] >= margin:
                absent = [c for c in self.classes if c not in self.present]
                # the other options are sounds that are there with less of it, then absent ones
                pool = ranked[1:] + [absent[i] for i in self.rng.permutation(len(absent))]
                self._choice(most, ranked[0], pool[:3])
        spoken = [e for e in self.events if e.get("text")]
        if len(spoken) == 1 and self.sentences:
            text = spoken[0]["text"]
            pool = [self.sentences[i] for i in self.rng.permutation(len(self.sentences))]
            self._choice("said", text, [s for s in pool if s != text][:3] + [text])
        d = float(self.scene["duration"])
        lengths = [4, 8, 12, 16, 20]
        right = min(lengths, key=lambda x: abs(x - d))
        if abs(right - d) <= 1.5:  # only clear cases
            opts = [f"{x} seconds" for x in lengths if x != right]
            self._choice("length", f"{right} seconds", opts)
        if self.split == "train":  # after the rest: the other splits' draws stay as they were
            for _, more, value, margin in scales:
                self._pairs(more, value, margin)

    def _pairs(self, qtype: str, value: dict[str, float], margin: float) -> None:
        """Up to PAIRS_PER_SCENE questions "which is more, A or B?" on pairs of the scene's sounds
        whose values differ by ``margin`` or more; the answer is the greater one."""
        pairs = [(a, b) for i, a in enumerate(self.present) for b in self.present[i + 1:]
                 if abs(value[a] - value[b]) >= margin]
        for k in self.rng.permutation(len(pairs))[:PAIRS_PER_SCENE]:
            a, b = pairs[int(k)]
            right = a if value[a] > value[b] else b
            if self.rng.random() < 0.5:
                a, b = b, a
            self.add(qtype, right, the_a=the_np(a), the_b=the_np(b))

    def caption(self) -> None:
        self.add(CAPTION, caption_of(self.scene))


def transcription_question(utterance: str, text: str, seed: int = 0) -> Question:
    """A training question about one utterance of a speech corpus: what it says."""
    rng = _rng(seed, "transcribe", utterance)
    t = int(rng.choice(template_indices("transcribe", "train")))
    return Question(utterance, "transcribe", ASR, "caption", TEMPLATES["transcribe"][t], text, t)


def caption_of(scene: dict) -> str:
    """The reference caption: the sound classes in order of first onset, with counts and speech."""
    events = sorted(scene["events"], key=lambda e: e["onset"])
    parts = []
    for c in dict.fromkeys(e["class"] for e in events):
        mine = [e for e in events if e["class"] == c]
        n = len(mine)
        part = a_np(c) if n == 1 else f"{a_np(c)} {_TIMES.get(n, f'{n} times')}"
        texts = [e["text"] for e in mine if e.get("text")]
        if texts and n == 1:
            part += f" saying \"{texts[0].rstrip('.!?')}\""
        parts.append(part)
    if not parts:
        return "Only background noise."
    text = ", then ".join(parts)
    return text[0].upper() + text[1:] + "."


def questions_for(scene: dict, split: str, classes: Sequence[str], rules: Sequence[tuple[str, str]],
                  sentences: Sequence[str], seed: int = 0, captions: bool = True) -> list[Question]:
    """Every question the ground truth of ``scene`` supports (deterministic for ``seed``)."""
    b = _Builder(scene, split, classes, rules, sentences, seed)
    b.omission()
    b.identity()
    b.temporal()
    b.quantitative()
    b.general()
    if captions:
        b.caption()
    return b.out


def spoken_sentences(scenes: Iterable[dict]) -> list[str]:
    """The sentences (two words or more) spoken in ``scenes``: the options of "what was said"."""
    return sorted({e["text"] for s in scenes for e in s["events"] if e.get("text") and " " in e["text"]})


def questions_by_scene(scenes: Sequence[dict], split: str, classes: Sequence[str],
                       rules: Sequence[tuple[str, str]], seed: int = 0) -> list[list[Question]]:
    """The questions of each scene (``[i]`` are ``scenes[i]``'s), as :func:`build_questions` asks them."""
    sentences = spoken_sentences(scenes)
    return [questions_for(s, split, classes, rules, sentences, seed) for s in scenes]


def build_questions(scenes: Iterable[dict], split: str, classes: Sequence[str],
                    rules: Sequence[tuple[str, str]], seed: int = 0) -> list[Question]:
    """The questions of every scene, in the templates ``split`` may use (the test split: the
    held-out ones; pass split="train" to ask test scenes in the training templates)."""
    return [q for qs in questions_by_scene(list(scenes), split, classes, rules, seed) for q in qs]


def rules_of(manifest: dict) -> list[tuple[str, str]]:
    """The co-occurrence rules of a corpus manifest as (trigger, consequent) class pairs."""
    out = []
    for r in manifest.get("rules", []):
        if isinstance(r, str):
            a, _, b = r.partition("->")
        else:
            a, b = r.get("trigger") or r.get("if"), r.get("consequent") or r.get("then")
        out.append((str(a).strip(), str(b).strip()))
    return out


def write_questions(root: Path, seed: int = 0) -> dict[str, int]:
    """Write ``<root>/<split>/qa.jsonl`` for every split of a scene corpus; returns counts.
    (Training and evaluation rebuild the same questions from the scenes; the files are for
    reading and for other tools.)"""
    from audio_align.scenes import read_manifest, read_scenes
    from compress.files import write_text_atomic

    manifest = read_manifest(root)
    counts = {}
    for split in ("train", "dev", "test"):
        if not (root / split / "scenes.jsonl").is_file():
            continue
        qs = build_questions(read_scenes(root, split), split, manifest["classes"], rules_of(manifest), seed)
        write_text_atomic(root / split / "qa.jsonl", "".join(json.dumps(q.to_json(), ensure_ascii=False) + "\n" for q in qs))
        counts[split] = len(qs)
    return counts


# ---------------------------------------------------------------- scoring

def _norm(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"[\"'.!?]", "", text)
    text = re.sub(r"^(it is|it was|its|the answer is|answer:)\s+", "", text)
    text = re.sub(r"^(a|an|the)\s+", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _items(text: str) -> set[str]:
    return {_norm(p) for p in re.split(r",|\band\b", text) if _norm(p)}


def parse_number(text: str) -> float | None:
    m = re.search(r"-?\d+(?:\.\d+)?", text)
    if m:
        return float(m.group())
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in _NUMBER_WORDS:
            return float(_NUMBER_WORDS[w])
    return None


def parse_choice(text: str, options: Sequence[str]) -> str | None:
    """The letter a prediction picks: '(B)', 'B', 'B) ...', or the text of an option."""
    m = re.match(r"\s*\(?([A-D])\)?(?:\W|$)", text)
    if m:
        return m.group(1)
    norm = _norm(text)
    for i, o in enumerate(options):
        if _norm(o) == norm:
            return LETTERS[i]
    return None


def is_correct(q: Question | dict, prediction: str) -> bool:
    """Whether ``prediction`` answers ``q`` (a Question or its JSON)."""
    q = q if isinstance(q, dict) else q.to_json()
    kind = q["answer_type"]
    pred = prediction.strip()
    if kind == "yesno":
        words = re.findall(r"[a-z]+", pred.lower())
        return bool(words) and words[0] == q["answer"]
    if kind == "class":
        return _norm(pred) == _norm(q["answer"])
    if kind == "list":
        return _items(pred) == _items(q["answer"])
    if kind == "count":
        n = parse_number(pred)
        return n is not None and n == float(q["answer"])
    if kind == "seconds":
        n = parse_number(pred)
        return n is not None and abs(n - float(q["answer"])) <= q["tolerance"] + 1e-9
    if kind == "choice":
        return parse_choice(pred, q["options"]) == LETTERS[q["options"].index(q["answer"])]
    if kind == "caption":
        return _norm(pred) == _norm(q["answer"])
    raise ValueError(f"unknown answer type {kind!r}")


def caption_events(caption: str, classes: Sequence[str]) -> set[str]:
    """The classes a caption names (longest names first, so 'phone ringing' is not also 'ringing')."""
    text = caption.lower()
    found = set()
    for c in sorted(classes, key=len, reverse=True):
        if re.search(rf"\b{re.escape(c)}\b", text):
            found.add(c)
            text = re.sub(rf"\b{re.escape(c)}\b", " ", text)
    return found
