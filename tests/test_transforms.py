"""Spatial transforms and colour augmentation (docs/method.md §4.5), on CPU tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anim_clip.data import sampling, transforms
from anim_clip.data.sampling import ViewSpec, union_indices
from anim_clip.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    color_augment,
    normalization_stats,
    render_view,
    render_views,
)

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # identity normalisation: output = pixels / 255


def _random_frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


def test_normalization_stats():
    assert normalization_stats("clip") == (CLIP_MEAN, CLIP_STD)
    assert normalization_stats("imagenet") == (IMAGENET_MEAN, IMAGENET_STD)
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="clip"):
        normalization_stats("openai")


def test_render_views_shapes_and_union():
    views = sampling.eval_views(5, 40, 60, 4, 2, 3, 16, 18)
    unique, positions = union_indices(views)
    frames = _random_frames(len(unique), 40, 60)
    out = render_views(frames, views, positions, 16, *normalization_stats("clip"))
    assert out.shape == (6, 4, 3, 16, 16) and out.dtype == torch.float32
    assert out.device == frames.device


def test_constant_frame_normalised_exactly():
    frames = torch.full((2, 30, 50, 3), 200, dtype=torch.uint8)
    view = sampling.eval_views(2, 30, 50, 2, 1, 1, 16, 18)[0]
    out = render_view(frames, view, 16, IMAGENET_MEAN, IMAGENET_STD)
    want = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out, want.view(1, 3, 1, 1).expand_as(out))


def test_crop_takes_the_right_region():
    frames = _random_frames(1, 32, 64)
    view = ViewSpec([0], 32, (10, 0, 32, 32), False)  # no resize before or after the crop
    out = render_view(frames, view, 32, ZERO, ONE)
    want = frames[0, :, 10:42].permute(2, 0, 1).float() / 255
    torch.testing.assert_close(out[0], want)


def test_crop_box_is_in_resized_coordinates():
    # 40x80 frame: left half black, right half white; short side 20 -> 20x40 frame
    frames = torch.zeros((1, 40, 80, 3), dtype=torch.uint8)
    frames[:, :, 40:] = 255
    right = ViewSpec([0], 20, (24, 2, 12, 16), False)  # inside the white half, non-square
    left = ViewSpec([0], 20, (2, 2, 12, 16), False)
    out = render_views(frames, [right, left], [np.array([0]), np.array([0])], 8, ZERO, ONE)
    torch.testing.assert_close(out[0], torch.ones_like(out[0]))
    torch.testing.assert_close(out[1], torch.zeros_like(out[1]))


def test_flip_really_flips():
    frames = _random_frames(3, 24, 40)
    plain = ViewSpec([0, 1, 2], 24, (4, 0, 24, 24), False)
    flipped = ViewSpec([0, 1, 2], 24, (4, 0, 24, 24), True)
    a = render_view(frames, plain, 24, *normalization_stats("clip"))
    b = render_view(frames, flipped, 24, *normalization_stats("clip"))
    torch.testing.assert_close(b, a.flip(-1))
    assert not torch.allclose(a, b)


def test_positions_select_frames_in_order():
    frames = torch.stack([torch.full((8, 12, 3), 10 * k, dtype=torch.uint8) for k in range(4)])
    view = ViewSpec([2, 0, 2], 8, (2, 0, 8, 8), False)
    out = render_views(frames, [view], [np.array([2, 0, 2])], 8, ZERO, ONE)
    assert out[0, :, 0, 0, 0].mul(255).round().tolist() == [20, 0, 20]


def test_render_view_matches_render_views():
    frames = _random_frames(4, 36, 48)
    views = sampling.train_views(4, 36, 48, 4, 3, 16, 18, np.random.default_rng(0))
    unique, positions = union_indices(views)
    batch = render_views(frames[torch.as_tensor(unique)], views, positions, 16, CLIP_MEAN, CLIP_STD)
    for v, view in enumerate(views):
        one = render_view(frames[torch.as_tensor(view.frame_indices)], view, 16, CLIP_MEAN, CLIP_STD)
        torch.testing.assert_close(one, batch[v])


def test_crop_outside_frame_raises():
    frames = _random_frames(1, 20, 30)
    with pytest.raises(ValueError, match="does not fit"):
        render_view(frames, ViewSpec([0], 20, (20, 0, 16, 16), False), 16, ZERO, ONE)


def test_render_rejects_float_frames():
    with pytest.raises(ValueError, match="uint8"):
        render_view(torch.zeros(1, 8, 8, 3), ViewSpec([0], 8, (0, 0, 8, 8), False), 8, ZERO, ONE)


def _clips(seed: int = 0, B: int = 6, T: int = 3) -> torch.Tensor:
    return torch.rand(B, T, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_color_augment_shape_range_determinism():
    clips = _clips()
    a = color_augment(clips, torch.Generator().manual_seed(1))
    b = color_augment(clips, torch.Generator().manual_seed(1))
    assert a.shape == clips.shape and a.dtype == clips.dtype
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, clips)


def test_color_augment_grayscale_has_equal_channels(monkeypatch):
    monkeypatch.setattr(transforms, "GRAYSCALE_P", 1.0)
    out = color_augment(_clips(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, :, 0], out[:, :, 1])
    torch.testing.assert_close(out[:, :, 0], out[:, :, 2])


def test_color_augment_off_is_identity(monkeypatch):
    monkeypatch.setattr(transforms, "JITTER_P", 0.0)
    monkeypatch.setattr(transforms, "GRAYSCALE_P", 0.0)
    clips = _clips()
    torch.testing.assert_close(color_augment(clips, torch.Generator().manual_seed(0)), clips)


def test_color_jitter_redrawn_per_frame(monkeypatch):
    monkeypatch.setattr(transforms, "JITTER_P", 1.0)
    monkeypatch.setattr(transforms, "GRAYSCALE_P", 0.0)
    clips = _clips(B=2, T=4)[:, :1].expand(-1, 4, -1, -1, -1)  # 4 identical frames per clip
    out = color_augment(clips, torch.Generator().manual_seed(0))
    for t in range(1, 4):
        assert not torch.allclose(out[:, t], out[:, 0])
