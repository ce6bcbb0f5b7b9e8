"""The simultaneous zh->en translator as a model family of the compression pipeline.

    interpres compress compress/configs/simul.yaml

- ``distill``: :func:`simul.train.train`, stage ``segments`` (the bundled model's last
  stage: segments cut by the boundary detector plus true sentences, general and domain)
  with ``init`` = the student and ``teacher`` / ``kd`` / ``seq_kd`` set;
- ``quantize``: PyTorch dynamic int8 (or bf16), applied when the model is opened, or an
  ONNX export (``onnx-int8``: onnxruntime's dynamic int8, ``onnx``: fp32) that the
  translator then runs (:class:`speech.onnx.OnnxS2TModel`, the ``text`` family);
- measuring: the sentences of the first ``docs`` general test documents, translated as
  the segmentation policy translates a segment (beam 4, length penalty 0.5): BLEU is the
  headline; ``score`` also streams those documents through the segmentation policy with
  the bundled boundary detector, so the report has stream BLEU, AL and LAAL (SimulEval's
  definitions) before and after compression.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import sacrebleu
import torch
from torch import Tensor, nn

from compress.family import CompressError
from speech.config import ConfigError, _build, load_config, preset
from speech.runtime import RUNTIMES, check_runtime, export
from speech.checkpoint import save_resized_model_dir
from speech.losses import label_smoothed_nll_loss
from speech.model_config import PAD_ID
from simul.policies import SEGMENT_BEAM, SEGMENT_LENPEN, Segmentation, run_stream
from simul.data import load_split
from simul.evaluate import score_instances
from simul.model import MTConfig, MTModel, load_mt_model
from simul.train import SimulTrainConfig, make_batch, stage_pairs, to_examples, train
from simul.translator import SRC_SPM, TGT_SPM, Translator



class SimulFamily:
    quality = "BLEU"

    def __init__(self, corpus: str = "default", part: str = "general", docs: int = 40,
                 segmenter: str = "simul/models/default/segmenter", threshold: float = 0.7, max_len: int = 40,
                 train_config: str = str(preset("simul", "segments.yaml"))):
        self.corpus, self.part, self.docs = corpus, part, docs
        self.segmenter, self.threshold, self.max_len = segmenter, threshold, max_len
        self.train_config = train_config

    def load(self, path: Path) -> nn.Module:
        return load_mt_model(path)[0]

    def save(self, model: nn.Module, like: Path, out: Path, note: dict[str, Any]) -> None:
        save_resized_model_dir(model, like, out, note, [SRC_SPM, TGT_SPM], MTConfig, MTModel)

    # ------------------------------------------------------------------ training

    def _config(self, overrides: dict[str, Any], out: Path) -> SimulTrainConfig:
        base = load_config(SimulTrainConfig, self.train_config, [f"segmenter={self.segmenter}"])
        fields = {f.name for f in dataclasses.fields(SimulTrainConfig)}
        for key in overrides:
            if key not in fields:
                raise ConfigError(f"distill: unknown SimulTrainConfig key '{key}'")
        data = dataclasses.asdict(base) | {"out": str(out), "corpus": self.corpus} | overrides
        data["kd"] = overrides.get("kd", {})
        return _build(SimulTrainConfig, data, "distill settings")

    def calibration(self, model_dir: Path, n: int) -> list[dict[str, Tensor]]:
        from speech.dataset import batches_by_frames  # noqa: PLC0415
        from speech.tokenizer import Tokenizer  # noqa: PLC0415

        cfg = self._config({"init": str(model_dir)}, Path("unused"))
        ex = to_examples(stage_pairs(cfg, "train"), Tokenizer(Path(model_dir) / SRC_SPM),
                         Tokenizer(Path(model_dir) / TGT_SPM))
        batches = batches_by_frames(ex.lengths, cfg.max_tokens, cfg.max_items, seed=cfg.seed, epoch=0)
        return [make_batch(ex, idx) for idx in batches[:n]]

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        logits = model(batch["src"], batch["src_lens"], batch["prev"])["logits"]
        ls, _ = label_smoothed_nll_loss(logits, batch["target"], 0.1, PAD_ID)
        return ls / max(1, int((batch["target"] != PAD_ID).sum()))

    def distill(self, student: Path, teachers: Sequence[Path], settings: dict[str, Any], out: Path) -> Path:
        cfg = self._config({**settings, "init": str(student), "teacher": [str(t) for t in teachers]}, out)
        return train(cfg)

    def quantize(self, model_dir: Path, out: Path, settings: dict[str, Any]) -> dict[str, Any]:
        runtime = check_runtime(settings.get("runtime", "torch-int8"), RUNTIMES, "quantize")
        return export(model_dir, out, runtime, per_channel=settings.get("per_channel", True))

    # ------------------------------------------------------------------ measuring

    def _docs(self):
        return load_split(self.corpus, self.part, "test")[: self.docs]

    def test_items(self, settings: dict[str, Any]) -> list[tuple[str, str]]:
        return [(zh, en) for d in self._docs() for zh, en in zip(d.zh, d.en)]

    def open(self, variant: dict[str, Any], threads: int) -> Translator:
        if variant.get("decode"):
            raise CompressError(f"{variant['name']}: the simultaneous family decodes as its policy does "
                                f"(beam {SEGMENT_BEAM}); it takes no decodings")
        torch.set_num_threads(threads)
        return Translator(variant["path"], runtime=check_runtime(variant["runtime"], RUNTIMES, variant["name"]),
                          onnx_dir=variant.get("onnx"), threads=threads)

    def infer(self, tr: Translator, items: list[tuple[str, str]]) -> list[str]:
        ids = tr.translate([zh for zh, _ in items], beam=SEGMENT_BEAM, length_penalty=SEGMENT_LENPEN)
        return [tr.detokenize(x) for x in ids]

    def resampler(self, items: list[tuple[str, str]], outputs: list[str]):
        """Sentence-level BLEU of any draw of the items, for the report's bootstrap intervals."""
        from compress.report import sacrebleu_resampler  # noqa: PLC0415

        return sacrebleu_resampler(sacrebleu.BLEU(), outputs, [en for _, en in items])

    def score(self, tr: Translator, items: list[tuple[str, str]], outputs: list[str]) -> dict[str, float]:
        from simul.segmenter import Segmenter  # noqa: PLC0415

        scores = {"BLEU": sacrebleu.corpus_bleu(outputs, [[en for _, en in items]]).score}
        agent = Segmentation(tr, Segmenter.load(self.segmenter), self.threshold, self.max_len)
        instances = []
        for d in self._docs():
            words, delays, elapsed = run_stream(agent, d.source, d)
            instances.append({"prediction": " ".join(words), "delays": delays, "elapsed": elapsed,
                              "prediction_length": len(words), "reference": d.reference,
                              "source_length": len(d.source)})
        stream = score_instances(instances)
        scores.update({"stream BLEU": stream["BLEU"], "AL": stream["AL"], "LAAL": stream["LAAL"]})
        return scores
