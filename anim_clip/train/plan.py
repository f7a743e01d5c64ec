"""Which clips each rank trains on, shared by cached and end-to-end training.

An epoch is a sequence of global batches that together hold every clip once: the clip order is cut
into ``batches`` parts whose sizes differ by at most one (``batch_size × world`` at most), so no
remainder is dropped and no batch is a small leftover. Rank r takes every world-th clip of each.
One process with the same global batch therefore sees exactly the clips that the ranks see
together, and :meth:`EpochPlan.loss_weight` weighs each rank's loss by its share of the optimiser
step's clips, which is what makes a torchrun run equal to a single-process run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from anim_clip.errors import AnimClipError


def batches_per_epoch(clips: int, batch_size: int, world: int, accumulation: int, min_steps: int = 1) -> int:
    """Global batches that hold ``clips`` once, in whole optimiser steps of ``accumulation`` batches:
    enough that none exceeds ``batch_size × world`` clips, and at least ``min_steps`` steps' worth
    while every batch keeps a clip per process (a small training set gets smaller batches, not
    fewer steps). Refused when a batch would leave a process without a clip."""
    filled = math.ceil(clips / (batch_size * world * accumulation))
    batches = accumulation * max(filled, min(min_steps, clips // (world * accumulation)))
    if clips // batches < world:
        raise AnimClipError(f"{clips} training clips cannot give each of {world} process(es) a clip in each of "
                            f"{batches} batches (train.accumulation={accumulation}): lower train.accumulation"
                            + (" or run fewer processes" if world > 1 else ""))
    return batches


@dataclass(frozen=True)
class EpochPlan:
    epoch: int  # 0-based
    clips: int  # clips in the epoch: every training clip once
    batches: int  # global batches in the epoch (a multiple of train.accumulation)
    accumulation: int  # global batches per optimiser step
    rank: int
    world: int

    def bounds(self, b: int) -> tuple[int, int]:
        """Where global batch ``b`` starts and ends in the epoch's clip order."""
        return b * self.clips // self.batches, (b + 1) * self.clips // self.batches

    def slices(self, per_clip: Tensor) -> list[Tensor]:
        """This rank's share of each global batch of ``per_clip`` (clips in epoch order)."""
        return [per_clip[slice(*self.bounds(b))][self.rank :: self.world] for b in range(self.batches)]

    def loss_weight(self, b: int) -> float:
        """The factor on this rank's mean loss over global batch ``b`` that makes the step's
        gradient, once DDP averages it over ranks and the step's batches are summed, the mean
        over the step's clips: ``world × (this rank's clips) / (the step's clips)``."""
        start, end = self.bounds(b)
        first = b - b % self.accumulation
        step_clips = self.bounds(first + self.accumulation - 1)[1] - self.bounds(first)[0]
        return self.world * len(range(start + self.rank, end, self.world)) / step_clips
