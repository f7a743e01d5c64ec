"""Where a training run's dataset and feature cache come from: ``train`` alone opens them afresh; a
sweep's worker keeps one :class:`SharedData` for all its runs, so each dataset is parsed and the cache
read onto the device once (the runs differ in settings, not in what they read)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from anim_clip.cache.store import CachedSplit, FeatureCache
from anim_clip.config import DataConfig
from anim_clip.data.dataset import Dataset, load_dataset


class LoadedCache(FeatureCache):
    """A cache whose splits, once read onto a device, stay there for the next run (a split only grows
    by clips marked done, whose features never change, so a run sees what it would read itself)."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._splits: dict[tuple[str, str], CachedSplit] = {}

    def split(self, name: str, device: torch.device | str | None = None) -> CachedSplit:
        key = (name, str(device))
        if key not in self._splits:
            self._splits[key] = super().split(name, device)
        return self._splits[key]


class SharedData:
    """Datasets by data config and caches by folder, each opened on first use."""

    def __init__(self) -> None:
        self._datasets: dict[str, Dataset] = {}
        self._caches: dict[Path, LoadedCache] = {}

    def dataset(self, cfg: DataConfig) -> Dataset:
        key = json.dumps(asdict(cfg), sort_keys=True, default=str)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(cfg)
        return self._datasets[key]

    def cache(self, path: str | Path) -> LoadedCache:
        key = Path(path).resolve()
        if key not in self._caches:
            self._caches[key] = LoadedCache(path)
        return self._caches[key]
