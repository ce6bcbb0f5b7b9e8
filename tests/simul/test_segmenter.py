"""simul.segmenter on synthetic streams whose boundaries are learnable.

The grammar: subject + (adverb) + verb + object, and either the sentence ends with a
particle (了吗呢吧, which occur nowhere else) or the next sentence starts with a
connective (所以但是然后, idem). So half the boundaries show left of the gap and half
only in the lookahead, right of it.
"""

import dataclasses
import json
import random

import pytest
import torch

from simul.segmenter import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BoundaryModel,
    Segmenter,
    SegmenterConfig,
    SegmenterFileError,
    cut_positions,
    train_segmenter,
)

SUBJECTS = ["我", "你", "他", "她", "我们", "老师", "学生", "妈妈"]
ADVERBS = ["", "", "也", "都", "今天", "常常"]
VERBS = ["喜欢", "看", "买", "想要", "学习", "认识", "找到"]
OBJECTS = ["苹果", "书", "电影", "汉语", "咖啡", "面包", "朋友", "音乐"]
PARTICLES = ["了", "吗", "呢", "吧"]
CONNECTIVES = ["所以", "但是", "然后"]

# small and quick; the defaults are for real data
CFG = SegmenterConfig(dim=32, hidden=64, epochs=3, batch_size=64, lr=3e-3)


def make_streams(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    streams = []
    for _ in range(n):
        sentences, marked = [], True  # the stream's start needs no marker
        for _ in range(rng.randint(2, 6)):
            start = "" if marked and rng.random() < 0.7 else rng.choice(CONNECTIVES)
            end = rng.choice(PARTICLES) if rng.random() < 0.5 else ""
            body = rng.choice(SUBJECTS) + rng.choice(ADVERBS) + rng.choice(VERBS) + rng.choice(OBJECTS)
            sentences.append(start + body + end)
            marked = bool(end)
        streams.append(sentences)
    return streams


def resplit(streams: list[list[str]], seed: int) -> list[list[str]]:
    """The same characters and number of boundaries, cut at random places: no signal."""
    rng = random.Random(seed)
    out = []
    for sentences in streams:
        text = "".join(sentences)
        cuts = sorted(rng.sample(range(1, len(text)), len(sentences) - 1))
        out.append([text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])])
    return out


@pytest.fixture(scope="module")
def data():
    return make_streams(200, seed=0), make_streams(40, seed=1), make_streams(60, seed=2)


@pytest.fixture(scope="module")
def trained(one_thread, data):
    train, dev, _ = data
    return train_segmenter(train, CFG, dev_streams=dev)


def test_learns_boundaries_on_held_out_streams(trained, data):
    scores = trained.evaluate(data[2])
    assert scores["f1"] >= 0.9, scores
    assert scores["tp"] + scores["fn"] == sum(len(s) - 1 for s in data[2])


def test_random_labels_do_not_learn(one_thread, data):
    train, _, test = data
    scores = train_segmenter(resplit(train, seed=3), CFG).evaluate(test)
    assert scores["f1"] < 0.5, scores


def test_lookahead_is_what_finds_unmarked_ends(one_thread, data):
    """Without lookahead the connective that opens the next sentence is out of sight."""
    train, _, test = data
    scores = train_segmenter(train, dataclasses.replace(CFG, lookahead=0)).evaluate(test)
    assert scores["f1"] < 0.85, scores


def test_same_seed_same_probs_other_seed_differs(trained, data):
    text = "".join(data[2][0])
    again = train_segmenter(data[0], CFG)
    assert again.boundary_probs(text) == trained.boundary_probs(text)
    other = train_segmenter(data[0], dataclasses.replace(CFG, seed=2))
    assert other.boundary_probs(text) != trained.boundary_probs(text)


def test_training_leaves_global_rng_alone(one_thread, data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_segmenter(data[0][:20], SegmenterConfig(dim=8, hidden=8, epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_streaming_prob_equals_batch_prob(trained, data):
    """What an agent sees once p + lookahead characters are read is the full-stream score."""
    text = "".join(data[2][1]) + "未见过的字"  # unseen characters go to unk
    full = trained.boundary_probs(text)
    assert len(full) == len(text) - 1
    la = trained.cfg.lookahead
    for p in range(1, len(text)):
        read = text[:min(p + la, len(text))]
        assert trained.prob(read, p) == pytest.approx(full[p - 1], abs=1e-6)
    assert trained.boundary_probs("") == [] and trained.boundary_probs("我") == []
    with pytest.raises(ValueError, match="outside"):
        trained.prob("我们", 3)


def test_save_load_round_trip(trained, data, tmp_path):
    trained.save(tmp_path / "seg")
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    config = json.loads((tmp_path / "seg" / CONFIG_FILE).read_text(encoding="utf-8"))
    assert config["vocab"] == trained.vocab and config["config"]["context"] == CFG.context
    loaded = Segmenter.load(tmp_path / "seg")
    assert loaded.cfg == trained.cfg and loaded.vocab == trained.vocab
    for sentences in data[2][:5]:
        text = "".join(sentences)
        assert loaded.boundary_probs(text) == trained.boundary_probs(text)


def _drop_weights(d):
    (d / WEIGHTS_FILE).unlink()


def _drop_config(d):
    (d / CONFIG_FILE).unlink()


def _garble_weights(d):
    (d / WEIGHTS_FILE).write_bytes(b"\x00not a safetensors file" * 4)


def _truncate_weights(d):
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


def _garble_config(d):
    (d / CONFIG_FILE).write_text("{not json", encoding="utf-8")


def _edit_config(**changes):
    def edit(d):
        data = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
        data["config"].update(changes)
        (d / CONFIG_FILE).write_text(json.dumps(data), encoding="utf-8")
    return edit


@pytest.mark.parametrize("damage, bad_file, message", [
    (_drop_weights, WEIGHTS_FILE, "not found"),
    (_drop_config, CONFIG_FILE, "not found"),
    (_garble_weights, WEIGHTS_FILE, "cannot read"),
    (_truncate_weights, WEIGHTS_FILE, "cannot read"),
    (_garble_config, CONFIG_FILE, "invalid JSON"),
    (_edit_config(hidden=65), WEIGHTS_FILE, "tensor 'conv.weight'"),
    (_edit_config(lookahead=3), WEIGHTS_FILE, "tensor 'hidden.weight'"),
    (_edit_config(context="8"), CONFIG_FILE, "config.context"),
    (_edit_config(extra=1), CONFIG_FILE, "config.extra"),
])
def test_load_names_the_bad_file(trained, tmp_path, damage, bad_file, message):
    d = trained.save(tmp_path / "seg")
    damage(d)
    with pytest.raises(SegmenterFileError, match=message) as info:
        Segmenter.load(d)
    assert str(d / bad_file) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_cut_positions_threshold_and_max_len():
    probs = [0.1, 0.9, 0.2, 0.2, 0.2, 0.2, 0.5, 0.1]  # positions 1..8 of a 9-character text
    assert cut_positions(probs, 0.5) == [2, 7]
    assert cut_positions(probs, 0.95) == []
    assert cut_positions(probs, 0.95, max_len=3) == [3, 6]
    # a forced cut restarts the count; a threshold cut does too
    assert cut_positions(probs, 0.5, max_len=3) == [2, 5, 7]
    assert cut_positions(probs, 0.5, max_len=1) == list(range(1, 9))
    assert cut_positions([], 0.5, max_len=2) == []
    with pytest.raises(ValueError, match="max_len"):
        cut_positions(probs, 0.5, max_len=0)


def test_cut_keeps_every_segment_within_max_len(trained, data):
    text = "".join(s for stream in data[2][:3] for s in stream)
    cuts = trained.cut(text, threshold=1.1, max_len=7)  # nothing passes the threshold: all forced
    edges = [0] + cuts + [len(text)]
    assert all(0 < b - a <= 7 for a, b in zip(edges, edges[1:]))
    probs = trained.boundary_probs(text)
    assert trained.cut(text, 0.5, 20) == cut_positions(probs, 0.5, 20) == trained.cut(text, 0.5, 20, probs)
    with pytest.raises(ValueError, match="probabilities"):
        trained.cut(text, 0.5, probs=probs[:-1])


def test_config_checks_and_model_size():
    with pytest.raises(ValueError, match="context"):
        SegmenterConfig(context=0)
    with pytest.raises(ValueError, match="lookahead"):
        SegmenterConfig(lookahead=-1)
    cfg = SegmenterConfig()
    model = BoundaryModel(cfg.vocab_size, cfg)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert model(torch.zeros(5, cfg.window, dtype=torch.long)).shape == (5,)


def test_no_boundaries_is_an_error():
    with pytest.raises(ValueError, match="no sentence boundaries"):
        train_segmenter([["我喜欢书"], ["她看电影"]], CFG)
