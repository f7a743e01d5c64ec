"""``anim-clip sweep``: every combination of a grid of config values × seeds, trained on one cache,
then one comparison table (mean ± std over seeds, the baselines in columns beside the head) as CSV
and JSON, in percent.

Runs go to ``OUT/<combination>/seed<k>``; a run whose ``eval.json`` exists is not trained again,
so an interrupted sweep continues where it stopped. Several runs can train at once
(``--parallel``), each in its own process with a share of the CPU threads.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from anim_clip.config import Config, load_config, parse_override
from anim_clip.errors import AnimClipError, ConfigError
from anim_clip.evaluate.baselines import TITLES
from anim_clip.evaluate.report import primary_metric
from anim_clip.io import atomic_write_json, atomic_write_text
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


def _finished(run: SweepRun) -> dict[str, Any] | None:
    path = run.path / "eval.json"
    return json.loads(path.read_text()) if path.exists() else None


def _command(run: SweepRun, config: str, overrides: list[str], cache: Path, allow_incomplete: bool) -> list[str]:
    sets = [a for o in [*overrides, *run.overrides()] for a in ("--set", o)]
    flags = ["--resume"] if (run.path / "last.pt").exists() else []
    flags += ["--allow-incomplete"] if allow_incomplete else []
    return [sys.executable, "-m", "anim_clip", "train", config, "--cache", str(cache), "--out", str(run.path), *flags, *sets]


def run_sweep(config: str, overrides: list[str], grid: list[str], seeds: int, cache: Path, out: Path,
              parallel: int = 1, allow_incomplete: bool = False) -> list[dict[str, Any]]:
    """Train every run not yet finished (on an unfinished cache only if ``allow_incomplete``), then
    write and return the comparison rows."""
    _, runs = plan_sweep(config, overrides, grid, seeds, out)
    todo = [r for r in runs if _finished(r) is None]
    console.print(f"sweep: {len(runs)} runs ({len(runs) - len(todo)} already finished) -> {out}")
    threads = max(1, (os.cpu_count() or 1) // max(parallel, 1))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with progress_bar("runs") as bar:
        task = bar.add_task("sweep", total=len(todo))
        waiting = list(todo)
        active: list[tuple[SweepRun, subprocess.Popen]] = []
        while waiting or active:
            while waiting and len(active) < parallel:
                run = waiting.pop(0)
                run.path.mkdir(parents=True, exist_ok=True)
                log = open(run.path / "train.log", "w")
                active.append((run, subprocess.Popen(_command(run, config, overrides, cache, allow_incomplete), stdout=log,
                                                     stderr=subprocess.STDOUT, env=env)))
            run, proc = active.pop(0)
            if proc.wait() != 0:
                tail = (run.path / "train.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
                raise AnimClipError(f"sweep run {run.path} failed: {tail[0]} (full log: {run.path / 'train.log'})")
            bar.advance(task)
    rows = comparison_rows(runs)
    write_comparison(rows, out)
    return rows


def headline_figures(report: dict[str, Any]) -> dict[str, float | None]:
    """The comparison's columns of one run: the primary metric, the long-tail groups' mAP, and each
    baseline's primary metric (None where an older report has none)."""
    metric, value = primary_metric(report)
    figures = {metric: value, **{f"{g} mAP": v for g, v in report.get("group_mAP", {}).items()}}
    for name in TITLES:
        baseline = report.get("baselines", {}).get(name)
        figures[f"{TITLES[name]} {metric}"] = primary_metric(baseline)[1] if baseline else None
    return figures


def comparison_rows(runs: list[SweepRun]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of the primary metric, the other headline figures and the baselines', per
    combination, in percent (as the tables show them; the keys say so: ``mAP mean (%)``)."""
    rows = []
    for name, group in itertools.groupby(runs, key=lambda r: r.name):
        reports = [_finished(r) for r in group]
        reports = [r for r in reports if r is not None]
        if not reports:
            continue
        figures = [headline_figures(r) for r in reports]
        row: dict[str, Any] = {"combination": name, "seeds": len(reports), "metric": primary_metric(reports[0])[0]}
        for key in figures[0]:
            values = [f.get(key) for f in figures]
            values = [v for v in values if v is not None and not np.isnan(v)]
            row[f"{key} mean (%)"] = 100 * float(np.mean(values)) if values else None
            row[f"{key} std (%)"] = 100 * float(np.std(values)) if values else None
        rows.append(row)
    return rows


def _mean_std(row: dict[str, Any], key: str) -> str:
    mean, std = row[f"{key} mean (%)"], row[f"{key} std (%)"]
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"


def comparison_table(rows: list[dict[str, Any]]) -> Table:
    """The comparison as a person reads it: a row per combination, a column per headline figure."""
    keys = [k.removesuffix(" mean (%)") for k in rows[0] if k.endswith(" mean (%)")]
    return table(f"sweep ({rows[0]['metric']} primary; %, mean ± std over seeds)", ["combination", "seeds", *keys],
                 [[r["combination"], r["seeds"], *[_mean_std(r, k) for k in keys]] for r in rows])


def write_comparison(rows: list[dict[str, Any]], out: Path) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "comparison.csv", buffer.getvalue())
    atomic_write_json(out / "comparison.json", rows)
    console.print(comparison_table(rows))
    console.print(f"comparison written to {out / 'comparison.csv'} and {out / 'comparison.json'}")
