"""Build the head (cached mode) or the end-to-end model from a run config."""

from __future__ import annotations

import dataclasses
from typing import Literal

import open_clip
from torch import Tensor

from anim_clip.config import BackboneConfig, Config
from anim_clip.errors import AnimClipError
from anim_clip.models.animal_clip import AnimalCLIP
from anim_clip.models.backbone import create_clip, register_tiny_model
from anim_clip.models.head import AnimalCLIPHead


def backbone_dims(backbone: BackboneConfig) -> tuple[int, int]:
    """``(embed_dim, vision_width)`` of an open_clip model name, without building it."""
    register_tiny_model()
    model_cfg = open_clip.get_model_config(backbone.model)
    if model_cfg is None or "width" not in model_cfg.get("vision_cfg", {}):
        raise AnimClipError(f"backbone.model: {backbone.model!r} is not an open_clip ViT config")
    return model_cfg["embed_dim"], model_cfg["vision_cfg"]["width"]


def build_head(
    cfg: Config,
    *,
    action_text: Tensor | None = None,
    species_text: Tensor | None = None,
    adjacency: Tensor | None = None,
) -> AnimalCLIPHead:
    """The head for ``cfg``: embedding and patch widths from ``cfg.backbone.model``."""
    embed_dim, vision_width = backbone_dims(cfg.backbone)
    return AnimalCLIPHead(
        cfg.model,
        embed_dim=embed_dim,
        num_frames=cfg.sampling.num_frames,
        adjacency=adjacency,
        action_text=action_text,
        species_text=species_text,
        patch_width=vision_width,
    )


def end_to_end(head: AnimalCLIPHead, backbone: BackboneConfig, *, load_pretrained: bool = True) -> AnimalCLIP:
    """``head`` on the configured open_clip backbone, which gains fresh message tokens."""
    if not load_pretrained:
        backbone = dataclasses.replace(backbone, pretrained=None)
    clip, _ = create_clip(backbone)
    return AnimalCLIP(clip, head)


def build_model(
    cfg: Config,
    *,
    mode: Literal["cached", "e2e"] | None = None,
    action_text: Tensor | None = None,
    species_text: Tensor | None = None,
    adjacency: Tensor | None = None,
    load_pretrained: bool = True,
) -> AnimalCLIPHead | AnimalCLIP:
    """``mode`` (default ``cfg.train.mode``): ``cached`` -> :class:`AnimalCLIPHead`; ``e2e`` ->
    :class:`AnimalCLIP` on ``cfg.backbone`` (random init if ``load_pretrained=False``: counts)."""
    head = build_head(cfg, action_text=action_text, species_text=species_text, adjacency=adjacency)
    if (mode or cfg.train.mode) == "cached":
        return head
    return end_to_end(head, cfg.backbone, load_pretrained=load_pretrained)
