"""The command line as a user meets it: help texts, one-line errors, JSON results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from processes import run_cli, unprivileged
from typer.main import get_command

from anim_clip.cli import app
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


def test_help_runs():
    out = run_cli("--help").stdout
    for name in ("demo", "make-demo-data", "dataset-info", "describe"):
        assert name in out
    assert "--set" in run_cli("dataset-info", "--help").stdout


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


def test_rate_columns_show_clips_and_frames_per_second():
    with progress_bar("clips", RateColumn("frames", per_item="frames_per_clip"), disable=True) as bar:
        bar.add_task("test", total=10, frames_per_clip=8)
        task = bar.tasks[0]
        task.finished_speed = 2.5
        clips, frames = (c.render(task).plain for c in bar.columns if isinstance(c, RateColumn))
    assert clips.split() == ["2.5", "clips/s"] and frames.split() == ["20.0", "frames/s"]


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
        assert proc.returncode == 2 and f"path '{checkpoint}' is not readable" in proc.stderr, proc.stderr
    else:
        reason = "empty file (0 bytes)" if damage == "empty" else "Permission denied"
        assert proc.returncode == 2 and f"error: {checkpoint}: {reason}" in proc.stdout, proc.stdout + proc.stderr
        assert len(proc.stdout.strip().splitlines()) == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and os.listdir(checkpoint.parent) == ["last.pt"]


def test_a_read_only_output_folder_is_one_line(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    proc = run_cli("dataset-info", "lote", "--json", str(folder / "sub" / "lote.json"), check=False, wrap=unprivileged())
    assert proc.returncode == 2 and f"error: {folder / 'sub' / 'lote.json'}: Permission denied" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr and list(folder.iterdir()) == []
