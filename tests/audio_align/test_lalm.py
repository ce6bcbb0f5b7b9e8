"""The audio-language model: chat template, splicing, batched generation, model directories,
and a tiny model that learns to answer from the audio through the shared training loop."""

from __future__ import annotations

import json

import pytest
import torch

from audio_align import qa
from audio_align.evaluate import accuracy_table, answer, choose
from audio_align.lalm import (IGNORE, AudioLanguageModel, LalmConfig, LalmError, load_lalm_dir, pad_audio,
                              save_lalm_dir, sequence_logps, train_chat_tokenizer)
from audio_align.train import LalmRecipe, LalmTrainConfig, SceneSet, chat_batch
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


def test_guided_choice_picks_the_likeliest_whole_option(tok):
    """Batched and padded, guided choice picks the option with the highest log-probability of
    its pieces and <|im_end|>, as scoring each option alone does; bad options are refused."""
    model = _model(tok, seed=2).eval()
    states = [torch.randn(7, 8), torch.randn(3, 8), torch.randn(12, 8)]
    questions = ["Is there a bell in the recording?", "How many times did the drum sound?", "What do you hear?"]
    options = [["yes", "no"], ["1", "2", "3", "A bell."], ["Only background noise.", "A bell.", "no"]]
    picked = choose(model, tok, states, questions, options, batch=4)
    for s, q, opts, p in zip(states, questions, options, picked):
        alone = []
        for o in opts:
            b = chat_batch([tok.conversation([(q, o)], model.cfg.audio_tokens(len(s)))], [s])
            with torch.no_grad():
                lp, n = sequence_logps(model(b["input_ids"], b["attention_mask"], b["audio"], b["audio_lens"]),
                                       b["labels"])
            assert int(n) == len(tok.tok.encode(o)) + 1
            alone.append(float(lp))
        assert p == opts[max(range(len(opts)), key=alone.__getitem__)]
    assert choose(model, tok, states, questions, options, batch=1) == picked
    with pytest.raises(LalmError, match="non-empty options"):
        choose(model, tok, states[:1], questions[:1], [["yes", ""]])


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
    # guided choice among the possible answers hears the audio as well
    picked = choose(loaded, tok2, [s for s, _ in items], [q.question for _, q in items],
                    [["no", "yes"] if q.type == "present" else ["3", "2", "1"] for _, q in items])
    guided = accuracy_table([q for _, q in items], picked)
    assert guided["omission"]["accuracy"] == 1.0, picked
    assert guided["quantitative"]["accuracy"] >= 0.75, picked
    assert config["dev_scores"]["overall"] == pytest.approx(table["overall"]["accuracy"], abs=1e-4)


def test_speech_recognition_turns_from_a_speech_corpus(tok, tmp_path):
    """asr_corpus: the en-asr train utterances of a speech corpus become one-turn 'transcribe'
    conversations with their cached encoder states, in the align stage as in sft."""
    from audio_align.lalm import AudioFrontEnd
    from audio_align.train import load_asr_set
    from builders import TEXTS as SPEECH, UTTS, build_eval_corpus, make_model_dir
    from speech.config import ConfigError

    root = build_eval_corpus(tmp_path / "corpus", pairs=("en-asr",), split="train")
    frontend = AudioFrontEnd(str(make_model_dir(tmp_path / "asr", task="asr")), pool=2)
    asr = load_asr_set(str(root), frontend, limit=3)
    assert [qs[0].answer for qs in asr.questions] == SPEECH["en"][:3]
    assert all(len(qs) == 1 and qs[0].kind == qa.ASR and qs[0].question in qa.TRAIN_TEMPLATES["transcribe"]
               for qs in asr.questions)
    # each utterance is heard alone: its states follow its own duration (0.8, 1.0, 1.2 s)
    assert [s.shape[0] for s in asr.states] == sorted(s.shape[0] for s in asr.states)
    assert len({s.shape[0] for s in asr.states}) == 3 and asr.states[0].shape[1] == frontend.dim
    assert list((root / "en-asr" / "encoded").rglob("*.safetensors"))  # cached for the next run
    again = load_asr_set(str(root), frontend)
    assert len(again.scenes) == len(UTTS) and all(torch.equal(a, b) for a, b in zip(asr.states, again.states))
    model = _model(tok, dim=frontend.dim)
    cfg = LalmTrainConfig(out=str(tmp_path / "run"), stage="align", turns=2)
    scenes = _scene_set(2, 0)
    scenes.questions[0].append(qa.Question("s0", "caption", qa.CAPTION, "caption", "Describe it.", "A bell.", 0))
    mixed = SceneSet(scenes.scenes + asr.scenes, scenes.questions + asr.questions, scenes.states + asr.states)
    convs = LalmRecipe(cfg, model, tok, mixed, mixed, tmp_path / "run", {}, 1)._conversations(mixed, 0)
    assert sorted(convs) == [(0, (2,)), (2, (0,)), (3, (0,)), (4, (0,))]  # captions and transcripts only
    with pytest.raises(ConfigError, match="neither a folder nor a corpus"):
        load_asr_set(str(tmp_path / "nothing"), frontend)
    with pytest.raises(ConfigError, match="asr_corpus: .*en-asr"):
        load_asr_set(str(build_eval_corpus(tmp_path / "st", pairs=("en-de",), split="train")), frontend)


def test_frame_levels_are_the_power_of_each_span_in_db():
    import numpy as np

    from audio_align.lalm import LEVEL_FLOOR_DB, LEVEL_OFFSET_DB, LEVEL_SCALE_DB, frame_levels

    t = np.arange(1280) / 16000
    wave = np.concatenate([0.5 * np.sin(2 * np.pi * 400 * t), np.zeros(1280), 0.05 * np.ones(1280)])
    db = frame_levels(wave, 6)[:, 0].numpy() * LEVEL_SCALE_DB - LEVEL_OFFSET_DB
    # a sine of amplitude 0.5: power 0.125 (-9.03 dB); silence: the floor; DC 0.05: -26.02 dB
    assert db == pytest.approx([-9.03, -9.03, LEVEL_FLOOR_DB, LEVEL_FLOOR_DB, -26.02, -26.02], abs=0.01)
    assert frame_levels(wave, 7).shape == (7, 1)  # spans follow the encoder's frame count
    assert frame_levels(np.zeros(0), 2)[:, 0].tolist() == [(LEVEL_FLOOR_DB + LEVEL_OFFSET_DB) / LEVEL_SCALE_DB] * 2


def test_a_level_front_end_appends_a_column_the_cache_does_not_hold(tok, tmp_path):
    """level: the projector hears encoder_dim + 1 columns; the encoder cache keeps the states
    alone (shared with models without the column), the level read from the waveform."""
    import numpy as np
    import soundfile as sf

    from audio_align.encoded import encode_scenes
    from audio_align.lalm import AudioFrontEnd, frame_levels
    from builders import make_model_dir
    from speech.audio import load_audio

    encoder = str(make_model_dir(tmp_path / "asr", task="asr"))
    plain, loud = AudioFrontEnd(encoder, pool=2), AudioFrontEnd(encoder, pool=2, level=True)
    g = np.random.default_rng(0)
    root = tmp_path / "scenes"
    scenes = []
    for i, gain in enumerate((0.5, 0.05)):
        (root / "test").mkdir(parents=True, exist_ok=True)
        sf.write(root / "test" / f"s{i}.wav", (gain * g.standard_normal(16000)).astype(np.float32), 16000)
        scenes.append({"id": f"s{i}", "wav": f"s{i}.wav"})
    with_level = encode_scenes(root, "test", scenes, loud)
    cached = [f for f in (root / "encoded").rglob("*.safetensors")]
    without = encode_scenes(root, "test", scenes, plain)
    assert [f for f in (root / "encoded").rglob("*.safetensors")] == cached  # one cache for both
    for s in scenes:
        a, b = with_level[s["id"]], without[s["id"]]
        assert a.shape == (b.shape[0], plain.dim + 1) and torch.allclose(a[:, :-1], b.float())
    # the louder scene's column is 20 dB (1.0 in the column's units) above the quieter one's
    assert float((with_level["s0"][:, -1] - with_level["s1"][:, -1]).mean()) == pytest.approx(1.0, abs=0.05)
    w = load_audio(root / "test" / "s0.wav")
    assert torch.allclose(loud([w])[0][:, -1:], frame_levels(w, with_level["s0"].shape[0]))
    # a model of such a config takes the column, and keeps it through its directory
    torch.manual_seed(0)
    cfg = LalmConfig(encoder_dim=plain.dim, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64,
                     projector_dim=16, stride=2, vocab_size=tok.vocab_size, level=True)
    model = AudioLanguageModel(cfg, tok.audio).eval()
    loaded, tok2, _ = load_lalm_dir(save_lalm_dir(model, tok.tok.path, tmp_path / "m"))
    assert loaded.cfg.level and AudioFrontEnd.of(loaded.cfg).level
    states, q = [with_level["s0"]], ["Can you hear a bell?"]
    assert answer(loaded, tok2, states, q) == answer(model, tok, states, q)
    with pytest.raises(RuntimeError):  # the states without the column do not fit its projector
        answer(loaded, tok2, [without["s0"]], q)


def _own_ear_model(tok, tmp_path):
    """A LALM hearing through a tiny speech model, and that model's directory."""
    from builders import make_model_dir

    encoder = make_model_dir(tmp_path / "asr", task="asr")
    torch.manual_seed(0)
    cfg = LalmConfig(audio_encoder=str(encoder), encoder_dim=64, hidden_size=32, layers=1, heads=2, kv_heads=1,
                     intermediate_size=64, projector_dim=16, stride=2, vocab_size=tok.vocab_size)
    return AudioLanguageModel(cfg, tok.audio).eval(), encoder


def _noise(seconds: float, seed: int):
    import numpy as np

    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


def test_an_own_ear_hears_as_the_encoder_it_copies_and_survives_pruning(tok, tmp_path):
    """give_own_ear: the model's own copy of its encoder gives the same states, is saved in its
    directory and keys its own cache; pruned, its sizes go into the config and it still loads."""
    from audio_align.lalm import AudioFrontEnd, give_own_ear, sync_ear_config
    from compress.prune import PruneConfig, prune

    model, encoder = _own_ear_model(tok, tmp_path)
    waves = [_noise(1.0, 0), _noise(1.7, 1)]
    through = AudioFrontEnd(str(encoder), pool=2)(waves)
    give_own_ear(model)
    own = AudioFrontEnd.of(model.cfg, ear=model.ear)
    assert own.name.startswith("ear-") and own.name != through and own.dim == 64
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(own(waves), through))
    loaded, tok2, _ = load_lalm_dir(save_lalm_dir(model, tok.tok.path, tmp_path / "m"))
    again = AudioFrontEnd.of(loaded.cfg, ear=loaded.ear)
    assert again.name == own.name and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(again(waves), through))
    with pytest.raises(LalmError, match="encoder of its own"):
        AudioFrontEnd.of(loaded.cfg)
    prune(loaded, PruneConfig(importance="magnitude", heads={"ear": 0.5}, ffn={"ear": 0.5}, layers={"ear.layers": 1}),
          (), None)
    sync_ear_config(loaded)
    assert loaded.cfg.ear["model"]["encoder_layers"] == 1 and loaded.cfg.ear["model"]["encoder_layout"] == [[2, 64]]
    small, _, _ = load_lalm_dir(save_lalm_dir(loaded, tok.tok.path, tmp_path / "pruned"))
    cut = AudioFrontEnd.of(small.cfg, ear=small.ear)
    assert sum(p.numel() for p in small.ear.parameters()) < sum(p.numel() for p in model.ear.parameters())
    states = cut(waves)
    assert [s.shape for s in states] == [s.shape for s in through] and cut.name != own.name  # same frames, new states
    q = ["Can you hear a bell?"]
    assert answer(small, tok2, states[:1], q) == answer(loaded, tok2, states[:1], q)


def test_truncate_answers_keeps_the_first_part_of_each_answer():
    from audio_align.train import truncate_answers

    labels = torch.tensor([[IGNORE, 5, 6, 7, 8, IGNORE, IGNORE, 9, 10, IGNORE],
                           [IGNORE, IGNORE, 3, IGNORE, 4, 5, 6, 7, 8, 9]])
    assert truncate_answers(labels, 1.0) is labels
    half = truncate_answers(labels, 0.5)
    assert half.tolist() == [[IGNORE, 5, 6, IGNORE, IGNORE, IGNORE, IGNORE, 9, IGNORE, IGNORE],
                             [IGNORE, IGNORE, 3, IGNORE, 4, 5, 6, IGNORE, IGNORE, IGNORE]]
    assert truncate_answers(labels, 0.01).ne(IGNORE).sum(1).tolist() == [2, 2]  # at least one token of each


def test_the_ear_stage_teaches_a_pruned_encoder_the_teachers_states(tok, tmp_path):
    """stage ear: a one-layer cut of the encoder learns, from the waveforms, the pooled states
    the whole encoder gives; only the ear changes, and the model directory says how well."""
    import soundfile as sf

    from audio_align.lalm import AudioFrontEnd, give_own_ear, sync_ear_config
    from audio_align.train import EarRecipe
    from compress.prune import PruneConfig, prune

    model, encoder = _own_ear_model(tok, tmp_path)
    teacher_front = AudioFrontEnd(str(encoder), pool=2)
    give_own_ear(model)
    prune(model, PruneConfig(importance="magnitude", layers={"ear.layers": 1}), (), None)
    sync_ear_config(model)
    root = tmp_path / "scenes"
    sets = {}
    for split, n, seed in (("train", 8, 0), ("dev", 4, 100)):
        (root / split).mkdir(parents=True)
        scenes = []
        for i in range(n):
            sf.write(root / split / f"{i}.wav", _noise(0.6 + 0.1 * i, seed + i), 16000)
            scenes.append({"id": f"{split}{i}", "split": split, "wav": f"{i}.wav"})
        base = _scene_set(n, seed)
        states = teacher_front([_noise(0.6 + 0.1 * i, seed + i) for i in range(n)])
        sets[split] = SceneSet(scenes, base.questions, states)
    lm_before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    cfg = LalmTrainConfig(out=str(tmp_path / "run"), stage="ear", init="x", teacher="y", max_tokens=4000, max_items=4,
                          lr=3e-3, warmup_updates=5, max_updates=60, save_interval_updates=60,
                          validate_interval_updates=60, average_last=1, dev_eval_scenes=2, device="cpu", max_epochs=1000)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "spm.model").write_bytes(tok.tok.path.read_bytes())
    model.requires_grad_(False)
    model.ear.requires_grad_(True)
    recipe = EarRecipe(cfg, model, tok, root, sets["train"], sets["dev"], tmp_path / "run", {}, 1)
    before = recipe.dev_loss(model)
    final = run(recipe, model, cfg)
    loaded, _, config = load_lalm_dir(final)
    assert config["stage"] == "ear" and config["dev_mse"] < 0.5 * before, (before, config["dev_mse"])
    assert all(torch.equal(v, lm_before[k]) for k, v in loaded.lm.state_dict().items())
    with pytest.raises(Exception, match="stage=ear needs init"):
        LalmTrainConfig(stage="ear")


def test_kd_from_a_teacher_moves_the_students_answers_to_the_teachers(tok, tmp_path):
    """teacher: the loss is word-level KD on the answer tokens (alpha 1: the teacher's distribution
    alone); the student's answer distributions move to the teacher's."""
    teacher = _model(tok, seed=5)
    with torch.no_grad():  # a teacher with its own opinions: a large random output bias
        teacher.lm.model.norm.weight.mul_(4.0)
    student = _model(tok, seed=1)
    train, dev = _scene_set(8, 0), _scene_set(4, 1)
    cfg = LalmTrainConfig(out=str(tmp_path / "run"), turns=2, lr=1e-2, warmup_updates=5, max_updates=60,
                          save_interval_updates=60, validate_interval_updates=60, average_last=1, dev_eval_scenes=2,
                          device="cpu", max_epochs=1000, kd={"alpha": 1.0, "label_smoothing": 0.0})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "spm.model").write_bytes(tok.tok.path.read_bytes())
    recipe = LalmRecipe(cfg, student, tok, train, dev, tmp_path / "run", {}, 1, teacher, train.states)

    def kl() -> float:
        b = recipe._batch(dev, [(i, (0, 1)) for i in range(4)])
        with torch.no_grad():
            s = torch.log_softmax(student(b["input_ids"], b["attention_mask"], b["audio"], b["audio_lens"]), -1)
            t = torch.log_softmax(teacher(b["input_ids"], b["attention_mask"], b["audio"], b["audio_lens"]), -1)
        where = b["labels"][:, 1:] != IGNORE
        return float((t.exp() * (t - s)).sum(-1)[:, :-1][where].mean())

    before = kl()
    batch = recipe.make_batch([(0, (0, 1)), (1, (0, 1))], torch.Generator())
    assert "teacher_audio" in batch and "kd" in recipe.backward(student, [batch])
    student.zero_grad()
    run(recipe, student, cfg)
    assert kl() < 0.3 * before, (before, kl())


def test_the_compress_family_cuts_lm_layers_and_the_ear_and_the_cut_loads_from_its_config(tok, tmp_path):
    """LalmFamily.load gives the model its own ear; pruning whole LM layers (lm.model.layers) and
    ear layers, then save, gives a directory that loads from its own config and answers as the
    pruned model in memory did."""
    from audio_align.compressing import LalmFamily
    from compress.prune import PruneConfig, prune

    import dataclasses

    base, _ = _own_ear_model(tok, tmp_path)
    torch.manual_seed(3)
    cfg = dataclasses.replace(base.cfg, layers=3)
    src = save_lalm_dir(AudioLanguageModel(cfg, tok.audio).eval(), tok.tok.path, tmp_path / "m")
    family = LalmFamily()
    cut = family.load(src)
    assert cut.ear is not None and len(cut.ear.layers) == 2
    prune(cut, PruneConfig(importance="magnitude", layers={"lm.model.layers": [0, 2], "ear.layers": 1}), (), None)
    family.save(cut, src, tmp_path / "cut", {"pruned_from": str(src)})
    loaded, tok2, config = load_lalm_dir(tmp_path / "cut")
    assert config["lalm"]["layers"] == 2 and len(loaded.lm.model.layers) == 2
    assert config["lalm"]["ear"]["model"]["encoder_layers"] == 1 and config["pruned_from"] == str(src)
    states = [torch.randn(10, 64, generator=torch.Generator().manual_seed(0))]
    q = ["Can you hear a bell?"]
    assert answer(loaded, tok2, states, q) == answer(cut, tok, states, q)
    with torch.no_grad():
        b = chat_batch([tok.conversation([(q[0], "yes")], cfg.audio_tokens(10))], states)
        assert torch.allclose(loaded(b["input_ids"], b["attention_mask"], b["audio"], b["audio_lens"]),
                              cut(b["input_ids"], b["attention_mask"], b["audio"], b["audio_lens"]), atol=1e-5)
