"""Predictions in the forms ecologists use: behaviour events and time budgets (CSV, plots), a
Camera Trap Data Package (Camtrap DP) and videos with the model's labels drawn on them.

Everything here reads the per-video records of ``predictions.json``
(``predict.prediction_record``) and the run's header (``Predictor.describe()`` plus ``window``),
so it runs the same on a fresh prediction and on a ``predictions.json`` read back from disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from anim_clip.export.budgets import BUDGETS_NAME, Budget, plot_budget, time_budget, write_budgets_csv
from anim_clip.export.camtrap import write_camtrap_dp
from anim_clip.export.events import DEFAULT_THRESHOLD, EVENTS_NAME, Event, video_events, write_events_csv
from anim_clip.export.overlay import write_overlay
from anim_clip.export.records import Record, check_threshold, file_names, timeline
from anim_clip.ui import progress_bar

__all__ = ["BUDGETS_NAME", "Budget", "DEFAULT_THRESHOLD", "EVENTS_NAME", "Event", "plot_budget", "time_budget",
           "timeline", "video_events", "write_budgets_csv", "write_camtrap_dp", "write_events_csv", "write_exports",
           "write_overlay"]


def write_exports(out: str | Path, records: Sequence[Record], header: Mapping[str, Any], *,
                  threshold: float = DEFAULT_THRESHOLD, camtrap_dp: str | Path | None = None, overlay: bool = False,
                  start_time: datetime | None = None, location: tuple[float, float] | None = None) -> list[Path]:
    """What ``predict`` writes beside ``predictions.json``: with windows ``events.csv``,
    ``time_budgets.csv`` and ``budget_<video>.png``; a Camtrap DP package in ``camtrap_dp``;
    ``overlay_<video>.mp4`` per scored video with ``overlay``."""
    out = Path(out)
    check_threshold(threshold)
    written: list[Path] = []
    if any(r.get("windows") for r in records):
        written += [write_events_csv(out / EVENTS_NAME, records, threshold),
                    write_budgets_csv(out / BUDGETS_NAME, records, threshold)]
        names = file_names([r["video"] for r in records], "budget", ".png")
        written += [plot_budget(out / name, r, threshold) for r, name in zip(records, names)
                    if r.get("windows") and r.get("error") is None]
    if camtrap_dp is not None:
        written += write_camtrap_dp(camtrap_dp, records, header, threshold=threshold, start_time=start_time,
                                    location=location)
    if overlay:
        written += write_overlays(out, records, header)
    return written


def write_overlays(out: Path, records: Sequence[Record], header: Mapping[str, Any]) -> list[Path]:
    """``overlay_<video>.mp4`` per scored video, with a bar over each one's frames (a long video
    takes minutes to re-encode)."""
    written = []
    with progress_bar("frames") as bar:
        for record, name in zip(records, file_names([r["video"] for r in records], "overlay", ".mp4")):
            if record.get("error") is None:
                task = bar.add_task(name, total=record["frames"])
                written.append(write_overlay(out / name, record, header,
                                             report=lambda done, task=task: bar.update(task, completed=done)))
    return written
