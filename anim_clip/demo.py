"""``anim-clip demo``: the whole pipeline on the embedded demo dataset, in minutes on two CPU cores.

Generate the procedural dataset, extract per-frame features with the shipped tiny CLIP, train the
head, evaluate it on the test split, and compare it with the baselines (class frequency, zero-shot
CLIP, a linear probe on the frozen features). Each stage resumes: a second run reuses the data, the
cache and a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anim_clip.cache.extract import extract
from anim_clip.config import Config, config_changes, load_config
from anim_clip.data.demo import make_demo_data
from anim_clip.errors import AnimClipError
from anim_clip.evaluate.baselines import TITLES
from anim_clip.runtime.rundir import RunDir
from anim_clip.train.engine import train
from anim_clip.ui import console, table


def demo_config(data_dir: Path, overrides: list[str] | None = None) -> Config:
    """The shipped demo config pointed at a generated demo dataset."""
    return load_config("demo", [f"data.annotations={data_dir}", f"data.root={data_dir / 'videos'}", *(overrides or [])])


def finished_report(run: RunDir, cfg: Config) -> dict[str, Any] | None:
    """The report of a finished demo run trained with ``cfg``, None if the run is not finished; a
    finished run trained otherwise (another recipe, or a version without baselines) is refused."""
    if not run.evaluation.exists():
        return None
    changes = config_changes(load_config(run.config), cfg)
    report = json.loads(run.evaluation.read_text())
    if changes or "baselines" not in report:
        differs = ", ".join(changes) if changes else "its report has no baselines"
        raise AnimClipError(f"{run.path} holds a demo run trained otherwise ({differs}): delete it to train "
                            "again with this recipe")
    return report


def run_demo(out: Path, seed: int = 0, overrides: list[str] | None = None) -> dict[str, Any]:
    data, cache, run = out / "data", out / "cache.zarr", RunDir(out / "run")
    cfg = demo_config(data, overrides)  # a bad --set is refused before anything is written
    console.rule("1/4 demo dataset")
    make_demo_data(data, seed=seed, progress=True)
    console.rule("2/4 extract: frozen tiny CLIP features -> zarr cache")
    extract(cfg, cache)
    console.rule("3/4 train the Animal-CLIP head on the cache")
    report = finished_report(run, cfg)
    if report is not None:
        console.print(f"reusing the finished run in {run.path} (delete it to train again)")
    else:
        report = train(cfg, cache=cache, out=run.path, resume=run.last.exists()).report
    console.rule("4/4 summary")
    baselines = [[f"mAP of the {TITLES[name]} baseline", f"{100 * b['mAP']:.1f}"] for name, b in report["baselines"].items()]
    console.print(table("demo result (test split)", ["", "value"], [
        ["clips", report["clips"]],
        ["mAP (trained head, oracle species)", f"{100 * report['mAP']:.1f}"],
        *baselines,
        ["run directory", run.path],
        ["plots", run.plots],
    ]))
    return report
