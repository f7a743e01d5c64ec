"""``anim-clip predict`` and ``anim-clip predict-merge``: inputs to journal to outputs.

The inputs are checked before any weights load; each video is written to the journal as it
finishes (:mod:`anim_clip.predict.journal`), so a rerun of the same command scores only the rest;
the outputs and exports are made from the journal at the end (on Ctrl-C all but the overlays,
which take minutes) or, for a sharded run, by ``predict-merge`` once every shard is done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape

from anim_clip.errors import AnimClipError
from anim_clip.export import ExportOptions, check_start_time
from anim_clip.models.backbone import file_sha256
from anim_clip.predict.inputs import Inputs, collect_videos, shard_of
from anim_clip.predict.journal import Journal, check_settings, journal_path, journals, missing_parts
from anim_clip.predict.model import Predictor, demo_world_note, resolve_stride
from anim_clip.predict.outputs import OutputOptions, final_records, prediction_record, prediction_table, write_outputs
from anim_clip.runtime.distributed import default_shard
from anim_clip.runtime.rundir import resolve_checkpoint
from anim_clip.ui import console, progress_bar

TABLES_SHOWN = 10  # a run scoring more videos prints no table per video: predictions.csv holds them
SKIPPED_SHOWN = 5  # paths that are not videos named one by one; the rest counted
FILES_SHOWN = 8  # outputs named at the end (a plot and an overlay per video follow the tables)


def run_settings(predictor: Predictor, window: float | None, stride: float | None, top_k: int) -> dict[str, Any]:
    """Everything a video's record depends on, named as the user sets it and resolved (species as
    the checkpoint spells them, views and decoder as used): a journal written with other values is
    refused rather than mixed with new scores."""
    s = predictor.cfg.sampling
    vector = predictor.named
    given = [] if vector is None else [predictor.species_names[i] for i in vector.nonzero().flatten().tolist()]
    return {
        "checkpoint sha256": file_sha256(predictor.ckpt.path), "--species": given,
        "species source": predictor.inputs.source, "--window": window,
        "--stride": None if window is None else resolve_stride(window, stride),
        "--clips": s.test_clips, "--crops": s.test_crops, "--decoder": s.decoder, "--top-k": top_k,
    }


def report_skipped(skipped: list[tuple[Path, str]]) -> None:
    """Paths that are not videos, said once, not fatal."""
    if not skipped:
        return
    named = "; ".join(f"{path} ({why})" for path, why in skipped[:SKIPPED_SHOWN])
    more = f" and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    what = "1 path that is not a video" if len(skipped) == 1 else f"{len(skipped)} paths that are not videos"
    console.print(f"[yellow]skipped {what}: {escape(named)}{more}[/]", soft_wrap=True, highlight=False)


def run_predict(model: str | Path, inputs: Sequence[str | Path] = (), *, out: str | Path, list_file: Path | None = None,
                weights: str = "last", top_k: int = 5, species: Sequence[str] | None = None,
                predict_species: bool = False, window: float | None = None, stride: float | None = None,
                clips: int | None = None, crops: int | None = None, device: str | None = None,
                decoder: str | None = None, workers: int = 4, shard: tuple[int, int] | None = None,
                exports: ExportOptions = ExportOptions()) -> int:
    """What ``anim-clip predict`` does: score every video of ``inputs`` (files, folders) and
    ``list_file`` not already in ``out``'s journal with ``model`` (a checkpoint, or a run
    directory's ``weights``), journal each as it finishes, then write the outputs and ``exports``;
    returns how many videos failed. Shard ``(i, n)`` (default: the torchrun rank) scores every
    n-th video into its own journal, for :func:`merge_predictions`."""
    if top_k < 1:
        raise AnimClipError(f"--top-k must be at least 1, got {top_k}")
    if workers < 1:
        raise AnimClipError(f"--workers must be at least 1, got {workers}")
    found = collect_videos([Path(p) for p in inputs], list_file)
    report_skipped(found.skipped)
    check_start_time(exports.start_time, len(found.videos))
    checkpoint = resolve_checkpoint(model, weights)
    index, count = shard or default_shard()
    predictor = Predictor(checkpoint, species=species, predict_species=predict_species, clips=clips, crops=crops,
                          device=device, decoder=decoder)
    for note in (demo_world_note(predictor.cfg, predictor.actions, predictor.species_names), predictor.species_note):
        if note:
            console.print(f"[yellow]{note}[/]", soft_wrap=True)
    out = Path(out)
    settings = run_settings(predictor, window, stride, top_k)
    existing = journals(out)
    check_settings(existing, settings)
    journal = next((j for j in existing if j.path == journal_path(out, index, count)), None) or \
        Journal(journal_path(out, index, count))
    journal.start(settings, {**predictor.describe(), "window": None if window is None else
                             {"length_s": window, "stride_s": resolve_stride(window, stride)}})
    todo = _todo(found, index, count, set().union(*(j.scored() for j in existing)), journal)
    try:
        _score(predictor, journal, todo, window, stride, workers, top_k)
    except BaseException:  # Ctrl-C or a crash: what was scored is written out, quickly
        _finish(out, journal, count, dataclasses.replace(exports, overlay=False))
        raise
    return _finish(out, journal, count, exports)


def _todo(found: Inputs, index: int, count: int, scored: set[str], journal: Journal) -> list[tuple[int, Path]]:
    """This shard's videos not yet scored, said aloud when a rerun resumes."""
    share = shard_of(found.videos, index, count)
    todo = [(i, v) for i, v in share if str(v) not in scored]
    where = f"shard {index + 1}/{count}: " if count > 1 else ""
    if len(todo) < len(share):
        rest = f"scoring the other {len(todo)}" if todo else "nothing left to score"
        console.print(f"{where}{len(share) - len(todo)} of {len(share)} videos already scored in "
                      f"{escape(str(journal.path.parent))}; {rest}", soft_wrap=True, highlight=False)
    return todo


def _score(predictor: Predictor, journal: Journal, todo: list[tuple[int, Path]], window: float | None,
           stride: float | None, workers: int, top_k: int) -> None:
    """Score ``todo``, journal each video as it finishes; a bar over videos with rate and ETA."""
    tables = len(todo) <= TABLES_SHOWN
    with progress_bar("videos", disable=len(todo) <= 1 and window is None) as bar:
        task = bar.add_task("predict", total=len(todo))
        windows = [0]

        def counted() -> None:  # a windowed run's bar also counts windows, so a long video is seen moving
            windows[0] += 1
            bar.update(task, description=f"predict ({windows[0]} windows)")

        for i, prediction in predictor.stream([v for _, v in todo], window=window, stride=stride, workers=workers,
                                              on_segment=counted if window is not None else None):
            record = prediction_record(prediction, top_k, todo[i][0])
            journal.append(record)
            if prediction.error is not None:
                console.print(f"[bold red]error:[/] {escape(prediction.error)}", soft_wrap=True, highlight=False)
            elif tables:
                console.print(prediction_table(record))
            bar.advance(task)


def _finish(out: Path, journal: Journal, count: int, exports: ExportOptions) -> int:
    """One process: the outputs from every journal in ``out``; a shard: its journal only, and how
    to merge. Returns the failed videos among those."""
    if count > 1:
        records = final_records(journal.records)
        same = " (give it this command's export options)" if exports != ExportOptions() else ""
        console.print(f"{_summary(records)} in {escape(str(journal.path))}; once every shard is done, "
                      f"`anim-clip predict-merge {escape(str(out))}` writes the outputs{same}", soft_wrap=True,
                      highlight=False)
        return sum(r["error"] is not None for r in records)
    return merge_predictions(out, exports)


def _summary(records: list[dict[str, Any]]) -> str:
    failed = sum(r["error"] is not None for r in records)
    return f"{len(records) - failed}/{len(records)} videos predicted" + (f", {failed} failed" if failed else "")


def merge_predictions(out: str | Path, exports: ExportOptions = ExportOptions()) -> int:
    """What ``anim-clip predict-merge`` does: the outputs and ``exports`` from every journal in
    ``out`` (a run's, or all the parts of a sharded one), one record per video; returns how many
    videos failed."""
    out = Path(out)
    found = [j for j in journals(out) if j.settings is not None]
    if not found:
        raise AnimClipError(f"{out}: no predictions journal (predictions.jsonl, or predictions.part-i-of-n.jsonl "
                            "from --shard) to make outputs from; run `anim-clip predict ... --out` into it first")
    missing = missing_parts(found)
    if missing:
        raise AnimClipError(f"{out}: {', '.join(missing)} not started yet; run those shards (same command with "
                            "--shard i/n) before merging")
    check_settings(found, found[0].settings)
    records = final_records([r for j in found for r in j.records])
    written = write_outputs(out, records, found[0].header, OutputOptions(found[0].settings["--top-k"], exports))
    named = ", ".join(str(p) for p in written[:FILES_SHOWN])
    more = f" and {len(written) - FILES_SHOWN} more files" if len(written) > FILES_SHOWN else ""
    console.print(f"{_summary(records)} -> {escape(named)}{more}", soft_wrap=True, highlight=False)
    return sum(r["error"] is not None for r in records)
