"""``anim-clip demo``: the whole pipeline on the embedded demo dataset, in minutes on two CPU cores.

Generate the procedural dataset, extract per-frame features with the shipped tiny CLIP, train the
head, evaluate it on the test split, and compare with a frequency baseline. Each stage resumes:
a second run reuses the data, the cache and a finished run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anim_clip.cache.extract import extract
from anim_clip.config import Config, load_config
from anim_clip.data.demo import make_demo_data
from anim_clip.train.engine import train
from anim_clip.ui import console, table


def demo_config(data_dir: Path, overrides: list[str] | None = None) -> Config:
    """The shipped demo config pointed at a generated demo dataset."""
    return load_config("demo", [f"data.annotations={data_dir}", f"data.root={data_dir / 'videos'}", *(overrides or [])])


def run_demo(out: Path, seed: int = 0, overrides: list[str] | None = None) -> dict[str, Any]:
    data, cache, run = out / "data", out / "cache.zarr", out / "run"
    console.rule("1/4 demo dataset")
    make_demo_data(data, seed=seed, progress=True)
    cfg = demo_config(data, overrides)
    console.rule("2/4 extract: frozen tiny CLIP features -> zarr cache")
    extract(cfg, cache)
    console.rule("3/4 train the Animal-CLIP head on the cache")
    if (run / "eval.json").exists():
        import json

        report = json.loads((run / "eval.json").read_text())
        console.print(f"reusing the finished run in {run} (delete it to train again)")
    else:
        report = train(cfg, cache=cache, out=run, resume=(run / "last.pt").exists()).report
    console.rule("4/4 summary")
    ratio = report["mAP"] / report["frequency_baseline_mAP"]
    console.print(table("demo result (test split)", ["", "value"], [
        ["clips", report["clips"]],
        ["mAP (trained head, oracle species)", f"{100 * report['mAP']:.1f}"],
        ["mAP of a frequency baseline", f"{100 * report['frequency_baseline_mAP']:.1f}"],
        ["ratio", f"{ratio:.2f}x"],
        ["run directory", run],
        ["plots", run / "plots"],
    ]))
    return report
