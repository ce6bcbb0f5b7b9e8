"""Low-rank adapters (LoRA, Hu et al. 2021) on a model's nn.Linear layers.

    names = add_lora(model, LoraConfig(rank=16, targets=["q_proj", "v_proj"], modules=["decoder"]))
    ... train: only the adapters have gradients ...
    adapters = lora_state_dict(model)     # the few MB that say what training changed
    merge_lora(model)                     # back to plain nn.Linear: W + (alpha / rank) B A

Each adapted layer computes ``W x + b + (alpha / rank) * B (A x)`` with ``A`` (rank, in)
drawn as nn.Linear draws its weights and ``B`` (out, rank) zero, so training starts from
the model as it was. Knows nn.Linear and module names only, no model family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from compress.errors import UserError


class LoraError(UserError, ValueError):
    """A LoRA setting that cannot apply to the model; the message names it."""


@dataclass
class LoraConfig:
    """Which Linear layers get adapters: those whose last name is in ``targets``, under one
    of the dotted ``modules`` prefixes (empty: anywhere). ``rank`` 0 turns LoRA off."""

    rank: int = 0
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    modules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise LoraError(f"lora.rank must be >= 0, got {self.rank}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise LoraError(f"lora.alpha must be a positive number, got {self.alpha}")
        if self.rank and not self.targets:
            raise LoraError("lora.targets names no layer")


class LoraLinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        """The plain nn.Linear with the update folded into its weight."""
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        return self.base.requires_grad_(True)


def _under(name: str, prefixes: list[str]) -> bool:
    return not prefixes or any(name == p or name.startswith(p + ".") for p in prefixes)


def add_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Wrap the matching Linear layers of ``model`` in place and freeze every other
    parameter; the names of the wrapped layers. A config that matches nothing is an error."""
    if cfg.rank == 0:
        return []
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in cfg.targets and _under(name, cfg.modules)]
    if not found:
        raise LoraError(f"lora: no Linear layer named {cfg.targets} under {cfg.modules or 'the model'}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, linear in found:
        if cfg.rank > min(linear.in_features, linear.out_features):
            raise LoraError(f"lora.rank {cfg.rank} exceeds the size of '{name}' "
                            f"({linear.out_features} x {linear.in_features})")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, LoraLinear(linear, cfg.rank, cfg.alpha))
    return [name for name, _ in found]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters alone: ``NAME.lora_a`` / ``NAME.lora_b`` for each wrapped layer."""
    return {f"{name}.{p}": getattr(m, p).detach() for name, m in model.named_modules()
            if isinstance(m, LoraLinear) for p in ("lora_a", "lora_b")}


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its layer, in place; how many layers were merged."""
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLinear)]
    for name, m in wrapped:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, m.merged())
    return len(wrapped)
