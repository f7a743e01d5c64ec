"""Predictions in the forms ecologists use: behaviour events and time budgets (CSV, plots), a
Camera Trap Data Package (Camtrap DP) and videos with the model's labels drawn on them.

Everything here reads the per-video records of ``predictions.json``
(``predict.prediction_record``) and the run's header (``Predictor.describe()`` plus ``window``),
so ``predict`` and ``predict-merge`` write them the same from the journal, as a later run could
from a ``predictions.json`` read back from disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.markup import escape

from anim_clip.errors import AnimClipError
from anim_clip.export.budgets import BUDGETS_NAME, Budget, plot_budget, time_budget, write_budgets_csv
from anim_clip.export.camtrap import check_location, check_start_time, write_camtrap_dp
from anim_clip.export.events import DEFAULT_THRESHOLD, EVENTS_NAME, Event, video_events, write_events_csv
from anim_clip.export.overlay import is_current, write_overlay
from anim_clip.export.records import Record, check_threshold, file_names, scored, timeline
from anim_clip.ui import console, progress_bar

__all__ = ["BUDGETS_NAME", "Budget", "DEFAULT_THRESHOLD", "EVENTS_NAME", "Event", "ExportOptions", "check_start_time",
           "plot_budget", "time_budget", "timeline", "video_events", "write_budgets_csv", "write_camtrap_dp",
           "write_events_csv", "write_exports", "write_overlay"]


@dataclass(frozen=True)
class ExportOptions:
    """What to export beside the predictions (``predict``'s options of the same names), checked
    when made, so a bad value stops a run before any weights load: the score ``threshold`` of
    events and budgets, a Camtrap DP folder, overlays, one video's ``start_time`` and the
    ``location`` (latitude, longitude) of the package."""

    threshold: float = DEFAULT_THRESHOLD
    camtrap_dp: Path | None = None
    overlay: bool = False
    start_time: datetime | None = None
    location: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        check_location(self.location)
        if self.camtrap_dp is None and (self.start_time is not None or self.location is not None):
            raise AnimClipError("--start-time and --location date and place the Camtrap DP package: give "
                                "--camtrap-dp DIR too")


def write_exports(out: str | Path, records: Sequence[Record], header: Mapping[str, Any],
                  options: ExportOptions = ExportOptions()) -> list[Path]:
    """What ``predict`` writes beside ``predictions.json``: with windows ``events.csv``,
    ``time_budgets.csv`` and ``budget_<video>.png``; a Camtrap DP package in
    ``options.camtrap_dp`` (when a video was scored); ``overlay_<video>.mp4`` per scored video
    with ``options.overlay``."""
    out = Path(out)
    written: list[Path] = []
    if any(r.get("windows") for r in records):
        written += [write_events_csv(out / EVENTS_NAME, records, options.threshold),
                    write_budgets_csv(out / BUDGETS_NAME, records, options.threshold)]
        names = file_names([r["video"] for r in records], "budget", ".png")
        written += [plot_budget(out / name, r, options.threshold) for r, name in zip(records, names)
                    if r.get("windows") and r.get("error") is None]
    if options.camtrap_dp is not None and scored(records):
        written += write_camtrap_dp(options.camtrap_dp, records, header, threshold=options.threshold,
                                    start_time=options.start_time, location=options.location)
    elif options.camtrap_dp is not None:  # every video failed: the run says so and exits 1, the package is left out
        console.print(f"[yellow]no video was scored, so no Camtrap DP package in {escape(str(options.camtrap_dp))}[/]",
                      soft_wrap=True, highlight=False)
    if options.overlay:
        written += write_overlays(out, records, header)
    return written


def write_overlays(out: Path, records: Sequence[Record], header: Mapping[str, Any]) -> list[Path]:
    """``overlay_<video>.mp4`` per scored video, with a bar over each one's frames (a long video
    takes minutes to re-encode); an overlay already written for the same predictions (a resumed
    or re-merged run) is kept, not drawn again."""
    paths = [(record, out / name) for record, name in zip(records, file_names([r["video"] for r in records],
                                                                           "overlay", ".mp4"))
             if record.get("error") is None]
    todo = [(record, path) for record, path in paths if not is_current(path, record, header)]
    if len(todo) < len(paths):
        kept = len(paths) - len(todo)
        console.print(f"{kept} overlay{'s' * (kept != 1)} already drawn for these predictions: kept")
    with progress_bar("frames", disable=not todo) as bar:
        for record, path in todo:
            task = bar.add_task(path.name, total=record["frames"])
            write_overlay(path, record, header, report=lambda done, task=task: bar.update(task, completed=done))
    return [path for _, path in paths]
