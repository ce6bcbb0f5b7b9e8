"""End to end: the text builder on real Debian packages fetched with apt-get."""

import json
import shutil

import pytest

from speech.config import ConfigError, load_config
from speech.data.text import TextCorpusConfig, build_text_corpus, read_tsv, split_key

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get (Debian)"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    cfg = TextCorpusConfig(
        langs=["de", "fr", "zh"], apt_packages=["sed", "grep", "no-such-package-interpres"],
        pip_packages=[], sentence_sources=["fortunes-min", "stdlib-docstrings"],
        dev_fraction=0.15, test_fraction=0.15, workers=2,
    )
    return home, cfg, build_text_corpus(cfg, home=home)


def test_layout_and_counts(built):
    home, cfg, summary = built
    out = home / "text"
    for pair in ("en-de", "en-fr", "en-zh", "zh-en"):
        for split in ("train", "dev", "test"):
            rows = read_tsv(out / pair / f"{split}.tsv")
            assert len(rows) == summary["counts"][pair][split]
        assert summary["counts"][pair]["train"] > 100  # sed and grep are widely translated
    for split in ("train", "dev", "test"):
        lines = (out / "en" / f"{split}.txt").read_text().splitlines()
        assert len(lines) == summary["counts"]["en"][split] > 0
    assert summary["sentence_sources"]["fortunes-min"] > 50
    assert json.loads((out / "summary.json").read_text())["counts"] == summary["counts"]
    # the unknown package is skipped, the rest is there
    assert any(p.startswith("sed_") for p in summary["apt_packages"])


def test_zh_en_is_en_zh_reversed(built):
    home, _, _ = built
    for split in ("train", "dev", "test"):
        en_zh = read_tsv(home / "text/en-zh" / f"{split}.tsv")
        zh_en = read_tsv(home / "text/zh-en" / f"{split}.tsv")
        assert [(b, a, c, i) for a, b, c, i in en_zh] == zh_en


def test_splits_are_disjoint_and_consistent_across_languages(built):
    home, _, _ = built
    split_of: dict[str, str] = {}
    for pair in ("en-de", "en-fr", "en-zh"):
        seen = {}
        for split in ("train", "dev", "test"):
            for en, tgt, catalog, _ in read_tsv(home / "text" / pair / f"{split}.tsv"):
                key = split_key(en)
                assert seen.setdefault(key, split) == split, f"{en!r} in two splits of {pair}"
                assert split_of.setdefault(key, split) == split, f"{en!r} split differs across languages"
                assert "%" not in en and "\n" not in tgt and en != tgt
                assert catalog.split("/")[0] in ("sed", "grep", "babel")
        # one translation per English string
        for split in ("train", "dev", "test"):
            ens = [r[0] for r in read_tsv(home / "text" / pair / f"{split}.tsv")]
            assert len(ens) == len(set(ens))
    for split in ("train", "dev", "test"):
        for s in (home / "text/en" / f"{split}.txt").read_text().splitlines():
            assert split_of.get(split_key(s), split) == split


def test_rerun_is_a_no_op_and_a_new_config_rebuilds(built):
    home, cfg, summary = built
    tsv = home / "text/en-de/train.tsv"
    mtime = tsv.stat().st_mtime_ns
    assert build_text_corpus(cfg, home=home) == summary
    assert tsv.stat().st_mtime_ns == mtime
    # a killed run leaves packages unpacked: a rebuild after losing the outputs fetches nothing
    shutil.rmtree(home / "text")
    debs = sorted((home / "packages/debs").iterdir())
    again = build_text_corpus(cfg, home=home)
    assert again["counts"] == summary["counts"]
    assert sorted((home / "packages/debs").iterdir()) == debs


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="langs: unknown language 'xx'"):
        load_config(TextCorpusConfig, None, ["langs=[de, xx]"])
    with pytest.raises(ConfigError, match="sentence_sources: unknown source 'novels'"):
        load_config(TextCorpusConfig, None, ["sentence_sources=[novels]"])
