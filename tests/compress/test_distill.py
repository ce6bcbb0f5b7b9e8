"""compress.distill: the word-level KD loss, selective-KD masks, truncation, and the
sequence-level KD corpus cache."""

import json

import pytest
import torch
from torch import nn

from compress.distill import (KDConfig, SeqKDCorpus, SeqKDError, check_seq_kd_select, closest_to_reference, degenerate,
                              kd_loss, prefix_mask, section_mask, sentence_chrf, targets_from_outputs, teacher_log_probs,
                              truncate_targets)
from speech.losses import label_smoothed_nll_loss

PAD = 0


def rand(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def targets():
    t = torch.tensor([[5, 6, 7, 8, 3], [9, 4, 3, PAD, PAD]])
    return t


def test_alpha_zero_is_fairseq_label_smoothed_cross_entropy():
    s = rand((2, 5, 11), 0)
    loss, parts = kd_loss(s, rand((2, 5, 11), 1), targets(), KDConfig(alpha=0.0, label_smoothing=0.1), PAD)
    ref, nll = label_smoothed_nll_loss(s, targets(), 0.1, PAD)
    torch.testing.assert_close(loss, ref)
    assert parts["tokens"] == 8 and parts["nll"] == pytest.approx(float(nll), rel=1e-6)


def test_kd_term_is_the_kl_at_temperature_and_zero_for_a_copy():
    s, t = rand((2, 5, 11), 0), rand((2, 5, 11), 1)
    cfg = KDConfig(alpha=1.0, temperature=2.0, label_smoothing=0.0)
    loss, parts = kd_loss(s, t, targets(), cfg, PAD)
    valid = targets() != PAD
    p_t = torch.softmax(t / 2, -1)
    kl = (p_t * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1)
    assert float(loss) == pytest.approx(4.0 * float(kl[valid].sum()), rel=1e-5)  # T^2 x KL
    same, _ = kd_loss(t, t, targets(), cfg, PAD)
    assert float(same) == pytest.approx(0.0, abs=1e-5)


def test_training_on_the_kd_loss_moves_the_student_to_the_teacher():
    t = rand((2, 5, 11), 1)
    s = torch.zeros(2, 5, 11, requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.5)
    cfg = KDConfig(alpha=1.0, label_smoothing=0.0)
    first = None
    for _ in range(200):
        opt.zero_grad()
        loss, _ = kd_loss(s, t, targets(), cfg, PAD)
        first = first if first is not None else float(loss)
        loss.backward()
        opt.step()
    assert float(loss) < 0.01 * first
    valid = targets() != PAD
    torch.testing.assert_close(torch.softmax(s, -1)[valid], torch.softmax(t, -1)[valid], atol=2e-2, rtol=0)


def test_selective_mask_keeps_kd_off_elsewhere():
    s = rand((2, 5, 11), 0).requires_grad_()
    t = rand((2, 5, 11), 1)
    mask = prefix_mask(targets() != PAD, 0.5)
    assert mask.tolist() == [[True, True, True, False, False], [True, True, False, False, False]]
    cfg = KDConfig(alpha=1.0, label_smoothing=0.0)
    loss, _ = kd_loss(s, t, targets(), cfg, PAD, kd_mask=mask)
    loss.backward()
    # alpha 1: outside the mask only the label term (weight 1), inside only KD
    ce_only, _ = kd_loss(s.detach(), None, targets(), cfg, PAD)
    grad_ce = torch.autograd.grad(kd_loss(s, None, targets(), cfg, PAD)[0], s)[0]
    torch.testing.assert_close(s.grad[0, 3:], grad_ce[0, 3:])
    assert not torch.allclose(s.grad[0, :3], grad_ce[0, :3])
    assert float(ce_only) > 0


def test_causal_model_sections_carry_kd_only_where_chosen():
    """A causal LM: prompt (0), reasoning (1), answer (2); KD on the answer only."""
    torch.manual_seed(0)
    vocab, dim = 13, 16
    student = nn.Sequential(nn.Embedding(vocab, dim), nn.Linear(dim, vocab))
    teacher = nn.Sequential(nn.Embedding(vocab, dim), nn.Linear(dim, vocab))
    seq = torch.tensor([[4, 5, 6, 7, 8, 9, 10]])
    sections = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])
    inputs, labels = seq[:, :-1], seq[:, 1:].clone()
    sec = sections[:, 1:]
    labels[sec < 0] = PAD
    logits = student(inputs)
    t = teacher_log_probs([teacher], lambda m: m(inputs))
    mask = section_mask(sec, [2])
    assert mask.tolist() == [[False, False, False, True, True, False]]
    loss, parts = kd_loss(logits, t, labels, KDConfig(alpha=0.7, temperature=2.0), PAD, kd_mask=mask)
    assert parts["kd"] > 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="no section"):
        section_mask(sec, [])


def test_truncation_keeps_the_first_part_of_each_target():
    prev = torch.tensor([[2, 5, 6, 7, 8], [2, 9, 4, PAD, PAD]])
    tgt = targets()
    p, t = truncate_targets(prev, tgt, 0.5, PAD)
    assert t.tolist() == [[5, 6, 7], [9, 4, PAD]]
    assert p.tolist() == [[2, 5, 6], [2, 9, PAD]]
    assert truncate_targets(prev, tgt, 1.0, PAD) == (prev, tgt)


def test_ensemble_teacher_is_the_mean_probability():
    a, b = rand((1, 2, 5), 0), rand((1, 2, 5), 1)
    lp = teacher_log_probs([a, b], lambda x: x)
    torch.testing.assert_close(lp.exp(), (torch.softmax(a, -1) + torch.softmax(b, -1)) / 2)
    assert teacher_log_probs([], lambda x: x) is None


def test_seq_kd_corpus_resumes_and_refuses_other_settings(tmp_path):
    path = tmp_path / "seq.jsonl"
    calls = []

    def translate(ids):
        calls.append(list(ids))
        return [[int(i), int(i) + 1] for i in ids]

    ids = [str(i) for i in range(7)]
    corpus = SeqKDCorpus(path, {"beam": 5})
    out = corpus.build(ids[:4], translate, batch_size=2)
    assert out == {str(i): [i, i + 1] for i in range(4)}
    with path.open("a") as f:  # a kill mid-line
        f.write('{"id": "4", "tok')
    calls.clear()
    out = corpus.build(ids, translate, batch_size=2)
    assert calls == [["4", "5"], ["6"]]  # only what was missing, the torn line again
    assert out[str(6)] == [6, 7]
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 7 and json.loads(lines[0])["settings"] == {"beam": 5}
    with pytest.raises(SeqKDError, match="other settings"):
        SeqKDCorpus(path, {"beam": 4}).read()
    with pytest.raises(SeqKDError, match="returned 1 outputs for 2"):
        SeqKDCorpus(tmp_path / "b.jsonl", {}).build(["a", "b"], lambda x: [[1]])


def test_seq_inter_picks_the_hypothesis_nearest_the_reference():
    ref = "the cat sat on the mat"
    cands = ["a a a a", "the cat sat on a mat", "the dog ran"]
    assert closest_to_reference(cands, ref) == 1
    assert sentence_chrf(cands[1], ref) > sentence_chrf(cands[0], ref)
    assert closest_to_reference(["x", "y", "x"], ref) == 0  # ties: the teacher's better-ranked one
    assert closest_to_reference(["q", ref], ref) == 1 and sentence_chrf(ref, ref) == 100.0
    with pytest.raises(ValueError, match="no candidates"):
        closest_to_reference([], ref)
    assert check_seq_kd_select("closest") == "closest"
    with pytest.raises(ValueError, match="seq_kd_select must be one of best, closest, got 'nearest'"):
        check_seq_kd_select("nearest")


def test_degenerate_finds_runaway_repetition():
    assert degenerate([5, 6, 7, 5, 6, 7, 5, 6, 7])  # a 3-gram three times
    assert not degenerate([5, 6, 7, 5, 6, 7, 8])  # twice is a sentence that repeats itself once
    assert not degenerate([5, 5, 5, 5])  # two windows read "5 5 5"
    assert degenerate([5, 5, 5, 5, 5])  # three windows of "5 5 5"
    assert degenerate([1, 2, 1, 2], n=1, times=2) and not degenerate([1, 2, 3], n=1, times=2)
    assert not degenerate([]) and not degenerate([4, 4])
    with pytest.raises(ValueError, match="n must be >= 1 and times >= 2"):
        degenerate([1], n=0)


def test_targets_from_outputs_frame_each_output_and_keep_the_reference_for_loops():
    refs = [[2, 10, 11, 3], [9, 12, 3]]  # bos or a language tag first, eos last
    outs = [[20, 21], [5, 6, 7] * 3]
    assert targets_from_outputs(refs, outs) == ([[2, 20, 21, 3], [9, 12, 3]], 1)
    assert targets_from_outputs(refs, outs, filter_loops=False) == ([[2, 20, 21, 3], [9, *[5, 6, 7] * 3, 3]], 0)
    with pytest.raises(ValueError):
        targets_from_outputs(refs, outs[:1])  # one output per reference


def test_bad_kd_settings_are_named():
    for kwargs, key in (({"alpha": 2.0}, "alpha"), ({"temperature": 0.0}, "temperature"),
                        ({"prefix": 0.0}, "prefix"), ({"truncate": 1.5}, "truncate")):
        with pytest.raises(ValueError, match=key):
            KDConfig(**kwargs)
