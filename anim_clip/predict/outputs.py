"""What ``predict`` writes: a record per video (a journal line, an entry of ``predictions.json``),
then, from the records, ``predictions.json``, ``predictions.csv`` and, with windows,
``timeline.csv`` and a plot per video, each written atomically, and the ecologists' exports
(:mod:`anim_clip.export`); and the tables it prints."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Group
from rich.text import Text

from anim_clip.export import ExportOptions, write_exports
from anim_clip.export.records import SPECIES_SOURCES, file_names, species_label
from anim_clip.io import atomic_write, atomic_write_json, atomic_write_text
from anim_clip.predict.model import VideoPrediction
from anim_clip.ui import table

PLOTTED_ACTIONS = 5  # actions drawn in colour and named in a timeline plot
JSON_NAME = "predictions.json"
TABLE_NAME = "predictions.csv"
CSV_NAME = "timeline.csv"


@dataclass(frozen=True)
class OutputOptions:
    """How the outputs are written (beyond what the records hold): actions per video in
    ``predictions.csv``, and the exports."""

    top_k: int
    exports: ExportOptions = field(default_factory=ExportOptions)


def _rounded(x: float) -> float:
    return round(float(x), 6)


def _top_json(pairs: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"action": name, "score": _rounded(score)} for name, score in pairs]


def prediction_record(prediction: VideoPrediction, top_k: int, index: int | None = None) -> dict[str, Any]:
    """One video's entry of ``predictions.json`` (and line of the journal): ``status`` ok or
    failed, ``species_source`` given, predicted or none, ``index`` its place among the inputs."""
    record: dict[str, Any] = {"video": str(prediction.video), "error": prediction.error,
                              "status": "failed" if prediction.error is not None else "ok", "index": index}
    if prediction.error is not None:
        return record
    windows = [{"start_s": _rounded(w.start_s), "end_s": _rounded(w.end_s),
                "top": _top_json([(prediction.actions[i], w.scores[i]) for i in np.argsort(-w.scores)[:top_k]]),
                "scores": {name: _rounded(s) for name, s in zip(prediction.actions, w.scores)}}
               for w in prediction.windows]
    return {
        **record,
        "frames": prediction.num_frames, "fps": _rounded(prediction.fps), "duration_s": _rounded(prediction.duration_s),
        "frames_used": prediction.frames_used,
        "species": [{"name": name, "probability": _rounded(p)} for name, p in prediction.species],
        "species_source": SPECIES_SOURCES[prediction.species_source],
        "top": _top_json(prediction.top(top_k)),
        "scores": {name: _rounded(s) for name, s in zip(prediction.actions, prediction.scores)},
        "windows": windows,
    }


def final_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per video, in input order: a score beats a failure (a rerun retries failed
    videos), the later of two of a kind wins."""
    best: dict[str, dict[str, Any]] = {}
    for record in records:
        kept = best.get(record["video"])
        if kept is None or record["error"] is None or kept["error"] is not None:
            best[record["video"]] = record
    return sorted(best.values(), key=lambda r: (r.get("index") is None, r.get("index") or 0, r["video"]))


def write_json(path: Path, records: Sequence[dict[str, Any]], header: dict[str, Any]) -> Path:
    return atomic_write_json(path, {**header, "videos": list(records)})


def _csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_table_csv(path: Path, records: Sequence[dict[str, Any]], top_k: int) -> Path:
    """``predictions.csv``: one row per video, for a spreadsheet: its status (and error), duration,
    frames in the file and decoded, the species (``name:probability`` joined by ``;``, and whether
    given or predicted) and the top ``top_k`` actions with their scores."""
    columns = ["video", "status", "error", "duration_s", "frames", "frames_used", "species_source", "species"]
    columns += [f"{name}_{k}" for k in range(1, top_k + 1) for name in ("action", "score")]
    rows = [columns]
    for r in records:
        if r["error"] is not None:
            rows.append([r["video"], "failed", r["error"]] + [""] * (len(columns) - 3))
            continue
        species = ";".join(f"{s['name']}:{s['probability']:.4f}" for s in r["species"])
        top = [v for t in r["top"][:top_k] for v in (t["action"], f"{t['score']:.6f}")]
        rows.append([r["video"], "ok", "", f"{r['duration_s']:.3f}", r["frames"], r["frames_used"],
                     r["species_source"], species, *top, *[""] * (2 * top_k - len(top))])
    return atomic_write_text(path, _csv_text(rows))


def write_timeline_csv(path: Path, records: Sequence[dict[str, Any]], actions: Sequence[str]) -> Path:
    """``video, start_s, end_s`` then one score column per action, one row per window."""
    rows: list[list[Any]] = [["video", "start_s", "end_s", *actions]]
    for r in records:
        for w in r.get("windows") or []:
            rows.append([r["video"], f"{w['start_s']:.3f}", f"{w['end_s']:.3f}", *(f"{w['scores'][a]:.6f}" for a in actions)])
    return atomic_write_text(path, _csv_text(rows))


def plot_timeline(path: Path, record: dict[str, Any], actions: Sequence[str], top: int = PLOTTED_ACTIONS) -> Path:
    """Action scores over time (at window centres): the ``top`` actions that peak highest in
    colour and named, the rest in grey. Drawn with the Agg canvas, so no display is needed."""
    from matplotlib.figure import Figure

    scores = np.array([[w["scores"][a] for a in actions] for w in record["windows"]])
    centres = [(w["start_s"] + w["end_s"]) / 2 for w in record["windows"]]
    named = np.argsort(-scores.max(axis=0), kind="stable")[:top]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.add_subplot()
    for c in np.setdiff1d(np.arange(scores.shape[1]), named):
        ax.plot(centres, scores[:, c], color="0.8", linewidth=0.8)
    for c in named:
        ax.plot(centres, scores[:, c], marker="o", markersize=3, label=actions[c])
    ax.set(xlim=(0, record["duration_s"]), ylim=(0, 1), xlabel="time (s, window centre)", ylabel="score",
           title=f"{Path(record['video']).name}: action scores over time")
    ax.legend(loc="upper right", fontsize="small")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def write_outputs(out: str | Path, records: Sequence[dict[str, Any]], header: dict[str, Any],
                  options: OutputOptions) -> list[Path]:
    """Every output made from the records (one per video, :func:`final_records`) and the header
    (``Predictor.describe()`` and ``window``): ``predictions.json`` and ``predictions.csv``; with
    windows also ``timeline.csv`` and a plot per video; then the exports of ``options``. Each file is written atomically, so a
    reader sees the old version or the new, never half."""
    out = Path(out)
    written = [write_json(out / JSON_NAME, records, header), write_table_csv(out / TABLE_NAME, records, options.top_k)]
    if any(r.get("windows") for r in records):
        written.append(write_timeline_csv(out / CSV_NAME, records, header["actions"]))
        names = file_names([r["video"] for r in records], "timeline", ".png")
        written += [plot_timeline(out / name, r, header["actions"]) for r, name in zip(records, names) if r.get("windows")]
    return written + write_exports(out, records, header, options.exports)


def prediction_table(record: dict[str, Any]) -> Group:
    """A line naming a scored video (its record) and the species it was scored as (too long for a
    table title), then a table of its top actions."""
    count = len(record["windows"])
    extent = f", {count} window{'s' * (count != 1)}" if count else ""
    heading = Text.assemble((Path(record["video"]).name, "bold"), f" ({record['duration_s']:.1f} s{extent}), "
                            f"species: {species_label(record, record['species_source'])}")
    rows = [(t["action"], f"{t['score']:.3f}") for t in record["top"]]
    return Group(heading, table(f"top {len(rows)} actions", ["action", "score"], rows))
