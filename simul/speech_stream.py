"""Streaming speech translation: audio arrives in chunks, each segment is translated once final.

The first policy (issue 27) is segmentation at pauses: a streaming energy detector over
10 ms frames closes a segment after ``min_pause_s`` of non-speech, or cuts it at its
quietest frame once it reaches ``max_segment_s``; the closed segment is translated at
once, into every target language, and committed (never taken back).

    stream = PauseSegmentation(translator, ["de", "fr"])
    for chunk in chunks:                     # float32 samples at 16 kHz, any chunk size
        for c in stream.push(chunk):
            print(c.start, c.end, c.texts)   # seconds of the stream, {lang: text}
    for c in stream.finish(): ...            # the end of the stream closes the last segment

Memory is bounded by ``max_segment_s``: only the open segment's samples and frame powers
are kept, however long the stream. A frame is speech when its power is above both
``floor_db`` (dBFS) and ``threshold_db`` below the loudest frame heard so far.

Two more policies write before their segment closes; both run inside the segments of the
same detector, whose pauses (and cuts at ``max_segment_s``) are where they trim their
buffer, as whisper_streaming's voice-activity controller does. Every ``chunk_s`` of new
audio they re-decode the open segment greedily, continuing what they have committed:

- :class:`LocalAgreement` (whisper_streaming's LocalAgreement-n): commit the longest
  prefix on which the last ``n`` decodings agree;
- :class:`WaitK` (wait-k over encoder chunks): after ``k`` chunks of a segment, one more
  word (a character in Chinese and Japanese) may be committed per chunk.

When the segment closes, the rest of its translation is decoded with the full beam
(continuing the committed words) and committed. A commit ends at a word boundary (after
a whole word; in ja/zh after a whole character), so no word is printed in two halves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TextIO

import numpy as np

from speech.audio import SAMPLE_RATE, load_audio
from speech.decode import DecodingOptions
from speech.translate import srt_timestamp

FRAME = SAMPLE_RATE // 100  # 10 ms


@dataclass
class StreamCommit:
    """A final segment: where it lies in the stream, its translations, and when it was committed."""

    start: float  # seconds of audio since the stream began
    end: float
    texts: dict[str, str]
    committed_at: float  # seconds of audio read when it was committed (computation-unaware delay)
    wall: float  # seconds of wall clock since the stream began (computation-aware)


@dataclass
class PauseSettings:
    min_pause_s: float = 0.5  # non-speech that closes a segment
    max_segment_s: float = 15.0  # a longer segment is cut at its quietest frame
    min_speech_s: float = 0.15  # shorter bursts are dropped (clicks)
    threshold_db: float = 40.0  # speech: within this of the loudest frame so far ...
    floor_db: float = -55.0  # ... and above this absolute level (dBFS)
    pad_s: float = 0.1  # kept before and after the speech of a segment

    def __post_init__(self) -> None:
        if not (self.min_pause_s > 0 and self.max_segment_s > 2 * self.min_speech_s and self.pad_s >= 0):
            raise ValueError(f"PauseSettings: need min_pause_s > 0, max_segment_s > 2 * min_speech_s, pad_s >= 0; "
                             f"got {self.min_pause_s}, {self.max_segment_s}, {self.min_speech_s}, {self.pad_s}")


@dataclass
class _Open:
    """The segment being heard: its samples from ``start`` (a sample index of the stream)."""

    start: int
    samples: list[np.ndarray] = field(default_factory=list)
    db: list[float] = field(default_factory=list)  # per frame
    last_speech: int = 0  # frame index (within the segment) after the last speech frame
    speech_frames: int = 0


class PauseSegmentation:
    """Segments at pauses, each translated into ``langs`` when it closes (see the module docstring)."""

    name = "pause"

    def __init__(self, translator, langs: list[str], settings: PauseSettings | None = None,
                 opts: DecodingOptions | None = None, clock=time.perf_counter):
        translator.check_languages(langs)
        self.tr, self.langs = translator, list(langs)
        self.cfg = settings or PauseSettings()
        if self.cfg.max_segment_s > translator.max_segment_s:  # what the encoder takes
            self.cfg = dataclasses.replace(self.cfg, max_segment_s=translator.max_segment_s)
        self.opts = opts or DecodingOptions(beam_size=5)
        self.clock, self.t0 = clock, clock()
        self.read = 0  # samples read
        self.rest = np.zeros(0, dtype=np.float32)  # samples not yet a whole frame
        self.loudest = -math.inf
        self.open: _Open | None = None
        self.pad = round(self.cfg.pad_s * 100)  # in frames
        self.tail: list[np.ndarray] = []  # the last ``pad`` frames before speech (kept as the segment's lead-in)

    # ------------------------------------------------------------------ input

    def push(self, samples: np.ndarray) -> list[StreamCommit]:
        """Read ``samples`` (float32 at 16 kHz); commit the segments they close."""
        x = np.concatenate([self.rest, np.asarray(samples, dtype=np.float32)])
        n = len(x) // FRAME
        self.rest = x[n * FRAME:]
        out: list[StreamCommit] = []
        for i in range(n):
            frame = x[i * FRAME:(i + 1) * FRAME]
            self.read += FRAME
            out += self._frame(frame)
        return out + self._progress()

    def _progress(self) -> list[StreamCommit]:
        """After each push: what a policy writes while its segment is still open (here: nothing)."""
        return []

    def partial(self) -> dict[str, str]:
        """The unstable tail: what the last decoding of the open segment says beyond what is
        committed, per language (empty for a policy that does not decode open segments)."""
        return {}

    def finish(self) -> list[StreamCommit]:
        """The stream has ended: the open segment (with any last partial frame) closes."""
        if len(self.rest) and self.open is not None:
            self.open.samples.append(self.rest)
            self.read += len(self.rest)
        self.rest = np.zeros(0, dtype=np.float32)
        return self._close(len(self.open.db)) if self.open is not None else []

    # ------------------------------------------------------------------ the detector

    def _frame(self, frame: np.ndarray) -> list[StreamCommit]:
        db = 10 * math.log10(float(np.mean(frame.astype(np.float64) ** 2)) + 1e-12)
        self.loudest = max(self.loudest, db)
        speech = self._is_speech(db)
        if self.open is None:
            if not speech:
                self.tail = (self.tail + [frame])[-self.pad:] if self.pad else []
                return []
            start = self.read - FRAME * (len(self.tail) + 1)
            self.open = _Open(start, samples=list(self.tail), db=[-math.inf] * len(self.tail))
            self.tail = []
        seg = self.open
        seg.samples.append(frame)
        seg.db.append(db)
        if speech:
            seg.last_speech = len(seg.db)
            seg.speech_frames += 1
        out: list[StreamCommit] = []
        if len(seg.db) - seg.last_speech >= round(self.cfg.min_pause_s * 100):
            out += self._close(min(len(seg.db), seg.last_speech + self.pad))
        elif len(seg.db) >= round(self.cfg.max_segment_s * 100):
            out += self._cut()
        return out

    def _cut(self) -> list[StreamCommit]:
        """At the maximum length: cut at the quietest frame of the segment's second half."""
        seg = self.open
        half = len(seg.db) // 2
        cut = half + int(np.argmin(seg.db[half:])) + 1
        return self._close(cut, reopen=True)

    def _close(self, frames: int, reopen: bool = False) -> list[StreamCommit]:
        """Commit the first ``frames`` frames of the open segment; with ``reopen`` the rest
        starts the next segment, else the rest (silence) is dropped."""
        seg = self.open
        audio = np.concatenate(seg.samples) if seg.samples else np.zeros(0, dtype=np.float32)
        cut = min(len(audio), frames * FRAME)
        piece, left = audio[:cut], audio[cut:]
        speech_s = min(seg.speech_frames, frames) / 100
        self.open = None
        if reopen and len(left):
            rest_db = seg.db[frames:]
            last = max((i + 1 for i, d in enumerate(rest_db) if self._is_speech(d)), default=0)
            self.open = _Open(seg.start + cut, samples=[left], db=rest_db, last_speech=last,
                              speech_frames=sum(self._is_speech(d) for d in rest_db))
        if speech_s < self.cfg.min_speech_s or not len(piece):
            self._dropped()
            return []
        texts = self._translate(piece)
        return [self._commit(texts, seg.start, seg.start + len(piece))]

    def _commit(self, texts: dict[str, str], start: int, end: int) -> StreamCommit:
        """A commit of ``texts`` for the stream's samples ``start:end``, stamped now."""
        return StreamCommit(round(start / SAMPLE_RATE, 3), round(end / SAMPLE_RATE, 3), texts,
                            round(self.read / SAMPLE_RATE, 3), round(self.clock() - self.t0, 3))

    def _dropped(self) -> None:
        """A closed segment was too short to be speech (a click): nothing to translate."""

    def _is_speech(self, db: float) -> bool:
        return db > self.cfg.floor_db and db > self.loudest - self.cfg.threshold_db

    def _translate(self, piece: np.ndarray) -> dict[str, str]:
        feats = self.tr.features(piece)
        if len(feats) == 0:
            return {lang: "" for lang in self.langs}
        (results,) = self.tr.decode([feats], self.langs, self.opts)
        return {lang: self.tr.text(r) for lang, r in zip(self.langs, results)}


CJK = frozenset({"ja", "zh"})  # languages written without spaces: a character is a unit


class _EarlyWriter(PauseSegmentation):
    """A policy that commits words of the open segment before it closes (see the module docstring):
    every ``chunk_s`` of new audio it decodes the segment greedily, continuing the tokens it has
    committed, and :meth:`_choose` says how much of that continuation to commit."""

    def __init__(self, translator, langs: list[str], chunk_s: float, settings: PauseSettings | None = None,
                 opts: DecodingOptions | None = None, clock=time.perf_counter):
        super().__init__(translator, langs, settings, opts, clock)
        if not chunk_s > 0:
            raise ValueError(f"{type(self).__name__}: chunk_s must be positive, got {chunk_s}")
        self.chunk_s, self.step = chunk_s, max(1, round(chunk_s * 100))  # in frames
        self.greedy = dataclasses.replace(self.opts, beam_size=1, nbest=1, ctc_weight=0.0)
        self.opts = dataclasses.replace(self.opts, ctc_weight=0.0)  # joint CTC cannot continue a forced start
        self.decodes = 0  # decodings made (the cost of writing early)
        self._dropped()

    def _dropped(self) -> None:  # a new segment: nothing committed in it yet
        self.tokens: dict[str, list[int]] = {lang: [] for lang in self.langs}  # committed in this segment
        self.shown: dict[str, str] = {lang: "" for lang in self.langs}  # their text, as printed
        self.units: dict[str, int] = {lang: 0 for lang in self.langs}  # words (characters in ja/zh) committed
        self.decoded_at = 0  # frames of the open segment at its last decoding
        self.unstable: dict[str, str] = {}  # the tail after the last decoding (see partial)

    def partial(self) -> dict[str, str]:
        return dict(self.unstable) if self.open is not None else {}

    def _continue(self, audio: np.ndarray, opts: DecodingOptions) -> dict[str, tuple[list[int], bool]]:
        """Per language: the decoded continuation of the committed tokens, and whether it ended (eos)."""
        feats = self.tr.features(audio)
        self.decodes += 1
        if len(feats) == 0:
            return {lang: ([], True) for lang in self.langs}
        if all(self.tokens[lang] for lang in self.langs):  # what is committed may be the whole translation
            opts = dataclasses.replace(opts, min_len=0)
        (results,) = self.tr.decode([feats], self.langs, opts, forced=[self.tokens[lang] for lang in self.langs])
        return {lang: (list(r.tokens), r.stop == "eos") for lang, r in zip(self.langs, results)}

    def _cuts(self, lang: str, cont: list[int], ended: bool) -> list[int]:
        """Where a commit of ``cont`` may end: after a whole word (ja/zh: a whole character),
        never inside one; the end of ``cont`` only if the hypothesis ended there."""
        texts = [self.tr.tokenizer.decode(self.tokens[lang] + cont[:i]) for i in range(len(cont) + 1)]
        cuts = []
        for i in range(1, len(cont) + 1):
            if "\ufffd" in texts[i] or not texts[i][len(texts[0]):].strip():
                continue  # half a character, or nothing yet
            if i == len(cont):
                if ended:
                    cuts.append(i)
            elif lang in CJK or (texts[i + 1].startswith(texts[i]) and texts[i + 1][len(texts[i]):].startswith(" ")):
                cuts.append(i)
        return cuts

    def _write(self, lang: str, tokens: list[int], units: int = 0) -> str:
        """Commit ``tokens`` (``units`` words of them) in ``lang``; returns the new text."""
        self.tokens[lang] += tokens
        self.units[lang] += units
        text = self.tr.tokenizer.decode(self.tokens[lang])
        new = self._beyond_shown(lang, text)
        self.shown[lang] = text
        return new

    def _beyond_shown(self, lang: str, text: str) -> str:
        """What ``text`` (a decoding of the committed tokens and more) adds to what is printed."""
        return (text[len(self.shown[lang]):] if text.startswith(self.shown[lang]) else text).strip()

    def _progress(self) -> list[StreamCommit]:
        seg = self.open
        if seg is None or len(seg.db) - self.decoded_at < self.step or not self._ready(len(seg.db)):
            return []
        self.decoded_at = len(seg.db)
        hyps = self._continue(np.concatenate(seg.samples), self._progress_opts(len(seg.db)))
        texts = {}
        for lang in self.langs:
            cont, ended = hyps[lang]
            cuts = self._cuts(lang, cont, ended)
            take = self._choose(lang, cont, cuts, len(seg.db))
            if take:
                texts[lang] = self._write(lang, cont[:cuts[take - 1]], take)
            # the tail: the rest of this decoding up to its last whole word
            full = self.tr.tokenizer.decode(self.tokens[lang] + cont[cuts[take - 1] if take else 0:max(cuts, default=0)])
            self.unstable[lang] = self._beyond_shown(lang, full)
        return [self._commit(texts, seg.start, self.read)] if any(texts.values()) else []

    def _translate(self, piece: np.ndarray) -> dict[str, str]:
        """The segment closed: the rest of its translation, with the full beam."""
        hyps = self._continue(piece, self.opts)
        texts = {lang: self._write(lang, hyps[lang][0]) for lang in self.langs}
        self._dropped()
        return texts

    def _ready(self, frames: int) -> bool:
        return True

    def _progress_opts(self, frames: int) -> DecodingOptions:
        """How to decode the open segment of ``frames`` frames (greedy, the whole continuation)."""
        return self.greedy

    def _choose(self, lang: str, cont: list[int], cuts: list[int], frames: int) -> int:
        """How many of the word ends ``cuts`` of the continuation ``cont`` to commit."""
        raise NotImplementedError


class LocalAgreement(_EarlyWriter):
    """LocalAgreement-n: commit the longest prefix the last ``n`` decodings of the open segment agree on."""

    def __init__(self, translator, langs: list[str], chunk_s: float = 1.0, n: int = 2, **kw):
        if n < 2:
            raise ValueError(f"LocalAgreement: n must be at least 2, got {n}")
        self.n = n
        super().__init__(translator, langs, chunk_s, **kw)
        self.name = f"la{n}-{chunk_s:g}s"

    def _dropped(self) -> None:
        super()._dropped()
        self.history: dict[str, list[list[int]]] = {lang: [] for lang in self.langs}  # whole hypotheses

    def _choose(self, lang: str, cont: list[int], cuts: list[int], frames: int) -> int:
        done = self.tokens[lang]
        history = (self.history[lang] + [done + cont])[-self.n:]
        self.history[lang] = history
        if len(history) < self.n:
            return 0
        agreed = 0
        while all(len(h) > agreed for h in history) and len({h[agreed] for h in history}) == 1:
            agreed += 1
        return sum(1 for c in cuts if len(done) + c <= agreed)


class WaitK(_EarlyWriter):
    """Wait-k over encoder chunks: ``k`` chunks of ``chunk_s`` into a segment, then one word per chunk."""

    TOKENS_PER_WORD = 4

    def __init__(self, translator, langs: list[str], k: int = 3, chunk_s: float = 0.5, **kw):
        if k < 1:
            raise ValueError(f"WaitK: k must be at least 1, got {k}")
        self.k = k
        super().__init__(translator, langs, chunk_s, **kw)
        self.name = f"waitk{k}-{chunk_s:g}s"

    def _ready(self, frames: int) -> bool:
        return frames // self.step >= self.k

    def _progress_opts(self, frames: int) -> DecodingOptions:
        # only the words it may write are decoded (and the start of the next, which ends the last
        # of them): at most TOKENS_PER_WORD tokens each, not the whole continuation
        words = frames // self.step - self.k + 1 - min(self.units.values())
        return dataclasses.replace(self.greedy, max_len_a=0.0, max_len_b=max(1, (words + 1) * self.TOKENS_PER_WORD))

    def _choose(self, lang: str, cont: list[int], cuts: list[int], frames: int) -> int:
        allowed = frames // self.step - self.k + 1 - self.units[lang]
        return max(0, min(allowed, len(cuts)))


def make_policy(spec: str, translator, langs: list[str], settings: PauseSettings | None = None,
                opts: DecodingOptions | None = None, clock=time.perf_counter) -> PauseSegmentation:
    """``pause`` | ``la[:CHUNK_S[:N]]`` | ``waitk[:K[:CHUNK_S]]`` -> a streaming policy."""
    name, *args = spec.strip().split(":")
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise ValueError(f"policy '{spec}': its parameters must be numbers") from None
    kw = dict(settings=settings, opts=opts, clock=clock)
    if name == "pause" and not nums:
        return PauseSegmentation(translator, langs, **kw)
    if name == "la" and len(nums) <= 2:
        return LocalAgreement(translator, langs, *(nums[:1] or [1.0]), *[int(x) for x in nums[1:2]], **kw)
    if name == "waitk" and len(nums) <= 2 and all(x == int(x) for x in nums[:1]):
        return WaitK(translator, langs, *[int(x) for x in nums[:1]], *nums[1:2], **kw)
    raise ValueError(f"unknown policy '{spec}' (known: pause, la[:CHUNK_S[:N]], waitk[:K[:CHUNK_S]])")


# ---------------------------------------------------------------------- sources and output


def pcm_chunks(stream: BinaryIO, chunk_s: float = 0.1, warn: Callable[[str], None] = print) -> Iterator[np.ndarray]:
    """Raw 16 kHz mono s16le PCM (as ``arecord -f S16_LE -r 16000``, ``sox -d -t raw`` or ``ffmpeg -f
    s16le`` write it) -> float32 chunks. Reads whatever has arrived (up to ``chunk_s`` of audio), so a
    slow producer is heard at once; a byte left over (a sample cut in two) waits for its pair, and one
    left at the end of the stream is dropped with a warning."""
    want = max(2, int(chunk_s * SAMPLE_RATE) * 2)
    read = getattr(stream, "read1", stream.read)
    odd = b""
    while True:
        data = read(want)
        if not data:
            break
        data = odd + data
        cut = len(data) - len(data) % 2
        odd = data[cut:]
        if cut:
            yield np.frombuffer(data[:cut], dtype="<i2").astype(np.float32) / 32768.0
    if odd:
        warn("the stream ended in the middle of a sample: its last byte was dropped")


def file_chunks(path: Path, realtime: float | None = None, chunk_s: float = 0.1,
                sleep: Callable[[float], None] = time.sleep, clock=time.perf_counter) -> Iterator[np.ndarray]:
    """An audio file (any format :func:`speech.audio.load_audio` reads) in ``chunk_s`` pieces, at
    ``realtime`` times real speed (None: as fast as they are taken)."""
    wave = load_audio(path)
    step = int(chunk_s * SAMPLE_RATE)
    t0 = clock()
    for i in range(0, len(wave), step):
        if realtime:
            ahead = (i + step) / SAMPLE_RATE / realtime - (clock() - t0)
            if ahead > 0:
                sleep(ahead)  # the chunk is not "recorded" yet
        yield wave[i:i + step]


def _stamp(seconds: float, sep: str) -> str:
    """SRT's ``HH:MM:SS,mmm`` (:func:`speech.translate.srt_timestamp`) with ``sep`` before the milliseconds."""
    return srt_timestamp(seconds).replace(",", sep)


def format_commit(c: StreamCommit, fmt: str, index: int) -> str:
    """One committed segment in ``fmt`` (text, jsonl, srt, vtt); ``index`` numbers SRT cues from 1."""
    if fmt == "jsonl":
        return json.dumps(dataclasses.asdict(c), ensure_ascii=False) + "\n"
    several = len(c.texts) > 1
    lines = [f"[{lang}] {text}" if several else text for lang, text in c.texts.items()]
    if fmt == "text":
        return "".join(f"{_stamp(c.start, '.')} --> {_stamp(c.end, '.')} {line}\n" for line in lines)
    times = f"{_stamp(c.start, ',' if fmt == 'srt' else '.')} --> {_stamp(c.end, ',' if fmt == 'srt' else '.')}"
    return (f"{index}\n" if fmt == "srt" else "") + times + "\n" + "\n".join(lines) + "\n\n"


STREAM_FORMATS = ("text", "jsonl", "srt", "vtt")


def format_partial(read: float, tail: dict[str, str], fmt: str) -> str:
    """The unstable tail after ``read`` seconds: text ``~ HH:MM:SS.mmm [lang] words``, or a jsonl
    record ``{"partial": {lang: words}, "read": seconds}``; a later commit or tail replaces it."""
    if fmt == "jsonl":
        return json.dumps({"partial": tail, "read": round(read, 3)}, ensure_ascii=False) + "\n"
    several = len(tail) > 1
    return "".join(f"~ {_stamp(read, '.')} {f'[{lang}] ' if several else ''}{text}\n" for lang, text in tail.items())


def run(stream: PauseSegmentation, chunks: Iterator[np.ndarray], fmt: str = "text",
        out: TextIO | None = None, partial: bool = False) -> int:
    """Feed ``chunks`` to ``stream`` and print each commit as it comes (with ``partial``, also the
    unstable tail whenever it changes: text and jsonl only); the end of the input (or Ctrl-C)
    closes the last segment, which is printed too. Returns the number of segments with output."""
    if fmt not in STREAM_FORMATS:
        raise ValueError(f"unknown format '{fmt}' (known: {', '.join(STREAM_FORMATS)})")
    if partial and fmt not in ("text", "jsonl"):
        raise ValueError(f"partial output is text or jsonl, not {fmt} (subtitles hold final text only)")
    out = out if out is not None else sys.stdout
    if fmt == "vtt":
        out.write("WEBVTT\n\n")
    n = 0  # commits printed (SRT cue numbers)
    segments: set[float] = set()  # the starts of the segments they belong to
    shown: dict[str, str] = {}

    def emit(commits: list[StreamCommit]) -> None:
        nonlocal n, shown
        for c in commits:
            if any(c.texts.values()):
                n += 1
                segments.add(c.start)
                out.write(format_commit(c, fmt, n))
        if partial:
            tail = {lang: text for lang, text in stream.partial().items() if text}
            if tail and tail != shown:
                out.write(format_partial(stream.read / SAMPLE_RATE, tail, fmt))
            shown = tail
        out.flush()

    try:
        for chunk in chunks:
            emit(stream.push(chunk))
    except KeyboardInterrupt:
        pass  # the input stops here: what it said so far is still translated
    emit(stream.finish())
    return len(segments)
