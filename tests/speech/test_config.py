from dataclasses import dataclass, field
from pathlib import Path

import pytest

from speech.config import ConfigError, load_config, parse_overrides


@dataclass
class Inner:
    depth: int = 2
    name: str = "x"


@dataclass
class Recipe:
    lr: float = 1e-3
    steps: int = 10
    langs: list[str] = field(default_factory=lambda: ["de"])
    use_ctc: bool = True
    out: Path = Path("out")
    tag: str | None = None
    inner: Inner = field(default_factory=Inner)


def write(tmp_path, text):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "lr: 0.01\nsteps: 5\nlangs: [de, fr]\ninner: {depth: 3}\n")
    cfg = load_config(Recipe, p, ["steps=7", "inner.name=enc", "langs=[ja]", "tag=run1", "out=/tmp/o"])
    assert cfg.lr == 0.01 and cfg.steps == 7 and cfg.langs == ["ja"]
    assert cfg.inner == Inner(depth=3, name="enc")
    assert cfg.tag == "run1" and cfg.out == Path("/tmp/o") and cfg.use_ctc is True


def test_int_is_accepted_for_float_but_not_the_reverse(tmp_path):
    assert load_config(Recipe, None, ["lr=1"]).lr == 1.0
    with pytest.raises(ConfigError, match="'steps' must be an integer"):
        load_config(Recipe, None, ["steps=1.5"])


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "lr: 0.01\nstepz: 5\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml.*unknown key 'stepz'"):
        load_config(Recipe, p)
    with pytest.raises(ConfigError, match=r"unknown key 'inner\.width'"):
        load_config(Recipe, None, ["inner.width=3"])


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "use_ctc: maybe\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml.*'use_ctc' must be true or false"):
        load_config(Recipe, p)
    with pytest.raises(ConfigError, match=r"'langs' must be a list"):
        load_config(Recipe, None, ["langs=5"])
    with pytest.raises(ConfigError, match=r"'langs\[1\]' must be a string"):
        load_config(Recipe, None, ["langs=[de, [x]]"])


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(Recipe, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Recipe, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Recipe, write(tmp_path, "lr: [1\n"))
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])
