"""Extraction throughput (clips/s, frames/s): the tiny model and ViT-B/16 (random weights, the real
architecture) over the same demo clips, 1 view × 8 frames per clip. On a GPU the encoder runs in
bf16 and the mean GPU utilisation is recorded; ``--decoder torchcodec-cuda`` decodes there too.

    python -m benchmarks.bench_extract [--clips 24] [--decoder decord]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from anim_clip.cache.extract import extract
from anim_clip.runtime.distributed import default_device
from anim_clip.data.demo import make_demo_data
from anim_clip.data.video import BACKENDS
from anim_clip.demo import demo_config
from benchmarks.common import GpuUtilisation, save

MODELS = {
    "anim-clip-tiny (64 px)": [],
    "ViT-B-16 (224 px)": ["backbone.model=ViT-B-16", "sampling.image_size=224", "sampling.resize=256",
                          "backbone.batch_frames=64"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--decoder", choices=BACKENDS, default="decord")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_demo_data(data, train_clips=1, test_clips=args.clips, seed=0)
        for name, overrides in MODELS.items():
            cfg = demo_config(data, ["backbone.pretrained=null", "runtime.precision=auto",  # the demo pins fp32
                                     f"sampling.decoder={args.decoder}", *overrides])
            start = time.perf_counter()
            with GpuUtilisation() as gpu:
                (report,) = extract(cfg, Path(tmp) / name.split()[0], ("test",), workers=2, progress=False)
            seconds = time.perf_counter() - start
            rows.append({"model": name, "decoder": args.decoder, "device": str(default_device()),
                         "clips": report.extracted, "seconds_total": seconds,
                         "clips_per_s": report.extracted / report.seconds, "frames_per_s": report.frames / report.seconds,
                         "gpu_utilisation_percent": gpu.mean})
            print(f"{name:24s} {rows[-1]['clips_per_s']:7.2f} clips/s {rows[-1]['frames_per_s']:8.1f} frames/s "
                  f"(model load + text included: {seconds:.1f} s)")
    save(f"extract-{args.decoder}" if args.decoder != "decord" else "extract",
         {"rows": rows, "note": "random weights; decode runs in 2 threads ahead of the encoder; bf16 on GPU"})


if __name__ == "__main__":
    main()
