"""Configs are dataclasses loaded from YAML and overridden with ``key=value``.

The presets ship inside their packages (``speech/configs/``, ``simul/configs/``,
``audio_align/configs/``, ``compress/configs/``: package data, so a wheel install has
them too). A recipe path that does not exist and reads ``PACKAGE/configs/NAME`` is that
package's preset: ``speech/configs/st_small.yaml`` works in a checkout and from any
directory where interpres is installed. Every recipe maps onto one dataclass. Loading checks each key and
each value against the dataclass: an unknown key or a value of the wrong type is a
:class:`ConfigError` that names the key and the file (or the override) it came from,
so a typo never silently falls back to a default.

    cfg = load_config(SpeechCorpusConfig, "speech/configs/data_speech_small.yaml",
                      ["train_per_lang=200", "langs=[de,fr]"])
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from compress.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override is wrong; the message names the key and its source."""


def _yaml_loader() -> type:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where, prefix=f"{key}.")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        ktp, vtp = args if args else (Any, Any)
        return {_coerce(k, ktp, f"{key}.{k}", where): _coerce(v, vtp, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `2e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        # YAML reads `langs=de` fine but `version=1.0` as a float; accept scalars as text.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: '{key}' must be a path, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: '{key}' must be one of {list(args)}, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}")


def _build(cls: type[T], data: dict, where: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key '{prefix}{key}' for {cls.__name__} (known keys: {known})")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", where)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {cls.__name__}: {e}") from e
    return obj


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{part}' is not a mapping")
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> dict:
    """Turn ``["a=1", "b.c=[x,y]"]`` into a nested dict; values are parsed as YAML."""
    data: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.load(raw, Loader=_yaml_loader()) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': value is not valid YAML ({e})") from e
        _set_dotted(data, key, value)
    return data


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


PRESET_PACKAGES = ("speech", "simul", "audio_align", "compress")


def preset(package: str, name: str) -> Path:
    """The preset ``name`` that ``package`` ships: PACKAGE/configs/NAME where it is installed."""
    if package not in PRESET_PACKAGES:
        raise ConfigError(f"{package}: no presets (packages with presets: {', '.join(PRESET_PACKAGES)})")
    return Path(str(importlib.resources.files(package) / "configs" / name))


def resolve_recipe(path: str | Path) -> Path:
    """``path`` itself if it exists, else the shipped preset it names (``PACKAGE/configs/NAME``,
    relative), else ``path`` (reading it then says it is not found)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts
    if len(parts) >= 3 and parts[0] in PRESET_PACKAGES and parts[1] == "configs":
        shipped = preset(parts[0], str(Path(*parts[2:])))
        if shipped.is_file():
            return shipped
    return path


def read_yaml(path: str | Path) -> dict:
    path = resolve_recipe(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from e
    try:
        data = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from the YAML at ``path`` (optional) and ``key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "defaults"
    obj = _build(cls, data, where)
    if overrides:
        merged = _merge(data, parse_overrides(overrides))
        obj = _build(cls, merged, f"{where} + overrides {' '.join(overrides)}")
    return obj


def config_to_dict(cfg: Any) -> dict:
    """A JSON/YAML-friendly dict of a config dataclass (paths as strings)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)
