"""Video decoding with both backends: generated videos, the real clips, and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from videos import (
    decoders,
    frame_ids,
    indexed_frames,
    real_clip,
    write_empty,
    write_garbage,
    write_truncated,
    write_video,
    write_zero_frames,
    usable_decoders,
)

from anim_clip.data.video import BACKENDS, decoder_note, open_video
from anim_clip.errors import DecoderUnavailable, VideoDecodeError

N = 40

# (file name, codec, keyframe interval): H.264 with B-frames and several keyframes exercises
# seeking; mkv declares no frame count (counted by demuxing); AVI is MPEG-4 Part 2.
FORMATS = [
    ("plain.mp4", "libx264", None),
    ("gop8.mp4", "libx264", 8),
    ("gop8.mkv", "libx264", 8),
    ("gop5.avi", "mpeg4", 5),
]


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    frames = indexed_frames(N)
    for name, codec, gop in FORMATS:
        write_video(root / name, frames, codec=codec, keyframe_interval=gop)
    write_video(root / "faststart.mp4", frames, options={"movflags": "faststart"})
    write_video(root / "raw.h264", frames, keyframe_interval=8)
    return root


@pytest.mark.parametrize("backend", decoders())
@pytest.mark.parametrize("name", [f[0] for f in FORMATS])
def test_decodes_every_frame_in_order(video_dir, backend, name):
    with open_video(video_dir / name, backend) as video:
        assert (video.num_frames, video.height, video.width) == (N, 64, 96)
        assert video.fps == pytest.approx(25.0)
        frames = video.get_frames(np.arange(N))
    assert frames.dtype == torch.uint8 and frames.shape == (N, 64, 96, 3) and frames.device == video.device
    assert frame_ids(frames).tolist() == list(range(N))


@pytest.mark.parametrize("backend", decoders())
@pytest.mark.parametrize("name", [f[0] for f in FORMATS])
def test_unsorted_repeated_indices(video_dir, backend, name):
    rng = np.random.default_rng(0)
    with open_video(video_dir / name, backend) as video:
        for indices in [np.array([39, 0, 17, 17, 3, 39, 8]), *rng.integers(0, N, size=(5, 9))]:
            assert frame_ids(video.get_frames(indices)).tolist() == indices.tolist()
        assert video.get_frames(np.array([], dtype=np.int64)).shape == (0, 64, 96, 3)


@pytest.mark.parametrize("backend", decoders())
@pytest.mark.parametrize("name", [f[0] for f in FORMATS])
def test_decoders_agree_with_decord(video_dir, backend, name):
    indices = np.array([0, 9, 21, 38, 39, 9])
    a, b = (open_video(video_dir / name, d).get_frames(indices).cpu().to(torch.int16) for d in ("decord", backend))
    diff = (a - b).abs()
    if backend in ("pyav", "torchcodec"):  # FFmpeg software decoding and swscale, like decord: the same pixels
        assert diff.max() == 0
    else:  # NVDEC converts colour its own way
        assert diff.float().mean() < 1 and diff.max() <= 8


def test_pyav_without_timestamps_decodes_in_one_pass(video_dir):
    # a raw H.264 stream has no timestamps: PyAV decodes from the start, decord cannot read it
    with open_video(video_dir / "raw.h264", "pyav") as video:
        assert video.num_frames == N
        indices = np.array([39, 0, 17, 17, 3])
        assert frame_ids(video.get_frames(indices)).tolist() == indices.tolist()
        assert frame_ids(video.get_frames(np.array([5]))).tolist() == [5]
    with pytest.raises(VideoDecodeError, match="raw.h264"):
        open_video(video_dir / "raw.h264", "decord")


def test_bad_indices(video_dir):
    video = open_video(video_dir / "plain.mp4", "pyav")
    with pytest.raises(IndexError, match="plain.mp4"):
        video.get_frames(np.array([0, N]))
    with pytest.raises(IndexError):
        video.get_frames(np.array([-1]))
    with pytest.raises(ValueError, match="1-D integer"):
        video.get_frames(np.zeros((2, 2), dtype=np.int64))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_decoder_without_a_gpu_is_refused_with_the_fix(video_dir):
    with pytest.raises(DecoderUnavailable, match="torch sees none; decode with decord on this machine"):
        open_video(video_dir / "plain.mp4", "torchcodec-cuda")
    assert decoder_note("decord", torch.device("cpu")) == "decoder decord (CPU)"
    assert "no GPU decoder: it decodes on a CUDA GPU" in decoder_note("decord", torch.device("cuda", 0))


def test_unknown_backend(video_dir):
    with pytest.raises(ValueError, match="decord, pyav"):
        open_video(video_dir / "plain.mp4", "opencv")


def _bad_files(root: Path, good: Path, faststart: Path) -> dict[str, Path]:
    avi = root / "gop5.avi"
    return {
        "missing": root / "missing.mp4",
        "directory": root,
        "empty": write_empty(root / "empty.mp4"),
        "garbage": write_garbage(root / "garbage.mp4"),
        "truncated mp4 (index at the end)": write_truncated(good, root / "cut.mp4"),
        "truncated mp4 (index first)": write_truncated(faststart, root / "cut-faststart.mp4"),
        "truncated avi": write_truncated(avi, root / "cut.avi"),
        "zero frames": write_zero_frames(root / "zero.avi"),
    }


BAD_CASES = [
    "missing",
    "directory",
    "empty",
    "garbage",
    "truncated mp4 (index at the end)",
    "truncated mp4 (index first)",
    "truncated avi",
    "zero frames",
]


@pytest.mark.parametrize("backend", decoders())
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_video_raises_video_decode_error(video_dir, backend, case):
    bad = _bad_files(video_dir, video_dir / "plain.mp4", video_dir / "faststart.mp4")[case]
    with pytest.raises(VideoDecodeError) as info:
        video = open_video(bad, backend)
        video.get_frames(np.arange(video.num_frames))
    assert str(bad) in str(info.value) and info.value.path == bad and info.value.reason


@pytest.mark.parametrize("backend", decoders())
def test_truncated_mkv_returns_only_true_frames(video_dir, backend):
    # Matroska declares no frame count: a cut file is a shorter video, and what decodes from it
    # must be the right frames, never half-decoded ones.
    cut = write_truncated(video_dir / "gop8.mkv", video_dir / f"cut-{backend}.mkv")
    try:
        video = open_video(cut, backend)
        frames = video.get_frames(np.arange(video.num_frames))
    except VideoDecodeError:
        return
    assert 0 < video.num_frames < N
    assert frame_ids(frames).tolist() == list(range(video.num_frames))


REAL_CLIPS = [
    ("bigbuckbunny.mp4", 132, 720, 1280, 25.0),
    pytest.param("fish_tank_idtrackerai_test_A.avi", 501, 938, 1160, 28.07, marks=pytest.mark.extra_data),
]


@pytest.mark.parametrize(("name", "frames", "height", "width", "fps"), REAL_CLIPS)
def test_real_clips(name, frames, height, width, fps):
    path = real_clip(name)
    indices = np.array([frames - 1, 0, frames // 2, 7, frames // 2])
    decoded = []
    for backend in usable_decoders():
        with open_video(path, backend) as video:
            assert (video.num_frames, video.height, video.width) == (frames, height, width)
            assert video.fps == pytest.approx(fps, abs=0.01)
            decoded.append(video.get_frames(indices).cpu().to(torch.int16))
    a = decoded[0]
    assert a.shape == (5, height, width, 3)
    assert torch.equal(a[2], a[4])
    assert not torch.equal(a[0], a[1])
    for b in decoded[1:]:
        assert (a - b).abs().float().mean() < 1
