"""``anim-clip sweep``: every combination of a grid of config values × seeds, trained on one cache,
then one comparison table (mean ± std over seeds, the paired difference of each combination to a
reference, the baselines once) as CSV, JSON and a plot, in percent.

A sweep pays once for what every run would pay alone: ``--parallel`` long-lived worker processes
(one by default) each import torch once, keep the cache's splits in memory on the device for all
the runs they train (:class:`~anim_clip.train.shared.SharedData`), and every run reads the baselines
from the cache's store, which the first one fills (:func:`~anim_clip.evaluate.baselines.cached_baselines`).
Several workers share the device and the CPU's threads (each gets its share).

Runs go to ``OUT/<combination>/seed<k>``, each a run directory as ``anim-clip train`` makes it, its
console output in ``train.log``. A run whose ``eval.json`` exists is not trained again and one with
a ``last.pt`` is resumed, so an interrupted sweep continues where it stopped, each run on its own.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import multiprocessing
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.table import Table

from anim_clip.config import Config, load_config, parse_override
from anim_clip.errors import AnimClipError, ConfigError
from anim_clip.evaluate.baselines import TITLES
from anim_clip.evaluate.report import primary_metric
from anim_clip.evaluate.plots import _save as save_figure  # the one PNG writer: atomic, figure closed
from anim_clip.evaluate.plots import plt
from anim_clip.io import atomic_write_json, atomic_write_text
from anim_clip.train.shared import SharedData
from anim_clip.ui import console, progress_bar, table


@dataclass(frozen=True)
class SweepRun:
    combination: tuple[tuple[str, str], ...]  # (key, value) per grid axis
    seed: int
    path: Path

    @property
    def name(self) -> str:
        return ",".join(f"{k.split('.')[-1]}={v}" for k, v in self.combination) or "base"

    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.combination] + [f"train.seed={self.seed}"]


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``model.refine=on,off`` -> ('model.refine', ['on', 'off'])."""
    axes = []
    for spec in specs:
        key, _ = parse_override(spec)
        values = [v.strip() for v in spec.partition("=")[2].split(",") if v.strip()]
        if not values:
            raise ConfigError(f"--grid {spec!r}: expected key=value1,value2,...")
        axes.append((key, values))
    return axes


def plan_sweep(config: str, overrides: list[str], grid: list[str], seeds: int, out: Path) -> tuple[Config, list[SweepRun]]:
    """Every run of the sweep, each validated as a config before anything trains."""
    base = load_config(config, overrides)
    axes = parse_grid(grid)
    runs = []
    for values in itertools.product(*[vals for _, vals in axes]):
        combination = tuple((key, v) for (key, _), v in zip(axes, values))
        for k in range(seeds):
            run = SweepRun(combination, base.train.seed + k, Path())
            run = replace(run, path=out / run.name / f"seed{run.seed}")
            load_config(config, [*overrides, *run.overrides()])  # fail now, not after hours of training
            runs.append(run)
    return base, runs


def check_reference(runs: list[SweepRun], reference: str | None) -> str:
    """The combination the others are compared with: ``reference``, by default the first."""
    names = list(dict.fromkeys(r.name for r in runs))
    if reference is not None and reference not in names:
        raise AnimClipError(f"--reference {reference!r} is no combination of this sweep; choose one of {', '.join(names)}")
    return reference or names[0]


def _finished(run: SweepRun) -> dict[str, Any] | None:
    path = run.path / "eval.json"
    return json.loads(path.read_text()) if path.exists() else None


def cell_threads(parallel: int) -> int:
    """Threads each of ``parallel`` workers computes with: an equal share of this process's."""
    return max(1, torch.get_num_threads() // parallel)


# ----------------------------------------------------------------------------------------------
# the workers: one process each, alive for the whole sweep


_SHARED: SharedData | None = None  # the worker's: datasets and cache splits opened by its earlier runs


def _start_worker(threads: int) -> None:
    global _SHARED
    torch.set_num_threads(threads)
    _SHARED = SharedData()


def _train_cell(run: SweepRun, config: str, overrides: list[str], cache: Path, allow_incomplete: bool) -> str | None:
    """Train one run in this worker, its console output in ``train.log``; the error's line if it failed."""
    from anim_clip.train.engine import train  # here: the parent, which only plans and compares, never imports it

    run.path.mkdir(parents=True, exist_ok=True)
    with (run.path / "train.log").open("a") as log:
        console.file = log
        try:
            cfg = load_config(config, [*overrides, *run.overrides()])
            train(cfg, cache=cache, out=run.path, resume=(run.path / "last.pt").exists(), progress=False,
                  allow_incomplete=allow_incomplete, shared=_SHARED)
            return None
        except AnimClipError as e:
            console.print(f"error: {e}", soft_wrap=True, highlight=False)
            return str(e)
        except Exception as e:  # noqa: BLE001 - a bug: its traceback goes to the run's log, the sweep stops
            log.write(traceback.format_exc())
            return f"{type(e).__name__}: {e}"
        finally:
            console.file = None  # back to stdout


def run_sweep(config: str, overrides: list[str], grid: list[str], seeds: int, cache: Path, out: Path,
              parallel: int = 1, allow_incomplete: bool = False, reference: str | None = None) -> list[dict[str, Any]]:
    """Train every run not yet finished (on an unfinished cache only if ``allow_incomplete``) in
    ``parallel`` workers, then write and return the comparison rows (differences to ``reference``)."""
    _, runs = plan_sweep(config, overrides, grid, seeds, out)
    reference = check_reference(runs, reference)
    todo = [r for r in runs if _finished(r) is None]
    threads = cell_threads(parallel)
    console.print(f"sweep: {len(runs)} runs ({len(runs) - len(todo)} already finished) -> {out}; "
                  f"{min(parallel, len(todo))} at once, {threads} thread{'s' * (threads > 1)} each")
    if todo:
        _train_all(todo, config, overrides, cache, allow_incomplete, parallel, threads)
    rows = comparison_rows(runs, reference)
    write_comparison(rows, out)
    return rows


def _train_all(todo: list[SweepRun], config: str, overrides: list[str], cache: Path, allow_incomplete: bool,
               parallel: int, threads: int) -> None:
    """The runs ``todo`` in a pool of long-lived workers; a failed run stops the sweep, naming its log."""
    context = multiprocessing.get_context("spawn")  # no forked torch threads or CUDA state
    started = time.perf_counter()
    with progress_bar("runs") as bar, ProcessPoolExecutor(min(parallel, len(todo)), context, _start_worker,
                                                          (threads,)) as pool:
        task = bar.add_task("sweep", total=len(todo))
        jobs = {pool.submit(_train_cell, run, config, overrides, cache, allow_incomplete): run for run in todo}
        try:
            for job in as_completed(jobs):
                _finish(jobs[job], job.result, started)
                bar.advance(task)
        except BaseException:  # a failed run, Ctrl-C: the runs not started yet are not started
            for job in jobs:
                job.cancel()
            raise


def _finish(run: SweepRun, result: Callable[[], str | None], started: float) -> None:
    """Say how a finished ``run`` did; a failed one (or a dead worker) stops the sweep, naming its log."""
    try:
        error = result()
    except BrokenProcessPool:
        raise AnimClipError(f"sweep run {run.path}: its worker process died (killed, or out of memory); run the "
                            f"sweep again to resume it (log: {run.path / 'train.log'})") from None
    if error is not None:
        raise AnimClipError(f"sweep run {run.path} failed: {error} (full log: {run.path / 'train.log'})")
    name, value = primary_metric(_finished(run))
    console.print(f"{run.name} seed {run.seed}: {name} {100 * value:.2f} ({time.perf_counter() - started:.0f} s "
                  "into the sweep)", highlight=False)


# ----------------------------------------------------------------------------------------------
# the comparison


def headline_figures(report: dict[str, Any]) -> dict[str, float | None]:
    """The comparison's columns of one run: the primary metric, the long-tail groups' mAP, and each
    baseline's primary metric (None where an older report has none)."""
    metric, value = primary_metric(report)
    figures = {metric: value, **{f"{g} mAP": v for g, v in report.get("group_mAP", {}).items()}}
    for name in TITLES:
        baseline = report.get("baselines", {}).get(name)
        figures[f"{TITLES[name]} {metric}"] = primary_metric(baseline)[1] if baseline else None
    return figures


def _percent(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and standard deviation in percent of the values there are (None for none)."""
    kept = [v for v in values if v is not None and not np.isnan(v)]
    return (100 * float(np.mean(kept)), 100 * float(np.std(kept))) if kept else (None, None)


def comparison_rows(runs: list[SweepRun], reference: str | None = None) -> list[dict[str, Any]]:
    """Per combination, in percent (as the table shows them; the keys say so: ``mAP mean (%)``):
    mean ± std over seeds of the primary metric, the other headline figures and the baselines', and
    the difference of the primary metric to the ``reference`` combination's (default: the first),
    paired by seed (the seeds both finished)."""
    figures: dict[str, dict[int, dict[str, float | None]]] = {}
    for run in runs:
        report = _finished(run)
        if report is not None:
            figures.setdefault(run.name, {})[run.seed] = headline_figures(report)
            metric = primary_metric(report)[0]
    if not figures:
        return []
    reference = reference if reference in figures else next(iter(figures))
    rows = []
    for name, by_seed in figures.items():
        row: dict[str, Any] = {"combination": name, "seeds": len(by_seed), "metric": metric, "reference": reference}
        for key in next(iter(by_seed.values())):
            row[f"{key} mean (%)"], row[f"{key} std (%)"] = _percent([f[key] for f in by_seed.values()])
        paired = [by_seed[s][metric] - figures[reference][s][metric] for s in by_seed if s in figures[reference]]
        row[f"{metric} difference to reference mean (%)"], row[f"{metric} difference to reference std (%)"] = _percent(paired)
        rows.append(row)
    return rows


def _mean_std(row: dict[str, Any], key: str) -> str:
    mean, std = row[f"{key} mean (%)"], row[f"{key} std (%)"]
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"


def _signed(row: dict[str, Any], key: str) -> str:
    mean, std = row[f"{key} mean (%)"], row[f"{key} std (%)"]
    return "-" if mean is None else f"{mean:+.2f} ± {std:.2f}"


def best_combination(rows: list[dict[str, Any]]) -> str:
    """The combination with the highest mean primary metric."""
    metric = rows[0]["metric"]
    return max(rows, key=lambda r: -np.inf if r[f"{metric} mean (%)"] is None else r[f"{metric} mean (%)"])["combination"]


def baselines_once(rows: list[dict[str, Any]]) -> list[tuple[str, float | None, float | None]]:
    """(label, mean, std) of each baseline's primary metric in percent: once when every combination
    has the same (the baselines of one cache, split and settings), else once per combination, named."""
    metric, out = rows[0]["metric"], []
    for title in TITLES.values():
        values = {r["combination"]: (r[f"{title} {metric} mean (%)"], r[f"{title} {metric} std (%)"]) for r in rows}
        if len(set(values.values())) == 1:
            out.append((title, *next(iter(values.values()))))
        else:
            out += [(f"{title} ({name})", *value) for name, value in values.items()]
    return out


def comparison_table(rows: list[dict[str, Any]]) -> Table:
    """The comparison as a person reads it: a row per combination (the best marked), its difference
    to the reference, the long-tail groups; then the baselines, once."""
    metric, reference = rows[0]["metric"], rows[0]["reference"]
    groups = [k.removesuffix(" mean (%)") for k in rows[0] if k.endswith(" mAP mean (%)")
              and not any(k.startswith(f"{t} ") for t in TITLES.values())]
    difference = f"{metric} difference to reference"
    best = best_combination(rows)
    out = table(f"sweep: test {metric} (%), mean ± std over seeds; Δ: the difference to the reference, {reference}, "
                "paired by seed; ★: the best",
                ["combination", "seeds", metric, f"Δ {metric} vs reference", *groups, "best"],
                [[r["combination"], r["seeds"], _mean_std(r, metric),
                  "reference" if r["combination"] == reference else _signed(r, difference),
                  *[_mean_std(r, g) for g in groups], "★" if r["combination"] == best else ""] for r in rows])
    out.add_section()
    for label, mean, std in baselines_once(rows):
        out.add_row(f"baseline: {label}", "", "-" if mean is None else f"{mean:.2f} ± {std:.2f}", *[""] * (len(groups) + 2))
    return out


def comparison_figure(rows: list[dict[str, Any]]) -> Figure:
    """Each combination's primary metric (mean, error bar: std over seeds), the reference and the best
    named, the baselines as horizontal lines; in percent."""
    metric, best = rows[0]["metric"], best_combination(rows)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 4))
    means = [r[f"{metric} mean (%)"] for r in rows]
    ax.errorbar(range(len(rows)), means, yerr=[r[f"{metric} std (%)"] for r in rows], fmt="o", capsize=4,
                color="#1b7837", label="head (mean ± std over seeds)")
    labels = [r["combination"] + (" (reference)" if r["combination"] == r["reference"] else "")
              + (" ★" if r["combination"] == best else "") for r in rows]
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    styles = itertools.product(["--", ":", "-."], ["#4d4d4d", "#762a83", "#e08214"])
    for (label, mean, _), (style, colour) in zip(baselines_once(rows), itertools.cycle(styles)):
        if mean is not None:
            ax.axhline(mean, linestyle=style, color=colour, linewidth=1, label=f"baseline: {label}")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"sweep: test {metric}")
    return fig


def write_comparison(rows: list[dict[str, Any]], out: Path) -> None:
    """comparison.csv and comparison.json (the same rows, in percent), comparison.png, and the table."""
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "comparison.csv", buffer.getvalue())
    atomic_write_json(out / "comparison.json", rows)
    save_figure(comparison_figure(rows), out / "comparison.png")
    console.print(comparison_table(rows))
    console.print(f"comparison written to {out / 'comparison.csv'}, {out / 'comparison.json'} and "
                  f"{out / 'comparison.png'}")
