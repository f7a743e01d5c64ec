"""``anim-clip sweep`` on a real cache: every cell's eval.json is what a lone ``train`` with the same
settings and thread count writes (serial and ``--parallel``), the baselines are fitted once and
stored in the cache for every run and ``eval``, an interrupted cell resumes alone, and the
comparison reads at a glance (names whole, baselines once, the best marked, paired differences)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from processes import run_cli, unprivileged
from test_ui import columns, squeezed

from anim_clip.cache.inspect import verify_cache
from anim_clip.demo import demo_config
from anim_clip.errors import AnimClipError
from anim_clip.evaluate.baselines import STORE
from anim_clip.evaluate.cached import evaluate_checkpoint
from anim_clip.models.checkpoint import load_checkpoint
from anim_clip.train.engine import train
from anim_clip.train.sweep import cell_threads, comparison_figure, comparison_table, run_sweep

OVERRIDES = ["backbone.pretrained=null", "sampling.num_frames=4", "sampling.train_views=2", "train.batch_size=4",
             "train.epochs=2", "train.warmup_epochs=1", "train.log_every=1"]
GRID = ["model.refine=on,off"]
CELLS = [("refine=on", "model.refine=on"), ("refine=off", "model.refine=off")]
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def data(demo_data) -> Path:
    return demo_data(train_clips=20, test_clips=8, num_frames=16, size=64, seed=5)  # test_train's too


@pytest.fixture
def cache(data: Path, demo_cache, tmp_path: Path) -> Path:
    """A fresh copy of the session's cache per test: its baseline store starts empty."""
    return Path(shutil.copytree(demo_cache(data, OVERRIDES), tmp_path / "cache.zarr"))


def overrides(data: Path) -> list[str]:
    return [*OVERRIDES, f"data.annotations={data}", f"data.root={data / 'videos'}"]


def lone_runs(data: Path, cache: Path, out: Path, threads: int) -> dict[tuple[str, int], dict]:
    """eval.json of a lone `train` per cell, computed with ``threads`` threads (CPU sums depend on them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reports = {}
        for name, setting in CELLS:
            for seed in SEEDS:
                run = out / name / f"seed{seed}"
                train(demo_config(data, [*OVERRIDES, setting, f"train.seed={seed}"]), cache=cache, out=run, progress=False)
                reports[name, seed] = json.loads((run / "eval.json").read_text())
        return reports
    finally:
        torch.set_num_threads(before)


def cell_reports(out: Path) -> dict[tuple[str, int], dict]:
    return {(name, seed): json.loads((out / name / f"seed{seed}" / "eval.json").read_text())
            for name, _ in CELLS for seed in SEEDS}


def stored_baselines(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / STORE).glob("*.npz"))


@pytest.mark.parametrize("parallel", [1, 2])
def test_every_cell_reports_what_a_lone_train_reports(data: Path, cache: Path, tmp_path: Path, parallel: int):
    """In the order cells run (one worker) and side by side (two), with the worker's thread count."""
    alone = lone_runs(data, cache, tmp_path / "alone", cell_threads(parallel))
    assert len(stored_baselines(cache)) == 1  # the first run fitted, the others read
    rows = run_sweep("demo", overrides(data), GRID, len(SEEDS), cache, tmp_path / "sweep", parallel=parallel)
    assert cell_reports(tmp_path / "sweep") == alone
    assert len(stored_baselines(cache)) == 1
    assert [r["combination"] for r in rows] == ["refine=on", "refine=off"] and all(r["seeds"] == 2 for r in rows)
    metric = rows[0]["metric"]
    on, off = ([alone[name, s][metric] for s in SEEDS] for name, _ in CELLS)
    assert rows[0][f"{metric} mean (%)"] == pytest.approx(100 * np.mean(on))
    assert rows[0][f"{metric} std (%)"] == pytest.approx(100 * np.std(on))
    differences = np.subtract(off, on)  # paired by seed, against the first combination
    assert rows[1][f"{metric} difference to reference mean (%)"] == pytest.approx(100 * np.mean(differences))
    assert rows[1][f"{metric} difference to reference std (%)"] == pytest.approx(100 * np.std(differences))
    for name, title in (("frequency", "frequency"), ("zero_shot", "zero-shot"), ("linear_probe", "linear probe")):
        baseline = alone["refine=off", 0]["baselines"][name][metric]
        assert rows[1][f"{title} {metric} mean (%)"] == pytest.approx(100 * baseline)
        assert rows[1][f"{title} {metric} std (%)"] == 0  # one cache, one split: the same baseline for every seed
    assert load_checkpoint(tmp_path / "sweep" / "refine=off" / "seed1" / "last.pt").config.model.refine is False
    assert "epoch 2/2" in (tmp_path / "sweep" / "refine=on" / "seed0" / "train.log").read_text()
    for name in ("comparison.csv", "comparison.json", "comparison.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0


def test_finished_cells_are_kept_and_eval_reads_the_stored_baselines(data: Path, cache: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    run_sweep("demo", overrides(data), GRID, 1, cache, out)
    stamp = (out / "refine=on" / "seed0" / "eval.json").stat().st_mtime_ns
    run_sweep("demo", overrides(data), GRID, 1, cache, out, reference="refine=off")
    assert (out / "refine=on" / "seed0" / "eval.json").stat().st_mtime_ns == stamp  # not retrained
    assert json.loads((out / "comparison.json").read_text())[0]["reference"] == "refine=off"
    stored = cache / STORE / stored_baselines(cache)[0]
    stored_at = stored.stat().st_mtime_ns
    evaluate_checkpoint(out / "refine=on" / "seed0", cache, out=tmp_path / "eval")
    again = json.loads((tmp_path / "eval" / "eval.json").read_text())["baselines"]  # NaN group figures compare as JSON's
    assert again == json.loads((out / "refine=on" / "seed0" / "eval.json").read_text())["baselines"]
    assert stored_baselines(cache) == [stored.name] and stored.stat().st_mtime_ns == stored_at
    assert verify_cache(cache) == []  # the store is no part of the features: the cache stays sound
    with pytest.raises(AnimClipError, match=r"--reference 'refine=maybe' is no combination of this sweep; choose one "
                                            r"of refine=on, refine=off"):
        run_sweep("demo", overrides(data), GRID, 1, cache, out, reference="refine=maybe")


def test_other_baseline_settings_are_stored_apart(data: Path, cache: Path, tmp_path: Path):
    """zero-shot scores depend on eval.scores: another value is another key, fitted and stored beside."""
    for i, scores in enumerate(("softmax", "sigmoid")):
        train(demo_config(data, [*OVERRIDES, "train.epochs=1", f"eval.scores={scores}"]), cache=cache,
              out=tmp_path / f"run{i}", progress=False)
    first, second = (json.loads((tmp_path / f"run{i}" / "eval.json").read_text())["baselines"] for i in (0, 1))
    assert len(stored_baselines(cache)) == 2
    assert first["linear_probe"] == second["linear_probe"] and first["zero_shot"] != second["zero_shot"]


def test_a_cell_killed_mid_way_resumes_alone(data: Path, cache: Path, tmp_path: Path):
    out, alone = tmp_path / "sweep", tmp_path / "alone"
    command = [sys.executable, "-m", "anim_clip", "sweep", "demo", "--cache", str(cache), "--out", str(out),
               "--grid", "model.refine=on,off", *[a for o in [*overrides(data), "train.epochs=6"] for a in ("--set", o)]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    second = out / "refine=off" / "seed0"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        lines = (second / "metrics.jsonl").read_text().splitlines() if (second / "metrics.jsonl").exists() else []
        if sum('"kind": "epoch"' in line for line in lines) >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker
    proc.wait()
    first = out / "refine=on" / "seed0" / "eval.json"
    done = load_checkpoint(second / "last.pt").extra["train_state"]["epoch"]
    assert first.exists() and 1 <= done < 6, f"could not kill the second cell mid-run (epoch {done})"
    stamp = first.stat().st_mtime_ns
    assert subprocess.run(command, capture_output=True, env=env, timeout=600).returncode == 0
    assert first.stat().st_mtime_ns == stamp
    records = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3, 4, 5, 6]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep's worker computed
    try:
        train(demo_config(data, [*OVERRIDES, "train.epochs=6", "model.refine=off"]), cache=cache, out=alone,
              progress=False)
    finally:
        torch.set_num_threads(threads)
    a, b = load_checkpoint(alone / "last.pt"), load_checkpoint(second / "last.pt")
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)


def rendered(rows: list[dict], width: int = 120) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(comparison_table(rows))
    return out.getvalue().splitlines()


def row(name: str, mean: float, difference: float, zero_shot: float) -> dict:
    figures = {"mAP": (mean, 1.0), "mAP difference to reference": (difference, 0.5), "head mAP": (mean, 2.0),
               "frequency mAP": (10.0, 0.0), "zero-shot mAP": (zero_shot, 0.0), "linear probe mAP": (40.0, 0.0)}
    out = {"combination": name, "seeds": 2, "metric": "mAP", "reference": "refine=on,template=a_long_template_name"}
    for key, (m, s) in figures.items():
        out |= {f"{key} mean (%)": m, f"{key} std (%)": s}
    return out


def test_the_table_names_every_combination_marks_the_best_and_shows_baselines_once():
    rows = [row("refine=on,template=a_long_template_name", 30.0, 0.0, 20.0),
            row("refine=off,template=a_long_template_name", 35.5, 5.5, 20.0)]
    lines = rendered(rows)
    text = "\n".join(lines)
    head, cells = columns(text)
    assert head == ["combination", "seeds", "mAP", "ΔmAPvsreference", "headmAP", "best"], text
    assert cells[0].startswith(squeezed("".join(r["combination"] for r in rows))), text  # whole, never cut
    assert "…" not in text and squeezed("the reference, refine=on,template=a_long_template_name,") in squeezed(text)
    body = [line for line in lines if line.startswith("│")]
    assert "reference" in body[0] and "+5.50 ± 0.50" in body[1]
    best = next(line for line in body if "★" in line)
    assert "refine=off,template=a_long_templat" in best and "35.50 ± 1.00" in best
    for title, value in (("frequency", "10.00 ± 0.00"), ("zero-shot", "20.00 ± 0.00"), ("linear probe", "40.00 ± 0.00")):
        assert [line for line in body if f"baseline: {title}" in line and value in line], text  # once, not a column
    assert text.count("20.00 ± 0.00") == 1
    rows[1]["zero-shot mAP mean (%)"] = 25.0  # another setting of the zero-shot baseline: named per combination
    text = "\n".join(rendered(rows, 200))
    assert "baseline: zero-shot (refine=on,template=a_long_template_name)" in text
    assert "baseline: zero-shot (refine=off,template=a_long_template_name)" in text and "25.00 ± 0.00" in text
    ax = comparison_figure(rows).axes[0]
    assert ax.get_ylabel() == "mAP (%)" and [t.get_text() for t in ax.get_xticklabels()] == [
        "refine=on,template=a_long_template_name (reference)", "refine=off,template=a_long_template_name ★"]
    assert sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_label().startswith("baseline")) == [
        10.0, 20.0, 25.0, 40.0]


def test_a_failing_run_stops_the_sweep_in_one_line_naming_its_log(data: Path, cache: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    failed = out / "accumulation=4096" / "seed0"  # more micro-batches a step than the cache has clips
    with pytest.raises(AnimClipError, match=rf"sweep run {failed} failed: .*lower train.accumulation.* "
                                            rf"\(full log: {failed / 'train.log'}\)"):
        run_sweep("demo", [*overrides(data), "train.epochs=1"], ["train.accumulation=4096"], 1, cache, out)
    assert "lower train.accumulation" in (failed / "train.log").read_text()


def test_a_cache_that_cannot_be_written_still_gets_its_baselines(data: Path, cache: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(demo_config(data, [*OVERRIDES, "train.epochs=1"]), cache=cache, out=run, progress=False)
    shutil.rmtree(cache / STORE)
    for folder in (cache, *(p for p in cache.rglob("*") if p.is_dir())):
        folder.chmod(0o555)
    proc = run_cli("eval", str(run), "--cache", str(cache), "--out", str(tmp_path / "eval"), wrap=unprivileged())
    assert f"baselines not stored in {cache} (Permission denied): computed for this report only" in " ".join(
        proc.stdout.split()), proc.stdout
    again = json.loads((tmp_path / "eval" / "eval.json").read_text())["baselines"]
    assert again == json.loads((run / "eval.json").read_text())["baselines"] and not (cache / STORE).exists()
