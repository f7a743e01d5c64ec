"""The end-to-end model: cross-frame CLIP image tower + frozen CLIP text tower + the head.

State-dict layout: ``visual.*`` (CLIP's ViT names, plus ``message_*`` per block), ``text.*``
(CLIP's text names: ``token_embedding``, ``transformer``, ``ln_final``, ``text_projection``,
``logit_scale``), ``head.*`` (:class:`AnimalCLIPHead`).
"""

from __future__ import annotations

from collections.abc import Mapping

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import Tensor, nn

from anim_clip.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from anim_clip.errors import AnimClipError
from anim_clip.models.backbone import model_pixels
from anim_clip.models.crossframe import CrossFrameVisionTransformer
from anim_clip.models.features import FrameFeatures, HeadOutput
from anim_clip.models.graph_refine import adjacency_from_edges
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.models.text import pool_text


# backbone.model of a converted release checkpoint whose towers match no open_clip config: the
# architecture is then read from the checkpoint's own state dict (clip_from_state_dict).
CUSTOM = "custom"


class AnimalCLIP(nn.Module):
    """Takes ownership of ``clip``: its image tower becomes the cross-frame tower (trained), the
    rest is the text tower (frozen, always in eval mode, docs/method.md §2.4). ``pixels``: the
    frames the tower takes, as the open_clip model's preprocess config says."""

    def __init__(self, clip: CLIP, head: AnimalCLIPHead):
        super().__init__()
        self.pixels = model_pixels(clip)
        self.visual = CrossFrameVisionTransformer(clip.visual)
        clip.visual = None  # what remains of the open_clip model is its text tower (encode_text)
        self.text = clip.requires_grad_(False).eval()
        self.head = head

    def train(self, mode: bool = True) -> AnimalCLIP:
        super().train(mode)
        self.text.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enable

    def encode_frames(self, video: Tensor) -> FrameFeatures:
        """``video (B, T, 3, H, W)``, already normalised -> per-frame features."""
        return self.visual(video)

    @torch.no_grad()
    def encode_text(self, tokens: Tensor) -> Tensor:
        """Token ids ``(N, L)`` -> raw (un-normalised) text embeddings ``(N, D)``."""
        return self.text.encode_text(tokens)

    def forward(self, video: Tensor, species: Tensor | None) -> HeadOutput:
        return self.head(self.encode_frames(video), species)

    def forward_release(
        self, video: Tensor, text_tokens: Tensor, animal_text_tokens: Tensor, species: Tensor, edges: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The release's ``XCLIP.forward``: text and graph given per call (fixture README).

        ``text_tokens (C, 77)`` or ``(C, K, 77)`` (K descriptions per class, pooled per
        ``cfg.pooling``, max in the release); same for ``animal_text_tokens``; ``species (B, A)``;
        ``edges (E, 2)`` over species nodes ``0..A-1`` then action nodes. Returns
        ``(logits (B, C), video_features (B, D) L2-normalised)``.
        """
        action_text = self._encode_classes(text_tokens)
        species_text = self._encode_classes(animal_text_tokens)
        nodes = action_text.shape[0] + species_text.shape[0]
        vocab = self.head.make_vocabulary(action_text, species_text, adjacency_from_edges(edges, nodes))
        out = self.head(self.encode_frames(video), species, vocab.to(video.device))
        return out.logits, out.video

    def _encode_classes(self, tokens: Tensor) -> Tensor:
        embeddings = self.encode_text(tokens.reshape(-1, tokens.shape[-1]))
        if tokens.ndim == 2:
            return embeddings
        owner = torch.arange(tokens.shape[0], device=tokens.device).repeat_interleave(tokens.shape[1])
        return pool_text(embeddings, owner, tokens.shape[0], self.head.cfg.pooling)


class CrossFrameTower(nn.Module):
    """The end-to-end model's cross-frame tower behind :class:`FrozenImageTower`'s interface, so
    :class:`FrameEncoder` batches it too: views arrive flattened to ``(V·T, 3, S, S)``."""

    def __init__(self, model: AnimalCLIP, num_frames: int, patches: bool):
        super().__init__()
        self.model, self.num_frames, self.patches = model, num_frames, patches
        self.pixels = model.pixels

    @torch.inference_mode()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        features = self.model.encode_frames(images.unflatten(0, (-1, self.num_frames)))
        return features.cls.flatten(0, 1), features.patches.flatten(0, 1) if self.patches else None


def _count_blocks(state: Mapping[str, Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def clip_configs_from_state_dict(state: Mapping[str, Tensor]) -> tuple[int, CLIPVisionCfg, CLIPTextCfg]:
    """``(embed_dim, vision_cfg, text_cfg)`` read from an AnimalCLIP state dict (``visual.*`` and
    ``text.*`` names); heads = width // 64, as in CLIP and X-CLIP."""
    try:
        conv = state["visual.conv1.weight"]
        width, patch = conv.shape[0], conv.shape[-1]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = CLIPVisionCfg(
            layers=_count_blocks(state, "visual.transformer.resblocks."),
            width=width,
            patch_size=patch,
            image_size=patch * grid,
            mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        )
        text_width = state["text.ln_final.weight"].shape[0]
        text = CLIPTextCfg(
            context_length=state["text.positional_embedding"].shape[0],
            vocab_size=state["text.token_embedding.weight"].shape[0],
            width=text_width,
            heads=text_width // 64,
            layers=_count_blocks(state, "text.transformer.resblocks."),
            mlp_ratio=state["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        )
        return state["text.text_projection"].shape[1], vision, text
    except KeyError as e:
        raise AnimClipError(f"not an Animal-CLIP end-to-end state dict: no {e.args[0]!r}") from None


def clip_from_state_dict(state: Mapping[str, Tensor], *, quick_gelu: bool = True) -> CLIP:
    """An open_clip CLIP (random init) shaped like the towers of an AnimalCLIP state dict: the
    architecture of a release checkpoint, fed as the release feeds it (ImageNet statistics,
    bilinear resizing, docs/method.md §4.5)."""
    embed_dim, vision, text = clip_configs_from_state_dict(state)
    clip = CLIP(embed_dim, vision, text, quick_gelu=quick_gelu)
    open_clip.set_model_preprocess_cfg(clip, {"size": vision.image_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                              "interpolation": "bilinear", "resize_mode": "shortest"})
    return clip
