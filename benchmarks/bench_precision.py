"""Does bf16 autocast of the head change what the demo learns? The evidence behind
``backbone.precision=auto`` choosing bf16 for the head on CPUs with bf16 units.

The demo dataset (seed 0) is generated and extracted once; its head is then trained with the demo
recipe for three training seeds in fp32 and in bf16, and each run's test mAP and training time are
recorded. bf16 is fit for ``auto`` when its mean mAP lies within the seed-to-seed spread of fp32's.

    python -m benchmarks.bench_precision [--seeds 3]   (results/precision.json)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from anim_clip.cache.extract import extract
from anim_clip.data.demo import make_demo_data
from anim_clip.demo import demo_config
from anim_clip.runtime.precision import cpu_has_native_bf16
from anim_clip.train.engine import train
from benchmarks.common import save


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
                cfg = demo_config(root / "data", [f"backbone.precision={precision}", f"train.seed={seed}"])
                start = time.perf_counter()
                result = train(cfg, cache=root / "cache", out=root / f"{precision}-{seed}", progress=False)
                runs.append({"precision": precision, "seed": seed, "test_mAP": result.report["mAP"],
                             "train_seconds": time.perf_counter() - start})
                print(runs[-1], flush=True)
    summary = {}
    for precision in ("fp32", "bf16"):
        maps = [r["test_mAP"] for r in runs if r["precision"] == precision]
        summary[precision] = {"mean_mAP": statistics.mean(maps), "std_mAP": statistics.stdev(maps) if len(maps) > 1 else 0.0}
    save("precision", {"cpu_has_native_bf16": cpu_has_native_bf16(), "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
