"""The base of every error a user can cause.

An input, file, option or setting that cannot be used raises a subclass of
:class:`UserError` whose message names the culprit (the file and line, the field, the
option, the language). The CLI prints that message without a traceback and exits 2;
anything else is a defect and keeps its traceback. It lives here because compress/ is the
bottom layer: every package may import it.

    class AudioError(UserError, ValueError): ...
"""

from __future__ import annotations


class UserError(Exception):
    """Something a user gave cannot be used; the message names it."""
