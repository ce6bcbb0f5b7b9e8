"""simul.data (the stream corpus builder) and the example makers of simul.train, on hand-made rows."""

import json
import random
import shutil
import subprocess
from collections import Counter, defaultdict

import pytest

from builders import write_mo
from speech.config import ConfigError
from speech.data.text import split_key
from simul.data import (
    CATALOG_LIST,
    Document,
    StreamCorpusConfig,
    StreamDataError,
    build_catalog_pairs,
    build_stream_corpus,
    catalog_pairs_path,
    read_catalog_pairs,
    read_package_list,
    family,
    load_split,
    make_documents,
    read_documents,
    strip_punctuation,
    write_documents,
)
from simul.train import document_pairs, segment_translation

# ----------------------------------------------------------------------------- strip_punctuation


@pytest.mark.parametrize("text, expected", [
    ("打开文件。", "打开文件"),
    ("无法打开“%s”：没有那个文件或目录！", "无法打开s没有那个文件或目录"),
    ("USB 设备。", "USB设备"),
    ("GNU C编译器", "GNU C编译器"),
    ("GNU  C 编译器", "GNU C编译器"),  # one space between Latin words, none before Chinese
    ("版本 2 0", "版本2 0"),  # numbers are Latin words too
    ("  前后 空格  ", "前后空格"),
    ("中文 中文\t中文\u3000中文", "中文中文中文中文"),
    ("GNU，C", "GNUC"),  # no space in the input: none is invented
    ("GNU， C", "GNU C"),
    ("（a）b", "ab"),
    ("1+1=2", "112"),  # symbols go too
    ("《帮助》……", "帮助"),
    ("éa b", "éa b"),
    ("，。！？", ""),
    ("", ""),
])
def test_strip_punctuation(text, expected):
    assert strip_punctuation(text) == expected


def test_strip_punctuation_changes_nothing_else():
    text = "第3个参数无效abcXYZ０１２ΩЖ"
    assert strip_punctuation(text) == text
    assert strip_punctuation(strip_punctuation("GNU  C，编译器。")) == "GNU C编译器"  # idempotent


# ----------------------------------------------------------------------------- make_documents

CHARS = "打开保存删除文件目录设备网络错误无法找到新建窗口图像颜色选择全部编译器链接符号段"
PUNCT = "，。：！？、"


def zh_sentence(rng: random.Random) -> str:
    s = "".join(rng.choice(CHARS) for _ in range(rng.randint(2, 7)))
    if rng.random() < 0.5:
        k = rng.randint(1, len(s) - 1)
        s = s[:k] + rng.choice(PUNCT) + s[k:]
    return s + rng.choice(PUNCT)


def hand_rows(sizes: dict[str, int], seed: int = 0) -> list[tuple[str, str, str, int]]:
    """Rows (zh, en, catalog, index): catalog indices with gaps, in shuffled order."""
    rng = random.Random(seed)
    rows = []
    for catalog, n in sizes.items():
        for i in range(n):
            index = 3 * i + 1  # not 0..n-1: order, not values, makes "consecutive"
            rows.append((zh_sentence(rng), f"{catalog} message {index}.", catalog, index))
    rng.shuffle(rows)
    return rows


SIZES = {"coreutils/coreutils": 23, "tar/tar": 2, "gimp-data/gimp20": 9, "gcc-12-locales/gcc-12": 31}


def check_documents(docs: list[Document], rows, cfg: StreamCorpusConfig) -> None:
    by_en = {en: (catalog, index, zh) for zh, en, catalog, index in rows}
    per_catalog = defaultdict(list)
    for d in docs:
        origin = [by_en[e] for e in d.en]
        assert {c for c, _, _ in origin} == {d.catalog}, "a document mixes catalogs"
        assert d.zh == [strip_punctuation(z) for _, _, z in origin]
        per_catalog[d.catalog].append([i for _, i, _ in origin])
    for catalog, n in SIZES.items():
        chunks = per_catalog[catalog]
        # in document order, the catalog's entries in index order, each once
        assert [i for c in chunks for i in c] == sorted(i for _, _, c, i in rows if c == catalog)
        for k, c in enumerate(chunks):
            if n < cfg.min_sentences:
                assert len(chunks) == 1 and len(c) == n
            elif k < len(chunks) - 1:
                assert cfg.min_sentences <= len(c) <= cfg.max_sentences
            else:  # the last one may have taken a short tail
                assert cfg.min_sentences <= len(c) <= cfg.max_sentences + cfg.min_sentences - 1
    assert len({d.id for d in docs}) == len(docs)


def test_make_documents_cuts_each_catalog_in_order():
    cfg = StreamCorpusConfig(min_sentences=3, max_sentences=5)
    rows = hand_rows(SIZES)
    docs = make_documents(rows, cfg)
    check_documents(docs, rows, cfg)
    assert {d.catalog for d in docs} == set(SIZES)
    sizes = [len(d.zh) for d in docs]
    assert len(set(sizes)) > 1, "document lengths never vary"


def test_make_documents_merges_a_short_tail():
    cfg = StreamCorpusConfig(min_sentences=4, max_sentences=4)  # fixed length: the tail is predictable
    rows = hand_rows({"coreutils/coreutils": 10, "tar/tar": 3})
    docs = make_documents(rows, cfg)
    assert [(d.catalog, len(d.zh)) for d in docs] == [("coreutils/coreutils", 4), ("coreutils/coreutils", 6),
                                                      ("tar/tar", 3)]
    # the tail goes to its own catalog's document, never to another catalog's
    rows = hand_rows({"a/a": 4, "b/b": 2})
    assert [(d.catalog, len(d.zh)) for d in make_documents(rows, cfg)] == [("a/a", 4), ("b/b", 2)]


def test_make_documents_drops_empty_rows():
    cfg = StreamCorpusConfig(min_sentences=1, max_sentences=1)
    rows = [("。", "Period.", "c/c", 0), ("打开", "  ", "c/c", 1), ("保存。", " Save. ", "c/c", 2)]
    assert [(d.zh, d.en) for d in make_documents(rows, cfg)] == [(["保存"], ["Save."])]


def test_make_documents_is_deterministic_per_seed():
    rows = hand_rows(SIZES)
    cfg = StreamCorpusConfig(seed=1)
    docs = make_documents(rows, cfg)
    again = make_documents(list(reversed(rows)), StreamCorpusConfig(seed=1))
    assert [(d.id, d.zh, d.en) for d in docs] == [(d.id, d.zh, d.en) for d in again]
    other = make_documents(rows, StreamCorpusConfig(seed=2))
    assert [len(d.zh) for d in other] != [len(d.zh) for d in docs]
    check_documents(other, rows, cfg)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="min_sentences"):
        StreamCorpusConfig(min_sentences=4, max_sentences=3)
    with pytest.raises(ConfigError, match="fractions"):
        StreamCorpusConfig(dev_fraction=0.6, test_fraction=0.5)


# ----------------------------------------------------------------------------- build_stream_corpus

DOMAIN = ["gcc-12-locales", "bison"]
CORPUS_SIZES = {"gcc-12-locales/gcc-12": 60, "bison/bison": 25, "coreutils/coreutils": 70,
                "gimp-data/gimp20": 40, "babel/territories": 30}


def write_zh_en(home, sizes=CORPUS_SIZES, seed=0):
    """``home/text/zh-en/{train,dev,test}.tsv``: one catalog's rows spread over all three."""
    rows = hand_rows(sizes, seed)
    rng = random.Random(seed)
    split_rows = defaultdict(list)
    for r in rows:
        split_rows[rng.choice(["train", "train", "train", "dev", "test"])].append(r)
    folder = home / "text" / "zh-en"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        (folder / f"{split}.tsv").write_text(
            "zh\ten\tcatalog\tindex\n" + "".join(f"{z}\t{e}\t{c}\t{i}\n" for z, e, c, i in split_rows[split]),
            encoding="utf-8")
    return rows


def corpus_cfg(**kw) -> StreamCorpusConfig:
    return StreamCorpusConfig(**{"name": "t", "domain_families": DOMAIN, "dev_fraction": 0.2, "test_fraction": 0.2,
                                 "domain_dev_fraction": 0.25, "domain_test_fraction": 0.25, **kw})


def all_outputs(out):
    return {(part, split): read_documents(out / part / f"{split}.jsonl")
            for part in ("general", "domain") for split in ("train", "dev", "test")}


def test_build_stream_corpus(tmp_path):
    home = tmp_path / "home"
    rows = write_zh_en(home)
    cfg = corpus_cfg()
    summary = build_stream_corpus(cfg, home=home)
    out = home / "simul" / "t"
    outputs = all_outputs(out)

    for (part, split), docs in outputs.items():
        for d in docs:
            assert (family(d.catalog) in DOMAIN) == (part == "domain"), (part, d.catalog)
        assert summary["counts"][f"{part}/{split}"] == {
            "documents": len(docs), "sentences": sum(len(d.zh) for d in docs),
            "source_chars": sum(len(d.source) for d in docs)}
        assert load_split(str(out), part, split) == docs
        assert load_split("t", part, split, home=home) == docs
    assert all(outputs[p, "train"] for p in ("general", "domain"))
    assert sum(len(outputs[p, s]) for p in ("general", "domain") for s in ("dev", "test")) > 0

    ids = [d.id for docs in outputs.values() for d in docs]
    assert len(ids) == len(set(ids)), "a document is in two splits"

    expected = Counter((strip_punctuation(z), e.strip()) for z, e, _, _ in rows)
    got = Counter((z, e) for docs in outputs.values() for d in docs for z, e in zip(d.zh, d.en))
    assert got == expected

    for docs in outputs.values():
        for d in docs:
            b = d.boundaries
            assert b == [sum(len(z) for z in d.zh[:i + 1]) for i in range(len(d.zh))]
            assert b[-1] == len(d.source)
            assert [d.source[a:e] for a, e in zip([0, *b], b)] == d.zh
            assert d.reference == " ".join(d.en)
            assert not any(ch in d.source for ch in PUNCT)


def test_build_is_a_noop_when_done_and_rebuilds_for_another_config(tmp_path):
    home = tmp_path / "home"
    write_zh_en(home)
    out = home / "simul" / "t"
    first = build_stream_corpus(corpus_cfg(), home=home)
    files = sorted(out.rglob("*.json*"))
    assert len(files) == 7
    stamps = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}
    contents = {f: f.read_bytes() for f in files}

    assert build_stream_corpus(corpus_cfg(), home=home) == first
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files} == stamps

    second = build_stream_corpus(corpus_cfg(seed=7), home=home)
    assert second["config"]["seed"] == 7 and second != first
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == second
    assert any(f.read_bytes() != contents[f] for f in files if f.suffix == ".jsonl")

    # a rebuilt text corpus (its summary.json changes) makes the streams stale too
    stamps = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}
    (home / "text" / "summary.json").write_text("{}")
    third = build_stream_corpus(corpus_cfg(seed=7), home=home)
    assert third["text_stamp"] is not None and third["counts"] == second["counts"]
    assert (out / "summary.json").stat().st_mtime_ns != stamps[out / "summary.json"][1] or \
        (out / "summary.json").stat().st_ino != stamps[out / "summary.json"][0]


def test_build_needs_the_zh_en_pairs(tmp_path):
    home = tmp_path / "home"
    with pytest.raises(StreamDataError, match=str(home / "text" / "zh-en")):
        build_stream_corpus(corpus_cfg(), home=home)
    write_zh_en(home)
    (home / "text" / "zh-en" / "dev.tsv").unlink()  # one split missing is as bad
    with pytest.raises(StreamDataError, match="zh-en"):
        build_stream_corpus(corpus_cfg(), home=home)


def test_build_names_a_domain_family_absent_from_the_data(tmp_path):
    home = tmp_path / "home"
    write_zh_en(home)
    with pytest.raises(ConfigError, match="binutils-common") as e:
        build_stream_corpus(corpus_cfg(domain_families=["gcc-12-locales", "binutils-common"]), home=home)
    assert "gcc-12-locales" not in str(e.value)
    with pytest.raises(ConfigError, match="make"):  # the defaults name all four families
        build_stream_corpus(StreamCorpusConfig(name="t"), home=home)
    assert not (home / "simul" / "t" / "summary.json").exists()


def test_build_names_a_malformed_tsv_line(tmp_path):
    home = tmp_path / "home"
    write_zh_en(home)
    path = home / "text" / "zh-en" / "test.tsv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = "打开\tOpen\tcoreutils/coreutils\n"  # three columns
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(StreamDataError, match=f"{path}:3:"):
        build_stream_corpus(corpus_cfg(), home=home)


# ----------------------------------------------------------------------------- build_catalog_pairs


def write_deb(debs, name, files):
    """A real .deb (dpkg-deb --build) named as apt-get download names it, holding ``files``."""
    tree = debs.parent / "trees" / name
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    for rel, entries in files.items():
        write_mo(tree / rel, entries)
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(debs / f"{name}_1.0_all.deb")],
                   check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_catalog_pairs_are_new_pairs_of_the_listed_packages(tmp_path):
    home = tmp_path / "home"
    write_zh_en(home)
    build_stream_corpus(corpus_cfg(), home=home)
    docs = [d for part in ("general", "domain") for split in ("train", "dev", "test")
            for d in load_split("t", part, split, home=home)]
    test_doc = load_split("t", "general", "test", home=home)[0]
    debs = home / "packages" / "debs"
    write_deb(debs, "tool-a", {
        "usr/share/locale/zh_CN/LC_MESSAGES/tool.mo": [
            ("Open the archive", "打开归档。"),  # new
            ("Unrelated words here", test_doc.zh[0]),  # a test stream's Chinese: dropped
            (test_doc.en[0].upper() + "!", "全新的中文句子"),  # a test stream's English (split key): dropped
            ("%s files", "%s 个文件"),  # a placeholder: the text builder's cleaning drops it
        ],
        "usr/share/locale/de/LC_MESSAGES/tool.mo": [("Open the archive", "Archiv öffnen")],
    })
    # a package the streams come from is skipped, even if listed
    write_deb(debs, "coreutils", {"usr/share/locale/zh_CN/LC_MESSAGES/coreutils.mo": [("Copy it now", "现在复制")]})
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\ntool-a\n\ncoreutils  # trailing comment\n")
    assert read_package_list(listing) == ["tool-a", "coreutils"]

    summary = build_catalog_pairs("t", listing, home=home)
    path = catalog_pairs_path("t", home)
    assert read_catalog_pairs(path) == [("打开归档", "Open the archive")]
    assert summary["pairs"] == 1 and summary["packages_found"] == 1 and summary["pairs_read"] == 3
    seen = {z for d in docs for z in d.zh} | {split_key(e) for d in docs for e in d.en}
    assert not any(z in seen or split_key(e) in seen for z, e in read_catalog_pairs(path))
    unpacked = [p.relative_to(home / "packages") for p in (home / "packages").glob("root-*/tool-a/**/*.mo")]
    assert len(unpacked) == 1 and "zh_CN" in str(unpacked[0])  # only the members asked for

    # done is done; another list rebuilds
    stamp = path.stat().st_mtime_ns
    assert build_catalog_pairs("t", listing, home=home) == summary and path.stat().st_mtime_ns == stamp
    listing.write_text("coreutils\n")
    assert build_catalog_pairs("t", listing, home=home)["pairs"] == 0
    assert read_catalog_pairs(path) == []


def test_catalog_pairs_errors_name_the_file(tmp_path):
    with pytest.raises(StreamDataError, match="no stream corpus"):
        build_catalog_pairs("t", CATALOG_LIST, home=tmp_path)
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("fine-name\nNot A Name\n")
    with pytest.raises(StreamDataError, match=f"{bad_list}.*Not A Name"):
        read_package_list(bad_list)
    with pytest.raises(StreamDataError, match="interpres data simul --catalogs"):
        read_catalog_pairs(tmp_path / "catalogs.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("zh\ten\tcatalog\n打开\tOpen\tc/c\n保存\tSave\n", encoding="utf-8")
    with pytest.raises(StreamDataError, match=f"{bad}:3:"):
        read_catalog_pairs(bad)


def test_the_bundled_package_list_reads_and_holds_out_the_streams_and_the_domain():
    from speech.data.text import CATALOG_PACKAGES

    names = read_package_list(CATALOG_LIST)
    assert len(names) > 1000 and len(set(names)) == len(names)
    assert not set(names) & set(CATALOG_PACKAGES)
    assert not set(names) & {"gcc-11-locales", "gcc-12-locales", "binutils-common", "bison", "make", "make-guile"}


# ----------------------------------------------------------------------------- read_documents

GOOD = {"id": "c/c#0", "catalog": "c/c", "zh": ["打开", "保存"], "en": ["Open", "Save"]}


def write_lines(path, *objs):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n"
                            for o in objs), encoding="utf-8")
    return path


def test_read_documents_round_trip(tmp_path):
    docs = [Document("a#0", "a", ["打开文件", "GNU C编译器"], ["Open a file", "GNU C compiler"]),
            Document("b#3", "b", ["删除"], ["Delete"])]
    write_documents(tmp_path / "x.jsonl", docs)
    assert read_documents(tmp_path / "x.jsonl") == docs
    write_documents(tmp_path / "empty.jsonl", [])
    assert read_documents(tmp_path / "empty.jsonl") == []


@pytest.mark.parametrize("bad", [
    "{not json",
    "",
    json.dumps({"catalog": "c", "zh": ["打开"], "en": ["Open"]}),  # no id
    json.dumps(["打开", "Open"]),
    json.dumps({**GOOD, "en": ["Open"]}),  # lengths differ
    json.dumps({**GOOD, "zh": [], "en": []}),
    json.dumps({**GOOD, "zh": ["打开", ""]}),
    json.dumps({**GOOD, "en": ["Open", 3]}),
    json.dumps({**GOOD, "zh": "打开", "en": "Op"}),  # strings, not lists of sentences
])
def test_read_documents_names_the_bad_line(tmp_path, bad):
    path = write_lines(tmp_path / "d.jsonl", GOOD, GOOD, bad, GOOD)
    with pytest.raises(StreamDataError, match=f"^{path}:3: "):
        read_documents(path)


def test_read_documents_missing_file_and_bad_split(tmp_path):
    with pytest.raises(StreamDataError, match="nope.jsonl: not found"):
        read_documents(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="general/tset"):
        load_split(str(tmp_path), "general", "tset")


# ----------------------------------------------------------------------------- simul.train helpers

DOC = Document("c#0", "c", ["甲乙丙丁", "戊己庚辛壬癸", "子丑寅卯辰"],
               ["one two three four", "five six seven", "eight nine ten eleven twelve"])


def test_segment_translation_whole_and_cut_sentences():
    n = len(DOC.source)
    assert segment_translation(DOC, 0, n) == DOC.reference
    assert segment_translation(DOC, 0, 4) == "one two three four"
    assert segment_translation(DOC, 4, 15) == "five six seven eight nine ten eleven twelve"
    assert segment_translation(DOC, 0, 2) == "one two"  # half of a sentence: half of its words
    assert segment_translation(DOC, 2, 4) == "three four"
    assert segment_translation(DOC, 1, 3) == "two three"  # chars 1..3 of 4: words 1..3 of 4
    assert segment_translation(DOC, 4, 6) == "five"  # 2/6 of three words
    assert segment_translation(DOC, 2, 6) == "three four five"
    assert segment_translation(DOC, 5, 5) == ""
    assert segment_translation(DOC, 10, 13) == "eight nine ten"  # 3/5 of five words


def test_segment_pieces_give_back_the_reference():
    n = len(DOC.source)
    rng = random.Random(0)
    cut_sets = [[c] for c in range(1, n)] + [[a, b] for a in range(1, n) for b in range(a + 1, n)]
    cut_sets += [sorted(rng.sample(range(1, n), rng.randint(3, n - 1))) for _ in range(200)]
    for cuts in cut_sets:
        bounds = [0, *cuts, n]
        pieces = [segment_translation(DOC, a, b) for a, b in zip(bounds, bounds[1:])]
        assert " ".join(p for p in pieces if p).split() == DOC.reference.split(), cuts


def test_document_pairs():
    docs = [DOC, Document("d#0", "d", ["打开"], ["Open"]), Document("e#0", "e", ["保存", "删除"], ["Save", "Delete"]),
            Document("f#0", "f", list("甲乙丙丁戊"), ["a", "b", "c", "d", "e"])]
    sentence_pairs = [(z, e) for d in docs for z, e in zip(d.zh, d.en)]
    assert document_pairs(docs, windows=False, seed=1) == sentence_pairs

    pairs = document_pairs(docs, windows=True, seed=1)
    assert pairs[:len(sentence_pairs)] == sentence_pairs
    rest = pairs[len(sentence_pairs):]
    k = 0
    for d in docs:
        assert rest[k] == (d.source, d.reference)
        k += 1
        if len(d.zh) > 2:
            zh, en = rest[k]
            k += 1
            windows = [("".join(d.zh[s:s + m]), " ".join(d.en[s:s + m]))
                       for m in range(2, len(d.zh)) for s in range(len(d.zh) - m + 1)]
            assert (zh, en) in windows  # consecutive sentences, aligned, neither one nor all
    assert k == len(rest) == len(docs) + 2
    assert document_pairs(docs, windows=True, seed=1) == pairs
