"""Behaviour events: the stretches of a video in which an action's score stays at or above a
threshold, read from the spans of :mod:`anim_clip.export.records` (a moment's score is the mean
of the overlapping windows that cover it), so consecutive spans above the threshold merge into
one event and an event's edges fall on window boundaries."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anim_clip.export.records import Record, Timeline, check_threshold, scored, timeline
from anim_clip.io import atomic_write_text

DEFAULT_THRESHOLD = 0.5  # with softmax scores, at most one action holds a moment
EVENTS_NAME = "events.csv"
EVENT_COLUMNS = ["video", "action", "start_s", "end_s", "duration_s", "peak_score", "mean_score"]


@dataclass(frozen=True)
class Event:
    """An action held from ``start_s`` to ``end_s`` (seconds from the video's start): its highest
    score there and its mean score weighted by time."""

    action: str
    start_s: float
    end_s: float
    peak_score: float
    mean_score: float


def runs(above: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[tuple[int, int]]:
    """``[first, stop)`` span indices of each run of ``above`` spans that touch in time (a gap no
    window covers ends a run)."""
    result: list[tuple[int, int]] = []
    for k in np.flatnonzero(above):
        if result and result[-1][1] == k and np.isclose(ends[k - 1], starts[k]):
            result[-1] = (result[-1][0], k + 1)
        else:
            result.append((k, k + 1))
    return result


def timeline_events(line: Timeline, threshold: float) -> list[Event]:
    """The events of every action, in order of start time (then action)."""
    events = []
    for c, action in enumerate(line.actions):
        scores = line.scores[:, c]
        for first, stop in runs(scores >= threshold, line.starts, line.ends):
            held = scores[first:stop]
            events.append(Event(action, float(line.starts[first]), float(line.ends[stop - 1]), float(held.max()),
                                float(np.average(held, weights=line.seconds[first:stop]))))
    return sorted(events, key=lambda e: (e.start_s, line.actions.index(e.action)))


def video_events(record: Record, threshold: float = DEFAULT_THRESHOLD) -> list[Event]:
    """The events of one scored video (see :func:`timeline_events`)."""
    return timeline_events(timeline(record), check_threshold(threshold))


def write_events_csv(path: str | Path, records: Iterable[Record], threshold: float = DEFAULT_THRESHOLD) -> Path:
    """``events.csv``: one row per event of every scored video (columns :data:`EVENT_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EVENT_COLUMNS)
    for record in scored(records):
        for e in video_events(record, threshold):
            writer.writerow([record["video"], e.action, f"{e.start_s:.3f}", f"{e.end_s:.3f}",
                             f"{e.end_s - e.start_s:.3f}", f"{e.peak_score:.6f}", f"{e.mean_score:.6f}"])
    return atomic_write_text(path, buffer.getvalue())
