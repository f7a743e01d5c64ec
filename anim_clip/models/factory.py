"""Build the head (cached mode) or the end-to-end model from a run config."""

from __future__ import annotations

from torch import Tensor

from anim_clip.config import Config
from anim_clip.errors import AnimClipError
from anim_clip.models.animal_clip import AnimalCLIP
from anim_clip.models.backbone import create_clip
from anim_clip.models.crossframe import cross_frame_dims
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.models.species import conditions_on_predictor


def build_head(
    cfg: Config,
    *,
    embed_dim: int,
    patch_width: int | None = None,
    action_text: Tensor | None = None,
    species_text: Tensor | None = None,
    adjacency: Tensor | None = None,
) -> AnimalCLIPHead:
    """The head for ``cfg`` on features ``embed_dim`` wide (patch tokens ``patch_width`` wide), as
    the built backbone gives them: read from the cache in cached mode, from the tower end to end;
    with ``species.model`` and ``predicted`` species it takes that predictor's probabilities."""
    return AnimalCLIPHead(
        cfg.model,
        embed_dim=embed_dim,
        num_frames=cfg.sampling.num_frames,
        adjacency=adjacency,
        action_text=action_text,
        species_text=species_text,
        patch_width=patch_width,
        external_species=conditions_on_predictor(cfg),
    )


def end_to_end(cfg: Config, head: AnimalCLIPHead | None = None, *, load_pretrained: bool = True,
               **vocabulary: Tensor) -> AnimalCLIP:
    """``cfg.backbone`` (its weights unless ``load_pretrained=False``) with fresh message tokens, under
    ``head``, or under a new head shaped by the tower (``vocabulary``: :func:`build_head`'s tensors)."""
    clip, _ = create_clip(cfg.backbone, load_weights=load_pretrained)
    embed_dim, width = cross_frame_dims(clip.visual, cfg.backbone.model)
    if head is None:
        head = build_head(cfg, embed_dim=embed_dim, patch_width=width, **vocabulary)
    elif head.dims["embed_dim"] != embed_dim:
        raise AnimClipError(f"the head takes {head.dims['embed_dim']}-d features, {cfg.backbone.model} gives "
                            f"{embed_dim}-d: it was trained on another backbone")
    return AnimalCLIP(clip, head)
