"""What a model runs on: one vocabulary for every command, config and report.

    torch        the PyTorch model, float32
    torch-int8   PyTorch dynamic int8 quantization of the Linear layers
    torch-bf16   bfloat16 weights (a variant the compress reports measure; not for decoding)
    onnx         onnxruntime, float32 graphs
    onnx-int8    onnxruntime, int8 graphs (dynamic quantization, per output channel)

``translate``, ``transcribe``, ``eval mustc``, ``eval stream``, ``stream``, ``serve`` and
``simul`` take ``--runtime`` from :data:`DECODING_RUNTIMES`; a compress recipe's
``quantize: {runtime: ...}`` from :data:`RUNTIMES`. Both model families (the speech
translator and the zh->en text translator) open a runtime here:

    model = open_model(model_dir, "onnx-int8")            # exported once, then reused
    model = open_model(model_dir, "torch-int8", torch_model)

The ONNX graphs of a model directory are its own ``onnx/`` folder when it has one, or an
export made on first use under ``$INTERPRES_HOME/onnx/`` (:func:`speech.onnx.onnx_export_for`);
:func:`export` writes them into a folder of one's choosing (the compress pipeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from speech.config import ConfigError

if TYPE_CHECKING:
    from torch import nn

RUNTIMES = ("torch", "torch-int8", "torch-bf16", "onnx", "onnx-int8")
DECODING_RUNTIMES = ("torch", "torch-int8", "onnx", "onnx-int8")
_ONNX_PRECISION = {"onnx": "fp32", "onnx-int8": "int8"}


def check_runtime(runtime: str, allowed: tuple[str, ...] = RUNTIMES, what: str = "runtime") -> str:
    """``runtime`` if it is one of ``allowed``; else a :class:`ConfigError` naming ``what``."""
    if runtime not in allowed:
        raise ConfigError(f"{what}: unknown runtime '{runtime}' (known: {', '.join(allowed)})")
    return runtime


def onnx_precision(runtime: str) -> str | None:
    """The ONNX graphs a runtime runs ("fp32" or "int8"), or None for a torch runtime."""
    return _ONNX_PRECISION.get(check_runtime(runtime))


def open_model(model_dir: str | Path, runtime: str, model: nn.Module | None = None,
               onnx_dir: str | Path | None = None, threads: int | None = None) -> Any:
    """The model of ``model_dir`` on ``runtime``: for an ONNX runtime an
    :class:`speech.onnx.OnnxS2TModel` of the graphs in ``onnx_dir`` (default: the directory's
    own export, or one made once into the cache); for a torch runtime ``model`` (the loaded
    PyTorch model) as that runtime runs it."""
    precision = onnx_precision(runtime)
    if precision is not None:
        from speech.onnx import OnnxS2TModel, onnx_export_for  # noqa: PLC0415

        folder = onnx_dir if onnx_dir is not None else onnx_export_for(model_dir, precision)
        return OnnxS2TModel(folder, precision=precision, threads=threads)
    if model is None:  # a caller's mistake, not a user's
        raise ValueError(f"open_model: runtime '{runtime}' needs the loaded model of {model_dir}")
    if runtime == "torch-int8":
        from compress.quantize import quantize_torch_int8  # noqa: PLC0415

        return quantize_torch_int8(model)
    if runtime == "torch-bf16":
        import torch  # noqa: PLC0415

        return model.to(torch.bfloat16)
    return model


def export(model_dir: str | Path, out: str | Path, runtime: str, per_channel: bool = True) -> dict[str, Any]:
    """What a compress recipe's ``quantize`` step makes of ``model_dir`` for ``runtime``: the
    ONNX graphs written into ``out`` for an ONNX runtime; nothing for a torch runtime (applied
    when the model is opened). Returns the variant's fields: path, runtime[, onnx, files]."""
    precision = onnx_precision(runtime)
    if precision is None:
        return {"path": str(model_dir), "runtime": runtime}
    from speech.onnx import export_once  # noqa: PLC0415

    files = export_once(model_dir, out, precision, per_channel=per_channel)
    return {"path": str(model_dir), "runtime": runtime, "onnx": str(out), "files": [str(f) for f in files]}
