"""Phase two's data: batches are index gathers into the cached ``cls`` array held in memory (on
the GPU when there is one); patch tokens come from the prefetching reader only when the model needs
them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from anim_clip.cache.extract import cache_signature
from anim_clip.cache.store import CachedSplit, FeatureCache, TextFeatures, check_compatible
from anim_clip.config import Config
from anim_clip.data.dataset import Dataset
from anim_clip.errors import AnimClipError
from anim_clip.models.backbone import resolve_weights
from anim_clip.models.features import FrameFeatures
from anim_clip.models.text import pool_text
from anim_clip.train.mixing import Batch
from anim_clip.train.plan import EpochPlan, hold_out

# Fields that change what the features mean; views and patches may differ between runs.
MATCHING = ("dataset", "backbone.model", "backbone.weights", "backbone.quick_gelu", "sampling.num_frames",
            "sampling.image_size", "sampling.resize", "sampling.normalization")


def _pick(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
    return tree


def check_cache(cfg: Config, cache: FeatureCache, needs_patches: bool) -> None:
    """Refuse a cache built for another backbone, sampling or dataset, naming the field."""
    expected = cache_signature(cfg, resolve_weights(cfg.backbone)[1])
    check_compatible({k: _pick(cache.config, k) for k in MATCHING}, {k: _pick(expected, k) for k in MATCHING}, cache.path)
    if needs_patches and cache.config["backbone"]["patches"] == "none":
        raise AnimClipError(f"cache {cache.path} holds no patch tokens, which model.video_specific_prompt needs: "
                            "extract with --set backbone.patches=fp16")


def pooled_text(text: TextFeatures, use_descriptions: bool, pooling: str) -> torch.Tensor:
    """``(classes, D)`` raw text embeddings: the names, or the pooled descriptions (METHOD.md §2.4)."""
    if not use_descriptions:
        return text.name_embeddings
    return pool_text(text.description_embeddings, text.owner, len(text.names), pooling)


def class_text(cache: FeatureCache, kind: str, use_descriptions: bool, pooling: str) -> torch.Tensor:
    """:func:`pooled_text` of the cache's ``kind`` texts, refusing a cache extracted without descriptions."""
    text = cache.text(kind)
    if use_descriptions and not text.descriptions:
        raise AnimClipError(f"cache {cache.path} holds no {kind} descriptions: extract with data.descriptions set")
    return pooled_text(text, use_descriptions, pooling)


class CachedSplitData:
    """One cached split restricted to usable clips (decoded, and allowed by the dataset config)."""

    def __init__(self, split: CachedSplit, indices: torch.Tensor, needs_patches: bool):
        self.split = split
        self.indices = indices  # (N,) cache rows
        self.needs_patches = needs_patches

    @property
    def num_views(self) -> int:
        return self.split.cls.shape[1]

    def targets(self) -> torch.Tensor:
        return self.split.targets[self.indices].float()

    def species(self) -> torch.Tensor:
        return self.split.species[self.indices].float()

    def epoch_batches(self, plan: EpochPlan, generator: torch.Generator) -> Iterator[Batch]:
        """This rank's batches of an epoch: a random clip order, and one random cached view per clip."""
        order = self.indices[torch.randperm(len(self.indices), generator=generator).to(self.indices.device)]
        views = torch.randint(self.num_views, (len(order),), generator=generator).to(order.device)
        return self.batches(list(zip(plan.slices(order), plan.slices(views))))

    def batches(self, plan: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[Batch]:
        """Batches for ``(rows, views)`` pairs, in order; patches read ahead when needed."""
        features: Iterator[FrameFeatures] = (
            self.split.patch_loader(plan) if self.needs_patches else (self.split.features(r, v) for r, v in plan)
        )
        for (rows, _), feats in zip(plan, features):
            yield Batch(FrameFeatures(feats.cls.float(), None if feats.patches is None else feats.patches.float()),
                        self.split.targets[rows].float(), self.split.species[rows].float())


def usable_rows(split: CachedSplit, allowed: set[str]) -> torch.Tensor:
    ids = np.array([c in allowed for c in split.clip_ids], dtype=bool)
    return torch.nonzero(split.valid.cpu() & torch.from_numpy(ids)).flatten().to(split.cls.device)


def open_cached_data(cfg: Config, cache_path: str | Path, dataset: Dataset, device: torch.device,
                     needs_patches: bool) -> tuple[FeatureCache, dict[str, CachedSplitData]]:
    """Train (and validation, when ``train.val_fraction`` > 0) and test data from the cache."""
    cache = FeatureCache(cache_path)
    check_cache(cfg, cache, needs_patches)
    for name in ("train", "test"):
        if name not in cache.splits:
            raise AnimClipError(f"cache {cache.path} has no {name!r} split: run anim-clip extract for it")
    train = cache.split("train", device)
    rows = usable_rows(train, {c.path for c in dataset.clips("train")})
    out = {}
    rows, val_rows = hold_out(rows, cfg.train.val_fraction, cfg.train.seed)
    if val_rows is not None:
        out["val"] = CachedSplitData(train, val_rows, needs_patches)
    out["train"] = CachedSplitData(train, rows, needs_patches)
    test = cache.split("test", device)
    out["test"] = CachedSplitData(test, usable_rows(test, {c.path for c in dataset.clips("test")}), needs_patches)
    if len(out["train"].indices) == 0:
        raise AnimClipError(f"cache {cache.path}: no usable training clips (all failed, or not extracted yet)")
    return cache, out
