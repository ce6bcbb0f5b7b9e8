"""The LALM as a model family of the compression core (``interpres compress``).

``family: audio_align.compressing:LalmFamily`` in a compress config (audio_align/configs/
compress_lalm.yaml) runs the shared chain on an audio-language model:

- **load** gives the model its own copy of the encoder it hears through
  (:func:`audio_align.lalm.give_own_ear`), so structured pruning reaches the whole model:
  ``ear.layers`` and the ear's attentions and feed-forward blocks (the encoder is most of a
  LALM's time: 0.26 s of 0.30 s for a yes/no answer about a 9 s scene with Whisper base on 2
  cores), and ``lm.model.layers`` of the LM. (The Qwen2 LM's attentions and MLPs are not of
  the shapes :mod:`compress.prune` recognizes; its layers are.)
- **distill** is the LALM's own training loop (:mod:`audio_align.train`) twice: stage ``ear``
  (the student's encoder learns the teacher's pooled states, everything else frozen), then
  stage ``sft`` with the teacher's word-level KD on the answer tokens only (selective KD;
  ``kd.truncate`` keeps the first part of each answer), the new encoder frozen.
- **quantize**: ``torch-int8``, PyTorch's dynamic int8 Linear layers in the encoder, the
  projector and the LM.
- **measure**: every variant answers the questions of the first ``scenes`` test scenes
  (held-out question templates, as ``interpres eval aha`` asks them) from the waveform, as
  ``interpres ask`` does: the encoder runs on every item, so latency is what a user waits.
  Quality is AHA-Eval accuracy (%), with a paired-bootstrap interval per variant.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from audio_align import qa
from audio_align.lalm import (TOKENIZER_FILE, AudioFrontEnd, AudioLanguageModel, ChatTokenizer, answer_nll, give_own_ear,
                              load_lalm_dir, pad_audio, pool_states, save_lalm_dir, sync_ear_config)
from compress.family import CompressError

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "torch-int8")


@dataclasses.dataclass
class LalmRunner:
    model: AudioLanguageModel
    tok: Any
    frontend: AudioFrontEnd
    max_new_tokens: int


class LalmFamily:
    quality = "accuracy"

    def __init__(self, scenes: str = "default", seed: int = 0, max_new_tokens: int = 48):
        self.scenes = scenes
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self._waves: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ model directories

    def load(self, path: Path) -> nn.Module:
        model, _, _ = load_lalm_dir(path)
        return give_own_ear(model).float().eval()

    def save(self, model: nn.Module, like: Path, out: Path, note: dict[str, Any]) -> None:
        sync_ear_config(model)
        model.cfg = dataclasses.replace(model.cfg, layers=len(model.lm.model.layers))
        save_lalm_dir(model, Path(like) / TOKENIZER_FILE, out, extra={"task": "lalm", "stage": "compressed", **note})

    # ------------------------------------------------------------------ pruning scores

    def calibration(self, model_dir: Path, n: int) -> list[dict[str, Any]]:
        """``n`` batches of two training scenes, six questions each, as waveform features."""
        from audio_align.scenes import corpus_root, read_manifest, read_scenes
        from audio_align.train import chat_batch
        from speech.audio import load_audio

        model = self.load(model_dir)
        tok = ChatTokenizer(Path(model_dir) / TOKENIZER_FILE)
        frontend = AudioFrontEnd.of(model.cfg, ear=model.ear)
        root = corpus_root(self.scenes)
        manifest = read_manifest(root)
        scenes = read_scenes(root, "train")[: 2 * n]
        questions = qa.questions_by_scene(scenes, "train", manifest["classes"], qa.rules_of(manifest), self.seed)
        batches = []
        for i in range(0, len(scenes), 2):
            x, lens = frontend.features([load_audio(root / "train" / s["wav"]) for s in scenes[i:i + 2]])
            with torch.no_grad():
                enc, enc_lens, _ = model.ear(x, lens)
            frames = [p.shape[0] for p in pool_states(enc, enc_lens, model.cfg.pool)]
            rows = [tok.conversation([(q.question, q.answer) for q in qs[:6]], model.cfg.audio_tokens(t))
                    for qs, t in zip(questions[i:i + 2], frames)]
            b = chat_batch(rows, [torch.zeros(t, 1) for t in frames])  # the states come from the ear in loss()
            batches.append({"features": x, "feat_lens": lens, **{k: b[k] for k in ("input_ids", "attention_mask",
                                                                                   "labels")}})
        return batches

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        """Mean answer NLL, the audio heard through the model's own encoder (gradients reach it)."""
        enc, enc_lens, _ = model.ear(batch["features"], batch["feat_lens"])
        audio, lens = pad_audio(pool_states(enc, enc_lens, model.cfg.pool))
        nll, n = answer_nll(model(batch["input_ids"], batch["attention_mask"], audio, lens), batch["labels"])
        return nll / max(1, n)

    # ------------------------------------------------------------------ training and quantization

    def distill(self, student: Path, teachers: Sequence[Path], settings: dict[str, Any], out: Path) -> Path:
        """Stage ``ear`` (when the student has an encoder of its own), then ``sft`` with KD.
        ``settings``: ``ear`` and ``lm`` (LalmTrainConfig fields of each), ``kd`` (KDConfig fields)."""
        from audio_align.lalm import read_lalm_config
        from audio_align.train import train

        if len(teachers) != 1:
            raise CompressError("teacher: the LALM family distills from one teacher")
        unknown = set(settings) - {"ear", "lm", "kd"}
        if unknown:
            raise CompressError(f"distill: unknown keys {sorted(unknown)} (the LALM family takes ear, lm and kd)")
        teacher = str(teachers[0])
        current = Path(student)
        if read_lalm_config(current)["lalm"].get("ear"):
            ear_out = Path(out) / "ear"
            if not (ear_out / "model" / "config.json").is_file():
                train(self._train_config(settings.get("ear", {}), out=str(ear_out), stage="ear", init=str(current),
                                         teacher=teacher))
            current = ear_out / "model"
        lm_out = Path(out) / "lm"
        if not (lm_out / "model" / "config.json").is_file():
            train(self._train_config(settings.get("lm", {}), out=str(lm_out), stage="sft", init=str(current),
                                     teacher=teacher, kd=settings.get("kd", {"alpha": 0.5, "label_smoothing": 0.0})))
        return lm_out / "model"

    def _train_config(self, settings: dict[str, Any], **fixed: Any) -> Any:
        from audio_align.train import LalmTrainConfig
        from speech.config import ConfigError

        try:
            return LalmTrainConfig(**{"scenes": self.scenes, **settings, **fixed})
        except (TypeError, ConfigError) as e:
            raise CompressError(f"distill ({fixed['stage']}): {e}") from e

    def quantize(self, model_dir: Path, out: Path, settings: dict[str, Any]) -> dict[str, Any]:
        runtime = settings.get("runtime", "torch-int8")
        if runtime != "torch-int8":
            raise CompressError(f"quantize.runtime: the LALM family has torch-int8, not {runtime!r}")
        return {"path": str(model_dir), "runtime": runtime}

    # ------------------------------------------------------------------ measuring

    def test_items(self, settings: dict[str, Any]) -> list[dict[str, Any]]:
        from audio_align.scenes import corpus_root, read_manifest, read_scenes

        root = corpus_root(self.scenes)
        manifest = read_manifest(root)
        scenes = read_scenes(root, "test")[: int(settings.get("scenes", 60))]
        questions = qa.build_questions(scenes, "test", manifest["classes"], qa.rules_of(manifest), self.seed)
        wav = {s["id"]: str(root / "test" / s["wav"]) for s in scenes}
        return [{"wav": wav[q.scene], "question": q} for q in questions if q.kind != qa.CAPTION]

    def open(self, variant: dict[str, Any], threads: int) -> LalmRunner:
        from compress.quantize import quantize_torch_int8

        runtime = variant["runtime"]
        if runtime not in RUNTIMES:
            raise CompressError(f"{variant.get('name', variant['path'])}: runtime {runtime!r} (the LALM family "
                                f"runs {', '.join(RUNTIMES)})")
        if variant.get("decode"):
            raise CompressError(f"{variant.get('name', variant['path'])}: the LALM family has no decoding settings")
        torch.set_num_threads(threads)
        model, tok, _ = load_lalm_dir(variant["path"])
        frontend = AudioFrontEnd.of(model.cfg, ear=model.ear)
        if runtime == "torch-int8":
            frontend.encoder = quantize_torch_int8(frontend.encoder)
            model.ear = None  # it hears through the front end's copy: not kept twice
            model = quantize_torch_int8(model)
        return LalmRunner(model, tok, frontend, self.max_new_tokens)

    def _wave(self, path: str) -> np.ndarray:
        from speech.audio import load_audio

        if path not in self._waves:
            self._waves[path] = load_audio(path)
        return self._waves[path]

    @torch.no_grad()
    def infer(self, runner: LalmRunner, items: list[dict[str, Any]]) -> list[str]:
        from audio_align.evaluate import answer

        states = runner.frontend([self._wave(it["wav"]) for it in items])
        return answer(runner.model, runner.tok, states, [it["question"].question for it in items],
                      batch=len(items), max_new_tokens=runner.max_new_tokens)

    def score(self, runner: Any, items: list[dict[str, Any]], outputs: list[str]) -> dict[str, float]:
        from audio_align.evaluate import accuracy_table

        table = accuracy_table([it["question"] for it in items], outputs)
        return {k: round(100.0 * v["accuracy"], 2) for k, v in table.items()} | {
            "accuracy": round(100.0 * table["overall"]["accuracy"], 2)}

    def resampler(self, items: list[dict[str, Any]], outputs: list[str]):
        """Accuracy (%) of any draw of the items, for the report's bootstrap intervals."""
        ok = np.asarray([qa.is_correct(it["question"], o) for it, o in zip(items, outputs)], dtype=np.float64)
        return lambda draw: 100.0 * float(ok[draw].mean())
