"""The command line as a user meets it: help texts, one-line errors, JSON results."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from processes import run_cli, unprivileged
from rich.console import Console
from typer.main import get_command
from typer.testing import CliRunner

from anim_clip.cli import app
from anim_clip.data.demo import make_demo_data
from anim_clip.ui import RateColumn, progress_bar

def _commands() -> list[str]:
    group = get_command(app)
    names = []
    for name, cmd in group.commands.items():
        names += [f"{name} {sub}" for sub in cmd.commands] if hasattr(cmd, "commands") else [name]
    return names


@pytest.mark.parametrize("command", _commands())
def test_every_option_is_explained(command):
    """Every subcommand has a docstring and every parameter a help text."""
    group = get_command(app)
    cmd = group.commands[command.split()[0]]
    if " " in command:
        cmd = cmd.commands[command.split()[1]]
    assert cmd.help and len(cmd.help) > 20, command
    for param in cmd.params:
        if param.name != "help":
            assert getattr(param, "help", None), f"{command}: option {param.name} has no help"


@pytest.mark.parametrize("command", ["", "cache", "analyze", *_commands()])
def test_help_shows_flags_as_flags(command):
    """Every --help lists every option, a flag without a type (typer printed `<bool>` beside each, as if
    it took a value), and every bool option is a flag."""
    result = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "BOOLEAN" not in result.output, result.output
    cmd = get_command(app)
    for name in command.split():
        cmd = cmd.commands[name]
    for param in cmd.params:
        assert all(opt in result.output for opt in param.opts if opt.startswith("--")), (command, param.name)
        if isinstance(param.default, bool):
            assert getattr(param, "is_flag", False), f"{command}: option {param.name} takes a value"


def test_help_runs():
    out = run_cli("--help").stdout
    for name in ("demo", "make-demo-data", "dataset-info", "describe"):
        assert name in out
    assert "--set" in run_cli("dataset-info", "--help").stdout


@pytest.mark.parametrize("args, said", [
    (["predict", "RUN", "V", "--crops", "2"], "Invalid value for '--crops': '2' is not one of '1', '3'"),
    (["predict", "RUN", "V", "--window", "-1"], "Invalid value for '--window': expected a positive number of seconds"),
    (["eval"], "Missing argument 'run'"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_a_usage_error_is_one_line_naming_the_help(args, said):
    """A bad option or argument is refused as every other bad input is: one line, exit code 2, pointing
    at the command's --help (not typer's boxed usage panel on stderr)."""
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2 and proc.stderr == "", proc.stderr
    [line] = proc.stdout.strip().splitlines()
    assert line.startswith(f"error: {said}") and line.endswith("--help)"), line


def test_bad_input_is_one_line_not_a_traceback(tmp_path):
    proc = run_cli("dataset-info", "ak", "--set", "train.lrr=1", check=False)
    assert proc.returncode == 2
    assert "unknown key 'train.lrr'; did you mean 'train.lr'?" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    bad = tmp_path / "train.csv"
    bad.write_text("path,actions\na.mp4,\n")
    (tmp_path / "test.csv").write_text("path,actions\nb.mp4,Run\n")
    proc = run_cli("dataset-info", "ak", "--set", "data.format=csv", "--set", f"data.annotations={tmp_path}", check=False)
    assert proc.returncode == 2 and f"{bad}:2: a clip needs a path and at least one action" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_dataset_info_writes_json(tmp_path):
    out = tmp_path / "lote.json"
    proc = run_cli("dataset-info", "lote", "--json", str(out))
    summary = json.loads(out.read_text())
    assert summary["actions"] == 21 and summary["species"] == 11
    assert summary["splits"]["train"]["clips"] == 6994 and summary["splits"]["test"]["clips"] == 2997
    assert "6994" in proc.stdout


def test_shipped_demo_config_reads_the_default_demo_folder(tmp_path):
    """`dataset-info demo` reads demo-out/data, where `anim-clip demo` generates it; before that exists it
    says how to make it (it used to fall back to the shipped AK folder and miss AK/train.txt)."""
    proc = run_cli("dataset-info", "demo", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "`anim-clip make-demo-data demo-out/data` generates the demo dataset" in proc.stdout
    make_demo_data(tmp_path / "demo-out" / "data", train_clips=5, test_clips=3, size=32, num_frames=4)
    run_cli("dataset-info", "demo", "--json", "demo.json", cwd=tmp_path)
    splits = json.loads((tmp_path / "demo.json").read_text())["splits"]
    assert (splits["train"]["clips"], splits["test"]["clips"]) == (5, 3)


def test_rate_columns_show_clips_and_frames_per_second():
    """Over the task's whole time: the 10 clips advanced within a millisecond at the end (one batch
    stored at once), which rich's windowed speed reads as thousands of clips/s."""
    with progress_bar("clips", RateColumn("frames", per_item="frames_per_clip"), disable=True) as bar:
        task = bar.add_task("test", total=10, frames_per_clip=8)
        for _ in range(10):
            bar.advance(task)
        bar.tasks[0].finished_time = 4.0
        clips, frames = (c.render(bar.tasks[0]).plain for c in bar.columns if isinstance(c, RateColumn))
    assert clips.split() == ["2.5", "clips/s"] and frames.split() == ["20.0", "frames/s"]


# Every bar of the package, with its widest realistic description and figures.
BARS = {
    "extract": (dict(unit="clips", extra=("frames",)), "train [1/1]", 30000, 250.0),
    "train": (dict(unit="steps"), "epoch 30/30 loss 12.345 lr 1.0e-03", 9999, 999.9),
    "demo": (dict(unit="clips"), "demo clips", 336, 29.0),
    "describe": (dict(unit="classes", per="min"), "describing species", 125, 0.2),
    "predict": (dict(unit="videos"), "predict", 1000, 3.2),
    "predict --window": (dict(unit="videos"), "predict (123456 windows)", 1000, 3.2),
    "pretrain-tiny": (dict(unit="frames"), "rendering captioned frames", 12256, 1234.5),
    "sweep": (dict(unit="runs"), "sweep", 48, 0.1),
}


@pytest.mark.parametrize("name", BARS)
@pytest.mark.parametrize("finished", [False, True])
def test_every_bar_fits_80_columns(name, finished):
    """An 80-column terminal: one line per bar, none longer (a log, ui.LOG_WIDTH wide, has room to spare)."""
    kind, description, total, speed = BARS[name]
    extra = [RateColumn(unit, per_item="per_clip") for unit in kind.get("extra", ())]
    with progress_bar(kind["unit"], *extra, per=kind.get("per", "s"), disable=True) as bar:
        done = total if finished else total // 3
        bar.update(bar.add_task(description, total=total, per_clip=16), completed=done)
        task = bar.tasks[0]
        task.start_time -= done / speed  # as if started that long ago
        task.finished_time = done / speed if finished else None
        out = io.StringIO()
        Console(file=out, width=80, color_system=None).print(bar.get_renderable())
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= 80, "\n".join(lines)
    line = lines[0]
    for rate in [f"{kind['unit']}/{kind.get('per', 's')}", *(f"{u}/s" for u in kind.get("extra", ()))]:
        assert rate in line, line
    assert f"{done}/{total}" in line and ("took " if finished else "ETA ") in line, line


def _checkpoint_commands(checkpoint: Path, tmp_path: Path) -> dict[str, list[str]]:
    """The three commands that read a checkpoint a user hands them (train --resume: the run's last.pt)."""
    return {
        "predict": ["predict", str(checkpoint), str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "predictions")],
        "convert-release": ["convert-release", str(checkpoint), str(tmp_path / "converted.pt")],
        "train --resume": ["train", "demo", "--cache", str(tmp_path / "cache.zarr"), "--out", str(checkpoint.parent),
                           "--resume"],
    }


@pytest.mark.parametrize("command", ["predict", "convert-release", "train --resume"])
@pytest.mark.parametrize("damage", ["empty", "unreadable"])
def test_an_empty_or_unreadable_checkpoint_is_one_line(tmp_path, command, damage):
    checkpoint = tmp_path / "run" / "last.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"" if damage == "empty" else b"PK\x03\x04 a checkpoint nobody may read")
    if damage == "unreadable":
        checkpoint.chmod(0)
    proc = run_cli(*_checkpoint_commands(checkpoint, tmp_path)[command], check=False,
                   wrap=unprivileged() if damage == "unreadable" else None)
    if damage == "unreadable" and command != "train --resume":  # an argument: click checks it is readable
        assert proc.returncode == 2 and f"path '{checkpoint}' is not readable" in proc.stdout.lower(), proc.stdout
    else:
        reason = "empty file (0 bytes)" if damage == "empty" else "Permission denied"
        assert proc.returncode == 2 and f"error: {checkpoint}: {reason}" in proc.stdout, proc.stdout + proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and proc.stderr == "", proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [name for name in os.listdir(checkpoint.parent) if name != ".lock"] == ["last.pt"]  # .lock: train's


def test_a_read_only_output_folder_is_one_line(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    proc = run_cli("dataset-info", "lote", "--json", str(folder / "sub" / "lote.json"), check=False, wrap=unprivileged())
    assert proc.returncode == 2 and f"error: {folder / 'sub' / 'lote.json'}: Permission denied" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr and list(folder.iterdir()) == []
