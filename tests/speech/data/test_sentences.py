"""Sentence extraction from the formats the source packages use, written here."""

import gzip

from speech.data import sentences as S


def test_keep_filters():
    assert S.keep("The quick brown fox jumps over the dog.")
    assert not S.keep("Too short here.")  # 3 words
    assert not S.keep("lower case start is not a sentence.")
    assert not S.keep("No final punctuation in this one")
    assert not S.keep("Version 3 of the tool was released.")  # digits are not read the same by all
    assert not S.keep("Run the file /usr/bin/env with it.")
    assert not S.keep("THIS IS ALL SHOUTING AT THE READER.")
    assert not S.keep(" ".join(["Word"] * 31) + ".")


def test_fortunes_and_wordnet(tmp_path):
    f = tmp_path / "usr/share/games/fortunes/people"
    f.parent.mkdir(parents=True)
    f.write_text("A fool and his money are soon parted.\n\t-- Proverb\n%\nShort.\n%\n"
                 "He who laughs last\nthinks slowest. Really, he does.\n%\n")
    (f.parent / "people.dat").write_bytes(b"\x00\x01binary index")
    got = S.extract("fortunes", tmp_path)
    assert got == ["A fool and his money are soon parted.", "He who laughs last thinks slowest."]

    wn = tmp_path / "usr/share/wordnet/data.verb"
    wn.parent.mkdir(parents=True)
    wn.write_text('00002724 29 v 01 choke 0 | breathe with difficulty; "she choked with emotion when she spoke"\n')
    assert S.extract("wordnet-base", tmp_path) == ["She choked with emotion when she spoke."]


def test_rst_and_manpage(tmp_path):
    rst = tmp_path / "doc/lib.rst.txt"
    rst.parent.mkdir(parents=True)
    rst.write_text(
        "Title\n=====\n\nThe :func:`open` function returns a ``file`` object to the caller.\n\n"
        "Example::\n\n   >>> open('x')\n   Do not read this line as prose at all.\n\n"
        "See `the tutorial <https://x>`_ for a longer introduction to files.\n")
    assert S.extract("python3.11-doc", tmp_path) == [
        "The open function returns a file object to the caller.",
        "See the tutorial for a longer introduction to files.",
    ]

    man = tmp_path / "usr/share/man/man1/tool.1.gz"
    man.parent.mkdir(parents=True)
    man.write_bytes(gzip.compress(b".TH TOOL 1\n.SH NAME\ntool \\- do things\n.PP\n"
                                  b"The \\fBtool\\fR program copies every file it is given.\n.PP\n"))
    assert S.extract("manpages", tmp_path) == ["The tool program copies every file it is given."]


def test_stdlib_docstrings_are_found():
    got = S.extract("stdlib-docstrings", None)
    assert len(got) > 1000 and all(S.keep(s) for s in got[:100])
