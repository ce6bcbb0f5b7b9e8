"""Simultaneous policies in SimulEval's shape: states in, ReadAction or WriteAction out.

    agent.reset(doc)                       # a new stream (only the oracle looks at doc)
    action = agent.policy(states)          # states: source read so far, target written so far
    ReadAction()                           # one more source character, please
    WriteAction("words ...", finished)     # commit these English words (never taken back)

The source unit is a Chinese character; the target unit is an English word (what
SimulEval's text evaluation counts). Policies:

- :class:`WaitK`: read k characters, then alternate: one target token per character
  (STACL's g(t) = k + t - 1 over target tokens); at the end of the source, finish. The
  model may be a full-sentence model (test-time wait-k) or a prefix-to-prefix one.
- :class:`LocalAgreement`: every ``chunk`` characters translate the whole prefix (continuing
  the committed words) and commit the longest common prefix of this hypothesis and the
  previous one (Liu et al. 2020; Polák et al. 2022).
- :class:`Segmentation`: a streaming boundary detector decides where a segment ends (after
  ``lookahead`` more characters, or at once when the segment reaches ``max_len``); the
  segment is translated at once and its translation committed.
- :class:`FullSentence`: the oracle boundaries: each true sentence is translated when its
  last character has been read: the quality ceiling of sentence-level translation.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from speech.model_config import EOS_ID
from simul.data import Document
from simul.translator import Translator


@dataclass
class ReadAction:
    pass


@dataclass
class WriteAction:
    content: str  # space-separated words; may be empty when only ``finished`` is news
    finished: bool = False


@dataclass
class States:
    source: str = ""  # the characters read so far
    target: list[str] = field(default_factory=list)  # the words written so far
    source_finished: bool = False


class Agent(Protocol):
    name: str

    def reset(self, doc: Document | None = None) -> None: ...

    def policy(self, states: States) -> ReadAction | WriteAction: ...


# Segments are translated with beam search (beam 4, length penalty 0.5: +3.4 BLEU over
# greedy on general dev sentences, BENCHMARKS.md); policies that re-decode at every step
# (wait-k, local agreement) stay greedy.
SEGMENT_BEAM, SEGMENT_LENPEN = 4, 0.5


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MIN_SENTENCE_WORDS = 3  # "Yes." or "(y/N)" said twice is no repeat


def split_sentences(text: str) -> list[str]:
    """``text`` cut after . ! ? (the pieces keep their punctuation)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def sentence_key(sentence: str) -> str | None:
    """A sentence lowercased without punctuation: what makes two sentences the same
    (None for one under three words, which may repeat freely)."""
    words = re.sub(r"[^\w\s]", " ", sentence.lower()).split()
    return " ".join(words) if len(words) >= MIN_SENTENCE_WORDS else None


class SaidSentences:
    """The sentences a stream's output has said, each with the source segments that said
    it, so that a segment does not say again what another source segment already said
    (an undertrained model gives many different sources one stock sentence)."""

    def __init__(self) -> None:
        self.sources: dict[str, set[str]] = {}

    def repeats(self, text: str, source: str) -> list[bool]:
        """Per sentence of ``text``: would it repeat one a different source said?"""
        keys = [sentence_key(s) for s in split_sentences(text)]
        return [k is not None and bool(self.sources.get(k, set()) - {source}) for k in keys]

    def add(self, text: str, source: str) -> None:
        for s in split_sentences(text):
            k = sentence_key(s)
            if k is not None:
                self.sources.setdefault(k, set()).add(source)


def translate_segment(translator: Translator, segment: str, beam: int = SEGMENT_BEAM,
                      length_penalty: float = SEGMENT_LENPEN, said: SaidSentences | None = None) -> str:
    """The translation of one segment ("" for an empty one). With ``said``, the best of the
    beam's hypotheses that repeats no sentence of another segment; if each does, the best
    without its repeated sentences."""
    if not segment:
        return ""
    if said is None or not said.sources:
        (ids,) = translator.translate([segment], beam=beam, length_penalty=length_penalty)
        return translator.detokenize(ids)
    texts = [translator.detokenize(ids) for ids in translator.nbest(segment, beam, length_penalty)]
    if not texts:
        return ""
    for text in texts:
        if not any(said.repeats(text, segment)):
            return text
    best = texts[0]
    return " ".join(s for s, r in zip(split_sentences(best), said.repeats(best, segment)) if not r)


def timed_translation(agent, segment: str) -> str:
    """translate_segment with the agent's translator, beam and said sentences, its time kept
    in ``agent.segment_seconds`` (the per-segment decoding times eval simul reports)."""
    t0 = time.perf_counter()
    text = translate_segment(agent.tr, segment, agent.beam, said=agent.said)
    agent.said.add(text, segment)
    agent.segment_seconds.append(time.perf_counter() - t0)
    return text


def _is_word_start(translator: Translator, token: int) -> bool:
    return translator.tgt_tok.sp.id_to_piece(token).startswith("\u2581")


class WaitK:
    """Wait-k over the stream: ``k`` characters ahead of the target tokens."""

    def __init__(self, translator: Translator, k: int):
        if k < 1:
            raise ValueError(f"wait-k: k must be at least 1, got {k}")
        self.tr, self.k = translator, k
        self.guard = translator.guard
        self.name = f"waitk-{k}"
        self.reset()

    def reset(self, doc: Document | None = None) -> None:
        self.tokens: list[int] = []  # target tokens decided so far
        self.word_start = 0  # where the word not yet written starts in self.tokens

    def _flush(self, finished: bool) -> WriteAction:
        words = self.tr.detokenize(self.tokens[self.word_start:])
        self.word_start = len(self.tokens)
        return WriteAction(words, finished)

    def policy(self, states: States) -> ReadAction | WriteAction:
        while True:
            if not states.source_finished and len(states.source) < self.k + len(self.tokens):
                return ReadAction()
            limit = int(self.tr.max_len_a * len(states.source) + self.tr.max_len_b)
            token = self.tr.next_token(states.source, self.tokens) if len(self.tokens) < limit else EOS_ID
            if token != EOS_ID and bool(self.guard.must_stop(torch.tensor([self.tokens + [token]]))[0]):
                token = EOS_ID  # it would repeat itself: wait for more source (or end)
            if token == EOS_ID:
                if states.source_finished:
                    return self._flush(True)
                return ReadAction()  # the model would stop, the stream goes on: read
            if _is_word_start(self.tr, token) and len(self.tokens) > self.word_start:
                words = self.tr.detokenize(self.tokens[self.word_start:])
                self.word_start = len(self.tokens)
                self.tokens.append(token)
                if words:
                    return WriteAction(words)
            else:
                self.tokens.append(token)


class LocalAgreement:
    """Commit what two consecutive re-translations of the growing prefix agree on."""

    def __init__(self, translator: Translator, chunk: int, beam: int = 1):
        if chunk < 1:
            raise ValueError(f"local agreement: chunk must be at least 1, got {chunk}")
        self.tr, self.chunk, self.beam = translator, chunk, beam
        self.name = f"la-{chunk}"
        self.reset()

    def reset(self, doc: Document | None = None) -> None:
        self.previous: list[str] | None = None  # the last full hypothesis, in words
        self.last_len = 0  # source characters at the last translation

    def _hypothesis(self, source: str, committed: list[str]) -> list[str]:
        prefix = self.tr.tgt_tok.encode(" ".join(committed)) if committed else []
        (cont,) = self.tr.translate([source], beam=self.beam, committed=[prefix])
        return self.tr.words(prefix + cont)

    def policy(self, states: States) -> ReadAction | WriteAction:
        n = len(states.source)
        if states.source_finished:
            words = self._hypothesis(states.source, states.target)[len(states.target):]
            return WriteAction(" ".join(words), True)
        if n - self.last_len < self.chunk:
            return ReadAction()
        self.last_len = n
        hyp = self._hypothesis(states.source, states.target)
        prev, self.previous = self.previous, hyp
        if prev is None:
            return ReadAction()
        agree = 0
        while agree < min(len(prev), len(hyp)) and prev[agree] == hyp[agree]:
            agree += 1
        new = hyp[len(states.target):agree]
        return WriteAction(" ".join(new)) if new else ReadAction()


class Segmentation:
    """Cut where the boundary detector says (or at ``max_len``); translate each segment at once."""

    def __init__(self, translator: Translator, segmenter, threshold: float = 0.5, max_len: int = 40,
                 beam: int = SEGMENT_BEAM):
        self.tr, self.seg = translator, segmenter
        self.threshold, self.max_len, self.beam = threshold, max_len, beam
        self.lookahead = segmenter.cfg.lookahead
        self.name = f"seg-{threshold:g}"
        self.segment_seconds: list[float] = []  # decoding time of each committed segment
        self.reset()

    def reset(self, doc: Document | None = None) -> None:
        self.said = SaidSentences()
        self.start = 0  # where the segment being read begins
        self.checked = 0  # positions up to here have been decided
        self.last_segment = ""  # the source of the last committed segment

    def _translate(self, segment: str, finished: bool) -> WriteAction:
        self.last_segment = segment
        return WriteAction(timed_translation(self, segment), finished)

    def next_cut(self, source: str, finished: bool) -> int | None:
        """The next cut position decidable with what has been read, or None (read more).

        Positions are decided in order, each once: a boundary at ``p`` once ``p + lookahead``
        characters are read (or the stream has ended); a forced cut at ``start + max_len``
        as soon as it is read and the positions before it are decided. So the cuts equal
        :func:`simul.segmenter.cut_positions` on the whole stream.
        """
        n = len(source)
        while True:
            p = self.checked + 1
            if p > n or (p == n and finished):
                return None
            if p - self.start >= self.max_len:
                self.checked = p
                return p
            if p == n or (p + self.lookahead > n and not finished):
                return None
            self.checked = p
            if self.seg.prob(source, p) >= self.threshold:
                return p

    def policy(self, states: States) -> ReadAction | WriteAction:
        p = self.next_cut(states.source, states.source_finished)
        if p is not None:
            segment, self.start = states.source[self.start:p], p
            return self._translate(segment, False)
        if states.source_finished:
            return self._translate(states.source[self.start:], True)
        return ReadAction()


class FullSentence:
    """The oracle: translate each true sentence once it has been read in full."""

    def __init__(self, translator: Translator, beam: int = SEGMENT_BEAM):
        self.tr, self.beam = translator, beam
        self.name = "full-sentence"
        self.segment_seconds: list[float] = []
        self.reset()

    def reset(self, doc: Document | None = None) -> None:
        self.bounds = list(doc.boundaries) if doc is not None else []
        self.said = SaidSentences()
        self.start = 0

    def policy(self, states: States) -> ReadAction | WriteAction:
        if self.bounds and len(states.source) >= self.bounds[0]:
            end = self.bounds.pop(0)
        elif states.source_finished:
            end = len(states.source)
            self.bounds = []
        else:
            return ReadAction()
        segment, self.start = states.source[self.start:end], end
        return WriteAction(timed_translation(self, segment), states.source_finished and not self.bounds)


@dataclass
class Commit:
    """What a WriteAction committed: its words, the characters read then, and when."""

    words: list[str]
    source_read: int
    seconds: float  # since the session started
    finished: bool


class StreamSession:
    """Drives an agent over a stream that arrives piece by piece (SimulEval's loop).

    ``feed(text)`` appends characters one at a time; after each the agent is asked for
    actions until it wants to read again. ``feed(text, finished=True)`` marks the last
    character as the end of the stream (as SimulEval sends the last segment), after
    which the agent must write until it says ``finished``.
    """

    def __init__(self, agent: Agent, doc: Document | None = None, clock=time.perf_counter):
        self.agent, self.clock = agent, clock
        self.t0 = clock()
        agent.reset(doc)
        self.states = States()
        self.done = False

    def _drive(self) -> list[Commit]:
        out = []
        guard = 0
        while not self.done:
            guard += 1
            if guard > 10_000:
                raise RuntimeError(f"{self.agent.name}: 10000 actions without reading or finishing")
            action = self.agent.policy(self.states)
            if isinstance(action, ReadAction):
                if self.states.source_finished:
                    raise RuntimeError(f"{self.agent.name}: asked to read past the end of the stream")
                break
            words = action.content.split()
            self.states.target.extend(words)
            self.done = action.finished
            out.append(Commit(words, len(self.states.source), self.clock() - self.t0, action.finished))
        return out

    def feed(self, text: str, finished: bool = False) -> list[Commit]:
        if self.done or self.states.source_finished:
            raise RuntimeError(f"{self.agent.name}: the stream has already ended")
        out: list[Commit] = []
        for i, ch in enumerate(text):
            self.states.source += ch
            self.states.source_finished = finished and i == len(text) - 1
            out += self._drive()
        if finished and not text:
            self.states.source_finished = True
            out += self._drive()
        return out


def run_stream(agent: Agent, source: str, doc: Document | None = None, clock=time.perf_counter
               ) -> tuple[list[str], list[int], list[float]]:
    """The whole ``source`` through a :class:`StreamSession` -> (words, delays, elapsed):
    a word's delay is the number of source characters read when it was written; elapsed
    is the wall-clock milliseconds since the start of the stream at that moment
    (SimulEval's computation-aware time)."""
    session = StreamSession(agent, doc, clock)
    words: list[str] = []
    delays: list[int] = []
    elapsed: list[float] = []
    for c in session.feed(source, finished=True):
        words += c.words
        delays += [c.source_read] * len(c.words)
        elapsed += [c.seconds * 1000.0] * len(c.words)
    return words, delays, elapsed


def policies_from_spec(spec: str, translator: Translator, waitk_translator: Translator | None = None,
                       segmenter=None, max_len: int = 40) -> list[Agent]:
    """``waitk:1,3,5`` / ``waitk-trained:3`` / ``la:2,4`` / ``seg:0.3,0.5`` / ``full`` -> agents."""
    name, _, values = spec.partition(":")
    vals: Sequence[str] = [v for v in values.split(",") if v] if values else []
    if name == "waitk":
        return [WaitK(translator, int(v)) for v in vals]
    if name == "waitk-trained":
        if waitk_translator is None:
            raise ValueError("policy waitk-trained needs a prefix-to-prefix model (--waitk-model)")
        agents = [WaitK(waitk_translator, int(v)) for v in vals]
        for a in agents:
            a.name = f"waitk-trained-{a.k}"
        return agents
    if name == "la":
        return [LocalAgreement(translator, int(v)) for v in vals]
    if name == "seg":
        if segmenter is None:
            raise ValueError("policy seg needs a boundary detector (--segmenter)")
        return [Segmentation(translator, segmenter, float(v), max_len) for v in vals]
    if name == "full":
        return [FullSentence(translator)]
    raise ValueError(f"unknown policy '{name}' (known: waitk, waitk-trained, la, seg, full)")
