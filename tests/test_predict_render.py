"""The views predict renders, from the real decoded frames of a clip, equal bit for bit the
rendering before the frames were made channels-first in memory (a speed-up of the resize): every
test layout (clips × crops), training views with flips, both interpolations, on the 720p frames of
the shipped real clip."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from anim_clip.data.sampling import ViewSpec, eval_views, resized_size, train_views, union_indices
from anim_clip.data.transforms import normalization_stats, render_views
from anim_clip.data.video import open_video

from videos import real_clip

T, SIZE, RESIZE = 4, 32, 40


def channels_last_render(frames: torch.Tensor, views: Sequence[ViewSpec], positions: Sequence[np.ndarray],
                         interpolation: str) -> torch.Tensor:
    """The rendering as it was: the float frames in the uint8 frames' channels-last memory."""
    mean, std = normalization_stats("clip")
    x = frames.permute(0, 3, 1, 2).float().div_(255)
    out = []
    for view, pos in zip(views, positions):
        size = resized_size(*frames.shape[1:3], view.short_side)
        resized = x if tuple(x.shape[-2:]) == size else nnf.interpolate(x, size=size, mode=interpolation,
                                                                         antialias=True, align_corners=False)
        x0, y0, w, h = view.crop
        crop = resized[torch.as_tensor(pos), :, y0:y0 + h, x0:x0 + w]
        if tuple(crop.shape[-2:]) != (SIZE, SIZE):
            crop = nnf.interpolate(crop, size=(SIZE, SIZE), mode=interpolation, antialias=True, align_corners=False)
        out.append(crop.flip(-1) if view.flip else crop)
    return (torch.stack(out) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.fixture(scope="module")
def decoded() -> torch.Tensor:
    """The first 8 frames of the shipped real clip (1280×720), as decoded."""
    with open_video(real_clip("bigbuckbunny.mp4")) as video:
        return video.get_frames(np.arange(8))


def layouts(frames: int, height: int, width: int) -> list[list[ViewSpec]]:
    tests = [eval_views(frames, height, width, T, clips, crops, SIZE, RESIZE) for clips in (1, 2, 3) for crops in (1, 3)]
    rng = np.random.default_rng(0)
    train = train_views(frames, height, width, T, 6, SIZE, RESIZE, rng)
    assert {v.flip for v in train} == {True, False}
    return [*tests, train]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_rendered_views_equal_the_channels_last_rendering_bit_for_bit(decoded: torch.Tensor, interpolation: str):
    for views in layouts(len(decoded), *decoded.shape[1:3]):
        unique, positions = union_indices(views)
        frames = decoded[torch.as_tensor(unique)]
        ours = render_views(frames, views, positions, SIZE, *normalization_stats("clip"), interpolation)
        assert torch.equal(ours, channels_last_render(frames, views, positions, interpolation))
