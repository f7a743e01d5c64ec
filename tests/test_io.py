"""Atomic writes: whole files, normal permissions, nothing left behind on failure."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from processes import file_size_limit
from safetensors.torch import save_file

from anim_clip.io import append_durably, atomic_write, atomic_write_json, atomic_write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_umask_mode_whoever_writes_them(tmp_path: Path):
    umask = os.umask(0o022)
    try:
        text = atomic_write_json(tmp_path / "a.json", {"x": 1})
        weights = atomic_write(tmp_path / "w.safetensors", lambda tmp: save_file({"w": torch.ones(2)}, str(tmp)))
    finally:
        os.umask(umask)
    assert _mode(text) == _mode(weights) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "w.safetensors"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    path = atomic_write_json(tmp_path / "a.json", {"x": 1})

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken)
    assert path.read_text().strip().startswith("{") and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_write_the_disk_refuses_names_the_file_and_leaves_the_old_one(tmp_path: Path):
    path = atomic_write_text(tmp_path / "a.txt", "old\n")
    with file_size_limit(4096), pytest.raises(OSError) as err:  # EFBIG, as ENOSPC on a full disk
        atomic_write_text(path, "x" * 10_000)
    assert err.value.errno == errno.EFBIG and err.value.filename == str(path)  # not the temporary's name
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_append_is_cut_back_off(tmp_path: Path):
    path = tmp_path / "log.jsonl"
    append_durably(path, "one\n")
    with file_size_limit(4096), pytest.raises(OSError) as err:
        append_durably(path, "two " * 2000 + "\n")
    assert err.value.errno == errno.EFBIG and err.value.filename == str(path)
    assert path.read_text() == "one\n"


def _saving(path: Path) -> subprocess.Popen:
    """A real process inside ``atomic_write(path)``: it has written its temporary and waits (as in
    the middle of a long checkpoint save) until killed."""
    code = ("import sys, time; from anim_clip.io import atomic_write; "
            "atomic_write(sys.argv[1], lambda tmp: (tmp.write_text('half'), print(tmp, flush=True), time.sleep(300)))")
    return subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def test_the_next_write_removes_a_killed_saves_temporary_but_not_a_live_ones(tmp_path: Path):
    target = tmp_path / "last.pt"
    killed, live = _saving(target), _saving(target)
    try:
        killed_tmp, live_tmp = Path(killed.stdout.readline().strip()), Path(live.stdout.readline().strip())
        assert killed_tmp.name.startswith(".last.pt.") and killed_tmp.exists() and live_tmp.exists()
        killed.kill()  # SIGKILL: no finally runs, the temporary stays
        killed.wait()
        assert killed_tmp.exists()
        atomic_write_text(tmp_path / "other.json", "{}")  # another file's write leaves it
        assert killed_tmp.exists()
        atomic_write_text(target, "whole")
        assert not killed_tmp.exists() and live_tmp.read_text() == "half"  # the live writer's is kept
    finally:
        live.kill()
        live.wait()
    atomic_write_text(target, "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "other.json"]
