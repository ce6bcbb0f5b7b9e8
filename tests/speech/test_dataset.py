"""Feature caching over a real MuST-C-layout split, batching by frames, language sampling."""

import numpy as np
import pytest
import soundfile as sf
import torch

from speech.data.mustc import MustcSplit
from speech.dataset import (SplitFeatures, batches_by_frames, frames_after_subsampling, interleave_by_weight,
                            language_weights, pad_features)
from speech.features import FbankConfig, fbank, utterance_cmvn


def make_split(root, n_talks=2, per_talk=3, seed=0):
    """Talks of noise-modulated tones with utterances at known offsets."""
    rng = np.random.default_rng(seed)
    base = root / "en-de/data/dev"
    (base / "wav").mkdir(parents=True)
    (base / "txt").mkdir(parents=True)
    yaml_lines, en, de = [], [], []
    for t in range(n_talks):
        sr = 16000
        audio = (0.1 * rng.standard_normal(sr * 6)).astype(np.float32)
        audio += 0.3 * np.sin(2 * np.pi * (200 + 100 * t) * np.arange(len(audio)) / sr).astype(np.float32)
        sf.write(base / "wav" / f"talk{t}.wav", audio, sr, subtype="PCM_16")
        for k in range(per_talk):
            yaml_lines.append(f"- {{duration: {0.5 + 0.4 * k}, offset: {0.2 + 1.8 * k}, speaker_id: s{t}, wav: talk{t}.wav}}")
            en.append(f"sentence {t} {k}")
            de.append(f"Satz {t} {k}")
    (base / "txt/dev.yaml").write_text("\n".join(yaml_lines) + "\n")
    (base / "txt/dev.en").write_text("\n".join(en) + "\n")
    (base / "txt/dev.de").write_text("\n".join(de) + "\n")
    return MustcSplit(root, "en-de", "dev")


def test_features_are_cached_and_equal_to_direct_computation(tmp_path):
    split = make_split(tmp_path / "corpus")
    cache = tmp_path / "cache"
    feats = SplitFeatures.load_or_compute(split, FbankConfig(), cache_dir=cache)
    assert len(feats) == 6 and feats.ids[0] == "talk0_0"
    from speech.data.mustc import load_segment

    direct = utterance_cmvn(fbank(torch.from_numpy(load_segment(split[4]))))
    assert torch.allclose(feats.get(4), direct, atol=2e-2)  # stored as float16
    assert feats.lengths[4] == len(direct)
    files = list(cache.iterdir())
    assert len(files) == 1
    again = SplitFeatures.load_or_compute(split, FbankConfig(), cache_dir=cache)
    assert again.ids == feats.ids and np.array_equal(again.feats, feats.feats)
    # other settings are another cache entry
    SplitFeatures.load_or_compute(split, FbankConfig(num_mel_bins=40), cache_dir=cache)
    assert len(list(cache.iterdir())) == 2


def test_batches_fit_the_frame_budget_and_are_reproducible():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 800, size=300).tolist() + [5000]
    b1 = batches_by_frames(lengths, max_frames=4000, seed=3, epoch=1)
    assert sorted(i for b in b1 for i in b) == list(range(len(lengths)))
    for b in b1:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 4000
    assert [5000] in [[lengths[i] for i in b] for b in b1]  # too long: a batch of its own
    assert b1 == batches_by_frames(lengths, max_frames=4000, seed=3, epoch=1)
    assert b1 != batches_by_frames(lengths, max_frames=4000, seed=3, epoch=2)
    capped = batches_by_frames(lengths, max_frames=10**9, max_items=7, seed=0)
    assert max(len(b) for b in capped) == 7


def test_language_temperature():
    sizes = {"de": 900, "ja": 100}
    assert language_weights(sizes, 1.0) == pytest.approx({"de": 0.9, "ja": 0.1})
    flat = language_weights(sizes, 5.0)
    assert 0.1 < flat["ja"] < 0.5 and sum(flat.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature"):
        language_weights(sizes, 0)
    drawn = [lang for lang, _ in interleave_by_weight({"de": [[0], [1], [2]], "ja": [[9]]}, flat, seed=1, epoch=0)]
    assert len(drawn) == 4 and set(drawn) <= {"de", "ja"}


def test_padding_and_subsampled_lengths():
    x, lens = pad_features([torch.ones(3, 4), torch.ones(5, 4)])
    assert x.shape == (2, 5, 4) and lens.tolist() == [3, 5] and x[0, 3:].abs().sum() == 0
    assert [frames_after_subsampling(n) for n in (1, 4, 5, 8, 9, 100)] == [1, 1, 2, 2, 3, 25]
