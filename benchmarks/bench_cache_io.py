"""Which codec the feature cache should use, and how fast the reader serves patch tokens.

fp16 activations have near-random mantissas, so compression buys little; this measures how little
and at what speed. For ``cls`` and ``patches`` chunks shaped like ViT-B/16 output (D=512, P=196,
W=768, T=8) it writes and reads each codec of ``anim_clip.cache.store.CODECS`` as the store chains
it (then the crc32c checksum every chunk ends with), and "none" without the checksum to price it,
and reports MB/s (of raw fp16) and the compression ratio, on synthetic activations and on a real-ish sample (a
random-init ViT-B/16 run on frames of a real video). Then it builds a small cache through the
public API and times random ``(clip, view)`` patch batches through ``CachedSplit.patch_loader``,
and the same reads from a one-clip-per-chunk layout for comparison.

Files go through the page cache (no fsync, caches not dropped): the figures are the CPU cost of
encoding/decoding plus zarr's overhead, which is what the codec choice changes.

    python benchmarks/bench_cache_io.py [--out benchmarks/results/cache_io.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
import zarr

from anim_clip.cache.inspect import disk_bytes
from anim_clip.cache.store import (
    CLS_CODEC,
    CODECS,
    PATCH_CODEC,
    SplitSpec,
    SplitWriter,
    FeatureCache,
    clips_per_chunk,
    compressors,
    create_split,
    create_store,
)
from anim_clip.models.features import FrameFeatures
from anim_clip.ui import console, table
from benchmarks.common import REAL_CLIP

V, T, D, P, W = 4, 8, 512, 196, 768
MB = 1e6
VIDEO = REAL_CLIP
# a codec is worth it when it saves this share of disk while keeping this share of "none"'s speed
MIN_SAVING, MIN_SPEED_SHARE = 0.2, 0.5
MIN_TIMED_MB = 1.0  # smaller samples give a ratio but no meaningful speed
UNCHECKED = "none, no checksum"  # the cls and patches chain of schema 2: the checksum's cost is "none" minus this


def chains() -> dict[str, list]:
    """zarr ``compressors=`` per codec name: each of ``CODECS`` as the store writes it, and ``UNCHECKED``."""
    return {**{codec: compressors(codec) for codec in CODECS}, UNCHECKED: list(CODECS["none"])}


def synthetic(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Normal activations with per-channel scale and offset, a few outlier channels, as ViTs have."""
    width = shape[-1]
    scale = rng.lognormal(0.0, 0.5, width).astype(np.float32)
    scale[rng.choice(width, max(1, width // 100), replace=False)] *= 20
    offset = rng.normal(0.0, 0.3, width).astype(np.float32)
    return (rng.standard_normal(shape, dtype=np.float32) * scale + offset).astype(np.float16)


def realish(frames: int) -> tuple[np.ndarray, np.ndarray]:
    """CLS ``(frames, D)`` and patches ``(frames, P, W)`` of a random-init ViT-B/16 on real frames."""
    from anim_clip.config import BackboneConfig
    from anim_clip.data.transforms import CLIP_MEAN, CLIP_STD
    from anim_clip.data.video import open_video
    from anim_clip.models.backbone import FrozenImageTower, create_clip

    with open_video(VIDEO, backend="pyav") as video:
        picks = np.linspace(0, video.num_frames - 1, frames).astype(np.int64)
        images = video.get_frames(picks).permute(0, 3, 1, 2).float() / 255
    images = torch.nn.functional.interpolate(images, size=(224, 224), mode="bilinear", antialias=True)
    images = (images - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip, _ = create_clip(BackboneConfig(model="ViT-B-16", pretrained=None))
    cls, patches = FrozenImageTower(clip, patches=True)(images)
    return cls.half().numpy(), patches.half().numpy()


def chunk_slices(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, slice]]:
    """The chunk grid over the first two axes (the only chunked ones)."""
    return [(slice(i, i + chunks[0]), slice(v, v + chunks[1]))
            for i in range(0, shape[0], chunks[0]) for v in range(0, shape[1], chunks[1])]


def timed_run(data: np.ndarray, chunks: tuple[int, ...], chain: list, path: Path) -> tuple[float, float, int]:
    """Write chunk by chunk (as the writer does), read chunk by chunk, check: seconds and disk bytes."""
    arr = zarr.create_array(path, shape=data.shape, chunks=chunks, dtype="float16",
                            fill_value=np.nan, compressors=chain)
    slices = chunk_slices(data.shape, chunks)
    start = perf_counter()
    for s in slices:
        arr[s] = data[s]
    written = perf_counter()
    back = [arr[s] for s in slices]
    read = perf_counter()
    assert all(np.array_equal(b, data[s]) for b, s in zip(back, slices)), chain
    disk = disk_bytes(path / "c")
    shutil.rmtree(path)
    return written - start, read - written, disk


def measure_all(name: str, data: np.ndarray, chunks: tuple[int, ...], root: Path, repeats: int) -> dict:
    """Median figures per codec; repeats go round the codecs so load changes hit all alike."""
    console.print(f"[bold]{name}[/]: {data.nbytes / MB:.2f} MB in chunks of {chunks}")
    timed_run(data, chunks, compressors("none"), root / "warm-up")  # first array, imports, allocator
    runs: dict[str, list[tuple[float, float, int]]] = {codec: [] for codec in chains()}
    for r in range(repeats):
        for i, (codec, chain) in enumerate(chains().items()):
            runs[codec].append(timed_run(data, chunks, chain, root / f"{i}-{r}"))
    mb = data.nbytes / MB
    return {codec: {"MB": mb, "write_MBps": mb / statistics.median(w for w, _, _ in rs),
                    "read_MBps": mb / statistics.median(r for _, r, _ in rs), "ratio": data.nbytes / rs[0][2]}
            for codec, rs in runs.items()}


def recommend(figures: dict[str, dict]) -> str:
    """"none", unless a codec saves ``MIN_SAVING`` of disk at ``MIN_SPEED_SHARE`` of its speed."""
    def speed(f: dict) -> float:  # MB/s of a write followed by a read
        return 1 / (1 / f["write_MBps"] + 1 / f["read_MBps"])

    worth = [c for c, f in figures.items()
             if 1 - 1 / f["ratio"] >= MIN_SAVING and speed(f) >= MIN_SPEED_SHARE * speed(figures["none"])]
    return max(worth, key=lambda c: figures[c]["ratio"]) if worth else "none"


def build_cache(root: Path, clips: int, rng: np.random.Generator) -> Path:
    """A cache with ``clips`` clips of V views of patches, written through the public API."""
    path = root / "loader.zarr"
    create_store(path, {"benchmark": "cache_io", "sampling": {"num_frames": T, "train_views": V},  # what readers check
                        "backbone": {"embed_dim": D, "patches": "fp16", "patch_shape": [P, W]}})
    spec = SplitSpec(clip_ids=[f"clip{i}" for i in range(clips)], targets=np.zeros((clips, 4)),
                     species=np.zeros((clips, 2)), views=V, frames=T, dim=D, view_kind="augmented",
                     patch_shape=(P, W))
    create_split(path, "train", spec)
    views = torch.from_numpy(synthetic((V, T, P, W), rng))
    writer = SplitWriter(path, "train")
    for i in writer.pending:
        writer.write(i, FrameFeatures(cls=torch.zeros(V, T, D), patches=views.roll(i, dims=0)), np.zeros((V, T), np.int64),
                     "decord")
    return path


def random_batches(clips: int, batch: int, rng: np.random.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every (clip, view) pair once, shuffled: no sample is served from an earlier read."""
    pairs = torch.from_numpy(rng.permutation(clips * V))
    return [(chunk // V, chunk % V) for chunk in pairs.split(batch)]


def batch_figures(waits: list[float], batches: list, total: float, workers: int, chunk_bytes: int) -> dict:
    samples = sum(len(i) for i, _ in batches)
    return {"workers": workers, "batch": len(batches[0][0]), "median_ms": 1000 * statistics.median(waits),
            "max_ms": 1000 * max(waits), "MBps": samples * T * P * W * 2 / MB / total,
            "MB_read_per_sample": chunk_bytes / MB}


def loader_latency(path: Path, batches: list, workers: int) -> dict:
    """Per-batch wait of a consumer that does no work: the reader's latency with prefetch."""
    split = FeatureCache(path).split("train")
    waits, start = [], perf_counter()
    tick = start
    for features in split.patch_loader(batches, workers=workers, prefetch=2):
        now = perf_counter()
        waits.append(now - tick)
        tick = now
        assert features.patches is not None
    return batch_figures(waits, batches, perf_counter() - start, workers, T * P * W * 2)


def layout_latency(arr: zarr.Array, batches: list, workers: int) -> dict:
    """Batches read one sample per thread-pool task without prefetch: the chunk layout's own cost."""
    waits = []
    with ThreadPoolExecutor(workers) as pool:
        for indices, views in batches:
            start = perf_counter()
            list(pool.map(lambda iv: arr[int(iv[0]), int(iv[1])], zip(indices, views)))
            waits.append(perf_counter() - start)
    return batch_figures(waits, batches, sum(waits), workers, math.prod(arr.chunks) * 2)


def per_clip_copy(path: Path, root: Path) -> zarr.Array:
    """The cache's patches again, one clip (all its views) per chunk."""
    source = zarr.open_array(path / "train" / "patches", mode="r")
    arr = zarr.create_array(root / "per_clip", shape=source.shape, chunks=(1, *source.shape[1:]),
                            dtype="float16", fill_value=np.nan, compressors=compressors(PATCH_CODEC))
    for i in range(source.shape[0]):
        arr[i] = source[i]
    return arr


def codec_rows(figures: dict) -> list[tuple]:
    def speed(f: dict, key: str) -> str:
        return f"{f[key]:.0f}" if f["MB"] >= MIN_TIMED_MB else "-"

    return [(f"{data}/{kind}", codec, speed(f, "write_MBps"), speed(f, "read_MBps"), f"{f['ratio']:.3f}")
            for data, kinds in figures.items() for kind, codecs in kinds.items() for codec, f in codecs.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cache_io.json")
    parser.add_argument("--quick", action="store_true", help="less data, one repeat (a smoke test)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    repeats, cls_chunks, patch_views, clips = (1, 2, 4, 6) if args.quick else (5, 8, 16, 16)
    cpc = clips_per_chunk(V, T, D)
    torch.set_num_threads(min(4, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory(prefix="bench_cache_io.") as tmp:
        root = Path(tmp)
        figures = {"synthetic": {
            "cls": measure_all("synthetic cls", synthetic((cpc * cls_chunks, V, T, D), rng), (cpc, V, T, D), root, repeats),
            "patches": measure_all("synthetic patches", synthetic((patch_views, 1, T, P, W), rng), (1, 1, T, P, W), root, repeats),
        }}
        if VIDEO.is_file():
            cls, patches = realish(2 * T)
            figures["realish"] = {
                "cls": measure_all("real-ish cls", cls.reshape(2, 1, T, D), (2, 1, T, D), root, repeats),
                "patches": measure_all("real-ish patches", patches.reshape(2, 1, T, P, W), (1, 1, T, P, W), root, repeats),
            }
        recommended = {kind: recommend(figures["synthetic"][kind]) for kind in ("cls", "patches")}

        path = build_cache(root, clips, rng)
        per_view, per_clip = zarr.open_array(path / "train" / "patches", mode="r"), per_clip_copy(path, root)
        batches = random_batches(clips, 8, rng)
        layouts = {"view chunks": layout_latency(per_view, batches, 4),
                   "clip chunks": layout_latency(per_clip, batches, 4)}
        loader = [loader_latency(path, batches, w) for w in (1, 4)]

    console.print(table("codecs (MB/s of raw fp16, page cache warm)", ["data", "codec", "write MB/s", "read MB/s", "ratio"],
                        codec_rows(figures)))
    rows = [("patch_loader", r) for r in loader] + [(f"{name} (bare)", r) for name, r in layouts.items()]
    console.print(table("random patch batches of 8 views (8 x T x P x W fp16 = 19.3 MB)",
                        ["reader", "workers", "MB read/view", "median ms", "max ms", "MB/s"],
                        [(name, r["workers"], f"{r['MB_read_per_sample']:.1f}", f"{r['median_ms']:.1f}",
                          f"{r['max_ms']:.1f}", f"{r['MBps']:.0f}") for name, r in rows]))
    console.print(f"recommended: cls={recommended['cls']}, patches={recommended['patches']}; "
                  f"store defaults: cls={CLS_CODEC}, patches={PATCH_CODEC}")
    result = {
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform(),
                    "zarr": zarr.__version__},
        "note": "files read back from the page cache (not dropped): figures are encode/decode plus zarr "
                "overhead; real-ish = random-init ViT-B/16 on real video frames",
        "shapes": {"V": V, "T": T, "D": D, "P": P, "W": W, "clips_per_chunk": cpc},
        "codecs": figures, "recommended": recommended, "defaults": {"cls": CLS_CODEC, "patches": PATCH_CODEC},
        "patch_loader": loader, "patch_layouts": layouts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
