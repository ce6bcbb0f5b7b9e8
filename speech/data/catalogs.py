"""Human-translated parallel text from gettext message catalogs (``.mo`` files).

Software catalogs are real human translations of short interface strings. This
module finds the catalogs under unpacked package trees, reads them with the standard
library's :class:`gettext.GNUTranslations`, and cleans the pairs as shared/DATA.md
describes: identical pairs, strings with placeholders, multi-line strings and strings
over 400 characters are dropped; keyboard accelerators (``_File``, ``&File``,
``ファイル(_F)``) are removed, since nobody says them.
"""

from __future__ import annotations

import gettext
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

# Which locale folders feed each target language, best first. zh means Simplified
# Chinese only; pt takes both the European and the Brazilian catalogs.
LOCALES: dict[str, tuple[str, ...]] = {
    "de": ("de", "de_DE", "de_AT", "de_CH"),
    "es": ("es", "es_ES", "es_MX", "es_AR", "es_CO", "es_CL"),
    "fr": ("fr", "fr_FR", "fr_CA", "fr_BE", "fr_CH"),
    "it": ("it", "it_IT"),
    "nl": ("nl", "nl_NL", "nl_BE"),
    "pt": ("pt", "pt_PT", "pt_BR"),
    "ro": ("ro", "ro_RO"),
    "ru": ("ru", "ru_RU"),
    "ja": ("ja", "ja_JP"),
    "zh": ("zh_CN", "zh_Hans", "zh_SG"),
    "ar": ("ar",),
    "tr": ("tr", "tr_TR"),
    "fa": ("fa", "fa_IR"),
    "vi": ("vi", "vi_VN"),
}

# A target language whose script is not Latin must show that script at least once,
# else the "translation" is an untranslated command name or an English leftover.
_SCRIPT = {
    "ru": re.compile(r"[\u0400-\u04FF]"),
    "ja": re.compile(r"[\u3040-\u30FF\u4E00-\u9FFF]"),
    "zh": re.compile(r"[\u4E00-\u9FFF]"),
    "ar": re.compile(r"[\u0600-\u06FF]"),
    "fa": re.compile(r"[\u0600-\u06FF]"),
}

_PLACEHOLDER = re.compile(
    r"%(?:\(\w+\))?[-+ #0'q]*(?:\d+|\*)?(?:\.\d+)?[hlLqjzt]*[A-Za-z]"  # printf, gcc's %qD
    r"|%\d+\$|%\d|%[<>'{}]"  # positional, Qt-style, gcc's %<quote%>
    r"|\{[\w.:!]*\}"  # str.format
    r"|\$\{?[A-Za-z_]\w*"  # shell variables
    r"|<[^<>\s][^<>]*>"  # markup
    r"|&[a-z]+;|&#\d+;"  # entities
)
_ACCEL_PAREN = re.compile(r"\s*\((?:_|&)[A-Za-z0-9]\)")  # ファイル(_F)
_ACCEL = re.compile(r"(?<![\w&_])[_&](?=\w)")  # _File, &File (not snake_case, not &&)
_SPACES = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")
_LATIN = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Pair:
    """One cleaned catalog entry: English source, translation, where it came from."""

    en: str
    tgt: str
    catalog: str  # "package/domain"
    index: int  # position of the entry in its .mo file
    locale: str


def find_catalogs(roots: dict[str, Path]) -> list[tuple[str, str, Path]]:
    """All ``.mo`` files under the unpacked packages, as (package, locale, path).

    The locale is the folder above ``LC_MESSAGES``, which holds for Debian's
    ``/usr/share/locale`` trees and for Python packages (``django/conf/locale``,
    ``pycountry/locales``) alike.
    """
    out = []
    for package, root in sorted(roots.items()):
        for mo in sorted(root.rglob("*.mo")):
            if mo.parent.name != "LC_MESSAGES":
                continue
            out.append((package, mo.parent.parent.name, mo))
    return out


def catalog_name(package: str, path: Path) -> str:
    """``package/domain``, with the app folder when one package has many catalogs
    of one domain (``Django/admin/django``, ``Django/auth/django``)."""
    app = path.parents[3].name if len(path.parents) > 3 else ""
    if app and app not in ("share", "usr", package):
        return f"{package}/{app}/{path.stem}"
    return f"{package}/{path.stem}"


def locale_rank(lang: str, locale: str) -> int | None:
    """Rank of ``locale`` among the folders of ``lang`` (0 is best), None if not one."""
    try:
        return LOCALES[lang].index(locale)
    except (KeyError, ValueError):
        return None


def clean(text: str) -> str | None:
    """Normalize one side of a pair, or None if it must be dropped."""
    if not text or "\n" in text or "\r" in text or "\t" in text:
        return None
    text = unicodedata.normalize("NFC", text)
    if _PLACEHOLDER.search(text):
        return None
    text = _ACCEL_PAREN.sub("", text)
    text = _ACCEL.sub("", text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) < 2 or len(text) > 400 or not _LETTER.search(text):
        return None
    return text


def clean_pair(en: str, tgt: str, lang: str) -> tuple[str, str] | None:
    en_c, tgt_c = clean(en), clean(tgt)
    if en_c is None or tgt_c is None or en_c == tgt_c:
        return None
    script = _SCRIPT.get(lang)
    if script is not None and not script.search(tgt_c):
        return None
    if not _LATIN.search(en_c):
        return None  # an "English" side with no Latin letter is not English
    return en_c, tgt_c


def read_catalog(path: Path) -> Iterator[tuple[int, str, str]]:
    """(index, msgid, msgstr) of the singular entries of one ``.mo`` file.

    Context is dropped (the part before ``\\x04``); plural entries give their
    singular form. The header (empty msgid) is skipped.
    """
    try:
        with open(path, "rb") as fp:
            cat = gettext.GNUTranslations(fp)._catalog  # noqa: SLF001 - the parsed table
    except Exception as e:  # noqa: BLE001 - struct errors, bad charsets: old catalogs have all kinds
        log.warning("%s: unreadable catalog skipped (%s)", path, e)
        return
    for i, (key, value) in enumerate(cat.items()):
        if isinstance(key, tuple):
            msgid, n = key
            if n != 0:
                continue
        else:
            msgid = key
        if not msgid or not isinstance(value, str):
            continue
        if "\x04" in msgid:
            msgid = msgid.split("\x04", 1)[1]
        yield i, msgid, value


def pairs_from_catalog(package: str, locale: str, path: Path, lang: str) -> list[Pair]:
    """The cleaned pairs of one catalog for target language ``lang``."""
    out = []
    for index, msgid, msgstr in read_catalog(path):
        cleaned = clean_pair(msgid, msgstr, lang)
        if cleaned is not None:
            out.append(Pair(cleaned[0], cleaned[1], catalog_name(package, path), index, locale))
    return out
