"""Mixup and CutMix (docs/method.md §4.7), on pixels (end-to-end mode) or cached per-frame features.

The release mixes every batch: CutMix (λ ~ Beta(1, 1)) with p 0.5, else Mixup (λ ~ Beta(0.8, 0.8)),
partner = a permutation of the batch, targets mixed with the same λ. Its CutMix (X-CLIP's) draws
one box per batch and pastes the partner's pixels inside it on every frame of every clip, λ
corrected to the box's area. On cached features a pixel box is not available; its analogue is a
*temporal* cut: a contiguous run of frames comes from the partner clip and λ is the share of frames
kept. The species vector is mixed with the same λ by default (D7; the release leaves it unmixed).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from anim_clip.models.features import Batch, FrameFeatures, Inputs


def _beta(alpha: float, generator: torch.Generator) -> float:
    # Beta(a, a) from two Gammas, drawn with the run's generator so resumed runs repeat exactly
    g = torch._standard_gamma(torch.full((2,), alpha, dtype=torch.float64), generator=generator)
    return float(g[0] / g.sum())


def _blend(x: Inputs, perm: Tensor, lam: float) -> Inputs:
    if isinstance(x, FrameFeatures):
        partner = x[perm]
        patches = None if x.patches is None else x.patches * lam + partner.patches * (1 - lam)
        return FrameFeatures(x.cls * lam + partner.cls * (1 - lam), patches)
    return x * lam + x[perm] * (1 - lam)


def _temporal_cut(feats: FrameFeatures, perm: Tensor, lam: float, generator: torch.Generator) -> tuple[FrameFeatures, float]:
    T = feats.cls.shape[1]
    cut = round((1 - lam) * T)
    start = int(torch.randint(0, T - cut + 1, (), generator=generator))
    keep = torch.ones(T, dtype=torch.bool, device=feats.cls.device)
    keep[start : start + cut] = False
    partner = feats[perm]
    cls = torch.where(keep[None, :, None], feats.cls, partner.cls)
    patches = None if feats.patches is None else torch.where(keep[None, :, None, None], feats.patches, partner.patches)
    return FrameFeatures(cls, patches), 1 - cut / T


def _box_cut(pixels: Tensor, perm: Tensor, lam: float, generator: torch.Generator) -> tuple[Tensor, float]:
    """X-CLIP's ``rand_bbox``: a box of sides ``√(1-λ)`` of the frame's, centred uniformly, clipped."""
    H, W = pixels.shape[-2:]
    ratio = math.sqrt(1 - lam)
    h, w = int(H * ratio), int(W * ratio)
    cy, cx = (int(torch.randint(n, (), generator=generator)) for n in (H, W))
    y0, y1 = max(cy - h // 2, 0), min(cy + h // 2, H)
    x0, x1 = max(cx - w // 2, 0), min(cx + w // 2, W)
    out = pixels.clone()
    out[..., y0:y1, x0:x1] = pixels[perm][..., y0:y1, x0:x1]
    return out, 1 - (y1 - y0) * (x1 - x0) / (H * W)


def mix_batch(batch: Batch, *, mixup_alpha: float, cutmix_alpha: float, mix_species: bool,
              generator: torch.Generator) -> Batch:
    """One λ and one partner permutation per batch, as the release does."""
    use_cut = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand((), generator=generator)) < 0.5)
    if not use_cut and mixup_alpha <= 0:
        return batch
    n = batch.targets.shape[0]
    perm = torch.randperm(n, generator=generator).to(batch.targets.device)
    if use_cut:
        cut = _temporal_cut if isinstance(batch.features, FrameFeatures) else _box_cut
        features, lam = cut(batch.features, perm, _beta(cutmix_alpha, generator), generator)
    else:
        lam = _beta(mixup_alpha, generator)
        features = _blend(batch.features, perm, lam)
    targets = batch.targets * lam + batch.targets[perm] * (1 - lam)
    species = batch.species * lam + batch.species[perm] * (1 - lam) if mix_species else batch.species
    return dataclasses.replace(batch, features=features, targets=targets, species=species)
