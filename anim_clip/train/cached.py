"""Phase two's training batches: every epoch a random order of the cached training clips and one
random cached view of each (the bank of views stands in for on-the-fly augmentation)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from anim_clip.cache.reader import CachedSplitData
from anim_clip.models.features import Batch
from anim_clip.train.plan import EpochPlan


class CachedTrainData:
    def __init__(self, data: CachedSplitData):
        self.data = data
        self.indices = data.indices  # (N,) the cache rows an epoch draws from

    def epoch_batches(self, plan: EpochPlan, generator: torch.Generator) -> Iterator[Batch]:
        """This rank's batches of an epoch: a random clip order, and one random cached view per clip."""
        order = self.indices[torch.randperm(len(self.indices), generator=generator).to(self.indices.device)]
        views = torch.randint(self.data.num_views, (len(order),), generator=generator).to(order.device)
        return self.data.batches(list(zip(plan.slices(order), plan.slices(views))))
