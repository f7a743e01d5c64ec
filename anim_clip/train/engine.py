"""One training engine for both modes: a readable loop for one device or many (torchrun),
resumable bit-exactly.

``train.mode=cached`` trains the head on a feature cache; ``train.mode=e2e`` fine-tunes the
cross-frame ViT with the head on raw videos (docs/method.md §4.5–§4.7, §6). The modes differ only in
what they hand the loop (:class:`Mode`): the model to train and save, a source of batches (cached
features, or augmented pixels) and an evaluation; the loop, the optimiser groups, the schedule,
mixing, accumulation, DDP, checkpoints and the report are shared.

Every epoch's randomness (clip order, view choice, augmentation, mixup) comes from seeds of
(seed, epoch[, clip]), and ``last.pt`` is written at every epoch end with the optimiser state, so a
run killed at any moment and continued with ``--resume`` computes what an uninterrupted run
computes. Model selection (``best.pt``) uses a validation share of the training clips, never the
test split unless asked; the final report is the last epoch's (the release's protocol).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.progress import Progress, TaskID
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from anim_clip.cache.extract import encode_class_texts
from anim_clip.cache.store import FeatureCache
from anim_clip.config import Config, config_changes
from anim_clip.data.dataset import Dataset
from anim_clip.errors import AnimClipError
from anim_clip.evaluate.cached import eval_context, evaluate_split, final_report, write_report
from anim_clip.evaluate.report import EvalContext, primary_metric
from anim_clip.evaluate.videos import evaluate_videos, split_rows, video_split
from anim_clip.frames import with_views
from anim_clip.models.animal_clip import AnimalCLIP, CrossFrameTower
from anim_clip.models.checkpoint import Checkpoint, load_checkpoint, load_state_strict, save_checkpoint
from anim_clip.models.factory import build_head, end_to_end
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.models.inputs import HeadInputs
from anim_clip.cache.reader import class_text, head_dims, open_cached_data, pending_note, pooled_text, with_cache_decoder
from anim_clip.train.cached import CachedTrainData
from anim_clip.train.shared import SharedData
from anim_clip.runtime.distributed import Distributed, setup_distributed
from anim_clip.train.losses import LOSSES, Loss
from anim_clip.models.features import Batch
from anim_clip.train.mixing import mix_batch
from anim_clip.train.optim import make_optimizer
from anim_clip.train.plan import EpochPlan, batches_per_epoch
from anim_clip.runtime.precision import training_autocast
from anim_clip.runtime.rundir import RunDir, resolve_checkpoint
from anim_clip.train.schedule import WarmupCosine
from anim_clip.train.videos import VideoTrainData
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
    model: nn.Module  # the trained head (cached mode) or end-to-end model, last epoch
    plots: list[Path] = field(default_factory=list)


class TrainData(Protocol):
    indices: torch.Tensor  # (N,) the clips an epoch draws from

    def epoch_batches(self, plan: EpochPlan, generator: torch.Generator) -> Iterator[Batch]: ...


@dataclass
class Mode:
    """What a training mode hands the loop."""

    model: AnimalCLIPHead | AnimalCLIP  # trained, and saved as the checkpoint
    data: TrainData
    evaluate: Callable[[str], dict[str, Any]]  # "val" / "test" -> evaluation report
    final: Callable[[], dict[str, Any]]  # the test report after the last epoch, with the baselines there are
    splits: tuple[str, ...]  # evaluation splits there are
    notes: dict[str, Any] = field(default_factory=dict)  # what the final report must say about the data


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def vocabulary(cfg: Config, cache, dataset: Dataset) -> dict[str, torch.Tensor]:
    """The head's constants from a cache (whose names match ``dataset``'s: ``open_cached_data`` checked):
    pooled text embeddings of actions and species, and the graph."""
    return {
        "action_text": class_text(cache, "actions", cfg.data.descriptions is not None, cfg.model.pooling),
        "species_text": class_text(cache, "species", cfg.data.species_descriptions is not None, cfg.model.pooling),
        "adjacency": torch.from_numpy(dataset.graph(cfg.data.graph).adjacency()),
    }


def e2e_model(cfg: Config, dataset: Dataset, device: torch.device = torch.device("cpu")) -> AnimalCLIP:
    """The end-to-end model on ``cfg.backbone`` (fresh message tokens) on ``device``, its vocabulary
    encoded there by its own frozen text tower."""
    model = end_to_end(cfg).to(device)
    texts = encode_class_texts(model.text, cfg, dataset)  # inference tensors: cloned to enter autograd
    model.head.set_vocabulary(
        pooled_text(texts["actions"], cfg.data.descriptions is not None, cfg.model.pooling).clone(),
        pooled_text(texts["species"], cfg.data.species_descriptions is not None, cfg.model.pooling).clone(),
        torch.from_numpy(dataset.graph(cfg.data.graph).adjacency()),
    )
    return model


def load_initial_head(head: AnimalCLIPHead, source: str | Path, cfg: Config, dataset: Dataset) -> Path:
    """Warm start (``--init-head``): the head of a cached-mode run (its ``last.pt``) or checkpoint file."""
    file = resolve_checkpoint(source, "last")
    ckpt = load_checkpoint(file)
    trained_on = ckpt.config.backbone.model
    if trained_on != cfg.backbone.model:
        raise AnimClipError(f"--init-head {file}: its head was trained on {trained_on} features; this run "
                            f"fine-tunes {cfg.backbone.model}")
    vocab = ckpt.vocab or {}
    if vocab.get("actions") != list(dataset.actions) or vocab.get("species") != list(dataset.species):
        raise AnimClipError(f"--init-head {file}: trained on other actions or species than this run's data")
    load_state_strict(head, ckpt.head_state(), file)
    return file


def freeze_dead_parameters(model: nn.Module) -> None:
    """Parameters that can never receive a gradient (docs/method.md D16) stay out of AdamW, and DDP then
    need not search every step for parameters the loss did not use."""
    for module in model.modules():
        if hasattr(module, "dead_parameters"):
            for param in module.dead_parameters():
                param.requires_grad_(False)


def _set_deterministic(cfg: Config) -> None:
    torch.manual_seed(cfg.train.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _cached_mode(cfg: Config, cache: FeatureCache, dataset: Dataset, ctx: EvalContext, dist: Distributed,
                 allow_incomplete: bool) -> Mode:
    cache_obj, data = open_cached_data(cfg, cache, dataset, dist.device, HeadInputs.of_config(cfg), allow_incomplete)
    head = build_head(cfg, **head_dims(cache_obj), **vocabulary(cfg, cache_obj, dataset)).to(dist.device)
    return Mode(head, CachedTrainData(data["train"]), lambda split: evaluate_split(head, data[split], cfg, ctx, dist),
                lambda: final_report(head, cache_obj, data, "test", cfg, ctx, dist),
                tuple(s for s in data if s != "train"), pending_note(data))


def _e2e_mode(cfg: Config, dataset: Dataset, ctx: EvalContext, dist: Distributed, init_head: str | Path | None) -> Mode:
    model = e2e_model(cfg, dataset, dist.device)
    if init_head is not None:
        file = load_initial_head(model.head, init_head, cfg, dataset)
        if dist.is_main:
            console.print(f"warm start: the head of {file}")
    model.set_grad_checkpointing(cfg.train.grad_checkpointing)
    tower = CrossFrameTower(model, cfg.sampling.num_frames, model.head.inputs.patches)
    split_cfg = {"val": with_views(cfg, 1, 1), "test": cfg}  # per-epoch selection on 1 x 1 views, as the release

    def evaluate(split: str) -> dict[str, Any]:
        return evaluate_videos(model.head, tower, video_split(dataset, split, cfg), split_cfg[split], ctx, dist)

    data = VideoTrainData(dataset, "train", split_rows(dataset, "train", cfg)[1], cfg, dist.device, model.pixels)
    return Mode(model, data, evaluate, lambda: evaluate("test"),
                ("val", "test") if cfg.train.val_fraction > 0 else ("test",))


def train(cfg: Config, *, cache: str | Path | None = None, out: str | Path, resume: bool = False,
          select_on_test: bool = False, progress: bool = True, device: torch.device | None = None,
          init_head: str | Path | None = None, allow_incomplete: bool = False,
          allow_config_change: bool = False, shared: SharedData | None = None) -> TrainResult:
    """Train as ``cfg.train.mode`` says: the head on the feature cache ``cache`` (cached; on the clips
    extracted so far only if ``allow_incomplete``), or the whole model on the raw videos of
    ``cfg.data`` (e2e, optionally warm-started from the head of a cached run, ``init_head``; a
    resumed run takes its head from its own ``last.pt`` instead).

    A resumed run keeps the config its ``last.pt`` was trained with unless ``allow_config_change``;
    nothing is written to ``out`` until everything before the first epoch has succeeded. ``shared``
    (a sweep's) gives the dataset and cache already opened by earlier runs."""
    if cfg.train.mode == "cached" and cache is None:
        raise AnimClipError("cached mode trains on a feature cache: give --cache (made by `anim-clip extract`)")
    if cfg.train.mode == "e2e" and cache is not None:
        raise AnimClipError("e2e mode trains on the raw videos of data.root; drop --cache")
    if cfg.train.mode == "e2e" and HeadInputs.of_config(cfg).species == "predictor":
        raise AnimClipError(f"e2e mode does not run the species predictor species.model={cfg.species.model}: its "
                            "probabilities live in a feature cache; train in cached mode (--cache), or set "
                            "species.model=null (predicted species: the head's own zero-shot)")
    if cfg.train.mode == "cached" and init_head is not None:
        raise AnimClipError("--init-head warm-starts end-to-end training (--mode e2e) from a cached run's head")
    dist = setup_distributed(device)
    run = RunDir(out)
    run.check(resume)
    saved = load_checkpoint(run.last) if resume else None
    if cfg.train.mode == "cached":  # before the config comparison: a resumed run recorded the cache's decoder too
        cfg = with_cache_decoder(cfg, cache)
    changes = _config_changes(run, saved, cfg, allow_config_change)
    _set_deterministic(cfg)
    shared = shared or SharedData()
    dataset = shared.dataset(cfg.data)
    ctx = eval_context(dataset, cfg)
    if cfg.train.mode == "cached":
        mode = _cached_mode(cfg, shared.cache(cache), dataset, ctx, dist, allow_incomplete)
    else:
        mode = _e2e_mode(cfg, dataset, ctx, dist, None if resume else init_head)
    freeze_dead_parameters(mode.model)
    optimizer = make_optimizer(mode.model, cfg.train, whole_model_is_head=cfg.train.mode == "cached")
    state = TrainState()
    if saved is not None:
        state = _restore(saved, mode.model, optimizer)
        if dist.is_main:
            console.print(f"resuming {run.path} after epoch {state.epoch} (step {state.step})")
    model: nn.Module = DistributedDataParallel(mode.model, broadcast_buffers=False) if dist.enabled else mode.model

    clips = len(mode.data.indices)
    batches = batches_per_epoch(clips, cfg.train.batch_size, dist.world, cfg.train.accumulation,
                                cfg.train.min_steps_per_epoch)
    steps_per_epoch = batches // cfg.train.accumulation
    schedule = WarmupCosine(optimizer, cfg.train.epochs * steps_per_epoch,
                            round(cfg.train.warmup_epochs * steps_per_epoch), cfg.train.min_lr)
    select = "val" if "val" in mode.splits else ("test" if select_on_test else None)
    if select == "test" and dist.is_main:
        console.print("[yellow]selecting best.pt on the TEST split, as asked (--select-on-test)[/]")
    vocab = {"actions": list(dataset.actions), "species": list(dataset.species)}
    if dist.is_main:
        run.start(cfg, state.epoch, changes)

    # one bar for the whole run, and above it one line per epoch
    with progress_bar("steps", disable=not (progress and dist.is_main)) as bar:
        task = bar.add_task("training", total=cfg.train.epochs * steps_per_epoch, completed=state.step)
        for epoch in range(state.epoch, cfg.train.epochs):
            plan = EpochPlan(epoch, clips, batches, cfg.train.accumulation, dist.rank, dist.world)
            record = _train_epoch(model, mode, optimizer, schedule, LOSSES[cfg.train.loss], plan, cfg, dist, state,
                                  run, (bar, task))
            if select is not None:
                name, value = primary_metric(mode.evaluate(select))
                record.update(val_metric=value, val_metric_name=f"{select} {name}")
                if state.best is None or value > state.best:
                    state.best, state.best_epoch = value, epoch + 1
                    if dist.is_main:
                        save_checkpoint(run.best, mode.model, cfg, vocab=vocab, extra={"epoch": epoch + 1})
            state.epoch = epoch + 1
            if dist.is_main:
                run.log(record)
                console.print(_summary(record, cfg.train.epochs), highlight=False)
                save_checkpoint(run.last, mode.model, cfg, vocab=vocab,
                                extra={"train_state": vars(state).copy(), "optimizer": optimizer.state_dict()})
            dist.barrier()

    report = mode.final()
    report.update(epochs=state.epoch, best_epoch=state.best_epoch, weights="last epoch", **mode.notes)
    plots = write_report(report, ctx, run, f"{cfg.data.name} test, last epoch") if dist.is_main else []
    return TrainResult(run.path, report, state, mode.model, plots)


def _config_changes(run: RunDir, saved: Checkpoint | None, cfg: Config, allowed: bool) -> dict[str, list[Any]]:
    """What differs from the config the resumed run trained with; refused unless ``allowed``, so
    a run's config.yaml and checkpoints always describe how it was trained."""
    changes = config_changes(saved.config, cfg) if saved is not None else {}
    if changes and not allowed:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise AnimClipError(f"{run.path} was trained with other settings (saved -> now: {listed}); resume with "
                            f"its own ({run.config}), or pass --allow-config-change to go on with these "
                            "(recorded in metrics.jsonl)")
    return changes


def _restore(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Weights, optimiser moments and counters from ``ckpt``; rates, decay and betas stay this
    config's (the saved groups would bring back the old ``base_lr``)."""
    load_state_strict(model, ckpt.model, ckpt.path)
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(ckpt.extra["optimizer"])
    for group, own in zip(optimizer.param_groups, settings):
        group.pop("base_lr", None)
        group.update(own)
    return TrainState(**ckpt.extra["train_state"])


def _summary(record: dict[str, Any], epochs: int) -> str:
    """The epoch's one line: mean loss, the last step's rate, throughput, skipped videos, selection metric."""
    line = (f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, lr {record['lr']:.1e}, "
            f"{record['clips_per_s']:.1f} clips/s")
    if record["skipped_clips"]:
        line += f", {record['skipped_clips']} clips skipped (videos that could not be decoded)"
    if "val_metric" in record:
        line += f", {record['val_metric_name']} {100 * record['val_metric']:.2f}"
    return line


def batch_loss(model: nn.Module, batch: Batch, loss_fn: Loss) -> torch.Tensor:
    """The batch's loss over its valid clips; a batch without any still runs the model (DDP needs
    every rank's backward) and contributes zero."""
    logits = model(batch.features, batch.species).logits
    if batch.valid is None:
        return loss_fn(logits, batch.targets)
    if not batch.valid.any():
        return logits.sum() * 0
    return loss_fn(logits[batch.valid], batch.targets[batch.valid])


def _train_epoch(model: nn.Module, mode: Mode, optimizer: torch.optim.Optimizer, schedule: WarmupCosine,
                 loss_fn: Loss, plan: EpochPlan, cfg: Config, dist: Distributed, state: TrainState, run: RunDir,
                 progress: tuple[Progress, TaskID]) -> dict[str, Any]:
    """One epoch, advancing the run's ``progress`` bar; returns its record (mean loss and skipped
    clips over all ranks, clips/s)."""
    tc = cfg.train
    bar, task = progress
    generator = epoch_generator(tc.seed, plan.epoch)
    trained = [p for p in mode.model.parameters() if p.requires_grad]
    model.train()
    losses: list[float] = []
    started, clips, skipped, lr = time.perf_counter(), 0, 0, 0.0
    for b, batch in enumerate(mode.data.epoch_batches(plan, generator)):
        skipped += len(batch.skipped)
        batch = mix_batch(batch, mixup_alpha=tc.mixup_alpha, cutmix_alpha=tc.cutmix_alpha,
                          mix_species=tc.mix_species, generator=generator)
        last_micro = (b + 1) % tc.accumulation == 0
        sync = model.no_sync() if dist.enabled and not last_micro else nullcontext()
        with sync, training_autocast(cfg, dist.device):
            loss = batch_loss(model, batch, loss_fn)
            (loss * plan.loss_weight(b)).backward()
        losses.append(loss.item())
        clips += len(batch.targets) * dist.world
        if not last_micro:
            continue
        lr = schedule.apply(state.step)
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trained, tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        mean_loss = float(np.mean(losses[-tc.accumulation:]))
        bar.update(task, advance=1, description=f"epoch {plan.epoch + 1}/{tc.epochs} loss {mean_loss:.3f} lr {lr:.1e}")
        if not math.isfinite(mean_loss):
            raise AnimClipError(f"training diverged at step {state.step} (loss {mean_loss}); lower train.head_lr")
        if dist.is_main and state.step % tc.log_every == 0:
            elapsed = time.perf_counter() - started
            run.log({"kind": "step", "epoch": plan.epoch + 1, "step": state.step, "loss": mean_loss, "lr": lr,
                     "clips_per_s": clips / elapsed if elapsed else 0.0})
    elapsed = time.perf_counter() - started
    totals = dist.all_gather_rows(torch.tensor([[float(np.sum(losses)), float(len(losses)), float(skipped)]],
                                               device=dist.device, dtype=torch.float64)).sum(0).tolist()
    return {"kind": "epoch", "epoch": plan.epoch + 1, "step": state.step, "loss": totals[0] / max(totals[1], 1),
            "lr": lr, "skipped_clips": int(totals[2]), "clips_per_s": clips / elapsed if elapsed else 0.0}
