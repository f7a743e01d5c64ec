"""Spatial transforms on torch tensors, run on whatever device the frames are on.

A clip is decoded once to one uint8 ``(U, H, W, 3)`` tensor holding the union of its views'
frames (:func:`anim_clip.data.sampling.union_indices`), moved to the model's device, and only
there converted to float, resized, cropped, flipped and normalised by :func:`render_views`
(docs/method.md §4.5). Views are planned by :mod:`anim_clip.data.sampling`; nothing here draws a
random geometric parameter, so a cached view is reproducible from its :class:`ViewSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as tvf

from anim_clip.config import SamplingConfig
from anim_clip.data.sampling import ViewSpec, resized_size
from anim_clip.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_STATS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
NORMALIZATIONS = tuple(_STATS)
INTERPOLATIONS = ("bilinear", "bicubic")

# Training colour augmentation of the release (docs/method.md §4.5 steps 5-6).
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BRIGHTNESS = 0.4
CONTRAST = 0.4
SATURATION = 0.2
HUE = 0.1

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True)
class Pixels:
    """The frames an image tower takes: ``size``-px squares resized with ``interpolation`` and
    normalised with ``mean``/``std`` on the [0, 1] scale. ``resize_mode`` is open_clip's framing of
    a whole image, recorded only: anim-clip's views keep the release's geometry (short side, crop)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str


def normalization_stats(name: str | Stats) -> Stats:
    """``(mean, std)`` on the [0, 1] scale: "clip" for a frozen CLIP backbone, "imagenet" to
    match the release, which normalises with ImageNet statistics (docs/method.md §9 D5), or
    explicit ``(mean, std)`` triples."""
    if not isinstance(name, str):
        mean, std = (tuple(float(v) for v in triple) for triple in name)
        if min(std) <= 0:
            raise ConfigError(f"sampling.normalization: std must be positive, got {list(std)}")
        return mean, std
    if name not in _STATS:
        raise ValueError(f"unknown normalization {name!r}; choose one of {', '.join(NORMALIZATIONS)}")
    return _STATS[name]


def rendered_pixels(sampling: SamplingConfig, model: Pixels) -> Pixels:
    """The pixels views are rendered as: the backbone's own (``model``), its statistics replaced
    when ``sampling.normalization`` names others and its interpolation when
    ``sampling.interpolation`` does. The backbone's input size must be ``sampling.image_size``."""
    if sampling.image_size != model.size:
        raise ConfigError(f"sampling.image_size is {sampling.image_size}, but the backbone takes {model.size}-px "
                          f"images: set sampling.image_size={model.size} (and sampling.resize to at least that)")
    mean, std = (model.mean, model.std) if sampling.normalization == "model" else normalization_stats(sampling.normalization)
    interpolation = model.interpolation if sampling.interpolation == "model" else sampling.interpolation
    return replace(model, mean=mean, std=std, interpolation=interpolation)


def _resize(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Antialiased bilinear or bicubic resize of float ``(N, 3, H, W)``; a no-op at the same size."""
    if tuple(x.shape[-2:]) == size:
        return x
    return nnf.interpolate(x, size=size, mode=interpolation, antialias=True, align_corners=False)


def render_views(
    frames: torch.Tensor,
    views: Sequence[ViewSpec],
    positions: Sequence[np.ndarray],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Render every view of one clip: float ``(V, T, 3, S, S)`` on ``frames.device``.

    ``frames`` is uint8 ``(U, H, W, 3)``; view v uses ``frames[positions[v]]`` (the positions
    :func:`~anim_clip.data.sampling.union_indices` returns). Per view, as the release (§4.5):
    short side resized to ``view.short_side`` (done once per distinct short side, for all U
    frames), crop ``view.crop``, crop resized to ``S x S`` ignoring aspect ratio, horizontal
    flip if asked, then scaled to [0, 1] and normalised with ``mean``/``std``. Both resizes use
    ``interpolation`` (the backbone's, :func:`rendered_pixels`), antialiased.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (U, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if len(views) != len(positions):
        raise ValueError(f"{len(views)} views but {len(positions)} position arrays")
    height, width = frames.shape[1:3]
    x = frames.permute(0, 3, 1, 2).float().div_(255)
    resized: dict[int, torch.Tensor] = {}
    out = []
    for view, pos in zip(views, positions):
        if view.short_side not in resized:
            resized[view.short_side] = _resize(x, resized_size(height, width, view.short_side), interpolation)
        frame_size = resized[view.short_side].shape[-2:]
        x0, y0, w, h = view.crop
        if x0 < 0 or y0 < 0 or x0 + w > frame_size[1] or y0 + h > frame_size[0]:
            raise ValueError(
                f"crop {view.crop} does not fit a {frame_size[1]}x{frame_size[0]} frame "
                f"(short side {view.short_side})"
            )
        index = torch.as_tensor(pos, dtype=torch.long, device=frames.device)
        crop = resized[view.short_side][index, :, y0 : y0 + h, x0 : x0 + w]
        crop = _resize(crop, (image_size, image_size), interpolation)
        out.append(crop.flip(-1) if view.flip else crop)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (torch.stack(out) - mean_t) / std_t


def render_view(
    frames: torch.Tensor,
    view: ViewSpec,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """One view from its own uint8 ``(T, H, W, 3)`` frames: float ``(T, 3, S, S)``."""
    return render_views(frames, [view], [np.arange(len(frames))], image_size, mean, std, interpolation)[0]


def _jitter_frame(frame: torch.Tensor, order: list[int], factors: list[float]) -> torch.Tensor:
    """torchvision's ColorJitter on one ``(3, H, W)`` frame with given order and factors."""
    ops = (tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue)
    for op in order:
        frame = ops[op](frame, factors[op])
    return frame


def color_augment(clips: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Release training colour augmentation on float ``(B, T, 3, H, W)`` in [0, 1] (§4.5 5-6).

    Each clip is colour-jittered with probability :data:`JITTER_P` and then turned grey
    (3 channels) with probability :data:`GRAYSCALE_P`. As in the release, whose torchvision
    ColorJitter is called frame by frame, a jittered clip draws a new random op order and new
    factors for every frame. torchvision's primitives take one scalar factor per call, so
    jittered frames are processed one at a time; grayscale is one batched op. All randomness
    comes from ``generator`` (a CPU generator), whatever device the clips are on.
    """
    if clips.ndim != 5 or clips.shape[2] != 3 or not clips.is_floating_point():
        raise ValueError(f"clips must be float (B, T, 3, H, W), got {clips.dtype} {tuple(clips.shape)}")
    B, T = clips.shape[:2]
    jitter = torch.rand(B, generator=generator) < JITTER_P
    gray = torch.rand(B, generator=generator) < GRAYSCALE_P
    n = int(jitter.sum()) * T
    orders = torch.rand(n, 4, generator=generator).argsort(dim=1).tolist()
    low = torch.tensor([1 - BRIGHTNESS, 1 - CONTRAST, 1 - SATURATION, -HUE])
    high = torch.tensor([1 + BRIGHTNESS, 1 + CONTRAST, 1 + SATURATION, HUE])
    factors = (low + (high - low) * torch.rand(n, 4, generator=generator)).tolist()
    jitter, gray = jitter.to(clips.device), gray.to(clips.device)
    out = clips.clone()
    frames = out[jitter].flatten(0, 1)
    jittered = [_jitter_frame(f, o, k) for f, o, k in zip(frames, orders, factors)]
    if jittered:
        out[jitter] = torch.stack(jittered).unflatten(0, (-1, T))
    if gray.any():
        out[gray] = tvf.rgb_to_grayscale(out[gray], num_output_channels=3)
    return out
