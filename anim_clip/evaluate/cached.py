"""Evaluation of a head on a cached split: scores (:mod:`anim_clip.evaluate.scoring`), the
report with the baselines beside the head (:mod:`anim_clip.evaluate.baselines`), its table, JSON
and plots. Used at the end of training and by ``anim-clip eval``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anim_clip.cache.reader import CachedSplitData
from anim_clip.cache.store import FeatureCache
from anim_clip.config import Config
from anim_clip.data.dataset import Dataset
from anim_clip.errors import AnimClipError
from anim_clip.evaluate.baselines import cached_baselines
from anim_clip.evaluate.plots import group_plot, per_class_ap_plot, training_curves_plot
from anim_clip.evaluate.report import (
    EvalContext,
    evaluation_report,
    predictor_accuracy,
    report_table,
    species_input,
)
from anim_clip.evaluate.scoring import split_scores
from anim_clip.io import atomic_write_json
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.runtime.distributed import Distributed
from anim_clip.runtime.rundir import RunDir, resolve_checkpoint
from anim_clip.ui import console


def eval_context(dataset: Dataset, cfg: Config) -> EvalContext:
    targets = np.concatenate([dataset.targets(s) for s in dataset.splits])
    return EvalContext(
        actions=list(dataset.actions),
        train_counts=dataset.targets("train").sum(0),
        can_perform=dataset.graph(cfg.data.graph).can_perform(),
        multilabel=bool((targets.sum(1) > 1).any()),
        unseen_species=tuple(dataset.species.index(name) for name in cfg.data.unseen_species),
    )


def cached_scores(model: AnimalCLIPHead, data: CachedSplitData, cfg: Config, dist: Distributed) -> np.ndarray:
    """Scores of every clip of ``data`` (:func:`~anim_clip.evaluate.scoring.split_scores`); under
    torchrun each rank scores every world-th clip and the scores are gathered."""
    was_training = model.training
    model.eval()
    scores = split_scores(model, data, data.indices[dist.rank :: dist.world], cfg.runtime.precision, cfg.eval.scores)
    model.train(was_training)
    gathered = dist.all_gather_rows(scores)
    order = torch.cat([torch.arange(len(data.indices))[r :: dist.world] for r in range(dist.world)])
    return gathered[torch.argsort(order)].cpu().numpy()


def evaluate_split(model: AnimalCLIPHead, data: CachedSplitData, cfg: Config, ctx: EvalContext,
                   dist: Distributed, baselines: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The report of ``model`` on ``data``, with the ``baselines`` scores of the same clips beside
    it; where the cache holds a species predictor's probabilities, also :func:`predictor_report`."""
    scores = cached_scores(model, data, cfg, dist)
    report = evaluation_report(scores, data.targets().cpu().numpy(), data.species().cpu().numpy(), ctx, cfg.eval,
                               baselines)
    if data.split.species_probs is not None:
        report.update(predictor_report(model, data, cfg, ctx, dist, report))
    return report


def predictor_report(model: AnimalCLIPHead, data: CachedSplitData, cfg: Config, ctx: EvalContext,
                     dist: Distributed, report: dict[str, Any]) -> dict[str, Any]:
    """``species_predictor``: the cached predictor's species top-1/top-5 against the annotation
    (clips without an annotated species left out and counted); ``species_input``: the head's
    action metrics given the annotated species and given the predicted ones (``report`` holds the
    ones ``data.inputs`` give it)."""
    annotated = data.species().cpu().numpy()
    probabilities = data.split.species_probs[data.indices].cpu().numpy()
    predictor = FeatureCache(data.split.path.parent).config["species"]
    out: dict[str, Any] = {"species_predictor": predictor_accuracy(probabilities, annotated, predictor)}
    if not data.inputs.given:
        return out  # the head takes no given species vector: nothing to compare
    predicted = data.inputs.species == "predictor"
    other = data.with_inputs(data.inputs.with_species("annotated" if predicted else "predictor"))
    other_report = evaluation_report(cached_scores(model, other, cfg, dist), data.targets().cpu().numpy(), annotated,
                                     ctx, cfg.eval)
    out["species_input"] = species_input(predicted, report, other_report)
    return out


def final_report(model: AnimalCLIPHead, cache: FeatureCache, data: dict[str, CachedSplitData], split: str,
                 cfg: Config, ctx: EvalContext, dist: Distributed) -> dict[str, Any]:
    """:func:`evaluate_split` of ``data[split]`` with every baseline beside the head; the main process
    alone computes the baselines (the one that writes the report)."""
    scores, notes = cached_baselines(cache, data, split, cfg, ctx.multilabel) if dist.is_main else ({}, {})
    report = evaluate_split(model, data[split], cfg, ctx, dist, scores)
    for name, extra in notes.items():
        report["baselines"][name].update(extra)
    return report


def write_report(report: dict[str, Any], ctx: EvalContext, run: RunDir, title: str) -> list[Path]:
    """eval.json, the table, and the plots of a finished run."""
    atomic_write_json(run.evaluation, report)
    console.print(report_table(report, title))
    plots = [per_class_ap_plot(report, ctx.train_counts, run.plots / "per_class_ap.png")]
    if "group_mAP" in report:
        plots.append(group_plot(report, run.plots / "groups.png"))
    curves = training_curves_plot(run.records(), run.plots / "training_curves.png")
    return plots + ([curves] if curves else [])


def eval_dir(file: Path, out: str | Path | None) -> RunDir:
    """Where a checkpoint's evaluation goes: ``out``, else its run directory, else ``eval-<name>`` beside it."""
    run = RunDir(out if out is not None else (file.parent if (file.parent / "metrics.jsonl").exists() else file.parent / f"eval-{file.stem}"))
    run.path.mkdir(parents=True, exist_ok=True)
    return run


def evaluate_checkpoint(path: str | Path, cache: str | Path, *, split: str = "test", weights: str = "last",
                        out: str | Path | None = None, device: torch.device | None = None,
                        allow_incomplete: bool = False) -> dict[str, Any]:
    """``anim-clip eval``: a trained head on a cached split (on its clips extracted so far only if
    ``allow_incomplete``); table, eval JSON and plots."""
    from anim_clip.cache.reader import open_cached_data, pending_note, stored_in
    from anim_clip.data.dataset import load_dataset
    from anim_clip.models.checkpoint import load_checkpoint
    from anim_clip.models.factory import model_from_checkpoint
    from anim_clip.runtime.distributed import setup_distributed

    file = resolve_checkpoint(path, weights)
    ckpt = load_checkpoint(file)
    if ckpt.kind == "e2e":
        raise AnimClipError(f"{file}: an end-to-end checkpoint; its fine-tuned features differ from the cache's "
                            "frozen ones, so evaluate it on the videos (anim-clip eval --videos)")
    cfg = ckpt.config
    dist = setup_distributed(device)
    head = model_from_checkpoint(ckpt, "cached").to(dist.device)
    dataset = load_dataset(cfg.data)
    # the linear probe fits on the training clips, so they are checked like the evaluated ones
    cache_obj, data = open_cached_data(cfg, cache, dataset, dist.device, head.inputs, allow_incomplete,
                                       use=tuple(dict.fromkeys((*stored_in(split), "train"))))
    if split not in data:
        raise AnimClipError(f"no split {split!r} to evaluate; choose one of {', '.join(data)}")
    ctx = eval_context(dataset, cfg)
    report = final_report(head, cache_obj, data, split, cfg, ctx, dist)
    report.update(checkpoint=str(file), split=split, **pending_note({"train": data["train"], split: data[split]}))
    run = eval_dir(file, out)
    if dist.is_main:
        report["plots"] = [str(p) for p in write_report(report, ctx, run, f"{cfg.data.name} {split}, {file.name}")]
    return report
