"""Alignment against hallucination: counterfactual hard negatives, the preference losses,
the STA prefix token, and tiny models that learn to prefer the audio's answer."""

from __future__ import annotations

import math

import pytest
import torch

from audio_align import prefs, qa
from audio_align.align import (AlignConfig, AlignRecipe, PairSet, _keep_pairs, _prefix_model, preference_loss,
                               reference_logps)
from audio_align.evaluate import answer, compare
from audio_align.lalm import (IGNORE, AudioLanguageModel, LalmConfig, load_lalm_dir, save_lalm_dir, sequence_logps,
                              train_chat_tokenizer)
from audio_align.train import SceneSet
from speech.config import ConfigError
from speech.loop import run

CLASSES = ["bell", "phone ringing", "speech", "drum", "alarm", "siren", "crow", "beep", "door"]
RULES = [("phone ringing", "speech"), ("bell", "door")]
TEXTS = ["Is there a bell in the recording?", "Can you hear a bell?", "yes", "no", "A bell.", "Only background noise."]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_chat_tokenizer(TEXTS * 10, tmp_path_factory.mktemp("tok") / "spm.model", 100)


def _model(tok, seed=0, prefix=0):
    torch.manual_seed(seed)
    cfg = LalmConfig(encoder_dim=8, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64,
                     projector_dim=16, stride=2, vocab_size=tok.vocab_size, prefix_tokens=prefix)
    return AudioLanguageModel(cfg, tok.audio)


def _event(cls, onset, offset, level=-20.0, text=None):
    return {"class": cls, "source": "synth", "onset": onset, "offset": offset, "gain_db": 0.0, "level_db": level,
            "text": text, "voice": None}


# ---------------------------------------------------------------- losses

def test_preference_losses_match_their_formulas():
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    h = (pc - pr) - (rc - rr)
    beta = 0.5
    loss, got_h = preference_loss(pc, pr, rc, rr, "dpo", beta)
    assert torch.allclose(got_h, h) and torch.allclose(loss, -torch.log(torch.sigmoid(beta * h)))
    eps = 0.2
    cdpo, _ = preference_loss(pc, pr, rc, rr, "dpo", beta, eps)
    want = -(1 - eps) * torch.log(torch.sigmoid(beta * h)) - eps * torch.log(torch.sigmoid(-beta * h))
    assert torch.allclose(cdpo, want)
    robust, _ = preference_loss(pc, pr, rc, rr, "robust", beta, eps)
    want = ((1 - eps) * -torch.log(torch.sigmoid(beta * h)) + eps * torch.log(torch.sigmoid(-beta * h))) / (1 - 2 * eps)
    assert torch.allclose(robust, want)
    # robust DPO is unbiased: its expectation over labels flipped with probability eps is the clean loss
    flipped, _ = preference_loss(pr, pc, rr, rc, "robust", beta, eps)
    assert torch.allclose((1 - eps) * robust + eps * flipped, -torch.log(torch.sigmoid(beta * h)), atol=1e-6)
    ipo, _ = preference_loss(pc, pr, rc, rr, "ipo", beta)
    assert torch.allclose(ipo, (h - 1 / (2 * beta)) ** 2)
    # DPO pushes the chosen answer up and the rejected one down
    x = torch.zeros(2, requires_grad=True)
    preference_loss(x[:1], x[1:], torch.zeros(1), torch.zeros(1))[0].sum().backward()
    assert x.grad[0] < 0 < x.grad[1]
    with pytest.raises(ValueError, match="unknown"):
        preference_loss(pc, pr, rc, rr, "kto")


def test_sequence_logps_sum_the_labelled_tokens():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 1, 2, 6, 0]])
    lp, n = sequence_logps(logits, labels)
    ls = torch.log_softmax(logits, -1)
    assert n.tolist() == [2, 4]
    assert torch.allclose(lp[0], ls[0, 1, 3] + ls[0, 2, 4])
    assert torch.allclose(lp[1], ls[1, 0, 1] + ls[1, 1, 2] + ls[1, 2, 6] + ls[1, 3, 0])


def test_config_is_checked():
    with pytest.raises(ConfigError, match="method"):
        AlignConfig(method="ppo")
    with pytest.raises(ConfigError, match="train_params"):
        AlignConfig(train_params="head")
    with pytest.raises(ConfigError, match="label_smoothing"):
        AlignConfig(label_smoothing=0.5)
    with pytest.raises(ConfigError, match="beta"):
        AlignConfig(beta=float("nan"))
    with pytest.raises(ConfigError, match="sources"):
        AlignConfig(sources=["web"])


# ---------------------------------------------------------------- hard negatives

def _scene():
    return {"id": "s-1", "split": "train", "wav": "wav/s-1.wav", "duration": 12.0, "prior": "consistent",
            "prior_rule": "phone ringing->speech",
            "events": [_event("phone ringing", 0.5, 2.0, level=-10), _event("speech", 2.5, 4.5, text="It is cold today."),
                       _event("drum", 5.0, 5.3, level=-25), _event("drum", 7.0, 7.3, level=-25),
                       _event("bell", 9.0, 9.8, level=-30)]}


def test_rule_negatives_contradict_the_ground_truth_by_kind():
    scene = _scene()
    sentences = ["It is cold today.", "Lunch is on the table.", "Wash your hands.", "Close the door."]
    pairs = []
    for seed in range(6):
        qs = qa.questions_for(scene, "train", CLASSES, RULES, sentences, seed=seed)
        pairs += prefs.build_pairs([scene], [qs], CLASSES, RULES, seed=seed)
        by_q = {q.question: q for q in qs}
        for p in pairs[-len(qs):]:
            q = by_q.get(p.question)
            if q is None or q.kind == qa.CAPTION:
                continue
            assert not qa.is_correct(q, p.rejected) and qa.is_correct(q, p.chosen), p
            assert p.chosen == q.answer and p.kind == q.kind
    sources = {(p.type, p.source) for p in pairs}
    for want in [("present", "rule:flip_presence"), ("list", "rule:drop_event"), ("list", "rule:add_prior_event"),
                 ("sound_at", "rule:swap_identity"), ("before", "rule:reverse_order"),
                 ("count", "rule:change_count"), ("start", "rule:move_onset"), ("duration", "rule:change_duration"),
                 ("loudest", "rule:distractor"), ("caption", "rule:drop_event")]:
        assert want in sources, want
    # the prior's follower (a door after the bell), heard though it is not there
    added = [p for p in pairs if p.source == "rule:add_prior_event" and p.type == "list"]
    assert all("door" in p.rejected and "door" not in p.chosen for p in added)
    # the identity swap names the co-occurring class of the rule
    swaps = [p for p in pairs if p.type == "sound_at" and p.chosen == "phone ringing"]
    assert all(p.rejected == "speech" for p in swaps)
    table = prefs.provenance(pairs)
    assert table["rule:flip_presence"]["omission"] >= 6


def test_model_pairs_keep_only_refuted_distinct_answers():
    q = qa.Question("s", "count", "quantitative", "count", "How many times did the drum sound?", "2", 0)
    cap = qa.Question("s", "caption", "caption", "caption", "Describe it.", "A drum twice.", 0)
    pairs = prefs.model_pairs([q, cap], [["2", "three", "3", " three", ""], ["A drum.", "A bell."]])
    assert [(p.rejected, p.source) for p in pairs] == [("three", "model"), ("3", "model")]


def test_paraphrases_ask_the_training_scenes_again_in_other_wording():
    from audio_align.align import _pairs_for

    scenes = [dict(_scene(), id=f"s-{i}") for i in range(4)]
    questions = qa.build_questions(scenes, "train", CLASSES, RULES, seed=1)
    ss = SceneSet(scenes, [[q for q in questions if q.scene == s["id"]] for s in scenes], [torch.zeros(4, 8)] * 4)
    once = _pairs_for(AlignConfig(sources=["rule"], seed=1), None, None, ss, "train", CLASSES, RULES)
    thrice = _pairs_for(AlignConfig(sources=["rule"], seed=1, paraphrases=3), None, None, ss, "train", CLASSES, RULES)
    key = lambda p: (p.scene, p.question, p.chosen, p.rejected)  # noqa: E731
    assert [key(p) for p in thrice[:len(once)]] == [key(p) for p in once]  # the first draw is the plain run's
    assert len({key(p) for p in thrice}) == len(thrice) > 2 * len(once)
    assert len({p.question for p in thrice}) > 2 * len({p.question for p in once})
    # the dev split is never asked again
    dev = _pairs_for(AlignConfig(sources=["rule"], seed=1, paraphrases=3), None, None, ss, "dev", CLASSES, RULES)
    assert len(dev) == len(once)
    with pytest.raises(ConfigError, match="paraphrases"):
        AlignConfig(paraphrases=0)


def test_counterfactual_scenes_break_the_prior_in_the_audio():
    import numpy as np

    from audio_align.counterfactual import edit_scene, edit_scenes, edited_wave
    from audio_align.scenes import Rule

    rules = [Rule(a, b) for a, b in RULES]
    scene = _scene()  # phone ringing 0.5-2.0, speech 2.5-4.5 (the rule kept), drums, a bell
    sr = 100
    wave = np.zeros(1200)
    for k, e in enumerate(scene["events"], 1):  # each event's span holds its own value
        wave[int(e["onset"] * sr):int(e["offset"] * sr)] = k
    swapped, how = edit_scene(scene, "swap_order", rules)
    new = edited_wave(how, wave, sr)
    assert len(new) == len(wave) and swapped["prior"] == "breaking" and swapped["duration"] == 12.0
    at = {e["class"]: (e["onset"], e["offset"]) for e in swapped["events"]}
    assert at["speech"] == (0.5, 2.5) and at["phone ringing"] == (3.0, 4.5) and at["bell"] == (9.0, 9.8)
    assert set(new[50:250]) == {2.0} and set(new[300:450]) == {1.0} and set(new[250:300]) == {0.0}
    assert np.array_equal(new[450:], wave[450:])
    cut, how = edit_scene(scene, "remove_event", rules)
    new = edited_wave(how, wave, sr)
    assert len(new) == len(wave) - 200 and cut["duration"] == 10.0 and cut["prior"] == "breaking"
    assert "speech" not in {e["class"] for e in cut["events"]} and 2.0 not in set(new)
    assert [(e["class"], e["onset"]) for e in cut["events"]][1:] == [("drum", 3.0), ("drum", 5.0), ("bell", 7.0)]
    assert new[300] == 3.0 and new[700] == 5.0  # what followed moved 2 s earlier
    # asked of the edited scene, the prior-probing questions have the answers the prior would not give,
    # and their rule-made negatives are the original scene's answers
    for edited, want in ((swapped, {"before", "present"}), (cut, {"present"})):
        qs = qa.questions_for(edited, "train", CLASSES, RULES, ["It is cold today."], seed=0)
        probes = [q for q in qs if q.probes_prior]
        assert {q.type for q in probes} == want and all(q.prior == "breaking" for q in probes)
        for q in probes:
            if q.type == "present":
                assert q.answer == ("no" if edited is cut else "yes") and "speech" in q.question
            else:
                speech_first = q.question.index("speech") < q.question.index("phone")
                assert q.answer == ("yes" if speech_first else "no")
        made = prefs.build_pairs([edited], [probes], CLASSES, RULES)
        assert made and all(p.rejected != p.chosen for p in made)
    # no edit where another event overlaps what would move, nor on a scene without the prior
    crowded = dict(scene, events=scene["events"] + [_event("crow", 2.1, 2.4)])
    assert edit_scene(crowded, "swap_order", rules) is None and edit_scene(crowded, "remove_event", rules) is not None
    assert edit_scene(dict(scene, prior="none", prior_rule=None), "swap_order", rules) is None
    assert [e.kind for _, e in edit_scenes([scene, crowded], rules, 1)] == ["swap_order", "remove_event"]
    with pytest.raises(ValueError, match="edit"):
        edit_scene(scene, "reverse", rules)
    # the alignment's pairs: the prior's questions on the edited scenes and on their original
    from audio_align.align import _pairs_for

    both = [scene, swapped, cut]
    ss = SceneSet(both, [qa.questions_for(x, "train", CLASSES, RULES, ["It is cold today."], 0) for x in both],
                  [torch.zeros(4, 8)] * 3)
    made = _pairs_for(AlignConfig(sources=["rule"]), None, None, ss, "train", CLASSES, RULES)
    by_source = {p.source: p for p in made if p.source.startswith("counterfactual:")}
    assert {"counterfactual:swap_order/reverse_order", "counterfactual:remove_event/flip_presence",
            "counterfactual:original/reverse_order"} <= set(by_source)
    flip = by_source["counterfactual:remove_event/flip_presence"]
    assert (flip.chosen, flip.rejected, flip.scene) == ("no", "yes", "s-1~cut")
    assert all(p.source.startswith("rule:") for p in made if p.scene == "s-1" and "speech" not in p.question)


def test_pairs_file_round_trip(tmp_path):
    pairs = [prefs.Pair("s", "present", "omission", "Is there a bell?", "no", "yes", "rule:flip_presence", "breaking")]
    prefs.write_pairs(tmp_path / "p.jsonl", pairs, {"key": {"a": 1}})
    header, got = prefs.read_pairs(tmp_path / "p.jsonl")
    assert header == {"key": {"a": 1}} and got == pairs


# ---------------------------------------------------------------- the prefix token (STA)

def test_prefix_token_model_round_trip_and_batched_generation(tok, tmp_path):
    base = _model(tok, seed=3).eval()
    model = _prefix_model(base, tok, 1).eval()
    assert model.prefix.shape == (1, 32)
    assert torch.equal(model.prefix[0], model.lm.get_input_embeddings().weight[tok.im_start])
    states = [torch.randn(7, 8), torch.randn(3, 8)]
    questions = ["Is there a bell in the recording?", "Can you hear a bell?"]
    batched = answer(model, tok, states, questions, batch=2, max_new_tokens=6)
    assert batched == [answer(model, tok, [s], [q], max_new_tokens=6)[0] for s, q in zip(states, questions)]
    with torch.no_grad():
        model.prefix.normal_()
    out = save_lalm_dir(model, tok.tok.path, tmp_path / "m")
    loaded, _, config = load_lalm_dir(out)
    assert config["lalm"]["prefix_tokens"] == 1 and torch.equal(loaded.prefix, model.prefix)
    assert answer(loaded, tok, states, questions) == answer(model, tok, states, questions)


# ---------------------------------------------------------------- training

def _bell_scenes(n: int, seed: int) -> tuple[SceneSet, list[prefs.Pair]]:
    """Scenes whose 'audio' says whether a bell rings (the sign of the first channel); one
    question each, with the flipped answer as the rejected one."""
    g = torch.Generator().manual_seed(seed)
    scenes, questions, states, pairs = [], [], [], []
    for i in range(n):
        bell = i % 2 == 0
        x = 0.3 * torch.randn(10, 8, generator=g)
        x[:, 0] += 1.0 if bell else -1.0
        q = qa.Question(f"s{i}", "present", "omission", "yesno", "Is there a bell in the recording?",
                        "yes" if bell else "no", 0)
        scenes.append({"id": q.scene})
        questions.append([q])
        states.append(x)
        pairs.append(prefs.Pair(q.scene, q.type, q.kind, q.question, q.answer, "no" if bell else "yes",
                                "rule:flip_presence"))
    return SceneSet(scenes, questions, states), pairs


@pytest.mark.parametrize("train_params", ["all", "prefix"])
def test_preference_training_moves_a_model_toward_the_audio(tok, tmp_path, train_params):
    model = _model(tok, seed=5, prefix=1 if train_params == "prefix" else 0)
    scenes = {"train": _bell_scenes(16, 0)[0], "dev": _bell_scenes(8, 1)[0]}
    sets = {}
    for split, (_, pairs) in (("train", _bell_scenes(16, 0)), ("dev", _bell_scenes(8, 1))):
        ps = PairSet(pairs, list(range(len(pairs))))
        ps.ref = reference_logps(model, tok, scenes[split], ps)
        if train_params == "prefix":
            # one token for every input cannot make answers depend on the audio, but it can undo
            # the random model's bias (always "yes" or always "no"): STA's hard weighting keeps the
            # pairs the reference gets wrong
            ps = _keep_pairs(ps, AlignConfig(drop_margin_above=0.0))[0]
            assert len(ps.pairs) == len(pairs) // 2
        sets[split] = ps
    before = sets["train"].ref["chosen"] - sets["train"].ref["rejected"]
    if train_params == "prefix":
        assert bool((before < 0).all())
    if train_params == "prefix":
        model.requires_grad_(False)
        model.prefix.requires_grad_(True)
    cfg = AlignConfig(out=str(tmp_path / "run"), init="unused", beta=0.5, lr=0.1 if train_params == "prefix" else 1e-2,
                      warmup_updates=5, max_updates=40, save_interval_updates=40, validate_interval_updates=20,
                      average_last=1, max_items=16, dev_eval_scenes=8, device="cpu", max_epochs=1000,
                      train_params=train_params)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "spm.model").write_bytes(tok.tok.path.read_bytes())
    final = run(AlignRecipe(cfg, model, tok, scenes, sets, tmp_path / "run", {}, 1, {}), model, cfg)
    loaded, tok2, config = load_lalm_dir(final)
    after = reference_logps(loaded, tok2, scenes["train"], PairSet(sets["train"].pairs, sets["train"].scene_index))
    margin = after["chosen"] - after["rejected"]
    if train_params == "prefix":  # a 1-layer random model's 7-nat bias moves little, but on every pair
        assert bool((margin - before > 0.005).all()), margin - before
    else:
        assert float((margin - before).mean()) > 1.0 and float((margin > 0).float().mean()) == 1.0
        dev = reference_logps(loaded, tok2, scenes["dev"], PairSet(sets["dev"].pairs, sets["dev"].scene_index))
        assert float(((dev["chosen"] - dev["rejected"]) > 0).float().mean()) == 1.0  # unseen scenes too
    assert config["stage"] == "align" and "omission" in config["dev_scores"]
    if train_params == "prefix":  # only the steering token moved
        base = _model(tok, seed=5, prefix=1)
        assert torch.equal(loaded.lm.model.layers[0].mlp.up_proj.weight, base.lm.model.layers[0].mlp.up_proj.weight)
        assert not torch.equal(loaded.prefix, base.prefix)


def test_hard_weighting_drops_pairs_by_the_reference_margin():
    pairs = [prefs.Pair(f"s{i}", "present", "omission", "q", "yes", "no", "rule:flip_presence") for i in range(4)]
    ps = PairSet(pairs, [0, 1, 2, 3], {"chosen": torch.tensor([-1.0, -1.0, -5.0, -0.1]),
                                       "rejected": torch.tensor([-9.0, -1.5, -1.0, -0.2]),
                                       "chosen_n": torch.ones(4), "rejected_n": torch.ones(4)})
    kept, info = _keep_pairs(ps, AlignConfig(drop_margin_above=2.0, drop_margin_below=-3.0))
    assert info == {"pairs": 4, "kept": 2} and [p.scene for p in kept.pairs] == ["s1", "s3"]
    assert kept.ref["chosen"].tolist() == [-1.0, pytest.approx(-0.1)]
    assert _keep_pairs(ps, AlignConfig())[1]["kept"] == 4 and math.isinf(AlignConfig().drop_margin_above)


def test_compare_gives_paired_differences():
    qs = [qa.Question(f"s{i}", "present", "omission", "yesno", "q", "yes", 0) for i in range(40)]
    qs += [qa.Question(f"g{i}", "length", "general", "choice", "q", "4 seconds", 0) for i in range(20)]
    base = [i % 2 == 0 for i in range(60)]
    new = [True] * 40 + base[40:]
    cmp = compare(qs, new, base)
    assert cmp["omission"]["delta"] == pytest.approx(0.5) and cmp["omission"]["ci95"][0] > 0.3
    assert cmp["general"]["delta"] == 0.0 and cmp["general"]["ci95"] == [0.0, 0.0]
    assert cmp["overall"]["baseline"] == pytest.approx(0.5) and cmp["overall"]["n"] == 60


# ---------------------------------------------------------------- CoDA

def test_coda_scales_audio_values_in_the_chosen_heads_only(tok):
    from audio_align.coda import amplified, audio_attention, select_heads

    cfg = LalmConfig(encoder_dim=8, hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64,
                     projector_dim=16, stride=2, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = AudioLanguageModel(cfg, tok.audio).eval()
    states = [torch.randn(8, 8), torch.randn(5, 8)]
    questions = ["Is there a bell in the recording?", "Can you hear a bell?"]
    v = model.lm.model.layers[1].self_attn.v_proj
    seen: list[torch.Tensor] = []

    def record(m, a, out):
        seen.append(out.detach().clone())

    handle = v.register_forward_hook(record)
    plain = answer(model, tok, states, questions, max_new_tokens=4)
    handle.remove()
    base = seen[0]  # the prompt pass
    seen.clear()
    with amplified(model, [(1, 0)], 3.0):
        handle = v.register_forward_hook(record)  # after CoDA's hook: it sees the scaled values
        answer(model, tok, states, questions, max_new_tokens=4)
        handle.remove()
    amp = seen[0]
    order = sorted(range(2), key=lambda i: len(states[i]))  # answer() batches by audio length, left-padded
    width = base.shape[1]
    prompt = tok.prompt(questions[order[-1]], cfg.audio_tokens(len(states[order[-1]])))
    audio = torch.tensor([False] * (width - len(prompt)) + [i == tok.audio for i in prompt])
    row = 1  # the longer audio is the batch's second row
    assert torch.allclose(amp[row][audio][:, :8], 3 * base[row][audio][:, :8], atol=1e-6)
    assert torch.equal(amp[row][~audio], base[row][~audio]) and torch.equal(amp[row][:, 8:], base[row][:, 8:])
    assert v._forward_hooks == {} and "embed" not in model.__dict__  # everything undone after the block
    with amplified(model, [(1, 0)], 1.0):  # scale 1 is the model itself
        assert answer(model, tok, states, questions, max_new_tokens=4) == plain
    share = audio_attention(model, tok, states, questions)
    assert share.shape == (2, 4) and bool(((share >= 0) & (share <= 1)).all())
    heads = select_heads(model, tok, states, questions, top_k=2)
    kv = share.view(2, 2, 2).mean(-1)
    assert heads[0] == tuple(int(x) for x in divmod(int(kv.argmax()), 2)) and len(set(heads)) == 2
    with pytest.raises(ValueError, match="not in a model"):
        with amplified(model, [(5, 0)], 2.0):
            pass
