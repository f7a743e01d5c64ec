"""Which clips each rank trains on, shared by cached and end-to-end training.

An epoch is a sequence of global batches of ``batch_size × world`` clips; rank r takes every
world-th clip of each. One process with the same global batch therefore sees exactly the clips
that the ranks see together, which is what makes a torchrun run equal to a single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass

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
