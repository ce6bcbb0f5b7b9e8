"""Offline speech translation of files: audio in, timed segments of text out.

    translator = load_translator("models/st_small")     # a model directory (or several: an ensemble)
    results = translate_files(translator, ["talk.wav"], ["de", "fr"], DecodingOptions(beam_size=5))
    print(to_srt(results[0].segments))

The steps, each a function you can call on its own:

1. :func:`speech.audio.load_audio` reads a file as 16 kHz mono;
2. :func:`split_on_pauses` cuts it at pauses (energy-based voice activity detection),
   no piece longer than 20 s;
3. each piece becomes features (Kaldi fbank with the model's settings and utterance CMVN,
   or Whisper's log-mel for an imported Whisper model);
4. pieces of all files are decoded in length-sorted batches, each encoded once and
   decoded once per target language (:mod:`speech.decode`);
5. :func:`format_results` / :func:`write_results` render text, JSON or SRT.

Output formats (decided here, used by ``interpres translate`` and ``transcribe``):

- ``text``: one line per file and language, the segments' texts joined by spaces. With one
  file and one language the line is the text alone; otherwise ``FILE<TAB>LANG<TAB>TEXT``.
- ``json``: ``[{"file", "lang", "segments": [{"start", "end", "text"}]}]``, file-major,
  times in seconds (millisecond precision).
- ``srt``: one document per file and language: cues numbered from 1, ``HH:MM:SS,mmm -->
  HH:MM:SS,mmm``, segments with empty text left out. Printed, several documents are
  separated by a header line ``==> FILE [LANG] <==``; written with ``--out out.srt``,
  several become ``out.LANG.srt`` (one file) or ``out.FILESTEM.LANG.srt`` (several files).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from tqdm import tqdm

from compress.errors import UserError
from compress.files import atomic_path
from speech.audio import SAMPLE_RATE, AudioError, load_audio
from speech.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model_dir, model_device
from speech.config import ConfigError
from speech.dataset import batches_by_frames, pad_features
from speech.decode import DecodingOptions, DecodingResult, encode, search
from speech.features import FeatureConfig, feature_config, features_of, frames_of
from speech.model import S2TModel
from speech.overlay import weight_files
from speech.runtime import DECODING_RUNTIMES, check_runtime, onnx_precision, open_model
from speech.tokenizer import TOKENIZER_FILE, Tokenizer, tokenizer_file

if TYPE_CHECKING:
    from speech.whisper import WhisperTokenizer

if TYPE_CHECKING:
    from speech.onnx import OnnxS2TModel

log = logging.getLogger(__name__)

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"  # the translator
BUNDLED_ASR_DIR = Path(__file__).resolve().parent / "models" / "asr"  # the ASR model shipped beside it
# the teacher: Whisper base fine-tuned into the ten languages, an overlay over the pinned base
BUNDLED_TEACHER_DIR = Path(__file__).resolve().parent / "models" / "teacher"
TASKS = ("st", "asr")
FORMATS = ("text", "json", "srt")
# joint CTC/attention weight of English outputs when every model has a CTC head, chosen on the
# en-asr dev set (WER 86.6 / 74.2 / 72.6 / 72.1 at 0 / 0.3 / 0.5 / 0.7 with runs/asr_small;
# ESPnet's recipes use 0.3 to 0.5; BENCHMARKS.md, issue 3)
DEFAULT_CTC_WEIGHT = 0.5


class TranslateError(UserError, ValueError):
    """A model directory, a language or an output cannot be used; the message names it."""


# --------------------------------------------------------------------------- the model


@dataclass
class Translator:
    """A loaded model directory (or an ensemble of several with one vocabulary)."""

    models: list[S2TModel | OnnxS2TModel]
    tokenizer: Tokenizer | WhisperTokenizer
    feature_cfg: FeatureConfig
    languages: list[str]  # target languages; ["en"] for an ASR model
    task: str  # "st" or "asr"
    model_dirs: list[Path]

    @property
    def name(self) -> str:
        return " + ".join(str(d) for d in self.model_dirs)

    def check_languages(self, langs: Sequence[str]) -> None:
        """Raise TranslateError naming the first language the model does not translate into."""
        if not langs:
            raise TranslateError("no target language given")
        for lang in langs:
            if lang not in self.languages:
                raise TranslateError(f"{self.name}: unknown target language '{lang}' "
                                     f"(the model knows: {', '.join(self.languages)})")

    def transcription_language(self) -> str:
        """The language ``transcribe`` decodes into: an ASR model's, or "en" of an ST model."""
        if "en" in self.languages or self.task == "asr":
            return "en" if "en" in self.languages else self.languages[0]
        raise TranslateError(f"{self.name}: a translation model into {', '.join(self.languages)} cannot transcribe "
                             "English; use 'interpres translate' or an ASR model")

    def prefix(self, lang: str) -> list[int]:
        """The forced start of the decoder: the language tag (bos for an ASR vocabulary without tags)."""
        if lang in self.tokenizer.languages or self.task == "st":
            return self.tokenizer.prefix(lang)
        return self.tokenizer.prefix(None)

    def features(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """wave (samples,) at 16 kHz -> (frames, n_mels): fbank then utterance CMVN, or
        Whisper's log-mel (:func:`speech.features.features_of`)."""
        return features_of(torch.as_tensor(wave, dtype=torch.float32), self.feature_cfg)

    @property
    def max_segment_s(self) -> float:
        """The longest piece of audio the encoder takes (its max_source_positions)."""
        frames = min(m.cfg.max_source_positions for m in self.models)
        return (frames - 1) * self.feature_cfg.frame_shift_ms / 1000.0

    @property
    def has_ctc(self) -> bool:
        """Every model has a CTC head in this runtime: joint CTC/attention transcription works."""
        return all(getattr(m, "ctc_head", None) is not None for m in self.models)

    def ctc_langs(self) -> set[str]:
        """The languages the CTC head reads: English (the encoder's transcript)."""
        return {"en"} if self.task == "st" else set(self.languages)

    def decode(self, feats: Sequence[torch.Tensor], langs: Sequence[str],
               opts: DecodingOptions = DecodingOptions(),
               forced: Sequence[Sequence[int]] | None = None) -> list[list[DecodingResult]]:
        """Decode each features (frames, n_mels) into each language: results[utterance][language].

        The batch is encoded once and decoded once per language (a row per utterance and
        language, each with its own language tag). ``opts.ctc_weight`` > 0 applies joint
        CTC/attention decoding to the transcription rows only (:meth:`ctc_langs`): the CTC
        head reads English, so translations are decoded with attention alone.
        ``forced[j]``: tokens every output in ``langs[j]`` must start with (what a streaming
        policy has committed); the results hold only what follows them.
        """
        self.check_languages(langs)
        if forced is not None and len(forced) != len(langs):
            raise TranslateError(f"decode: {len(langs)} languages but {len(forced)} forced starts")
        if forced is not None and any(forced) and opts.ctc_weight > 0:
            raise TranslateError("decode: joint CTC scores a whole transcript; it cannot continue a forced start")
        rows = [(i, lang) for i in range(len(feats)) for lang in langs]
        per_row = [forced[j] for _ in feats for j in range(len(langs))] if forced is not None else None
        flat = self._decode_rows(feats, rows, opts, per_row)
        return [flat[i * len(langs):(i + 1) * len(langs)] for i in range(len(feats))]

    def decode_each(self, feats: Sequence[torch.Tensor], langs: Sequence[str],
                    opts: DecodingOptions = DecodingOptions()) -> list[DecodingResult]:
        """Decode ``feats[i]`` into ``langs[i]``: requests for different languages share one batch
        (one encoder pass, one search; joint CTC on the transcription rows as in :meth:`decode`)."""
        if len(feats) != len(langs):
            raise TranslateError(f"decode_each: {len(feats)} utterances but {len(langs)} languages")
        self.check_languages(list(dict.fromkeys(langs)))
        return self._decode_rows(feats, list(enumerate(langs)), opts)

    def _decode_rows(self, feats: Sequence[torch.Tensor], rows: Sequence[tuple[int, str]],
                     opts: DecodingOptions, forced: Sequence[Sequence[int]] | None = None
                     ) -> list[DecodingResult]:
        """One result per (utterance index, language) row: the utterances encoded once, the rows
        searched in groups (with and without joint CTC; by the length of their forced start,
        ``forced[row]``, the tokens after the language tag)."""
        if opts.ctc_weight > 0 and not self.has_ctc:
            raise TranslateError(f"{self.name}: ctc_weight {opts.ctc_weight} needs a CTC head on every model")
        opts = dataclasses.replace(opts, suppress_tokens=tuple(opts.suppress_tokens) + self.tokenizer.suppress_ids)
        device = model_device(self.models[0])
        x, lens = pad_features(list(feats))
        states = encode(self.models, x.to(device), lens.to(device))
        out: list[DecodingResult | None] = [None] * len(rows)
        with_ctc = [r for r, (_, lang) in enumerate(rows) if opts.ctc_weight > 0 and lang in self.ctc_langs()]
        groups = [(with_ctc, opts), ([r for r in range(len(rows)) if r not in set(with_ctc)],
                                     dataclasses.replace(opts, ctc_weight=0.0))]
        starts = [self.prefix(lang) + (list(forced[r]) if forced is not None else []) for r, (_, lang) in enumerate(rows)]
        for rows_of_group, group_opts in groups:
            for length in sorted({len(starts[r]) for r in rows_of_group}):  # a search takes one prefix length
                sel = [r for r in rows_of_group if len(starts[r]) == length]
                src = torch.tensor([rows[r][0] for r in sel], device=x.device)
                sub = [tuple(t.index_select(0, src.to(t.device)) for t in s) for s in states]
                hyps = search(self.models, sub, [starts[r] for r in sel], group_opts)
                for r, h in zip(sel, hyps):
                    out[r] = h
        return out  # type: ignore[return-value]

    def text(self, result: DecodingResult) -> str:
        """The text of the best hypothesis."""
        return self.tokenizer.decode(result.tokens).strip()


def resolve_ctc_weight(translator: Translator, requested: float | None) -> float:
    """``requested``, or when None: :data:`DEFAULT_CTC_WEIGHT` if every model has a CTC head, else 0."""
    if requested is not None:
        if not 0.0 <= requested <= 1.0:
            raise TranslateError(f"ctc_weight must be in [0, 1], got {requested}")
        return requested
    return DEFAULT_CTC_WEIGHT if translator.has_ctc else 0.0


def _read_config(path: Path) -> dict:
    """A model directory's config.json, for a runtime that does not load the torch weights."""
    config_path = path / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path}: must be a mapping")
    return config


def _load_one(path: Path, runtime: str = "torch") -> Translator:
    if not path.is_dir():
        raise TranslateError(f"{path}: no such model directory")
    config = _read_config(path) if (path / CONFIG_FILE).is_file() else {}
    tok_file = tokenizer_file(config)
    for file in [path / CONFIG_FILE, *weight_files(path, config), path / tok_file]:
        if not file.is_file():
            raise TranslateError(f"{file}: not found (a model directory holds {CONFIG_FILE}, "
                                 f"{WEIGHTS_FILE} or an overlay's files, and {tok_file})")
    model: S2TModel | OnnxS2TModel
    if onnx_precision(runtime) is not None:
        model = open_model(path, runtime)
    else:
        torch_model, config = load_model_dir(path)
        model = open_model(path, runtime, torch_model)
    where = str(path / CONFIG_FILE)
    task = config.get("task")
    if task not in TASKS:
        raise TranslateError(f"{where}: 'task' must be one of {', '.join(TASKS)}, got {task!r}")
    languages = config.get("languages")
    if not isinstance(languages, list) or not languages or not all(isinstance(x, str) for x in languages):
        raise TranslateError(f"{where}: 'languages' must be a non-empty list of language codes, got {languages!r}")
    feats = feature_config(config.get("features"), where, model.cfg.n_mels)
    tokenizer = load_tokenizer(path, config, model.cfg.vocab_size)
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise TranslateError(f"{path / tok_file}: {tokenizer.vocab_size} pieces, but the model's "
                             f"vocab_size is {model.cfg.vocab_size}")
    translator = Translator([model], tokenizer, feats, list(languages), task, [path])
    for lang in languages:
        translator.prefix(lang)  # a language without a tag fails here, naming spm.model
    return translator


def load_tokenizer(path: Path, config: dict, vocab_size: int) -> Tokenizer | WhisperTokenizer:
    """A model directory's tokenizer: sentencepiece, or Whisper's BPE (``"tokenizer": "whisper"``)."""
    if config.get("tokenizer") == "whisper":
        from speech.whisper import WhisperImportError, load_tokenizer_for

        try:
            return load_tokenizer_for(path, config, vocab_size)
        except WhisperImportError as e:
            raise TranslateError(str(e)) from None
    return Tokenizer(path / TOKENIZER_FILE)


def _named_model(path: Path) -> Path:
    """A model name where no such folder exists: ``default`` and ``asr`` (the bundled translator
    and ASR model), ``teacher`` (the bundled fine-tuned Whisper, an overlay over Whisper base), or
    ``whisper-base`` (speech.whisper.MODEL_NAMES: the model imported from its pinned package)."""
    if path.exists() or path.parent != Path("."):
        return path
    bundled = {"default": BUNDLED_MODEL_DIR, "asr": BUNDLED_ASR_DIR, "teacher": BUNDLED_TEACHER_DIR}
    if str(path) in bundled:
        if not (bundled[str(path)] / CONFIG_FILE).is_file():
            raise TranslateError(f"--model {path}: {bundled[str(path)]} is not in this package")
        return bundled[str(path)]
    from speech.whisper import MODEL_NAMES, WhisperImportError, imported_model

    if str(path) not in MODEL_NAMES:
        return path
    try:
        return imported_model(str(path))
    except WhisperImportError as e:
        raise TranslateError(f"--model {path}: {e}") from None


def bundled_model(task: str | None = None) -> Path:
    """The bundled model for ``task``: for "asr" the ASR model shipped beside the translator
    (``speech/models/asr``; it transcribes better than the translator's ``<lang:en>``), when
    the package has it; otherwise, and for translation, the translator (``speech/models/default``)."""
    if task == "asr" and (BUNDLED_ASR_DIR / CONFIG_FILE).is_file():
        return BUNDLED_ASR_DIR
    if not (BUNDLED_MODEL_DIR / CONFIG_FILE).is_file():
        raise TranslateError("no bundled model yet; pass --model DIR")
    return BUNDLED_MODEL_DIR


def load_translator(model_dir: str | Path | Sequence[str | Path] | None = None, runtime: str = "torch",
                    task: str | None = None) -> Translator:
    """Load a model directory: ``config.json``, ``model.safetensors``, ``spm.model``.

    ``model_dir`` None is the bundled model for ``task`` (:func:`bundled_model`: the ASR
    model for "asr", else the translator); several directories make an ensemble (they
    must share ``spm.model``, the task and the feature settings; the languages are those
    they all have). Raises TranslateError naming the missing or wrong file, and the
    model loader's ConfigError / CheckpointError for a broken config or weights.

    ``runtime`` is one of :data:`speech.runtime.DECODING_RUNTIMES`: ``torch``,
    ``torch-int8``, or ``onnx`` / ``onnx-int8`` (onnxruntime, fp32 or int8 graphs: a
    directory's own ``onnx/`` export, or one made on first use under
    ``$INTERPRES_HOME/onnx/`` and reused after).
    """
    check_runtime(runtime, DECODING_RUNTIMES)
    if model_dir is None:
        model_dir = bundled_model(task)
    dirs = [Path(model_dir)] if isinstance(model_dir, (str, os.PathLike)) else [Path(d) for d in model_dir]
    dirs = [_named_model(d) for d in dirs]
    if not dirs:
        raise TranslateError("no model directory given")
    first = _load_one(dirs[0], runtime)
    for path in dirs[1:]:
        other = _load_one(path, runtime)
        if (other.tokenizer.path.read_bytes() != first.tokenizer.path.read_bytes()):
            raise TranslateError(f"{other.tokenizer.path}: differs from {first.tokenizer.path}; "
                                 "an ensemble needs one vocabulary")
        if other.task != first.task or other.feature_cfg != first.feature_cfg:
            raise TranslateError(f"{path}: its task or feature settings differ from {dirs[0]}'s")
        first.models += other.models
        first.model_dirs += other.model_dirs
        first.languages = [lang for lang in first.languages if lang in other.languages]
        if not first.languages:
            raise TranslateError(f"{path}: shares no target language with {dirs[0]}")
    return first


# --------------------------------------------------------------------------- voice activity


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return x
    return np.convolve(x, np.ones(width) / width, mode="same")


def split_on_pauses(wave: np.ndarray, sr: int = SAMPLE_RATE, max_segment_s: float = 20.0,
                    min_pause_s: float = 0.3, min_speech_s: float = 0.1, threshold_db: float = -40.0,
                    frame_s: float = 0.025, hop_s: float = 0.010, smooth_s: float = 0.03,
                    cut_smooth_s: float = 0.2) -> list[tuple[float, float]]:
    """Speech segments of ``wave`` (samples,) as (start_s, end_s), cut at pauses.

    1. Frame power (``frame_s`` windows every ``hop_s``), averaged over ``smooth_s``, in dB
       relative to the loudest frame of the file.
    2. A frame is speech above ``threshold_db``; a run of speech frames spans from half a
       hop before the first frame's centre to half a hop after the last one's.
    3. Runs separated by less than ``min_pause_s`` of non-speech are joined; segments
       shorter than ``min_speech_s`` are dropped.
    4. A segment longer than ``max_segment_s`` is cut at its quietest point (power
       averaged over ``cut_smooth_s``) among those that leave both sides at most
       ``max_segment_s`` (or, for more than twice that, in the second half of the first
       ``max_segment_s``, then again on the rest). The two sides share the cut time.
    """
    if max_segment_s <= 2 * min_speech_s or min_pause_s < 0 or hop_s <= 0 or frame_s < hop_s:
        raise ValueError(f"split_on_pauses: need max_segment_s > 2 * min_speech_s, min_pause_s >= 0 and "
                         f"frame_s >= hop_s > 0; got {max_segment_s}, {min_speech_s}, {min_pause_s}, "
                         f"{frame_s}, {hop_s}")
    x = np.asarray(wave, dtype=np.float64)
    hop, win = max(1, round(sr * hop_s)), max(1, round(sr * frame_s))
    if len(x) < win:
        return []
    n = 1 + (len(x) - win) // hop
    cums = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.arange(n) * hop
    power = np.maximum((cums[starts + win] - cums[starts]) / win, 0.0)
    hop_t, half_win = hop / sr, win / sr / 2
    db = 10 * np.log10(_moving_average(power, round(smooth_s / hop_t)) + 1e-12)
    speech = db > db.max() + threshold_db

    # runs of speech frames -> times
    edges = np.diff(np.concatenate([[0], speech.astype(np.int8), [0]]))
    first, last = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1
    duration = len(x) / sr
    segs: list[list[float]] = []
    for a, b in zip(first.tolist(), last.tolist()):
        start = max(0.0, a * hop_t + half_win - hop_t / 2)
        end = min(duration, b * hop_t + half_win + hop_t / 2)
        if segs and start - segs[-1][1] < min_pause_s:
            segs[-1][1] = end
        else:
            segs.append([start, end])
    segs = [s for s in segs if s[1] - s[0] >= min_speech_s]

    quiet = 10 * np.log10(_moving_average(power, round(cut_smooth_s / hop_t)) + 1e-12)
    centres = np.arange(n) * hop_t + half_win
    out: list[tuple[float, float]] = []
    for start, end in segs:
        while end - start > max_segment_s:
            if end - start <= 2 * max_segment_s:
                lo = max(end - max_segment_s, start + min_speech_s)
            else:
                lo = start + max_segment_s / 2
            hi = start + max_segment_s
            idx = np.nonzero((centres >= lo) & (centres <= hi))[0]
            cut = float(centres[idx[np.argmin(quiet[idx])]]) if len(idx) else hi
            out.append((start, cut))
            start = cut
        out.append((start, end))
    return [(round(s, 3), round(e, 3)) for s, e in out]


# --------------------------------------------------------------------------- files


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str


@dataclass
class FileResult:
    """The segments of one file in one target language."""

    file: str
    lang: str
    segments: list[Segment]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)

    def to_dict(self) -> dict:
        return {"file": self.file, "lang": self.lang, "segments": [dataclasses.asdict(s) for s in self.segments]}


def cut_segments(translator: Translator, wave: np.ndarray, max_segment_s: float = 20.0,
                 ) -> list[tuple[float, float, torch.Tensor]]:
    """``wave`` (samples,) at 16 kHz cut at pauses (:func:`split_on_pauses`, pieces of at most
    ``max_segment_s`` and of what the encoder takes): (start_s, end_s, features) per piece."""
    max_segment_s = min(max_segment_s, translator.max_segment_s)
    out = []
    for start, end in split_on_pauses(wave, SAMPLE_RATE, max_segment_s=max_segment_s):
        piece = wave[int(round(start * SAMPLE_RATE)):int(round(end * SAMPLE_RATE))]
        if frames_of(len(piece), translator.feature_cfg) > 0:
            out.append((start, end, translator.features(piece)))
    return out


def decode_segments(translator: Translator, feats: Sequence[torch.Tensor], langs: Sequence[str],
                    opts: DecodingOptions = DecodingOptions(), batch_frames: int = 20000,
                    progress: bool = True, each: bool = False) -> list[list[DecodingResult]]:
    """:meth:`Translator.decode` of any number of features, in batches of similar length holding at
    most ``batch_frames`` padded frames: results[utterance][language], in the order given. With
    ``each``, ``langs[i]`` is utterance i's own language (:meth:`Translator.decode_each`) and
    results[i] holds its one result."""
    results: list[list[DecodingResult]] = [[] for _ in feats]
    batches = batches_by_frames([len(x) for x in feats], batch_frames, shuffle=False)
    for batch in tqdm(batches, desc="translate", unit="batch", disable=None if progress else True):
        part = [feats[i] for i in batch]
        got = ([[r] for r in translator.decode_each(part, [langs[i] for i in batch], opts)] if each
               else translator.decode(part, langs, opts))
        for i, per_lang in zip(batch, got):
            results[i] = per_lang
    return results


def translate_files(translator: Translator, paths: Sequence[str | Path], tgt_langs: Sequence[str],
                    opts: DecodingOptions = DecodingOptions(), batch_frames: int = 20000,
                    max_segment_s: float = 20.0, failures: dict[str, str] | None = None) -> list[FileResult]:
    """Translate every file into every language: one FileResult per (file, language), file-major.

    Every file is read and cut first. A file that cannot be read fails before any
    decoding, as an AudioError naming it; or, given ``failures``, is recorded there
    (path -> message) and left out while the other files are translated. Segments of
    all files are then decoded in batches of similar length holding at most
    ``batch_frames`` padded feature frames.
    """
    translator.check_languages(tgt_langs)
    spans: list[tuple[int, float, float]] = []  # (file index, start, end)
    feats: list[torch.Tensor] = []
    readable = []
    for path in paths:
        try:
            wave = load_audio(path)
        except AudioError as e:
            if failures is None:
                raise
            failures[str(path)] = str(e)
            continue
        f = len(readable)
        readable.append(path)
        pieces = cut_segments(translator, wave, max_segment_s)
        log.info("%s: %.1f s, %d segments", path, len(wave) / SAMPLE_RATE, len(pieces))
        for start, end, x in pieces:
            spans.append((f, start, end))
            feats.append(x)

    texts = [[translator.text(h) for h in per_lang]
             for per_lang in decode_segments(translator, feats, tgt_langs, opts, batch_frames)]
    results = []
    for f, path in enumerate(readable):
        for j, lang in enumerate(tgt_langs):
            segs = [Segment(start, end, texts[i][j]) for i, (g, start, end) in enumerate(spans) if g == f]
            results.append(FileResult(str(path), lang, segs))
    return results


# --------------------------------------------------------------------------- formats


def srt_timestamp(seconds: float) -> str:
    """``HH:MM:SS,mmm``, rounded to the millisecond: 3725.5 -> ``01:02:05,500``."""
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(segments: Sequence[Segment]) -> str:
    """An SRT document: numbered cues, segments with empty text left out."""
    cues = [s for s in segments if s.text.strip()]
    return "".join(f"{i}\n{srt_timestamp(s.start)} --> {srt_timestamp(s.end)}\n{s.text.strip()}\n\n"
                   for i, s in enumerate(cues, 1))


def to_vtt(segments: Sequence[Segment]) -> str:
    """A WebVTT document: the header, then one cue per segment with text (``HH:MM:SS.mmm``)."""
    cues = [s for s in segments if s.text.strip()]
    return "WEBVTT\n\n" + "".join(
        f"{srt_timestamp(s.start).replace(',', '.')} --> {srt_timestamp(s.end).replace(',', '.')}\n"
        f"{s.text.strip()}\n\n" for s in cues)


def format_results(results: Sequence[FileResult], fmt: str) -> str:
    """Render ``results`` as one string in ``fmt`` (see the module docstring)."""
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2) + "\n"
    if fmt == "text":
        if len(results) == 1:
            return results[0].text + "\n"
        return "".join(f"{r.file}\t{r.lang}\t{r.text}\n" for r in results)
    if fmt == "srt":
        if len(results) == 1:
            return to_srt(results[0].segments)
        return "".join(f"==> {r.file} [{r.lang}] <==\n{to_srt(r.segments)}" for r in results)
    raise TranslateError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")


def srt_paths(results: Sequence[FileResult], out: Path) -> list[Path]:
    """Where ``write_results`` puts one SRT per result: ``out`` alone, or names with the
    language (and the input's stem, for several files) before the suffix."""
    if len(results) == 1:
        return [out]
    several_files = len({r.file for r in results}) > 1
    paths = []
    for r in results:
        middle = f"{Path(r.file).stem}.{r.lang}" if several_files else r.lang
        paths.append(out.with_name(f"{out.stem}.{middle}{out.suffix or '.srt'}"))
    if len(set(paths)) < len(paths):
        raise TranslateError(f"{out}: input files with the same name would write the same SRT; "
                             "run them separately")
    return paths


def check_out(out: str | Path, fmt: str, files: Sequence[str | Path], langs: Sequence[str]) -> None:
    """Raise :class:`TranslateError` naming ``out`` if :func:`write_results` could not write
    there: so that a bad ``--out`` fails before the decoding, not after it."""
    out = Path(out)
    if out.is_dir():
        raise TranslateError(f"--out {out}: is a directory; name a file")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TranslateError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TranslateError(f"--out {out}: cannot write in {parent}")
    if fmt == "srt":
        srt_paths([FileResult(str(f), lang, []) for f in files for lang in langs], out)


def write_results(results: Sequence[FileResult], fmt: str, out: str | Path) -> list[Path]:
    """Write ``results`` under ``out`` (each file whole or not at all: written beside it,
    then renamed): one file for text and JSON, one SRT per file and language. Returns the
    paths written."""
    out = Path(out)
    if fmt != "srt":
        with atomic_path(out) as tmp:
            tmp.write_text(format_results(results, fmt), encoding="utf-8")
        return [out]
    paths = srt_paths(results, out)
    for r, path in zip(results, paths):
        with atomic_path(path) as tmp:
            tmp.write_text(to_srt(r.segments), encoding="utf-8")
    return paths

