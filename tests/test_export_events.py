"""Behaviour events and time budgets from prediction records written by hand, where every span,
event and share can be worked out on paper."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anim_clip.errors import AnimClipError
from anim_clip.export import (Event, plot_budget, time_budget, timeline, video_events, write_budgets_csv,
                              write_events_csv)
from anim_clip.export.budgets import BELOW

ACTIONS = ["walking", "eating", "resting"]


def window(start: float, end: float, scores: list[float]) -> dict:
    return {"start_s": start, "end_s": end, "top": [], "scores": dict(zip(ACTIONS, scores))}


def record(windows: list[dict], duration: float = 4.0, video: str = "/videos/a.mp4") -> dict:
    return {"video": video, "error": None, "frames": int(duration * 10), "fps": 10.0, "duration_s": duration,
            "species": [{"name": "Duck", "probability": 1.0}], "top": [],
            "scores": dict(zip(ACTIONS, np.mean([list(w["scores"].values()) for w in windows], 0))), "windows": windows}


# windows of 2 s every 1 s: each inner second is the mean of two windows
OVERLAPPING = record([window(0, 2, [0.9, 0.05, 0.05]), window(1, 3, [0.7, 0.2, 0.1]), window(2, 4, [0.1, 0.8, 0.1])])


def test_a_moment_is_scored_by_the_mean_of_the_windows_covering_it():
    line = timeline(OVERLAPPING)
    assert line.starts.tolist() == [0, 1, 2, 3] and line.ends.tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(line.scores, [[0.9, 0.05, 0.05], [0.8, 0.125, 0.075], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1]])
    assert [line.span_at(t) for t in (0.0, 0.99, 1.0, 3.5, 4.0)] == [0, 0, 1, 3, None]


def test_overlapping_windows_above_the_threshold_merge_into_one_event():
    assert video_events(OVERLAPPING, 0.5) == [Event("walking", 0.0, 2.0, 0.9, pytest.approx(0.85)),
                                              Event("eating", 2.0, 4.0, 0.8, pytest.approx(0.65))]
    # higher: walking holds only its first second, eating its last
    assert [(e.action, e.start_s, e.end_s) for e in video_events(OVERLAPPING, 0.85)] == [("walking", 0, 1)]
    assert video_events(OVERLAPPING, 0.95) == []


def test_time_no_window_covers_splits_an_event_and_is_not_budgeted():
    gapped = record([window(0, 1, [0.9, 0.05, 0.05]), window(2, 3, [0.9, 0.05, 0.05])], duration=3.0)
    assert [(e.start_s, e.end_s) for e in video_events(gapped, 0.5)] == [(0, 1), (2, 3)]
    budget = time_budget(gapped, 0.5)
    assert budget.scored_s == 2.0 and budget.shares()["walking"] == 1.0


def test_a_record_without_windows_is_one_event_over_the_whole_video():
    whole = {**OVERLAPPING, "windows": [], "scores": dict(zip(ACTIONS, [0.2, 0.7, 0.1]))}
    assert video_events(whole, 0.5) == [Event("eating", 0.0, 4.0, 0.7, pytest.approx(0.7))]


def test_time_budget_gives_each_moment_to_its_best_action_or_to_below_threshold():
    budget = time_budget(OVERLAPPING, 0.5)
    assert budget.seconds == {"walking": 2.0, "eating": 2.0, "resting": 0.0, BELOW: 0.0}
    shares = time_budget(OVERLAPPING, 0.85).shares()  # only the first second holds an action that high
    assert shares == {"walking": 0.25, "eating": 0.0, "resting": 0.0, BELOW: 0.75}
    assert sum(shares.values()) == pytest.approx(1.0)


def test_events_and_budgets_csv(tmp_path: Path):
    failed = {"video": "/videos/broken.mp4", "error": "cannot decode"}
    second = record([window(0, 2, [0.1, 0.1, 0.8])], duration=2.0, video="/videos/b.mp4")
    write_events_csv(tmp_path / "events.csv", [OVERLAPPING, failed, second], 0.5)
    with open(tmp_path / "events.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["video", "action", "start_s", "end_s", "duration_s", "peak_score", "mean_score"],
                    ["/videos/a.mp4", "walking", "0.000", "2.000", "2.000", "0.900000", "0.850000"],
                    ["/videos/a.mp4", "eating", "2.000", "4.000", "2.000", "0.800000", "0.650000"],
                    ["/videos/b.mp4", "resting", "0.000", "2.000", "2.000", "0.800000", "0.800000"]]

    write_budgets_csv(tmp_path / "budgets.csv", [OVERLAPPING, failed, second], 0.85)
    with open(tmp_path / "budgets.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["video", "duration_s", "scored_s", *ACTIONS, BELOW]
    assert rows[1:] == [["/videos/a.mp4", "4.000", "4.000", "0.250000", "0.000000", "0.000000", "0.750000"],
                        ["/videos/b.mp4", "2.000", "2.000", "0.000000", "0.000000", "0.000000", "1.000000"]]


def test_budget_plot_is_a_png(tmp_path: Path):
    path = plot_budget(tmp_path / "budget.png", OVERLAPPING, 0.5)
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] == 800


def test_bad_threshold_and_windows_without_scores_are_one_clear_line():
    with pytest.raises(AnimClipError, match=r"--events-threshold must be in \(0, 1\], got 0"):
        video_events(OVERLAPPING, 0)
    old = {**OVERLAPPING, "windows": [{k: v for k, v in w.items() if k != "scores"} for w in OVERLAPPING["windows"]]}
    with pytest.raises(AnimClipError, match="/videos/a.mp4: its windows do not carry a score for every action"):
        time_budget(old)


def test_output_names_tell_same_named_videos_apart_by_their_folders():
    from anim_clip.export.records import file_names

    videos = ["/season/camA/IMG_0001.MP4", "/season/camB/IMG_0001.MP4", "/season/camA/fox.mp4"]
    assert file_names(videos, "overlay", ".mp4") == ["overlay_camA_IMG_0001.mp4", "overlay_camB_IMG_0001.mp4",
                                                     "overlay_fox.mp4"]
