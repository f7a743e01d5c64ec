"""Time budgets: the share of a video's time spent in each behaviour, the figure behavioural
ecologists compare between individuals, sites and seasons. Each moment (span of
:mod:`anim_clip.export.records`) goes to its best action when that action's score reaches the
threshold, else to ``below threshold``, so the shares of a video sum to one and an uncertain
moment is never counted as a behaviour."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anim_clip.export.events import DEFAULT_THRESHOLD
from anim_clip.export.records import Record, check_threshold, scored, timeline
from anim_clip.io import atomic_write, atomic_write_text

BELOW = "below threshold"
BUDGETS_NAME = "time_budgets.csv"
PLOTTED_BEHAVIOURS = 8  # behaviours named in a budget plot; the rest are summed as "other"


@dataclass(frozen=True)
class Budget:
    """Seconds of scored time per action, in the record's action order, then :data:`BELOW`."""

    seconds: dict[str, float]

    @property
    def scored_s(self) -> float:
        return sum(self.seconds.values())

    def shares(self) -> dict[str, float]:
        total = self.scored_s
        return {name: s / total if total else 0.0 for name, s in self.seconds.items()}


def time_budget(record: Record, threshold: float = DEFAULT_THRESHOLD) -> Budget:
    """The time budget of one scored video."""
    line = timeline(record)
    check_threshold(threshold)
    best = line.scores.argmax(1)
    held = line.scores[np.arange(len(best)), best] >= threshold
    seconds = np.bincount(best[held], weights=line.seconds[held], minlength=len(line.actions))
    return Budget({**dict(zip(line.actions, seconds.tolist())), BELOW: float(line.seconds[~held].sum())})


def write_budgets_csv(path: str | Path, records: Iterable[Record], threshold: float = DEFAULT_THRESHOLD) -> Path:
    """``time_budgets.csv``: per scored video its duration, the seconds scored (the time windows
    cover), then the share of that time in each action and below the threshold."""
    rows = scored(records)
    budgets = [time_budget(r, threshold) for r in rows]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video", "duration_s", "scored_s", *(budgets[0].seconds if budgets else [BELOW])])
    for record, budget in zip(rows, budgets):
        writer.writerow([record["video"], f"{record['duration_s']:.3f}", f"{budget.scored_s:.3f}",
                         *(f"{share:.6f}" for share in budget.shares().values())])
    return atomic_write_text(path, buffer.getvalue())


def plot_budget(path: str | Path, record: Record, threshold: float = DEFAULT_THRESHOLD,
                top: int = PLOTTED_BEHAVIOURS) -> Path:
    """A bar per behaviour: its share of the video's time, the ``top`` largest named, the rest
    summed as ``other``, and the time below the threshold in grey. Drawn with the Agg canvas."""
    from matplotlib.figure import Figure

    shares = time_budget(record, threshold).shares()
    below = shares.pop(BELOW)
    named = sorted((item for item in shares.items() if item[1] > 0), key=lambda item: -item[1])[:top]
    other = sum(shares.values()) - sum(share for _, share in named)
    bars = [*named, *([("other", other)] if other > 1e-9 else []), (BELOW, below)]
    fig = Figure(figsize=(8, 1.2 + 0.35 * len(bars)), layout="constrained")
    ax = fig.add_subplot()
    colours = [f"C{i}" for i in range(len(named))] + ["0.6"] * (len(bars) - len(named))
    positions = np.arange(len(bars))[::-1]
    ax.barh(positions, [share for _, share in bars], color=colours)
    for y, (_, share) in zip(positions, bars):
        ax.annotate(f"{share:.0%}", (share, y), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize="small")
    ax.set_yticks(positions, [name for name, _ in bars])
    ax.set(xlim=(0, 1.08), xlabel="share of the time the windows scored",
           title=f"{Path(record['video']).name}: time budget (score ≥ {threshold:g})")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
