"""The journal of a ``predict`` run: one JSON line per finished video, appended and fsync'd as it
finishes, after a first line recording what the scores depend on (``settings``) and the header of
the outputs. A kill at any moment loses at most the video being written: a torn last line is
ignored on read and cut off before the next append. A rerun skips the videos already scored; a
journal written with other settings is refused, naming what changed, so two runs never mix.

One process writes ``predictions.jsonl``; shard i of n (torchrun ranks, ``--shard i/n``) writes
``predictions.part-i-of-n.jsonl``. The outputs (:mod:`anim_clip.predict.outputs`) are made from
every journal in the folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anim_clip.errors import AnimClipError
from anim_clip.io import append_durably

NAME = "predictions.jsonl"
PART = re.compile(r"predictions\.part-(\d+)-of-(\d+)\.jsonl")


def journal_path(out: Path, shard: int, shards: int) -> Path:
    return out / (NAME if shards == 1 else f"predictions.part-{shard + 1}-of-{shards}.jsonl")


@dataclass
class Journal:
    """One journal file: its first line (``settings``, ``header``) and its records."""

    path: Path
    settings: dict[str, Any] | None = None
    header: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Journal:
        """The complete lines of ``path`` (a line cut by a kill, always the last, is left out)."""
        journal = cls(path)
        if not path.exists():
            return journal
        for line in path.read_text(encoding="utf-8").split("\n"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if journal.settings is None and "settings" in entry:
                journal.settings, journal.header = entry["settings"], entry["header"]
            else:
                journal.records.append(entry)
        return journal

    def scored(self) -> set[str]:
        """Videos with a score (a failed one is tried again by a rerun)."""
        return {r["video"] for r in self.records if r.get("error") is None}

    def start(self, settings: dict[str, Any], header: dict[str, Any]) -> None:
        """Before appending: cut a torn last line, and write the first line of a new journal."""
        if self.path.exists():
            _cut_torn_tail(self.path)
        if self.settings is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(b"")  # a journal killed before its first line was complete starts over
            append_durably(self.path, json.dumps({"settings": settings, "header": header}) + "\n")
            self.settings, self.header = settings, header

    def append(self, record: dict[str, Any]) -> None:
        append_durably(self.path, json.dumps(record) + "\n")
        self.records.append(record)


def _cut_torn_tail(path: Path) -> None:
    """Drop bytes after the last newline (a line a kill cut), so the next line starts clean."""
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())


def journals(out: Path) -> list[Journal]:
    """Every journal in ``out``: the single-process one and the shards' parts."""
    paths = ([out / NAME] if (out / NAME).exists() else []) + sorted(
        (p for p in out.glob("predictions.part-*.jsonl") if PART.fullmatch(p.name)), key=_part_number)
    return [Journal.read(p) for p in paths]


def _part_number(path: Path) -> tuple[int, int]:
    i, n = PART.fullmatch(path.name).groups()
    return int(n), int(i)


def check_settings(found: Iterable[Journal], settings: dict[str, Any]) -> None:
    """Refuse to add to (or merge) journals written with other settings, naming what changed."""
    for journal in found:
        if journal.settings is None or journal.settings == settings:
            continue
        changed = [f"{key} {journal.settings.get(key)!r} -> {settings.get(key)!r}"
                   for key in dict.fromkeys([*journal.settings, *settings])
                   if journal.settings.get(key) != settings.get(key)]
        raise AnimClipError(f"{journal.path} holds predictions made with other settings ({'; '.join(changed)}); "
                            f"predict into another --out, or delete {journal.path.name} there to start over")


def missing_parts(found: Iterable[Journal]) -> list[str]:
    """Parts of a sharded run that have not written anything yet, e.g. ``part 3 of 4``."""
    seen = {_part_number(j.path) for j in found if PART.fullmatch(j.path.name)}
    counts = {n for n, _ in seen}
    return [f"part {i} of {n}" for n in sorted(counts) for i in range(1, n + 1) if (n, i) not in seen]
