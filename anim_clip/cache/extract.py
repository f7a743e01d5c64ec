"""Phase one, ``anim-clip extract``: decode every clip once, encode it with the frozen image tower,
store the per-frame features in the zarr cache.

Decoding runs in a thread pool ahead of the encoder (decord and PyAV release the GIL while they
decode), frames travel to the model's device as uint8 and are resized, cropped and normalised
there, and the encoder sees batches of about ``backbone.batch_frames`` frames. The store's writer
marks a clip ``done`` only after its data is on disk and saves finished clips at least every
``store.FLUSH_SECONDS`` (and on Ctrl-C), so killing the process at any moment and running the same
command again finishes the job, redoing at most that much work and corrupting nothing. The video
root and files are checked before any weights load, and a split none of whose clips could be made
is an error, not an empty success.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape

from anim_clip.cache.inspect import cache_decoders, decoders_text, mixed_decoders_note
from anim_clip.cache.store import (
    SplitSpec,
    SplitWriter,
    TextFeatures,
    create_split,
    create_store,
    read_array,
    write_text,
)
from anim_clip.config import Config
from anim_clip.data.dataset import Dataset, load_dataset
from anim_clip.data.descriptions import class_texts, load_descriptions
from anim_clip.data.sampling import ViewSpec, eval_views, train_views, union_indices
from anim_clip.data.transforms import normalization_stats, render_views
from anim_clip.data.video import FallbackNotice, VideoFile, check_decoder, decoder_note, open_video
from anim_clip.errors import CacheError, ConfigError, VideoDecodeError
from anim_clip.models.backbone import FrozenImageTower, WeightsInfo, autocast_dtype, create_clip, encode_texts
from anim_clip.models.features import FrameFeatures
from anim_clip.ui import RateColumn, console, progress_bar

TRAIN_SPLIT = "train"


def cache_signature(cfg: Config, weights: WeightsInfo) -> dict[str, Any]:
    """What makes two caches' features interchangeable; stored in the cache, compared on reuse."""
    s = cfg.sampling
    return {
        "dataset": cfg.data.name,
        "backbone": {
            "model": cfg.backbone.model,
            "weights": weights.sha256 or weights.pretrained or "random",
            "quick_gelu": cfg.backbone.quick_gelu,
            "patches": cfg.backbone.patches,
        },
        "sampling": {
            "num_frames": s.num_frames, "image_size": s.image_size, "resize": s.resize,
            "normalization": s.normalization, "train_views": s.train_views,
            "test_clips": s.test_clips, "test_crops": s.test_crops,
            "decoder": s.decoder,  # decoders' pixels differ on some video (anim_clip.data.video)
        },
    }


def plan_views(split: str, index: int, num_frames: int, height: int, width: int, cfg: Config) -> list[ViewSpec]:
    """Training splits: V augmented views, seeded by the clip's index so every shard, resume and
    re-run draws the same ones. Other splits: the deterministic clips × crops test views."""
    s = cfg.sampling
    if split == TRAIN_SPLIT:
        rng = np.random.default_rng((index, s.train_views, s.num_frames))
        return train_views(num_frames, height, width, s.num_frames, s.train_views, s.image_size, s.resize, rng)
    return eval_views(num_frames, height, width, s.num_frames, s.test_clips, s.test_crops, s.image_size, s.resize)


def num_views(split: str, cfg: Config) -> int:
    s = cfg.sampling
    return s.train_views if split == TRAIN_SPLIT else s.test_clips * s.test_crops


@dataclass
class DecodedClip:
    index: int
    frames: torch.Tensor | None = None  # (U, H, W, 3) uint8, the union of every view's frames
    views: list[ViewSpec] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    error: str | None = None
    decoder: str = ""  # the decoder whose pixels ``frames`` are
    fallback: str | None = None  # why the configured decoder failed on the file, when PyAV decoded it

    @classmethod
    def of(cls, video: VideoFile, index: int, frames: torch.Tensor, views: list[ViewSpec],
           positions: list[np.ndarray]) -> DecodedClip:
        """``frames`` decoded from ``video``, with the decoder that decoded them (known only after)."""
        return cls(index, frames, views, positions, decoder=video.decoder, fallback=video.fallback)


def decode_clip(path: Path, split: str, index: int, cfg: Config, device: torch.device | None = None) -> DecodedClip:
    """Open, plan the views and decode every needed frame once (on ``device`` with a GPU decoder).
    Never raises for a bad video."""
    try:
        with open_video(path, cfg.sampling.decoder, cfg.sampling.decode_threads, device) as video:
            views = plan_views(split, index, video.num_frames, video.height, video.width, cfg)
            unique, positions = union_indices(views)
            return DecodedClip.of(video, index, video.get_frames(unique), views, positions)
    except VideoDecodeError as e:
        return DecodedClip(index, error=e.reason)


def encode_class_texts(clip: torch.nn.Module, cfg: Config, dataset: Dataset) -> dict[str, TextFeatures]:
    """Raw text embeddings of every class name and description string, for actions and species."""
    sources = {"actions": (dataset.actions, cfg.data.descriptions), "species": (dataset.species, cfg.data.species_descriptions)}
    out = {}
    for kind, (names, desc_path) in sources.items():
        descriptions = class_texts(names, load_descriptions(desc_path, names), cfg.data.split_sentences) if desc_path else None
        strings = descriptions.strings if descriptions else []
        owner = torch.from_numpy(descriptions.owner) if descriptions else torch.zeros(0, dtype=torch.int64)
        out[kind] = TextFeatures(
            names=list(names),
            name_embeddings=encode_texts(clip, list(names), cfg.backbone.model),
            descriptions=strings,
            description_embeddings=encode_texts(clip, strings, cfg.backbone.model),
            owner=owner,
        )
    return out


@dataclass
class SplitReport:
    split: str
    clips: int
    already_done: int = 0
    extracted: int = 0
    failed: Counter = field(default_factory=Counter)
    decoders: Counter = field(default_factory=Counter)  # clips extracted this run, per decoder that decoded them
    frames: int = 0
    seconds: float = 0.0
    bytes_written: int = 0  # growth of the split on disk during this run
    interrupted: bool = False

    def row(self) -> list[Any]:
        rate = self.extracted / self.seconds if self.seconds else 0.0
        reasons = "; ".join(f"{n}× {r}" for r, n in self.failed.most_common(3)) or "-"
        return [self.split, self.clips, self.already_done, self.extracted, decoders_text(self.decoders),
                sum(self.failed.values()), reasons, f"{self.bytes_written / 2**20:.1f}", f"{rate:.1f}",
                f"{self.frames / self.seconds if self.seconds else 0:.0f}"]


def check_videos(dataset: Dataset, splits: tuple[str, ...]) -> None:
    """Refuse a missing video root, or a split none of whose videos exist, before any weights load;
    warn about missing videos, with their count and an example (they are recorded as failed)."""
    root = dataset.root
    if root is None or not root.is_dir():
        found = "is not set" if root is None else f"{root} is not a folder"
        raise ConfigError(f"data.root {found}: point it (--set data.root=...) at the folder that holds the videos")
    for split in splits:
        clips = dataset.clips(split)
        missing = [path for path in map(dataset.video_path, clips) if not path.is_file()]
        if clips and len(missing) == len(clips):
            raise ConfigError(f"none of the {len(clips)} videos of split {split!r} is under data.root {root} "
                              f"(e.g. {missing[0]}); point data.root at the folder that holds them")
        if missing:
            console.print(f"[yellow]{len(missing)} of {len(clips)} videos of split {split!r} are missing (e.g. "
                          f"{missing[0]}); they will be recorded as failed[/]", soft_wrap=True, highlight=False)


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class FrameEncoder:
    """Batches rendered views of several clips into one forward pass of about ``batch_frames`` frames."""

    def __init__(self, tower: FrozenImageTower, device: torch.device, cfg: Config):
        self.tower, self.device = tower, device
        self.batch_frames = cfg.backbone.batch_frames
        self.dtype = autocast_dtype(cfg.backbone, device)
        mean, std = normalization_stats(cfg.sampling.normalization)
        self.mean, self.std, self.image_size = mean, std, cfg.sampling.image_size
        self.pending: list[tuple[int, torch.Tensor]] = []  # (clip index, views (V,T,3,S,S))

    @property
    def queued_frames(self) -> int:
        return sum(v.shape[0] * v.shape[1] for _, v in self.pending)

    def add(self, clip: DecodedClip) -> None:
        frames = clip.frames.to(self.device, non_blocking=True)
        views = render_views(frames, clip.views, clip.positions, self.image_size, self.mean, self.std)
        self.pending.append((clip.index, views))

    def flush(self) -> list[tuple[int, FrameFeatures]]:
        """Encode everything queued; returns each clip's ``(V,T,D)`` features (and patches)."""
        if not self.pending:
            return []
        images = torch.cat([v.flatten(0, 1) for _, v in self.pending])
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            cls, patches = self.tower(images)
        out, start = [], 0
        for index, views in self.pending:
            V, T = views.shape[:2]
            stop = start + V * T
            clip_cls = cls[start:stop].float().view(V, T, -1)
            clip_patches = None if patches is None else patches[start:stop].float().view(V, T, *patches.shape[1:])
            out.append((index, FrameFeatures(clip_cls, clip_patches)))
            start = stop
        self.pending = []
        return out


def default_shard() -> tuple[int, int]:
    """One shard per torchrun rank; a single process extracts everything."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def extract(cfg: Config, out: str | Path, splits: tuple[str, ...] = ("train", "test"), *, shard: int = 0,
            num_shards: int = 1, workers: int = 4, device: torch.device | None = None,
            progress: bool = True) -> list[SplitReport]:
    """Extract ``splits`` of ``cfg``'s dataset into the cache at ``out`` (created or resumed)."""
    out = Path(out)
    device = device or default_device()
    check_decoder(cfg.sampling.decoder)
    dataset = load_dataset(cfg.data)
    check_videos(dataset, splits)
    clip, weights = create_clip(cfg.backbone)
    if weights.random:
        console.print(f"[bold red]WARNING: {cfg.backbone.model} has RANDOM weights (backbone.pretrained is null): "
                      "these features carry no pretrained knowledge; use them for shape tests only[/]")
    tower = FrozenImageTower(clip, with_patches=cfg.backbone.patches != "none").to(device)
    if cfg.backbone.compile:
        tower = torch.compile(tower)
    signature = cache_signature(cfg, weights)
    signature["random_weights"] = weights.random
    create_store(out, signature)
    if shard == 0:
        for kind, text in encode_class_texts(clip.to(device), cfg, dataset).items():
            write_text(out, kind, text)
    console.print(f"extracting {', '.join(splits)} of [bold]{cfg.data.name}[/] with {cfg.backbone.model} "
                  f"({weights.pretrained or 'random'}) on {device}, {decoder_note(cfg.sampling.decoder, device)}, "
                  f"shard {shard + 1}/{num_shards} -> {out}")
    reports, notice = [], FallbackNotice()
    for split in splits:
        clips = dataset.clips(split)
        spec = SplitSpec(
            clip_ids=[c.path for c in clips],
            targets=dataset.targets(split),
            species=dataset.species_vectors(split),
            views=num_views(split, cfg),
            frames=cfg.sampling.num_frames,
            dim=tower.embed_dim,
            view_kind="augmented" if split == TRAIN_SPLIT else f"{cfg.sampling.test_clips} clips x {cfg.sampling.test_crops} crops",
            patch_shape=tower.patch_shape if cfg.backbone.patches != "none" else None,
        )
        create_split(out, split, spec)
        with SplitWriter(out, split, shard, num_shards) as writer:
            reports.append(_extract_split(writer, dataset, split, cfg, out, f"{split} [{shard + 1}/{num_shards}]",
                                          workers, device, tower, notice, progress))
        if reports[-1].interrupted:
            break
        _check_some_usable(out, split, writer.clips)
    mixed = mixed_decoders_note(cache_decoders(out))
    if mixed:
        console.print(f"[bold yellow]WARNING: cache {escape(str(out))} holds {mixed}[/]", soft_wrap=True, highlight=False)
    return reports


def _decoded(pool: ThreadPoolExecutor, jobs: list[tuple[Path, int]], split: str, cfg: Config,
             device: torch.device, depth: int) -> Iterator[DecodedClip]:
    """Decoded clips in order, with up to ``depth`` decodes running ahead of the consumer."""
    queue: deque[Future[DecodedClip]] = deque()
    try:
        for path, index in jobs:
            queue.append(pool.submit(decode_clip, path, split, index, cfg, device))
            if len(queue) >= depth:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
    finally:
        for future in queue:
            future.cancel()


def _extract_split(writer: SplitWriter, dataset: Dataset, split: str, cfg: Config, out: Path, label: str,
                   workers: int, device: torch.device, tower: FrozenImageTower, notice: FallbackNotice,
                   progress: bool) -> SplitReport:
    clips = dataset.clips(split)
    report = SplitReport(split, len(writer.clips), already_done=len(writer.clips) - len(writer.pending))
    encoder = FrameEncoder(tower, device, cfg)
    frame_indices: dict[int, np.ndarray] = {}
    decoders: dict[int, str] = {}
    jobs = [(dataset.video_path(clips[i]), i) for i in writer.pending]
    bytes_before = _disk_bytes(out / split)
    start = time.perf_counter()
    frames_rate = RateColumn("frames", per_item="frames_per_clip")
    with progress_bar("clips", frames_rate, disable=not progress) as bar, ThreadPoolExecutor(workers, "decode") as pool:
        task = bar.add_task(label, total=len(jobs),
                            frames_per_clip=num_views(split, cfg) * cfg.sampling.num_frames)

        def store(results: list[tuple[int, FrameFeatures]]) -> None:
            for index, features in results:
                decoder = decoders.pop(index)
                writer.write(index, features, frame_indices.pop(index), decoder)
                report.extracted += 1
                report.decoders[decoder] += 1
                report.frames += features.cls.shape[0] * features.cls.shape[1]
                bar.advance(task)

        try:
            for clip in _decoded(pool, jobs, split, cfg, device, depth=2 * workers):
                if clip.error is not None:
                    writer.fail(clip.index, clip.error)
                    report.failed[clip.error] += 1
                    bar.update(task, total=len(jobs) - sum(report.failed.values()))  # the rates count extracted clips only
                    continue
                notice(clip.fallback)
                frame_indices[clip.index] = np.stack([v.frame_indices for v in clip.views])
                decoders[clip.index] = clip.decoder
                encoder.add(clip)
                if encoder.queued_frames >= cfg.backbone.batch_frames:
                    store(encoder.flush())
            store(encoder.flush())
        except KeyboardInterrupt:
            report.interrupted = True
            writer.flush()
            console.print("[yellow]interrupted: every clip extracted so far is saved; run the same command again "
                          "to resume[/]")
    report.seconds = time.perf_counter() - start
    report.bytes_written = _disk_bytes(out / split) - bytes_before
    return report


def _check_some_usable(out: Path, split: str, clips: range) -> None:
    """A split (or shard) every clip of which failed is an error, not an empty success."""
    done = read_array(out / split, "done", out)[clips.start:clips.stop]
    errors = read_array(out / split, "error", out)[clips.start:clips.stop].tolist()
    if len(clips) and done.all() and all(errors):
        reason, count = Counter(errors).most_common(1)[0]
        raise CacheError(f"all {len(clips)} clips of split {split!r} in {out} failed ({count}x {reason}): nothing to "
                         f"train or evaluate on; fix the cause (data.root, sampling.decoder), remove {out / split} "
                         "and extract again")
