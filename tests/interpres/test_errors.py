"""One base for every error a user can cause: the CLI catches UserError, prints its message
and exits 2, and nothing else is swallowed."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from compress.errors import UserError
from interpres.cli import main

PACKAGES = ("compress", "speech", "simul", "audio_align", "interpres")
NOT_USER_ERRORS = {"audio_align.serve.ApiError"}  # an HTTP response with its status, not a CLI error


def _our_exceptions() -> dict[str, type]:
    found = {}
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        for info in pkgutil.walk_packages(pkg.__path__, f"{name}."):
            if info.name.endswith(".__main__"):
                continue
            module = importlib.import_module(info.name)
            for attr, obj in vars(module).items():
                if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name
                        and attr.endswith("Error")):
                    found[f"{info.name}.{attr}"] = obj
    return found


def test_every_error_of_ours_is_a_user_error():
    errors = _our_exceptions()
    assert len(errors) >= 20, sorted(errors)  # the walk found them
    wrong = [name for name, cls in errors.items() if name not in NOT_USER_ERRORS and not issubclass(cls, UserError)]
    assert wrong == []


def test_the_cli_prints_a_user_error_and_exits_2(tmp_path, capsys):
    assert main(["data", "text", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("interpres: error: ") and "missing.yaml: config file not found" in err
