"""A model directory over a base model: only what fine-tuning changed, the base named and pinned.

A fine-tuned Whisper base is 145 MB of weights, 6 times what a committed file may be, and
most of it is the base unchanged. An overlay directory holds ``config.json`` (the whole
model config, as any model directory), its tokenizer and model card, and:

- ``overlay-NNNNN.safetensors``: the tensors that differ from the base (float16), packed
  into files of at most ``max_file_mb``; a tensor larger than that is cut along its first
  dimension into parts named ``NAME#i/k`` and joined again when read;
- ``lora.safetensors`` where the model was trained with low-rank adapters: the adapters
  (merged into the base on load) instead of the full weights they changed.

``config.json`` names the base under ``"base"``: ``{"model": "whisper-base", "sha256":
<the pinned sha256 of its model.bin>, "files": [...], "adapters": "lora.safetensors" or
null}``, and, for a model cut from the base by dropping layers (a Distil-Whisper student),
``"layers": {"decoder.layers": [0, 5]}``: which of the base's layers each of the model's
stands on (its layer ``i`` is the base's ``layers[i]``; the base's other layers are not read).
:func:`speech.checkpoint.load_model_dir` reads such a directory as any other: it
imports the base from its pinned package once (:func:`speech.whisper.imported_model`),
checks it is the model the overlay was made over, and lays the overlay on it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from compress.files import atomic_dir
from compress.lora import LoraConfig, LoraError, add_lora, merge_lora
from speech.checkpoint import (CONFIG_FILE, WEIGHTS_FILE, CheckpointError, fill_weights, load_model_dir,
                               model_config_from_dict)
from speech.tokenizer import tokenizer_file

BASE_KEY = "base"
ADAPTERS_FILE = "lora.safetensors"
PART_SEP = "#"


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e


def base_dir(config: dict[str, Any], where: str) -> Path:
    """The imported base model an overlay names, checked against the pin it was made over."""
    from speech.whisper import MODEL_NAMES, WhisperImportError, imported_model  # noqa: PLC0415

    base = config.get(BASE_KEY)
    if not isinstance(base, dict) or base.get("model") not in MODEL_NAMES:
        raise CheckpointError(f"{where}: '{BASE_KEY}.model' must be one of {', '.join(MODEL_NAMES)}, "
                              f"got {base.get('model') if isinstance(base, dict) else base!r}")
    try:
        path = imported_model(base["model"])
    except WhisperImportError as e:
        raise CheckpointError(f"{where}: its base {base['model']}: {e}") from None
    got = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")).get("whisper", {}).get("sha256")
    if got != base.get("sha256"):
        raise CheckpointError(f"{where}: made over {base['model']} with sha256 {base.get('sha256')}, "
                              f"but {path} holds {got}")
    return path


def weight_files(path: Path, config: dict[str, Any]) -> list[Path]:
    """The files of ``path`` that hold its weights: model.safetensors, or an overlay's files."""
    base = config.get(BASE_KEY)
    if not isinstance(base, dict):
        return [path / WEIGHTS_FILE]
    return [path / f for f in base.get("files", [])] + ([path / base["adapters"]] if base.get("adapters") else [])


def kept_layers(tensors: dict[str, torch.Tensor], layers: Any, where: str) -> dict[str, torch.Tensor]:
    """The base's tensors as a model that kept only some of its layers names them: for each
    stack path -> [base indices], base layer ``layers[path][i]`` becomes layer ``i``."""
    if not layers:
        return tensors
    if not isinstance(layers, dict) or not all(
            isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
            for v in layers.values()):
        raise CheckpointError(f"{where}: '{BASE_KEY}.layers' must map layer stacks to lists of the base's "
                              f"layer indices, got {layers!r}")
    out = {}
    for name, t in tensors.items():
        for path, keep in layers.items():
            prefix = f"{path}."
            if name.startswith(prefix):
                idx, _, rest = name[len(prefix):].partition(".")
                if idx.isdigit():
                    if int(idx) in keep:
                        out[f"{prefix}{keep.index(int(idx))}.{rest}"] = t
                    break
        else:
            out[name] = t
    return out


def load_overlay(model: nn.Module, path: Path, config: dict[str, Any]) -> None:
    """Fill ``model`` from the base an overlay names, then its changed tensors and adapters."""
    where = str(path / CONFIG_FILE)
    base = config[BASE_KEY]
    tensors = kept_layers(_read(base_dir(config, where) / WEIGHTS_FILE), base.get("layers"), where)
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for name in base.get("files", []):
        for key, t in _read(path / name).items():
            stem, sep, frac = key.partition(PART_SEP)
            if not sep:
                tensors[key] = t
                continue
            i, _, k = frac.partition("/")
            parts.setdefault(stem, {})[int(i)] = t
            if len(parts[stem]) == int(k):
                tensors[stem] = torch.cat([parts[stem][j] for j in range(int(k))])
    fill_weights(model, tensors, str(path))
    if base.get("adapters"):
        try:
            add_lora(model, LoraConfig(**config.get("lora", {})))
        except (LoraError, TypeError) as e:
            raise CheckpointError(f"{where}: 'lora': {e}") from None
        file = path / base["adapters"]
        adapters = _read(file)
        params = {k: p for k, p in model.named_parameters() if ".lora_" in k}
        for name in sorted(set(params) ^ set(adapters)):
            raise CheckpointError(f"{file}: {'missing' if name in params else 'unexpected'} adapter '{name}'")
        with torch.no_grad():
            for name, p in params.items():
                if adapters[name].shape != p.shape:
                    raise CheckpointError(f"{file}: adapter '{name}' has shape {tuple(adapters[name].shape)}, "
                                          f"the config wants {tuple(p.shape)}")
                p.copy_(adapters[name])
        merge_lora(model)
    for p in model.parameters():
        p.requires_grad_(True)


def write_overlay(model_dir: str | Path, base_name: str, out: str | Path, max_file_mb: float = 25.0,
                  card: str | None = None, layers: dict[str, list[int]] | None = None) -> Path:
    """Write ``model_dir`` (a model fine-tuned from the imported ``base_name``) as an overlay
    directory ``out``: whole or not at all, checked to load back to the model's weights
    (to float16 rounding). ``layers``: for a model that kept some of the base's layers, which
    (stack path -> the base's indices, in the model's order)."""
    from speech.whisper import PACKAGES, MODEL_NAMES  # noqa: PLC0415

    model_dir, out = Path(model_dir), Path(out)
    config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if base_name not in MODEL_NAMES:
        raise CheckpointError(f"base {base_name!r}: expected one of {', '.join(MODEL_NAMES)}")
    pin = {"model": base_name, "sha256": PACKAGES[MODEL_NAMES[base_name]].sha256}
    base = kept_layers(_read(base_dir({BASE_KEY: pin}, f"base {base_name}") / WEIGHTS_FILE), layers,
                       f"layers {layers}")
    tuned = _read(model_dir / WEIGHTS_FILE)
    if set(tuned) != set(base) or any(tuned[k].shape != base[k].shape for k in tuned):
        raise CheckpointError(f"{model_dir / WEIGHTS_FILE}: its tensors are not those of {base_name}"
                              + (f" with the layers {layers}" if layers else "")
                              + ("" if layers else " (a model that dropped layers names those it kept)"))
    adapters = _read(model_dir / ADAPTERS_FILE) if (model_dir / ADAPTERS_FILE).is_file() and "lora" in config else {}
    by_adapters = {k.rsplit(".lora_", 1)[0] + ".weight" for k in adapters}
    changed = {k: t.to(torch.float16) if t.is_floating_point() else t for k, t in tuned.items()
               if k not in by_adapters and not torch.equal(t, base[k].to(t.dtype))}
    limit = int(max_file_mb * 1e6 * 0.9)  # room for the safetensors header (a few kB)
    pieces: list[tuple[str, torch.Tensor]] = []
    for name, t in sorted(changed.items()):
        size = t.numel() * t.element_size()
        k = max(1, math.ceil(size / limit))
        if k == 1:
            pieces.append((name, t))
        else:
            pieces += [(f"{name}{PART_SEP}{i}/{k}", c.contiguous()) for i, c in enumerate(torch.tensor_split(t, k))]
    files: list[dict[str, torch.Tensor]] = []
    for name, t in pieces:
        size = t.numel() * t.element_size()
        if not files or sum(x.numel() * x.element_size() for x in files[-1].values()) + size > limit:
            files.append({})
        files[-1][name] = t
    names = [f"overlay-{i + 1:05d}.safetensors" for i in range(len(files))]
    config[BASE_KEY] = {**pin, "files": names, "adapters": ADAPTERS_FILE if adapters else None} | (
        {"layers": layers} if layers else {})
    with atomic_dir(out) as tmp:
        for name, tensors in zip(names, files):
            save_file(tensors, str(tmp / name), metadata={"format": "pt"})
        if adapters:
            shutil.copyfile(model_dir / ADAPTERS_FILE, tmp / ADAPTERS_FILE)
        tok = tokenizer_file(config)
        shutil.copyfile(model_dir / tok, tmp / tok)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        model_config_from_dict(config["model"], str(tmp / CONFIG_FILE))
        back, _ = load_model_dir(tmp)
        for k, t in back.state_dict().items():
            if k not in tuned:  # a tied weight, stored once
                continue
            want = tuned[k] if k in by_adapters else tuned[k].to(torch.float16).float()
            if not torch.allclose(t, want, atol=1e-5):
                raise CheckpointError(f"{out}: tensor '{k}' does not load back as written")
        for p in tmp.iterdir():
            if p.stat().st_size > max_file_mb * 1e6:
                raise CheckpointError(f"{out / p.name}: {p.stat().st_size / 1e6:.1f} MB, over {max_file_mb} MB")
    return out
