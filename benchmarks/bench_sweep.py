"""What a sweep costs beyond its training loops: process start, reading the cache, building each
model, the baselines, reports and plots, paid once per sweep (or per worker) instead of per run.

Demo: the sweep ``model.refine=on,off`` × ``--seeds`` seeds of the ``demo`` config on the demo cache
(``make-demo-data`` + ``extract``, made under ``--work`` when absent), timed as ``anim-clip sweep``
in a subprocess, serial and with ``--parallel 2``, each from an empty baseline store:

- ``sweep_seconds``: the command's wall time;
- ``loop_seconds_sum``: the same cells' training loops measured alone (``train`` in this process,
  from the first epoch's start to the final evaluation's, checkpoints included);
- ``overhead_ratio``: their quotient; ``baseline_fits``: the baseline store's entries the sweep wrote
  (one per split evaluated means one probe fit);
- ``separate_processes_seconds``: the cells as one ``anim-clip train`` process each (the sweep before).

AK-shaped: a synthetic cache at Animal Kingdom's shape (its 24 003 training and 6 096 test clips
and 140 actions from the release's lists, 4 views × 8 frames × 512 random features per clip, as
``bench_eval`` makes them), ``--ak-cells`` cells × 1 epoch, serial; ``fixed_seconds_per_cell`` is
what a cell costs beyond its loop.

    python -m benchmarks.bench_sweep [--epochs E] [--seeds S] [--ak-clips N] [--work DIR]   (results/sweep.json)

The committed figures: ``python -m benchmarks.bench_sweep`` on an idle machine (the demo's 100 epochs,
4 seeds, all of AK's clips).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anim_clip.cache.extract import extract
from anim_clip.cache.signature import config_signature
from anim_clip.cache.store import SplitSpec, SplitWriter, TextFeatures, create_split, create_store, write_text
from anim_clip.config import Config, load_config
from anim_clip.data.dataset import load_dataset
from anim_clip.data.demo import make_demo_data
from anim_clip.demo import demo_config
from anim_clip.evaluate.baselines import STORE
from anim_clip.models.backbone import resolve_weights
from anim_clip.models.features import FrameFeatures
from anim_clip.train import engine
from benchmarks.common import save

GRID = "model.refine=on,off"
AK_FRAMES, AK_DIM = 8, 512  # views: ak-cached's (4 augmented training views, 4 x 3 test views)


def loop_seconds(cfg: Config, cache: Path, out: Path, allow_incomplete: bool) -> float:
    """A lone run's training loop: from its first epoch's start to its final evaluation's start."""
    marks: dict[str, float] = {}
    train_epoch, final_report = engine._train_epoch, engine.final_report

    def timed_epoch(*args, **kwargs):
        marks.setdefault("start", time.perf_counter())
        return train_epoch(*args, **kwargs)

    def timed_final(*args, **kwargs):
        marks["end"] = time.perf_counter()
        return final_report(*args, **kwargs)

    engine._train_epoch, engine.final_report = timed_epoch, timed_final
    try:
        engine.train(cfg, cache=cache, out=out, progress=False, allow_incomplete=allow_incomplete)
    finally:
        engine._train_epoch, engine.final_report = train_epoch, final_report
    return marks["end"] - marks["start"]


def cli(*args: str) -> float:
    """Wall seconds of ``python -m anim_clip ARGS`` (output to a log, as a cluster job's)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "anim_clip", *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def sweep_case(config: str, overrides: list[str], cells: list[list[str]], seeds: int, cache: Path, work: Path,
               parallel: tuple[int, ...], separate: bool, allow_incomplete: bool = False) -> dict[str, Any]:
    """The sweep of ``cells`` (``GRID`` × ``seeds``) timed against its loops alone (on the clips
    extracted so far when ``allow_incomplete``)."""
    shutil.rmtree(work, ignore_errors=True)
    loops = [loop_seconds(load_config(config, [*overrides, *cell]), cache, work / "alone" / str(i), allow_incomplete)
             for i, cell in enumerate(cells)]
    result: dict[str, Any] = {"cells": len(cells), "loop_seconds_sum": sum(loops)}
    for n in parallel:
        shutil.rmtree(cache / STORE, ignore_errors=True)
        seconds = cli("sweep", config, "--cache", str(cache), "--out", str(work / f"sweep{n}"), "--grid", GRID,
                      "--seeds", str(seeds), "--parallel", str(n), *(["--allow-incomplete"] * allow_incomplete),
                      *sets(overrides))
        key = "serial" if n == 1 else f"parallel_{n}"
        result[key] = {"sweep_seconds": seconds, "overhead_ratio": seconds / sum(loops),
                       "baseline_fits": len(list((cache / STORE).glob("*.npz")))}
        print(f"{key}: {len(cells)} cells in {seconds:.1f} s, loops alone {sum(loops):.1f} s "
              f"(ratio {seconds / sum(loops):.2f}), {result[key]['baseline_fits']} baseline fits")
    if "parallel_2" in result:
        result["parallel_2"]["wall_vs_serial"] = result["parallel_2"]["sweep_seconds"] / result["serial"]["sweep_seconds"]
    if separate:
        result["separate_processes_seconds"] = sum(
            cli("train", config, "--cache", str(cache), "--out", str(work / "separate" / str(i)), *sets([*overrides, *cell]))
            for i, cell in enumerate(cells))
        print(f"one train process per cell: {result['separate_processes_seconds']:.1f} s")
    return result


def grid_cells(seeds: int, first_seed: int) -> list[list[str]]:
    return [[f"model.refine={v}", f"train.seed={first_seed + k}"] for v in ("on", "off") for k in range(seeds)]


def demo_case(work: Path, epochs: int | None, seeds: int) -> dict[str, Any]:
    data, cache = work / "demo-data", work / "demo-cache.zarr"
    make_demo_data(data, progress=False)
    paths = [f"data.annotations={data}", f"data.root={data / 'videos'}"]
    extract(demo_config(data), cache, progress=False)
    overrides = [*paths, *([f"train.epochs={epochs}"] if epochs else [])]
    cfg = demo_config(data, overrides)
    result = sweep_case("demo", overrides, grid_cells(seeds, cfg.train.seed), seeds, cache, work / "demo-runs", (1, 2),
                        separate=True)
    return {"epochs": cfg.train.epochs, "seeds": seeds, **result}


def ak_cache(cfg: Config, root: Path, clips: int | None) -> None:
    """A store ``train`` accepts for ``cfg`` (AK's lists): its signature, the class names' text
    embeddings, and random fp16 features of every clip's views; only the first ``clips`` of each
    split written when given (the rest pending: runs on it need ``--allow-incomplete``)."""
    dataset = load_dataset(cfg.data)
    signature = config_signature(cfg, resolve_weights(cfg.backbone)[1])
    signature["backbone"].update(embed_dim=AK_DIM, patch_shape=None, tower_precision="float16")
    create_store(root, signature)
    gen = torch.Generator().manual_seed(0)
    for kind, names in (("actions", dataset.actions), ("species", dataset.species)):
        write_text(root, kind, TextFeatures(list(names), torch.randn(len(names), AK_DIM, generator=gen), [],
                                            torch.zeros(0, AK_DIM), torch.zeros(0, dtype=torch.int64)))
    s = cfg.sampling
    layouts = {"train": (s.train_views, "augmented"), "test": (s.test_clips * s.test_crops,
                                                                f"{s.test_clips} clips x {s.test_crops} crops")}
    for split, (views, kind) in layouts.items():
        create_split(root, split, SplitSpec([c.path for c in dataset.clips(split)], dataset.targets(split),
                                            dataset.species_vectors(split), views, AK_FRAMES, AK_DIM, kind))
        with SplitWriter(root, split) as writer:
            for i in list(writer.pending)[:clips]:
                writer.write(i, FrameFeatures(torch.randn(views, AK_FRAMES, AK_DIM, generator=gen)),
                             np.zeros((views, AK_FRAMES)), "synthetic")
            writer.flush()  # the last, incomplete chunk of a partial cache


def ak_case(work: Path, clips: int | None, cells: int) -> dict[str, Any]:
    overrides = ["backbone.pretrained=null", "train.epochs=1", "train.warmup_epochs=0"]
    cfg = load_config("ak-cached", overrides)
    cache = work / "ak-cache.zarr"
    if not cache.exists():
        ak_cache(cfg, cache, clips)
    result = sweep_case("ak-cached", overrides, grid_cells(cells // 2, cfg.train.seed), cells // 2, cache,
                        work / "ak-runs", (1,), separate=False, allow_incomplete=clips is not None)
    result["fixed_seconds_per_cell"] = (result["serial"]["sweep_seconds"] - result["loop_seconds_sum"]) / cells
    return {"clips_per_split": clips or "all", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="demo epochs (default: the demo config's)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--ak-clips", type=int, default=None, help="clips per AK split (default: all)")
    parser.add_argument("--ak-cells", type=int, default=4)
    parser.add_argument("--work", type=Path, default=None, help="where data, caches and runs go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        results = {"demo": demo_case(work, args.epochs, args.seeds), "ak_shaped": ak_case(work, args.ak_clips, args.ak_cells)}
    print(json.dumps(results, indent=2))
    save("sweep", results)


if __name__ == "__main__":
    main()
