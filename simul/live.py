"""``interpres simul``: the segmentation policy on a live character stream.

Input arrives as bytes (stdin, or a file fed at ``--realtime`` characters per second);
it is decoded incrementally, so a character is read the moment its last byte arrives.
Each line is one stream: its characters go to a :class:`simul.policies.StreamSession`
as they come, and its end flushes what is left. What the model never saw in training is
removed on the way in (punctuation, symbols, spaces except one between two Latin words
or numbers), with no message. What looks wrong gets one line on stderr naming the line:
invalid UTF-8 (the bad bytes are skipped), empty or punctuation-only lines (skipped),
and lines without a single Chinese character (translated anyway, with a warning).
"""

from __future__ import annotations

import codecs
import json
import math
import os
import sys
import time
import unicodedata
from pathlib import Path
from typing import BinaryIO, Callable, TextIO

from compress.errors import UserError
from simul.policies import Commit, Segmentation, StreamSession
from simul.bundled import policy_settings, resolve_model


class LiveInputError(UserError, ValueError):
    """The input cannot be read at all (a missing file, a bad rate)."""


def is_chinese(ch: str) -> bool:
    return "CJK" in unicodedata.name(ch, "")


def _latin(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def keep_char(ch: str) -> bool:
    """Characters the model reads: letters and digits (no punctuation, symbols or spaces)."""
    return not ch.isspace() and not unicodedata.category(ch).startswith(("P", "S", "C"))


class LineStreams:
    """Turns decoded characters into streams: one per line, filtered, with messages."""

    def __init__(self, make_session: Callable[[], StreamSession], emit: Callable[[int, Commit, str], None],
                 warn: Callable[[str], None]):
        self.make_session, self.emit, self.warn = make_session, emit, warn
        self.line = 1
        self.session: StreamSession | None = None
        self.chinese = 0
        self.seen_any = False
        self.last = ""  # the last character kept on this line
        self.space = False  # a space was read after it: kept only between two Latin words or numbers

    def char(self, ch: str) -> None:
        if ch == "\n":
            self.end_line()
            return
        if ch == "\ufffd":
            self.warn(f"line {self.line}: invalid UTF-8 bytes; skipped")
            return
        if not ch.strip():
            self.space = self.space or _latin(self.last)
            return
        self.seen_any = True
        if not keep_char(ch):
            return
        if is_chinese(ch):
            self.chinese += 1
        if self.session is None:
            self.session = self.make_session()
        # as simul.data.strip_punctuation (the training text): "GNU C编译器" keeps its space
        text = " " + ch if self.space and _latin(ch) else ch
        self.last, self.space = ch, False
        for c in self.session.feed(text):
            self._out(c)

    def _out(self, c: Commit) -> None:
        self.emit(self.line, c, getattr(self.session.agent, "last_segment", "") if self.session else "")

    def end_line(self) -> None:
        if self.session is not None:
            if self.chinese == 0:
                self.warn(f"line {self.line}: no Chinese characters (translated anyway; is the input Chinese?)")
            for c in self.session.feed("", finished=True):
                self._out(c)
        elif self.seen_any:
            self.warn(f"line {self.line}: only punctuation or symbols; skipped")
        else:
            self.warn(f"line {self.line}: empty; skipped")
        self.line += 1
        self.session, self.chinese, self.seen_any = None, 0, False
        self.last, self.space = "", False

    def close(self) -> None:
        if self.session is not None or self.seen_any:
            self.end_line()


def read_chars(stream: BinaryIO, on_char: Callable[[str], None], realtime: float | None = None) -> None:
    """Decode ``stream`` as UTF-8 as its bytes arrive; invalid bytes become U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        fd = stream.fileno() if realtime is None else None
    except (OSError, ValueError):  # io.BytesIO and friends
        fd = None
    while True:
        # os.read returns what has arrived, without waiting for a full buffer
        chunk = os.read(fd, 4096) if fd is not None else stream.read(4096)
        for ch in decoder.decode(chunk, final=not chunk):
            if realtime:
                time.sleep(1.0 / realtime)
            on_char(ch)
        if not chunk:
            return


def run_live(file: Path | None, realtime: float | None = None, fmt: str = "text", model: Path | None = None,
             segmenter: Path | None = None, threshold: float | None = None, max_len: int = 40,
             stdin: BinaryIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None,
             runtime: str = "torch") -> int:
    from simul.segmenter import Segmenter  # noqa: PLC0415
    from simul.translator import Translator  # noqa: PLC0415

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    if realtime is not None and not (math.isfinite(realtime) and realtime > 0):
        raise LiveInputError(f"--realtime must be positive characters per second, got {realtime}")
    if file is not None and not file.exists():
        raise LiveInputError(f"{file}: no such file")
    model_dir, seg_dir = resolve_model(model, segmenter)
    if seg_dir is None:
        raise LiveInputError(f"{model_dir}: has no segmenter/; give one with --segmenter")
    settings = policy_settings(model_dir)
    threshold = threshold if threshold is not None else float(settings.get("threshold", 0.5))
    translator, seg = Translator(model_dir, runtime=runtime), Segmenter.load(seg_dir)

    def make_session() -> StreamSession:
        return StreamSession(Segmentation(translator, seg, threshold, max_len))

    def emit(line: int, c: Commit, seg_src: str) -> None:
        text = " ".join(c.words)
        if fmt == "jsonl":
            stdout.write(json.dumps({"line": line, "source": seg_src, "translation": text,
                                     "source_read": c.source_read, "elapsed_ms": round(c.seconds * 1000, 1),
                                     "final": c.finished}, ensure_ascii=False) + "\n")
        elif text:
            stdout.write(f"{text}\t[{c.source_read} chars read, {c.seconds * 1000:.0f} ms]\n")
        stdout.flush()

    def warn(msg: str) -> None:
        print(f"interpres simul: {msg}", file=stderr, flush=True)

    streams = LineStreams(make_session, emit, warn)
    if file is not None:
        with open(file, "rb") as f:
            read_chars(f, streams.char, realtime)
    else:
        read_chars(stdin or sys.stdin.buffer, streams.char, realtime)
    streams.close()
    return 0
