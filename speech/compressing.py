"""The speech translator as a model family of the compression pipeline (:mod:`compress.pipeline`).

    interpres compress compress/configs/speech.yaml

What compress asks of a family, for S2T models:

- ``save``: a model directory whose config is read off the (pruned) modules
  (:func:`speech.model.layout_of`), with the teacher's ``spm.model`` and settings;
- ``calibration`` / ``loss``: training batches of the corpus and the label loss
  (label-smoothed CE), for Taylor importance;
- ``distill``: :func:`speech.train.train` with ``init`` = the student, ``teacher`` and
  ``kd`` / ``seq_kd`` set: the same resumable loop as every recipe;
- ``quantize``: the ONNX export with int8 weights (:mod:`speech.onnx`), or PyTorch
  dynamic int8 / bf16 applied at load time;
- ``test_items`` / ``infer`` / ``score``: the first ``per_lang`` utterances of each pair's
  test split, translated (or transcribed, for ``en-asr``) with beam search; mean chrF
  over the languages (the headline), BLEU, and WER on English;
- ``open``: a :class:`Runner` per variant; a variant's ``decode`` (compress's
  ``decodings``) may set its ``beam`` (1: greedy), ``no_repeat_ngram_size`` (fairseq's
  ban on repeating an n-gram; 0: none) and ``max_len_a`` / ``max_len_b`` (fairseq's
  bound on the output length: a * encoder frames + b pieces), nothing else. The family's
  options set them for every variant, the teacher included.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from compress.family import CompressError
from speech.config import ConfigError, _build, load_config, preset
from speech.runtime import RUNTIMES, check_runtime, export, open_model
from speech.data.mustc import MustcSplit
from speech.dataset import SplitFeatures, pad_features
from speech.decode import DecodingOptions, encode, search
from speech.features import model_features
from speech.metrics import score_translation, word_error_rate
from speech.checkpoint import load_model_dir, save_resized_model_dir
from speech.losses import label_smoothed_nll_loss
from speech.model_config import PAD_ID
from speech.train import TrainConfig, corpus_root, make_batch, train
from speech.tokenizer import tokenizer_file
from speech.translate import Translator, load_translator

log = logging.getLogger(__name__)



def _is_int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_non_negative_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


@dataclass
class Runner:
    """A variant opened for measuring: its translator and how it decodes."""

    translator: Translator
    decoding: DecodingOptions


class SpeechFamily:
    quality = "chrF"

    def __init__(self, corpus: str = "small", split: str = "tst-COMMON", per_lang: int = 20,
                 langs: Sequence[str] = ("de", "es", "fr", "it", "nl", "pt", "ro", "ru", "ja", "zh"),
                 asr: bool = True, beam: int = 5, no_repeat_ngram_size: int = 0, max_len_a: float = 0.0,
                 max_len_b: int = 200, train_config: str = str(preset("speech", "st_small.yaml")),
                 features_from: str | None = None):
        self.corpus, self.split, self.per_lang, self.langs = corpus, split, per_lang, list(langs)
        self.asr, self.beam, self.train_config = asr, beam, train_config
        # the test items' features: those of this model directory (the teacher's: Whisper's
        # log-mel, say), or else the training recipe's filterbank
        self.features_from = features_from
        self.no_repeat_ngram_size, self.max_len_a, self.max_len_b = no_repeat_ngram_size, max_len_a, max_len_b

    # ------------------------------------------------------------------ models

    def load(self, path: Path) -> nn.Module:
        model, _ = load_model_dir(path)
        return model

    def save(self, model: nn.Module, like: Path, out: Path, note: dict[str, Any]) -> None:
        config = json.loads((Path(like) / "config.json").read_text(encoding="utf-8"))
        save_resized_model_dir(model, like, out, note, [tokenizer_file(config)])

    # ------------------------------------------------------------------ training

    def _train_config(self, overrides: dict[str, Any], out: Path) -> TrainConfig:
        cfg = load_config(TrainConfig, self.train_config)
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for key in overrides:
            if key not in fields:
                raise ConfigError(f"distill: unknown TrainConfig key '{key}'")
        fresh = {"init_encoder": None, "init_decoder": None, "out": str(out), "corpus": self.corpus}  # init sets all
        data = dataclasses.asdict(cfg) | fresh | overrides
        data["kd"] = overrides.get("kd", {})
        return _build(TrainConfig, data, "distill settings")

    def calibration(self, model_dir: Path, n: int) -> list[dict[str, Tensor]]:
        from speech.dataset import batches_by_frames  # noqa: PLC0415
        from speech.train import build_lang_data, read_texts  # noqa: PLC0415
        from speech.translate import load_tokenizer  # noqa: PLC0415

        cfg = load_config(TrainConfig, self.train_config, [f"corpus={self.corpus}"])
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        tok = load_tokenizer(Path(model_dir), config, config["model"]["vocab_size"])
        features = model_features(config, str(Path(model_dir) / "config.json"))
        data = build_lang_data(read_texts(cfg, "train"), tok, features)
        batches = []
        langs = sorted(data)
        for i in range(n):  # one batch per language in turn, the same ones every time
            d = data[langs[i % len(langs)]]
            idx = batches_by_frames(d.lengths, cfg.max_frames, cfg.max_items, seed=cfg.seed, epoch=0)[i // len(langs)]
            batches.append(make_batch(d, idx, None, None, config["model"].get("pad_id", PAD_ID)))
        return batches

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        out = model(batch["features"], batch["feat_lens"], batch["prev"])
        pad = model.cfg.pad_id
        ls, _ = label_smoothed_nll_loss(out["logits"], batch["target"], 0.1, pad)
        return ls / max(1, int((batch["target"] != pad).sum()))

    def distill(self, student: Path, teachers: Sequence[Path], settings: dict[str, Any], out: Path) -> Path:
        overrides = {k: v for k, v in settings.items()}
        overrides |= {"init": str(student), "teacher": [str(t) for t in teachers]}
        cfg = self._train_config(overrides, out)
        return train(cfg)

    # ------------------------------------------------------------------ vocabulary trim

    def trim(self, model_dir: Path, out: Path, settings: dict[str, Any]) -> dict[str, int]:
        """Trim a Whisper model's decoder vocabulary (:func:`speech.whisper.trim_vocabulary`) to
        the pieces of the text corpus's training sentences in the model's languages (both
        sides: the English the model hears, and each target), plus the ``top`` commonest.
        settings: ``corpus`` (the text corpus: a folder or a name under $INTERPRES_HOME,
        default ``text``) and ``top`` (default 0)."""
        from speech.data.text import read_tsv  # noqa: PLC0415
        from speech.text_pretrain import text_root  # noqa: PLC0415
        from speech.whisper import WhisperImportError, trim_vocabulary  # noqa: PLC0415

        unknown = set(settings) - {"corpus", "top"}
        top = settings.get("top", 0)
        if unknown or not _is_int_at_least(top, 0):
            raise CompressError(f"trim: {settings} (the speech family takes corpus: a text corpus, "
                                f"top: an integer >= 0)")
        root = text_root(str(settings.get("corpus", "text")))
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        texts = []
        for lang in config.get("languages", []):
            if lang == "en":
                continue
            path = root / f"en-{lang}" / "train.tsv"
            try:
                rows = read_tsv(path)
            except FileNotFoundError:
                raise CompressError(f"trim: {path} not found (build the text corpus: interpres data text)") from None
            except ValueError as e:
                raise CompressError(f"trim: {e}") from None
            texts += [text for en, tgt, _, _ in rows for text in (en, tgt)]
        if not texts:
            raise CompressError(f"trim: no training sentences for the languages of {model_dir} in {root}")
        try:
            return trim_vocabulary(model_dir, out, texts, top=top, note={"trimmed_from": str(model_dir),
                                                                         "trim_settings": dict(settings)})
        except WhisperImportError as e:
            raise CompressError(f"trim: {e}") from None

    # ------------------------------------------------------------------ quantization

    def quantize(self, model_dir: Path, out: Path, settings: dict[str, Any]) -> dict[str, Any]:
        runtime = check_runtime(settings.get("runtime", "onnx-int8"), RUNTIMES, "quantize")
        return export(model_dir, out, runtime, per_channel=settings.get("per_channel", True))

    # ------------------------------------------------------------------ measuring

    def test_items(self, settings: dict[str, Any]) -> list[dict[str, Any]]:
        root = corpus_root(self.corpus)
        pairs = [f"en-{lang}" for lang in self.langs] + (["en-asr"] if self.asr else [])
        items = []
        if self.features_from:
            where = Path(self.features_from) / "config.json"
            features = model_features(json.loads(where.read_text(encoding="utf-8")), str(where))
        else:
            features = load_config(TrainConfig, self.train_config).features  # the recipe's filterbank
        for pair in pairs:
            split = MustcSplit(root, pair, self.split)
            feats = SplitFeatures.load_or_compute(split, features)
            lang = split.tgt_lang or "en"
            for i, seg in enumerate(split):
                if i >= self.per_lang:
                    break
                ref = seg.tgt if split.tgt_lang else seg.src
                items.append({"feats": feats.get(i), "lang": lang, "ref": ref, "pair": pair})
        return items

    def open(self, variant: dict[str, Any], threads: int) -> Runner:
        runtime = variant["runtime"]
        decode = dict(variant.get("decode") or {})
        beam = decode.pop("beam", self.beam)
        no_repeat = decode.pop("no_repeat_ngram_size", self.no_repeat_ngram_size)
        max_len_a = decode.pop("max_len_a", self.max_len_a)
        max_len_b = decode.pop("max_len_b", self.max_len_b)
        if (decode or not _is_int_at_least(beam, 1) or not _is_int_at_least(no_repeat, 0)
                or not _is_non_negative_number(max_len_a) or not _is_int_at_least(max_len_b, 0)):
            raise CompressError(f"{variant.get('name', variant['path'])}: decoding settings {variant.get('decode')} "
                                f"(the speech family takes beam: a positive integer, no_repeat_ngram_size and "
                                f"max_len_b: integers >= 0, max_len_a: a number >= 0)")
        torch.set_num_threads(threads)
        tr = load_translator(variant["path"])
        tr.models = [open_model(variant["path"], check_runtime(runtime, RUNTIMES, variant.get("name", "variant")),
                                m, variant.get("onnx"), threads) for m in tr.models]
        tags = tuple(tr.tokenizer.lang_tag(lang) for lang in tr.tokenizer.languages)
        return Runner(tr, DecodingOptions(beam_size=beam, no_repeat_ngram_size=no_repeat, max_len_a=float(max_len_a),
                                          max_len_b=max_len_b, suppress_tokens=tags))

    def infer(self, runner: Runner, items: list[dict[str, Any]]) -> list[str]:
        tr = runner.translator
        x, lens = pad_features([it["feats"] for it in items])
        if isinstance(tr.models[0], nn.Module):  # bf16 models take bf16 features
            x = x.to(tr.models[0].encoder.subsample.conv_layers[0].weight.dtype)
        states = encode(tr.models, x, lens)
        prefix = [tr.prefix(it["lang"]) for it in items]
        return [tr.text(r) for r in search(tr.models, states, prefix, runner.decoding)]

    def resampler(self, items: list[dict[str, Any]], outputs: list[str]):
        """chrF (the mean over the target languages) of any draw of the items, for the
        report's bootstrap intervals; the English items (scored by WER) are left out."""
        from sacrebleu.metrics import CHRF  # noqa: PLC0415

        from compress.report import sacrebleu_resampler  # noqa: PLC0415

        return sacrebleu_resampler(CHRF(), outputs, [it["ref"] for it in items],
                                   [None if it["lang"] == "en" else it["lang"] for it in items])

    def score(self, runner: Runner, items: list[dict[str, Any]], outputs: list[str]) -> dict[str, float]:
        by_lang: dict[str, tuple[list[str], list[str]]] = {}
        for it, hyp in zip(items, outputs):
            hyps, refs = by_lang.setdefault(it["lang"], ([], []))
            hyps.append(hyp)
            refs.append(it["ref"])
        scores: dict[str, float] = {}
        chrf, bleu = [], []
        for lang, (hyps, refs) in by_lang.items():
            if lang == "en":
                scores["WER"] = word_error_rate(hyps, refs)
                continue
            s = score_translation(lang, hyps, refs)
            chrf.append(s["chrf"])
            bleu.append(s["bleu"])
        if chrf:  # the mean over the languages, each language weighing the same
            scores["chrF"] = sum(chrf) / len(chrf)
            scores["BLEU"] = sum(bleu) / len(bleu)
        return scores
