"""How the demo's recipe (``anim_clip/configs/demo.yaml``) was chosen: on a validation share of the
training clips, never on the test split.

The demo dataset (seed 0) is generated and extracted once. Every candidate recipe below trains with
``train.val_fraction=0.2`` for ``--seeds`` training seeds (each seed also holds out another 48 of
the 240 training clips); its score is the last epoch's validation mAP (the weights the report
uses), mean and standard deviation over seeds, beside the linear probe's on the same validation
clips (fitted on the same training clips). The candidate with the best mean is the recipe. Then
the chosen recipe and the previous one run as ``anim-clip demo`` runs them (all 240 training clips,
seeds 0..n-1), and their test reports, with every baseline's, are recorded.

Every candidate states all the values it varies (the previous recipe's otherwise), so the list
does not depend on what demo.yaml holds now.

    python -m benchmarks.bench_demo_recipe [--seeds 5] [--threads 1]   (results/demo_recipe.json)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from anim_clip.cache.extract import extract
from anim_clip.cache.reader import open_cached_data
from anim_clip.data.dataset import load_dataset
from anim_clip.data.demo import make_demo_data
from anim_clip.demo import demo_config
from anim_clip.evaluate.baselines import cached_baselines
from anim_clip.evaluate.metrics import mean_average_precision
from anim_clip.runtime.rundir import RunDir
from anim_clip.train.engine import train
from anim_clip.models.inputs import HeadInputs
from benchmarks.common import save

PREVIOUS = {"train.epochs": 30, "train.head_lr": 1e-3, "train.batch_size": 32, "train.weight_decay": 1e-3,
            "train.mixup_alpha": 0.8, "train.cutmix_alpha": 1.0, "model.mit_layers": 1,
            "model.refine_graph": "release"}
NO_MIXING = {"train.mixup_alpha": 0.0, "train.cutmix_alpha": 0.0}
LONGER = {"train.epochs": 100, "train.head_lr": 3e-3, **NO_MIXING}
CANDIDATES: dict[str, dict[str, Any]] = {
    "previous (30 epochs, lr 1e-3, mixing)": {},
    "no mixing": NO_MIXING,
    "60 epochs": {"train.epochs": 60},
    "100 epochs": {"train.epochs": 100},
    "100 epochs, no mixing": {"train.epochs": 100, **NO_MIXING},
    "100 epochs, lr 3e-3": {"train.epochs": 100, "train.head_lr": 3e-3},
    "100 epochs, lr 3e-3, no mixing": LONGER,
    "100 epochs, lr 1e-2, no mixing": {**LONGER, "train.head_lr": 1e-2},
    "200 epochs, lr 3e-3, no mixing": {**LONGER, "train.epochs": 200},
    "100 epochs, lr 3e-3, no mixing, batch 64": {**LONGER, "train.batch_size": 64},
    "100 epochs, lr 3e-3, no mixing, weight decay 0.05": {**LONGER, "train.weight_decay": 0.05},
    "100 epochs, lr 3e-3, no mixing, normalized graph": {**LONGER, "model.refine_graph": "normalized"},
    "100 epochs, lr 3e-3, no mixing, 2 MIT layers": {**LONGER, "model.mit_layers": 2},
}


def overrides(recipe: dict[str, Any], *extra: str) -> list[str]:
    return [f"{k}={v}" for k, v in {**PREVIOUS, **recipe}.items()] + list(extra)


def validation_runs(root: Path, settings: list[str], seeds: int) -> list[dict[str, Any]]:
    """With the overrides ``settings``: the last epoch's validation mAP, the steps taken and the
    training time of each seed."""
    runs = []
    for seed in range(seeds):
        cfg = demo_config(root / "data", [*settings, "train.val_fraction=0.2", f"train.seed={seed}"])
        out = Path(tempfile.mkdtemp(dir=root))
        start = time.perf_counter()
        train(cfg, cache=root / "cache", out=out, progress=False)
        last = [r for r in RunDir(out).records() if r.get("kind") == "epoch"][-1]
        runs.append({"seed": seed, "val_mAP": last["val_metric"], "steps": last["step"],
                     "seconds": time.perf_counter() - start})
    return runs


def probe_on_validation(root: Path, seed: int) -> float:
    """The linear probe's mAP on the validation share of ``seed``, fitted on the rest."""
    cfg = demo_config(root / "data", overrides({}, "train.val_fraction=0.2", f"train.seed={seed}"))
    cache, data = open_cached_data(cfg, root / "cache", load_dataset(cfg.data), torch.device("cpu"),
                                   HeadInputs.of_config(cfg))
    scores, _ = cached_baselines(cache, data, "val", cfg, multilabel=True)
    return mean_average_precision(scores["linear_probe"], data["val"].targets().numpy())[0]


def test_runs(root: Path, settings: list[str], seeds: int) -> list[dict[str, Any]]:
    """The demo's protocol with the overrides ``settings``: every training clip, the test report with
    its baselines."""
    runs = []
    for seed in range(seeds):
        cfg = demo_config(root / "data", [*settings, f"train.seed={seed}"])
        start = time.perf_counter()
        report = train(cfg, cache=root / "cache", out=Path(tempfile.mkdtemp(dir=root)), progress=False).report
        runs.append({"seed": seed, "seconds": time.perf_counter() - start, "head_mAP": report["mAP"],
                     **{f"{name}_mAP": b["mAP"] for name, b in report["baselines"].items()}})
    return runs


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.pstdev(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_demo_data(root / "data", seed=0)
        extract(demo_config(root / "data"), root / "cache", progress=False)
        probe = [probe_on_validation(root, seed) for seed in range(args.seeds)]
        candidates = []
        for name, recipe in CANDIDATES.items():
            runs = validation_runs(root, overrides(recipe), args.seeds)
            candidates.append({"name": name, "overrides": overrides(recipe), "runs": runs,
                               "val_mAP": mean_std([r["val_mAP"] for r in runs]),
                               "seconds": statistics.mean(r["seconds"] for r in runs)})
            print(name, candidates[-1]["val_mAP"], flush=True)
        chosen = max(candidates, key=lambda c: c["val_mAP"]["mean"])
        tests = {}
        for name in dict.fromkeys((chosen["name"], "previous (30 epochs, lr 1e-3, mixing)")):
            runs = test_runs(root, overrides(CANDIDATES[name]), args.seeds)
            tests[name] = {"runs": runs, **{key: mean_std([r[key] for r in runs]) for key in runs[0] if key != "seed"}}
            print(name, tests[name]["head_mAP"], tests[name]["linear_probe_mAP"], flush=True)
    save("demo_recipe", {"seeds": args.seeds, "threads": args.threads, "probe_val_mAP": probe,
                         "probe_val": mean_std(probe), "candidates": candidates, "chosen": chosen["name"],
                         "test": tests})


if __name__ == "__main__":
    main()
