"""Does bf16 autocast of the head change what the demo learns? The evidence behind
``runtime.precision=auto`` choosing bf16 for the head on CPUs with bf16 units.

The demo dataset (seed 0) is generated and extracted once; its head is then trained with the demo
recipe for three training seeds in fp32 and in bf16, and each run's test mAP and training time are
recorded. bf16 is fit for ``auto`` when its mean mAP lies within the seed-to-seed spread of fp32's.
Also timed: the end-of-training evaluation of the test split, by the scoring path and by the
per-view path it replaced (:func:`benchmarks.bench_eval.per_view_logits`).

    python -m benchmarks.bench_precision [--seeds 3]   (results/precision.json)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from anim_clip.cache.extract import extract
from anim_clip.cache.reader import open_cached_data
from anim_clip.config import Config
from anim_clip.data.dataset import load_dataset
from anim_clip.data.demo import make_demo_data
from anim_clip.demo import demo_config
from anim_clip.evaluate.scoring import split_scores
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.runtime.precision import cpu_has_native_bf16
from anim_clip.train.engine import train
from benchmarks.bench_eval import per_view_logits
from benchmarks.common import save


def eval_seconds(head: AnimalCLIPHead, cfg: Config, root: Path) -> dict[str, float]:
    """The test split scored by the path and by the per-view path, seconds each."""
    _, data = open_cached_data(cfg, root / "cache", load_dataset(cfg.data), torch.device("cpu"), head.inputs)
    test = data["test"]
    head.eval()
    start = time.perf_counter()
    split_scores(head, test, test.indices, cfg.runtime.precision, cfg.eval.scores)
    middle = time.perf_counter()
    per_view_logits(head, test, test.indices)
    return {"eval_path_s": middle - start, "eval_per_view_s": time.perf_counter() - middle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_demo_data(root / "data", seed=0)
        extract(demo_config(root / "data"), root / "cache", progress=False)
        for precision in ("fp32", "bf16"):
            for seed in range(args.seeds):
                cfg = demo_config(root / "data", [f"runtime.precision={precision}", f"train.seed={seed}"])
                start = time.perf_counter()
                result = train(cfg, cache=root / "cache", out=root / f"{precision}-{seed}", progress=False)
                runs.append({"precision": precision, "seed": seed, "test_mAP": result.report["mAP"],
                             "train_seconds": time.perf_counter() - start, **eval_seconds(result.model, cfg, root)})
                print(runs[-1], flush=True)
    summary = {}
    for precision in ("fp32", "bf16"):
        maps = [r["test_mAP"] for r in runs if r["precision"] == precision]
        summary[precision] = {"mean_mAP": statistics.mean(maps), "std_mAP": statistics.stdev(maps) if len(maps) > 1 else 0.0}
    save("precision", {"cpu_has_native_bf16": cpu_has_native_bf16(), "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
