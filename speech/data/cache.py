"""Where built corpora and caches live, and how files there are written.

Everything a builder makes lives under ``$INTERPRES_HOME`` (default
``~/.cache/interpres``), never in the repository. Every file is written through
:mod:`compress.files` (a temporary name renamed into place), so a killed job leaves
either the old file or the new one, never half of one; re-running skips what exists.
"""

from __future__ import annotations

import os
from pathlib import Path


def interpres_home() -> Path:
    """The cache root: ``$INTERPRES_HOME`` or ``~/.cache/interpres``."""
    env = os.environ.get("INTERPRES_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "interpres"
