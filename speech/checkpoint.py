"""Model directories: ``config.json`` (``{"model": ModelConfig fields, ...extra}``) and
``model.safetensors``, written and read without pickle; every problem a
:class:`CheckpointError` naming the file (and tensor).

    save_model_dir(model, cfg, "runs/st/model", extra={"task": "st", "languages": [...]})
    model, config = load_model_dir("runs/st/model")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from compress.errors import UserError
from compress.files import atomic_dir, atomic_path
from speech.config import ConfigError, config_to_dict
from speech.model import S2TModel, layout_of
from speech.model_config import ModelConfig, OPTIONAL_FIELDS


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(UserError, ValueError):
    """A model.safetensors does not fit its config; the message names the file and tensor."""


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def _saved_names(state: dict[str, Tensor]) -> list[str]:
    """State-dict names without the aliases of an earlier tensor (the tied output projection)."""
    seen: set[tuple] = set()
    names = []
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if key in seen:
            continue
        seen.add(key)
        names.append(name)
    return names


def model_device(model: object) -> torch.device:
    """Where a model takes its inputs: its parameters' device; the CPU for a model without
    any (an ONNX Runtime model, say)."""
    if isinstance(model, nn.Module):
        param = next(model.parameters(), None)
        if param is not None:
            return param.device
    return torch.device("cpu")


def save_model_dir(model: nn.Module, cfg: Any, path: str | Path, extra: dict[str, Any] | None = None,
                   dtype: torch.dtype | None = None) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.json`` = {"model": cfg, **extra}.

    ``extra`` holds what else a model directory records (languages, feature settings,
    the recipe). ``dtype`` (e.g. torch.float16) converts the floating tensors for storage.
    A tied weight is stored once. Each file is written to a temporary name, then renamed.
    """
    path = Path(path)
    extra = dict(extra or {})
    if "model" in extra:
        raise ValueError("save_model_dir: 'model' is reserved in config.json for the ModelConfig")
    path.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    tensors = {}
    for name in _saved_names(state):
        t = state[name].detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    config = {"model": config_to_dict(cfg), **extra}
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(path / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    return isinstance(value, tp)


def model_config_from_dict(data: Any, where: str, config_cls: type = ModelConfig) -> Any:
    """A ``config_cls`` (a ModelConfig by default) from a config.json's "model" mapping;
    every field must be present."""
    name = config_cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: 'model' must be a mapping of {name} fields")
    hints = typing.get_type_hints(config_cls)
    fields = [f.name for f in dataclasses.fields(config_cls)]
    for key in data:
        if key not in hints:
            raise ConfigError(f"{where}: unknown key 'model.{key}' (known keys: {', '.join(fields)})")
    for key in fields:
        if key not in data:
            if key in OPTIONAL_FIELDS:
                continue
            raise ConfigError(f"{where}: missing key 'model.{key}'")
        if not _type_ok(data[key], hints[key]):
            raise ConfigError(f"{where}: 'model.{key}' must be {hints[key]}, got {data[key]!r}")
    kwargs = {k: float(v) if hints[k] is float else v for k, v in data.items()}
    try:
        return config_cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{where}: {name}: {e}") from e


def load_weights(model: nn.Module, weights_path: Path, error: type[Exception] = CheckpointError) -> None:
    """Fill ``model`` strictly from a safetensors file: every tensor of its state dict
    (a tied weight once) with its shape and kind (floating or not), and nothing else.
    Raises ``error`` naming the file and the tensor. Nothing is unpickled."""
    if not weights_path.is_file():
        raise error(f"{weights_path}: not found")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise error(f"{weights_path}: cannot read ({e})") from e
    fill_weights(model, tensors, str(weights_path), error)


def fill_weights(model: nn.Module, tensors: dict[str, Tensor], where: str,
                 error: type[Exception] = CheckpointError) -> None:
    """Copy ``tensors`` into ``model`` strictly (see :func:`load_weights`); errors name ``where``."""
    state = model.state_dict()
    expected = _saved_names(state)
    for name in expected:
        if name not in tensors:
            raise error(f"{where}: missing tensor '{name}'")
        got, want = tensors[name], state[name]
        if tuple(got.shape) != tuple(want.shape) or got.is_floating_point() != want.is_floating_point():
            raise error(f"{where}: tensor '{name}' has shape {tuple(got.shape)} ({got.dtype}), "
                        f"the config wants {tuple(want.shape)} ({want.dtype})")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise error(f"{where}: unexpected tensor '{unexpected[0]}'"
                    + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    with torch.no_grad():
        for name in expected:
            state[name].copy_(tensors[name])  # state-dict tensors share storage with the parameters


def model_dir_hash(model_dir: str | Path) -> str:
    """sha256 of a model directory's config.json and weight files (model.safetensors, or an
    overlay's): what an export, or a teacher's cached translations, depends on."""
    from speech.overlay import weight_files  # noqa: PLC0415 - overlays build on this module

    h = hashlib.sha256()
    config = json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    for path in [Path(model_dir) / CONFIG_FILE, *weight_files(Path(model_dir), config)]:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def load_model_dir(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                   config_cls: type = ModelConfig, model_cls: type = S2TModel) -> tuple[Any, dict[str, Any]]:
    """Read a model directory -> (model in eval mode, the whole config.json as a dict).

    The weights load strictly; fp16 storage is upcast to ``dtype`` (float32 by default).
    ``config_cls`` and ``model_cls`` say which family the directory holds (S2T by default).
    """
    path = Path(path)
    config_path = path / CONFIG_FILE
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: not found (is {path} a model directory?)") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(config, dict) or "model" not in config:
        raise ConfigError(f"{config_path}: missing key 'model'")
    cfg = model_config_from_dict(config["model"], str(config_path), config_cls)

    model = model_cls(cfg)
    if "base" in config:  # an overlay over a base model (speech.overlay)
        from speech.overlay import load_overlay  # noqa: PLC0415 - overlays build on this module

        load_overlay(model, path, config)
    else:
        load_weights(model, path / WEIGHTS_FILE)
    model.to(device=device, dtype=dtype or torch.float32)
    return model.eval(), config


def save_resized_model_dir(model: nn.Module, like: str | Path, out: str | Path, note: dict[str, Any],
                           files: Sequence[str], config_cls: type = ModelConfig, model_cls: type = S2TModel) -> Path:
    """Write a model whose sizes changed (structured pruning) as a model directory ``out``:
    its config read off its modules (:func:`layout_of`), the other config.json keys of the
    model directory ``like`` plus ``{"compress": note}``, and ``like``'s ``files`` (the
    tokenizers). The folder is written whole or not at all, and must load back."""
    like = Path(like)
    config = json.loads((like / CONFIG_FILE).read_text(encoding="utf-8"))
    cfg = dataclasses.replace(model.cfg, **layout_of(model))
    # the weights are written whole and merged: an overlay's base and adapters do not carry over
    extra = {k: v for k, v in config.items() if k not in ("model", "base", "lora")} | {"compress": note}
    with atomic_dir(out) as tmp:
        save_model_dir(model, cfg, tmp, extra=extra)
        for name in files:
            shutil.copyfile(like / name, tmp / name)
        load_model_dir(tmp, config_cls=config_cls, model_cls=model_cls)  # loads from its own config
    return Path(out)
