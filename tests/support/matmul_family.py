"""A tiny real workload with the compress Family protocol, for the report's own tests: each
test item is a vector pushed through ``depth`` products with a fixed random matrix of the
variant's ``size``; the "output" is the sign of the result's sum, scored as the share of
positive outputs. Measured in child processes, so it lives on the tests' import path."""

from __future__ import annotations

from typing import Any

import torch


class MatmulFamily:
    quality = "positive"

    def __init__(self, items: int = 6, depth: int = 20) -> None:
        self.items, self.depth = items, depth

    def test_items(self, settings: dict[str, Any]) -> list[int]:
        return list(range(self.items))

    def open(self, variant: dict[str, Any], threads: int) -> torch.Tensor:
        size = int(variant["decode"]["size"])
        g = torch.Generator().manual_seed(size)
        return torch.randn(size, size, generator=g) / size ** 0.5

    def infer(self, runner: torch.Tensor, items: list[int]) -> list[bool]:
        outs = []
        for i in items:
            x = torch.randn(runner.shape[0], generator=torch.Generator().manual_seed(i))
            for _ in range(self.depth):
                x = torch.tanh(runner @ x)
            outs.append(bool(x.sum() > 0))
        return outs

    def score(self, runner: torch.Tensor, items: list[int], outputs: list[bool]) -> dict[str, float]:
        return {"positive": 100.0 * sum(outputs) / len(outputs)}
