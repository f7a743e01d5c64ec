"""Bad values and faults as a user meets them: numbers out of range on the command line and in
configs (refused before anything is written), a run directory two trainings want, SIGTERM mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import ROOT, run_cli
from typer.testing import CliRunner

from anim_clip.cache.extract import extract
from anim_clip.cli import app
from anim_clip.demo import demo_config
from anim_clip.models.checkpoint import load_checkpoint

OVERRIDES = ["backbone.pretrained=null", "sampling.num_frames=4", "sampling.train_views=1", "train.batch_size=4",
             "train.accumulation=1", "train.warmup_epochs=0"]


@pytest.mark.parametrize("command, option, value, message", [
    ("predict", "--window", "nan", "expected a positive number of seconds, got nan"),
    ("predict", "--window", "-3", "expected a positive number of seconds, got -3.0"),
    ("predict", "--stride", "inf", "expected a positive number of seconds, got inf"),
    ("predict", "--top-k", "0", "Input should be greater than or equal to 1"),
    ("predict", "--clips", "0", "Input should be greater than or equal to 1"),
    ("extract", "--workers", "0", "Input should be greater than or equal to 1"),
    ("describe", "--timeout", "nan", "expected a positive number of seconds, got nan"),
    ("describe", "-k", "0", "Input should be greater than or equal to 1"),
    ("sweep", "--seeds", "0", "Input should be greater than or equal to 1"),
    ("sweep", "--parallel", "-1", "Input should be greater than or equal to 1"),
    ("make-demo-data", "--train-clips", "0", "Input should be greater than or equal to 1"),
    ("pretrain-tiny", "--steps", "0", "Input should be greater than or equal to 1"),
])
def test_numeric_options_out_of_range_are_usage_errors(tmp_path, command, option, value, message):
    video, ckpt = tmp_path / "clip.mp4", tmp_path / "last.pt"
    video.write_bytes(b"x")
    ckpt.write_bytes(b"x")
    args = {"predict": [str(ckpt), str(video)], "extract": ["demo", "--out", str(tmp_path / "c.zarr")],
            "describe": ["lote", "--out", str(tmp_path / "d"), "--base-url", "http://127.0.0.1:9/v1", "--model", "m"],
            "sweep": ["demo", "--cache", str(tmp_path / "c.zarr"), "--out", str(tmp_path / "s")],
            "make-demo-data": [str(tmp_path / "data")], "pretrain-tiny": ["--out", str(tmp_path / "w.safetensors")]}
    result = CliRunner().invoke(app, [command, *args[command], option, value], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and message in result.output and option in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "last.pt"]  # nothing written


@pytest.mark.parametrize("argv, choices", [
    (["eval", "RUN", "--cache", "C", "--weights", "bset"], "'last', 'best'"),
    (["eval", "RUN", "--cache", "C", "--split", "valid"], "'test', 'train', 'val'"),
    (["train", "demo", "--out", "R", "--mode", "e2d"], "'cached', 'e2e'"),
    (["describe", "lote", "--out", "D", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--kind", "action"],
     "'actions', 'species', 'both'"),
    (["predict", "RUN", "V", "--weights", "bset"], "'last', 'best'"),
    (["predict", "RUN", "V", "--crops", "2"], "'1', '3'"),
    (["predict", "RUN", "V", "--decoder", "ffmpeg"], "'decord', 'pyav', 'torchcodec', 'torchcodec-cuda'"),
    (["analyze", "build", "RUN", "--index", "lsh"], "'flat', 'ivf', 'hnsw'"),
    (["analyze", "neighbors", "RUN", "walk", "--weights", "bset"], "'last', 'best'"),
    (["analyze", "confusions", "RUN", "--cache", "C", "--split", "valid"], "'test', 'train', 'val'"),
    (["analyze", "neighbors", "RUN", "walk", "-k", "0"], "greater than or equal to 1"),
    (["analyze", "confusable", "RUN", "--top", "0"], "greater than or equal to 1"),
    (["analyze", "map", "RUN", "--clusters", "0"], "greater than or equal to 1"),
])
def test_a_bad_choice_is_refused_by_the_command_line_listing_the_choices(tmp_path, argv, choices):
    """typer checks choices and numbers itself: a usage error naming the option and what it takes,
    before anything is opened or written (the paths given do not even exist)."""
    result = CliRunner().invoke(app, [str(tmp_path / a) if a.isupper() else a for a in argv], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and choices in result.output and argv[-2] in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_the_command_lines_choices_are_the_librarys():
    """The CLI spells a few of the library's choices so that --help loads neither torch nor faiss."""
    from typing import get_args

    from anim_clip.analysis.index import INDEX_KINDS
    from anim_clip.cli.analyze import IndexKind
    from anim_clip.cli.options import Weights
    from anim_clip.runtime.rundir import WEIGHTS

    assert get_args(IndexKind) == INDEX_KINDS and get_args(Weights) == WEIGHTS


def test_the_library_refuses_a_weights_choice_it_does_not_know(tmp_path):
    """A Python caller gets the same refusal, rather than last.pt for any word but best."""
    from anim_clip.errors import AnimClipError
    from anim_clip.runtime.rundir import resolve_checkpoint

    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(AnimClipError, match="weights must be last or best, not 'bset'"):
        resolve_checkpoint(tmp_path, "bset")


@pytest.mark.parametrize("command", ["train", "extract"])
def test_a_config_number_out_of_range_is_one_line_before_anything_is_written(tmp_path, command):
    out = tmp_path / ("run" if command == "train" else "cache.zarr")
    bad = {"train": "train.lr=-0.001", "extract": "sampling.num_frames=0"}[command]
    args = ["--cache", str(tmp_path / "cache.zarr")] if command == "train" else []
    proc = run_cli(command, "demo", "--out", str(out), *args, "--set", bad, check=False)
    key, value, allowed = {"train": ("train.lr", -0.001, ">= 0"), "extract": ("sampling.num_frames", 0, ">= 1")}[command]
    assert proc.returncode == 2 and proc.stdout.strip().splitlines() == [
        f"error: '{key}': {value} is out of range; it must be {allowed}"], proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def data(demo_data) -> Path:
    return demo_data(train_clips=8, test_clips=4, num_frames=8, size=64, seed=3)  # read only here


@pytest.fixture(scope="module")
def cache(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "cache.zarr"
    extract(demo_config(data, OVERRIDES), out, progress=False)
    return out


def _train_args(data: Path, cache: Path, out: Path, epochs: int) -> list[str]:
    sets = [*OVERRIDES, f"train.epochs={epochs}", f"data.annotations={data}", f"data.root={data / 'videos'}"]
    return ["train", "demo", "--cache", str(cache), "--out", str(out), *(a for s in sets for a in ("--set", s))]


def _epochs_logged(run: Path) -> int:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    return sum(json.loads(line).get("kind") == "epoch" for line in lines if line.endswith("}"))


def test_a_run_directory_in_use_is_refused_and_sigterm_keeps_the_last_epoch(data: Path, cache: Path, tmp_path: Path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "anim_clip", *_train_args(data, cache, run, 10_000)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 300
        while first.poll() is None and _epochs_logged(run) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[0]
        second = run_cli(*_train_args(data, cache, run, 2), check=False)  # would interleave metrics, mix files
        assert second.returncode == 2 and second.stdout.strip().splitlines() == [
            f"error: {run} is in use by another run (process {first.pid}); wait for it to end, or choose another --out"]
        first.send_signal(signal.SIGTERM)
        output = first.communicate(timeout=120)[0]
    finally:
        first.kill()
    epoch = load_checkpoint(run / "last.pt").extra["train_state"]["epoch"]
    assert first.returncode == 143 and "Traceback" not in output
    kept = f"interrupted (SIGTERM): {run / 'last.pt'} holds epoch {epoch}; continue with --resume"
    assert output.strip().splitlines()[-1] == kept, output
    assert epoch >= 1 and _epochs_logged(run) in (epoch, epoch + 1)  # an epoch's line comes just before its last.pt
    again = run_cli(*_train_args(data, cache, run, 2), check=False)  # the OS dropped the lock with the process
    assert again.returncode == 2 and "already holds a run; pass --resume" in again.stdout
