"""The release's learning-rate schedule (docs/method.md §6): linear warm-up, then cosine to a floor,
evaluated per optimiser step with the cosine position counted from step 0 (timm's
``CosineLRScheduler`` without warm-up prefix). Every parameter group decays to the same floor.

The warm-up's first step is at ``base_lr / warmup_steps``, not at 0 as in the release: a step at
rate 0 computes a gradient and moves nothing, which on a small training set (a few steps per epoch)
wastes a noticeable share of the run."""

from __future__ import annotations

import math

import torch


def learning_rate(step: int, base_lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> float:
    """Rate at optimiser step ``step`` (0-based); the warm-up reaches ``base_lr`` at its last step."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return min_lr + (base_lr - min_lr) * cosine


class WarmupCosine:
    """Sets every group's ``lr`` from its ``base_lr`` before each optimiser step."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float):
        self.optimizer = optimizer
        self.total_steps, self.warmup_steps, self.min_lr = total_steps, warmup_steps, min_lr
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])

    def apply(self, step: int) -> float:
        """Set the rates for optimiser step ``step``; returns the first group's rate (for logs)."""
        rates = [
            learning_rate(step, g["base_lr"], self.min_lr, self.total_steps, self.warmup_steps)
            for g in self.optimizer.param_groups
        ]
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        return rates[0]
