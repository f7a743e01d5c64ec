"""The cache signature: what makes two caches' features interchangeable. Extraction stores it in the
cache's root and compares it on resume; a run reading a cache compares the config's part of it
(:mod:`anim_clip.cache.reader`). Both sides use this module, so reading does not depend on writing."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from anim_clip.config import Config, SpeciesConfig
from anim_clip.data.transforms import rendered_pixels
from anim_clip.models.backbone import FrozenImageTower, WeightsInfo
from anim_clip.models.species import SpeciesPredictor
from anim_clip.runtime.precision import autocast_dtype


# Fields that change what the features mean; views and patches may differ between runs. The backbone's
# own preprocessing (normalization or interpolation `model`) is fixed by its model and weights.
MATCHING = ("dataset", "backbone.model", "backbone.weights", "backbone.quick_gelu", "sampling.num_frames",
            "sampling.image_size", "sampling.resize", "sampling.normalization", "sampling.interpolation")


def meaning(signature: dict[str, Any]) -> dict[str, Any]:
    """The :data:`MATCHING` fields of a signature, dotted name -> value: what a run reading the cache
    must agree with (missing fields read as ``{}``)."""
    out = {}
    for dotted in MATCHING:
        value: Any = signature
        for part in dotted.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        out[dotted] = value
    return out


def config_signature(cfg: Config, weights: WeightsInfo) -> dict[str, Any]:
    """The config's part of the cache signature: what the run asked for, before any model is built."""
    s = cfg.sampling
    return {
        "dataset": cfg.data.name,
        "backbone": {
            "model": cfg.backbone.model,
            "weights": weights.identity,
            "quick_gelu": cfg.backbone.quick_gelu,
            "patches": cfg.backbone.patches,
        },
        "sampling": {
            "num_frames": s.num_frames, "image_size": s.image_size, "resize": s.resize,
            "normalization": s.normalization, "interpolation": s.interpolation, "train_views": s.train_views,
            "test_clips": s.test_clips, "test_crops": s.test_crops,
            "decoder": s.decoder,  # decoders' pixels differ on some video (anim_clip.data.video)
        },
    }


def species_signature(cfg: SpeciesConfig, weights: WeightsInfo) -> dict[str, Any]:
    """The species predictor's part of the signature (in a cache extracted with one): what makes its
    probabilities: the model, its weights (as ``backbone.weights``) and the text template."""
    return {"model": cfg.model, "weights": weights.identity, "template": cfg.template}


def cache_signature(cfg: Config, weights: WeightsInfo, tower: FrozenImageTower, device: torch.device,
                    predictor: tuple[SpeciesPredictor, WeightsInfo] | None = None) -> dict[str, Any]:
    """What makes two caches' features interchangeable; stored in the cache, compared on reuse: the
    config's part, and what the built tower is: its embedding width, patch grid, the precision it
    runs in on ``device`` (``auto`` differs between a CPU and a GPU, so a resume elsewhere cannot mix
    fp32 and bf16 features) and the pixels it was fed (the backbone's own preprocessing with the
    config's overrides); with a species ``predictor``, its part and the pixels it was fed (its own)."""
    signature = config_signature(cfg, weights)
    dtype = autocast_dtype(cfg.runtime.precision, device, "tower") or torch.float32
    signature["backbone"].update(embed_dim=tower.embed_dim, patch_shape=tower.patch_shape,
                                 tower_precision=str(dtype).removeprefix("torch."))
    signature["pixels"] = dataclasses.asdict(rendered_pixels(cfg.sampling, tower.pixels))
    if predictor is not None:
        model, species_weights = predictor
        signature["species"] = {**species_signature(cfg.species, species_weights),
                                "pixels": dataclasses.asdict(model.pixels)}
    return signature
