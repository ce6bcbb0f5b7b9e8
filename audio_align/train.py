"""``interpres train lalm``: the audio-language model's two stages, in the shared loop.

- ``stage: align`` (projector alignment): every training scene once per epoch with its
  reference caption (and, with ``asr_corpus``, every utterance of a speech corpus with its
  transcript); projector and LM learn to say what the encoder heard.
- ``stage: sft`` (instruction tuning): conversations of ``turns`` questions about one
  scene (all four AHA kinds, the general multiple-choice set, captions), the audio in the
  first user turn; the loss is on the answers only. ``init`` starts it from the align
  stage's model directory.
- ``stage: ear`` (the first half of distilling a LALM into a smaller one): ``init`` is a
  model with an encoder of its own (``LalmConfig.ear``, e.g. the teacher's encoder pruned by
  ``interpres compress``); that encoder alone learns to give the pooled states the
  ``teacher``'s front end gives (mean squared error per frame) on the training scenes.
- ``teacher`` in the align and sft stages: word-level KD (:func:`compress.distill.kd_loss`)
  from the teacher LALM's distribution over each answer token, the teacher hearing through
  its own front end; selective as the seeds' LALM recipe is: on the answer tokens only (the
  prompt and the audio carry no loss), ``kd.truncate`` keeping the first part of each answer.

The encoder is frozen: its pooled states are computed once per corpus and split
(:mod:`audio_align.encoded`). Everything else is :func:`speech.loop.run`: exact resume
after a kill, checkpoint averaging, ``device: auto``, ``torchrun`` data parallelism.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from audio_align import qa
from audio_align.encoded import encode_scenes
from audio_align.lalm import (IGNORE, answer_nll, TOKENIZER_FILE, AudioFrontEnd, AudioLanguageModel, ChatTokenizer, LalmConfig,
                              load_lalm_dir, pad_audio, pool_states, save_lalm_dir, train_chat_tokenizer)
from compress.distill import KDConfig, kd_loss
from speech.config import ConfigError
from speech.dataset import batches_by_frames
from speech.loop import LoopConfig, barrier, hash_seed, run, start_run, to_device
from speech.checkpoint import model_device
from speech.tokenizer import PAD_ID

log = logging.getLogger(__name__)

STAGES = ("align", "sft", "ear")


@dataclass
class LalmTrainConfig(LoopConfig):
    """One stage of the LALM (audio_align/configs/lalm_*.yaml)."""

    out: str = "runs/lalm"
    scenes: str = "default"  # the corpus $INTERPRES_HOME/scenes/NAME ('interpres data scenes')
    stage: str = "sft"  # align: captions only; sft: questions of every kind and captions; ear: see above
    init: str = ""  # a LALM directory to start from (the align stage's model); "": a new model
    train_params: str = "all"  # all, or projector (the LM frozen)
    lalm: dict = field(default_factory=dict)  # LalmConfig fields of a new model
    vocab_size: int = 1000  # sentencepiece pieces of a new model's tokenizer (an upper bound)
    turns: int = 6  # questions per training conversation
    max_tokens: int = 8000  # padded tokens per batch
    max_items: int = 32
    encoder_batch: int = 1  # scenes per encoder pass when the states are cached
    # speech recognition besides the scenes (Qwen2-Audio's first stage trains on it): utterances of
    # the en-asr train split of a speech corpus ('interpres data speech'; a name or folder), each
    # a one-turn "transcribe" conversation in both stages; "": none
    asr_corpus: str = ""
    asr_utterances: int = 0  # how many of them (the first in the split's order); 0: all
    # a LALM directory to distill from (stage ear: its front end's states; align/sft: its answer
    # distributions, kd: compress.distill.KDConfig fields); "": none
    teacher: str = ""
    kd: dict = field(default_factory=lambda: {"alpha": 0.5, "temperature": 1.0, "label_smoothing": 0.0})
    dev_eval_scenes: int = 60  # dev scenes whose questions the final model answers (config.json dev_scores)
    lr: float = 1e-3
    warmup_updates: int = 200
    max_updates: int = 3000
    save_interval_updates: int = 200
    validate_interval_updates: int = 200
    average_last: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage not in STAGES:
            raise ConfigError(f"stage={self.stage!r}: expected one of {', '.join(STAGES)}")
        if self.train_params not in ("all", "projector"):
            raise ConfigError(f"train_params={self.train_params!r}: expected all or projector")
        if self.train_params == "projector" and not self.init:
            raise ConfigError("train_params=projector needs init: a trained LM to keep frozen")
        if self.turns < 1:
            raise ConfigError(f"turns must be at least 1, got {self.turns}")
        if self.asr_utterances < 0:
            raise ConfigError(f"asr_utterances must be >= 0, got {self.asr_utterances}")
        if self.stage == "ear" and not (self.init and self.teacher):
            raise ConfigError("stage=ear needs init (a model with an encoder of its own) and teacher (whose states it learns)")
        try:
            KDConfig(**self.kd)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"kd: {e}") from None


@dataclass
class SceneSet:
    """The scenes of one split with their questions and cached encoder states."""

    scenes: list[dict]
    questions: list[list[qa.Question]]
    states: list[torch.Tensor]


def load_scene_set(root: Path, split: str, frontend: AudioFrontEnd, manifest: dict, seed: int,
                   encoder_batch: int = 1) -> SceneSet:
    from audio_align.scenes import read_scenes

    scenes = read_scenes(root, split)
    questions = qa.questions_by_scene(scenes, split, manifest["classes"], qa.rules_of(manifest), seed)
    states = encode_scenes(root, split, scenes, frontend, encoder_batch)
    return SceneSet(scenes, questions, [states[s["id"]] for s in scenes])


def load_asr_set(corpus: str, frontend: AudioFrontEnd, limit: int = 0, seed: int = 0) -> SceneSet:
    """The utterances of a speech corpus's en-asr train split as one-question 'scenes': what
    each says (``qa.transcription_question``), with their cached encoder states."""
    from speech.data.mustc import MustcError, MustcSplit, load_segment
    from speech.train import corpus_root as speech_corpus_root

    root = speech_corpus_root(corpus)
    try:
        split = MustcSplit(root, "en-asr", "train")
    except MustcError as e:
        raise ConfigError(f"asr_corpus: {e}") from None
    segments = [s for s in split.segments if s.src.strip() and s.duration <= frontend.max_seconds]
    segments = segments[:limit] if limit else segments
    if not segments:
        raise ConfigError(f"asr_corpus: {root}/en-asr/data/train has no utterance of at most {frontend.max_seconds:g} s")
    by_id = {s.id: s for s in segments}
    utterances = [{"id": s.id} for s in segments]
    states = encode_scenes(root / "en-asr", "train", utterances, frontend, load=lambda u: load_segment(by_id[u["id"]]))
    return SceneSet(utterances, [[qa.transcription_question(s.id, s.src.strip(), seed)] for s in segments],
                    [states[s.id] for s in segments])


def chat_batch(rows: list[tuple[list[int], list[int]]], states: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """(input ids, labels) rows and each row's encoder states -> a right-padded training batch."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    audio, lens = pad_audio([s.float() for s in states])
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "audio": audio, "audio_lens": lens}


def truncate_answers(labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """labels (B, L) -> the same with only the first ``ceil(fraction * n)`` tokens of each answer
    (each run of labelled positions) kept, IGNORE after them: selective KD's truncation."""
    if fraction >= 1.0:
        return labels
    out = labels.clone()
    for row in out:
        labelled = (row != IGNORE).tolist() + [False]
        start = None
        for i, on in enumerate(labelled):
            if on and start is None:
                start = i
            elif not on and start is not None:
                keep = max(1, math.ceil(fraction * (i - start) - 1e-9))
                row[start + keep:i] = IGNORE
                start = None
    return out


class LalmRecipe:
    def __init__(self, cfg: LalmTrainConfig, model: AudioLanguageModel, tok: ChatTokenizer, train: SceneSet,
                 dev: SceneSet, out: Path, recipe: dict, world: int, teacher: AudioLanguageModel | None = None,
                 teacher_states: list[torch.Tensor] | None = None):
        self.cfg, self.model_cfg, self.tok, self.train, self.dev = cfg, model.cfg, tok, train, dev
        self.out, self.recipe, self.world = out, recipe, world
        self.name = f"lalm {cfg.stage}"
        # KD: the teacher and what it hears of each training scene (its own front end's states)
        self.teacher, self.teacher_states = teacher, teacher_states
        self.kd = KDConfig(**cfg.kd)
        self._len = [[len(tok.user_turn(q.question)) + len(tok.tok.encode(q.answer)) + 1 for q in qs]
                     for qs in train.questions]

    def _conversations(self, data: SceneSet, seed: int) -> list[tuple[int, tuple[int, ...]]]:
        rng = random.Random(seed)
        convs = []
        for si, qs in enumerate(data.questions):
            idx = ([i for i, q in enumerate(qs) if q.kind in (qa.CAPTION, qa.ASR)] if self.cfg.stage == "align"
                   else list(range(len(qs))))
            rng.shuffle(idx)
            convs += [(si, tuple(idx[j:j + self.cfg.turns])) for j in range(0, len(idx), self.cfg.turns)]
        return convs

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, tuple[int, ...]]]]:
        convs = self._conversations(self.train, hash_seed(self.cfg.seed, epoch))
        lengths = [self.model_cfg.audio_tokens(len(self.train.states[si])) + 4 + sum(self._len[si][q] for q in qs)
                   for si, qs in convs]
        batches = batches_by_frames(lengths, self.cfg.max_tokens, self.cfg.max_items, seed=self.cfg.seed, epoch=epoch)
        return [[convs[i] for i in b] for b in batches]

    def _batch(self, data: SceneSet, key: list[tuple[int, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
        rows = []
        for si, qs in key:
            turns = [(data.questions[si][q].question, data.questions[si][q].answer) for q in qs]
            rows.append(self.tok.conversation(turns, self.model_cfg.audio_tokens(len(data.states[si]))))
        return chat_batch(rows, [data.states[si] for si, _ in key])

    def make_batch(self, key: Any, gen: torch.Generator) -> dict[str, torch.Tensor]:
        b = self._batch(self.train, key)
        if self.teacher is not None:
            b["labels"] = truncate_answers(b["labels"], self.kd.truncate)
            t_audio, t_lens = pad_audio([self.teacher_states[si].float() for si, _ in key])
            if [self.model_cfg.audio_tokens(int(n)) for n in b["audio_lens"]] != \
                    [self.teacher.cfg.audio_tokens(int(n)) for n in t_lens]:
                raise ConfigError("teacher: its front end gives another number of audio tokens than the student's "
                                  "(pool and stride must match)")
            b["teacher_audio"], b["teacher_audio_lens"] = t_audio, t_lens
        return b

    def backward(self, module: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        n_tok = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        total, loss_sum, kd_sum = 0.0, 0.0, 0.0
        for b in batches:  # through module's forward: a DDP wrapper's gradient hooks run
            logits = module(b["input_ids"], b["attention_mask"], b["audio"], b["audio_lens"])
            if self.teacher is None:
                loss, _ = answer_nll(logits, b["labels"])
                nll = float(loss.detach())
            else:
                self.teacher.to(logits.device)
                with torch.no_grad():
                    t_logits = self.teacher(b["input_ids"], b["attention_mask"], b["teacher_audio"],
                                            b["teacher_audio_lens"])
                target = b["labels"][:, 1:].masked_fill(b["labels"][:, 1:] == IGNORE, PAD_ID)
                loss, stats = kd_loss(logits[:, :-1], t_logits[:, :-1], target, self.kd, PAD_ID)
                nll, kd_sum = stats["nll"], kd_sum + stats["kd"]
            (loss / max(1, n_tok)).backward()
            total += nll
            loss_sum += float(loss.detach())
        out = {"loss": loss_sum / max(1, n_tok), "nll": total / max(1, n_tok)}
        return out | ({"kd": kd_sum / max(1, n_tok)} if self.teacher is not None else {})

    def dev_loss(self, model: torch.nn.Module) -> float:
        convs = self._conversations(self.dev, self.cfg.seed)
        device = model_device(model)
        total, tokens = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(convs), 16):
                b = to_device(self._batch(self.dev, convs[i:i + 16]), device)
                nll, n = model.loss(b)
                total += float(nll)
                tokens += n
        return total / max(1, tokens)

    def finish(self, model: torch.nn.Module, averaged: list[Path], state: dict) -> None:
        scores, n = dev_scores(model, self.tok, self.dev, self.cfg.dev_eval_scenes)
        extra = {"task": "lalm", "stage": self.cfg.stage, "recipe": self.recipe, "scenes": self.cfg.scenes,
                 "averaged": [p.name for p in averaged], "dev_scores": scores, "dev_questions": n,
                 "train_seconds": round(state["seconds"], 1), "updates": state["update"],
                 "threads": torch.get_num_threads(), "processes": self.world}
        save_lalm_dir(model, self.out / TOKENIZER_FILE, self.out / "model", extra=extra)
        log.info("model written to %s (dev accuracy: %s)", self.out / "model", scores)


class EarRecipe:
    """stage ear: the model's own encoder (``model.ear``) learns to give the pooled states the
    teacher's front end gives (``train.states``), from the scenes' waveforms; the rest is frozen."""

    def __init__(self, cfg: LalmTrainConfig, model: AudioLanguageModel, tok: ChatTokenizer, root: Path,
                 train: SceneSet, dev: SceneSet, out: Path, recipe: dict, world: int):
        self.cfg, self.model_cfg, self.tok, self.root, self.train, self.dev = cfg, model.cfg, tok, root, train, dev
        self.out, self.recipe, self.world = out, recipe, world
        self.name = "lalm ear"
        self.frontend = AudioFrontEnd.of(model.cfg, ear=model.ear)  # its features and pooling, not its cache
        self.dev_items = list(range(min(len(dev.scenes), 40)))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        lengths = [s.shape[0] for s in self.train.states]  # pooled frames
        return batches_by_frames(lengths, self.cfg.max_tokens, self.cfg.max_items, seed=self.cfg.seed, epoch=epoch)

    def _batch(self, data: SceneSet, idx: list[int]) -> dict[str, torch.Tensor]:
        from speech.audio import load_audio

        x, lens = self.frontend.features([load_audio(self.root / data.scenes[i]["split"] / data.scenes[i]["wav"])
                                          for i in idx])
        target, target_lens = pad_audio([data.states[i].float() for i in idx])
        return {"features": x, "feat_lens": lens, "target": target, "target_lens": target_lens}

    def make_batch(self, key: Any, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return self._batch(self.train, key)

    def _sq_error(self, model: torch.nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Summed squared error over the valid pooled frames (mean over the state's dimensions), and their count."""
        enc, enc_lens, _ = model.ear(b["features"], b["feat_lens"])
        err, frames = torch.zeros((), device=enc.device), 0
        for pooled, t, n in zip(pool_states(enc, enc_lens, self.model_cfg.pool), b["target"], b["target_lens"].tolist()):
            if pooled.shape[0] != n:
                raise ConfigError(f"stage ear: the encoder gives {pooled.shape[0]} pooled frames where the teacher "
                                  f"gives {n} (their conv front ends and pool must match)")
            err = err + ((pooled - t[:n]) ** 2).mean(-1).sum()
            frames += n
        return err, frames

    def backward(self, module: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        model = getattr(module, "module", module)
        frames = sum(int(b["target_lens"].sum()) for b in batches)
        total = 0.0
        for b in batches:
            err, _ = self._sq_error(model, b)
            (err / max(1, frames)).backward()
            total += float(err.detach())
        return {"loss": total / max(1, frames), "nll": total / max(1, frames)}  # the loop shows "nll": here the MSE

    def dev_loss(self, model: torch.nn.Module) -> float:
        device = model_device(model)
        total, frames = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.dev_items), 4):
                err, n = self._sq_error(model, to_device(self._batch(self.dev, self.dev_items[i:i + 4]), device))
                total, frames = total + float(err), frames + n
        return total / max(1, frames)

    def finish(self, model: torch.nn.Module, averaged: list[Path], state: dict) -> None:
        # how the model's LM, unchanged, answers through the trained encoder (its states encoded anew)
        from speech.audio import load_audio

        frontend = AudioFrontEnd.of(model.cfg, ear=model.ear)
        n = min(self.cfg.dev_eval_scenes, len(self.dev.scenes))
        states = [frontend([load_audio(self.root / s["split"] / s["wav"])])[0] for s in self.dev.scenes[:n]]
        heard = SceneSet(self.dev.scenes[:n], self.dev.questions[:n], states)
        scores, nq = dev_scores(model, self.tok, heard, n)
        extra = {"task": "lalm", "stage": "ear", "recipe": self.recipe, "scenes": self.cfg.scenes,
                 "teacher": self.cfg.teacher, "averaged": [p.name for p in averaged], "dev_scores": scores,
                 "dev_questions": nq, "dev_mse": round(self.dev_loss(model), 5),
                 "train_seconds": round(state["seconds"], 1), "updates": state["update"],
                 "threads": torch.get_num_threads(), "processes": self.world}
        save_lalm_dir(model, self.out / TOKENIZER_FILE, self.out / "model", extra=extra)
        log.info("model written to %s (dev accuracy through the trained encoder: %s)", self.out / "model", scores)


def dev_scores(model: AudioLanguageModel, tok: ChatTokenizer, dev: SceneSet, scenes: int) -> tuple[dict[str, float], int]:
    """Accuracy by kind on the questions of the first ``scenes`` dev scenes (captions aside),
    and how many questions that was."""
    from audio_align.evaluate import accuracy_table, answer

    n = min(scenes, len(dev.scenes))
    items = [(si, q) for si in range(n) for q in dev.questions[si] if q.kind != qa.CAPTION]
    preds = answer(model, tok, [dev.states[si] for si, _ in items], [q.question for _, q in items])
    table = accuracy_table([q for _, q in items], preds)
    return {k: round(v["accuracy"], 4) for k, v in table.items()}, len(items)


def train(cfg: LalmTrainConfig) -> Path:
    from audio_align.scenes import corpus_root, read_manifest

    rank, world, recipe = start_run(cfg)
    out = Path(cfg.out)
    root = corpus_root(cfg.scenes)
    manifest = read_manifest(root)
    if cfg.init:
        model, _, _ = load_lalm_dir(cfg.init)
        if rank == 0 and not (out / TOKENIZER_FILE).is_file():
            shutil.copyfile(Path(cfg.init) / TOKENIZER_FILE, out / TOKENIZER_FILE)
        mcfg = model.cfg
    else:
        mcfg = LalmConfig(**cfg.lalm)
        if mcfg.ear:
            raise ConfigError("lalm.ear: a model with an encoder of its own is made by pruning a trained one "
                              "(interpres compress), not from nothing")
    teacher = None
    if cfg.teacher:
        teacher, _, _ = load_lalm_dir(cfg.teacher)
        teacher.requires_grad_(False)
        if cfg.init and teacher.cfg.vocab_size != mcfg.vocab_size:
            raise ConfigError(f"teacher: {cfg.teacher} has {teacher.cfg.vocab_size} pieces, the student "
                              f"{mcfg.vocab_size}: KD needs one tokenizer")
    # rank 0 fills the encoder caches and trains the tokenizer; the other ranks wait, then read them
    if rank != 0:
        barrier(world)
    teacher_sets, tfront = {}, None
    if teacher is not None:
        tfront = AudioFrontEnd.of(teacher.cfg, ear=teacher.ear)
        teacher_sets = {split: load_scene_set(root, split, tfront, manifest, cfg.seed, encoder_batch=cfg.encoder_batch)
                        for split in (("train", "dev") if cfg.stage == "ear" else ("train",))}
    if cfg.stage == "ear":
        if model.ear is None:
            raise ConfigError(f"stage=ear: {cfg.init} hears through {mcfg.audio_encoder}, it has no encoder of its "
                              "own to train (interpres compress's prune stage gives it one)")
        del tfront  # its states are loaded; the teacher's encoder is not needed while training
        if rank == 0:
            barrier(world)
        tok = ChatTokenizer(out / TOKENIZER_FILE)
        model.requires_grad_(False)
        model.ear.requires_grad_(True)
        log.info("LALM ear: %d trainable parameters (its encoder) learn %s's states on %d train scenes",
                 sum(p.numel() for p in model.ear.parameters()), cfg.teacher, len(teacher_sets["train"].scenes))
        return run(EarRecipe(cfg, model, tok, root, teacher_sets["train"], teacher_sets["dev"], out, recipe, world),
                   model, cfg, rank, world)
    frontend = AudioFrontEnd.of(mcfg, ear=model.ear if cfg.init else None)
    if cfg.init and frontend.dim != mcfg.encoder_dim:
        raise ConfigError(f"{cfg.init}: encoder_dim {mcfg.encoder_dim} but {mcfg.audio_encoder} has d_model {frontend.dim}")
    sets = {split: load_scene_set(root, split, frontend, manifest, cfg.seed, encoder_batch=cfg.encoder_batch)
            for split in ("train", "dev")}
    teacher_states = teacher_sets["train"].states if teacher is not None else None
    if cfg.asr_corpus:
        asr = load_asr_set(cfg.asr_corpus, frontend, cfg.asr_utterances, cfg.seed)
        sets["train"] = SceneSet(sets["train"].scenes + asr.scenes, sets["train"].questions + asr.questions,
                                 sets["train"].states + asr.states)
        if teacher is not None:
            teacher_states = teacher_states + load_asr_set(cfg.asr_corpus, tfront, cfg.asr_utterances, cfg.seed).states
        log.info("speech recognition: %d utterances of %s", len(asr.scenes), cfg.asr_corpus)
    if rank == 0:
        if not cfg.init and not (out / TOKENIZER_FILE).is_file():
            texts = [t for qs in sets["train"].questions for q in qs for t in (q.question, q.answer)]
            train_chat_tokenizer(texts, out / TOKENIZER_FILE, cfg.vocab_size)
        barrier(world)
    tok = ChatTokenizer(out / TOKENIZER_FILE)
    if not cfg.init:
        mcfg = dataclasses.replace(mcfg, vocab_size=tok.vocab_size, encoder_dim=frontend.dim)
        torch.manual_seed(cfg.seed)
        model = AudioLanguageModel(mcfg, tok.audio)
        if teacher is not None and teacher.cfg.vocab_size != mcfg.vocab_size:
            raise ConfigError(f"teacher: {cfg.teacher} has {teacher.cfg.vocab_size} pieces, the new tokenizer "
                              f"{mcfg.vocab_size}: KD needs one tokenizer (start from init)")
    del frontend, tfront
    if model.ear is not None:
        model.ear.requires_grad_(False)  # heard through, frozen: its states are cached
    if cfg.train_params == "projector":
        model.lm.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LALM %s: %d trainable parameters; %d train scenes, %d dev scenes%s", cfg.stage, n_params,
             len(sets["train"].scenes), len(sets["dev"].scenes), f"; KD from {cfg.teacher}" if teacher else "")
    return run(LalmRecipe(cfg, model, tok, sets["train"], sets["dev"], out, recipe, world, teacher, teacher_states),
               model, cfg, rank, world)
