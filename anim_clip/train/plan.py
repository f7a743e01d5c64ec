"""Which clips each rank trains on, shared by cached and end-to-end training.

An epoch is a sequence of global batches of ``batch_size × world`` clips; rank r takes every
world-th clip of each. One process with the same global batch therefore sees exactly the clips
that the ranks see together, which is what makes a torchrun run equal to a single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class EpochPlan:
    epoch: int  # 0-based
    batches: int  # global batches in the epoch (the remainder of the clip order is dropped)
    global_batch: int
    rank: int
    world: int

    def slices(self, per_clip: Tensor) -> list[Tensor]:
        """This rank's share of each global batch of ``per_clip`` (clips in epoch order)."""
        g = self.global_batch
        return [per_clip[b * g:(b + 1) * g][self.rank :: self.world] for b in range(self.batches)]


def hold_out(rows: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor | None]:
    """``(train_rows, val_rows)``: a seeded share of ``rows`` held out for per-epoch selection
    (None when ``fraction`` is 0), both sorted, so every mode and every rank holds out the same clips."""
    if fraction <= 0:
        return rows, None
    perm = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).to(rows.device)]
    n_val = max(1, round(fraction * len(rows)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values
