"""Phase one, ``anim-clip extract``: decode every clip once, encode it with the frozen image tower,
store the per-frame features in the zarr cache.

Decoding runs in a thread pool ahead of the encoder (decord and PyAV release the GIL while they
decode), frames travel to the model's device as uint8 and are resized, cropped and normalised
there, and the encoder sees batches of about ``backbone.batch_frames`` frames. The store's writer
marks a clip ``done`` only after its data is on disk and saves finished clips at least every
``store.FLUSH_SECONDS`` (and on Ctrl-C), so killing the process at any moment and running the same
command again finishes the job, redoing at most that much work and corrupting nothing. The split
lists, video root and files are checked before any weights load, and a split that lists no clips,
or none of whose clips could be made, is an error, not an empty success. With ``species.model``, the species predictor encodes the same
decoded views (rendered with its own pixels) and each clip's species probabilities are stored with
its features (:mod:`anim_clip.models.species`).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from anim_clip.cache.inspect import SHOWN_FAILURES, cache_decoders, decoders_text, mixed_decoders_note
from anim_clip.cache.signature import cache_signature
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
from anim_clip.data.video import FallbackNotice, check_decoder, decoder_note
from anim_clip.errors import CacheError, ConfigError
from anim_clip.frames import TRAIN_SPLIT, DecodedClip, FrameEncoder, decode_clip, num_views
from anim_clip.models.backbone import FrozenImageTower, create_clip, encode_texts, text_fit
from anim_clip.models.species import check_predictor, species_predictor
from anim_clip.runtime.distributed import default_device
from anim_clip.ui import RateColumn, console, progress_bar


def encode_class_texts(clip: torch.nn.Module, cfg: Config, dataset: Dataset) -> dict[str, TextFeatures]:
    """Raw text embeddings of every class name and description string, for actions and species."""
    sources = {"actions": (dataset.actions, cfg.data.descriptions), "species": (dataset.species, cfg.data.species_descriptions)}
    fit = text_fit(cfg.backbone.model) if cfg.data.split_sentences else None
    out = {}
    for kind, (names, desc_path) in sources.items():
        descriptions = class_texts(names, load_descriptions(desc_path, names), fit) if desc_path else None
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
    failures: list[tuple[str, str]] = field(default_factory=list)  # (clip, reason) of the clips that failed this run
    decoders: Counter = field(default_factory=Counter)  # clips extracted this run, per decoder that decoded them
    frames: int = 0
    seconds: float = 0.0
    bytes_written: int = 0  # growth of the split on disk during this run
    interrupted: bool = False

    @property
    def failed(self) -> Counter:
        """Clips that failed this run, per reason."""
        return Counter(reason for _, reason in self.failures)

    def failures_note(self, out: Path) -> str | None:
        """The failed clips by name and reason (the first :data:`SHOWN_FAILURES`), None when none failed."""
        if not self.failures:
            return None
        shown = "; ".join(f"{clip}: {reason}" for clip, reason in self.failures[:SHOWN_FAILURES])
        more = len(self.failures) - SHOWN_FAILURES
        rest = f"; and {more} more (all in `anim-clip cache info {out} --json`)" if more > 0 else ""
        return f"failed {self.split} clips ({len(self.failures)}): {shown}{rest}"

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


def check_listed(dataset: Dataset, splits: tuple[str, ...], unseen: list[str]) -> None:
    """Refuse a split with no clips before any weights load: train and eval need the clips of both
    splits, so an empty one is a wrong split file (or a hold-out of every species), and extracting
    it would report success for a cache no later command can use."""
    for split in splits:
        if not dataset.clips(split):
            held = " outside data.unseen_species" if split == TRAIN_SPLIT and unseen else ""
            raise ConfigError(f"split {split!r} is empty: no clips listed in {dataset.files.get(split, '(no file)')}"
                              f"{held}; list its clips there, or extract only the other splits (--split)")


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def extract(cfg: Config, out: str | Path, splits: tuple[str, ...] = ("train", "test"), *, shard: int = 0,
            num_shards: int = 1, workers: int = 4, device: torch.device | None = None,
            progress: bool = True) -> list[SplitReport]:
    """Extract ``splits`` of ``cfg``'s dataset into the cache at ``out`` (created or resumed)."""
    out = Path(out)
    device = device or default_device()
    check_decoder(cfg.sampling.decoder)
    dataset = load_dataset(cfg.data)
    check_listed(dataset, splits, cfg.data.unseen_species)
    check_videos(dataset, splits)
    if cfg.species.model is not None:
        check_predictor(cfg.species)
    clip, weights = create_clip(cfg.backbone)
    if weights.random:
        console.print(f"[bold red]WARNING: {cfg.backbone.model} has RANDOM weights (backbone.pretrained is null): "
                      "these features carry no pretrained knowledge; use them for shape tests only[/]")
    tower = FrozenImageTower(clip, patches=cfg.backbone.patches != "none").to(device)
    predictor = species_predictor(cfg.species, dataset.species) if cfg.species.model is not None else None
    signature = cache_signature(cfg, weights, tower, device, predictor)
    signature["random_weights"] = weights.random
    if cfg.backbone.compile:
        tower = torch.compile(tower)
    create_store(out, signature)
    if shard == 0:
        for kind, text in encode_class_texts(clip.to(device), cfg, dataset).items():
            write_text(out, kind, text)
    predicting = f", species predicted by {cfg.species.model}" if predictor is not None else ""
    console.print(f"extracting {', '.join(splits)} of [bold]{cfg.data.name}[/] with {cfg.backbone.model} "
                  f"({weights.pretrained or 'random'}){predicting} on {device}, "
                  f"{decoder_note(cfg.sampling.decoder, device)}, shard {shard + 1}/{num_shards} -> {out}")
    encoder = FrameEncoder(tower, device, cfg, predictor[0].to(device) if predictor is not None else None)
    reports, notice = [], FallbackNotice()
    for split in splits:
        clips = dataset.clips(split)
        spec = SplitSpec(
            clip_ids=[c.path for c in clips],
            targets=dataset.targets(split),
            species=dataset.species_vectors(split),
            views=num_views(split, cfg.sampling),
            frames=cfg.sampling.num_frames,
            dim=signature["backbone"]["embed_dim"],
            view_kind="augmented" if split == TRAIN_SPLIT else f"{cfg.sampling.test_clips} clips x {cfg.sampling.test_crops} crops",
            patch_shape=signature["backbone"]["patch_shape"] if cfg.backbone.patches != "none" else None,
            species_probs=predictor is not None,
        )
        create_split(out, split, spec)
        with SplitWriter(out, split, shard, num_shards) as writer:
            reports.append(_extract_split(writer, dataset, split, cfg, out, f"{split} [{shard + 1}/{num_shards}]",
                                          workers, device, encoder, notice, progress))
        if (failures := reports[-1].failures_note(out)) is not None:
            console.print(f"[yellow]{escape(failures)}[/]", soft_wrap=True, highlight=False)
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
                   workers: int, device: torch.device, encoder: FrameEncoder, notice: FallbackNotice,
                   progress: bool) -> SplitReport:
    clips = dataset.clips(split)
    report = SplitReport(split, len(writer.clips), already_done=len(writer.clips) - len(writer.pending))
    jobs = [(dataset.video_path(clips[i]), i) for i in writer.pending]
    if not writer.clips:  # more shards than chunks: this one has none (a split is never empty: check_listed)
        console.print(f"{label}: no clips in this shard: the split's {len(clips)} clips fill fewer chunks than "
                      "there are shards", soft_wrap=True)
        return report
    if not jobs:  # a finished split: say so, rather than show an empty bar
        console.print(f"{label}: nothing left to do, all {len(writer.clips)} clips were processed by an earlier run",
                      soft_wrap=True)
        return report
    bytes_before = _disk_bytes(out / split)
    start = time.perf_counter()
    frames_rate = RateColumn("frames", per_item="frames_per_clip")
    with progress_bar("clips", frames_rate, disable=not progress) as bar, ThreadPoolExecutor(workers, "decode") as pool:
        task = bar.add_task(label, total=len(jobs),
                            frames_per_clip=num_views(split, cfg.sampling) * cfg.sampling.num_frames)
        try:
            for clip, features in encoder.encode(_decoded(pool, jobs, split, cfg, device, depth=2 * workers)):
                if features is None:
                    writer.fail(clip.index, clip.error)
                    report.failures.append((clips[clip.index].path, clip.error))
                    bar.update(task, total=len(jobs) - len(report.failures))  # the rates count extracted clips only
                    continue
                notice(clip.fallback)
                writer.write(clip.index, features, clip.frame_indices, clip.decoder)
                report.extracted += 1
                report.decoders[clip.decoder] += 1
                report.frames += features.cls.shape[0] * features.cls.shape[1]
                bar.advance(task)
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
