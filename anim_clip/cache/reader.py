"""A cache's splits as the run's data: batches are index gathers into the cached ``cls`` array held
in memory (on the GPU when there is one); patch tokens come from the prefetching reader only when the
model needs them.

A cache is used only if it holds what the run asks for: features of the same backbone and
sampling, the same vocabularies, every clip of the run with the same labels, finite values, and
(unless the user allows otherwise) every clip extracted; and, for a run whose head conditions on
a separate species predictor (``species.model``), that predictor's probabilities. Anything else is
refused before training, naming the first difference.

A cached run decodes as its cache did (:func:`with_cache_decoder`): its config, and so every
checkpoint it saves, records the cache's ``sampling.decoder``, which ``eval --videos`` and
``predict`` then decode with (``frames.with_decoder``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from anim_clip.cache.signature import config_signature, meaning, species_signature
from anim_clip.cache.store import SPECIES_PROBS, CachedSplit, FeatureCache, TextFeatures, check_compatible
from anim_clip.config import Config, SamplingConfig
from anim_clip.data.dataset import Dataset, hold_out
from anim_clip.errors import AnimClipError, CacheError, DamagedCache
from anim_clip.models.backbone import check_backbone, resolve_weights
from anim_clip.models.features import Batch, FrameFeatures
from anim_clip.models.inputs import HeadInputs
from anim_clip.models.species import SECTION, check_predictor, predictor_backbone
from anim_clip.models.text import pool_text
from anim_clip.ui import console

SPLITS = ("train", "test")
SHOWN_CLIPS = 3
FINITE_CHECK_ROWS = 1024  # clips checked for NaN/inf at once: bounds the check's memory
def check_cache(cfg: Config, cache: FeatureCache, inputs: HeadInputs) -> None:
    """Refuse a cache built for another backbone, sampling or dataset, naming the field, and one
    without what the head's ``inputs`` need: patch tokens, the species predictor's probabilities."""
    check_backbone(cfg.backbone)
    expected = config_signature(cfg, resolve_weights(cfg.backbone)[1])
    check_compatible(meaning(cache.config), meaning(expected), cache.path)
    if inputs.patches and cache.config["backbone"]["patches"] == "none":
        raise AnimClipError(f"cache {cache.path} holds no patch tokens, which model.video_specific_prompt needs: "
                            "extract with --set backbone.patches=fp16")
    if inputs.species == "predictor":
        check_species_predictor(cfg, cache)


def with_cache_decoder(cfg: Config, cache_path: str | Path) -> Config:
    """``cfg`` decoding with the decoder the cache's clips were decoded with, said aloud when the
    config named none (the default, decord); a config asking for another one is refused naming both,
    since the run's checkpoints would predict with pixels the head never saw."""
    cache = FeatureCache(cache_path)
    cached, asked = cache.config["sampling"].get("decoder"), cfg.sampling.decoder
    if cached is None or asked == cached:
        return cfg
    if asked != SamplingConfig.decoder:
        raise CacheError(f"cache {cache.path} was decoded with sampling.decoder={cached}, this run asks for {asked}: "
                         f"drop that setting (the run then decodes as its cache did), or extract with "
                         f"sampling.decoder={asked} into another cache")
    console.print(f"sampling.decoder={cached}: the decoder cache {cache.path} was decoded with (recorded in the run's "
                  "config, so its checkpoints predict with it)", soft_wrap=True, highlight=False)
    return dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, decoder=cached))


def check_species_predictor(cfg: Config, cache: FeatureCache) -> None:
    """The cache must hold the probabilities of the predictor ``species.model`` names (the same
    model, weights and template), which a head with ``predicted`` species conditions on."""
    check_predictor(cfg.species)
    stored = cache.config.get("species")
    if stored is None:
        raise CacheError(f"cache {cache.path} holds no species probabilities, which model.species_source=predicted "
                         f"with species.model={cfg.species.model} needs: extract them into a new cache (`anim-clip "
                         f"extract CONFIG --out NEW --set species.model={cfg.species.model}`)")
    expected = species_signature(cfg.species, resolve_weights(predictor_backbone(cfg.species), SECTION)[1])
    check_compatible({"species": {k: stored.get(k) for k in expected}}, {"species": expected}, cache.path)


def head_dims(cache: FeatureCache) -> dict[str, int | None]:
    """The head's input widths, as the backbone that extracted ``cache`` gave them: its embedding
    width, and its patch tokens' width (None for a tower without tokens)."""
    backbone = cache.config["backbone"]
    return {"embed_dim": backbone["embed_dim"], "patch_width": backbone["patch_shape"][1] if backbone["patch_shape"] else None}


def pooled_text(text: TextFeatures, use_descriptions: bool, pooling: str) -> torch.Tensor:
    """``(classes, D)`` raw text embeddings: the names, or the pooled descriptions (docs/method.md §2.4)."""
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
    """One cached split restricted to usable clips (decoded, and allowed by the dataset config), read
    as a head with ``inputs`` takes them."""

    def __init__(self, split: CachedSplit, indices: torch.Tensor, inputs: HeadInputs, pending: int = 0):
        self.split = split
        self.indices = indices  # (N,) cache rows
        self.inputs = inputs
        self.pending = pending  # the run's clips of this split not extracted yet (left out)

    @property
    def num_views(self) -> int:
        return self.split.cls.shape[1]

    def targets(self) -> torch.Tensor:
        return self.split.targets[self.indices].float()

    def species(self) -> torch.Tensor:
        """The annotated species of the clips (what metrics compare with)."""
        return self.split.species[self.indices].float()

    def condition(self, rows: torch.Tensor) -> torch.Tensor:
        """The species vectors of cache ``rows`` the head is given: the species predictor's cached
        probabilities, or the annotation (which a head making its own species ignores)."""
        return (self.split.species_probs if self.inputs.species == "predictor" else self.split.species)[rows].float()

    def with_inputs(self, inputs: HeadInputs) -> CachedSplitData:
        """The same clips, read for a head with other ``inputs``."""
        return CachedSplitData(self.split, self.indices, inputs, self.pending)

    def batches(self, plan: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[Batch]:
        """Batches for ``(rows, views)`` pairs, in order; patches read ahead when needed."""
        features: Iterator[FrameFeatures] = (
            self.split.patch_loader(plan) if self.inputs.patches else (self.split.features(r, v) for r, v in plan)
        )
        for (rows, _), feats in zip(plan, features):
            yield Batch(FrameFeatures(feats.cls.float(), None if feats.patches is None else feats.patches.float()),
                        self.split.targets[rows].float(), self.condition(rows))


def _first_name_difference(cached: list[str], run: list[str]) -> str:
    i = next((i for i, (a, b) in enumerate(zip(cached, run)) if a != b), min(len(cached), len(run)))
    show = lambda names: repr(names[i]) if i < len(names) else "nothing"  # noqa: E731
    return f"at {i} the cache has {show(cached)}, this run {show(run)} ({len(cached)} vs {len(run)} names)"


def check_vocabulary(cache: FeatureCache, dataset: Dataset) -> None:
    """Refuse a cache extracted for other action or species names, naming the first difference."""
    for kind, names in (("actions", list(dataset.actions)), ("species", list(dataset.species))):
        cached = cache.text(kind).names
        if cached != names:
            raise CacheError(f"cache {cache.path} was extracted for other {kind}: "
                             f"{_first_name_difference(cached, names)}; extract this config into another --out")


def _names(row: np.ndarray, vocabulary: list[str]) -> list[str]:
    return [vocabulary[i] for i in np.flatnonzero(row)]


def run_rows(split: CachedSplit, name: str, dataset: Dataset) -> torch.Tensor:
    """The cache rows of the run's clips of split ``name``, refusing a clip the cache lacks or holds
    with other labels (naming the first). The cache may hold more clips: those the dataset's
    ``unseen_species`` leaves out of training."""
    row_of = {clip_id: row for row, clip_id in enumerate(split.clip_ids)}
    clips = dataset.clips(name)
    missing = next((c.path for c in clips if c.path not in row_of), None)
    if missing is not None:
        raise CacheError(f"cache {split.path} has no clip {missing!r} of this run's {name} split: it was extracted "
                         "from other annotations; extract this config into another --out")
    rows = np.array([row_of[c.path] for c in clips], dtype=np.int64)
    for kind, cached, wanted, vocabulary in (
            ("actions", split.targets, dataset.targets(name), dataset.actions),
            ("species", split.species, dataset.species_vectors(name), dataset.species)):
        cached = cached.cpu().numpy()[rows]
        differs = np.flatnonzero((cached != wanted.astype(np.uint8)).any(1))
        if len(differs):
            i = differs[0]
            raise CacheError(f"cache {split.path}: clip {clips[i].path!r} (row {rows[i]}) has {kind} "
                             f"{_names(cached[i], vocabulary)} there, this run's labels give "
                             f"{_names(wanted[i], vocabulary)}: it was extracted from other annotations; extract "
                             "this config into another --out")
    return torch.from_numpy(np.sort(rows)).to(split.cls.device)


def check_complete(cache: FeatureCache, pending: dict[str, tuple[int, int]], allow_incomplete: bool) -> None:
    """Refuse to train or evaluate on part of a split (``pending``: split -> (not extracted, clips)),
    unless allowed, then say so."""
    left = {name: counts for name, counts in pending.items() if counts[0]}
    if not left:
        return
    counts = " and ".join(f"{n} of the {total} {name!r} clips" for name, (n, total) in left.items())
    if not allow_incomplete:
        raise CacheError(f"cache {cache.path} is unfinished: {counts} are not extracted yet; finish them with "
                         f"`anim-clip extract CONFIG --out {cache.path}` (the config it was made with), or pass "
                         "--allow-incomplete (train, eval, sweep) to use only the clips extracted so far")
    console.print(f"[yellow]--allow-incomplete: {counts} are not extracted yet and left out "
                  "(recorded in eval.json as pending_clips)[/]", soft_wrap=True, highlight=False)


def check_finite(split: CachedSplit, rows: torch.Tensor) -> None:
    """Refuse NaN or inf in the features (and species probabilities) of the clips used: a damaged
    cache, not a training problem."""
    arrays = {"cls": (split.cls, "features")}
    if split.species_probs is not None:
        arrays[SPECIES_PROBS] = (split.species_probs, "species probabilities")
    for name, (array, what) in arrays.items():
        bad = torch.cat([r[~torch.isfinite(array[r]).flatten(1).all(1)] for r in rows.split(FINITE_CHECK_ROWS)]
                        or [rows[:0]])
        if len(bad):
            names = ", ".join(repr(split.clip_ids[i]) for i in bad[:SHOWN_CLIPS].tolist())
            more = f" and {len(bad) - SHOWN_CLIPS} more" if len(bad) > SHOWN_CLIPS else ""
            raise DamagedCache(split.path.parent, f"{split.path / name}: {len(bad)} clips hold NaN/inf {what} "
                                                  f"({names}{more})")


def stored_in(split: str) -> tuple[str, ...]:
    """The cached split that holds ``split``'s clips (validation clips are a share of train's)."""
    return ("test",) if split == "test" else ("train",)


def pending_note(data: dict[str, CachedSplitData]) -> dict[str, dict[str, int]]:
    """``{"pending_clips": {split: count}}`` for a report when clips were left out, else nothing."""
    pending = {name: d.pending for name, d in data.items() if d.pending}
    return {"pending_clips": pending} if pending else {}


def open_cached_data(cfg: Config, cache_path: str | Path | FeatureCache, dataset: Dataset, device: torch.device,
                     inputs: HeadInputs, allow_incomplete: bool = False, use: tuple[str, ...] = SPLITS
                     ) -> tuple[FeatureCache, dict[str, CachedSplitData]]:
    """Train (and validation, when ``train.val_fraction`` > 0) and test data from the cache, for a
    head taking ``inputs``. The splits the caller will ``use`` must be finite and, unless
    ``allow_incomplete``, fully extracted.
    An opened cache may be given (a sweep's, whose splits stay read)."""
    cache = cache_path if isinstance(cache_path, FeatureCache) else FeatureCache(cache_path)
    check_cache(cfg, cache, inputs)
    check_vocabulary(cache, dataset)
    for name in SPLITS:
        if name not in cache.splits:
            raise AnimClipError(f"cache {cache.path} has no {name!r} split: run anim-clip extract for it")
    splits = {name: cache.split(name, device) for name in SPLITS}
    rows = {name: run_rows(split, name, dataset) for name, split in splits.items()}
    pending = {name: (int((~splits[name].done[r]).sum()), len(r)) for name, r in rows.items()}
    check_complete(cache, {name: pending[name] for name in use}, allow_incomplete)
    usable = {name: r[splits[name].valid[r]] for name, r in rows.items()}
    for name in use:
        check_finite(splits[name], usable[name])
    out = {}
    train_rows, val_rows = hold_out(usable["train"], cfg.train.val_fraction, cfg.train.seed)
    if val_rows is not None:
        out["val"] = CachedSplitData(splits["train"], val_rows, inputs)
    out["train"] = CachedSplitData(splits["train"], train_rows, inputs, pending["train"][0])
    out["test"] = CachedSplitData(splits["test"], usable["test"], inputs, pending["test"][0])
    if len(out["train"].indices) == 0:
        raise AnimClipError(f"cache {cache.path}: no usable training clips (all failed, or not extracted yet)")
    return cache, out
