"""A run directory: the resolved config, ``metrics.jsonl``, ``last.pt`` / ``best.pt``, evaluation
JSON and plots. Everything is written atomically or appended line by line, so a killed run leaves
a readable directory that ``--resume`` continues. A training run holds the directory's lock
(``.lock``) for its life, so a second ``train`` into it is refused instead of mixing files."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

from anim_clip.config import Config, save_config
from anim_clip.errors import AnimClipError
from anim_clip.io import append_durably, atomic_write_text
from anim_clip.runtime.distributed import default_shard

WEIGHTS = ("last", "best")  # which checkpoint of a run directory a command takes (the CLI's options.Weights)

class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: IO[str] | None = None

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    last = property(lambda self: self.path / "last.pt")
    best = property(lambda self: self.path / "best.pt")
    evaluation = property(lambda self: self.path / "eval.json")
    plots = property(lambda self: self.path / "plots")
    lock_file = property(lambda self: self.path / ".lock")

    def check(self, resume: bool) -> None:
        """Before any work: refuse a directory another process trains in, to overwrite a run, or
        to resume one that finished no epoch. An existing directory is locked from here on."""
        if self.path.is_dir():
            self._claim()
        if self.last.exists() and not resume:
            raise AnimClipError(f"{self.path} already holds a run; pass --resume to continue it, or choose another --out")
        if resume and not self.last.exists():
            raise AnimClipError(f"{self.path}: nothing to resume (no last.pt); drop --resume to start a new run")

    def start(self, cfg: Config, epoch: int, changes: dict[str, list[Any]]) -> None:
        """Write ``config.yaml`` once the run is set up (a run that fails before leaves nothing).

        A new run (``epoch`` 0) drops the log and ``best.pt`` of one killed before its first epoch
        ended; a resumed one forgets the log of epochs it redoes and records ``changes`` (saved
        vs now, allowed by ``--allow-config-change``) under the first epoch they apply to.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._claim()
        if epoch == 0:
            self.metrics.unlink(missing_ok=True)
            self.best.unlink(missing_ok=True)
        else:
            self.truncate_after(epoch)
        if changes:
            self.log({"kind": "config_change", "epoch": epoch + 1, "changes": changes})
        save_config(cfg, self.config)

    def _claim(self) -> None:
        """Hold the directory's lock while this RunDir lives (the writer, rank 0, only): two runs
        into one directory would interleave their metrics and overwrite each other's checkpoints.
        An OS lock (``fcntl``), so a killed run leaves none behind; it belongs to the process,
        which may claim again (a resume in the same Python session)."""
        if self._lock is not None or default_shard()[0] != 0:
            return
        try:
            handle = open(self.lock_file, "a+", encoding="utf-8")
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EROFS):  # no run can write here: its first write says so
                return
            raise
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise OSError(e.errno, e.strerror, str(self.lock_file)) from None
            raise AnimClipError(f"{self.path} is in use by another run (process {holder or '?'}); wait for it to "
                                "end, or choose another --out") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line and make it durable."""
        append_durably(self.metrics, json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        out = []
        for line in self.metrics.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return out

    def truncate_after(self, epoch: int) -> None:
        """On resume, forget log lines of epochs that will be redone."""
        kept = [r for r in self.records() if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))


def resolve_checkpoint(path: str | Path, weights: str) -> Path:
    """A run directory (its ``last.pt`` or ``best.pt``, as ``weights`` says) or a checkpoint file."""
    if weights not in WEIGHTS:  # anything else would silently mean last.pt
        raise AnimClipError(f"weights must be {' or '.join(WEIGHTS)}, not {weights!r}")
    path = Path(path)
    if path.is_dir():
        chosen = RunDir(path).best if weights == "best" else RunDir(path).last
        if not chosen.exists():
            raise AnimClipError(f"{path}: no {chosen.name} (a finished run has last.pt; best.pt needs train.val_fraction > 0)")
        return chosen
    if not path.exists():
        raise AnimClipError(f"{path}: no such run directory or checkpoint file")
    return path
