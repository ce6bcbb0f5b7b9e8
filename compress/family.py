"""What a model family gives the compression pipeline, and how a config names one.

A family is a class named in the config (``family: speech.compressing:SpeechFamily``) with
the methods of :class:`Family`. :mod:`compress.pipeline` runs the stages with it and
:mod:`compress.report` measures its variants (each in a child process that loads the
family again by name): both import this module, and report does not import the pipeline.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, Sequence

from torch import Tensor, nn

from compress.errors import UserError


class CompressError(UserError, ValueError):
    """A compression config or stage input is wrong; the message names the key or file."""


class Family(Protocol):
    """What a model family gives the pipeline (see speech.compressing, simul.compressing and
    audio_align.compressing)."""

    quality: str  # the headline quality metric in score()'s dict, higher is better (e.g. "chrF")

    def load(self, path: Path) -> nn.Module:
        """The torch model of a model directory (eval mode, float32)."""

    def save(self, model: nn.Module, like: Path, out: Path, note: dict[str, Any]) -> None:
        """Write ``model`` as a model directory, its config read off its modules; tokenizers and
        other files from the model directory ``like``; ``note`` recorded in its config."""

    def calibration(self, model_dir: Path, n: int) -> list[Any]:
        """``n`` training batches for the model directory ``model_dir`` (its tokenizer), for
        importance scores."""

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The scalar label loss of a batch (for Taylor importance)."""

    def distill(self, student: Path, teachers: Sequence[Path], settings: dict[str, Any], out: Path) -> Path:
        """Train the model directory ``student`` on the teachers' outputs (family training loop,
        resumable); ``settings`` holds ``kd`` (KDConfig fields), ``seq_kd`` and loop settings.
        Returns the new model directory."""

    def quantize(self, model_dir: Path, out: Path, settings: dict[str, Any]) -> dict[str, Any]:
        """Make the quantized variant of a model directory; returns its variant dict
        (``path`` and ``runtime``) that :meth:`open` accepts."""

    def test_items(self, settings: dict[str, Any]) -> list[Any]:
        """The test items every variant is measured on (the same for all)."""

    # optional: trim(model_dir, out, settings) -> sizes, the config's trim stage: the model's
    # vocabulary cut to what its languages use, written as a new model directory
    # (speech: Whisper's decoder vocabulary, speech.whisper.trim_vocabulary)

    # optional: resampler(items, outputs) -> (item indices -> the headline quality of those
    # items), for the report's bootstrap intervals (compress.report.sacrebleu_resampler)

    def open(self, variant: dict[str, Any], threads: int) -> Any:
        """A runner for a variant dict ``{"path", "runtime"}`` using ``threads`` threads; a
        ``decode`` key (from the config's ``decodings``) changes how it decodes, and a family
        that cannot do what it asks raises CompressError naming the variant."""

    def infer(self, runner: Any, items: list[Any]) -> list[Any]:
        """Outputs for a batch of items."""

    def score(self, runner: Any, items: list[Any], outputs: list[Any]) -> dict[str, float]:
        """Quality of the outputs (``quality`` among the keys), maybe more (latency of a policy)."""


def load_family(spec: str, options: dict[str, Any]) -> Family:
    """``module:Class`` -> an instance built with the config's ``options``."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise CompressError(f"family: '{spec}' is not of the form package.module:Class")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise CompressError(f"family: cannot load '{spec}' ({e})") from e
    return cls(**options)
