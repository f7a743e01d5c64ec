"""From video files to per-frame features, one path for every command: plan a clip's views, decode
every frame they need once (:func:`decode_clip`, in threads or DataLoader workers), render the views
on the model's device and encode them with an image tower in batches of about
``backbone.batch_frames`` frames (:class:`FrameEncoder`).

Extraction, evaluation on videos, prediction and ``analyze clip --video`` go through it; end-to-end
training decodes its augmented views with :func:`decoded_batches` and renders them itself (colour
augmentation needs the pixels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from anim_clip.config import Config, SamplingConfig
from anim_clip.data.sampling import TEST_CROPS, ViewSpec, eval_views, train_views, union_indices
from anim_clip.data.transforms import render_views, rendered_pixels
from anim_clip.data.video import BACKENDS, VideoFile, check_decoder, open_video
from anim_clip.errors import AnimClipError, DecoderUnavailable, VideoDecodeError
from anim_clip.models.features import FrameFeatures
from anim_clip.models.species import SpeciesPredictor
from anim_clip.runtime.precision import autocast
from anim_clip.ui import console

TRAIN_SPLIT = "train"


def plan_views(split: str, index: int, num_frames: int, height: int, width: int, s: SamplingConfig) -> list[ViewSpec]:
    """Training splits: V augmented views, seeded by the clip's index so every shard, resume and
    re-run draws the same ones. Other splits: the deterministic clips × crops test views."""
    if split == TRAIN_SPLIT:
        rng = np.random.default_rng((index, s.train_views, s.num_frames))
        return train_views(num_frames, height, width, s.num_frames, s.train_views, s.image_size, s.resize, rng)
    return eval_views(num_frames, height, width, s.num_frames, s.test_clips, s.test_crops, s.image_size, s.resize)


def num_views(split: str, s: SamplingConfig) -> int:
    return s.train_views if split == TRAIN_SPLIT else s.test_clips * s.test_crops


@dataclass
class DecodedClip:
    """One clip's decoded frames and the views to render from them, or why it could not be decoded."""

    index: int
    frames: torch.Tensor | None = None  # (U, H, W, 3) uint8, the union of every view's frames
    views: list[ViewSpec] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    error: str | None = None
    decoder: str = ""  # the decoder whose pixels ``frames`` are
    fallback: str | None = None  # why the configured decoder failed on the file, when PyAV decoded it

    @classmethod
    def of(cls, video: VideoFile, index: int, frames: torch.Tensor, views: list[ViewSpec],
           positions: list[np.ndarray]) -> DecodedClip:
        """``frames`` decoded from ``video``, with the decoder that decoded them (known only after)."""
        return cls(index, frames, views, positions, decoder=video.decoder, fallback=video.fallback)

    @property
    def frame_indices(self) -> np.ndarray:
        """``(V, T)`` the source frame of every view's frame."""
        return np.stack([v.frame_indices for v in self.views])


def decode_views(video: VideoFile, index: int, views: list[ViewSpec], offset: int = 0) -> DecodedClip:
    """Decode every frame ``views`` need once (frame indices counted from ``offset``)."""
    unique, positions = union_indices(views)
    return DecodedClip.of(video, index, video.get_frames(unique + offset), views, positions)


def decode_clip(path: Path, split: str, index: int, cfg: Config, device: torch.device | None = None) -> DecodedClip:
    """Open, plan the views and decode every needed frame once (on ``device`` with a GPU decoder).
    Never raises for a bad video: the clip comes back with ``error`` set."""
    try:
        with open_video(path, cfg.sampling.decoder, cfg.sampling.decode_threads, device) as video:
            views = plan_views(split, index, video.num_frames, video.height, video.width, cfg.sampling)
            return decode_views(video, index, views)
    except VideoDecodeError as e:
        return DecodedClip(index, error=e.reason)


def with_decoder(cfg: Config, decoder: str | None) -> Config:
    """``cfg`` decoding with ``decoder``; by default the checkpoint's own, unless this machine lacks
    it (a run trained with the GPU decoder, predicting on a laptop): then decord, said aloud."""
    if decoder is not None:
        if decoder not in BACKENDS:
            raise AnimClipError(f"decoder must be one of {', '.join(BACKENDS)}, got {decoder!r}")
        check_decoder(decoder)
    else:
        decoder = cfg.sampling.decoder
        try:
            check_decoder(decoder)
        except DecoderUnavailable as unavailable:
            console.print(f"[yellow]the checkpoint decodes with {decoder}, unavailable here ({unavailable.reason}): "
                          "decoding with decord[/]", soft_wrap=True)
            decoder = "decord"
    return dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, decoder=decoder))


def with_views(cfg: Config, clips: int | None, crops: int | None) -> Config:
    """``cfg`` with ``clips`` × ``crops`` test views where given (per-epoch selection uses 1 × 1, as the
    release; ``predict --clips --crops``), refusing views the sampler cannot plan."""
    if clips is not None and clips < 1:
        raise AnimClipError(f"clips (temporal test views) must be at least 1, got {clips}")
    if crops is not None and crops not in TEST_CROPS:
        raise AnimClipError(f"crops (spatial test views) must be one of {', '.join(map(str, TEST_CROPS))}, got {crops}")
    s = cfg.sampling
    return dataclasses.replace(cfg, sampling=dataclasses.replace(s, test_clips=clips or s.test_clips,
                                                                 test_crops=crops or s.test_crops))


Decode = Callable[[int], DecodedClip]


class _Decoding(torch.utils.data.Dataset):
    """Map-style view of a decode function, so DataLoader workers run it."""

    def __init__(self, decode: Decode):
        self.decode = decode

    def __getitem__(self, index: int) -> DecodedClip:
        return self.decode(index)


def decoded_batches(decode: Decode, batches: Sequence[Sequence[int]], workers: int) -> Iterable[list[DecodedClip]]:
    """``decode`` every index of every batch, in ``workers`` processes (0: in this one), in order."""
    return DataLoader(_Decoding(decode), batch_sampler=[list(map(int, b)) for b in batches], num_workers=workers,
                      collate_fn=list, prefetch_factor=2 if workers else None)


class FrameEncoder:
    """Renders decoded clips' views on ``device`` as ``tower`` takes them (its ``pixels``, with the
    config's overrides) and encodes them with it (an image tower returning per-frame embeddings and
    optional patch tokens), about ``backbone.batch_frames`` frames per forward pass, in
    ``runtime.precision`` (:mod:`anim_clip.runtime.precision`). With a species ``predictor``, the
    same views are also rendered as the predictor takes them (its own pixels) and its per-view
    species probabilities come with the features (``FrameFeatures.species``)."""

    def __init__(self, tower: nn.Module, device: torch.device, cfg: Config,
                 predictor: SpeciesPredictor | None = None):
        self.tower, self.device, self.predictor = tower, device, predictor
        self.batch_frames = cfg.backbone.batch_frames
        self.precision = cfg.runtime.precision
        self.pixels = rendered_pixels(cfg.sampling, tower.pixels)

    def encode(self, clips: Iterable[DecodedClip]) -> Iterator[tuple[DecodedClip, FrameFeatures | None]]:
        """Each clip with its ``(V, T, D)`` features (and patches, and species probabilities), in
        the order given; a clip that could not be decoded comes back at once with None. A clip's
        frames are released once rendered."""
        queued: list[tuple[DecodedClip, list[torch.Tensor]]] = []
        pixels = [self.pixels, *([self.predictor.pixels] if self.predictor is not None else [])]
        for clip in clips:
            if clip.error is not None:
                yield clip, None
                continue
            frames, clip.frames = clip.frames.to(self.device, non_blocking=True), None
            queued.append((clip, [render_views(frames, clip.views, clip.positions, p.size, p.mean, p.std,
                                               p.interpolation) for p in pixels]))
            if sum(v[0].shape[0] * v[0].shape[1] for _, v in queued) >= self.batch_frames:
                yield from self._forward(queued)
                queued = []
        yield from self._forward(queued)

    def _forward(self, queued: list[tuple[DecodedClip, list[torch.Tensor]]]) -> list[tuple[DecodedClip, FrameFeatures]]:
        """One forward pass (per model) over every queued view, split back per clip."""
        if not queued:
            return []
        images = [torch.cat([views[k].flatten(0, 1) for _, views in queued]) for k in range(len(queued[0][1]))]
        with autocast(self.precision, self.device, "tower"):
            cls, patches = self.tower(images[0])
            species = self.predictor.tower(images[1])[0] if self.predictor is not None else None
        out, start = [], 0
        for clip, views in queued:
            V, T = views[0].shape[:2]
            stop = start + V * T
            clip_patches = None if patches is None else patches[start:stop].float().view(V, T, *patches.shape[1:])
            clip_species = None if species is None else self.predictor.probabilities(species[start:stop].view(V, T, -1))
            out.append((clip, FrameFeatures(cls[start:stop].float().view(V, T, -1), clip_patches, clip_species)))
            start = stop
        return out
