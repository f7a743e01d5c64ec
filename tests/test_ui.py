"""What a person reads off a terminal or a log: every table keeps every character of every name and
header at any width (wrapped, never cut with "…"), and every figure says its unit (percent) in CSV
headers and on plot axes."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from anim_clip.cache.reader import FeatureCache
from anim_clip.config import EvalConfig
from anim_clip.data.demo import make_demo_data
from anim_clip.evaluate.plots import group_figure, per_class_ap_figure, training_curves_figure
from anim_clip.evaluate.report import EvalContext, evaluation_report
from anim_clip.io import atomic_write_json
from anim_clip.train.sweep import SweepRun, comparison_rows, comparison_table, write_comparison
from anim_clip.ui import LOG_WIDTH

ROOT = Path(__file__).resolve().parents[1]
EXTRACT_HEADERS = ["split", "clips", "done before", "extracted", "decoded by", "failed", "failure reasons", "MB written",
                   "clips/s", "frames/s"]


def columns(rendered: str) -> tuple[list[str], list[str]]:
    """The header and the body text of each column of the first table in ``rendered``, each cell's
    wrapped pieces joined, whitespace left out (a wrap may break a line at a space or within a word)."""
    lines = rendered.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┏"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    head: list[str] = []
    body: list[str] = []
    for line in lines[start:end]:
        for bar, part in (("┃", head), ("│", body)):
            if line.startswith(bar):
                cells = line.split(bar)[1:-1]
                part.extend([""] * (len(cells) - len(part)))
                for i, cell in enumerate(cells):
                    part[i] += squeezed(cell)
    return head, body


def squeezed(text: object) -> str:
    return re.sub(r"\s", "", str(text))


def test_the_extract_summary_in_a_log_keeps_every_header_and_failure_reason(tmp_path: Path):
    """`anim-clip extract > log` (no terminal, no COLUMNS): the summary is LOG_WIDTH wide, its long
    failure reasons wrap, and no header or cell loses a character (at rich's 80 columns they were cut)."""
    data = tmp_path / "data"
    make_demo_data(data, train_clips=4, test_clips=2, num_frames=8, size=32, seed=1)
    (data / "videos" / "train00001.mp4").unlink()
    broken = data / "videos" / "train00002.mp4"
    broken.write_bytes(broken.read_bytes()[:300])  # the header survives, the frames do not
    out, log = tmp_path / "cache.zarr", tmp_path / "extract.log"
    overrides = ["backbone.pretrained=null", "sampling.train_views=1", "sampling.num_frames=2",
                 f"data.annotations={data}", f"data.root={data / 'videos'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    with log.open("w") as stdout:
        subprocess.run([sys.executable, "-m", "anim_clip", "extract", "demo", "--out", str(out), "--split", "train",
                        "--workers", "1", *[a for o in overrides for a in ("--set", o)]],
                       stdout=stdout, stderr=subprocess.STDOUT, env=env, timeout=300, check=True)
    text = log.read_text()
    head, body = columns(text)
    assert head == [squeezed(h) for h in EXTRACT_HEADERS], text
    errors = sorted(e for e in FeatureCache(out).split("train").errors if e)
    assert len(errors) == 2 and "file not found" in errors
    for error in errors:
        assert squeezed(error) in body[EXTRACT_HEADERS.index("failure reasons")], text
    assert body[:2] == ["train", "4"] and "…" not in text
    table = [line for line in text.splitlines() if line[:1] in ("┏", "┃", "┡", "│", "└")]
    assert max(map(len, table)) == LOG_WIDTH, text  # as wide as a log table is, no wider


@pytest.fixture
def sweep(tmp_path: Path) -> list[SweepRun]:
    """Two combinations of long names × two seeds, each run's eval.json a real report of random scores."""
    rng = np.random.default_rng(0)
    actions = [f"action number {i} with a long name" for i in range(6)]
    ctx = EvalContext(actions=actions, train_counts=np.array([40, 30, 12, 9, 3, 2]),
                      can_perform=np.ones((2, 6), bool), multilabel=True)
    runs = []
    for combination in ((("model.refine", "on"), ("text.template", "a_video_of_a_{species}_doing_{action}")),
                        (("model.refine", "off"), ("text.template", "{action}"))):
        for seed in (0, 1):
            run = SweepRun(combination, seed, Path())
            run = replace(run, path=tmp_path / run.name / f"seed{seed}")
            targets = (rng.random((30, 6)) < 0.3).astype(float)
            targets[np.arange(30), rng.integers(0, 6, 30)] = 1
            report = evaluation_report(rng.random((30, 6)), targets, np.eye(2)[rng.integers(0, 2, 30)], ctx,
                                       EvalConfig(head_min=20, tail_max=5))
            atomic_write_json(run.path / "eval.json", report)
            runs.append(run)
    return runs


@pytest.mark.parametrize("width", [60, 80, LOG_WIDTH])
def test_the_sweep_comparison_keeps_every_name_at_any_width(sweep: list[SweepRun], width: int):
    rows = comparison_rows(sweep)
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(comparison_table(rows))
    text = out.getvalue()
    assert squeezed(f"sweep: test {rows[0]['metric']} (%), mean ± std over seeds") in squeezed(text)
    head, body = columns(text)
    assert head == [squeezed(h) for h in ["combination", "seeds", "mAP", "Δ mAP vs reference", "head mAP",
                                          "middle mAP", "tail mAP", "best"]], text
    assert body[0].startswith(squeezed("".join(r["combination"] for r in rows))), text  # then the baselines, named
    assert "…" not in text and max(map(len, text.splitlines())) <= width


def test_comparison_csv_and_json_are_in_percent_and_say_so(sweep: list[SweepRun], tmp_path: Path):
    write_comparison(comparison_rows(sweep), tmp_path)
    with (tmp_path / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    figures = [k for k in rows[0] if k not in ("combination", "seeds", "metric", "reference")]
    assert figures and all(k.endswith(" mean (%)") or k.endswith(" std (%)") for k in figures), figures
    reports = [json.loads((run.path / "eval.json").read_text()) for run in sweep[:2]]
    assert all(r["unit"] == "fraction" for r in reports)
    assert float(rows[0]["mAP mean (%)"]) == pytest.approx(100 * np.mean([r["mAP"] for r in reports]))
    assert json.loads((tmp_path / "comparison.json").read_text())[0]["mAP std (%)"] == pytest.approx(
        100 * np.std([r["mAP"] for r in reports]))


def test_plot_axes_are_in_percent_and_say_so(sweep: list[SweepRun]):
    report = json.loads((sweep[0].path / "eval.json").read_text())
    per_class = per_class_ap_figure(report, np.array([40, 30, 12, 9, 3, 2])).axes[0]
    assert per_class.get_ylabel() == "average precision (%)" and per_class.get_ylim() == (0, 100)
    heights = sorted(p.get_height() for p in per_class.patches)
    assert heights == pytest.approx(sorted(100 * v for v in report["per_class_ap"].values() if v is not None))
    groups = group_figure(report).axes[0]
    assert groups.get_ylabel() == "mAP (%)" and groups.get_ylim() == (0, 100)
    assert groups.lines[0].get_ydata()[0] == pytest.approx(100 * report["mAP"])
    records = [{"kind": "step", "step": 1, "lr": 1e-3},
               {"kind": "epoch", "epoch": 1, "loss": 2.0, "val_metric": 0.25, "val_metric_name": "val mAP"}]
    curves = training_curves_figure(records).axes[2]
    assert curves.get_ylabel() == "val mAP (%)" and list(curves.lines[0].get_ydata()) == [25.0]
