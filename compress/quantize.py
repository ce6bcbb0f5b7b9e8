"""Smaller, faster weights: int8 ONNX Runtime graphs, int8 PyTorch Linear layers, bf16.

- :func:`quantize_onnx_int8` -- onnxruntime's *dynamic* quantization of an ONNX file:
  the weights of the chosen ops (MatMul and Gemm by default: every nn.Linear) are stored
  as int8 (per tensor, or per output channel with ``per_channel``), activations are
  quantized to uint8 on the fly at every call, so no calibration data is needed.
- :func:`quantize_torch_int8` -- the same idea in PyTorch: ``torch.ao.quantization.
  quantize_dynamic`` swaps every nn.Linear for a dynamically quantized one (CPU only).
- :func:`to_bf16` -- all floating weights in bfloat16 (half the memory; inputs must be
  cast to bf16 too).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from compress.export import ExportError
from compress.files import atomic_path

log = logging.getLogger(__name__)

DEFAULT_ONNX_OPS = ("MatMul", "Gemm")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Drop what onnxruntime's quantizer logs on the root logger below ERROR: a line per
    tensor at INFO, and advice to run a shape-inference pre-pass that dynamic
    quantization of MatMul weights does not need."""

    def keep(record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.ERROR

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize_onnx_int8(src: str | Path, dst: str | Path, per_channel: bool = False,
                       op_types: Sequence[str] = DEFAULT_ONNX_OPS, reduce_range: bool = True) -> Path:
    """Write ``dst``: ``src`` with int8 weights for ``op_types`` (onnxruntime dynamic quantization).

    ``per_channel`` keeps a scale per output channel. ``reduce_range`` (7-bit weights) is on
    by default: CPUs without VNNI (AVX2 only) multiply uint8 activations by int8 weights
    with a saturating instruction, and full 8-bit weights lose accuracy there, per-channel
    ones most. Written atomically; raises ExportError naming ``src`` when quantization fails.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ExportError(f"{src}: not found")
    with atomic_path(dst) as tmp:
        try:
            with _quiet_root_logger():
                quantize_dynamic(src, tmp, op_types_to_quantize=list(op_types), per_channel=per_channel,
                                 reduce_range=reduce_range, weight_type=QuantType.QInt8)
        except Exception as e:  # the quantizer raises plain Exceptions and onnx errors
            raise ExportError(f"{src}: int8 quantization failed: {type(e).__name__}: {e}") from e
    log.info("quantized %s -> %s (%.1f -> %.1f MB)", src, dst, src.stat().st_size / 1e6, dst.stat().st_size / 1e6)
    return dst


def quantize_torch_int8(module: nn.Module, inplace: bool = False) -> nn.Module:
    """``module`` with every nn.Linear dynamically quantized to int8 weights (CPU inference only).

    Attributes the forward pass reads (attention heads, head sizes) are left as they are;
    a weight tied to an nn.Linear (a shared embedding) stays float in its other users.
    """
    if not inplace:
        module = copy.deepcopy(module)
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.ao.quantization and quantized tensors for torchao, which
        # is not a dependency; the dynamic int8 Linear still works and is kept as a baseline
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(module.eval(), {nn.Linear}, dtype=torch.qint8, inplace=True)


def to_bf16(module: nn.Module, inplace: bool = False) -> nn.Module:
    """``module`` with every floating parameter and buffer in bfloat16."""
    if not inplace:
        module = copy.deepcopy(module)
    return module.to(torch.bfloat16)
