"""Throughput and memory of ``anim-clip predict`` on a season of camera-trap-like clips: N clips of
10 s at 1280×720, H.264 (a keyframe every 2 s), scored by a head on the shipped tiny CLIP
(``demo-world`` weights), against the same decoder decoding exactly the frames predict reads and
nothing else (the physical limit of this machine): ``efficiency`` = predict's videos/s over
decode-only videos/s. Each figure comes from a fresh process, so ``peak_rss_mb`` is that run's own
peak; memory must not grow with N.

Encoding a thousand distinct 720p clips takes long on a small machine, so a pool of distinct clips
is encoded once and hard-linked to N distinct paths (the JSON says how many are distinct); the pool
is read from the page cache after its first pass, for predict and decode-only alike.

    python benchmarks/bench_predict.py                 # N = 100 and 1000
    python benchmarks/bench_predict.py --sizes 100     # one size
    python benchmarks/bench_predict.py --quick         # 6 short clips: checks that the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anim_clip.config import load_config  # noqa: E402
from anim_clip.data.dataset import load_dataset  # noqa: E402
from anim_clip.data.demo import make_demo_data  # noqa: E402
from anim_clip.models import build_head, save_checkpoint  # noqa: E402
from anim_clip.models.backbone import create_clip, encode_texts  # noqa: E402
from anim_clip.predict import Predictor, run_predict  # noqa: E402
from anim_clip.predict.inputs import collect_videos  # noqa: E402
from anim_clip.predict.model import Opened  # noqa: E402
from anim_clip.predict.stream import DecodeAhead  # noqa: E402
from benchmarks.common import save  # noqa: E402

FPS = 25
KEYFRAME_S = 2


def write_clip(path: Path, seconds: float, width: int, height: int, seed: int) -> None:
    """A textured background, an animal-sized blob wandering over it and sensor noise (a few
    noise fields in turn, cheap to make): real bytes for the encoder and the decoder, different
    for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    background = (np.stack([x * 160 // width, y * 160 // height, (x + y) * 80 // (width + height)], -1)
                  + rng.integers(0, 60, (height, width, 3))).astype(np.uint8)
    noise = rng.integers(0, 12, (5, height, width, 1), dtype=np.uint8)
    start, velocity = rng.uniform(0.2, 0.8, 2) * (width, height), rng.uniform(-8, 8, 2)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = KEYFRAME_S * FPS
        for k in range(int(seconds * FPS)):
            frame = background + noise[k % len(noise)]
            cx, cy = (start + k * velocity).astype(int) % (width, height)
            frame[max(cy - 60, 0):cy + 60, max(cx - 90, 0):cx + 90] = (90, 70, 50)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def make_pool(folder: Path, count: int, seconds: float, width: int, height: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pool = []
    for k in range(count):
        path = folder / f"pool{k:03d}.mp4"
        if not path.exists():
            write_clip(path.with_suffix(".tmp.mp4"), seconds, width, height, seed=k)
            path.with_suffix(".tmp.mp4").rename(path)
        pool.append(path)
    print(f"pool: {count} distinct clips of {seconds} s at {width}x{height} in {folder}")
    return pool


def link_season(pool: list[Path], folder: Path, count: int) -> Path:
    """``count`` distinct paths, hard links to the pool's clips in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        path = folder / f"cam{k % 10}" / f"clip{k:05d}.mp4"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            os.link(pool[k % len(pool)], path)
    return folder


def make_checkpoint(folder: Path) -> Path:
    """A head on the shipped tiny CLIP with the demo-world weights and the demo's vocabulary
    (untrained: the figures are about time, and it computes what a trained head does)."""
    path = folder / "head.pt"
    if path.exists():
        return path
    make_demo_data(folder / "demo", train_clips=4, test_clips=4, num_frames=16, size=64)
    cfg = load_config("demo", [f"data.annotations={folder / 'demo'}", f"data.root={folder / 'demo' / 'videos'}"])
    dataset = load_dataset(cfg.data)
    clip, _ = create_clip(cfg.backbone)
    tensors = {"action_text": encode_texts(clip, dataset.actions, cfg.backbone.model),
               "species_text": encode_texts(clip, dataset.species, cfg.backbone.model),
               "adjacency": torch.from_numpy(dataset.train_graph().adjacency())}
    torch.manual_seed(0)
    head = build_head(cfg, embed_dim=tensors["action_text"].shape[1], **tensors)
    return save_checkpoint(path, head, cfg, vocab={"actions": dataset.actions, "species": dataset.species})


def measure(mode: str, checkpoint: Path, season: Path, out: Path, workers: int) -> dict:
    """In this (fresh) process: ``predict`` as the command runs it (inputs, model, journal, outputs),
    or decode-only: the same threads decoding the same views, nothing encoded."""
    videos = collect_videos([season]).videos
    if mode == "predict":
        start = time.perf_counter()
        failed = run_predict(checkpoint, [season], out=out, device="cpu", workers=workers)
        seconds = time.perf_counter() - start
        assert failed == 0, f"{failed} videos failed"
    else:
        predictor = Predictor(checkpoint, device="cpu")
        start = time.perf_counter()
        frames = 0
        for _, item in DecodeAhead(lambda path, put: predictor._decode_video(path, None, None, put), videos, workers):
            frames += 0 if isinstance(item, Opened) else int(item.frames.shape[0])
        seconds = time.perf_counter() - start
    return {"videos": len(videos), "seconds": round(seconds, 2), "videos_per_s": round(len(videos) / seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def in_fresh_process(mode: str, checkpoint: Path, season: Path, out: Path, workers: int) -> dict:
    result = out.with_suffix(".json")
    subprocess.run([sys.executable, __file__, "--measure", mode, str(checkpoint), str(season), str(out), str(workers),
                    str(result)], check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--pool", type=int, default=10, help="distinct clips encoded, hard-linked to N paths")
    parser.add_argument("--workers", type=int, default=2, help="predict --workers (decoding threads)")
    parser.add_argument("--work", type=Path, help="where the clips go (kept, so a rerun reuses them)")
    parser.add_argument("--quick", action="store_true", help="6 clips of 2 s from a pool of 3: checks the script")
    parser.add_argument("--measure", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        mode, checkpoint, season, out, workers, result = args.measure
        Path(result).write_text(json.dumps(measure(mode, Path(checkpoint), Path(season), Path(out), int(workers))))
        return
    seconds, sizes, pool_size = (2.0, [6], 3) if args.quick else (10.0, args.sizes, args.pool)
    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    pool = make_pool(work / f"pool-{seconds:g}s", pool_size, seconds, 1280, 720)
    checkpoint = make_checkpoint(work)
    rows = []
    for n in sizes:
        season = link_season(pool, work / f"season-{seconds:g}s-{n}", n)
        decode = in_fresh_process("decode", checkpoint, season, work / f"decode-{n}", args.workers)
        out = work / f"predict-{n}"
        for old in out.glob("predictions*"):  # a fresh run, not a resumed one
            old.unlink()
        predict = in_fresh_process("predict", checkpoint, season, out, args.workers)
        rows.append({"clips": n, "videos_per_s": predict["videos_per_s"], "decode_only_videos_per_s": decode["videos_per_s"],
                     "efficiency": round(predict["videos_per_s"] / decode["videos_per_s"], 3),
                     "peak_rss_mb": predict["peak_rss_mb"], "decode_only_peak_rss_mb": decode["peak_rss_mb"],
                     "seconds": predict["seconds"], "decode_only_seconds": decode["seconds"]})
        print(rows[-1])
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1 if len(rows) > 1 else None
    results = {
        "clips": {"seconds": seconds, "size": "1280x720", "fps": FPS, "codec": "H.264 (libx264 veryfast)",
                  "keyframe_every_s": KEYFRAME_S, "distinct": pool_size,
                  "note": f"{pool_size} distinct clips hard-linked to N distinct paths"},
        "model": "head on anim-clip-tiny (demo-world weights), 8 frames x 1 clip x 1 crop, CPU",
        "workers": args.workers, "torch_threads": torch.get_num_threads(), "load_average_at_start": round(load, 2),
        "rows": rows, "peak_rss_growth": None if growth is None else round(growth, 3)}
    if args.quick:  # a check of the script, not a figure
        print(json.dumps(results, indent=2))
    else:
        save("predict", results)


if __name__ == "__main__":
    main()
