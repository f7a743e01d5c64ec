"""Temporal sampling and view planning (docs/method.md §4.4, §4.5, §9 D9)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from anim_clip.data import sampling
from anim_clip.data.sampling import (
    ViewSpec,
    center_indices,
    default_resize,
    multi_clip_indices,
    resized_size,
    train_views,
    tsn_indices,
    union_indices,
)


def test_tsn_one_frame_per_segment():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = tsn_indices(20, 8, rng)  # seg = 2
        assert idx.dtype == np.int64 and idx.shape == (8,)
        assert np.all(idx // 2 == np.arange(8))
    offsets = {int(v) for _ in range(50) for v in tsn_indices(100, 8, rng) % 12}
    assert offsets == set(range(12))  # seg = 12: every offset 0..11 is drawn


def test_tsn_short_video_repeats():
    rng = np.random.default_rng(0)
    # round(i*5/8), half to even as np.around: 2.5 -> 2
    assert tsn_indices(5, 8, rng).tolist() == [0, 1, 1, 2, 2, 3, 4, 4]
    assert tsn_indices(3, 8, rng).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]  # 2.625 -> 3, clipped
    assert tsn_indices(1, 8, rng).tolist() == [0] * 8


def test_tsn_is_deterministic_given_seed():
    a = tsn_indices(97, 8, np.random.default_rng(3))
    b = tsn_indices(97, 8, np.random.default_rng(3))
    assert np.array_equal(a, b)


def test_center_indices_exact():
    assert center_indices(16, 8).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert center_indices(20, 8).tolist() == [1, 3, 6, 8, 11, 13, 16, 18]
    assert center_indices(5, 8).tolist() == [0, 0, 1, 2, 2, 3, 4, 4]


def test_multi_clip_exact_offsets():
    assert multi_clip_indices(32, 8, 4).tolist() == [
        [4 * i + j for i in range(8)] for j in range(4)
    ]


@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("clips", [1, 2, 4])
def test_multi_clip_formula_and_range(T, clips):
    for n in range(1, 60):
        got = multi_clip_indices(n, T, clips)
        want = [
            [int(Fraction(i * n, T) + Fraction((2 * j + 1) * n, 2 * T * clips)) for i in range(T)]
            for j in range(clips)
        ]
        assert got.tolist() == want
        assert got.min() >= 0 and got.max() <= n - 1


def test_multi_clip_one_clip_is_center():
    for n in (1, 5, 8, 33, 301):
        assert np.array_equal(multi_clip_indices(n, 8, 1)[0], center_indices(n, 8))


def test_bad_counts_raise():
    with pytest.raises(ValueError):
        tsn_indices(0, 8, np.random.default_rng(0))
    with pytest.raises(ValueError):
        center_indices(10, 0)
    with pytest.raises(ValueError):
        multi_clip_indices(10, 8, 0)


def test_resize_rules():
    assert default_resize(224) == 256
    assert resized_size(720, 1280, 256) == (256, 455)
    assert resized_size(1280, 720, 256) == (455, 256)
    assert resized_size(2, 3, 3) == (3, 5)  # 4.5 rounds half up, as mmcv


def _positions(frame_h, frame_w, w, h):
    ws, hs = (frame_w - w) // 4, (frame_h - h) // 4
    return {(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)}


def test_train_views_crops():
    rng = np.random.default_rng(0)
    views = train_views(100, 720, 1280, 8, 400, 224, 256, rng)
    rh, rw = resized_size(720, 1280, 256)
    sizes = [256, 224, 192, 168]
    seen_positions, seen_pairs = set(), set()
    for view in views:
        x0, y0, w, h = view.crop
        assert view.short_side == 256
        assert 0 <= x0 and x0 + w <= rw and 0 <= y0 and y0 + h <= rh
        assert abs(sizes.index(w) - sizes.index(h)) <= 1
        assert (x0, y0) in _positions(rh, rw, w, h)
        if h < rh:  # both steps non-zero: the 5 positions are distinct
            seen_positions.add((x0 // ((rw - w) // 4), y0 // ((rh - h) // 4)))
        seen_pairs.add((w, h))
        assert np.all(view.frame_indices // 12 == np.arange(8))
    assert seen_positions == {(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)}
    assert len(seen_pairs) == 10  # 4 equal pairs + 2*3 neighbouring pairs
    assert {v.flip for v in views} == {True, False}


def test_train_views_snap_to_image_size():
    views = train_views(50, 300, 400, 4, 300, 224, 258, np.random.default_rng(1))
    sides = {side for v in views for side in v.crop[2:]}
    # int(258 * s) = 258, 225, 193, 170; 225 is within 3 px of 224 and snaps
    assert sides == {258, 224, 193, 170}


def test_train_views_deterministic():
    a = train_views(60, 64, 96, 8, 4, 32, 37, np.random.default_rng(7))
    b = train_views(60, 64, 96, 8, 4, 32, 37, np.random.default_rng(7))
    assert [(v.frame_indices.tolist(), v.crop, v.flip) for v in a] == [
        (v.frame_indices.tolist(), v.crop, v.flip) for v in b
    ]


def test_resize_smaller_than_image_size_rejected():
    with pytest.raises(ValueError, match="resize"):
        train_views(60, 64, 96, 8, 1, 224, 200, np.random.default_rng(0))


def test_test_views_one_crop():
    (view,) = sampling.eval_views(132, 720, 1280, 8, 1, 1, 224, 256)
    assert view.short_side == 256 and view.crop == (115, 16, 224, 224) and not view.flip
    assert np.array_equal(view.frame_indices, center_indices(132, 8))


def test_test_views_three_crops_crop_major():
    views = sampling.eval_views(132, 720, 1280, 8, 4, 3, 224, 256)
    assert len(views) == 12
    clip_indices = multi_clip_indices(132, 8, 4)
    # short side 224 -> 224x398; step (398-224)//2 = 87; order left, right, centre
    for c, x0 in enumerate([0, 174, 87]):
        for j in range(4):
            view = views[c * 4 + j]
            assert view.short_side == 224 and view.crop == (x0, 0, 224, 224)
            assert np.array_equal(view.frame_indices, clip_indices[j])


def test_test_views_three_crops_portrait():
    views = sampling.eval_views(10, 1280, 720, 8, 1, 3, 224, 256)
    assert [v.crop for v in views] == [(0, 0, 224, 224), (0, 174, 224, 224), (0, 87, 224, 224)]


def test_test_views_unsupported_crops():
    with pytest.raises(ValueError, match="crops"):
        sampling.eval_views(10, 64, 96, 8, 1, 2, 32, 37)


def test_union_indices_reconstructs_views():
    views = sampling.eval_views(7, 64, 96, 8, 4, 3, 32, 37) + train_views(
        7, 64, 96, 8, 2, 32, 37, np.random.default_rng(0)
    )
    unique, positions = union_indices(views)
    assert np.all(np.diff(unique) > 0)
    for view, pos in zip(views, positions):
        assert np.array_equal(unique[pos], view.frame_indices)


def test_viewspec_normalises_fields():
    view = ViewSpec([3, 1, 2], 256, (1.0, 2, 3, 4), False)
    assert view.frame_indices.dtype == np.int64 and view.crop == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="1-D"):
        ViewSpec([[0, 1]], 256, (0, 0, 1, 1), False)
