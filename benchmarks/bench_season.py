"""A field season end to end, as an ecologist runs it: a folder of 1 000 clips scored by one
``anim-clip predict`` command with windows and a Camtrap DP package, killed (SIGKILL) half-way,
then the same command run again. Recorded: how many videos each run scored, whether any video was
scored twice or left out, the outputs' row counts, and whether the package validates against the
Camtrap DP 1.0.2 profile shipped in the package (frictionless, offline, as the tests validate it).

The clips are short and small (the point is the bookkeeping at a season's count, not the speed:
``bench_predict.py`` measures that), a pool of distinct clips hard-linked to 1 000 paths in ten
camera folders, scored by the untrained tiny head ``bench_predict`` makes.

    python -m benchmarks.bench_season [--videos 1000]      (results/season.json)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from anim_clip.predict.journal import Journal
from benchmarks.bench_predict import link_season, make_checkpoint, make_pool
from benchmarks.common import save

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_export_camtrap import validate_offline  # noqa: E402  (the suite's offline validation)


def command(checkpoint: Path, season: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "anim_clip", "predict", str(checkpoint), str(season), "--out", str(out),
            "--window", "1", "--camtrap-dp", str(out / "camtrap-dp"), "--events-threshold", "0.2"]


def kill_half_way(args: list[str], journal: Path, count: int) -> int:
    """Run ``args``, SIGKILL it once half the videos are journaled; how many were then."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    while process.poll() is None and (not journal.exists() or len(Journal.read(journal).records) < count // 2):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return len(Journal.read(journal).records)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pool = make_pool(work / "pool", 20, 2.0, 320, 240)
        season = link_season(pool, work / "season", args.videos)
        checkpoint, out = make_checkpoint(work), work / "out"
        journal = out / "predictions.jsonl"
        before = kill_half_way(command(checkpoint, season, out), journal, args.videos)
        start = time.perf_counter()
        rerun = subprocess.run(command(checkpoint, season, out), capture_output=True, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - start
        scored = [r["video"] for r in Journal.read(journal).records]
        package = out / "camtrap-dp"
        with pytest.MonkeyPatch.context() as patch:
            valid, errors = validate_offline(package, work, patch)
        result = {
            "videos": args.videos, "distinct_clips": len(pool), "clip": "2 s, 320x240, H.264",
            "scored_before_kill": before, "scored_on_rerun": len(scored) - before, "rerun_exit_code": rerun.returncode,
            "rerun_seconds": round(seconds, 1), "journal_records": len(scored), "videos_scored_twice": len(scored) - len(set(scored)),
            "videos_left_out": args.videos - len(set(scored)), "predictions_csv_rows": len(rows(out / "predictions.csv")),
            "media_rows": len(rows(package / "media.csv")), "observation_rows": len(rows(package / "observations.csv")),
            "camtrap_dp_valid": valid, "validation_errors": errors[:5],
        }
    print(json.dumps(result, indent=2))
    save("season", result)


if __name__ == "__main__":
    main()
