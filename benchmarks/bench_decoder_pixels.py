"""Do the CPU decoders give the same pixels? Every usable CPU decoder against PyAV, each alone (no
fallback), on real footage (frames of tests/fixtures/bigbuckbunny.mp4, CC-BY) and on synthetic
hard colour edges (the worst case for chroma), re-encoded at sizes and in formats that occur in
datasets: 8-bit 4:2:0 of even and odd size, 10-bit, 4:2:2, 4:4:4.

Per case: the largest and mean absolute difference from PyAV (of 255), the share of differing
values, each decoder's mean absolute error from the source frames (which decoder is closer to
the truth), or the decoder's error where it cannot read the file.

    python -m benchmarks.bench_decoder_pixels [--frames 8]
"""

from __future__ import annotations

import argparse
import tempfile
from itertools import product
from pathlib import Path

import av
import numpy as np
import torch

from anim_clip.data.video import FALLBACK, GPU_BACKENDS, open_video
from anim_clip.errors import VideoDecodeError
from benchmarks.bench_decode import usable_decoders
from benchmarks.common import REAL_CLIP, save


# (name, codec, pixel format, width, height, file suffix)
CASES = [
    ("8-bit 4:2:0 H.264, even size", "libx264", "yuv420p", 320, 240, ".mp4"),
    ("8-bit 4:2:0 H.264, 100x64", "libx264", "yuv420p", 100, 64, ".mp4"),
    ("8-bit 4:2:0 H.264, 96x64", "libx264", "yuv420p", 96, 64, ".mp4"),
    ("8-bit 4:2:0 MPEG-4, odd width", "mpeg4", "yuv420p", 321, 240, ".avi"),
    ("8-bit 4:2:0 MPEG-4, odd height", "mpeg4", "yuv420p", 320, 241, ".avi"),
    ("8-bit 4:2:0 MPEG-4, odd size", "mpeg4", "yuv420p", 321, 241, ".avi"),
    ("8-bit 4:2:0 VP9, odd size", "libvpx-vp9", "yuv420p", 321, 241, ".webm"),
    ("8-bit 4:2:0 FFV1 (lossless), odd size", "ffv1", "yuv420p", 321, 241, ".mkv"),
    ("8-bit 4:2:2 H.264", "libx264", "yuv422p", 320, 240, ".mp4"),
    ("8-bit 4:4:4 H.264, odd size", "libx264", "yuv444p", 321, 241, ".mp4"),
    ("10-bit 4:2:0 H.264", "libx264", "yuv420p10le", 320, 240, ".mp4"),
    ("10-bit 4:2:0 H.265", "libx265", "yuv420p10le", 320, 240, ".mp4"),
    ("10-bit 4:2:0 FFV1 (lossless)", "ffv1", "yuv420p10le", 320, 240, ".mkv"),
]


def footage(count: int, width: int, height: int) -> np.ndarray:
    """``count`` frames spread over the source clip, scaled to ``width`` x ``height``, uint8 RGB."""
    with av.open(str(REAL_CLIP)) as container:
        frames = list(container.decode(video=0))
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return np.stack([frames[i].to_ndarray(format="rgb24", width=width, height=height) for i in picks])


def colour_edges(count: int, width: int, height: int) -> np.ndarray:
    """Ramps of red and green that wrap around, and blue diagonal stripes: hard colour edges everywhere."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([np.stack([(x * 255 // (width - 1) + 7 * k) % 256, y * 255 // (height - 1),
                               (x + y + 9 * k) * 3 % 256], axis=-1) for k in range(count)]).astype(np.uint8)


SOURCES = {"footage": footage, "colour edges": colour_edges}


def encode(path: Path, frames: np.ndarray, codec: str, pix_fmt: str) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def decode_alone(path: Path, backend: str, count: int) -> torch.Tensor | str:
    """Every frame by ``backend`` without the PyAV fallback, as int16; or its error."""
    try:
        with open_video(path, backend, pyav_fallback=False) as video:
            return video.get_frames(np.arange(count)).to(torch.int16)
    except VideoDecodeError as error:
        return error.reason


def compare(path: Path, source: np.ndarray, decoders: list[str]) -> dict:
    truth = torch.from_numpy(source).to(torch.int16)
    pyav = decode_alone(path, FALLBACK, len(source))
    row = {"pyav_error_vs_source": float((pyav - truth).abs().float().mean())}
    for backend in decoders:
        frames = decode_alone(path, backend, len(source))
        if isinstance(frames, str):
            row[backend] = {"error": frames}
            continue
        diff = (frames - pyav).abs()
        row[backend] = {"max_diff": int(diff.max()), "mean_diff": float(diff.float().mean()),
                        "differing_share": float((diff > 0).float().mean()),
                        "error_vs_source": float((frames - truth).abs().float().mean())}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    decoders = [d for d in usable_decoders() if d not in (FALLBACK, *GPU_BACKENDS)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for (name, codec, pix_fmt, width, height, suffix), (kind, frames) in product(CASES, SOURCES.items()):
            source = frames(args.frames, width, height)
            path = encode(Path(tmp) / f"{codec}-{pix_fmt}-{width}x{height}{suffix}", source, codec, pix_fmt)
            rows.append({"case": name, "source": kind, "codec": codec, "pix_fmt": pix_fmt, "size": f"{width}x{height}",
                         **compare(path, source, decoders)})
            cells = [f"{d}: " + (r["error"][:60] if "error" in r else f"max {r['max_diff']:3d} mean {r['mean_diff']:.3f}")
                     for d in decoders for r in [rows[-1][d]]]
            print(f"{name:40s} {kind:12s} {' | '.join(cells)}")
    save("decoder_pixels", {"footage": REAL_CLIP.name, "frames": args.frames, "reference": FALLBACK, "rows": rows})


if __name__ == "__main__":
    main()
