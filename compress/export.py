"""Export an nn.Module to one ONNX file with the dynamo exporter, and check it runs as torch does.

    path = export_onnx(module, (features, lens), "encoder.onnx",
                       input_names=["features", "feat_lens"], output_names=["enc_out", "enc_lens"],
                       dynamic_shapes=({0: Dim.DYNAMIC, 1: Dim.DYNAMIC}, {0: Dim.DYNAMIC}))

- ``torch.onnx.export(..., dynamo=True)`` traces the module with ``torch.export``, so the
  axes named in ``dynamic_shapes`` stay symbolic. Example inputs should have sizes of at
  least 2 on every dynamic axis: the tracer specialises an axis of size 0 or 1.
- The weights are embedded in the one ``.onnx`` file (no external data) while the model is
  under protobuf's 2 GB limit, so a file is the whole model.
- The file is written to a temporary name beside the target and renamed into place, so a
  killed export leaves the old file or none (:func:`atomic_path`).
- :func:`verify_onnx` runs the file with onnxruntime on the example inputs and compares
  every output with the module's; a difference raises :class:`ExportError` naming the file.

This package knows nn.Modules, never a model family: speech-specific wrappers live in
``speech.onnx``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from compress.errors import UserError
from compress.files import atomic_path
from compress.runtime import OrtSession, RuntimeSessionError

log = logging.getLogger(__name__)

EMBED_LIMIT = 1_800_000_000  # bytes of weights above which they go to an external data file


class ExportError(UserError, RuntimeError):
    """An export or its check failed; the message names the file."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's libraries log every pass at INFO, warn once per missing torchvision op
    and about their own deprecations; keep what says something about this export."""
    levels = {"onnx_ir": logging.WARNING, "onnxscript": logging.WARNING,
              "torch.onnx._internal.exporter._registration": logging.ERROR}
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    saved = {lg: lg.level for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(max(lg.getEffectiveLevel(), level))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in saved.items():
            lg.setLevel(level)


def _flatten(outputs: Any) -> list[torch.Tensor]:
    """A module's outputs as the flat list the ONNX graph returns them in."""
    leaves, _ = torch.utils._pytree.tree_flatten(outputs)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def _weight_bytes(module: nn.Module) -> int:
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def export_onnx(module: nn.Module, args: tuple[Any, ...], path: str | Path, *, input_names: Sequence[str],
                output_names: Sequence[str], dynamic_shapes: Any = None, opset_version: int | None = None,
                verify: bool = True, atol: float = 1e-4) -> Path:
    """Export ``module`` (put in eval mode) called on ``args`` to ``path``; return ``path``.

    ``input_names`` name the flattened inputs (nested lists of tensors count leaf by
    leaf), ``output_names`` the flattened outputs; ``dynamic_shapes`` is torch.export's
    (one spec per argument, e.g. ``{0: Dim.DYNAMIC}``). With ``verify`` the written file
    is run by onnxruntime on ``args`` and must match torch within ``atol``.
    """
    path = Path(path)
    module = module.eval()
    external = _weight_bytes(module) > EMBED_LIMIT
    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(module, args, dynamo=True, input_names=list(input_names),
                                        output_names=list(output_names), dynamic_shapes=dynamic_shapes,
                                        opset_version=opset_version, optimize=True, verbose=False)
    except Exception as e:  # the exporter raises many types; the file is what the caller needs
        raise ExportError(f"{path}: the ONNX export failed: {type(e).__name__}: {e}") from e
    if program is None:
        raise ExportError(f"{path}: the ONNX exporter returned no program")
    if external:
        # external data is found by a file name recorded in the graph: write in place
        path.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(path), external_data=True)
        if verify:
            verify_onnx(module, args, path, input_names=input_names, atol=atol)
    else:
        with atomic_path(path) as tmp:  # checked before it takes the name: a failed check leaves no file
            program.save(str(tmp), external_data=False)
            if verify:
                try:
                    verify_onnx(module, args, tmp, input_names=input_names, atol=atol)
                except (ExportError, RuntimeSessionError) as e:
                    raise ExportError(str(e).replace(str(tmp), str(path))) from e
    log.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def _numpy_inputs(args: tuple[Any, ...]) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in _flatten(args)]


def verify_onnx(module: nn.Module, args: tuple[Any, ...], path: str | Path,
                input_names: Sequence[str] | None = None, atol: float = 1e-4) -> None:
    """Run ``path`` with onnxruntime on ``args`` and compare each output with ``module(*args)``.

    ``input_names`` name the flattened ``args`` (default: the graph's inputs in order); an
    input the exporter left out because the graph does not use it is not fed.
    """
    session = OrtSession(path, threads=1)
    names = list(input_names) if input_names is not None else session.input_names
    feeds = {n: a for n, a in zip(names, _numpy_inputs(args)) if n in session.input_names}
    got = session.run(feeds)
    with torch.no_grad():
        want = [t.detach().cpu().numpy() for t in _flatten(module(*args))]
    if len(got) != len(want):
        raise ExportError(f"{path}: {len(got)} outputs, but the module returns {len(want)}")
    for name, g, w in zip(session.output_names, got, want):
        if g.shape != w.shape:
            raise ExportError(f"{path}: output '{name}' has shape {g.shape}, torch gives {w.shape}")
        if w.dtype == np.bool_ or np.issubdtype(w.dtype, np.integer):
            if not np.array_equal(g, w):
                raise ExportError(f"{path}: output '{name}' differs from torch")
            continue
        diff = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)), initial=0.0))
        if not diff <= atol:  # also catches NaN
            raise ExportError(f"{path}: output '{name}' differs from torch by {diff:.3g} (tolerance {atol:g})")
