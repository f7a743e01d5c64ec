"""Extraction throughput (clips/s, frames/s) on CPU: the tiny model and ViT-B/16 (random weights,
the real architecture) over the same demo clips, 1 view × 8 frames per clip, decord decoding.

    python benchmarks/bench_extract.py [--clips 24]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from anim_clip.cache.extract import extract
from anim_clip.demo import demo_config
from anim_clip.data.demo import make_demo_data
from benchmarks.common import save

MODELS = {
    "anim-clip-tiny (64 px)": [],
    "ViT-B-16 (224 px)": ["backbone.model=ViT-B-16", "sampling.image_size=224", "sampling.resize=256",
                          "backbone.batch_frames=64"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_demo_data(data, train_clips=1, test_clips=args.clips, seed=0)
        for name, overrides in MODELS.items():
            cfg = demo_config(data, ["backbone.pretrained=null", *overrides])
            start = time.perf_counter()
            (report,) = extract(cfg, Path(tmp) / name.split()[0], ("test",), workers=2, progress=False)
            seconds = time.perf_counter() - start
            rows.append({"model": name, "clips": report.extracted, "seconds_total": seconds,
                         "clips_per_s": report.extracted / report.seconds, "frames_per_s": report.frames / report.seconds})
            print(f"{name:24s} {rows[-1]['clips_per_s']:7.2f} clips/s {rows[-1]['frames_per_s']:8.1f} frames/s "
                  f"(model load + text included: {seconds:.1f} s)")
    save("extract", {"rows": rows, "note": "CPU, random weights; decode runs in 2 threads ahead of the encoder"})


if __name__ == "__main__":
    main()
