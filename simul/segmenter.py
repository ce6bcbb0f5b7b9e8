"""A streaming sentence-boundary detector for an unpunctuated Chinese character stream.

The source of simultaneous zh->en translation is a stream of characters with no
punctuation and no spaces (an ASR transcript, say). This module decides where to cut it
into segments that are translated at once.

Position ``p`` names the gap after the first ``p`` characters, between ``text[p-1]`` and
``text[p]``. A small classifier (:class:`BoundaryModel`) looks at a window of
``context`` characters left of the gap and ``lookahead`` characters right of it,

    window(p) = text[p - context : p + lookahead]     (ids; 0 = padding outside the text)

and gives one logit for "a sentence boundary lies at p". The decision about ``p`` can
therefore be taken once ``p + lookahead`` characters have been read (or the stream has
ended, after which the missing right context is padding, exactly as in training).

    seg = train_segmenter(streams, SegmenterConfig())     # streams: list of sentence lists
    probs = seg.boundary_probs(text)                      # probs[i] is for p = i + 1
    cuts = seg.cut(text, threshold=0.5, max_len=40)        # where a greedy agent cuts
    seg.save("runs/segmenter"); seg = Segmenter.load("runs/segmenter")

A segmenter directory holds ``config.json`` (``{"config": SegmenterConfig fields,
"vocab": [characters]}``) and ``model.safetensors``; neither is read with pickle.
Character ids: 0 = padding, 1 = unk, then ``vocab[i]`` has id ``i + 2``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from compress.errors import UserError
from compress.files import atomic_path, write_json_atomic
from speech.checkpoint import load_weights

logger = logging.getLogger(__name__)

PAD_ID, UNK_ID = 0, 1
N_SPECIAL = 2  # pad and unk come before the characters

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# Rows scored per forward pass: bounds memory on a long stream, and a batch this large
# already amortizes the per-call overhead.
SCORE_CHUNK = 16384


class SegmenterFileError(UserError, ValueError):
    """A segmenter directory is missing a file or its files disagree; the message names the file."""


@dataclass
class SegmenterConfig:
    """The boundary classifier and its training.

    ``vocab_size`` caps the embedding table, pad and unk included: at most
    ``vocab_size - 2`` characters get ids of their own, the most frequent ones.
    """

    context: int = 8  # characters left of a candidate boundary the classifier sees
    lookahead: int = 2  # characters right of it; the decision waits for them
    dim: int = 64  # character embedding size
    hidden: int = 128  # conv channels and MLP width
    vocab_size: int = 4000
    epochs: int = 5
    batch_size: int = 256
    lr: float = 2e-3
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("context", "dim", "hidden", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"'{name}' must be at least 1, got {getattr(self, name)}")
        if self.lookahead < 0:
            raise ValueError(f"'lookahead' must be at least 0, got {self.lookahead}")
        if self.vocab_size < N_SPECIAL + 1:
            raise ValueError(f"'vocab_size' must be at least {N_SPECIAL + 1} (pad, unk and one character), "
                             f"got {self.vocab_size}")
        if not self.lr > 0:
            raise ValueError(f"'lr' must be positive, got {self.lr}")

    @property
    def window(self) -> int:
        return self.context + self.lookahead


class BoundaryModel(nn.Module):
    """Character window -> boundary logit.

        windows (B, W) long --embed--> (B, dim, W) --conv k=3, ReLU--> (B, hidden, W)
            --flatten--> (B, hidden * W) --Linear, ReLU, Linear--> (B,) logits

    W = context + lookahead. The convolution reads character n-grams (those that straddle
    the gap matter most); flattening rather than pooling keeps where each n-gram sits
    relative to the gap, which is the whole question. The padding embedding is zero, the
    same as the convolution's own zero padding at the window's edges.
    """

    def __init__(self, n_embeddings: int, cfg: SegmenterConfig) -> None:
        super().__init__()
        self.window = cfg.window
        self.embed = nn.Embedding(n_embeddings, cfg.dim, padding_idx=PAD_ID)
        self.conv = nn.Conv1d(cfg.dim, cfg.hidden, kernel_size=3, padding=1)
        self.hidden = nn.Linear(cfg.hidden * cfg.window, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, windows: Tensor) -> Tensor:
        """windows (B, W) long ids -> (B,) float logits."""
        x = self.embed(windows).transpose(1, 2)
        x = F.relu(self.conv(x)).flatten(1)
        return self.out(F.relu(self.hidden(x))).squeeze(-1)


def cut_positions(probs: Sequence[float], threshold: float, max_len: int | None = None) -> list[int]:
    """Where a greedy left-to-right segmenter cuts a text of ``len(probs) + 1`` characters.

    ``probs[i]`` is the boundary probability at position ``p = i + 1``. Going left to
    right, with the current segment starting at ``start`` (0, then the last cut), cut at
    ``p`` when ``probs[p - 1] >= threshold``, or when the segment ``text[start:p]`` has
    reached ``max_len`` characters (``None``: never forced). So no segment, the last one
    included, is longer than ``max_len``. Returns the cut positions, increasing; the end
    of the text is never one.

    Online, the agent decides ``p`` once it has read ``p + lookahead`` characters; a
    forced cut needs no lookahead and may be taken as soon as ``p`` characters are read.
    Either way the cuts are the same as here.
    """
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be at least 1 (or None), got {max_len}")
    cuts: list[int] = []
    start = 0
    for i, prob in enumerate(probs):
        p = i + 1
        if prob >= threshold or (max_len is not None and p - start >= max_len):
            cuts.append(p)
            start = p
    return cuts


def _stream_text(sentences: Sequence[str]) -> tuple[str, list[int]]:
    """The stream and its gold boundaries: after each sentence but the last. Empty sentences add nothing."""
    sentences = [s for s in sentences if s]
    boundaries = []
    n = 0
    for s in sentences[:-1]:
        n += len(s)
        boundaries.append(n)
    return "".join(sentences), boundaries


def _f1(tp: int, fp: int, fn: int) -> dict[str, float]:
    # An empty denominator scores 0: a segmenter that never cuts must not look precise.
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


class Segmenter:
    """A trained :class:`BoundaryModel` with its character vocabulary and config."""

    def __init__(self, model: BoundaryModel, vocab: Sequence[str], cfg: SegmenterConfig) -> None:
        if len(vocab) + N_SPECIAL > cfg.vocab_size:
            raise ValueError(f"{len(vocab)} characters do not fit vocab_size {cfg.vocab_size} "
                             f"({N_SPECIAL} ids are pad and unk)")
        self.model = model.eval()
        self.vocab = list(vocab)
        self.cfg = cfg
        self.index = {c: i + N_SPECIAL for i, c in enumerate(self.vocab)}

    # --- windows and scores ---------------------------------------------------------

    def windows(self, text: str) -> Tensor:
        """(len(text) + 1, W) long: row ``p`` is the window of the gap after ``text[:p]``.

        Characters before the start or past the end of ``text`` are padding.
        """
        ids = [self.index.get(c, UNK_ID) for c in text]
        padded = torch.tensor([PAD_ID] * self.cfg.context + ids + [PAD_ID] * self.cfg.lookahead, dtype=torch.long)
        # padded[j] is text[j - context], so padded[p : p + W] is text[p - context : p + lookahead]
        return padded.unfold(0, self.cfg.window, 1)

    def _score(self, windows: Tensor) -> Tensor:
        """(N, W) long -> (N,) float probabilities."""
        with torch.inference_mode():
            if len(windows) == 0:
                return torch.zeros(0)
            return torch.cat([torch.sigmoid(self.model(chunk)) for chunk in windows.split(SCORE_CHUNK)])

    def boundary_probs(self, text: str) -> list[float]:
        """Boundary probability at each interior position, in one batch: ``len(text) - 1`` floats.

        Index ``i`` is position ``p = i + 1``. The classifier sees only ``text``, so the
        last ``lookahead`` positions are scored as if the stream ended there.
        """
        if len(text) < 2:
            return []
        return self._score(self.windows(text)[1:len(text)]).tolist()

    def prob(self, text: str, p: int) -> float:
        """Boundary probability at position ``p`` (after ``text[:p]``), ``1 <= p <= len(text)``.

        A streaming agent calls this with the stream read so far once
        ``p + lookahead <= len(text)``; then the result equals ``boundary_probs`` of the
        whole stream at ``p``. Pass the stream from its start (or at least ``context``
        characters before ``p``): dropping what was already translated changes the window.
        """
        if not 1 <= p <= len(text):
            raise ValueError(f"position {p} is outside 1..{len(text)} (the text has {len(text)} characters)")
        return self._score(self.windows(text[max(0, p - self.cfg.context):p + self.cfg.lookahead])
                           [min(p, self.cfg.context)].unsqueeze(0)).item()

    def cut(self, text: str, threshold: float = 0.5, max_len: int | None = None,
            probs: Sequence[float] | None = None) -> list[int]:
        """The cut positions of :func:`cut_positions` for ``text`` (its probabilities computed if not given)."""
        if probs is None:
            probs = self.boundary_probs(text)
        if len(probs) != max(len(text) - 1, 0):
            raise ValueError(f"{len(probs)} probabilities for a text of {len(text)} characters "
                             f"(want one per interior position, {max(len(text) - 1, 0)})")
        return cut_positions(probs, threshold, max_len)

    def evaluate(self, streams: Sequence[Sequence[str]], threshold: float = 0.5) -> dict[str, float]:
        """Position-exact boundary precision, recall and F1 over ``streams`` (lists of sentences).

        A predicted boundary is an interior position with probability >= ``threshold``;
        the gold ones follow each sentence but the last. Also returns the counts tp, fp, fn.
        """
        texts, gold = zip(*(_stream_text(s) for s in streams)) if streams else ((), ())
        rows = [self.windows(t)[1:len(t)] for t in texts]
        probs = self._score(torch.cat(rows)) if rows else torch.zeros(0)
        tp = fp = fn = 0
        offset = 0
        for text, boundaries in zip(texts, gold):
            n = max(len(text) - 1, 0)
            predicted = {i + 1 for i in torch.nonzero(probs[offset:offset + n] >= threshold).flatten().tolist()}
            offset += n
            hits = len(predicted & set(boundaries))
            tp += hits
            fp += len(predicted) - hits
            fn += len(boundaries) - hits
        return _f1(tp, fp, fn)

    # --- save and load --------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``path/config.json`` and ``path/model.safetensors`` (each atomically); returns ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(path / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        write_json_atomic(path / CONFIG_FILE, {"config": dataclasses.asdict(self.cfg), "vocab": self.vocab})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Segmenter:
        """Read a directory written by :meth:`save`; a :class:`SegmenterFileError` names the bad file."""
        path = Path(path)
        config_path = path / CONFIG_FILE
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SegmenterFileError(f"{config_path}: not found (is {path} a segmenter directory?)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SegmenterFileError(f"{config_path}: cannot read ({e})") from e
        except json.JSONDecodeError as e:
            raise SegmenterFileError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from e
        if not isinstance(data, dict) or "config" not in data or "vocab" not in data:
            raise SegmenterFileError(f"{config_path}: want a mapping with keys 'config' and 'vocab'")
        cfg = _config_from_dict(data["config"], config_path)
        vocab = data["vocab"]
        if (not isinstance(vocab, list) or not all(isinstance(c, str) and len(c) == 1 for c in vocab)
                or len(set(vocab)) != len(vocab)):
            raise SegmenterFileError(f"{config_path}: 'vocab' must be a list of distinct single characters")
        if len(vocab) + N_SPECIAL > cfg.vocab_size:
            raise SegmenterFileError(f"{config_path}: {len(vocab)} characters do not fit vocab_size "
                                     f"{cfg.vocab_size} ({N_SPECIAL} ids are pad and unk)")

        model = BoundaryModel(len(vocab) + N_SPECIAL, cfg)
        load_weights(model, path / WEIGHTS_FILE, SegmenterFileError)
        return cls(model, vocab, cfg)


def _config_from_dict(data: Any, where: Path) -> SegmenterConfig:
    """Every field must be present with its type: a saved model has no defaults to fall back on."""
    if not isinstance(data, dict):
        raise SegmenterFileError(f"{where}: 'config' must be a mapping of SegmenterConfig fields")
    fields = typing.get_type_hints(SegmenterConfig)
    for key in data:
        if key not in fields:
            raise SegmenterFileError(f"{where}: unknown key 'config.{key}' (known: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    for key, tp in fields.items():
        if key not in data:
            raise SegmenterFileError(f"{where}: missing key 'config.{key}'")
        value = data[key]
        # JSON writes 2.0 as 2.0 but a hand edit may say 2; a bool is never a number here
        ok = isinstance(value, (int, float)) if tp is float else isinstance(value, int)
        if not ok or isinstance(value, bool):
            raise SegmenterFileError(f"{where}: 'config.{key}' must be {tp.__name__}, got {value!r}")
        kwargs[key] = float(value) if tp is float else value
    try:
        return SegmenterConfig(**kwargs)
    except ValueError as e:
        raise SegmenterFileError(f"{where}: {e}") from e


def build_vocab(streams: Sequence[Sequence[str]], vocab_size: int) -> list[str]:
    """The ``vocab_size - 2`` most frequent characters seen at least twice, ties by code point.

    Characters seen once map to unk, so the unk embedding is trained on something like
    the rare characters it will meet at inference.
    """
    counts = Counter(c for sentences in streams for s in sentences for c in s)
    ranked = sorted((c for c, n in counts.items() if n >= 2), key=lambda c: (-counts[c], c))
    return ranked[:vocab_size - N_SPECIAL]


def train_segmenter(streams: Sequence[Sequence[str]], cfg: SegmenterConfig,
                    dev_streams: Sequence[Sequence[str]] | None = None, log_every: int = 200) -> Segmenter:
    """Train a boundary classifier on ``streams``, each a list of sentences (no punctuation).

    The concatenated sentences are the stream. Every interior position is one example:
    positive after each sentence but the last (the stream's end is not a decision),
    negative elsewhere. The loss weighs positives by negatives/positives, so the
    probabilities are those of a balanced prior: 0.5 is where a miss and a false cut cost
    the same, not a calibrated frequency. Deterministic given ``cfg.seed`` (on one device
    and thread count); the caller's global RNG is left as it was.

    Logs the loss every ``log_every`` steps and, after each epoch, the dev F1 at 0.5.
    """
    vocab = build_vocab(streams, cfg.vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = BoundaryModel(len(vocab) + N_SPECIAL, cfg)
    segmenter = Segmenter(model, vocab, cfg)

    rows, labels = [], []
    for sentences in streams:
        text, boundaries = _stream_text(sentences)
        if len(text) < 2:
            continue
        rows.append(segmenter.windows(text)[1:len(text)])
        y = torch.zeros(len(text) - 1)
        y[[b - 1 for b in boundaries]] = 1.0
        labels.append(y)
    if not rows:
        raise ValueError("train_segmenter: no stream has two characters or more")
    x_all, y_all = torch.cat(rows), torch.cat(labels)
    n_pos = int(y_all.sum())
    n_neg = len(y_all) - n_pos
    if n_pos == 0:
        raise ValueError("train_segmenter: no sentence boundaries in the training streams "
                         "(every stream has one sentence)")
    pos_weight = torch.tensor(max(n_neg, 1) / n_pos)
    logger.info("segmenter: %d streams, %d positions (%d boundaries), %d characters + pad/unk, "
                "%d parameters", len(rows), len(y_all), n_pos, len(vocab),
                sum(p.numel() for p in model.parameters()))

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        started = time.perf_counter()
        total, seen = 0.0, 0
        for batch in torch.randperm(len(y_all), generator=generator).split(cfg.batch_size):
            logits = model(x_all[batch])
            loss = F.binary_cross_entropy_with_logits(logits, y_all[batch], pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total += loss.item() * len(batch)
            seen += len(batch)
            if log_every and step % log_every == 0:
                logger.info("segmenter: epoch %d step %d loss %.4f", epoch, step, loss.item())
        model.eval()
        message = f"segmenter: epoch {epoch}/{cfg.epochs} loss {total / seen:.4f} " \
                  f"({time.perf_counter() - started:.1f}s)"
        if dev_streams:
            scores = segmenter.evaluate(dev_streams)
            message += f", dev P {scores['precision']:.3f} R {scores['recall']:.3f} F1 {scores['f1']:.3f}"
        logger.info(message)
    return segmenter
