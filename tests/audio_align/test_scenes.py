"""Sound scenes: the mix is exactly what the ground truth says, and the corpus is
deterministic, resumable, holds material out of train and breaks its priors in test."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_align.scenes import (
    CLASSES, RULES, SENTENCES, SceneCorpusBuilder, SceneCorpusConfig, SceneError, build_scene_corpus, level_db,
    mix_scene, read_scenes, synthesize,
)
from speech.config import ConfigError, load_config

SR = 16000
TINY = Path(__file__).resolve().parents[2] / "audio_align" / "configs" / "data_scenes_tiny.yaml"
KEYS = {"id", "split", "wav", "duration", "background", "prior", "prior_rule", "events"}
EVENT_KEYS = {"class", "source", "onset", "offset", "gain_db", "level_db", "text", "voice"}


# ---------------------------------------------------------------- the mixer, on known signals


def band(wave: np.ndarray, freq: float, width: float = 150.0) -> np.ndarray:
    """``wave`` band-passed to freq +- width (zero phase, by masking its spectrum)."""
    spec = np.fft.rfft(wave)
    f = np.fft.rfftfreq(len(wave), 1 / SR)
    spec[np.abs(f - freq) > width] = 0
    return np.fft.irfft(spec, len(wave))


def envelope(x: np.ndarray, win: int = 80) -> np.ndarray:
    return np.sqrt(np.convolve(x**2, np.ones(win) / win, mode="same"))


TONES = [(500.0, 0.50, -6.0), (1500.0, 0.62, -14.0), (3000.0, 1.23, -3.0), (500.0, 2.10, -9.5)]


def tones(rng):
    return [synthesize("beep", int(f), 0.4, rng) for f, _, _ in TONES]


def test_mix_is_exact_and_recoverable():
    rng = np.random.default_rng(0)
    sigs = tones(rng)
    bg = rng.standard_normal(3 * SR) * 0.01
    mix = mix_scene([(s, on, g) for s, (_, on, g) in zip(sigs, TONES)], (bg, -10.0), 3.0)
    assert mix.wave.shape == (3 * SR,) and mix.scale_db == 0.0
    # the wave is the sum of its parts
    parts = 10 ** (-10.0 / 20) * bg
    for s, (_, on, g) in zip(sigs, TONES):
        placed = np.zeros(3 * SR)
        placed[round(on * SR):round(on * SR) + len(s)] = 10 ** (g / 20) * s
        parts = parts + placed
    np.testing.assert_allclose(mix.wave, parts, rtol=0, atol=1e-12)
    # each tone's onset (within 10 ms) and level (within 0.5 dB) come back from the waveform alone
    for k, (freq, onset, gain) in enumerate(TONES):
        filtered = band(mix.wave, freq)
        lo = round((onset - 0.2) * SR)
        env = envelope(filtered[lo:lo + round(0.8 * SR)])  # the tone and nothing else of its band
        found = (lo + int(np.argmax(env > 0.5 * env.max()))) / SR
        assert abs(found - onset) < 0.010, (freq, onset, found)
        start = round(onset * SR)
        measured = level_db(filtered[start:start + len(sigs[k])])
        assert abs(measured - mix.level_db[k]) < 0.5, (freq, measured, mix.level_db[k])
        assert mix.gain_db[k] == gain


def test_mix_scales_down_instead_of_clipping():
    rng = np.random.default_rng(1)
    sigs = tones(rng)
    events = [(s, 0.5, 0.0) for s in sigs[:3]]  # three full-scale tones on top of each other
    mix = mix_scene(events, None, 1.5)
    assert np.abs(mix.wave).max() == pytest.approx(0.99)
    assert mix.scale_db < -3.0 and mix.background_gain_db is None
    assert all(g == pytest.approx(mix.scale_db) for g in mix.gain_db)
    for s, g, lvl in zip(sigs, mix.gain_db, mix.level_db):  # levels are those of the scaled mix
        assert lvl == pytest.approx(level_db(10 ** (g / 20) * s))
    np.testing.assert_allclose(mix.wave[8000:8000 + len(sigs[0])],
                               sum(10 ** (mix.scale_db / 20) * s for s in sigs[:3]), atol=1e-12)
    with pytest.raises(SceneError, match="does not fit"):
        mix_scene([(sigs[0], 1.4, 0.0)], None, 1.5)


# ---------------------------------------------------------------- the tiny corpus, built for real

def tiny(**over) -> SceneCorpusConfig:
    return load_config(SceneCorpusConfig, TINY, [f"{k}={v}" for k, v in over.items()])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny corpus built in one home, and again in a second home that shares only the
    unpacked sound packages (speech is synthesized again)."""
    if any(shutil.which(p) is None for p in ("apt-get", "dpkg", "espeak-ng", "flite", "sox")):
        pytest.skip("needs apt-get/dpkg for the sound packages and espeak-ng, flite and sox (make install)")
    home_a = tmp_path_factory.mktemp("home_a")
    summary = build_scene_corpus(tiny(), home_a)
    home_b = tmp_path_factory.mktemp("home_b")
    (home_b / "packages").symlink_to(home_a / "packages")
    summary_b = build_scene_corpus(tiny(), home_b)
    return home_a, summary, home_b, summary_b


def all_scenes(root):
    return {split: read_scenes(root, split) for split in ("train", "dev", "test")}


def test_layout_and_ground_truth(corpus):
    home, summary, _, _ = corpus
    root = Path(summary["root"])
    assert root == home / "scenes" / "tiny"
    assert summary["classes"] == sorted(CLASSES) and 18 <= len(CLASSES) <= 24
    assert {s: v["scenes"] for s, v in summary["splits"].items()} == {"train": 12, "dev": 4, "test": 8}
    manifest = json.loads((root / "manifest.json").read_text())
    assert {"config", "classes", "heldout_sources", "rules", "splits"} <= set(manifest)
    assert manifest["splits"] == {"train": 12, "dev": 4, "test": 8}
    assert [r["name"] for r in manifest["rules"]] == [r.name for r in RULES]
    checked = 0
    for split, scenes in all_scenes(root).items():
        assert [s["id"] for s in scenes] == sorted(s["id"] for s in scenes)
        assert summary["splits"][split]["events"] == sum(len(s["events"]) for s in scenes)
        for s in scenes:
            assert set(s) == KEYS and s["split"] == split and s["wav"] == f"wav/{s['id']}.wav"
            assert set(s["background"]) == {"source", "gain_db"}
            info = sf.info(root / split / s["wav"])
            assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
            assert info.frames == round(s["duration"] * SR)
            assert 4.0 <= s["duration"] <= 10.0 and 1 <= len(s["events"])
            onsets = [e["onset"] for e in s["events"]]
            assert onsets == sorted(onsets)
            for a in s["events"]:  # events of one class never overlap, so they can be counted
                for b in s["events"]:
                    if a is not b and a["class"] == b["class"]:
                        assert a["offset"] <= b["onset"] or b["offset"] <= a["onset"]
            wave, _ = sf.read(root / split / s["wav"])
            for e in s["events"]:
                assert set(e) == EVENT_KEYS and e["class"] in CLASSES
                assert 0 <= e["onset"] < e["offset"] <= s["duration"]
                assert (e["text"] is not None) == (e["class"] == "speech")
                assert e["voice"] is None or (e["class"] == "speech" and e["source"] == f"tts:{e['voice']}")
                # an event alone in its span: the wav's level there is the recorded level (the
                # background sits 20 dB or more below every event)
                others = [o for o in s["events"] if o is not e]
                if all(o["offset"] <= e["onset"] or o["onset"] >= e["offset"] for o in others):
                    span = wave[round(e["onset"] * SR):round(e["offset"] * SR)]
                    assert level_db(span) == pytest.approx(e["level_db"], abs=0.5)
                    checked += 1
    assert checked >= 20


def test_priors_are_kept_in_train_and_broken_in_test(corpus):
    _, summary, _, _ = corpus
    scenes = all_scenes(summary["root"])
    rules = {r.name: r for r in RULES}
    breaking = [s for s in scenes["test"] if s["prior"] == "breaking"]
    assert breaking and any(s["prior"] == "consistent" for s in scenes["test"])
    for split, items in scenes.items():
        for s in items:
            triggers = [r for r in RULES if any(e["class"] == r.trigger for e in s["events"])]
            assert len(triggers) <= 1
            if s["prior"] == "none":
                assert not triggers and s["prior_rule"] is None
                continue
            rule = rules[s["prior_rule"]]
            assert triggers == [rule]
            trig = [e for e in s["events"] if e["class"] == rule.trigger]
            cons = [e for e in s["events"] if e["class"] == rule.consequent]
            assert len(trig) == 1 and len(cons) <= 1
            if s["prior"] == "breaking":  # the consequent is absent, or comes before the trigger
                assert all(c["onset"] < trig[0]["onset"] for c in cons)
            else:
                assert s["prior"] == "consistent"
                assert len(cons) == 1 and 0 <= cons[0]["onset"] - trig[0]["offset"] <= rule.within


def test_heldout_material_only_in_test(corpus):
    home, summary, _, _ = corpus
    manifest = json.loads((Path(summary["root"]) / "manifest.json").read_text())
    held = set(manifest["heldout_sources"])
    held_text = set(manifest["heldout_sentences"])
    assert any(h.startswith("sonic-pi-samples:") for h in held) and "tts:flite:awb" in held
    # judged on many planned scenes (drawn without audio) as well as on the built ones
    builder = SceneCorpusBuilder(tiny(train_scenes=300, dev_scenes=50, test_scenes=300), home)
    planned = builder.contents()
    used: dict[str, set] = {}
    for split, contents in planned.items():
        used[split] = {e.source for c in contents for e in c.events}
        for c in contents:
            for e in c.events:
                if e.synth is not None:
                    kind, param, _ = e.synth
                    in_held = any(lo <= param < hi for lo, hi in manifest["heldout_synth"][kind])
                    assert in_held is False or split == "test", (split, e.source)
                if e.voice is not None:
                    assert (e.text in held_text) == (split == "test")
    for split in ("train", "dev"):
        assert not used[split] & held, used[split] & held
    assert used["test"] & held and used["test"] - held
    for split, items in all_scenes(summary["root"]).items():
        if split != "test":
            assert not {e["source"] for s in items for e in s["events"]} & held
    # priors at scale: 30% of train scenes hold a trigger, 90% of those keep the rule;
    # 40% of test scenes, half of which break it
    modes = {split: [c.mode for c in contents] for split, contents in planned.items()}
    assert modes["train"].count("none") == 300 - 90 and modes["train"].count("consistent") == 81
    assert modes["test"].count("none") == 300 - 120
    assert modes["test"].count("absent") == modes["test"].count("before") == 30


def test_deterministic_and_resumable(corpus):
    home_a, summary_a, home_b, summary_b = corpus
    root_a, root_b = Path(summary_a["root"]), Path(summary_b["root"])
    for split in ("train", "dev", "test"):
        assert (root_a / split / "scenes.jsonl").read_bytes() == (root_b / split / "scenes.jsonl").read_bytes()
        for wav in sorted((root_a / split / "wav").iterdir()):
            assert wav.read_bytes() == (root_b / split / "wav" / wav.name).read_bytes(), wav.name
    # a killed build: a wav and a jsonl are gone; the rerun makes them again, identically
    victim = root_b / "test" / "wav" / "test-000003.wav"
    victim.unlink()
    (root_b / "dev" / "scenes.jsonl").unlink()
    build_scene_corpus(tiny(workers=1), home_b)  # the worker count does not change the corpus
    assert victim.read_bytes() == (root_a / "test" / "wav" / "test-000003.wav").read_bytes()
    assert (root_b / "dev" / "scenes.jsonl").read_bytes() == (root_a / "dev" / "scenes.jsonl").read_bytes()
    # resuming with another config would mix two corpora
    with pytest.raises(SceneError, match=r"manifest.json.*overlap_prob"):
        build_scene_corpus(tiny(overlap_prob=0.5), home_b)


def test_text_sentences_widen_what_is_said_and_hold_a_quarter_out(corpus, tmp_path):
    home_a, _, home_b, summary_b = corpus
    home = tmp_path / "home"
    home.mkdir()
    (home / "packages").symlink_to(home_a / "packages")
    with pytest.raises(SceneError, match=r"text/en/train.txt not found.*interpres data text"):
        SceneCorpusBuilder(tiny(text_sentences=20), home)
    words = ["red", "green", "blue", "small", "large", "old", "new", "warm"]
    lines = [f"The {a} box is near the {b} door." for a in words for b in words]  # 64 of seven words
    lines += ["Too short here.", "This one is far too long to say in a few short seconds."]
    (home / "text" / "en").mkdir(parents=True)
    (home / "text" / "en" / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SceneError, match="text_sentences: 100 asked.*only 64"):
        SceneCorpusBuilder(tiny(text_sentences=100), home)

    plain = SceneCorpusBuilder(tiny(), home).planner.sentences
    builder = SceneCorpusBuilder(tiny(text_sentences=40, train_scenes=300, dev_scenes=20, test_scenes=300), home)
    sentences = builder.planner.sentences
    extra = [s for s in sentences["train"] + sentences["heldout"] if s not in SENTENCES]
    assert len(extra) == 40 and set(extra) <= set(lines[:64])
    assert len([s for s in sentences["heldout"] if s in extra]) == 10  # heldout_fraction 0.25
    # the built-in sentences are held out exactly as without text sentences
    assert [s for s in sentences["heldout"] if s in SENTENCES] == plain["heldout"]
    said = {split: {e.text for c in items for e in c.events if e.voice is not None}
            for split, items in builder.contents().items()}
    assert said["test"] <= set(sentences["heldout"]) and said["train"] <= set(sentences["train"])
    assert len(said["train"] & set(extra)) > 10 and said["test"] & set(extra)

    # a corpus built before the key existed resumes: the key's default is what it was built with
    manifest_path = Path(summary_b["root"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["config"]["text_sentences"]
    manifest_path.write_text(json.dumps(manifest))
    build_scene_corpus(tiny(), home_b)
    shutil.copytree(home / "text", home_b / "text")
    with pytest.raises(SceneError, match=r"manifest.json.*text_sentences"):
        build_scene_corpus(tiny(text_sentences=8), home_b)


def test_bad_configs_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="min_duration"):
        load_config(SceneCorpusConfig, TINY, ["min_duration=30"])
    with pytest.raises(ConfigError, match="unknown key 'max_event'"):
        load_config(SceneCorpusConfig, TINY, ["max_event=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngain_db: [-3, -9]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*gain_db"):
        load_config(SceneCorpusConfig, bad)
    with pytest.raises(SceneError, match="heldout_voice"):
        SceneCorpusConfig(heldout_voice="flite:slt", voices=["flite:slt"])
    with pytest.raises(SceneError, match="max_duration"):
        SceneCorpusConfig(max_event_seconds=4.0, max_duration=8.0, min_duration=4.0)
    with pytest.raises(SceneError, match="test_rule_fraction"):
        SceneCorpusConfig(test_rule_fraction=1.5)
