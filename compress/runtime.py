"""A small onnxruntime session: CPU, a set number of threads, numpy in and out, checked names.

    session = OrtSession("decoder.onnx", threads=2)
    logits, *present = session.run({"tokens": tokens, "enc_mask": mask, ...})

Errors (a file that is not an ONNX model, an input that is missing or unknown) are
:class:`RuntimeSessionError` naming the file, so a user sees which export is at fault.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort
import torch

from compress.errors import UserError

log = logging.getLogger(__name__)


class RuntimeSessionError(UserError, RuntimeError):
    """An ONNX file cannot be loaded or run as asked; the message names the file."""


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Sequential execution on ``threads`` intra-op threads (default: torch's thread count)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spinning after a run: the caller's torch threads work between calls (a decoder
    # step's log_softmax and beam bookkeeping) and would fight idle ORT threads for the cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: ORT warns about every constant it folds away
    return opts


class OrtSession:
    """One ONNX file on onnxruntime's CPU provider."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise RuntimeSessionError(f"{self.path}: not found")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors (Fail, InvalidGraph, ...)
            raise RuntimeSessionError(f"{self.path}: cannot load ({e})") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._inputs = set(self.input_names)

    def check_names(self, inputs: Sequence[str], outputs: Sequence[str] = ()) -> None:
        """Raise unless the graph has exactly these inputs and at least these outputs."""
        missing = [n for n in inputs if n not in self._inputs]
        extra = [n for n in self.input_names if n not in inputs]
        absent = [n for n in outputs if n not in self.output_names]
        if missing or extra or absent:
            parts = [f"{what} {', '.join(repr(n) for n in names)}" for what, names in
                     (("has no input", missing), ("has an unexpected input", extra), ("has no output", absent))
                     if names]
            raise RuntimeSessionError(f"{self.path}: {'; '.join(parts)} (inputs: {', '.join(self.input_names)}; "
                                      f"outputs: {', '.join(self.output_names)})")

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """Feed ``inputs`` by name; return ``outputs`` (default: all, in the graph's order)."""
        if inputs.keys() != self._inputs:
            missing = sorted(self._inputs - inputs.keys())
            unknown = sorted(inputs.keys() - self._inputs)
            raise RuntimeSessionError(
                f"{self.path}: " + "; ".join(
                    [f"missing input {', '.join(map(repr, missing))}"] * bool(missing)
                    + [f"unknown input {', '.join(map(repr, unknown))}"] * bool(unknown))
                + f" (the graph takes {', '.join(self.input_names)})")
        try:
            return self.session.run(list(outputs) if outputs is not None else None, dict(inputs))
        except Exception as e:  # shape or type mismatches come back as onnxruntime's own errors
            raise RuntimeSessionError(f"{self.path}: {e}") from e
