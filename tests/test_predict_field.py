"""``predict`` at field scale: folders, list files and run directories as inputs, the journal a
killed run resumes from (a real subprocess killed with SIGKILL), settings that must not mix,
shards merged into the same rows as one process, predictions.csv, and windows of a long clip
decoded in bounded memory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from anim_clip.errors import AnimClipError
from anim_clip.predict import Predictor, merge_predictions, run_predict
from anim_clip.predict.inputs import collect_videos
from anim_clip.predict.journal import Journal
from anim_clip.predict.model import Opened, window_bounds
from anim_clip.predict.stream import DecodeAhead

from processes import ROOT, run_cli
from test_predict import cfg, demo, head_ckpt  # noqa: F401  (module fixtures: the tiny head checkpoint)
from videos import write_garbage, write_video

FPS = 8


def clip(path: Path, seconds: float, seed: int) -> Path:
    """A 64×64 H.264 clip of textured noise, different for every seed."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(int(seconds * FPS), 64, 64, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, frames, fps=FPS)


@pytest.fixture(scope="module")
def season(tmp_path_factory) -> Path:
    """A camera-trap card: videos in two folders (plus files that are not videos)."""
    root = tmp_path_factory.mktemp("season")
    for k in range(8):
        clip(root / f"cam{k % 2}" / f"clip{k:02d}.mp4", 3, seed=k)
    (root / "cam0" / "notes.txt").write_text("battery low\n")
    (root / "cam1" / "._clip01.mp4").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork
    return root


@pytest.fixture(scope="module")
def run_dir(head_ckpt: Path, tmp_path_factory) -> Path:  # noqa: F811
    run = tmp_path_factory.mktemp("run")
    shutil.copy(head_ckpt, run / "last.pt")
    return run


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folders_lists_and_non_videos(season: Path, tmp_path: Path):
    listed = tmp_path / "list.txt"
    listed.write_text(f"# second card\n{season / 'cam1' / 'clip01.mp4'}\nmissing.mov\nreadme.md\n")
    found = collect_videos([season / "cam1", season / "cam0" / "clip00.mp4"], listed)
    cam1 = [season / "cam1" / f"clip{k:02d}.mp4" for k in (1, 3, 5, 7)]
    assert found.videos == [*cam1, season / "cam0" / "clip00.mp4", tmp_path / "missing.mov"]  # clip01 once
    assert found.skipped == [(season / "cam1" / "._clip01.mp4", "hidden file"),
                             (tmp_path / "readme.md", "no such file or folder")]
    with pytest.raises(AnimClipError, match="no video files in .*notes.txt"):
        collect_videos([season / "cam0" / "notes.txt"])


def test_a_run_directory_and_a_folder_give_one_row_per_video(run_dir: Path, season: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert run_predict(run_dir, [season], out=out, species=["Duck"], device="cpu", workers=2, top_k=2) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "skipped 2 paths that are not videos" in said and "notes.txt (not a video (extension .txt))" in said
    videos = sorted(str(p) for p in season.rglob("clip*.mp4"))
    table = rows(out / "predictions.csv")
    record = json.loads((out / "predictions.json").read_text())
    assert [r["video"] for r in table] == videos == [v["video"] for v in record["videos"]]
    assert record["checkpoint"] == str(run_dir / "last.pt")
    assert list(table[0]) == ["video", "status", "error", "duration_s", "frames", "frames_used", "species_source",
                              "species", "action_1", "score_1", "action_2", "score_2"]
    for row, entry in zip(table, record["videos"]):
        assert row["status"] == "ok" and row["error"] == "" and row["species"] == "Duck:1.0000"
        assert row["species_source"] == entry["species_source"] == "given"
        assert float(row["duration_s"]) == pytest.approx(3.0) and int(row["frames"]) == 3 * FPS
        assert int(row["frames_used"]) == entry["frames_used"] == 4  # T frames of one clip, one crop
        assert [row["action_1"], float(row["score_1"])] == [entry["top"][0]["action"], pytest.approx(entry["top"][0]["score"])]
        assert float(row["score_1"]) >= float(row["score_2"])


def test_a_changed_setting_or_checkpoint_is_refused_naming_it(head_ckpt: Path, season: Path, tmp_path: Path):  # noqa: F811
    videos = [season / "cam0" / "clip00.mp4"]
    out = tmp_path / "out"
    run_predict(head_ckpt, videos, out=out, species=["Duck"], device="cpu")
    run_predict(head_ckpt, videos, out=out, species=["duck "], device="cpu")  # the same species, spelt otherwise
    with pytest.raises(AnimClipError, match=r"other settings \(--top-k 5 -> 3\); predict into another --out"):
        run_predict(head_ckpt, videos, out=out, species=["Duck"], top_k=3, device="cpu")
    with pytest.raises(AnimClipError, match=r"--species \['Duck'\] -> \['Fox'\]"):
        run_predict(head_ckpt, videos, out=out, species=["Fox"], device="cpu")
    other = tmp_path / "other.pt"
    other.write_bytes(head_ckpt.read_bytes() + b"\0")  # another file: another sha256 (torch ignores the tail)
    with pytest.raises(AnimClipError, match="checkpoint sha256"):
        run_predict(other, videos, out=out, species=["Duck"], device="cpu")
    assert len(Journal.read(out / "predictions.jsonl").records) == 1  # nothing was added by the refused runs


def test_shards_merged_give_the_rows_of_one_process(head_ckpt: Path, season: Path, tmp_path: Path):  # noqa: F811
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    run_predict(head_ckpt, [season], out=one, device="cpu", workers=3)
    for i in range(3):
        if i == 2:
            with pytest.raises(AnimClipError, match="part 3 of 3 not started yet"):
                merge_predictions(sharded)
        run_predict(head_ckpt, [season], out=sharded, device="cpu", shard=(i, 3), workers=1)
        assert len(Journal.read(sharded / f"predictions.part-{i + 1}-of-3.jsonl").records) == len(range(i, 8, 3))
    assert not (sharded / "predictions.csv").exists()  # a shard writes its part only
    merged = run_cli("predict-merge", str(sharded))
    assert "8/8 videos predicted" in merged.stdout
    merged, single = rows(sharded / "predictions.csv"), rows(one / "predictions.csv")
    assert [r["video"] for r in merged] == [r["video"] for r in single] and len(merged) == 8
    assert {r["species_source"] for r in merged} == {"predicted"} and all(r["species"].count(":") == 3 for r in merged)
    for a, b in zip(merged, single):
        assert [a[k] for k in a if not k.startswith("score") and k != "species"] == \
               [b[k] for k in b if not k.startswith("score") and k != "species"]
        assert [float(a[k]) for k in a if k.startswith("score")] == pytest.approx([float(b[k]) for k in b if k.startswith("score")], abs=1e-5)


def test_a_killed_run_resumes_without_rescoring_or_duplicates(run_dir: Path, tmp_path: Path):
    """SIGKILL while videos are being journaled; the same command again scores only the rest, the
    failed video is one row with its reason, and the exit code says a video failed."""
    folder = tmp_path / "videos"
    count = 12
    for k in range(count):
        clip(folder / f"v{k:02d}.mp4", 2, seed=100 + k)
    broken = write_garbage(folder / "v99.mp4")
    out, journal = tmp_path / "out", tmp_path / "out" / "predictions.jsonl"
    args = ["predict", str(run_dir), str(folder), "--out", str(out), "--window", "0.5", "--stride", "0.25",
            "--workers", "1", "--species", "Fox"]
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "anim_clip", *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        while len(Journal.read(journal).records) < 2 and process.poll() is None:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    with open(journal, "a") as f:
        f.write('{"video": "' + str(folder / "v00.mp4"))  # a line torn by the kill
    before = Journal.read(journal).records
    scored = {r["video"] for r in before if r["error"] is None}
    assert 2 <= len(before) < count + 1 and not (out / "predictions.csv").exists()

    again = run_cli(*args, check=False)
    assert again.returncode == 1, again.stdout + again.stderr  # the broken video failed
    said = " ".join(again.stdout.split())
    assert f"{len(scored)} of {count + 1} videos already scored" in said
    assert f"scoring the other {count + 1 - len(scored)}" in said
    after = Journal.read(journal).records
    good = [r["video"] for r in after if r["error"] is None]
    assert len(good) == len(set(good)) == count  # none scored twice
    assert len(after) - len(before) == count + 1 - len(scored)  # only the rest was scored
    table = rows(out / "predictions.csv")
    assert len(table) == count + 1 and [r["video"] for r in table] == sorted(r["video"] for r in table)
    failed = [r for r in table if r["status"] == "failed"]
    assert [r["video"] for r in failed] == [str(broken)] and failed[0]["error"].startswith(f"{broken}: cannot decode video")
    assert failed[0]["action_1"] == "" and all(r["action_1"] for r in table if r["status"] == "ok")


def test_a_long_clip_is_decoded_window_by_window_in_bounded_memory(head_ckpt: Path, tmp_path: Path):  # noqa: F811
    """A 30 s clip, 1 s windows: each decoded segment holds only its window's frames and the
    decoding thread is never more than ``buffer`` segments ahead of the consumer."""
    long = clip(tmp_path / "long.mp4", 30, seed=7)
    predictor = Predictor(head_ckpt, species=["Fox"], device="cpu")
    produced, consumed, ahead = [0], [0], []

    def decode(path: Path, put) -> None:
        def counted(item) -> None:
            put(item)
            produced[0] += 1

        predictor._decode_video(path, 1.0, 0.5, counted)

    items = []
    for _, item in DecodeAhead(decode, [long], workers=1, buffer=2):
        consumed[0] += 1
        time.sleep(0.005)  # a slow consumer: an unbounded decoder would run far ahead
        ahead.append(produced[0] - consumed[0])
        items.append(item)
    opened, segments = items[0], items[1:]
    assert isinstance(opened, Opened) and len(segments) == len(window_bounds(30 * FPS, FPS, 1.0, 0.5)) == 59
    assert max(ahead) <= 2
    assert all(s.frames.shape[0] <= predictor.num_frames for s in segments)  # one window's views, never the clip
    assert [s.index for s in segments] == list(range(59))

    out = tmp_path / "out"
    assert run_predict(head_ckpt, [long], out=out, window=1.0, species=["Fox"], device="cpu") == 0
    record = json.loads((out / "predictions.json").read_text())["videos"][0]
    assert len(record["windows"]) == 59 and record["frames_used"] == 59 * predictor.num_frames
    timeline = rows(out / "timeline.csv")
    assert len(timeline) == 59 and {r["video"] for r in timeline} == {str(long)}
    assert (out / "timeline_long.png").stat().st_size > 0


def test_decoding_ahead_keeps_order_surfaces_a_worker_bug_and_stops_when_left():
    def decode(n: int, put) -> None:
        if n == 3:
            raise RuntimeError("a bug in a decoding thread")
        for k in range(n):
            put((n, k))

    assert list(DecodeAhead(decode, [2, 0, 1], workers=2)) == [(0, (2, 0)), (0, (2, 1)), (2, (1, 0))]
    with pytest.raises(RuntimeError, match="a bug in a decoding thread"):
        list(DecodeAhead(decode, [1, 3, 1], workers=2))
    threads = threading.active_count()
    endless = iter(DecodeAhead(lambda n, put: [put(k) for k in range(10**9)], [0, 1, 2], workers=2))
    for _, item in endless:
        if item == 5:
            break
    endless.close()  # the consumer leaves: the workers, blocked on full queues, stop and are joined
    assert threading.active_count() == threads
