"""Test videos written with PyAV: frames that encode their own index, and broken files.

Frame k of :func:`indexed_frames` is a grey level ``BASE + STEP*k`` with a little random
texture of its own on top (so every frame costs the encoder real bytes and a file cut in half
loses about half of its frames); :func:`frame_ids` reads k back from decoded frames, within codec tolerance.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from extra_data import VIDEOS, require

from anim_clip.data.video import BACKENDS, decoder_unavailable, open_video
from anim_clip.errors import VideoDecodeError

FIXTURES = Path(__file__).resolve().parent / "fixtures"

BASE = 10
STEP = 6
TEXTURE = 8

# decord2 3.4.0 cannot convert some frame sizes on AVX-512 CPUs (96x64 and 32x32 fail, 100x64 decodes)
DECORD_SIZE_BUG = "Check failed: from_size == to_size"


def indexed_frames(num_frames: int = 40, height: int = 64, width: int = 96) -> np.ndarray:
    """uint8 ``(num_frames, height, width, 3)``: frame k has mean grey level ``BASE + STEP*k``."""
    if BASE + STEP * (num_frames - 1) + TEXTURE > 255:
        raise ValueError(f"{num_frames} frames do not fit the 8-bit intensity code")
    rng = np.random.default_rng(0)
    texture = rng.integers(-TEXTURE, TEXTURE + 1, size=(num_frames, height, width, 1))
    levels = BASE + STEP * np.arange(num_frames)[:, None, None, None]
    return np.broadcast_to(levels + texture, (num_frames, height, width, 3)).astype(np.uint8)


def frame_ids(frames: torch.Tensor) -> np.ndarray:
    """The index k each decoded frame encodes (nearest code level of its mean)."""
    means = frames.cpu().numpy().reshape(len(frames), -1).mean(axis=1)
    return np.rint((means - BASE) / STEP).astype(np.int64)


def decoders() -> list:
    """Every decoder as a pytest parameter, skipped (with the reason) where this machine lacks it."""
    params = []
    for backend in BACKENDS:
        reason = decoder_unavailable(backend)
        params.append(pytest.param(backend, marks=pytest.mark.skipif(reason is not None, reason=f"{backend}: {reason}")))
    return params


def usable_decoders() -> list[str]:
    return [backend for backend in BACKENDS if decoder_unavailable(backend) is None]


def decodes_alone(path: Path, backend: str) -> bool:
    """Whether ``backend`` decodes every frame of ``path`` without the PyAV fallback. False only
    for decord's known frame-size failure, checked to be the typed error; any other failure raises."""
    try:
        with open_video(path, backend, pyav_fallback=False) as video:
            video.get_frames(np.arange(video.num_frames))
    except VideoDecodeError as error:
        if backend == "decord" and DECORD_SIZE_BUG in error.reason:
            return False
        raise
    return True


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: int = 25,
    codec: str = "libx264",
    keyframe_interval: int | None = None,
    options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
) -> Path:
    """Encode uint8 ``(T, H, W, 3)`` RGB frames; the container follows the file suffix.

    ``options`` go to the muxer (e.g. ``{"movflags": "faststart"}`` puts the mp4 index first).
    ``rotation`` (counterclockwise degrees) goes in the display matrix, as a phone records portrait
    video: stored sideways, shown upright.
    """
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000  # the default is too coarse for the intensity code
        if keyframe_interval is not None:
            stream.codec_context.gop_size = keyframe_interval
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_empty(path: Path) -> Path:
    """A 0-byte file."""
    path.write_bytes(b"")
    return path


def write_garbage(path: Path, size: int = 5000) -> Path:
    """Random bytes under a video file name."""
    path.write_bytes(np.random.default_rng(1).bytes(size))
    return path


def write_truncated(source: Path, path: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` fraction of ``source``'s bytes, like an interrupted download."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_junk_payloads(source: Path, path: Path) -> Path:
    """``source``'s packets with random bytes in place of their data: the file demuxes, nothing decodes it."""
    rng = np.random.default_rng(2)
    with av.open(str(source)) as original, av.open(str(path), "w") as container:
        stream = container.add_stream_from_template(original.streams.video[0])
        for packet in original.demux(original.streams.video[0]):
            if packet.size == 0:
                continue
            junk = av.Packet(rng.bytes(packet.size))
            junk.pts, junk.dts, junk.is_keyframe, junk.time_base = packet.pts, packet.dts, packet.is_keyframe, packet.time_base
            junk.stream = stream
            container.mux(junk)
    return path


def write_zero_frames(path: Path, height: int = 64, width: int = 96) -> Path:
    """A valid container (use .avi) with one H.264 video stream and no frames in it."""
    template = write_video(path.with_name(path.stem + "-template.mp4"), indexed_frames(1, height, width))
    with av.open(str(template)) as source, av.open(str(path), "w") as container:
        container.add_stream_from_template(source.streams.video[0])
        container.start_encoding()
    return path


def real_clip(name: str) -> Path:
    """A real clip: shipped in tests/fixtures (the CC-BY rabbit), else the optional extra data (the
    GPL fish, not shipped)."""
    shipped = FIXTURES / name
    return shipped if shipped.is_file() else require(VIDEOS / name, "a GPL-licensed real clip")
