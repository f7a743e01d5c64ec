"""A run directory: the resolved config, ``metrics.jsonl``, ``last.pt`` / ``best.pt``, evaluation
JSON and plots. Everything is written atomically or appended line by line, so a killed run leaves
a readable directory that ``--resume`` continues."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from anim_clip.config import Config, save_config
from anim_clip.errors import AnimClipError


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    last = property(lambda self: self.path / "last.pt")
    best = property(lambda self: self.path / "best.pt")
    evaluation = property(lambda self: self.path / "eval.json")
    plots = property(lambda self: self.path / "plots")

    def start(self, cfg: Config, resume: bool) -> None:
        """Create the directory; refuse to overwrite a run unless resuming it."""
        if self.last.exists() and not resume:
            raise AnimClipError(f"{self.path} already holds a run; pass --resume to continue it, or choose another --out")
        if resume and not self.last.exists():
            raise AnimClipError(f"{self.path}: nothing to resume (no last.pt); drop --resume to start a new run")
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line and make it durable."""
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

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
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.metrics)
