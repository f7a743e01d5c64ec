"""Evaluation on raw videos, the release's protocol: every clip's K temporal × 1 or 3 spatial test
views (``sampling.test_clips`` × ``sampling.test_crops``, docs/method.md §4.4–4.5) through an image
tower and the head, softmax per view averaged over views (§5). Used at the end of end-to-end
training, for its per-epoch selection (1 × 1 views, as the release), and by ``anim-clip eval --videos``.

DataLoader workers decode (every needed frame once per clip); the device renders and encodes
about ``backbone.batch_frames`` frames per forward pass. Under torchrun each rank scores every
world-th clip and the scores are gathered. A file the configured decoder fails on is decoded by
PyAV, said once (:mod:`anim_clip.data.video`); a video that cannot be decoded is reported in one
line and left out of the metrics (``skipped_videos`` in the report).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from torch import Tensor, nn

from anim_clip.config import Config
from anim_clip.data.dataset import Dataset, hold_out
from anim_clip.data.video import FallbackNotice, check_decoder
from anim_clip.errors import AnimClipError, VideoDecodeError
from anim_clip.evaluate.report import EvalContext, evaluation_report, predictor_accuracy, species_input
from anim_clip.evaluate.scoring import clip_scores
from anim_clip.frames import DecodedClip, FrameEncoder, decode_clip, decoded_batches, with_decoder
from anim_clip.models.factory import head_and_tower
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.models.species import SpeciesPredictor, species_predictor
from anim_clip.runtime.distributed import Distributed
from anim_clip.ui import console

SPLITS = ("test", "train", "val")


@dataclass
class VideoSplit:
    """Clips to score: their files, targets ``(N, C)`` and species vectors ``(N, A)``."""

    paths: list[Path]
    targets: np.ndarray
    species: np.ndarray


def split_rows(dataset: Dataset, split: str, cfg: Config) -> tuple[str, Tensor]:
    """The dataset split holding ``split`` and its clip rows: ``val`` is the share of train held
    out by ``train.val_fraction`` (as in cached mode), ``train`` the rest."""
    if split not in SPLITS:
        raise AnimClipError(f"no split {split!r} to evaluate; choose one of {', '.join(SPLITS)}")
    source = "test" if split == "test" else "train"
    rows = torch.arange(len(dataset.clips(source)))
    if source == "test":
        return source, rows
    train, val = hold_out(rows, cfg.train.val_fraction, cfg.train.seed)
    if split == "val" and val is None:
        raise AnimClipError("no val split: the run held out no training clips (train.val_fraction is 0)")
    return source, train if split == "train" else val


def video_split(dataset: Dataset, split: str, cfg: Config) -> VideoSplit:
    source, rows = split_rows(dataset, split, cfg)
    clips, index = dataset.clips(source), rows.numpy()
    return VideoSplit([dataset.video_path(clips[i]) for i in index], dataset.targets(source)[index],
                      dataset.species_vectors(source)[index])


def _decode_test_views(paths: list[Path], cfg: Config, index: int) -> DecodedClip:
    return decode_clip(paths[index], "test", index, cfg)  # any split but train plans the test views


@dataclass
class VideoScores:
    """What :func:`video_scores` computes for every video (rows of videos that failed to decode are
    zero); with a species predictor, also its probabilities and the scores given the annotation."""

    scores: np.ndarray  # (N, C): given the species the head takes
    decoded: np.ndarray  # (N,) bool
    species_probs: np.ndarray | None = None  # (N, S): the predictor's, averaged over each clip's views
    annotated_scores: np.ndarray | None = None  # (N, C): the same head given the annotated species


def video_scores(head: AnimalCLIPHead, tower: nn.Module, videos: VideoSplit, cfg: Config, dist: Distributed,
                 predictor: SpeciesPredictor | None = None) -> VideoScores:
    """Scores of every video (:func:`~anim_clip.evaluate.scoring.clip_scores`), the species as the
    head's inputs say: each clip's annotated species, or with a species ``predictor`` (which inputs
    of ``predictor`` species need) its probabilities averaged over the clip's views (and then scores
    given the annotation too, to compare the two)."""
    check_decoder(cfg.sampling.decoder, cfg.train.num_workers)
    modes = head.training, tower.training
    head.eval(), tower.eval()
    species = torch.from_numpy(videos.species).float().to(dist.device)
    rows: list[int] = []
    scores: list[Tensor] = []
    species_probs: list[Tensor] = []
    annotated_scores: list[Tensor] = []
    fallbacks = FallbackNotice()

    def decoded() -> Iterator[DecodedClip]:
        mine = [[i] for i in range(dist.rank, len(videos.paths), dist.world)]
        for clips in decoded_batches(partial(_decode_test_views, videos.paths, cfg), mine, cfg.train.num_workers):
            yield from clips

    inputs, precision, kind = head.inputs, cfg.runtime.precision, cfg.eval.scores
    for clip, features in FrameEncoder(tower, dist.device, cfg, predictor).encode(decoded()):
        fallbacks(clip.fallback)
        if features is None:
            console.print(f"[bold red]error:[/] {escape(str(VideoDecodeError(videos.paths[clip.index], clip.error)))}; "
                          "left out of the evaluation", soft_wrap=True, highlight=False)
            continue
        rows.append(clip.index)
        features = features.to(dist.device)[None]
        annotated = species[clip.index][None]
        if predictor is None:
            scores.append(clip_scores(head, features, annotated, inputs, precision, kind)[0])
            continue
        predicted = features.species.mean(1)
        scores.append(clip_scores(head, features, predicted, inputs, precision, kind)[0])
        species_probs.append(predicted[0])
        annotated_scores.append(clip_scores(head, features, annotated, inputs.with_species("annotated"), precision,
                                            kind)[0])
    head.train(modes[0]), tower.train(modes[1])
    where = dist.all_gather_rows(torch.tensor(rows, dtype=torch.long, device=dist.device)).cpu().numpy()

    def gathered(values: list[Tensor], width: int) -> np.ndarray:
        """Every rank's rows of ``values`` in the videos' order, zero for videos that failed."""
        local = torch.stack(values) if values else torch.zeros(0, width, device=dist.device)
        out = np.zeros((len(videos.paths), width), dtype=np.float32)
        out[where] = dist.all_gather_rows(local).float().cpu().numpy()
        return out

    decoded_ok = np.zeros(len(videos.paths), dtype=bool)
    decoded_ok[where] = True
    num_classes, num_species = videos.targets.shape[1], videos.species.shape[1]
    if predictor is None:
        return VideoScores(gathered(scores, num_classes), decoded_ok)
    return VideoScores(gathered(scores, num_classes), decoded_ok, gathered(species_probs, num_species),
                       gathered(annotated_scores, num_classes))


def evaluate_videos(head: AnimalCLIPHead, tower: nn.Module, videos: VideoSplit, cfg: Config, ctx: EvalContext,
                    dist: Distributed, predictor: SpeciesPredictor | None = None) -> dict[str, Any]:
    """The evaluation report of ``videos`` with ``cfg``'s test views (:func:`video_scores`); with a
    species ``predictor``, also its species accuracy and the head given annotated vs predicted
    species, as on a cache."""
    result = video_scores(head, tower, videos, cfg, dist, predictor)
    ok = result.decoded
    if not ok.any():
        raise AnimClipError(f"none of the {len(videos.paths)} videos to evaluate could be decoded (is data.root right?)")
    targets, annotated = videos.targets[ok], videos.species[ok]
    report = evaluation_report(result.scores[ok], targets, annotated, ctx, cfg.eval)
    if predictor is not None:
        given_annotation = evaluation_report(result.annotated_scores[ok], targets, annotated, ctx, cfg.eval)
        accuracy = predictor_accuracy(result.species_probs[ok], annotated, dataclasses.asdict(cfg.species))
        report.update(species_predictor=accuracy, species_input=species_input(True, report, given_annotation))
    s = cfg.sampling
    report.update(skipped_videos=int((~ok).sum()), views=f"{s.test_clips} clips x {s.test_crops} crops")
    return report


def evaluate_checkpoint_on_videos(path: str | Path, *, split: str = "test", weights: str = "last",
                                  out: str | Path | None = None, device: torch.device | None = None) -> dict[str, Any]:
    """``anim-clip eval --videos``: a checkpoint on the raw videos of its config's split. An
    end-to-end checkpoint runs its own cross-frame tower; a head runs on the frozen backbone its
    config names. A head given a species predictor's probabilities (``species.model``) gets them
    from that predictor run on the same views. Table, eval JSON and plots, as for a cache."""
    from anim_clip.data.dataset import load_dataset
    from anim_clip.evaluate.cached import eval_context, eval_dir, write_report
    from anim_clip.runtime.rundir import resolve_checkpoint
    from anim_clip.models.checkpoint import load_checkpoint
    from anim_clip.runtime.distributed import setup_distributed

    file = resolve_checkpoint(path, weights)
    ckpt = load_checkpoint(file)
    cfg = with_decoder(ckpt.config, None)
    dist = setup_distributed(device)
    dataset = load_dataset(cfg.data)
    videos = video_split(dataset, split, cfg)
    head, tower, _ = head_and_tower(ckpt)
    predictor = None
    if head.inputs.species == "predictor":
        predictor = species_predictor(cfg.species, dataset.species)[0].to(dist.device)
    ctx = eval_context(dataset, cfg)
    report = evaluate_videos(head.to(dist.device), tower.to(dist.device), videos, cfg, ctx, dist, predictor)
    report.update(checkpoint=str(file), split=split)
    if dist.is_main:
        run = eval_dir(file, out)
        title = f"{cfg.data.name} {split} videos ({report['views']}), {file.name}"
        report["plots"] = [str(p) for p in write_report(report, ctx, run, title)]
    return report
