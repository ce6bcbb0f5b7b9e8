"""Text pretraining of the speech translator's decoder: an en->xx text translator.

    interpres train mt speech/configs/mt_small.yaml
    interpres train st speech/configs/st_small.yaml init_decoder=runs/mt_small/model

The speech corpus has about a thousand spoken sentences per language; the text corpus it
was drawn from has 19k-39k pairs per language (``interpres data text``). This recipe
trains a text encoder-decoder (:class:`speech.text_model.MTModel`) on those pairs, English
pieces in, ``<lang:xx>`` + target pieces out, with a decoder of exactly the shape of the
speech model preset's decoder. ST training then starts its decoder from this one
(``init_decoder``, fairseq S2T's ``load_pretrained_decoder_from``) and keeps its
tokenizer, so the decoder already knows the target languages and how to read an English
sentence's encoding through cross-attention when it first sees speech.

Only the text corpus's train split is read, never dev or test sentences: the speech
corpus's tst-COMMON and tst-VOICE come from the text test split, so nothing the speech
translator is tested on is seen here. The steps:

1. data: ``en-XX/train.tsv`` of each language (capped at ``max_per_lang``), dev pairs
   from ``dev.tsv``; batches by tokens per language, drawn with temperature sampling.
2. tokenizer: the joint ST vocabulary (:func:`speech.tokenizer.train_st_tokenizer`) over
   the targets and the English sides, so English source pieces and target pieces share it.
3. model: a text encoder of ``encoder_layers`` layers and the speech preset's decoder.
   With ``denoise_share`` > 0, that share of the batches is English denoising: a noised
   English side in, the clean sentence under ``<lang:en>`` out, so the decoder also
   writes the English that the speech translator's transcription needs.
4. :func:`speech.loop.run`: label-smoothed cross-entropy, exact resume, averaging; the
   final model directory gets greedy dev BLEU per language.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speech.config import ConfigError
from speech.data.cache import interpres_home
from speech.data.text import TARGET_LANGS, read_tsv
from speech.dataset import batches_by_frames, interleave_by_weight, language_weights
from speech.metrics import score_hypotheses
from speech.loop import LoopConfig, barrier, run, start_run, to_device
from speech.checkpoint import model_device, save_model_dir
from speech.losses import label_smoothed_nll_loss
from speech.model import param_count
from speech.model_config import EOS_ID, PAD_ID
from speech.model_config import preset as speech_preset
from speech.text_model import MTConfig, MTModel, text_batch
from speech.tokenizer import Tokenizer, train_st_tokenizer

log = logging.getLogger(__name__)

# the fields a text model takes from the speech preset: everything the decoder is made of
DECODER_FIELDS = ("d_model", "decoder_layers", "heads", "ffn_dim", "dropout", "attention_dropout",
                  "activation_dropout", "max_target_positions", "share_decoder_input_output_embed",
                  "pad_id", "bos_id", "eos_id", "head_dim")


@dataclass
class TextPretrainConfig(LoopConfig):
    """The decoder's text pretraining (speech/configs/mt_*.yaml); every key can be overridden."""

    corpus: str = "text"  # a folder with en-XX/{train,dev}.tsv, or a name under $INTERPRES_HOME
    langs: list[str] = field(default_factory=lambda: list(TARGET_LANGS))
    out: str = "runs/mt"
    model: str = "small"  # the speech.model preset whose decoder this trains
    model_overrides: dict[str, Any] = field(default_factory=dict)  # speech ModelConfig fields
    encoder_layers: int = 3  # the text encoder's layers (thrown away after pretraining)
    vocab_size: int = 4000
    max_per_lang: int = 0  # train pairs per language; 0: all
    dev_per_lang: int = 200  # dev pairs per language for the dev loss
    max_tokens: int = 6000  # batch size x longest sequence (source or target)
    max_items: int = 256
    label_smoothing: float = 0.1
    lang_temperature: float = 3.0
    dev_bleu_max: int = 100  # dev sentences per language translated greedily at the end
    # English denoising: this share of the batches turns a noised English sentence back
    # into itself under <lang:en>, so the decoder also learns the English it writes when
    # the speech translator transcribes. The noise (Lample et al., 2018): each piece is
    # dropped with probability denoise_drop, then pieces move at most denoise_shuffle places.
    denoise_share: float = 0.0
    denoise_drop: float = 0.1
    denoise_shuffle: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.langs:
            raise ConfigError("langs: name at least one target language")
        if "en" in self.langs:
            raise ConfigError("langs: 'en' is the source language; name target languages only")
        if self.encoder_layers < 1:
            raise ConfigError(f"encoder_layers must be at least 1, got {self.encoder_layers}")
        if self.max_tokens < 1:
            raise ConfigError("max_tokens must be at least 1")
        if not 0.0 <= self.denoise_share < 1.0:
            raise ConfigError(f"denoise_share must be in [0, 1), got {self.denoise_share}")
        if not 0.0 <= self.denoise_drop < 1.0:
            raise ConfigError(f"denoise_drop must be in [0, 1), got {self.denoise_drop}")
        if self.denoise_shuffle < 0:
            raise ConfigError(f"denoise_shuffle must be at least 0, got {self.denoise_shuffle}")


def text_root(corpus: str) -> Path:
    path = Path(corpus).expanduser()
    root = path if path.is_dir() else interpres_home() / corpus
    if not root.is_dir():
        raise ConfigError(f"corpus: '{corpus}' is neither a folder nor a corpus under {root.parent} "
                          f"(build the text corpus with 'interpres data text')")
    return root


def read_pairs(cfg: TextPretrainConfig, split: str, limit: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Per target language, (English, target) pairs of ``en-XX/SPLIT.tsv`` (the first ``limit``)."""
    root = text_root(cfg.corpus)
    out = {}
    for lang in cfg.langs:
        path = root / f"en-{lang}" / f"{split}.tsv"
        if not path.exists():
            raise ConfigError(f"corpus {root}: no {path.name} for en-{lang} (expected {path})")
        try:
            rows = [(en, tgt) for en, tgt, _, _ in read_tsv(path) if en.strip() and tgt.strip()]
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if not rows:
            raise ConfigError(f"{path}: no pairs")
        out[lang] = rows[:limit] if limit > 0 else rows
    return out


# ----------------------------------------------------------------------------- examples


@dataclass
class LangPairs:
    lang: str
    src: list[list[int]]  # English pieces + eos
    tgt: list[list[int]]  # [<lang:xx>, pieces..., eos]
    srcs: list[str]
    refs: list[str]

    @property
    def lengths(self) -> list[int]:
        return [max(len(s), len(t)) for s, t in zip(self.src, self.tgt)]


def to_lang_pairs(lang: str, rows: list[tuple[str, str]], tok: Tokenizer) -> LangPairs:
    ex = LangPairs(lang, [], [], [], [])
    for en, tgt in rows:
        s = tok.encode(en)
        if s:
            ex.src.append(s + [EOS_ID])
            ex.tgt.append(tok.target_ids(tgt, lang))
            ex.srcs.append(en)
            ex.refs.append(tgt)
    return ex


def to_denoising(sentences: list[str], tok: Tokenizer) -> LangPairs:
    """English sentences as their own targets under ``<lang:en>`` (the source is noised per batch)."""
    return to_lang_pairs("en", [(en, en) for en in sentences], tok)


def add_noise(src: list[int], drop: float, shuffle: int, gen: torch.Generator) -> list[int]:
    """Drop pieces with probability ``drop`` (keeping at least one), then shuffle locally:
    each piece moves at most ``shuffle`` places. The final eos stays where it is."""
    pieces = src[:-1]
    if drop > 0 and len(pieces) > 1:
        keep = torch.rand(len(pieces), generator=gen) >= drop
        if not bool(keep.any()):
            keep[int(torch.randint(len(pieces), (1,), generator=gen))] = True
        pieces = [p for p, k in zip(pieces, keep.tolist()) if k]
    if shuffle > 0 and len(pieces) > 1:
        keys = torch.arange(len(pieces), dtype=torch.float) + torch.rand(len(pieces), generator=gen) * (shuffle + 1)
        pieces = [pieces[i] for i in torch.argsort(keys, stable=True).tolist()]
    return pieces + src[-1:]


def make_batch(ex: LangPairs, idx: list[int], noise: tuple[float, int, torch.Generator] | None = None
               ) -> dict[str, torch.Tensor]:
    src = [ex.src[i] for i in idx]
    if noise is not None:
        src = [add_noise(s, *noise) for s in src]
    return text_batch(src, [ex.tgt[i] for i in idx])


def text_model_config(cfg: TextPretrainConfig, vocab_size: int) -> MTConfig:
    """A text model whose decoder has exactly the shape of the speech preset's decoder."""
    speech_cfg = speech_preset(cfg.model, vocab_size=vocab_size, **cfg.model_overrides)
    if speech_cfg.decoder_layout:
        raise ConfigError("model_overrides: a pruned decoder_layout cannot be pretrained; use the uniform sizes")
    return MTConfig(src_vocab_size=vocab_size, vocab_size=vocab_size, encoder_layers=cfg.encoder_layers,
                    **{name: getattr(speech_cfg, name) for name in DECODER_FIELDS})


# ----------------------------------------------------------------------------- the recipe


class TextPretrainRecipe:
    """en->xx text translation for :func:`speech.loop.run`: batches by tokens per language."""

    name = "mt"

    def __init__(self, cfg: TextPretrainConfig, tok: Tokenizer, data: dict[str, LangPairs],
                 dev: dict[str, LangPairs], mcfg: MTConfig, recipe: dict, world: int,
                 denoise: LangPairs | None = None):
        self.cfg, self.tok, self.data, self.dev, self.mcfg, self.recipe, self.world = (
            cfg, tok, data, dev, mcfg, recipe, world)
        self.denoise = denoise

    def epoch_batches(self, epoch: int) -> list[tuple[str, list[int]]]:
        cfg = self.cfg
        per_lang = {lang: batches_by_frames(d.lengths, cfg.max_tokens, cfg.max_items, seed=cfg.seed, epoch=epoch)
                    for lang, d in self.data.items()}
        weights = language_weights({lang: len(d.src) for lang, d in self.data.items()}, cfg.lang_temperature)
        if self.denoise is not None:  # "en" is never a target language here (see the config's check)
            per_lang["en"] = batches_by_frames(self.denoise.lengths, cfg.max_tokens, cfg.max_items,
                                               seed=cfg.seed, epoch=epoch)
            weights = {lang: w * (1.0 - cfg.denoise_share) for lang, w in weights.items()}
            weights["en"] = cfg.denoise_share
        return list(interleave_by_weight(per_lang, weights, cfg.seed, epoch))

    def make_batch(self, key: tuple[str, list[int]], gen: torch.Generator) -> dict[str, torch.Tensor]:
        lang, idx = key
        if lang == "en" and self.denoise is not None:
            return make_batch(self.denoise, idx, (self.cfg.denoise_drop, self.cfg.denoise_shuffle, gen))
        return make_batch(self.data[lang], idx)

    def backward(self, module: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        n_tok = sum(int((b["target"] != PAD_ID).sum()) for b in batches)
        loss_sum, nll_sum = 0.0, 0.0
        for b in batches:
            logits = module(b["src"], b["src_lens"], b["prev"])["logits"]
            ls, nll = label_smoothed_nll_loss(logits, b["target"], self.cfg.label_smoothing, PAD_ID)
            loss = ls / max(1, n_tok)
            loss.backward()
            loss_sum += float(loss.detach())
            nll_sum += float(nll.detach())
        return {"loss": loss_sum, "nll": nll_sum / max(1, n_tok)}

    @torch.no_grad()
    def dev_loss(self, model: torch.nn.Module) -> float:
        total, tokens = 0.0, 0
        device = model_device(model)
        for d in self.dev.values():
            for idx in batches_by_frames(d.lengths, self.cfg.max_tokens, self.cfg.max_items, shuffle=False):
                b = to_device(make_batch(d, idx), device)
                _, nll = label_smoothed_nll_loss(model(b["src"], b["src_lens"], b["prev"])["logits"],
                                                 b["target"], 0.0, PAD_ID)
                total += float(nll)
                tokens += int((b["target"] != PAD_ID).sum())
        return total / max(1, tokens)

    def finish(self, model: torch.nn.Module, averaged: list[Path], state: dict) -> None:
        cfg = self.cfg
        final = Path(cfg.out) / "model"
        scores = dev_scores(model, self.tok, self.dev, cfg) if cfg.dev_bleu_max > 0 else {}
        extra = {"task": "mt", "languages": list(cfg.langs), "speech_preset": cfg.model, "recipe": self.recipe,
                 "averaged": [p.name for p in averaged], "dev_scores": scores,
                 "train_seconds": round(state["seconds"], 1), "updates": state["update"],
                 "threads": torch.get_num_threads(), "processes": self.world}
        save_model_dir(model, self.mcfg, final, extra=extra)
        shutil.copyfile(self.tok.path, final / "spm.model")
        log.info("model written to %s (dev: %s)", final, scores)


@torch.no_grad()
def dev_scores(model: MTModel, tok: Tokenizer, dev: dict[str, LangPairs], cfg: TextPretrainConfig
               ) -> dict[str, float]:
    """Greedy dev BLEU per language on the first ``dev_bleu_max`` dev pairs."""
    from speech.decode import DecodingOptions, greedy_search  # noqa: PLC0415 - decode imports the model

    model.eval()
    scores = {}
    for lang, d in dev.items():
        n = min(cfg.dev_bleu_max, len(d.src))
        hyps = [""] * n
        for idx in batches_by_frames(d.lengths[:n], cfg.max_tokens, cfg.max_items, shuffle=False):
            b = to_device(make_batch(d, idx), model_device(model))
            enc = model.encode(b["src"], b["src_lens"])
            for k, r in zip(idx, greedy_search([model], [enc], [tok.prefix(lang)] * len(idx),
                                                DecodingOptions(beam_size=1))):
                hyps[k] = tok.decode(r.tokens)
        scores.update(score_hypotheses(lang, hyps, d.refs[:n]))
    return scores


def train(cfg: TextPretrainConfig) -> Path:
    """Run (or resume) the text pretraining; return the final model directory."""
    rank, world, recipe = start_run(cfg)
    out = Path(cfg.out)
    train_rows = read_pairs(cfg, "train", cfg.max_per_lang)
    dev_rows = read_pairs(cfg, "dev", cfg.dev_per_lang)
    spm_path = out / "spm.model"
    if rank == 0 and not spm_path.exists():
        by_lang = {lang: [t for _, t in rows] for lang, rows in train_rows.items()}
        by_lang["en"] = list(dict.fromkeys(en for rows in train_rows.values() for en, _ in rows))
        train_st_tokenizer(by_lang, spm_path, cfg.vocab_size)
    barrier(world)
    tok = Tokenizer(spm_path)
    data = {lang: to_lang_pairs(lang, rows, tok) for lang, rows in train_rows.items()}
    dev = {lang: to_lang_pairs(lang, rows, tok) for lang, rows in dev_rows.items()}
    log.info("train pairs: %s", {lang: len(d.src) for lang, d in data.items()})
    denoise = None
    if cfg.denoise_share > 0:  # the English sides, each once: the tokenizer saw them all
        denoise = to_denoising(list(dict.fromkeys(en for rows in train_rows.values() for en, _ in rows)), tok)
        log.info("English denoising: %d sentences, %.0f%% of the batches", len(denoise.src),
                 100 * cfg.denoise_share)
    try:
        mcfg = text_model_config(cfg, tok.vocab_size)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model_overrides: {e}") from e
    model = MTModel(mcfg)
    log.info("text model (speech preset %s's decoder): %.2fM parameters", cfg.model, param_count(model) / 1e6)
    return run(TextPretrainRecipe(cfg, tok, data, dev, mcfg, recipe, world, denoise), model, cfg, rank, world)


def decoder_state(path: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The ``decoder.*`` tensors of a text model directory, and its spm.model."""
    from speech.text_model import load_mt_model  # noqa: PLC0415

    path = Path(path)
    spm = path / "spm.model"
    if not spm.exists():
        raise ConfigError(f"init_decoder: {path} has no spm.model; name a model directory of 'interpres train mt'")
    model, _ = load_mt_model(path)
    state = {k: v for k, v in model.state_dict().items() if k.startswith("decoder.")}
    return state, spm

