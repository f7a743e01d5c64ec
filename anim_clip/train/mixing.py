"""Mixup and CutMix (METHOD.md §4.7), on cached per-frame features.

The release mixes pixels on every batch: CutMix (λ ~ Beta(1, 1), one box shared by all frames)
with p 0.5, else Mixup (λ ~ Beta(0.8, 0.8)), partner = a permutation of the batch, targets mixed
with the same λ. On cached features a pixel box is not available; its analogue is a *temporal*
cut: a contiguous run of frames comes from the partner clip and λ is the share of frames kept.
The species vector is mixed with the same λ by default (D7; the release leaves it unmixed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anim_clip.models.features import FrameFeatures


@dataclass
class Batch:
    features: FrameFeatures
    targets: torch.Tensor  # (B, C)
    species: torch.Tensor  # (B, A)


def _beta(alpha: float, generator: torch.Generator) -> float:
    # Beta(a, a) from two Gammas, drawn with the run's generator so resumed runs repeat exactly
    g = torch._standard_gamma(torch.full((2,), alpha, dtype=torch.float64), generator=generator)
    return float(g[0] / g.sum())


def mix_batch(batch: Batch, *, mixup_alpha: float, cutmix_alpha: float, mix_species: bool,
              generator: torch.Generator) -> Batch:
    """One λ and one partner permutation per batch, as the release does."""
    use_cut = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand((), generator=generator)) < 0.5)
    if not use_cut and mixup_alpha <= 0:
        return batch
    n = batch.targets.shape[0]
    perm = torch.randperm(n, generator=generator).to(batch.targets.device)
    feats = batch.features
    partner = feats[perm]
    if use_cut:
        T = feats.cls.shape[1]
        cut = round((1 - _beta(cutmix_alpha, generator)) * T)
        start = int(torch.randint(0, T - cut + 1, (), generator=generator))
        lam = 1 - cut / T
        keep = torch.ones(T, dtype=torch.bool, device=feats.cls.device)
        keep[start : start + cut] = False
        cls = torch.where(keep[None, :, None], feats.cls, partner.cls)
        patches = None if feats.patches is None else torch.where(keep[None, :, None, None], feats.patches, partner.patches)
    else:
        lam = _beta(mixup_alpha, generator)
        cls = feats.cls * lam + partner.cls * (1 - lam)
        patches = None if feats.patches is None else feats.patches * lam + partner.patches * (1 - lam)
    targets = batch.targets * lam + batch.targets[perm] * (1 - lam)
    species = batch.species * lam + batch.species[perm] * (1 - lam) if mix_species else batch.species
    return Batch(FrameFeatures(cls, patches), targets, species)
