"""Clean English sentences for ASR pretraining text, from packages the registries ship.

Sources (shared/DATA.md): fortune files, WordNet example quotes, the reStructuredText
sources of the Python documentation, manual pages, the Debian Reference, the GCIDE
dictionary (noisy: its quotations only) and the docstrings of Python's standard
library. Each source has an extractor that yields raw prose; :func:`sentences_of`
cuts prose into sentences and keeps those a speaker could read aloud: 4 to 30 words,
starting with a capital letter, ending with ``.``, ``!`` or ``?``, made of letters and
ordinary punctuation only (no digits, code, paths or addresses).
"""

from __future__ import annotations

import ast
import gzip
import html
import logging
import re
import sys
import unicodedata
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(]?[A-Z])")
_ALLOWED = re.compile(r"^[A-Za-z ,.;:!?'\"()\-]+$")
_SPACES = re.compile(r"\s+")
_RST_ROLE = re.compile(r":[\w:.-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*(?:<[^>]*>)?`_{1,2}")
_RST_MARK = re.compile(r"``|\*\*|(?<!\w)\*(?=\w)|(?<=\w)\*(?!\w)|\|")
_ROFF_ESC = re.compile(r"\\f[BIRPC]|\\f\(..|\\\(..|\\[&|^~0 ]|\\s[-+]?\d|\\\*\(..|\\\*.|\\-")
_TAG = re.compile(r"<[^>]+>")
_WN_QUOTE = re.compile(r'"([^"]{10,300})"')
_GCIDE_CITE = re.compile(r"\s*--[A-Z][\w. ]*\.?\s*$")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2014", " - ").replace("\u2013", "-").replace("--", " - ")
    return _SPACES.sub(" ", text).strip()


def keep(sentence: str, min_words: int = 4, max_words: int = 30) -> bool:
    if not sentence or not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    if not _ALLOWED.match(sentence):
        return False
    words = sentence.split()
    if not (min_words <= len(words) <= max_words):
        return False
    if sentence.count('"') % 2 or sentence.count("(") != sentence.count(")"):
        return False
    # ALL-CAPS shouting, headings and single-letter soup read badly
    letters = [c for c in sentence if c.isalpha()]
    if sum(c.isupper() for c in letters) > 0.3 * len(letters):
        return False
    return sum(len(w) == 1 for w in words) <= len(words) // 3 + 1


def sentences_of(prose: str, min_words: int = 4, max_words: int = 30) -> Iterator[str]:
    for s in _SPLIT.split(normalize(prose)):
        s = s.strip()
        if keep(s, min_words, max_words):
            yield s


def _read(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return ""
    return data.decode("utf-8", errors="replace")


def _paragraphs(lines: list[str]) -> Iterator[str]:
    buf: list[str] = []
    for line in lines:
        if line.strip():
            buf.append(line.strip())
        elif buf:
            yield " ".join(buf)
            buf = []
    if buf:
        yield " ".join(buf)


def fortunes(root: Path) -> Iterator[str]:
    base = root / "usr/share/games/fortunes"
    for path in sorted(base.rglob("*")):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.is_symlink():
            continue
        for fortune in _read(path).split("\n%\n"):
            # attribution lines ("-- Mark Twain") are not part of the quote
            lines = [ln for ln in fortune.splitlines() if not ln.strip().startswith("--")]
            yield " ".join(ln.strip() for ln in lines)


def wordnet(root: Path) -> Iterator[str]:
    for path in sorted((root / "usr/share/wordnet").glob("data.*")):
        for line in _read(path).splitlines():
            if "|" in line:
                for quote in _WN_QUOTE.findall(line.split("|", 1)[1]):
                    # examples are mostly lower-case clauses: make them sentences
                    quote = quote.strip()
                    if quote and quote[-1] not in ".!?":
                        quote += "."
                    yield quote[:1].upper() + quote[1:]


def rst_docs(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*.rst.txt")):
        lines = _read(path).splitlines()
        prose: list[str] = []
        in_block = False
        for line in lines:
            stripped = line.strip()
            if in_block:
                if stripped and not line.startswith((" ", "\t")):
                    in_block = False
                else:
                    continue
            if stripped.startswith("..") or stripped.endswith("::"):
                in_block = True
                if not stripped.startswith(".."):
                    prose.append(line[: line.rindex("::") + 1])  # "as follows::" ends its paragraph
                prose.append("")
                continue
            if line.startswith((" ", "\t")) or re.fullmatch(r"[=\-~^*#+`'\"]{3,}", stripped or "x"):
                prose.append("")
                continue
            if stripped.startswith((">>>", "...", "*", "-", "+", "|", ":")):
                prose.append("")
                continue
            text = _RST_ROLE.sub(r"\1", line)
            text = _RST_LINK.sub(r"\1", text)
            text = _RST_MARK.sub("", text)
            prose.append(text)
        yield from _paragraphs(prose)


def manpages(root: Path) -> Iterator[str]:
    for path in sorted((root / "usr/share/man").glob("man*/*")):
        text = _read(path)
        prose = []
        for line in text.splitlines():
            if line.startswith((".", "'")):
                # paragraph macros end a paragraph; font macros carry text
                m = re.match(r"\.(?:B|I|BI|IB|BR|RB|IR|RI)\s+(.*)", line)
                prose.append(m.group(1).replace('"', "") if m else "")
                continue
            prose.append(_ROFF_ESC.sub("", line))
        yield from _paragraphs(prose)


def debian_reference(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*.en.html")) + sorted(root.rglob("index.html")):
        text = _read(path)
        for para in re.findall(r"<p>(.*?)</p>", text, re.S):
            yield html.unescape(_TAG.sub("", para))


def gcide(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("gcide.dict*")):
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                continue
        text = data.decode("utf-8", errors="replace")
        # quotations are deeply indented blocks ending in "--Author."
        buf: list[str] = []
        for line in text.splitlines():
            if line.startswith(" " * 10) and line.strip():
                buf.append(_GCIDE_CITE.sub("", line).strip())
                continue
            if buf:
                yield " ".join(buf)
                buf = []


def stdlib_docstrings(_root: Path | None = None) -> Iterator[str]:
    """Docstrings of the running interpreter's standard library (fixed per Python version)."""
    stdlib = Path(sys.modules["ast"].__file__).parent
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if "test" in path.parts[-2:][0] or path.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield from _paragraphs([ln for ln in doc.splitlines() if not ln.startswith((" ", ">>>"))])


# source name -> (apt package or None, extractor)
SOURCES: dict[str, tuple[str | None, Callable[[Path], Iterator[str]]]] = {
    "fortunes": ("fortunes", fortunes),
    "fortunes-min": ("fortunes-min", fortunes),
    "wordnet-base": ("wordnet-base", wordnet),
    "python3.11-doc": ("python3.11-doc", rst_docs),
    "manpages": ("manpages", manpages),
    "debian-reference-en": ("debian-reference-en", debian_reference),
    "dict-gcide": ("dict-gcide", gcide),
    "stdlib-docstrings": (None, stdlib_docstrings),
}


def extract(source: str, root: Path | None, min_words: int = 4, max_words: int = 30) -> list[str]:
    """Unique clean sentences of one source, in the order first seen."""
    _, fn = SOURCES[source]
    seen: dict[str, None] = {}
    for prose in fn(root):  # type: ignore[arg-type]
        for s in sentences_of(prose, min_words, max_words):
            seen.setdefault(s, None)
    log.info("%s: %d sentences", source, len(seen))
    return list(seen)
