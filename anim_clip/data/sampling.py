"""Temporal sampling and view planning: which frames and which crop make each view of a clip.

Pure numpy and deterministic given a ``np.random.Generator``: a view is planned here once, from
the video's frame count and size only, so extraction can decode a clip once for all of its views
(:func:`union_indices`) and the cache can record exactly what each view saw. The pixel work lives
in :mod:`anim_clip.data.transforms`.

Formulas follow the release (docs/method.md §4.4 temporal, §4.5 spatial); the deterministic test clips
are docs/method.md §9 D9's evenly shifted samplings instead of the release's random draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MULTI_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
"""Crop side lengths of the training multi-scale crop, as fractions of the short side (§4.5)."""

SNAP_PIXELS = 3
"""A crop side within this many pixels (exclusive) of the output size is snapped to it (§4.5)."""

TEST_CROPS = (1, 3)
"""Spatial crops per clip supported at test time (§4.5)."""


def _check_counts(num_frames: int, T: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")


def tsn_indices(num_frames: int, T: int, rng: np.random.Generator) -> np.ndarray:
    """Training sampling (§4.4): one random frame from each of T equal segments.

    With fewer than T frames the release spreads T indices evenly with repeats
    (``round(i*n/T)``, numpy's half-to-even rounding as the release's ``np.around``).
    """
    _check_counts(num_frames, T)
    seg = num_frames // T
    i = np.arange(T, dtype=np.int64)
    if seg > 0:
        return i * seg + rng.integers(seg, size=T, dtype=np.int64)
    return np.minimum(np.round(i * num_frames / T).astype(np.int64), num_frames - 1)


def multi_clip_indices(num_frames: int, T: int, clips: int) -> np.ndarray:
    """``clips`` deterministic samplings, shape ``(clips, T)`` (§9 D9).

    Clip j takes frame ``int(i*n/T + (2j+1)*n/(2*T*clips))`` of segment i, i.e. offsets at
    1/(2K), 3/(2K), ... of each segment. Computed in exact integer arithmetic; the largest value
    is ``floor((2KT-1)n / 2KT) <= n-1``, so short videos give repeats, never out-of-range indices.
    """
    _check_counts(num_frames, T)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    i = np.arange(T, dtype=np.int64)[None, :]
    j = np.arange(clips, dtype=np.int64)[:, None]
    return ((2 * clips * i + 2 * j + 1) * num_frames) // (2 * T * clips)


def center_indices(num_frames: int, T: int) -> np.ndarray:
    """Release 1-view test sampling (§4.4): segment centres ``int(i*n/T + n/(2T))``."""
    return multi_clip_indices(num_frames, T, 1)[0]


def default_resize(image_size: int) -> int:
    """Short side before cropping: 256 for 224 px, the release's 8/7 ratio (§4.5)."""
    return round(image_size * 8 / 7)


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Frame size ``(h, w)`` after scaling the short side to ``short_side``, aspect kept.

    The long side is rounded half up, as the release's resize (mmcv ``rescale_size``). The
    transforms resize to exactly this size, so crop boxes planned here always fit.
    """
    short, long = min(height, width), max(height, width)
    scaled_long = (2 * long * short_side + short) // (2 * short)
    return (short_side, scaled_long) if height <= width else (scaled_long, short_side)


@dataclass(frozen=True, eq=False)
class ViewSpec:
    """One view of a clip: T frame indices, a crop box and a flip.

    ``crop = (x0, y0, w, h)`` is in pixels of the frame after its short side has been resized to
    ``short_side`` (see :func:`resized_size`); storing the short side with the box lets 1-crop
    (short side 256) and 3-crop (short side 224) views share one renderer. The crop is then
    resized to the output size ignoring aspect ratio, and flipped horizontally if ``flip``.
    """

    frame_indices: np.ndarray
    short_side: int
    crop: tuple[int, int, int, int]
    flip: bool

    def __post_init__(self) -> None:
        indices = np.array(self.frame_indices, dtype=np.int64)
        if indices.ndim != 1:
            raise ValueError(f"frame_indices must be 1-D, got shape {indices.shape}")
        object.__setattr__(self, "frame_indices", indices)
        object.__setattr__(self, "crop", tuple(int(v) for v in self.crop))


def _multi_scale_crop(
    height: int, width: int, image_size: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Release training crop (§4.5 step 2) on a frame of size ``height x width``.

    Side lengths ``int(short * s)`` for s in :data:`MULTI_SCALES`; (w, h) drawn from pairs whose
    scale indices differ by at most one; each side snapped to ``image_size`` when within
    :data:`SNAP_PIXELS`; the box placed at one of 5 fixed positions (4 corners, centre).
    """
    sizes = [int(min(height, width) * s) for s in MULTI_SCALES]
    pairs = [
        (w, h)
        for i, h in enumerate(sizes)
        for j, w in enumerate(sizes)
        if abs(i - j) <= 1
    ]
    w, h = pairs[rng.integers(len(pairs))]
    w, h = (image_size if abs(side - image_size) < SNAP_PIXELS else side for side in (w, h))
    w_step, h_step = (width - w) // 4, (height - h) // 4
    positions = [
        (0, 0),
        (4 * w_step, 0),
        (0, 4 * h_step),
        (4 * w_step, 4 * h_step),
        (2 * w_step, 2 * h_step),
    ]
    x0, y0 = positions[rng.integers(len(positions))]
    return x0, y0, w, h


def _check_sizes(image_size: int, resize: int) -> None:
    if resize < image_size:
        raise ValueError(f"resize ({resize}) must be >= image_size ({image_size})")


def train_views(
    num_frames: int,
    height: int,
    width: int,
    T: int,
    views: int,
    image_size: int,
    resize: int,
    rng: np.random.Generator,
) -> list[ViewSpec]:
    """``views`` augmented training views (§4.4 train sampling, §4.5 steps 1-4).

    Each view draws, in this order: TSN frame indices, the multi-scale crop on the frame resized
    to short side ``resize``, and a horizontal flip with probability 0.5.
    """
    _check_sizes(image_size, resize)
    rh, rw = resized_size(height, width, resize)
    specs = []
    for _ in range(views):
        indices = tsn_indices(num_frames, T, rng)
        crop = _multi_scale_crop(rh, rw, image_size, rng)
        flip = bool(rng.random() < 0.5)
        specs.append(ViewSpec(indices, resize, crop, flip))
    return specs


def _test_crops(
    height: int, width: int, crops: int, image_size: int, resize: int
) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(short side, box) of each test crop (§4.5), in the release's order."""
    if crops == 1:
        rh, rw = resized_size(height, width, resize)
        box = ((rw - image_size) // 2, (rh - image_size) // 2, image_size, image_size)
        return [(resize, box)]
    if crops == 3:
        rh, rw = resized_size(height, width, image_size)
        if rh == image_size:  # landscape (or square): crops slide along the width
            step = (rw - image_size) // 2
            offsets = [(0, 0), (2 * step, 0), (step, 0)]
        else:
            step = (rh - image_size) // 2
            offsets = [(0, 0), (0, 2 * step), (0, step)]
        return [(image_size, (x, y, image_size, image_size)) for x, y in offsets]
    raise ValueError(f"crops must be one of {TEST_CROPS}, got {crops}")


def eval_views(
    num_frames: int,
    height: int,
    width: int,
    T: int,
    clips: int,
    crops: int,
    image_size: int,
    resize: int,
) -> list[ViewSpec]:
    """``crops * clips`` deterministic evaluation views, crop-major then clip (§4.5).

    Temporal: :func:`multi_clip_indices`. Spatial: ``crops=1`` resizes the short side to
    ``resize`` and takes the centre ``image_size`` square; ``crops=3`` resizes the short side to
    ``image_size`` and takes three squares along the long side in the order left (top), right
    (bottom), centre.
    """
    _check_sizes(image_size, resize)
    clip_indices = multi_clip_indices(num_frames, T, clips)
    return [
        ViewSpec(indices, short_side, box, False)
        for short_side, box in _test_crops(height, width, crops, image_size, resize)
        for indices in clip_indices
    ]


def union_indices(views: Sequence[ViewSpec]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames to decode once for all views, and where each view's frames sit in them.

    Returns ``(unique_sorted_indices, positions)`` with
    ``unique_sorted_indices[positions[v]] == views[v].frame_indices``.
    """
    if not views:
        raise ValueError("union_indices needs at least one view")
    lengths = [len(view.frame_indices) for view in views]
    unique, inverse = np.unique(
        np.concatenate([view.frame_indices for view in views]), return_inverse=True
    )
    return unique, np.split(inverse.astype(np.int64), np.cumsum(lengths)[:-1])
