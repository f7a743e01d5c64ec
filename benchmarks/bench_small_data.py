"""Small training sets: a recipe chosen on validation clips for 48 and 96 training clips, and its
test mAP beside the linear probe's.

For each size the demo dataset (seed 0, ``--sizes`` training clips, 96 test clips) is generated and
extracted once. Every candidate recipe below trains with ``train.val_fraction=0.2`` for ``--seeds``
training seeds (each seed holds out another fifth of the training clips); its score is the last
epoch's validation mAP (the weights a report uses), mean and standard deviation over seeds and
sizes, beside the linear probe's on the same validation clips (fitted on the same training clips).
The candidate with the best mean is chosen: the test split plays no part in the choice. Then the
chosen recipe (on each size and on the demo's own 240 clips) and the demo's previous recipe (batch
32, on each size) run as ``anim-clip train`` runs them (every training clip, seeds 0..n-1), and
their test mAP is recorded with the probe's and the gap between them.

Every candidate states all the values it varies (the previous demo recipe's otherwise).

    python -m benchmarks.bench_small_data [--seeds 3] [--threads 1]   (results/small_data.json)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from anim_clip.cache.extract import extract
from anim_clip.data.demo import make_demo_data
from anim_clip.demo import demo_config
from benchmarks.bench_demo_recipe import mean_std, probe_on_validation
from benchmarks.bench_demo_recipe import test_runs as recipe_test_runs
from benchmarks.bench_demo_recipe import validation_runs as recipe_validation_runs
from benchmarks.common import save

PREVIOUS = {"train.epochs": 100, "train.head_lr": 1e-2, "train.batch_size": 32, "train.min_steps_per_epoch": 1}
STEPS_8 = {"train.min_steps_per_epoch": 8}  # the steps per epoch of the demo's recipe on its 240 clips
CANDIDATES: dict[str, dict[str, Any]] = {
    "batch 32 (the demo recipe before)": {},
    "at least 4 steps per epoch": {"train.min_steps_per_epoch": 4},
    "at least 8 steps per epoch": STEPS_8,
    "at least 8 steps per epoch, 50 epochs": {**STEPS_8, "train.epochs": 50},
}
PREVIOUS_NAME = "batch 32 (the demo recipe before)"


def overrides(recipe: dict[str, Any], *extra: str) -> list[str]:
    return [f"{k}={v}" for k, v in {**PREVIOUS, **recipe}.items()] + list(extra)


def prepare(root: Path, clips: int) -> Path:
    """The demo dataset with ``clips`` training clips, extracted; its folder."""
    folder = root / f"train{clips}"
    make_demo_data(folder / "data", train_clips=clips, seed=0)
    extract(demo_config(folder / "data"), folder / "cache", progress=False)
    return folder


def validation_runs(folder: Path, clips: int, recipe: dict[str, Any], seeds: int) -> list[dict[str, Any]]:
    """The last epoch's validation mAP, the steps and the training time of each seed, on ``clips`` clips."""
    return [{"clips": clips, **run} for run in recipe_validation_runs(folder, overrides(recipe), seeds)]


def test_runs(folder: Path, recipe: dict[str, Any], seeds: int) -> list[dict[str, Any]]:
    """Every training clip; the test report's mAP, its baselines' and the linear probe's lead."""
    return [{**run, "gap": run["linear_probe_mAP"] - run["head_mAP"]}
            for run in recipe_test_runs(folder, overrides(recipe), seeds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {clips: prepare(Path(tmp), clips) for clips in (*args.sizes, 240)}
        probe = {clips: mean_std([probe_on_validation(folders[clips], s) for s in range(args.seeds)])
                 for clips in args.sizes}
        candidates = []
        for name, recipe in CANDIDATES.items():
            runs = [r for clips in args.sizes for r in validation_runs(folders[clips], clips, recipe, args.seeds)]
            candidates.append({"name": name, "runs": runs, "val_mAP": mean_std([r["val_mAP"] for r in runs]),
                               **{f"val_mAP_{c}": mean_std([r["val_mAP"] for r in runs if r["clips"] == c])
                                  for c in args.sizes},
                               "seconds": statistics.mean(r["seconds"] for r in runs)})
            print(name, candidates[-1]["val_mAP"], flush=True)
        chosen = max(candidates, key=lambda c: c["val_mAP"]["mean"])
        tests = {}
        plan = [(chosen["name"], clips) for clips in (*args.sizes, 240)] + [(PREVIOUS_NAME, c) for c in args.sizes]
        for name, clips in dict.fromkeys(plan):
            runs = test_runs(folders[clips], CANDIDATES[name], args.seeds)
            tests[f"{name}, {clips} clips"] = {"recipe": name, "clips": clips, "overrides": overrides(CANDIDATES[name]),
                                               "runs": runs, **{key: mean_std([r[key] for r in runs])
                                                                for key in runs[0] if key != "seed"}}
            print(name, clips, tests[f"{name}, {clips} clips"]["gap"], flush=True)
    save("small_data", {"seeds": args.seeds, "threads": args.threads, "sizes": args.sizes, "probe_val_mAP": probe,
                        "candidates": candidates, "chosen": chosen["name"], "test": tests})


if __name__ == "__main__":
    main()
