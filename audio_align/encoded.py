"""The encoder states of a scene corpus, computed once and cached.

The LALM's encoder is frozen, so what it makes of a scene never changes: training and
evaluation read the pooled states (fp16) from ``<corpus>/encoded/<key>/<split>/NNNN.safetensors``
(``SHARD`` scenes a file, written atomically; a killed run resumes at the first missing
shard). ``key`` names the encoder and the pooling, so two encoders never share a cache.
A front end with ``level`` appends each frame's level to the states it reads (from the
waveform, which costs a read of the wav and no encoder pass): the cache holds the encoder's
states alone, so models with and without the level column share it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from compress.files import atomic_path

log = logging.getLogger(__name__)

SHARD = 200


def cache_key(encoder: str, pool: int) -> str:
    name = Path(encoder).name if Path(encoder).exists() else encoder
    digest = hashlib.sha1(str(Path(encoder).resolve() if Path(encoder).exists() else encoder).encode()).hexdigest()[:8]
    return f"{name}-{digest}-pool{pool}"


def encode_scenes(root: Path, split: str, scenes: Sequence[dict], frontend, batch: int = 4,
                  load: Callable[[dict], np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """Scene id -> pooled encoder states (T, D) float16 for ``scenes`` of ``split`` (T, D + 1)
    float32 with the front end's ``level``). ``load(scene)`` gives a scene's waveform (default:
    the file ``<root>/<split>/<scene["wav"]>``; the utterances of a speech corpus pass their own reader)."""
    from speech.audio import load_audio
    from speech.loop import Progress

    if load is None:
        load = lambda s: load_audio(root / split / s["wav"])  # noqa: E731

    folder = root / "encoded" / cache_key(frontend.name, frontend.pool) / split
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, torch.Tensor] = {}
    shards = [scenes[i:i + SHARD] for i in range(0, len(scenes), SHARD)]
    progress = Progress(len(scenes), f"encode {split}", "scene", every=SHARD)
    done = 0
    for k, shard in enumerate(shards):
        path = folder / f"{k:04d}.safetensors"
        ids = [s["id"] for s in shard]
        if path.is_file():
            cached = load_file(str(path))
            if all(i in cached for i in ids):
                for s in shard:  # the level needs the wave; plain states need no read
                    out[s["id"]] = frontend.with_level(cached[s["id"]], load(s)) if frontend.level else cached[s["id"]]
                done += len(shard)
                progress(done, len(scenes))
                continue
        states: dict[str, torch.Tensor] = {}
        for j in range(0, len(shard), batch):
            part = shard[j:j + batch]
            waves = [load(s) for s in part]
            for s, w, st in zip(part, waves, frontend.encode(waves)):
                states[s["id"]] = st.to(torch.float16).contiguous()
                out[s["id"]] = frontend.with_level(states[s["id"]], w)
            done += len(part)
            progress(done, len(scenes))
        with atomic_path(path) as tmp:
            save_file(states, str(tmp))
    progress.close()
    return out
