"""simul.live (``interpres simul``): the segmentation policy over lines of a byte stream."""

import io
import json
import random

import pytest

from simul.policies import ReadAction, Segmentation, StreamSession, WriteAction, run_stream
from simul.bundled import policy_settings
from simul.data import load_split, strip_punctuation
from simul.live import LineStreams, LiveInputError, read_chars, run_live
from simul.segmenter import Segmenter
from simul.translator import Translator


@pytest.fixture(scope="module")
def sources(tiny_simul):
    return [d.source for d in load_split(str(tiny_simul.corpus), "general", "test")]


@pytest.fixture(scope="module")
def offline(tiny_simul):
    """The Segmentation agent as ``eval simul`` runs it, with the bundle's threshold."""
    threshold = float(policy_settings(tiny_simul.bundle)["threshold"])
    agent = Segmentation(Translator(tiny_simul.bundle), Segmenter.load(tiny_simul.bundle / "segmenter"), threshold, 40)
    return lambda source: run_stream(agent, source)


def live(tiny_simul, data: bytes, **kw):
    out, err = io.StringIO(), io.StringIO()
    rc = run_live(None, fmt="jsonl", model=tiny_simul.bundle, stdin=io.BytesIO(data), stdout=out, stderr=err, **kw)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    return rc, records, err.getvalue()


def by_line(records):
    lines = {}
    for r in records:
        lines.setdefault(r["line"], []).append(r)
    return lines


def check_line(recs, text):
    """One line's records: its characters (punctuation removed) in order, read monotonically, one final."""
    assert "".join(r["source"] for r in recs) == strip_punctuation(text)
    assert [r["final"] for r in recs] == [False] * (len(recs) - 1) + [True]
    reads = [r["source_read"] for r in recs]
    assert reads == sorted(reads) and reads[-1] == len(strip_punctuation(text))
    assert all(r["elapsed_ms"] >= 0 for r in recs)
    assert all(set(r) == {"line", "source", "translation", "source_read", "elapsed_ms", "final"} for r in recs)


def translation(recs):
    return " ".join(r["translation"] for r in recs if r["translation"])


def test_jsonl_records_per_committed_segment(tiny_simul, sources, offline):
    lines = sources[:2]
    rc, records, err = live(tiny_simul, "".join(s + "\n" for s in lines).encode())
    assert rc == 0 and err == ""
    got = by_line(records)
    assert sorted(got) == [1, 2]
    for n, text in enumerate(lines, start=1):
        check_line(got[n], text)
        assert len(got[n]) >= 2, "the tiny segmenter cuts a multi-sentence stream at least once"
        words, delays, _ = offline(text)
        assert translation(got[n]) == " ".join(words)
        # each word was committed with as many characters read as offline
        assert [r["source_read"] for r in got[n] for _ in r["translation"].split()] == delays


def test_text_format(tiny_simul, sources, offline):
    out, err = io.StringIO(), io.StringIO()
    assert run_live(None, model=tiny_simul.bundle, stdin=io.BytesIO((sources[0] + "\n").encode()),
                    stdout=out, stderr=err) == 0
    lines = out.getvalue().splitlines()
    assert lines and all("chars read" in x and x.endswith(" ms]") for x in lines)
    assert " ".join(x.split("\t")[0] for x in lines) == " ".join(offline(sources[0])[0])


def test_bad_lines_are_warnings(tiny_simul, sources, offline):
    a, b = sources[2], sources[3]
    k = len(b) // 2
    data = (a.encode() + b"\n" + b"\n" + "，。！？".encode() + b"\n" + b"hello world\n"
            + b[:k].encode() + b"\xff\xfe" + b[k:].encode() + b"\n")
    rc, records, err = live(tiny_simul, data)
    assert rc == 0
    assert "line 2: empty" in err
    assert "line 3: only punctuation" in err
    assert "line 4: no Chinese" in err
    assert "line 5: invalid UTF-8" in err
    assert "Traceback" not in err and "line 1:" not in err
    got = by_line(records)
    assert sorted(got) == [1, 4, 5]
    check_line(got[1], a)
    check_line(got[4], "hello world")  # translated anyway, after the warning
    check_line(got[5], b)  # the Chinese on both sides of the bad bytes
    assert translation(got[5]) == " ".join(offline(b)[0])


def test_last_line_without_newline_and_no_input(tiny_simul, sources):
    rc, records, err = live(tiny_simul, sources[0].encode())
    assert rc == 0 and err == ""
    check_line(by_line(records)[1], sources[0])
    assert live(tiny_simul, b"") == (0, [], "")


def test_punctuation_is_dropped_before_the_model(tiny_simul):
    doc = load_split(str(tiny_simul.corpus), "general", "test")[4]
    plain = live(tiny_simul, (doc.source + "\n").encode())
    punct = "，".join(doc.zh[:-1]) + "。 " + doc.zh[-1] + "！\r\n"
    spaced = live(tiny_simul, punct.encode())
    assert spaced[0] == 0 and spaced[2] == ""
    strip = lambda recs: [{k: v for k, v in r.items() if k != "elapsed_ms"} for r in recs]  # noqa: E731
    assert strip(spaced[1]) == strip(plain[1])


def test_realtime_waits_for_the_characters(tiny_simul, sources, tmp_path):
    text = (sources[0] * 2)[:20]
    path = tmp_path / "in.txt"
    path.write_text(text + "\n", encoding="utf-8")
    out = io.StringIO()
    assert run_live(path, realtime=400, fmt="jsonl", model=tiny_simul.bundle, stdout=out, stderr=io.StringIO()) == 0
    records = [json.loads(x) for x in out.getvalue().splitlines()]
    check_line(records, text)
    assert records[-1]["elapsed_ms"] >= (len(text) - 1) / 400 * 1000 * 0.8


def test_unreadable_input_is_an_error(tiny_simul, tmp_path):
    with pytest.raises(LiveInputError, match="nope.txt: no such file"):
        run_live(tmp_path / "nope.txt", model=tiny_simul.bundle)
    for rate in (0, -5):
        with pytest.raises(LiveInputError, match="--realtime must be positive"):
            run_live(None, realtime=rate, model=tiny_simul.bundle, stdin=io.BytesIO(b""))


# ----------------------------------------------------------------------------- no model: what the agent reads


class Echo:
    """An agent that reads everything and writes the stream it saw."""

    name = "echo"
    last_segment = ""

    def reset(self, doc=None):
        pass

    def policy(self, states):
        if not states.source_finished:
            return ReadAction()
        self.last_segment = states.source
        return WriteAction(states.source, True)


def streams_of(data: bytes):
    seen, warnings = [], []
    lines = LineStreams(lambda: StreamSession(Echo()), lambda line, c, src: seen.append((line, src)), warnings.append)
    read_chars(io.BytesIO(data), lines.char)
    lines.close()
    return seen, warnings


def test_the_agent_reads_what_training_read():
    rng = random.Random(0)
    alphabet = list("打开文件编译器") + list("GNUCx09") + list(" \t\u3000") + list("，。:;()+-")
    for _ in range(300):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25)))
        seen, _ = streams_of(line.encode() + b"\n")
        expected = strip_punctuation(line)
        assert seen == ([(1, expected)] if expected else []), line
    assert streams_of("GNU C 编译器 ，版本 12 .2\n".encode())[0] == [(1, "GNU C编译器版本12 2")]


def test_a_multibyte_character_split_across_reads():
    text = "打开文件" * 2000  # > 4096 bytes: characters straddle the read boundary
    seen, warnings = streams_of(text.encode() + b"\n" + "保存".encode()[:2] + b"\n")
    assert seen == [(1, text)]
    assert warnings == ["line 2: invalid UTF-8 bytes; skipped", "line 2: empty; skipped"]
