"""A run directory: the resolved config, ``metrics.jsonl``, ``last.pt`` / ``best.pt``, evaluation
JSON and plots. Everything is written atomically or appended line by line, so a killed run leaves
a readable directory that ``--resume`` continues."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anim_clip.config import Config, save_config
from anim_clip.errors import AnimClipError
from anim_clip.io import append_durably, atomic_write_text


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    last = property(lambda self: self.path / "last.pt")
    best = property(lambda self: self.path / "best.pt")
    evaluation = property(lambda self: self.path / "eval.json")
    plots = property(lambda self: self.path / "plots")

    def check(self, resume: bool) -> None:
        """Before any work: refuse to overwrite a run, or to resume one that finished no epoch."""
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
        if epoch == 0:
            self.metrics.unlink(missing_ok=True)
            self.best.unlink(missing_ok=True)
        else:
            self.truncate_after(epoch)
        if changes:
            self.log({"kind": "config_change", "epoch": epoch + 1, "changes": changes})
        save_config(cfg, self.config)

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
    """A run directory (its ``last.pt`` or ``best.pt``) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        chosen = RunDir(path).best if weights == "best" else RunDir(path).last
        if not chosen.exists():
            raise AnimClipError(f"{path}: no {chosen.name} (a finished run has last.pt; best.pt needs train.val_fraction > 0)")
        return chosen
    if not path.exists():
        raise AnimClipError(f"{path}: no such run directory or checkpoint file")
    return path
