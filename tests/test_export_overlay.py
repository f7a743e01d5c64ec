"""Overlay videos: the source video re-encoded with each moment's label drawn in its top-left
corner, checked frame by frame against the source."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from anim_clip.errors import VideoDecodeError
from anim_clip.export import write_overlay

from videos import indexed_frames, write_video

FPS, FRAMES, HEIGHT, WIDTH = 10, 40, 120, 160
ACTIONS = ["walking", "eating", "resting"]
HEADER = {"species_source": "predicted"}


def decode(path: Path) -> tuple[np.ndarray, float]:
    """Every frame as RGB ``(T, H, W, 3)``, and the stream's duration in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.duration * stream.time_base)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_video(tmp_path / "source.mp4", indexed_frames(FRAMES, HEIGHT, WIDTH), fps=FPS)


def record(video: Path) -> dict:
    """Walking for the first two seconds, eating for the last two."""
    windows = [{"start_s": a, "end_s": a + 2.0, "top": [], "scores": dict(zip(ACTIONS, s))}
               for a, s in ((0.0, [0.9, 0.05, 0.05]), (2.0, [0.1, 0.8, 0.1]))]
    return {"video": str(video), "error": None, "frames": FRAMES, "fps": float(FPS), "duration_s": FRAMES / FPS,
            "species": [{"name": "Duck", "probability": 0.93}], "top": [],
            "scores": dict(zip(ACTIONS, [0.5, 0.4, 0.1])), "windows": windows}


def test_overlay_draws_each_moments_label_and_keeps_the_rest_of_the_frame(source: Path, tmp_path: Path):
    out = write_overlay(tmp_path / "overlay.mp4", record(source), HEADER)
    drawn, duration = decode(out)
    original, _ = decode(source)
    assert drawn.shape == original.shape == (FRAMES, HEIGHT, WIDTH, 3) and duration == pytest.approx(FRAMES / FPS)

    diff = np.abs(drawn.astype(int) - original.astype(int))
    label, rest = diff[:, :40, :60], diff[:, -40:, -40:]  # inside the label's box (4 lines), and far from it
    assert label.mean(axis=(1, 2, 3)).min() > 20  # the label is on every frame
    assert rest.mean() < 3  # and nothing else changed beyond the codec's loss
    # one label per span: the same within the first two seconds, another after the switch to eating
    box = drawn[:, :40, :60].astype(int)
    assert np.abs(box[1] - box[15]).mean() < 3 and np.abs(box[15] - box[25]).mean() > 5


@pytest.mark.parametrize("rotation", [90, 270])
def test_overlay_of_a_phone_clip_is_upright(tmp_path: Path, rotation: int):
    """A portrait clip stored sideways with the display rotation a phone records: the overlay is the
    upright picture, as a player shows the source (away from the label)."""
    upright = indexed_frames(FRAMES, WIDTH, HEIGHT)  # portrait: 160 high, 120 wide
    stored = np.ascontiguousarray(np.rot90(upright, k=-rotation // 90, axes=(1, 2)))  # turned back by the rotation
    source = write_video(tmp_path / "phone.mp4", stored, fps=FPS, codec="libx264rgb", pix_fmt="rgb24",
                         options={"crf": "0"}, rotation=rotation)
    drawn, _ = decode(write_overlay(tmp_path / "overlay.mp4", record(source), HEADER))
    assert drawn.shape == upright.shape
    assert np.abs(drawn[:, -40:, -40:].astype(int) - upright[:, -40:, -40:]).mean() < 3


def test_overlay_of_a_missing_video_is_one_clear_line(tmp_path: Path):
    missing = tmp_path / "gone.mp4"
    with pytest.raises(VideoDecodeError, match=f"{missing}: cannot decode video: cannot draw its overlay"):
        write_overlay(tmp_path / "overlay.mp4", record(missing), HEADER)
    assert not list(tmp_path.iterdir())  # no half-written file left behind
