"""Training and evaluation data: MuST-C splits as cached features, batched by frames.

Features are computed once per split (80-dim Kaldi fbank, utterance CMVN) and cached
under ``$INTERPRES_HOME/features/``, keyed by the talk file, offset, duration and the
feature settings, so a corpus that changes gets new features and one that does not is
never recomputed. A cache file is written to a temporary name and renamed.

    feats = SplitFeatures.load_or_compute(split, FbankConfig())
    for batch in batches_by_frames(feats.lengths, max_frames=20000, seed=1, epoch=0):
        ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from compress.files import atomic_path
from speech.data.cache import interpres_home
from speech.data.mustc import MustcSplit, load_segment
from speech.features import FbankConfig, FeatureConfig, features_of

log = logging.getLogger(__name__)


@dataclass
class SplitFeatures:
    """All utterances of one split as one (total_frames, n_mels) float16 array plus offsets."""

    ids: list[str]
    feats: np.ndarray  # (sum of frames, n_mels), float16
    starts: np.ndarray  # (N,) int64: first row of utterance i
    lengths: np.ndarray  # (N,) int64: frames of utterance i

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, i: int) -> torch.Tensor:
        """Features of utterance ``i``: (frames, n_mels) float32."""
        s = int(self.starts[i])
        return torch.from_numpy(self.feats[s:s + int(self.lengths[i])].astype(np.float32))

    @staticmethod
    def cache_key(split: MustcSplit, cfg: FeatureConfig) -> str:
        h = hashlib.sha1(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
        for seg in split:
            st = seg.wav.stat()
            h.update(f"{seg.wav}\x1f{st.st_size}\x1f{st.st_mtime_ns}\x1f{seg.offset}\x1f{seg.duration}\n".encode())
        return h.hexdigest()[:16]

    @classmethod
    def load_or_compute(cls, split: MustcSplit, cfg: FeatureConfig | None = None,
                        cache_dir: Path | None = None) -> "SplitFeatures":
        cfg = cfg or FbankConfig()
        cache_dir = cache_dir or interpres_home() / "features"
        path = cache_dir / f"{split.pair}.{split.split}.{cls.cache_key(split, cfg)}.safetensors"
        if path.exists():
            data = load_file(str(path))
            ids = json.loads(bytes(data["ids"]).decode("utf-8"))
            return cls(ids, data["feats"], data["starts"], data["lengths"])
        chunks, lengths = [], []
        for seg in tqdm(split, desc=f"features {split.pair}/{split.split}", unit="utt", disable=None):
            wave = torch.from_numpy(load_segment(seg))
            f = features_of(wave, cfg)
            chunks.append(f.numpy().astype(np.float16))
            lengths.append(len(f))
        lengths_a = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths_a)[:-1]]).astype(np.int64) if len(lengths) else lengths_a
        feats = np.concatenate(chunks) if chunks else np.zeros((0, cfg.num_mel_bins), np.float16)
        ids = [seg.id for seg in split]
        with atomic_path(path) as tmp:
            save_file({"feats": feats, "starts": starts, "lengths": lengths_a,
                       "ids": np.frombuffer(json.dumps(ids).encode("utf-8"), dtype=np.uint8).copy()}, str(tmp))
        return cls(ids, feats, starts, lengths_a)


def batches_by_frames(lengths: Sequence[int], max_frames: int, max_items: int = 1_000_000,
                      seed: int = 1, epoch: int = 0, shuffle: bool = True) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size fits ``max_frames``.

    Utterances are sorted by length (ties broken by a seeded shuffle), cut greedily into
    batches where ``batch_size * longest <= max_frames``, and the batch order is
    shuffled with ``seed + epoch``: the same seed and epoch give the same batches, which
    is what lets a killed run resume at the exact batch it stopped at.
    An utterance longer than ``max_frames`` gets a batch of its own.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: lengths[i])  # stable: the shuffle breaks ties
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        n = int(lengths[i])
        if cur and (max(longest, n) * (len(cur) + 1) > max_frames or len(cur) >= max_items):
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    if shuffle:
        rng.shuffle(batches)
    return batches


def language_weights(sizes: dict[str, int], temperature: float) -> dict[str, float]:
    """Sampling probability per language, ``p_l ∝ (n_l / N) ** (1 / T)``.

    T = 1 samples in proportion to the data; larger T flattens towards uniform, which
    gives small languages more updates (the usual multilingual recipe uses T = 2 to 5).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    total = sum(sizes.values())
    raw = {lang: (n / total) ** (1.0 / temperature) for lang, n in sizes.items() if n > 0}
    z = sum(raw.values())
    return {lang: w / z for lang, w in raw.items()}


def pad_features(items: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T_max, n_mels) zero-padded features and (B,) lengths."""
    lens = torch.tensor([len(x) for x in items], dtype=torch.long)
    out = torch.zeros(len(items), int(lens.max()) if len(items) else 0, items[0].shape[1] if items else 0)
    for b, x in enumerate(items):
        out[b, : len(x)] = x
    return out, lens


def interleave_by_weight(batches_by_lang: dict[str, list[list[int]]], weights: dict[str, float],
                         seed: int, epoch: int) -> Iterator[tuple[str, list[int]]]:
    """Draw (language, batch) pairs with ``weights`` until every language ran out once.

    An epoch is as long as the sum of all languages' batches; a language drawn after
    its batches are used up starts over on them (upsampling a small language).
    """
    rng = random.Random(seed * 7_919 + epoch)
    langs = sorted(batches_by_lang)
    cursors = {lang: 0 for lang in langs}
    total = sum(len(b) for b in batches_by_lang.values())
    w = [weights.get(lang, 0.0) for lang in langs]
    for _ in range(total):
        lang = rng.choices(langs, weights=w)[0]
        batches = batches_by_lang[lang]
        yield lang, batches[cursors[lang] % len(batches)]
        cursors[lang] += 1


def frames_after_subsampling(n: int, layers: int = 2) -> int:
    """Frames out of ``layers`` stride-2 convolutions with kernel 5 and padding 2."""
    for _ in range(layers):
        n = math.floor((n - 1) / 2 + 1)
    return n
