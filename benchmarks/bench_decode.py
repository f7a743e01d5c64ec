"""Decode throughput of every decoder this machine has (decord, PyAV, torchcodec on the CPU with 1
and 2 threads; torchcodec-cuda on NVDEC where a GPU is present), on demo clips and the real clips.

Two access patterns per video: the 8 TSN frames a training view needs (seek-heavy), and every
frame in order. Figures are frames per second of decoded RGB; compare them as ratios within one
run (the machine is shared).

    python benchmarks/bench_decode.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anim_clip.data.demo import make_demo_data
from anim_clip.data.sampling import tsn_indices
from anim_clip.data.video import BACKENDS, GPU_BACKENDS, decoder_unavailable, open_video
from benchmarks.common import REAL_CLIP, save



def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def usable_decoders() -> list[str]:
    usable = []
    for backend in BACKENDS:
        reason = decoder_unavailable(backend)
        if reason is None:
            usable.append(backend)
        else:
            print(f"skipping {backend}: {reason}")
    return usable


def bench_video(path: Path, decoders: list[str], repeats: int) -> list[dict]:
    rows = []
    for backend in decoders:
        for threads in (1,) if backend in GPU_BACKENDS else (1, 2):
            with open_video(path, backend, threads, pyav_fallback=False) as video:
                n = video.num_frames
                shape = (video.width, video.height)
            tsn = tsn_indices(n, 8, np.random.default_rng(0))

            def sampled():
                with open_video(path, backend, threads, pyav_fallback=False) as v:
                    v.get_frames(tsn)
                    if v.device.type == "cuda":
                        torch.cuda.synchronize(v.device)

            def everything():
                with open_video(path, backend, threads, pyav_fallback=False) as v:
                    v.get_frames(np.arange(n))
                    if v.device.type == "cuda":
                        torch.cuda.synchronize(v.device)

            t_tsn, t_all = _time(sampled, repeats), _time(everything, repeats)
            rows.append({"video": path.name, "size": f"{shape[0]}x{shape[1]}", "frames": n, "backend": backend,
                         "threads": threads, "tsn8_clips_per_s": 1 / t_tsn, "sequential_frames_per_s": n / t_all})
            print(f"{path.name:36s} {backend:15s} threads={threads}: 8-frame TSN view {1 / t_tsn:7.1f}/s, "
                  f"all frames {n / t_all:8.1f} frames/s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--videos", type=Path, nargs="*", default=[],
                        help="more real clips to time (mp4/avi), beside the demo clip and the shipped rabbit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo_data(Path(tmp), train_clips=2, test_clips=1, seed=0)
        videos = [sorted(demo.video_dir.glob("*.mp4"))[0], REAL_CLIP, *args.videos]
        decoders = usable_decoders()
        rows = [row for v in videos for row in bench_video(v, decoders, args.repeats)]
    save("decode", {"rows": rows})


if __name__ == "__main__":
    main()
