"""A video's prediction record (``predict.prediction_record``) as a timeline of scores.

With ``predict --window`` the windows overlap (by default each moment is seen by two of them), so
the timeline is cut at every window boundary and each piece, a *span*, is scored by the mean of
the windows that cover it. Events, time budgets, Camtrap DP observations and overlays all read
these spans, so they agree with one another. A record without windows is one span: the whole
video with its video scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anim_clip.errors import AnimClipError

Record = Mapping[str, Any]
SPECIES_SOURCES = {"oracle": "given", "given": "given", "predicted": "predicted", "none": "none"}


@dataclass(frozen=True)
class Timeline:
    """Spans ``[starts[k], ends[k])`` in seconds from the video's start, in order, and their
    ``(K, C)`` scores over ``actions``. Time no window covers (a stride longer than the window)
    is in no span."""

    actions: list[str]
    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray

    @property
    def seconds(self) -> np.ndarray:
        return self.ends - self.starts

    def span_at(self, t: float) -> int | None:
        """The span showing at ``t`` seconds, or None where no window covers it."""
        k = int(np.searchsorted(self.ends, t, side="right"))
        return k if k < len(self.starts) and self.starts[k] <= t else None


def scored(records: Iterable[Record]) -> list[Record]:
    """The records of videos that were scored (a failed video carries only its ``error``)."""
    return [r for r in records if r.get("error") is None]


def timeline(record: Record) -> Timeline:
    """The spans of a scored record (see the module docstring)."""
    actions = list(record["scores"])
    windows = record.get("windows")
    if not windows:
        return Timeline(actions, np.zeros(1), np.array([float(record["duration_s"])]),
                        np.array([[record["scores"][a] for a in actions]], dtype=np.float64))
    if any(list(w.get("scores") or ()) != actions for w in windows):
        raise AnimClipError(f"{record['video']}: its windows do not carry a score for every action (a predictions.json "
                            "written before windows had 'scores'); run predict again")
    window_scores = np.array([[w["scores"][a] for a in actions] for w in windows], dtype=np.float64)
    bounds = np.array([(w["start_s"], w["end_s"]) for w in windows], dtype=np.float64)
    cuts = np.unique(bounds)
    starts, ends = cuts[:-1], cuts[1:]
    # window w covers spans [first[w], stop[w]): sum scores and counts over spans by differences
    first, stop = np.searchsorted(cuts, bounds[:, 0]), np.searchsorted(cuts, bounds[:, 1])
    total, count = np.zeros((len(cuts), len(actions))), np.zeros(len(cuts))
    np.add.at(total, first, window_scores)
    np.add.at(total, stop, -window_scores)
    np.add.at(count, first, 1)
    np.add.at(count, stop, -1)
    total, count = total.cumsum(0)[:-1], count.cumsum()[:-1]
    keep = count > 0
    scores = total[keep] / count[keep, None]
    return Timeline(actions, starts[keep], ends[keep], scores)


def species_source(record: Record, header: Mapping[str, Any]) -> str:
    """``given``, ``predicted`` or ``none``: the record's own, else the run's (``Predictor.describe``)."""
    return SPECIES_SOURCES[record.get("species_source") or header.get("species_source") or "none"]


def species_label(record: Record, source: str) -> str:
    """The species a video was scored as, for a person: given ones by name, predicted ones with
    their probability."""
    species = record.get("species") or []
    if source == "given":
        return ", ".join(s["name"] for s in species) + " (given)"
    return ", ".join(f"{s['name']} {s['probability']:.2f}" for s in species) or "none"


def file_names(videos: Sequence[str | Path], prefix: str, suffix: str) -> list[str]:
    """``<prefix>_<video stem><suffix>`` per video; where stems repeat (``IMG_0001.MP4`` on every camera's
    card), the folders above them are added, as few as tell them apart (``camA_IMG_0001``), so a
    person can tell which file is which; numbered only if even the whole paths agree."""
    parts = [Path(v).with_suffix("").parts for v in videos]
    names = []
    for i, own in enumerate(parts):
        depth = 1
        while depth < len(own) and sum(p[-depth:] == own[-depth:] for p in parts) > 1:
            depth += 1
        name = "_".join(own[-depth:]).lstrip("/_") or Path(videos[i]).stem
        names.append(name if sum(p[-depth:] == own[-depth:] for p in parts) == 1 else f"{name}_{i + 1}")
    return [f"{prefix}_{name}{suffix}" for name in names]


def check_threshold(threshold: float) -> float:
    """A score threshold in (0, 1]: scores are probabilities, and 0 would make every moment an event."""
    if not 0 < threshold <= 1:
        raise AnimClipError(f"--events-threshold must be in (0, 1], got {threshold}")
    return threshold
