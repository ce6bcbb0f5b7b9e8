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
        return out

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
            return []
        texts = self._translate(piece)
        start = seg.start / SAMPLE_RATE
        return [StreamCommit(round(start, 3), round(start + len(piece) / SAMPLE_RATE, 3), texts,
                             round(self.read / SAMPLE_RATE, 3), round(self.clock() - self.t0, 3))]

    def _is_speech(self, db: float) -> bool:
        return db > self.cfg.floor_db and db > self.loudest - self.cfg.threshold_db

    def _translate(self, piece: np.ndarray) -> dict[str, str]:
        feats = self.tr.features(piece)
        if len(feats) == 0:
            return {lang: "" for lang in self.langs}
        (results,) = self.tr.decode([feats], self.langs, self.opts)
        return {lang: self.tr.text(r) for lang, r in zip(self.langs, results)}


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


def run(stream: PauseSegmentation, chunks: Iterator[np.ndarray], fmt: str = "text",
        out: TextIO | None = None) -> int:
    """Feed ``chunks`` to ``stream`` and print each commit as it comes; the end of the input (or
    Ctrl-C) closes the last segment, which is printed too. Returns the number of segments."""
    if fmt not in STREAM_FORMATS:
        raise ValueError(f"unknown format '{fmt}' (known: {', '.join(STREAM_FORMATS)})")
    out = out if out is not None else sys.stdout
    if fmt == "vtt":
        out.write("WEBVTT\n\n")
    n = 0

    def emit(commits: list[StreamCommit]) -> None:
        nonlocal n
        for c in commits:
            if any(c.texts.values()):
                n += 1
                out.write(format_commit(c, fmt, n))
        out.flush()

    try:
        for chunk in chunks:
            emit(stream.push(chunk))
    except KeyboardInterrupt:
        pass  # the input stops here: what it said so far is still translated
    emit(stream.finish())
    return n
