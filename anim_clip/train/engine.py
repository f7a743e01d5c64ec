"""One training engine: a readable loop for one device or many (torchrun), resumable bit-exactly.

Every epoch's randomness (clip order, view choice, mixup) comes from a generator seeded by
(seed, epoch), and ``last.pt`` is written at every epoch end with the optimiser state, so a run
killed at any moment and continued with ``--resume`` computes exactly what an uninterrupted run
computes. Model selection (``best.pt``) uses a validation share of the training clips, never
the test split unless asked; the final report is the last epoch's (the release's protocol).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from anim_clip.config import Config
from anim_clip.data.dataset import Dataset, load_dataset
from anim_clip.errors import AnimClipError
from anim_clip.evaluate.cached import autocast, eval_context, evaluate_split, write_report
from anim_clip.evaluate.report import primary_metric
from anim_clip.models.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from anim_clip.models.factory import build_head
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.train.cached import CachedSplitData, class_text, open_cached_data
from anim_clip.train.distributed import Distributed, setup_distributed
from anim_clip.train.losses import LOSSES
from anim_clip.train.mixing import mix_batch
from anim_clip.train.optim import make_optimizer
from anim_clip.train.rundir import RunDir
from anim_clip.train.schedule import WarmupCosine
from anim_clip.ui import console, progress_bar


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: float | None = None
    best_epoch: int | None = None


@dataclass
class TrainResult:
    run_dir: Path
    report: dict[str, Any]
    state: TrainState
    plots: list[Path] = field(default_factory=list)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def vocabulary(cfg: Config, cache, dataset: Dataset) -> dict[str, torch.Tensor]:
    """The head's constants: pooled text embeddings of actions and species, and the graph."""
    names = cache.text("actions").names
    if names != list(dataset.actions):
        raise AnimClipError(f"cache {cache.path} was built for other action names than data.labels gives")
    return {
        "action_text": class_text(cache, "actions", cfg.data.descriptions is not None, cfg.model.pooling),
        "species_text": class_text(cache, "species", cfg.data.species_descriptions is not None, cfg.model.pooling),
        "adjacency": torch.from_numpy(dataset.graph(cfg.data.graph).adjacency()),
    }


def _set_deterministic(cfg: Config) -> None:
    torch.manual_seed(cfg.train.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def train(cfg: Config, *, cache: str | Path, out: str | Path, resume: bool = False, select_on_test: bool = False,
          progress: bool = True, device: torch.device | None = None) -> TrainResult:
    """Train the Animal-CLIP head on a feature cache (``train.mode=cached``)."""
    if cfg.train.mode != "cached":
        raise AnimClipError("train.mode=e2e trains on raw videos: use `anim-clip train --mode e2e`")
    dist = setup_distributed(device)
    run = RunDir(out)
    if dist.is_main:
        run.start(cfg, resume)
    dist.barrier()
    _set_deterministic(cfg)
    dataset = load_dataset(cfg.data)
    ctx = eval_context(dataset, cfg)
    cache_obj, data = open_cached_data(cfg, cache, dataset, dist.device, cfg.model.video_specific_prompt)
    head = build_head(cfg, **vocabulary(cfg, cache_obj, dataset)).to(dist.device)
    optimizer = make_optimizer(head, cfg.train, whole_model_is_head=True)
    state = TrainState()
    if resume:
        state = _restore(run, head, optimizer)
        if dist.is_main:
            run.truncate_after(state.epoch)
            console.print(f"resuming {run.path} after epoch {state.epoch} (step {state.step})")
    model: nn.Module = DistributedDataParallel(head) if dist.enabled else head

    train_data = data["train"]
    global_batch = cfg.train.batch_size * dist.world
    batches_per_epoch = len(train_data.indices) // global_batch
    if batches_per_epoch < cfg.train.accumulation:
        raise AnimClipError(f"{len(train_data.indices)} training clips make {batches_per_epoch} batches of "
                            f"{global_batch}, fewer than train.accumulation={cfg.train.accumulation}: "
                            "lower train.batch_size")
    steps_per_epoch = batches_per_epoch // cfg.train.accumulation
    schedule = WarmupCosine(optimizer, cfg.train.epochs * steps_per_epoch,
                            round(cfg.train.warmup_epochs * steps_per_epoch), cfg.train.min_lr)
    loss_fn = LOSSES[cfg.train.loss]
    select = data.get("val") or (data["test"] if select_on_test else None)
    if select is data.get("test") and select is not None and dist.is_main:
        console.print("[yellow]selecting best.pt on the TEST split, as asked (--select-on-test)[/]")

    for epoch in range(state.epoch, cfg.train.epochs):
        _train_epoch(model, head, optimizer, schedule, loss_fn, train_data, cfg, dist, state, epoch, run, progress,
                     steps_per_epoch)
        record: dict[str, Any] = {"kind": "epoch", "epoch": epoch + 1, "step": state.step}
        if select is not None:
            name, value = primary_metric(evaluate_split(head, select, cfg, ctx, dist))
            record.update(val_metric=value, val_metric_name=f"{'val' if 'val' in data else 'test'} {name}")
            if state.best is None or value > state.best:
                state.best, state.best_epoch = value, epoch + 1
                if dist.is_main:
                    save_checkpoint(run.best, head, cfg, vocab=_vocab_names(dataset), extra={"epoch": epoch + 1})
        state.epoch = epoch + 1
        if dist.is_main:
            run.log(record)
            save_checkpoint(run.last, head, cfg, vocab=_vocab_names(dataset),
                            extra={"train_state": vars(state).copy(), "optimizer": optimizer.state_dict()})
        dist.barrier()

    report = evaluate_split(head, data["test"], cfg, ctx, dist)
    report.update(epochs=state.epoch, best_epoch=state.best_epoch, weights="last epoch")
    plots = write_report(report, ctx, run, f"{cfg.data.name} test, last epoch") if dist.is_main else []
    return TrainResult(run.path, report, state, plots)


def _vocab_names(dataset: Dataset) -> dict[str, list[str]]:
    return {"actions": list(dataset.actions), "species": list(dataset.species)}


def _restore(run: RunDir, head: AnimalCLIPHead, optimizer: torch.optim.Optimizer) -> TrainState:
    ckpt = load_checkpoint(run.last)
    load_state_strict(head, ckpt.head_state(), run.last)
    optimizer.load_state_dict(ckpt.extra["optimizer"])
    return TrainState(**ckpt.extra["train_state"])


def _train_epoch(model: nn.Module, head: AnimalCLIPHead, optimizer: torch.optim.Optimizer, schedule: WarmupCosine,
                 loss_fn, data: CachedSplitData, cfg: Config, dist: Distributed, state: TrainState, epoch: int,
                 run: RunDir, progress: bool, steps_per_epoch: int) -> None:
    tc = cfg.train
    generator = epoch_generator(tc.seed, epoch)
    global_batch = tc.batch_size * dist.world
    order = data.indices[torch.randperm(len(data.indices), generator=generator).to(data.indices.device)]
    views = torch.randint(data.num_views, (len(order),), generator=generator).to(order.device)
    batches = steps_per_epoch * tc.accumulation
    plan = [(order[b * global_batch:(b + 1) * global_batch][dist.rank :: dist.world],
             views[b * global_batch:(b + 1) * global_batch][dist.rank :: dist.world]) for b in range(batches)]
    model.train()
    losses: list[float] = []
    started, clips = time.perf_counter(), 0
    with progress_bar("steps", disable=not (progress and dist.is_main)) as bar:
        task = bar.add_task(f"epoch {epoch + 1}/{tc.epochs}", total=steps_per_epoch)
        for b, batch in enumerate(data.batches(plan)):
            batch = mix_batch(batch, mixup_alpha=tc.mixup_alpha, cutmix_alpha=tc.cutmix_alpha,
                              mix_species=tc.mix_species, generator=generator)
            last_micro = (b + 1) % tc.accumulation == 0
            sync = model.no_sync() if dist.enabled and not last_micro else nullcontext()
            with sync, autocast(cfg, dist.device):
                loss = loss_fn(model(batch.features, batch.species).logits, batch.targets)
                (loss / tc.accumulation).backward()
            losses.append(loss.item())
            clips += len(batch.targets) * dist.world
            if not last_micro:
                continue
            lr = schedule.apply(state.step)
            if tc.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(head.parameters(), tc.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            mean_loss = float(np.mean(losses[-tc.accumulation:]))
            bar.update(task, advance=1, description=f"epoch {epoch + 1}/{tc.epochs} loss {mean_loss:.3f} lr {lr:.1e}")
            if not math.isfinite(mean_loss):
                raise AnimClipError(f"training diverged at step {state.step} (loss {mean_loss}); lower train.head_lr")
            if dist.is_main and (state.step % tc.log_every == 0 or state.step % steps_per_epoch == 0):
                elapsed = time.perf_counter() - started
                run.log({"kind": "step", "epoch": epoch + 1, "step": state.step, "loss": mean_loss, "lr": lr,
                         "clips_per_s": clips / elapsed if elapsed else 0.0})
