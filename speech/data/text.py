"""``interpres data text``: parallel text and English sentences, built offline.

Output, under ``<home>/text/`` (``<home>`` is ``$INTERPRES_HOME``)::

    en-de/{train,dev,test}.tsv    columns: en, de, catalog, index (catalog order kept)
    ...                           one per target language
    zh-en/{train,dev,test}.tsv    the zh_CN catalogs reversed: zh, en, catalog, index
    en/{train,dev,test}.txt       English sentences for ASR pretraining, one a line
    summary.json                  counts per language and split, sources, the config

Splits are decided by the English side alone: a keyed hash of the English string,
lower-cased with punctuation and spaces removed, so "Open", "_Open" and "Open…" fall
in one split, the same English string gets the same split in every language, and an
ASR sentence that equals a test string is a test sentence too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from compress.files import atomic_path, write_json_atomic
from speech.config import ConfigError, config_to_dict
from speech.data import catalogs, sentences
from speech.data.cache import interpres_home
from speech.data.packages import fetch_apt, fetch_pip

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")

CATALOG_PACKAGES = [
    "coreutils", "bash", "tar", "grep", "findutils", "sed", "gettext", "gettext-base", "apt",
    "dpkg", "util-linux-locales", "e2fsprogs-l10n", "gnupg-l10n", "diffutils", "wget", "make",
    "gawk", "libc-l10n", "procps", "psmisc", "nano", "passwd", "iso-codes", "libglib2.0-data",
    "libgtk-3-common", "debconf-i18n", "binutils-common", "gcc-12-locales", "cpio", "parted",
    "sudo", "vim-common", "bison", "libgpg-error-l10n", "gimp-data",
]
PIP_CATALOGS = ["Django==5.2.8", "Sphinx==9.0.4", "pycountry==26.2.16"]
TARGET_LANGS = ["de", "es", "fr", "it", "nl", "pt", "ro", "ru", "ja", "zh"]


@dataclass
class TextCorpusConfig:
    """What the text builder reads and how it splits (speech/configs/data_text.yaml)."""

    langs: list[str] = field(default_factory=lambda: list(TARGET_LANGS))
    apt_packages: list[str] = field(default_factory=lambda: list(CATALOG_PACKAGES))
    pip_packages: list[str] = field(default_factory=lambda: list(PIP_CATALOGS))
    cldr_names: bool = True  # babel's CLDR display names (countries, languages, ...)
    sentence_sources: list[str] = field(default_factory=lambda: list(sentences.SOURCES))
    min_words: int = 4
    max_words: int = 30
    dev_fraction: float = 0.03
    test_fraction: float = 0.03
    seed: int = 1
    workers: int = 0  # 0: one per core
    force: bool = False  # rebuild even if a build with this config exists

    def __post_init__(self) -> None:
        for lang in self.langs:
            if lang not in catalogs.LOCALES:
                raise ConfigError(f"langs: unknown language '{lang}' (known: {', '.join(catalogs.LOCALES)})")
        for src in self.sentence_sources:
            if src not in sentences.SOURCES:
                raise ConfigError(f"sentence_sources: unknown source '{src}' (known: {', '.join(sentences.SOURCES)})")
        if not (0 <= self.dev_fraction < 1 and 0 <= self.test_fraction < 1
                and self.dev_fraction + self.test_fraction < 1):
            raise ConfigError("dev_fraction and test_fraction must be in [0, 1) and sum below 1")


_KEY_DROP = re.compile(r"[\W_]+")


def split_key(en: str) -> str:
    """The string a split is decided on: lower case, letters and digits only."""
    return _KEY_DROP.sub("", en.lower())


def assign_split(en: str, seed: int, dev_fraction: float, test_fraction: float) -> str:
    digest = hashlib.blake2b(split_key(en).encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < dev_fraction:
        return "dev"
    if u < dev_fraction + test_fraction:
        return "test"
    return "train"


def _workers(n: int) -> int:
    return n if n > 0 else max(1, os.cpu_count() or 1)


def _parse_one(args: tuple[str, str, str, tuple[str, ...]]) -> list[tuple[str, catalogs.Pair]]:
    package, locale, path, langs = args
    out = []
    for lang in langs:
        if catalogs.locale_rank(lang, locale) is not None:
            out.extend((lang, p) for p in catalogs.pairs_from_catalog(package, locale, Path(path), lang))
    return out


def cldr_pairs(lang: str) -> list[catalogs.Pair]:
    """English and ``lang`` display names of territories, languages, scripts, currencies."""
    try:
        from babel import Locale
    except ImportError:  # pragma: no cover - babel is a dependency
        log.warning("babel is not installed: no CLDR names")
        return []
    code = {"zh": "zh_Hans", "pt": "pt"}.get(lang, lang)
    en, tgt = Locale("en"), Locale.parse(code)
    out = []
    for table in ("territories", "languages", "scripts", "currencies"):
        src, dst = getattr(en, table), getattr(tgt, table)
        for i, key in enumerate(sorted(src)):
            if key in dst:
                cleaned = catalogs.clean_pair(src[key], dst[key], lang)
                if cleaned:
                    out.append(catalogs.Pair(cleaned[0], cleaned[1], f"babel/{table}", i, code))
    return out


def choose_translations(pairs: list[catalogs.Pair], lang: str) -> list[catalogs.Pair]:
    """One translation per English string: the most common, then the best locale.

    The result is in catalog order, so consecutive rows of one catalog stay together.
    """
    by_en: dict[str, list[catalogs.Pair]] = defaultdict(list)
    for p in pairs:
        by_en[p.en].append(p)
    chosen = []
    for en, group in by_en.items():
        votes = Counter(p.tgt for p in group)
        best = min(
            group,
            key=lambda p: (-votes[p.tgt], catalogs.locale_rank(lang, p.locale) or 0, p.catalog, p.index),
        )
        chosen.append(best)
    chosen.sort(key=lambda p: (p.catalog, p.index, p.en))
    return chosen


def _write_tsv(path: Path, header: tuple[str, str], rows: list[tuple[str, str, str, int]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"{header[0]}\t{header[1]}\tcatalog\tindex\n")
        for a, b, cat, idx in rows:
            f.write(f"{a}\t{b}\t{cat}\t{idx}\n")


def read_tsv(path: str | Path) -> list[tuple[str, str, str, int]]:
    """Rows (src, tgt, catalog, index) of a TSV the text builder wrote."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline()
        if header.count("\t") != 3:
            raise ValueError(f"{path}:1: not a text-builder TSV (expected 4 tab-separated columns)")
        for lineno, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                raise ValueError(f"{path}:{lineno}: expected 4 tab-separated columns, got {len(parts)}")
            rows.append((parts[0], parts[1], parts[2], int(parts[3])))
    return rows


def build_text_corpus(cfg: TextCorpusConfig, home: Path | None = None) -> dict:
    """Build (or find already built) the text corpus; return its summary."""
    home = home or interpres_home()
    out_dir = home / "text"
    summary_path = out_dir / "summary.json"
    cfg_dict = config_to_dict(cfg)
    cfg_dict.pop("force", None)
    cfg_dict.pop("workers", None)
    if summary_path.exists() and not cfg.force:
        old = json.loads(summary_path.read_text(encoding="utf-8"))
        if old.get("config") == cfg_dict:
            log.info("text corpus already built at %s", out_dir)
            return old

    t0 = time.perf_counter()
    workers = _workers(cfg.workers)
    sentence_pkgs = [pkg for src in cfg.sentence_sources if (pkg := sentences.SOURCES[src][0])]
    log.info("fetching %d apt and %d pip packages", len(cfg.apt_packages) + len(sentence_pkgs), len(cfg.pip_packages))
    apt_roots = fetch_apt(cfg.apt_packages + sentence_pkgs, home, workers=workers)
    pip_roots = fetch_pip(cfg.pip_packages, home)
    t_fetch = time.perf_counter() - t0

    catalog_roots = {n: r for n, r in apt_roots.items() if n in cfg.apt_packages}
    catalog_roots.update({req.split("==")[0]: r for req, r in pip_roots.items()})
    wanted = {loc for lang in cfg.langs for loc in catalogs.LOCALES[lang]}
    files = [(pkg, loc, str(path), tuple(cfg.langs))
             for pkg, loc, path in catalogs.find_catalogs(catalog_roots) if loc in wanted]
    log.info("reading %d catalogs for %s", len(files), ",".join(cfg.langs))

    per_lang: dict[str, list[catalogs.Pair]] = defaultdict(list)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in tqdm(pool.map(_parse_one, files, chunksize=8), total=len(files),
                           desc="catalogs", unit="file", disable=None):
            for lang, pair in result:
                per_lang[lang].append(pair)
    if cfg.cldr_names:
        for lang in cfg.langs:
            per_lang[lang].extend(cldr_pairs(lang))
    t_catalogs = time.perf_counter() - t0 - t_fetch

    counts: dict[str, dict[str, int]] = {}
    split_of = functools.partial(assign_split, seed=cfg.seed, dev_fraction=cfg.dev_fraction,
                                 test_fraction=cfg.test_fraction)
    for lang in cfg.langs:
        chosen = choose_translations(per_lang[lang], lang)
        by_split: dict[str, list[catalogs.Pair]] = {s: [] for s in SPLITS}
        for p in chosen:
            by_split[split_of(p.en)].append(p)
        for split, rows in by_split.items():
            _write_tsv(out_dir / f"en-{lang}" / f"{split}.tsv", ("en", lang),
                       [(p.en, p.tgt, p.catalog, p.index) for p in rows])
            if lang == "zh":
                _write_tsv(out_dir / "zh-en" / f"{split}.tsv", ("zh", "en"),
                           [(p.tgt, p.en, p.catalog, p.index) for p in rows])
        counts[f"en-{lang}"] = {s: len(r) for s, r in by_split.items()}
        if lang == "zh":
            counts["zh-en"] = dict(counts["en-zh"])
        log.info("en-%s: %s", lang, counts[f"en-{lang}"])

    # English sentences for ASR pretraining
    source_counts: dict[str, int] = {}
    jobs = [(src, str(apt_roots[pkg]) if pkg else None)
            for src in cfg.sentence_sources
            if (pkg := sentences.SOURCES[src][0]) is None or pkg in apt_roots]
    all_sentences: dict[str, None] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(sentences.extract, src, Path(root) if root else None, cfg.min_words, cfg.max_words)
                   for src, root in jobs]
        for (src, _), fut in tqdm(list(zip(jobs, futures)), desc="sentences", unit="source", disable=None):
            got = fut.result()
            source_counts[src] = len(got)
            for s in got:
                all_sentences.setdefault(s, None)
    sent_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for s in all_sentences:
        sent_split[split_of(s)].append(s)
    for split, rows in sent_split.items():
        with atomic_path(out_dir / "en" / f"{split}.txt") as tmp:
            tmp.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    counts["en"] = {s: len(r) for s, r in sent_split.items()}

    summary = {
        "config": cfg_dict,
        "counts": counts,
        "sentence_sources": source_counts,
        "apt_packages": sorted(p.name for p in (home / "packages" / "debs").glob("*.deb")
                               if p.name.split("_")[0] in apt_roots),
        "pip_packages": sorted(pip_roots),
        "catalog_files": len(files),
        "seconds": {"fetch": round(t_fetch, 1), "catalogs": round(t_catalogs, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "workers": workers,
    }
    write_json_atomic(summary_path, summary)
    return summary
