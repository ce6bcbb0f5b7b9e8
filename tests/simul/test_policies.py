"""The policies on a tiny real translator and boundary detector: what they read before they
write, and that their outputs are what their definitions say."""

import pytest

from simul.policies import (FullSentence, LocalAgreement, ReadAction, SaidSentences, Segmentation, StreamSession, WaitK, WriteAction,
                          policies_from_spec, run_stream, sentence_key, split_sentences,
                          translate_segment)
from simul.data import load_split
from simul.segmenter import Segmenter, cut_positions
from simul.translator import Translator


@pytest.fixture(scope="module")
def parts(tiny_simul, one_thread):
    tr = Translator(tiny_simul.model)
    seg = Segmenter.load(tiny_simul.segmenter)
    docs = load_split(str(tiny_simul.corpus), "general", "test")[:6]
    return tr, seg, docs


def test_translator_translates_something(parts):
    tr, _, docs = parts
    outs = [tr.detokenize(ids) for ids in tr.translate([d.zh[0] for d in docs])]
    assert all(outs), outs  # the tiny model has learned to say something


@pytest.mark.parametrize("k", [1, 3, 6])
def test_wait_k_reads_k_ahead_of_its_tokens(parts, k):
    tr, _, docs = parts

    class Watched(WaitK):
        def policy(self, states):
            action = super().policy(states)
            if not states.source_finished:
                # every token decided so far was decided with at least k + t - 1 characters read
                assert len(self.tokens) <= max(0, len(states.source) - k + 1)
            return action

    for doc in docs:
        words, delays, _ = run_stream(Watched(tr, k), doc.source)
        assert words, doc.source
        assert delays == sorted(delays) and delays[0] >= min(k, len(doc.source))
        assert delays[-1] == len(doc.source)  # the last word waits for the end of the stream


def test_wait_k_beyond_the_stream_is_offline_translation(parts):
    tr, _, docs = parts
    doc = docs[0]
    words, delays, _ = run_stream(WaitK(tr, len(doc.source) + 5), doc.source)
    assert set(delays) == {len(doc.source)}


def test_local_agreement_commits_only_what_two_hypotheses_share(parts):
    tr, _, docs = parts
    for doc in docs:
        agent = LocalAgreement(tr, 3)
        session = StreamSession(agent)
        committed: list[str] = []
        for i, ch in enumerate(doc.source):
            before = agent.previous
            for c in session.feed(ch, finished=i == len(doc.source) - 1):
                if not c.finished:
                    # what was committed is a prefix of both the last and the one before
                    assert before is not None
                    now = committed + c.words
                    assert agent.previous[: len(now)] == now and before[: len(now)] == now
                committed += c.words
        assert session.done


def test_local_agreement_with_one_chunk_is_the_offline_translation(parts):
    tr, _, docs = parts
    for doc in docs[:3]:
        words, delays, _ = run_stream(LocalAgreement(tr, len(doc.source) + 1), doc.source)
        assert words == tr.words(tr.translate([doc.source])[0])
        assert set(delays) <= {len(doc.source)}


def test_segmentation_online_cuts_equal_the_offline_rule(parts):
    tr, seg, docs = parts
    for threshold in (0.2, 0.5, 0.9):
        for doc in docs:
            src = doc.source
            segments, reads = [], []

            class Recorded(Segmentation):
                def _translate(self, segment, finished):
                    segments.append(segment)
                    return super()._translate(segment, finished)

            session = StreamSession(Recorded(tr, seg, threshold, max_len=7))
            for i, ch in enumerate(src):
                reads += [c.source_read for c in session.feed(ch, finished=i == len(src) - 1)]
            cuts = cut_positions(seg.boundary_probs(src), threshold, max_len=7)
            bounds = [0, *cuts, len(src)]
            assert segments == [src[a:b] for a, b in zip(bounds, bounds[1:])]
            # a boundary is decided `lookahead` characters later, a forced cut as soon as the
            # positions before it are decided
            for cut, read in zip(cuts, reads):
                assert cut <= read <= min(len(src), cut + seg.cfg.lookahead)
            words, _, _ = run_stream(Segmentation(tr, seg, threshold, max_len=7), src)
            said, expect = SaidSentences(), []
            for s in segments:
                expect.append(translate_segment(tr, s, said=said))
                said.add(expect[-1], s)
            assert words == " ".join(expect).split()


def test_full_sentence_translates_each_true_sentence_at_its_end(parts):
    tr, _, docs = parts
    for doc in docs:
        words, delays, _ = run_stream(FullSentence(tr), doc.source, doc)
        expect_words, expect_delays, said = [], [], SaidSentences()
        for zh, end in zip(doc.zh, doc.boundaries):
            text = translate_segment(tr, zh, said=said)
            said.add(text, zh)
            w = text.split()
            expect_words += w
            expect_delays += [end] * len(w)
        assert words == expect_words and delays == expect_delays


def test_session_fed_in_pieces_equals_run_stream(parts):
    tr, seg, docs = parts
    doc = docs[1]
    whole = run_stream(Segmentation(tr, seg, 0.5), doc.source)[0]
    session = StreamSession(Segmentation(tr, seg, 0.5))
    got = []
    src = doc.source
    for piece in (src[:3], src[3:4], src[4:-2]):
        got += [w for c in session.feed(piece) for w in c.words]
    got += [w for c in session.feed(src[-2:], finished=True) for w in c.words]
    assert got == whole
    with pytest.raises(RuntimeError, match="already ended"):
        session.feed("x")


def test_an_agent_that_reads_past_the_end_is_an_error():
    class Greedy:
        name = "reader"

        def reset(self, doc=None):
            pass

        def policy(self, states):
            return ReadAction()

    with pytest.raises(RuntimeError, match="past the end"):
        run_stream(Greedy(), "一二三")


def test_empty_stream_ends_at_once(parts):
    tr, seg, _ = parts
    for agent in (WaitK(tr, 3), LocalAgreement(tr, 2), Segmentation(tr, seg), FullSentence(tr)):
        words, delays, _ = run_stream(agent, "")
        assert len(words) == len(delays)


def test_policy_specs(parts):
    tr, seg, _ = parts
    names = [a.name for spec in ("waitk:1,3", "la:2", "seg:0.5", "full")
             for a in policies_from_spec(spec, tr, None, seg)]
    assert names == ["waitk-1", "waitk-3", "la-2", "seg-0.5", "full-sentence"]
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        policies_from_spec("nope:1", tr)
    with pytest.raises(ValueError, match="boundary detector"):
        policies_from_spec("seg:0.5", tr, None, None)
    assert isinstance(WriteAction("a b").content, str)


def test_said_sentences_and_repeats():
    said = SaidSentences()
    said.add("Enter a valid number. Yes.", "输入一个有效的整数")
    assert said.repeats("enter a VALID number! Yes. Go on now.", "输入一个有效的时间") == [True, False, False]
    assert said.repeats("Enter a valid number.", "输入一个有效的整数") == [False]  # the same source may repeat it
    assert split_sentences("A b c. D e f? G") == ["A b c.", "D e f?", "G"]
    assert sentence_key("(y/N)") is None and sentence_key("Sets the 'New Layer' dialog.") == "sets the new layer dialog"


def test_a_segment_does_not_say_what_another_segment_said(parts):
    tr, _, docs = parts
    zh = docs[0].zh[0]
    best = translate_segment(tr, zh)
    said = SaidSentences()
    said.add(best, "另一个句子")  # another source already said the best translation
    again = translate_segment(tr, zh, said=said)
    assert not any(said.repeats(again, zh)), (best, again)
    said.add(best, zh)
    assert translate_segment(tr, zh, said=SaidSentences()) == best
    same = SaidSentences()
    same.add(best, zh)
    assert translate_segment(tr, zh, said=same) == best  # its own source may say it again
