"""The embedded demo dataset: procedurally generated clips in Animal Kingdom's release format.

Nothing can be downloaded here, so the README demo and the tests run on this: real H.264 mp4s of
drawn animals whose actions differ only in motion (see ``demo_world``), with AK-style label, species,
relation and split files. Generation is seeded and deterministic, and a manifest written last marks a
complete folder, so asking twice for the same dataset costs nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import av
import numpy as np

from anim_clip.data.demo_world import (
    ACTIONS, SEQUENCES, SPECIES, AnimalPlan, ClipPlan, clip_labels, render_captioned_frames, render_clip,
    sample_action, weighted_choice,
)
from anim_clip.errors import ConfigError
from anim_clip.ui import console, progress_bar

__all__ = ["DemoSummary", "make_demo_data", "render_captioned_frames", "write_mp4"]

GENERATOR_VERSION = 2  # bump when the world or the files change: old folders then regenerate
TWO_ANIMAL_RATE = 0.15
TWO_ACTION_RATE = 0.10
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DemoSummary:
    """Counts of a generated demo dataset (both splits together where not per split) and its paths."""

    root: Path
    train_clips: int
    test_clips: int
    num_actions: int
    num_species: int
    relation_pairs: int
    multi_label_clips: int
    two_animal_clips: int

    @property
    def video_dir(self) -> Path:
        return self.root / "videos"

    @property
    def label_csv(self) -> Path:
        return self.root / "label.csv"

    @property
    def animal_label_csv(self) -> Path:
        return self.root / "animal_label.csv"

    @property
    def relation_txt(self) -> Path:
        return self.root / "relation.txt"

    @property
    def train_list(self) -> Path:
        return self.root / "train.txt"

    @property
    def test_list(self) -> Path:
        return self.root / "test.txt"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"


# ---------------------------------------------------------------------------------------------
# What each clip shows


def _covering_plans(rng: np.random.Generator) -> list[ClipPlan]:
    """Every species–action pair once, ordered so that the first few cover every species and every
    action: a split of even a dozen clips then has positives for all of them."""
    remaining = [(s, a) for s in SPECIES for a in s.actions]
    remaining = [remaining[i] for i in rng.permutation(len(remaining))]
    species_seen: set[str] = set()
    actions_seen: set[str] = set()
    plans: list[ClipPlan] = []
    while remaining:
        gains = [(s.name not in species_seen) + (a not in actions_seen) for s, a in remaining]
        species, action = remaining.pop(int(np.argmax(gains)))
        species_seen.add(species.name)
        actions_seen.add(action)
        plans.append((AnimalPlan(species, (action,)),))
    return plans


def _random_plan(rng: np.random.Generator) -> ClipPlan:
    """One animal doing one action, two animals each doing one, or one animal doing two in turn."""
    weights = np.array([s.weight for s in SPECIES])
    draw = rng.random()
    if draw < TWO_ANIMAL_RATE:
        pair = rng.choice(len(SPECIES), size=2, replace=False, p=weights / weights.sum())
        return tuple(AnimalPlan(SPECIES[i], (sample_action(SPECIES[i], rng),)) for i in pair)
    if draw < TWO_ANIMAL_RATE + TWO_ACTION_RATE:
        options = [(s, seq) for s in SPECIES for seq in SEQUENCES if set(seq) <= set(s.actions)]
        species, sequence = options[int(rng.integers(len(options)))]
        return (AnimalPlan(species, sequence),)
    species = weighted_choice(rng, SPECIES, weights)
    return (AnimalPlan(species, (sample_action(species, rng),)),)


def _plan_split(n: int, rng: np.random.Generator) -> list[ClipPlan]:
    """n clip plans: the covering ones first (as many as fit), random ones after, then shuffled.
    Species and actions have unequal weights, so class frequencies differ."""
    plans = _covering_plans(rng)[:n]
    plans += [_random_plan(rng) for _ in range(n - len(plans))]
    return [plans[i] for i in rng.permutation(n)]


# ---------------------------------------------------------------------------------------------
# Files


def _pair_list(labels: list[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"('{species}', '{action}')" for species, action in labels) + "]"


def _relation_lines(train: list[ClipPlan]) -> list[str]:
    """The species–action graph from the train annotations, one line per species in label order."""
    seen: dict[str, set[int]] = {s.name: set() for s in SPECIES}
    for plan in train:
        for species, action in clip_labels(plan):
            seen[species].add(ACTIONS.index(action))
    return [f"{name}\t[{', '.join(map(str, sorted(ids)))}]\t{len(ids)}" for name, ids in seen.items()]


def _write_text(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", newline="\n")


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264 (libx264, yuv420p) with the same bytes on every run: one encoder thread, and no
    macroblock-tree rate control, which reads uninitialised memory when there are B-frames (its
    output then changed with whatever the process's heap held before)."""
    with av.open(str(path), mode="w") as container:
        options = {"crf": "18", "preset": "veryfast", "mbtree": "0"}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _clip_id(split: str, index: int) -> str:
    return f"{split}{index:05d}"


# ---------------------------------------------------------------------------------------------


def _load_summary(out: Path, params: dict) -> DemoSummary | None:
    """The summary of a complete folder generated with these parameters, else None."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        return DemoSummary(root=out, **manifest["summary"]) if manifest["params"] == params else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_videos(out: Path, plans: dict[str, list[ClipPlan]], seed: int, size: int, num_frames: int,
                  fps: int, progress: bool) -> None:
    with progress_bar("clips", disable=not progress) as bar:
        task = bar.add_task("demo clips", total=sum(map(len, plans.values())))
        for k, split in enumerate(SPLITS):
            for i, plan in enumerate(plans[split]):
                frames = render_clip(plan, np.random.default_rng([seed, k, i, 1]), size, num_frames)
                write_mp4(out / "videos" / f"{_clip_id(split, i)}.mp4", frames, fps)
                bar.advance(task)


def _write_labels(out: Path, plans: dict[str, list[ClipPlan]]) -> list[str]:
    """label.csv, animal_label.csv, relation.txt (returned) and the split lists."""
    _write_text(out / "label.csv", ["id,name"] + [f"{i},{name}" for i, name in enumerate(ACTIONS)])
    _write_text(out / "animal_label.csv", ["label,name"] + [f"{i},{s.name}" for i, s in enumerate(SPECIES)])
    relation = _relation_lines(plans["train"])
    _write_text(out / "relation.txt", relation)
    for split in SPLITS:
        _write_text(out / f"{split}.txt", [f"{_clip_id(split, i)}.mp4\t{_pair_list(clip_labels(plan))}"
                                           for i, plan in enumerate(plans[split])])
    return relation


def _write_manifest(summary: DemoSummary, params: dict) -> None:
    """Written last and atomically: its presence means the folder is complete."""
    counts = {f.name: getattr(summary, f.name) for f in fields(summary) if f.name != "root"}
    manifest = {"generator": "anim_clip.data.demo", "params": params, "summary": counts,
                "actions": list(ACTIONS), "species": [s.name for s in SPECIES]}
    tmp = summary.root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, summary.manifest)


def make_demo_data(out_dir: str | Path, *, train_clips: int = 240, test_clips: int = 96, seed: int = 0,
                   size: int = 112, num_frames: int = 32, fps: int = 16, progress: bool = False) -> DemoSummary:
    """Generate the demo dataset into out_dir (see the module docstring), or return at once if
    out_dir already holds it with these parameters; anything else there is regenerated cleanly."""
    if size < 32 or size % 2:
        raise ConfigError(f"demo frame size must be even and at least 32 (got {size})")
    if num_frames < 2 or fps < 1 or train_clips < 1 or test_clips < 1:
        raise ConfigError("demo data needs at least 2 frames, 1 fps and 1 clip per split")
    out = Path(out_dir)
    params = {"generator_version": GENERATOR_VERSION, "train_clips": train_clips, "test_clips": test_clips,
              "seed": seed, "size": size, "num_frames": num_frames, "fps": fps}
    done = _load_summary(out, params)
    if done is not None:
        if progress:
            console.print(f"reusing the demo dataset in {out} (seed {seed}; delete it to generate again)", soft_wrap=True)
        return done

    (out / "manifest.json").unlink(missing_ok=True)
    shutil.rmtree(out / "videos", ignore_errors=True)
    (out / "videos").mkdir(parents=True)
    plans = {split: _plan_split(n, np.random.default_rng([seed, k]))
             for k, (split, n) in enumerate(zip(SPLITS, (train_clips, test_clips)))}
    _write_videos(out, plans, seed, size, num_frames, fps, progress)
    relation = _write_labels(out, plans)

    all_plans = plans["train"] + plans["test"]
    summary = DemoSummary(
        root=out, train_clips=train_clips, test_clips=test_clips, num_actions=len(ACTIONS),
        num_species=len(SPECIES), relation_pairs=sum(int(line.rsplit("\t", 1)[1]) for line in relation),
        multi_label_clips=sum(len({a for _, a in clip_labels(p)}) > 1 for p in all_plans),
        two_animal_clips=sum(len(p) > 1 for p in all_plans),
    )
    _write_manifest(summary, params)
    return summary
