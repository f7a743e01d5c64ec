"""Build the head (cached mode) or the end-to-end model: from a run config, or from a checkpoint."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from anim_clip.config import Config
from anim_clip.errors import AnimClipError
from anim_clip.models.animal_clip import CUSTOM, AnimalCLIP, CrossFrameTower, clip_from_state_dict
from anim_clip.models.backbone import FrozenImageTower, create_clip
from anim_clip.models.checkpoint import Checkpoint, load_state_strict
from anim_clip.models.crossframe import cross_frame_dims
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.models.inputs import HeadInputs
from anim_clip.ui import console


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
    it takes the inputs ``cfg`` gives it (:meth:`HeadInputs.of_config`)."""
    return AnimalCLIPHead(
        cfg.model,
        inputs=HeadInputs.of_config(cfg),
        embed_dim=embed_dim,
        num_frames=cfg.sampling.num_frames,
        adjacency=adjacency,
        action_text=action_text,
        species_text=species_text,
        patch_width=patch_width,
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


def model_from_checkpoint(
    ckpt: Checkpoint, mode: Literal["cached", "e2e"] | None = None, *, load_pretrained: bool = True
) -> AnimalCLIPHead | AnimalCLIP:
    """The model in ``mode`` (default: the checkpoint's kind). An end-to-end checkpoint gives its
    head for cached mode; a head checkpoint goes end to end on ``config.backbone`` (its
    pretrained weights unless ``load_pretrained=False``) with fresh message tokens."""
    mode = mode or ("e2e" if ckpt.kind == "e2e" else "cached")
    head_state = ckpt.head_state()
    head = AnimalCLIPHead(ckpt.config.model, inputs=ckpt.inputs, **ckpt.head_dims)
    if "vocab.action_text" in head_state:
        head.set_vocabulary(
            head_state["vocab.action_text"], head_state["vocab.species_text"], head_state["vocab.graph.adjacency"]
        )
    if mode == "cached" or ckpt.kind == "head":
        load_state_strict(head, head_state, ckpt.path)
        if mode == "cached":
            return head
        return end_to_end(ckpt.config, head, load_pretrained=load_pretrained)
    model = AnimalCLIP(checkpoint_clip(ckpt), head)
    load_state_strict(model, ckpt.model, ckpt.path)
    return model


def checkpoint_clip(ckpt: Checkpoint) -> nn.Module:
    """The open_clip model an end-to-end checkpoint's weights load into: its backbone as recorded,
    rebuilt without weights (the same architecture, activation and preprocessing), or for a
    converted release checkpoint of no open_clip architecture, read from the state dict's shapes."""
    backbone = ckpt.config.backbone
    if backbone.model == CUSTOM:
        return clip_from_state_dict(ckpt.model, quick_gelu=backbone.quick_gelu)
    return create_clip(backbone, load_weights=False)[0]


def head_and_tower(ckpt: Checkpoint) -> tuple[AnimalCLIPHead, nn.Module, str]:
    """The checkpoint's head, the image tower that feeds it (the model's own cross-frame tower end
    to end; the frozen open_clip tower of ``config.backbone`` for a head) and where the tower's
    weights came from."""
    if ckpt.kind == "e2e":
        model = model_from_checkpoint(ckpt)
        tower = CrossFrameTower(model, model.head.dims["num_frames"], model.head.inputs.patches)
        return model.head, tower, "checkpoint"
    head = model_from_checkpoint(ckpt, "cached")
    clip, weights = create_clip(ckpt.config.backbone)
    if weights.random:
        console.print(f"[bold red]WARNING: {weights.model} has RANDOM weights (no weights in the checkpoint's "
                      "backbone config): these predictions carry no pretrained knowledge[/]")
    tower = FrozenImageTower(clip, patches=head.inputs.patches)
    if tower.embed_dim != head.dims["embed_dim"]:
        raise AnimClipError(f"{ckpt.path}: the head takes {head.dims['embed_dim']}-d features, "
                            f"{weights.model} gives {tower.embed_dim}-d")
    return head, tower, weights.pretrained or "random"
