"""Evaluation of a head on a cached split: scores (softmax per view, averaged over views), the
report, its table, JSON and plots. Used at the end of training and by ``anim-clip eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from anim_clip.config import Config
from anim_clip.data.dataset import Dataset
from anim_clip.errors import AnimClipError
from anim_clip.evaluate.plots import group_plot, per_class_ap_plot, training_curves_plot
from anim_clip.evaluate.report import EvalContext, evaluation_report, report_table
from anim_clip.io import atomic_write_json
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.train.cached import CachedSplitData
from anim_clip.train.distributed import Distributed
from anim_clip.train.rundir import RunDir
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


@torch.no_grad()
def cached_scores(model: AnimalCLIPHead, data: CachedSplitData, cfg: Config, dist: Distributed) -> np.ndarray:
    """Scores of every clip: softmax (or sigmoid) per view, averaged over views (docs/method.md §5)."""
    was_training = model.training
    model.eval()
    views = data.num_views
    rows = data.indices[dist.rank :: dist.world]
    per_batch = max(1, cfg.eval.batch_size // views)
    plan = [(r.repeat_interleave(views), torch.arange(views, device=r.device).repeat(len(r)))
            for r in rows.split(per_batch)]
    out = []
    for batch in data.batches(plan):
        with autocast(cfg, dist.device):
            logits = model(batch.features, batch.species).logits.float()
        probs = logits.softmax(-1) if cfg.eval.scores == "softmax" else logits.sigmoid()
        out.append(probs.view(-1, views, probs.shape[-1]).mean(1))
    model.train(was_training)
    scores = torch.cat(out) if out else torch.zeros(0, model.vocab.num_actions, device=dist.device)
    gathered = dist.all_gather_rows(scores)
    order = torch.cat([torch.arange(len(data.indices))[r :: dist.world] for r in range(dist.world)])
    return gathered[torch.argsort(order)].cpu().numpy()


def autocast(cfg: Config, device: torch.device):
    """bf16 on GPU (``backbone.precision`` auto/bf16), fp32 on CPU."""
    enabled = device.type == "cuda" and cfg.backbone.precision != "fp32"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def evaluate_split(model: AnimalCLIPHead, data: CachedSplitData, cfg: Config, ctx: EvalContext,
                   dist: Distributed) -> dict[str, Any]:
    scores = cached_scores(model, data, cfg, dist)
    return evaluation_report(scores, data.targets().cpu().numpy(), data.species().cpu().numpy(), ctx, cfg.eval)


def write_report(report: dict[str, Any], ctx: EvalContext, run: RunDir, title: str) -> list[Path]:
    """eval.json, the table, and the plots of a finished run."""
    atomic_write_json(run.evaluation, report)
    console.print(report_table(report, title))
    plots = [per_class_ap_plot(report, ctx.train_counts, run.plots / "per_class_ap.png")]
    if "group_mAP" in report:
        plots.append(group_plot(report, run.plots / "groups.png"))
    curves = training_curves_plot(run.records(), run.plots / "training_curves.png")
    return plots + ([curves] if curves else [])


def resolve_checkpoint(path: str | Path, weights: str) -> Path:
    """A run directory (its ``last.pt`` or ``best.pt``) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        chosen = RunDir(path).best if weights == "best" else RunDir(path).last
        if not chosen.exists():
            raise AnimClipError(f"{path}: no {chosen.name} (a finished run has last.pt; best.pt needs train.val_fraction > 0)")
        return chosen
    if not path.exists():
        raise AnimClipError(f"{path}: no such run directory or checkpoint file")
    return path


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
    from anim_clip.data.dataset import load_dataset
    from anim_clip.models.checkpoint import load_checkpoint, model_from_checkpoint
    from anim_clip.train.cached import open_cached_data, pending_note, stored_in
    from anim_clip.train.distributed import setup_distributed

    file = resolve_checkpoint(path, weights)
    ckpt = load_checkpoint(file)
    if ckpt.kind == "e2e":
        raise AnimClipError(f"{file}: an end-to-end checkpoint; its fine-tuned features differ from the cache's "
                            "frozen ones, so evaluate it on the videos (anim-clip eval --videos)")
    cfg = ckpt.config
    dist = setup_distributed(device)
    head = model_from_checkpoint(ckpt, "cached").to(dist.device)
    dataset = load_dataset(cfg.data)
    _, data = open_cached_data(cfg, cache, dataset, dist.device, cfg.model.video_specific_prompt, allow_incomplete,
                               use=stored_in(split))
    if split not in data:
        raise AnimClipError(f"no split {split!r} to evaluate; choose one of {', '.join(data)}")
    ctx = eval_context(dataset, cfg)
    report = evaluate_split(head, data[split], cfg, ctx, dist)
    report.update(checkpoint=str(file), split=split, **pending_note({split: data[split]}))
    run = eval_dir(file, out)
    if dist.is_main:
        report["plots"] = [str(p) for p in write_report(report, ctx, run, f"{cfg.data.name} {split}, {file.name}")]
    return report
