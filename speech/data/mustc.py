"""Read a MuST-C split: the real release and the corpora ``interpres data speech`` builds.

The layout, for a pair ``en-XX`` (``en-asr`` is English with no translation)::

    ROOT/en-XX/data/SPLIT/wav/<talk>.wav      one talk: many utterances of one speaker
    ROOT/en-XX/data/SPLIT/txt/SPLIT.yaml      one entry per utterance:
                                              - {duration: 3.5, offset: 16.28, speaker_id: spk.767, wav: ted_767.wav}
    ROOT/en-XX/data/SPLIT/txt/SPLIT.en        line i belongs to YAML entry i
    ROOT/en-XX/data/SPLIT/txt/SPLIT.XX        (absent for en-asr)

Reading a split checks its structure (entries, line counts, talk files) and costs
one YAML parse; audio is only touched by :func:`load_segment`, which seeks into the
talk and reads the segment alone, and by :meth:`MustcSplit.validate`, which checks
every segment against its talk's length from the file header. Every problem is a
:class:`MustcError` whose message starts with ``path:line:``.

    split = MustcSplit(root, "en-de", "tst-COMMON")
    for seg in split:
        audio = load_segment(seg)  # (samples,) float32 at 16 kHz
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import soundfile as sf
import yaml

from compress.errors import UserError
from speech.audio import SAMPLE_RATE, AudioError, check_finite, check_rate, resample

log = logging.getLogger(__name__)

SRC_LANG = "en"
ASR = "asr"  # the target of a pair with no translation: en-asr
END_TOLERANCE_S = 0.010  # a segment may end this far past its talk (MuST-C offsets are rounded)


class MustcError(UserError, ValueError):
    """A MuST-C split is broken; the message names the file and, where it applies, the line."""


class TalkInfo(NamedTuple):
    """What the header of a talk's audio file says."""

    samplerate: int
    frames: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.samplerate


class _SplitFiles:
    """The files of one split, shared by its segments: YAML line numbers and talk headers.

    Both are computed on first use: line numbers only when an error is reported, so
    reading a 200k-entry YAML costs one parse; a talk's header once per talk.
    """

    def __init__(self, yaml_path: Path, wav_dir: Path, n_entries: int):
        self.yaml_path = yaml_path
        self.wav_dir = wav_dir
        self.n_entries = n_entries
        self._lines: list[int] | None = None
        self._info: dict[str, TalkInfo] = {}

    def line(self, index: int) -> int | None:
        """The 1-based line where entry ``index`` starts, or None if it cannot be told."""
        if self._lines is None:
            self._lines = _entry_lines(self.yaml_path)
        # a count that differs means the entries are not one '- ' line each (a flow list, say)
        if len(self._lines) != self.n_entries or not 0 <= index < len(self._lines):
            return None
        return self._lines[index]

    def where(self, index: int) -> str:
        line = self.line(index)
        return f"{self.yaml_path}:{line}" if line is not None else f"{self.yaml_path} (entry {index})"

    def info(self, wav: str, where: str) -> TalkInfo:
        info = self._info.get(wav)
        if info is None:
            info = self._info[wav] = _read_info(self.wav_dir / wav, where)
        return info


def _read_info(path: Path, where: str) -> TalkInfo:
    try:
        raw = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise MustcError(f"{where}: talk {path} is not a readable audio file ({e})") from e
    if raw.channels <= 0:
        raise MustcError(f"{where}: talk {path} has {raw.channels} channels")
    try:
        check_rate(raw.samplerate, f"talk {path}")
    except AudioError as e:
        raise MustcError(f"{where}: {e}") from None
    return TalkInfo(int(raw.samplerate), int(raw.frames), int(raw.channels))


def _entry_lines(yaml_path: Path) -> list[int]:
    """1-based numbers of the lines that start a top-level list item (``- ...``)."""
    lines = []
    with open(yaml_path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if raw.startswith(b"- ") or raw.startswith(b"-\t") or raw.rstrip(b"\r\n") == b"-":
                lines.append(n)
    return lines


@dataclass(frozen=True, slots=True)
class Segment:
    """One utterance: a stretch of a talk with its transcript and translation."""

    id: str  # f"{talk stem}_{k}", k counting the talk's utterances from 0 (as fairseq's prep_mustc_data)
    wav: Path  # the talk
    offset: float  # seconds from the start of the talk
    duration: float  # seconds
    speaker_id: str
    src: str
    tgt: str | None  # None for an ASR split
    index: int  # entry number in the split (0-based): line index+1 of the .en file
    _files: _SplitFiles | None = field(default=None, repr=False, compare=False)

    @property
    def line(self) -> int | None:
        """The line of the YAML where this segment's entry starts (found on first use)."""
        return self._files.line(self.index) if self._files is not None else None

    @property
    def where(self) -> str:
        """``yaml_path:line`` of this segment's entry, for error messages."""
        if self._files is None:
            return f"{self.wav} (segment {self.id})"
        return self._files.where(self.index)


def _load_yaml(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MustcError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise MustcError(f"{path}:{line}: not UTF-8 ({e.reason})") from e
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        # the context ("while parsing a flow mapping") starts at the broken entry; the
        # problem is often found on the next line
        problem = f"{e.problem} at line {e.problem_mark.line + 1}" if e.problem_mark else str(e.problem or e)
        if e.context_mark is not None:
            line, why = e.context_mark.line + 1, f"{e.context}: {problem}"
        else:
            line, why = (e.problem_mark.line + 1 if e.problem_mark else "?"), str(e.problem or e)
        raise MustcError(f"{path}:{line}: invalid YAML ({why})") from e
    except yaml.YAMLError as e:
        raise MustcError(f"{path}: invalid YAML ({e})") from e
    if data is None:
        return []
    if not isinstance(data, list):
        raise MustcError(f"{path}:1: expected a list of entries ('- {{duration: ..., offset: ..., wav: ...}}' "
                         f"one per line), got a {type(data).__name__}")
    return data


def _read_lines(path: Path) -> list[str]:
    """The lines of a text file, split on '\\n' alone (sentences may hold U+2028 and friends)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MustcError(f"{path}: no such file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise MustcError(f"{path}:{line}: not UTF-8 ({e.reason})") from e
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _number(entry: dict, key: str) -> float | None:
    """``entry[key]`` as a finite float >= 0, or None if it is not one."""
    v = entry.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) and v >= 0 else None


def _check_entry(entry: Any, index: int, files: _SplitFiles) -> tuple[float, float, str, str]:
    """(offset, duration, wav, speaker_id) of a YAML entry, or a MustcError naming its line."""
    if not isinstance(entry, dict):
        raise MustcError(f"{files.where(index)}: entry is not a mapping: {_short(entry)}")
    values = {}
    for key in ("offset", "duration"):
        if key not in entry:
            raise MustcError(f"{files.where(index)}: entry has no '{key}': {_short(entry)}")
        values[key] = _number(entry, key)
        if values[key] is None:
            raise MustcError(f"{files.where(index)}: '{key}' must be a number >= 0, got {entry[key]!r}")
    wav = entry.get("wav")
    if not isinstance(wav, str) or not wav or Path(wav).name != wav:
        raise MustcError(f"{files.where(index)}: 'wav' must be the file name of a talk in {files.wav_dir}, "
                         f"got {wav!r}")
    speaker = entry.get("speaker_id")
    return values["offset"], values["duration"], wav, "" if speaker is None else str(speaker)


def _short(x: Any, limit: int = 120) -> str:
    s = repr(x)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def split_pair(pair: str) -> tuple[str, str | None]:
    """``"en-de"`` -> ``("en", "de")``; ``"en-asr"`` -> ``("en", None)``."""
    src, sep, tgt = pair.partition("-")
    if not sep or not src or not tgt:
        raise MustcError(f"pair '{pair}' is not of the form en-XX")
    return src, (None if tgt == ASR else tgt)


def available_pairs(root: str | Path) -> list[str]:
    """The pairs under ``root`` that have a ``data`` folder, sorted: ``["en-asr", "en-de", ...]``."""
    root = Path(root)
    if not root.is_dir():
        raise MustcError(f"{root}: no such directory")
    return sorted(p.name for p in root.iterdir() if "-" in p.name and (p / "data").is_dir())


def available_splits(root: str | Path, pair: str) -> list[str]:
    """The splits of ``pair`` under ``root`` that have a YAML file, sorted."""
    data = Path(root) / pair / "data"
    if not data.is_dir():
        return []
    return sorted(p.name for p in data.iterdir() if (p / "txt" / f"{p.name}.yaml").is_file())


class MustcSplit:
    """The segments of one split of one pair, checked for structure on reading.

    Reading checks that the YAML is a list of entries with numeric ``offset`` and
    ``duration`` >= 0 and a ``wav`` name, that the text files have one line per entry,
    and that every talk exists (``check_talks=False`` only lists the missing ones in
    ``missing_talks``, for callers that skip bad utterances; their segments then fail in
    :func:`load_segment`). ``check_audio=True`` also runs :meth:`validate`.
    Indexing and iteration give :class:`Segment` objects in YAML order.
    """

    def __init__(self, root: str | Path, pair: str, split: str, check_audio: bool = False,
                 check_talks: bool = True):
        self.root = Path(root)
        self.pair = pair
        self.split = split
        self.src_lang, self.tgt_lang = split_pair(pair)
        base = self.root / pair / "data" / split
        txt = base / "txt"
        self.wav_dir = base / "wav"
        self.yaml_path = txt / f"{split}.yaml"
        self.src_path = txt / f"{split}.{self.src_lang}"
        self.tgt_path = txt / f"{split}.{self.tgt_lang}" if self.tgt_lang is not None else None
        if not self.yaml_path.is_file():
            if not (self.root / pair).is_dir():
                known = ", ".join(available_pairs(self.root)) if self.root.is_dir() else "none: no such directory"
                raise MustcError(f"{self.root / pair}: no such pair (available: {known})")
            known = ", ".join(available_splits(self.root, pair)) or "none"
            raise MustcError(f"{self.yaml_path}: no such file; split '{split}' is missing (available: {known})")

        entries = _load_yaml(self.yaml_path)
        self._files = _SplitFiles(self.yaml_path, self.wav_dir, len(entries))
        src = _read_lines(self.src_path)
        self._check_count(self.src_path, len(src), len(entries))
        if self.tgt_path is not None:
            tgt: list[str] | None = _read_lines(self.tgt_path)
            self._check_count(self.tgt_path, len(tgt), len(entries))
        else:
            tgt = None

        segments = []
        per_talk: dict[str, int] = {}
        self.missing_talks: set[str] = set()  # with check_talks=False: talks to fail at load_segment
        for i, entry in enumerate(entries):
            offset, duration, wav, speaker = _check_entry(entry, i, self._files)
            k = per_talk.get(wav, 0)
            if k == 0 and not (self.wav_dir / wav).is_file():
                if check_talks:
                    raise MustcError(f"{self._files.where(i)}: talk {self.wav_dir / wav} does not exist")
                log.warning("%s: talk %s does not exist", self._files.where(i), self.wav_dir / wav)
                self.missing_talks.add(wav)
            per_talk[wav] = k + 1
            segments.append(Segment(
                id=f"{Path(wav).stem}_{k}", wav=self.wav_dir / wav, offset=offset, duration=duration,
                speaker_id=speaker, src=src[i], tgt=tgt[i] if tgt is not None else None, index=i,
                _files=self._files,
            ))
        self.segments: list[Segment] = segments
        self.talks: list[Path] = [self.wav_dir / w for w in per_talk]
        if not segments:
            log.warning("%s: no entries", self.yaml_path)
        log.info("%s/%s: %d segments in %d talks, %.2f h", pair, split, len(segments), len(per_talk),
                 self.hours)
        if check_audio:
            self.validate()

    def _check_count(self, path: Path, n_lines: int, n_entries: int) -> None:
        if n_lines != n_entries:
            raise MustcError(f"{path}: {n_lines} lines, but {self.yaml_path} has {n_entries} entries "
                             f"(line i of the text belongs to entry i)")

    @property
    def hours(self) -> float:
        return sum(s.duration for s in self.segments) / 3600

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, i: int) -> Segment:
        return self.segments[i]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def __repr__(self) -> str:
        return f"MustcSplit({str(self.root)!r}, {self.pair!r}, {self.split!r}: {len(self)} segments)"

    def talk_info(self, segment: Segment) -> TalkInfo:
        """The header of ``segment``'s talk (read once per talk)."""
        return _talk_info(segment)

    def validate(self) -> None:
        """Check every segment against the length of its talk, from the file headers alone.

        Raises the :class:`MustcError` of the first bad segment: an unreadable talk,
        a segment that starts past the end, ends more than 10 ms past it, or is empty.
        """
        for seg in self.segments:
            _segment_frames(seg, _talk_info(seg))
        log.info("%s/%s: %d segments in %d talks fit their audio", self.pair, self.split, len(self),
                 len(self.talks))


def read_split(root: str | Path, pair: str, split: str, check_audio: bool = False) -> MustcSplit:
    """Read ``root/pair/data/split`` (see :class:`MustcSplit`)."""
    return MustcSplit(root, pair, split, check_audio=check_audio)


def _talk_info(segment: Segment) -> TalkInfo:
    if segment._files is not None:
        return segment._files.info(segment.wav.name, segment.where)
    return _read_info(segment.wav, segment.where)  # a Segment built by hand has no split to cache in


def _segment_frames(seg: Segment, info: TalkInfo) -> tuple[int, int]:
    """(first frame, frame count) of ``seg`` in its talk, clipped to the talk's end."""
    sr = info.samplerate
    start = round(seg.offset * sr)
    n = round(seg.duration * sr)
    talk = f"{seg.wav} is {info.seconds:.3f} s long ({info.frames} frames at {sr} Hz)"
    if n <= 0:
        raise MustcError(f"{seg.where}: segment {seg.id} is empty (duration {seg.duration} s is {n} frames "
                         f"at {sr} Hz)")
    if start >= info.frames:
        raise MustcError(f"{seg.where}: segment {seg.id} starts past the end of its talk: offset "
                         f"{seg.offset} s, but {talk}")
    if start + n > info.frames + round(END_TOLERANCE_S * sr):
        raise MustcError(f"{seg.where}: segment {seg.id} ends past the end of its talk: offset {seg.offset} s "
                         f"+ duration {seg.duration} s = {seg.offset + seg.duration:.3f} s, but {talk}")
    return start, min(n, info.frames - start)


def load_segment(segment: Segment) -> np.ndarray:
    """The audio of ``segment``: shape (samples,), float32, mono, at 16 kHz.

    Seeks into the talk and reads the segment alone. Channels are averaged; a talk
    not at 16 kHz is resampled (soxr), to ``round(frames * 16000 / sr)`` samples.
    """
    info = _talk_info(segment)
    start, n = _segment_frames(segment, info)
    try:
        with sf.SoundFile(str(segment.wav)) as f:
            f.seek(start)
            audio = f.read(n, dtype="float32", always_2d=True)  # (n, channels)
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise MustcError(f"{segment.where}: cannot read segment {segment.id} from {segment.wav} ({e})") from e
    if len(audio) < n:
        raise MustcError(f"{segment.where}: {segment.wav} holds {start + len(audio)} frames, fewer than its "
                         f"header's {info.frames}: segment {segment.id} is cut short")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    try:
        check_finite(mono, f"segment {segment.id} of {segment.wav}")
    except AudioError as e:
        raise MustcError(f"{segment.where}: {e}") from None
    return resample(mono, info.samplerate, SAMPLE_RATE)
