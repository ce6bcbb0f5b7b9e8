"""The training loop every recipe of the project shares (speech ASR/ST, simultaneous MT).

A recipe says what its data and its loss are; this loop owns everything else, once:

- Adam with fairseq's inverse-square-root warmup, gradient clipping and accumulation;
- an epoch is a list of batch keys that is a pure function of (seed, epoch), so a
  position in it (``epoch``, ``pos``) is all the data state there is;
- checkpoints every ``save_interval_updates`` hold the model, the optimizer moments, the
  RNG states and that position: a run killed at any moment (SIGKILL) and started again
  ends with exactly the weights of an uninterrupted run;
- validation loss every ``validate_interval_updates`` with early stopping (``patience``);
- at the end the last ``average_last`` checkpoints are averaged (fairseq's
  average_checkpoints) and the recipe writes its model directory from the average;
- under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP (gloo on CPU, NCCL
  on GPUs) and rank ``r`` of ``w`` takes batches ``r, r + w, ...`` of the epoch;
- ``device: auto`` (the default) trains on a CUDA GPU when torch sees one and on the CPU
  otherwise: the same recipe, faster where a GPU is, never needing one. Batches are made
  on the CPU (so augmentation draws the same numbers everywhere) and moved; checkpoints,
  the average and the model directory are written from the CPU. Exact resume holds on one
  device; a GPU's kernels are not bitwise deterministic, so a GPU run is repeatable only
  to within their rounding.
- ``precision: bf16`` runs each update's forward and backward, and validation, under
  bfloat16 autocast (the weights, their gradients and Adam's moments stay float32): on a GPU, and on CPUs
  with AVX512-BF16 or AMX, where it halves an update of Whisper base (BENCHMARKS.md); on
  one without (AVX2 only) autocast emulates bfloat16 and an update takes about 27x longer
  (BENCHMARKS.md): the loop warns.
  ``fp32`` (the default) keeps runs bitwise repeatable on the CPU.

Nothing is pickled: weights and optimizer moments are safetensors, the rest JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from compress.files import atomic_dir, write_json_atomic
from speech.checkpoint import model_device
from speech.config import ConfigError, config_to_dict

log = logging.getLogger(__name__)


class Progress:
    """A ``(done, total)`` progress callback: a tqdm bar on a terminal, and a log line every
    ``every`` items and at the end, so that logs show it too where tqdm is off."""

    def __init__(self, total: int, desc: str, unit: str, every: int = 1000):
        self.desc, self.every, self.logged = desc, every, 0
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=None)

    def __call__(self, done: int, total: int) -> None:
        self.bar.update(done - self.bar.n)
        if done - self.logged >= self.every or (done == total and done != self.logged):
            self.logged = done
            log.info("%s: %d/%d", self.desc, done, total)

    def close(self) -> None:
        self.bar.close()


PRECISIONS = ("fp32", "bf16")


@dataclass
class LoopConfig:
    """What the loop needs from a recipe's config; recipe configs extend it."""

    out: str = "runs/train"
    lr: float = 2e-3
    warmup_updates: int = 500
    warmup_init_lr: float = 1e-7
    max_updates: int = 5000
    max_epochs: int = 100
    # stop (after a checkpoint) when the run has trained this long (ActiveClock: paused time
    # does not count); 0: no limit
    max_seconds: float = 0.0
    clip_norm: float = 10.0
    weight_decay: float = 0.0
    update_freq: int = 1  # gradient accumulation
    save_interval_updates: int = 250
    keep_last: int = 5
    validate_interval_updates: int = 250
    patience: int = 0  # stop after this many validations without a better dev loss; 0: never
    average_last: int = 5
    seed: int = 1
    threads: int = 0  # torch intra-op threads; 0: torch's default
    # auto: a CUDA GPU when torch sees one, else the CPU; or cpu, cuda, cuda:N
    device: str = "auto"
    # fp32, or bf16: forward and backward under bfloat16 autocast, float32 weights and moments
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_device_name(self.device)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.update_freq < 1:
            raise ConfigError(f"update_freq must be at least 1, got {self.update_freq}")
        if self.max_updates < 1:
            raise ConfigError(f"max_updates must be at least 1, got {self.max_updates}")


class Recipe(Protocol):
    """The part of a training run that knows its data and its loss."""

    name: str  # shown on the progress bar

    def epoch_batches(self, epoch: int) -> list[Any]:
        """Every batch key of ``epoch``, in order: a pure function of the seed and ``epoch``."""

    def make_batch(self, key: Any, gen: torch.Generator) -> Any:
        """The tensors of one batch, on the CPU (the loop moves them); ``gen`` seeds its augmentation."""

    def backward(self, module: nn.Module, batches: list[Any]) -> dict[str, float]:
        """Loss of the accumulated ``batches`` through ``module`` (the model or its DDP
        wrapper), backpropagated; returns statistics, "loss" and "nll" at least."""

    def dev_loss(self, model: nn.Module) -> float:
        """Per-token NLL on the dev set (the loop restores train mode and the RNG); the dev
        batches go where the model is (:func:`speech.model.model_device`, :func:`to_device`)."""

    def finish(self, model: nn.Module, averaged: list[Path], state: dict) -> None:
        """Write ``out/model/`` from ``model`` (already the checkpoint average, on the CPU); rank 0 only."""


def inverse_sqrt_lr(update: int, cfg: LoopConfig) -> float:
    """fairseq's inverse_sqrt: linear warmup to ``lr``, then ``lr * sqrt(warmup / update)``."""
    if update < cfg.warmup_updates:
        return cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * update / max(1, cfg.warmup_updates)
    return cfg.lr * math.sqrt(cfg.warmup_updates / max(1, update)) if cfg.warmup_updates else cfg.lr


# ----------------------------------------------------------------------------- devices


def check_device_name(name: str) -> None:
    if name not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise ConfigError(f"device={name!r}: expected auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> torch.device:
    """The device a run trains on. ``auto``: a CUDA GPU when torch sees one, else the CPU.
    ``cuda`` is the process's own GPU: ``cuda:LOCAL_RANK`` under torchrun, else ``cuda:0``."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={name}: this torch ({torch.__version__}) sees no CUDA GPU; "
                          f"use device=cpu, or auto to take a GPU only where there is one")
    dev = torch.device(name if name != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    if dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name}: cuda:{dev.index} asked for, but torch sees "
                          f"{torch.cuda.device_count()} GPU(s)")
    return dev


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (in dicts, lists and tuples, nested) on ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def get_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's RNG states: the CPU's, and the GPU's when ``device`` is one (dropout draws there)."""
    states = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["rng.cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in states:  # a CPU checkpoint resumed on a GPU has none
        torch.cuda.set_rng_state(states["rng.cuda"], device)


def hash_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big") & (2**63 - 1)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Write ``path/`` (model, optimizer moments, RNG, JSON state) atomically, from the CPU."""
    tensors = {f"model.{k}": _cpu_copy(v) for k, v in model.state_dict().items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for k, v in opt.state.get(p, {}).items():
            tensors[f"opt.{i}.{k}"] = _cpu_copy(v if torch.is_tensor(v) else torch.tensor(v))
    tensors.update({k: _cpu_copy(v) for k, v in get_rng(model_device(model)).items()})
    _, py_state, py_pos = random.getstate()
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / "checkpoint.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "python_random": list(py_state),
                                                    "python_random_pos": py_pos}, indent=1))


def _cpu_copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True).contiguous()


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Restore ``model`` and ``opt`` (on the model's device) and the RNGs; returns the JSON state."""
    tensors = load_file(str(path / "checkpoint.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        # the moments go where their parameter is; Adam keeps its step count on the CPU
        st = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if st:
            opt.state[p] = {k: v if k == "step" else v.to(p.device) for k, v in st.items()}
    state = json.loads((path / "state.json").read_text())
    set_rng(tensors, model_device(model))
    random.setstate((3, tuple(state.pop("python_random")), state.pop("python_random_pos")))
    return state


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the model weights of ``paths`` (fairseq's average_checkpoints)."""
    total: dict[str, torch.Tensor] = {}
    for p in paths:
        tensors = load_file(str(p / "checkpoint.safetensors"))
        for k, v in tensors.items():
            if k.startswith("model."):
                v = v.double() if v.is_floating_point() else v
                total[k[6:]] = total[k[6:]] + v if k[6:] in total and v.is_floating_point() else v
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    found = [p for p in ckpt_dir.glob("checkpoint_*") if p.is_dir() and p.name.split("_")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def iter_history(out: str | Path) -> Iterator[dict]:
    """The logged history of the newest checkpoint of a run (for plots and reports)."""
    ckpts = list_checkpoints(Path(out) / "checkpoints")
    if ckpts:
        yield from json.loads((ckpts[-1] / "state.json").read_text())["history"]


# ----------------------------------------------------------------------------- the loop


class ActiveClock:
    """Seconds a run has trained, counted so that time it did not run is left out.

    Wall time, interval by interval (one per update), except that an interval in which the
    process used less CPU time than wall time counts only its CPU time: a process stopped
    with SIGSTOP (or ^Z, or a suspended VM) uses none, so a pause adds nothing, while a
    process computing on one thread or more uses at least the wall time and counts exactly
    that. ``max_seconds`` is then a budget of compute, not of the calendar. (A process that
    waits on a GPU would count less if it slept while waiting; CUDA's default with one
    context spins, which counts.)
    """

    def __init__(self, start: float = 0.0, wall=time.perf_counter, cpu=time.process_time):
        self.seconds = float(start)
        self._wall, self._cpu = wall, cpu
        self._w, self._c = wall(), cpu()

    def tick(self) -> float:
        w, c = self._wall(), self._cpu()
        self.seconds += max(0.0, min(w - self._w, c - self._c))
        self._w, self._c = w, c
        return self.seconds


def init_distributed(device: torch.device | None = None) -> tuple[int, int]:
    """(rank, world size); joins the process group when torchrun started several processes
    (NCCL when they train on GPUs, gloo on the CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def start_run(cfg: LoopConfig) -> tuple[int, int, dict]:
    """What every recipe does first: join the process group, set the threads, write
    ``out/recipe.json`` (rank 0) and seed Python's and torch's RNGs.
    Returns (rank, world size, the recipe as a dict)."""
    rank, world = init_distributed(resolve_device(cfg.device))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = config_to_dict(cfg)
    if rank == 0:
        write_json_atomic(out / "recipe.json", recipe)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return rank, world, recipe


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (oneDNN's test: AVX512 with BF16, or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def run(recipe: Recipe, model: nn.Module, cfg: LoopConfig, rank: int = 0, world: int = 1) -> Path:
    """Train ``model`` (or resume its run) under ``cfg``; return ``cfg.out/model``."""
    out = Path(cfg.out)
    ckpt_dir, final = out / "checkpoints", out / "model"
    device = resolve_device(cfg.device)
    model.to(device)
    if device.type == "cuda":  # TF32 matrix products: fp32 training at tensor-core speed
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        log.info("training on %s (%s)", device, torch.cuda.get_device_name(device))
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log.warning("precision=bf16 on a CPU without bfloat16 instructions (%s): autocast emulates them, and "
                    "an update of a Whisper-base student took 27x longer than in fp32 (BENCHMARKS.md); "
                    "set precision=fp32",
                    torch.backends.cpu.get_cpu_capability())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=cfg.weight_decay)
    state = {"update": 0, "epoch": 0, "pos": 0, "best_dev_loss": None, "bad_validations": 0,
             "seconds": 0.0, "history": [], "done": False}
    finish_here = False
    ckpts = list_checkpoints(ckpt_dir)
    if ckpts:
        last = json.loads((ckpts[-1] / "state.json").read_text())
        if last.get("done") and not _limits_left(last, cfg) and (final / "config.json").exists():
            log.info("%s: this run has already finished (%s); nothing to do", out, ckpts[-1].name)
            return final
        state = load_checkpoint(ckpts[-1], model, opt)
        log.info("resumed from %s (update %d, epoch %d, batch %d)", ckpts[-1], state["update"], state["epoch"], state["pos"])
        if state["done"] and _limits_left(state, cfg):
            # the recipe's limits were raised since the run finished: train on from there
            log.info("max_updates/max_seconds allow more than the finished run did: continuing")
            state["done"] = False
        elif not state["done"] and not _limits_left(state, cfg):
            if state["update"] > cfg.max_updates:
                raise ConfigError(f"max_updates={cfg.max_updates}: {ckpts[-1]} is already at update {state['update']}; "
                                  f"a run cannot be shortened past its last checkpoint (raise max_updates, or move "
                                  f"the later checkpoints out of {ckpt_dir})")
            # the limits were lowered to where this checkpoint stands: finish here, as a run
            # trained under them would have (validate, mark done, average)
            log.info("the limits stop this run at %s: finishing there", ckpts[-1].name)
            finish_here = True
    module = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        module = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def checkpoint() -> None:
        if rank == 0:
            save_checkpoint(ckpt_dir / f"checkpoint_{state['update']}", model, opt, state)
            for old in list_checkpoints(ckpt_dir)[: -max(cfg.keep_last, cfg.average_last)]:
                shutil.rmtree(old)
            kill_at = os.environ.get("INTERPRES_TEST_KILL_AT_UPDATE")  # for the resume tests
            if kill_at and int(kill_at) == state["update"]:
                os.kill(os.getpid(), signal.SIGKILL)
            stop_at = os.environ.get("INTERPRES_TEST_STOP_AT_UPDATE")  # for the pause test
            if stop_at and int(stop_at) == state["update"]:
                os.kill(os.getpid(), signal.SIGSTOP)
        barrier(world)

    model.train()
    clock = ActiveClock(state["seconds"])
    bar = tqdm(total=cfg.max_updates, initial=state["update"], desc=f"train {recipe.name}", unit="upd",
               disable=None if rank == 0 else True)
    stop = state["done"]
    if finish_here:
        _validate(recipe, model, cfg, state, rank)
        state["done"] = stop = True
        checkpoint()
    chunk = world * cfg.update_freq
    while not stop and state["epoch"] < cfg.max_epochs:
        seq = recipe.epoch_batches(state["epoch"])
        if chunk > 1:  # every rank gets the same number of whole updates
            seq = seq[: len(seq) - len(seq) % chunk]
        steps = len(seq) // world
        while state["pos"] < steps and not stop:
            accum = []
            for _ in range(cfg.update_freq):
                if state["pos"] >= steps:
                    break
                # what a batch draws depends on where it stands, not on what ran before
                gen = torch.Generator().manual_seed(hash_seed(cfg.seed, state["epoch"], state["pos"], rank))
                accum.append(to_device(recipe.make_batch(seq[state["pos"] * world + rank], gen), device))
                state["pos"] += 1
            for g in opt.param_groups:
                g["lr"] = inverse_sqrt_lr(state["update"] + 1, cfg)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                stats = recipe.backward(module, accum)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            state["update"] += 1
            state["seconds"] = clock.tick()
            if world > 1:  # the ranks stop at the same update: they agree on the slowest clock
                t = torch.tensor([state["seconds"]], dtype=torch.float64, device=device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                state["seconds"] = clock.seconds = float(t)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", nll=f"{stats['nll']:.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
            if state["update"] % 50 == 0 and rank == 0:  # progress in logs too, where tqdm is off
                log.info("update %d/%d epoch %d: loss %.3f lr %.2e %.1f s", state["update"], cfg.max_updates,
                         state["epoch"], stats["loss"], opt.param_groups[0]["lr"], state["seconds"])
            if state["update"] % 10 == 0:
                state["history"].append({"update": state["update"], **{k: round(v, 4) for k, v in stats.items()},
                                         "gnorm": round(float(gnorm), 3), "seconds": round(state["seconds"], 1)})
            # the last update is validated, whichever limit ends the run
            last = state["update"] >= cfg.max_updates or bool(cfg.max_seconds and state["seconds"] >= cfg.max_seconds)
            if state["update"] % cfg.validate_interval_updates == 0 or last:
                stop = _validate(recipe, model, cfg, state, rank) or stop
            stop = stop or last
            if stop or state["update"] % cfg.save_interval_updates == 0:
                state["done"] = stop
                checkpoint()
        if not stop:
            state["epoch"] += 1
            state["pos"] = 0
    bar.close()
    ckpts = list_checkpoints(ckpt_dir)
    if state["update"] and (not ckpts or int(ckpts[-1].name.split("_")[1]) != state["update"]):
        # max_epochs ended the run between checkpoints: validate and keep where it stands
        _validate(recipe, model, cfg, state, rank)
        state["done"] = True
        checkpoint()
    state["done"] = True

    if rank == 0:
        ckpts = list_checkpoints(ckpt_dir)
        paths = ckpts[-cfg.average_last:] if cfg.average_last > 0 else ckpts[-1:]
        model.to("cpu")  # the average, its dev scores and the model directory: on the CPU
        model.load_state_dict(average_checkpoints(paths))
        recipe.finish(model, paths, state)
    barrier(world)
    return final


def _limits_left(state: dict, cfg: LoopConfig) -> bool:
    """Whether a run that stopped at ``state`` would still train under ``cfg``'s limits."""
    return (state["update"] < cfg.max_updates and state["epoch"] < cfg.max_epochs
            and not (cfg.max_seconds and state["seconds"] >= cfg.max_seconds)
            and not (cfg.patience and state["bad_validations"] >= cfg.patience))


def _validate(recipe: Recipe, model: nn.Module, cfg: LoopConfig, state: dict, rank: int) -> bool:
    """Dev loss into the history; True when early stopping says stop."""
    # keep the dropout RNG where it was: validation must not change what training draws next
    device = model_device(model)
    rng = get_rng(device)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        loss = recipe.dev_loss(model)
    model.train()
    set_rng(rng, device)
    state["history"].append({"update": state["update"], "dev_nll": round(loss, 4)})
    if rank == 0:
        log.info("update %d: dev nll %.4f", state["update"], loss)
    best = state["best_dev_loss"]
    if best is None or loss < best:
        state["best_dev_loss"] = loss
        state["bad_validations"] = 0
    else:
        state["bad_validations"] += 1
    return bool(cfg.patience and state["bad_validations"] >= cfg.patience)
