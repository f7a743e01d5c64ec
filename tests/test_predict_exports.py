"""``anim-clip predict`` with the ecologists' exports, through the real command line on a folder
of generated videos: every file appears, the Camtrap DP package validates offline, a run killed
mid-way and resumed gives one media row per video, ``predict-merge`` remakes the exports keeping
the overlays already drawn, and a bad export option stops the run before any weights load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from anim_clip.cli import main
from anim_clip.export import ExportOptions, video_events, write_exports
from anim_clip.predict.journal import Journal

from processes import ROOT, run_cli
from test_export_camtrap import read_csv, validate_offline
from test_predict import cfg, demo, head_ckpt  # noqa: F401 (module fixtures: the tiny head checkpoint)
from test_predict_field import clip, run_dir  # noqa: F401
from videos import write_garbage

COUNT = 5
THRESHOLD = "0.2"  # the tiny untrained head spreads its scores over 7 actions: 0.2 still finds events


def kill_after_first_video(args: list[str], journal: Path) -> None:
    """``anim-clip ARGS`` in a subprocess, SIGKILLed once it has journaled a video."""
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "anim_clip", *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        while not Journal.read(journal).records and process.poll() is None:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


def test_killed_and_resumed_predict_writes_every_export_once(run_dir: Path, tmp_path: Path, monkeypatch):  # noqa: F811
    folder = tmp_path / "card"
    videos = [clip(folder / f"v{k}.mp4", 2, seed=200 + k) for k in range(COUNT)]
    out, dp = tmp_path / "out", tmp_path / "dp"
    exports = ["--events-threshold", THRESHOLD, "--camtrap-dp", str(dp), "--overlay", "--location", "50.85,4.35"]
    args = ["predict", str(run_dir), str(folder), "--out", str(out), "--window", "1", "--workers", "1", *exports]
    kill_after_first_video(args, out / "predictions.jsonl")
    assert not dp.exists() and not list(out.glob("overlay_*"))

    said = " ".join(run_cli(*args).stdout.split())
    assert f"of {COUNT} videos already scored" in said
    stems = [v.stem for v in videos]
    per_video = [f"{kind}_{s}.{ext}" for s in stems for kind, ext in (("timeline", "png"), ("budget", "png"),
                                                                       ("overlay", "mp4"))]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["predictions.jsonl", "predictions.json", "predictions.csv", "timeline.csv", "events.csv",
         "time_budgets.csv", *per_video])
    assert sorted(p.name for p in dp.iterdir()) == ["datapackage.json", "deployments.csv", "media.csv",
                                                    "observations.csv"]
    valid, errors = validate_offline(dp, tmp_path, monkeypatch)
    assert valid, errors

    records = json.loads((out / "predictions.json").read_text())["videos"]
    media = read_csv(dp / "media.csv")
    assert [m["fileName"] for m in media] == [v.name for v in videos]  # one row per video, none twice
    events = [(r["video"], e.action) for r in records for e in video_events(r, float(THRESHOLD))]
    assert events and [(e["video"], e["action"]) for e in read_csv(out / "events.csv")] == events
    by_media = {m["mediaID"]: str(folder / m["fileName"]) for m in media}
    assert [(by_media[o["mediaID"]], o["behavior"]) for o in read_csv(dp / "observations.csv")
            if o["behavior"]] == events
    assert [b["video"] for b in read_csv(out / "time_budgets.csv")] == [str(v) for v in videos]
    for record, stem in zip(records, stems):
        with av.open(str(out / f"overlay_{stem}.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == record["frames"]

    # predict-merge remakes the exports from the journal: the overlays of these predictions are kept, a broken one redrawn
    write_garbage(out / f"overlay_{stems[0]}.mp4")
    drawn = {s: (out / f"overlay_{s}.mp4").stat().st_mtime_ns for s in stems[1:]}
    merged = " ".join(run_cli("predict-merge", str(out), *exports).stdout.split())
    assert f"{COUNT - 1} overlays already drawn for these predictions: kept" in merged
    assert {s: (out / f"overlay_{s}.mp4").stat().st_mtime_ns for s in stems[1:]} == drawn
    with av.open(str(out / f"overlay_{stems[0]}.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == records[0]["frames"]
    assert [m["fileName"] for m in read_csv(dp / "media.csv")] == [v.name for v in videos]


def cli_error(args: list[str], capsys, monkeypatch) -> str:
    """The command line's error for ``anim-clip ARGS`` (its entry point, in this process), one line."""
    monkeypatch.setattr(sys, "argv", ["anim-clip", *args])
    with pytest.raises(SystemExit) as exit_code:
        main()
    said = capsys.readouterr().out
    assert exit_code.value.code == 2 and said.count("\n") == 1, said
    return said


@pytest.mark.parametrize(("options", "message"), [
    (["--events-threshold", "0"], "--events-threshold must be in (0, 1], got 0.0"),
    (["--camtrap-dp", "dp", "--location", "50.8;4.3"], "--location '50.8;4.3': expected LAT,LON in decimal degrees"),
    (["--camtrap-dp", "dp", "--location", "95,4"], "--location must be LATITUDE,LONGITUDE in degrees"),
    (["--camtrap-dp", "dp", "--start-time", "May 1st"], "--start-time 'May 1st': expected an ISO 8601 date-time"),
    (["--start-time", "2024-05-01T06:30:00"], "--start-time and --location date and place the Camtrap DP package"),
])
def test_a_bad_export_option_is_one_line_before_the_model_loads(tmp_path: Path, options: list[str], message: str,
                                                                  capsys, monkeypatch):
    video = clip(tmp_path / "v.mp4", 1, seed=1)
    missing_model = tmp_path / "no-such-run"  # checked after the options: its error would show if they passed
    assert message in cli_error(["predict", str(missing_model), str(video), "--out", str(tmp_path / "out"), *options],
                                capsys, monkeypatch)
    assert not (tmp_path / "out").exists()


def test_start_time_with_more_than_one_video_is_refused_before_the_model_loads(tmp_path: Path, capsys, monkeypatch):
    videos = [str(clip(tmp_path / f"v{k}.mp4", 1, seed=k)) for k in range(2)]
    said = cli_error(["predict", str(tmp_path / "no-such-run"), *videos, "--camtrap-dp", str(tmp_path / "dp"),
                      "--start-time", "2024-05-01T06:30:00+02:00"], capsys, monkeypatch)
    assert "--start-time gives one video's recording start, but there are 2 videos" in said


def test_a_run_whose_every_video_failed_writes_no_package_and_says_so(tmp_path: Path, capsys):
    failed = [{"video": str(tmp_path / "broken.mp4"), "error": "cannot decode video", "status": "failed", "index": 0}]
    assert write_exports(tmp_path, failed, {}, ExportOptions(camtrap_dp=tmp_path / "dp", overlay=True)) == []
    assert not (tmp_path / "dp").exists()
    assert "no video was scored, so no Camtrap DP package" in " ".join(capsys.readouterr().out.split())
