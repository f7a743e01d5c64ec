"""Video decoding with every backend: generated videos of many frame sizes, the real clips, broken
files, and the per-file PyAV fallback."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from videos import (
    decoders,
    decodes_alone,
    frame_ids,
    indexed_frames,
    real_clip,
    write_empty,
    write_garbage,
    write_junk_payloads,
    write_truncated,
    write_video,
    write_zero_frames,
    usable_decoders,
)

from anim_clip.data.video import decoder_note, open_video
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


# (height, width): decord2 3.4.0 reads 100x64 but not 96x64 on AVX-512 CPUs (DECORD_SIZE_BUG)
SIZES = [(64, 96), (64, 100)]


@pytest.fixture(scope="module", params=SIZES, ids=[f"{w}x{h}" for h, w in SIZES])
def size(request) -> tuple[int, int]:
    return request.param


@pytest.fixture(scope="module")
def video_dir(size, tmp_path_factory) -> Path:
    height, width = size
    root = tmp_path_factory.mktemp(f"videos-{width}x{height}")
    frames = indexed_frames(N, height, width)
    for name, codec, gop in FORMATS:
        write_video(root / name, frames, codec=codec, keyframe_interval=gop)
    write_video(root / "faststart.mp4", frames, options={"movflags": "faststart"})
    write_video(root / "raw.h264", frames, keyframe_interval=8)
    return root


def expected_decoder(path: Path, backend: str) -> str:
    """The backend itself, or PyAV where it cannot read this file alone."""
    return backend if decodes_alone(path, backend) else "pyav"


@pytest.mark.parametrize("backend", decoders())
@pytest.mark.parametrize("name", [f[0] for f in FORMATS])
def test_decodes_every_frame_in_order(video_dir, size, backend, name):
    height, width = size
    with open_video(video_dir / name, backend) as video:
        assert (video.num_frames, video.height, video.width) == (N, height, width)
        assert video.fps == pytest.approx(25.0)
        frames = video.get_frames(np.arange(N))
    assert frames.dtype == torch.uint8 and frames.shape == (N, height, width, 3) and frames.device == video.device
    assert frame_ids(frames).tolist() == list(range(N))
    assert video.decoder == expected_decoder(video_dir / name, backend)


@pytest.mark.parametrize("backend", decoders())
@pytest.mark.parametrize("name", [f[0] for f in FORMATS])
def test_unsorted_repeated_indices(video_dir, size, backend, name):
    rng = np.random.default_rng(0)
    with open_video(video_dir / name, backend) as video:
        for indices in [np.array([39, 0, 17, 17, 3, 39, 8]), *rng.integers(0, N, size=(5, 9))]:
            assert frame_ids(video.get_frames(indices)).tolist() == indices.tolist()
        assert video.get_frames(np.array([], dtype=np.int64)).shape == (0, *size, 3)


@pytest.mark.parametrize("backend", decoders())
@pytest.mark.parametrize("name", [f[0] for f in FORMATS])
def test_decoders_agree_with_decord(video_dir, backend, name):
    # 8-bit 4:2:0 of even height: the CPU decoders agree to the bit. Where decord cannot read this
    # frame size alone, the decord run is its PyAV fallback.
    indices = np.array([0, 9, 21, 38, 39, 9])
    with open_video(video_dir / name, "decord") as reference, open_video(video_dir / name, backend) as video:
        a, b = (v.get_frames(indices).cpu().to(torch.int16) for v in (reference, video))
    assert reference.decoder == expected_decoder(video_dir / name, "decord")
    diff = (a - b).abs()
    if backend in ("pyav", "torchcodec"):  # FFmpeg software decoding and swscale, like decord: the same pixels
        assert diff.max() == 0
    else:  # NVDEC converts colour its own way
        assert diff.float().mean() < 1 and diff.max() <= 8


# (height, width, codec, suffix, pixel format): sizes decord2 3.4.0 reads on AVX-512 CPUs and sizes
# it does not (32x32, 96x64, 144x64), odd ones in the codecs that allow them, and 10-bit
FRAME_SIZES = [
    (32, 32, "libx264", ".mp4", "yuv420p"),
    (64, 96, "libx264", ".mp4", "yuv420p"),
    (64, 144, "libx264", ".mp4", "yuv420p"),
    (64, 100, "libx264", ".mp4", "yuv420p"),
    (112, 112, "libx264", ".mp4", "yuv420p"),
    (64, 96, "libx264", ".mp4", "yuv420p10le"),
    (63, 97, "mpeg4", ".avi", "yuv420p"),
    (65, 101, "ffv1", ".mkv", "yuv420p"),
    (33, 31, "libx264", ".mp4", "yuv444p"),
    (61, 99, "libvpx-vp9", ".webm", "yuv420p"),
]


@pytest.mark.parametrize("backend", decoders())
@pytest.mark.parametrize(("height", "width", "codec", "suffix", "pix_fmt"), FRAME_SIZES,
                         ids=[f"{w}x{h}-{c}-{f}" for h, w, c, _, f in FRAME_SIZES])
def test_every_frame_size_decodes(tmp_path, backend, height, width, codec, suffix, pix_fmt):
    # through the configured decoder, falling back to PyAV where it cannot read the size alone
    path = write_video(tmp_path / f"{width}x{height}{suffix}", indexed_frames(12, height, width), codec=codec,
                       pix_fmt=pix_fmt)
    indices = np.array([11, 0, 5, 5, 3])
    with open_video(path, backend) as video:
        frames = video.get_frames(indices)
        assert (video.num_frames, video.height, video.width) == (12, height, width)
    assert frames.shape == (5, height, width, 3)
    assert frame_ids(frames).tolist() == indices.tolist()
    assert video.decoder == expected_decoder(path, backend)
    assert (video.fallback is None) == (video.decoder == backend)


def test_pyav_without_timestamps_decodes_in_one_pass(video_dir):
    # a raw H.264 stream has no timestamps: PyAV decodes from the start, decord cannot read it
    with open_video(video_dir / "raw.h264", "pyav") as video:
        assert video.num_frames == N
        indices = np.array([39, 0, 17, 17, 3])
        assert frame_ids(video.get_frames(indices)).tolist() == indices.tolist()
        assert frame_ids(video.get_frames(np.array([5]))).tolist() == [5]
    with pytest.raises(VideoDecodeError, match="raw.h264.*decord: .*broken metadata"):
        open_video(video_dir / "raw.h264", "decord", pyav_fallback=False)


def test_decord_failing_at_open_falls_back_to_pyav_for_that_file(video_dir):
    with open_video(video_dir / "raw.h264", "decord") as video:
        assert video.decoder == "pyav" and video.num_frames == N
        assert "raw.h264: cannot decode video: decord: " in video.fallback
        indices = np.array([39, 0, 17, 17, 3])
        assert frame_ids(video.get_frames(indices)).tolist() == indices.tolist()
    with open_video(video_dir / "plain.mp4", "pyav") as video:
        assert video.decoder == "pyav" and video.fallback is None


@pytest.mark.parametrize("backend", [b for b in usable_decoders() if b != "torchcodec-cuda"])
def test_a_file_no_cpu_decoder_reads_names_both_reasons(video_dir, backend):
    junk = write_junk_payloads(video_dir / "gop8.mkv", video_dir / f"junk-{backend}.mkv")
    with pytest.raises(VideoDecodeError) as info:
        with open_video(junk, backend) as video:
            video.get_frames(np.arange(video.num_frames))
    reason = info.value.reason
    assert info.value.path == junk
    if backend == "pyav":
        assert reason.startswith("ffmpeg: ") and "fallback" not in reason
    else:
        assert reason.startswith(f"{backend}: ") and "; pyav fallback: ffmpeg: " in reason


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


@pytest.mark.parametrize("backend", decoders())
@pytest.mark.parametrize("degrees", [90, 180, 270])
@pytest.mark.parametrize("stored_size", [(120, 160), (64, 96)], ids=["160x120", "96x64"])
def test_rotation_metadata_gives_the_frames_a_player_shows(tmp_path, backend, degrees, stored_size):
    # a portrait phone clip is stored sideways with a display matrix; lossless FFV1 RGB, so the
    # upright frames come back to the bit, also from PyAV standing in for decord (96x64, DECORD_SIZE_BUG)
    stored = indexed_frames(12, *stored_size)
    upright = np.ascontiguousarray(np.rot90(stored, degrees // 90, axes=(1, 2)))
    path = write_video(tmp_path / "portrait.mp4", stored, codec="ffv1", pix_fmt="bgr0", rotation=degrees)
    with open_video(path, backend) as video:
        assert (video.height, video.width) == upright.shape[1:3]
        frames = video.get_frames(np.array([7, 0, 11, 7]))
        assert video.decoder == expected_decoder(path, backend)
    np.testing.assert_array_equal(frames.cpu().numpy(), upright[[7, 0, 11, 7]])


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary (the player's view of the file)")
@pytest.mark.parametrize("backend", decoders())
@pytest.mark.parametrize("degrees", [90, 270])
def test_rotated_frames_are_what_ffmpeg_shows(tmp_path, backend, degrees):
    # an oracle independent of numpy's rotation convention: ffmpeg's own autorotation
    stored = indexed_frames(4, 120, 160)
    path = write_video(tmp_path / "portrait.mp4", stored, codec="ffv1", pix_fmt="bgr0", rotation=degrees)
    shown = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                           capture_output=True, check=True).stdout
    with open_video(path, backend) as video:
        frames = video.get_frames(np.arange(4)).cpu().numpy()
    np.testing.assert_array_equal(frames, np.frombuffer(shown, np.uint8).reshape(4, 160, 120, 3))


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
