"""The audio-language model: chat template, splicing, batched generation, model directories,
and a tiny model that learns to answer from the audio through the shared training loop."""

from __future__ import annotations

import json

import pytest
import torch

from audio_align import qa
from audio_align.evaluate import accuracy_table, answer
from audio_align.lalm import (IGNORE, AudioLanguageModel, LalmConfig, LalmError, load_lalm_dir, pad_audio,
                              save_lalm_dir, train_chat_tokenizer)
from audio_align.train import LalmRecipe, LalmTrainConfig, SceneSet
from speech.loop import run

TEXTS = ["Is there a bell in the recording?", "Can you hear a bell?", "yes", "no",
         "How many times did the drum sound?", "1", "2", "3", "A bell.", "Only background noise."]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_chat_tokenizer(TEXTS * 10, tmp_path_factory.mktemp("tok") / "spm.model", 120)


def _model(tok, seed=0, dim=8):
    torch.manual_seed(seed)
    cfg = LalmConfig(encoder_dim=dim, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64,
                     projector_dim=16, stride=2, vocab_size=tok.vocab_size)
    return AudioLanguageModel(cfg, tok.audio)


def test_conversation_labels_only_the_answers(tok):
    ids, labels = tok.conversation([("Is there a bell in the recording?", "yes"), ("Can you hear a bell?", "no")], 3)
    assert len(ids) == len(labels) and ids.count(tok.audio) == 3
    kept = [i for i, y in zip(ids, labels) if y != IGNORE]
    assert kept == tok.tok.encode("yes") + [tok.im_end] + tok.tok.encode("no") + [tok.im_end]
    prompt = tok.prompt("Is there a bell in the recording?", 3)
    assert ids[:len(prompt)] == prompt  # what generation continues is what training saw


def test_batched_generation_matches_one_by_one(tok):
    model = _model(tok).eval()
    states = [torch.randn(7, 8), torch.randn(3, 8), torch.randn(12, 8)]
    questions = ["Is there a bell in the recording?", "Can you hear a bell?", "How many times did the drum sound?"]
    batched = answer(model, tok, states, questions, batch=3, max_new_tokens=6)
    single = [answer(model, tok, [s], [q], max_new_tokens=6)[0] for s, q in zip(states, questions)]
    assert batched == single


def test_placeholder_count_must_match_the_audio(tok):
    model = _model(tok)
    audio, lens = pad_audio([torch.randn(6, 8)])
    ids = torch.tensor([tok.prompt("Can you hear a bell?", 2)])  # 6 frames at stride 2 are 3 tokens
    with pytest.raises(LalmError, match="placeholders"):
        model.embed(ids, audio, lens)


def test_model_directory_round_trip_and_bad_directories(tok, tmp_path):
    model = _model(tok).eval()
    out = save_lalm_dir(model, tok.tok.path, tmp_path / "m", extra={"note": "test"})
    loaded, tok2, config = load_lalm_dir(out)
    states, q = [torch.randn(5, 8)], ["Can you hear a bell?"]
    assert answer(loaded, tok2, states, q) == answer(model, tok, states, q)
    assert config["note"] == "test"
    with pytest.raises(LalmError, match="config.json not found"):
        load_lalm_dir(tmp_path / "nothing")
    (out / "config.json").write_text(json.dumps({"family": "s2t"}))
    with pytest.raises(LalmError, match="not a LALM config"):
        load_lalm_dir(out)
    save_lalm_dir(model, tok.tok.path, out)
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LalmError, match="model.safetensors"):
        load_lalm_dir(out)


def _scene_set(n: int, seed: int) -> SceneSet:
    """Scenes whose 'audio' says whether a bell rings (the sign of every frame) and how many
    times a drum beats (the level of the second channel): the answers are in the audio only."""
    g = torch.Generator().manual_seed(seed)
    scenes, questions, states = [], [], []
    for i in range(n):
        bell = i % 2 == 0
        beats = 1 + (i // 2) % 3
        x = 0.3 * torch.randn(12, 8, generator=g)
        x[:, 0] += 1.0 if bell else -1.0
        x[:, 1] += 2.0 * (beats - 2)
        sid = f"s{i}"
        scenes.append({"id": sid})
        questions.append([qa.Question(sid, "present", "omission", "yesno", "Is there a bell in the recording?",
                                      "yes" if bell else "no", 0),
                          qa.Question(sid, "count", "quantitative", "count", "How many times did the drum sound?",
                                      str(beats), 0)])
        states.append(x)
    return SceneSet(scenes, questions, states)


def test_a_tiny_lalm_learns_to_answer_from_the_audio(tok, tmp_path):
    model = _model(tok, seed=1)
    cfg = LalmTrainConfig(out=str(tmp_path / "run"), turns=2, max_tokens=4000, lr=1e-2, warmup_updates=30,
                          max_updates=300, save_interval_updates=300, validate_interval_updates=300,
                          average_last=1, dev_eval_scenes=12, device="cpu", max_epochs=1000)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "spm.model").write_bytes(tok.tok.path.read_bytes())
    train, dev = _scene_set(24, 0), _scene_set(12, 1)
    final = run(LalmRecipe(cfg, model, tok, train, dev, tmp_path / "run", {}, 1), model, cfg)
    loaded, tok2, config = load_lalm_dir(final)
    items = [(s, q) for s, qs in zip(dev.states, dev.questions) for q in qs]
    preds = answer(loaded, tok2, [s for s, _ in items], [q.question for _, q in items])
    table = accuracy_table([q for _, q in items], preds)
    assert table["omission"]["accuracy"] == 1.0, preds
    assert table["quantitative"]["accuracy"] >= 0.75, preds
    assert config["dev_scores"]["overall"] == pytest.approx(table["overall"]["accuracy"], abs=1e-4)
