"""The demo dataset: release-format files, decodable videos, determinism, the manifest, and the signal
the model has to learn (actions from motion, species and positions from single frames)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anim_clip.data.demo import DemoSummary, make_demo_data, render_captioned_frames
from anim_clip.data.demo_world import ACTIONS, SPECIES
from anim_clip.errors import ConfigError
from anim_clip.ui import console

PAIR = r"\('[^']+', '[^']+'\)"
SPLIT_LINE = re.compile(rf"^(\w+\.mp4)\t\[({PAIR}(?:, {PAIR})*)\]$")
RELATION_LINE = re.compile(r"^([^\t]+)\t\[(\d+(?:, \d+)*)?\]\t(\d+)$")
TINY = dict(train_clips=24, test_clips=12, seed=7, size=64, num_frames=16)


def read_split(path: Path) -> dict[str, list[tuple[str, str]]]:
    """clip file -> (species, action) pairs, checking the exact AK line format."""
    clips = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = SPLIT_LINE.match(line)
        assert match, f"bad split line {line!r}"
        clips[match.group(1)] = re.findall(r"\('([^']+)', '([^']+)'\)", match.group(2))
    return clips


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> DemoSummary:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "tiny", **TINY)


def test_world_relation_gives_each_species_3_to_5_actions_each_shared():
    species_per_action = {a: [s.name for s in SPECIES if a in s.actions] for a in ACTIONS}
    assert all(3 <= len(s.actions) <= 5 for s in SPECIES)
    assert all(len(names) >= 2 for names in species_per_action.values()), species_per_action


def test_videos_decode_with_pyav_and_decord(tiny: DemoSummary):
    videos = sorted(tiny.video_dir.glob("*.mp4"))
    assert len(videos) == 36
    for path in videos:
        assert decode(path).shape == (16, 64, 64, 3)
        reader = decord.VideoReader(str(path))
        assert len(reader) == 16
        assert reader[15].asnumpy().shape == (64, 64, 3)


def test_label_files_follow_the_release_format(tiny: DemoSummary):
    label = tiny.label_csv.read_text(encoding="utf-8").splitlines()
    animal = tiny.animal_label_csv.read_text(encoding="utf-8").splitlines()
    assert label == ["id,name"] + [f"{i},{a}" for i, a in enumerate(ACTIONS)]
    assert animal[0] == "label,name" and len(animal) == 1 + len(SPECIES)
    species_names = [row.split(",", 1)[1] for row in animal[1:]]
    assert species_names == sorted(species_names)

    train, test = read_split(tiny.train_list), read_split(tiny.test_list)
    assert (len(train), len(test)) == (24, 12)
    for clips in (train, test):
        for clip, pairs in clips.items():
            assert (tiny.video_dir / clip).is_file()
            assert {s for s, _ in pairs} <= set(species_names) and {a for _, a in pairs} <= set(ACTIONS)
    assert {a for pairs in test.values() for _, a in pairs} == set(ACTIONS)
    assert {s for pairs in test.values() for s, _ in pairs} == set(species_names)

    relation: set[tuple[str, str]] = set()
    for line, name in zip(tiny.relation_txt.read_text(encoding="utf-8").splitlines(), species_names, strict=True):
        match = RELATION_LINE.match(line)
        assert match and match.group(1) == name, line
        ids = [int(i) for i in match.group(2).split(", ")] if match.group(2) else []
        assert ids == sorted(ids) and int(match.group(3)) == len(ids)
        relation |= {(name, ACTIONS[i]) for i in ids}
    train_pairs = {pair for pairs in train.values() for pair in pairs}
    assert relation == train_pairs
    assert tiny.relation_pairs == len(train_pairs) < len(species_names) * len(ACTIONS)

    clips = list(train.values()) + list(test.values())
    assert tiny.two_animal_clips == sum(len({s for s, _ in p}) > 1 for p in clips)
    assert tiny.multi_label_clips == sum(len({a for _, a in p}) > 1 for p in clips)


def test_same_seed_gives_identical_data(tiny: DemoSummary, tmp_path: Path):
    again = make_demo_data(tmp_path / "again", **TINY)
    for name in ("label.csv", "animal_label.csv", "relation.txt", "train.txt", "test.txt"):
        assert (again.root / name).read_bytes() == (tiny.root / name).read_bytes(), name
    for path in sorted(tiny.video_dir.glob("*.mp4"))[:6]:
        assert np.array_equal(decode(path)[0], decode(again.video_dir / path.name)[0])
    other = make_demo_data(tmp_path / "other", **{**TINY, "seed": 8})
    assert other.train_list.read_bytes() != tiny.train_list.read_bytes()


def test_generations_in_parallel_processes_are_byte_identical(tmp_path: Path):
    """Two make-demo-data processes started together, each with different garbage in freed heap memory
    (glibc's MALLOC_PERTURB_): libx264's macroblock-tree rate control reads uninitialised memory when
    there are B-frames, so without mbtree=0 about a third of these clips differ."""
    args = ["--train-clips", "24", "--test-clips", "12", "--seed", "7", "--size", "64", "--frames", "16"]
    procs = [subprocess.Popen([sys.executable, "-m", "anim_clip", "make-demo-data", str(tmp_path / name), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "MALLOC_PERTURB_": perturb, "COLUMNS": "200"})
             for name, perturb in (("a", "17"), ("b", "200"))]
    for proc in procs:
        output = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 0, output
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 36 + 6
    differ = [str(f) for f in files if (tmp_path / "a" / f).read_bytes() != (tmp_path / "b" / f).read_bytes()]
    assert differ == []


def test_manifest_makes_reruns_free_and_other_arguments_regenerate(tmp_path: Path):
    args = dict(train_clips=6, test_clips=4, seed=1, size=32, num_frames=8)
    first = make_demo_data(tmp_path, **args)
    stamp = first.manifest.stat().st_mtime_ns, (first.video_dir / "train00000.mp4").stat().st_mtime_ns
    with console.capture() as captured:
        assert make_demo_data(tmp_path, **args, progress=True) == first
    assert f"reusing the demo dataset in {tmp_path} (seed 1" in captured.get()
    assert (first.manifest.stat().st_mtime_ns, (first.video_dir / "train00000.mp4").stat().st_mtime_ns) == stamp

    smaller = make_demo_data(tmp_path, **{**args, "train_clips": 4, "num_frames": 6})
    assert smaller.train_clips == 4 and len(list(smaller.video_dir.glob("*.mp4"))) == 8
    assert decode(smaller.video_dir / "train00000.mp4").shape[0] == 6

    smaller.manifest.unlink()  # an interrupted run: no manifest, so the folder is not trusted
    (smaller.video_dir / "train00001.mp4").write_bytes(b"truncated")
    make_demo_data(tmp_path, **{**args, "train_clips": 4, "num_frames": 6})
    assert decode(smaller.video_dir / "train00001.mp4").shape == (6, 32, 32, 3)


def test_bad_arguments_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError):
        make_demo_data(tmp_path, size=63)


# -------------------------------------------------------------------------------------------------
# The signal is there: a simple classifier recovers actions from motion and species from a frame.


def motion_descriptor(frames: np.ndarray) -> np.ndarray:
    """Foreground (difference to the clip's median frame) centroid and extent per frame, summarised
    by velocity and acceleration statistics, plus frame-to-frame change."""
    f = frames.astype(np.float32)
    mask = np.abs(f - np.median(f, axis=0)).sum(-1) > 60
    ys, xs = np.mgrid[0 : f.shape[1], 0 : f.shape[2]] / f.shape[1]
    count = mask.sum((1, 2)) + 1e-6
    cx, cy = (mask * xs).sum((1, 2)) / count, (mask * ys).sum((1, 2)) / count
    sx = np.sqrt(np.maximum((mask * xs**2).sum((1, 2)) / count - cx**2, 0))
    sy = np.sqrt(np.maximum((mask * ys**2).sum((1, 2)) / count - cy**2, 0))
    area, vx, vy = count / mask[0].size, np.diff(cx), np.diff(cy)
    change = np.abs(np.diff(f, axis=0)).mean((1, 2, 3))
    return np.array([area.mean(), area.std(), abs(cx[-1] - cx[0]), np.abs(vx).mean(), vx.std(),
                     np.abs(vy).mean(), vy.std(), np.abs(np.diff(vy)).mean(), np.ptp(cy), cy.mean(),
                     sx.mean(), sx.std(), sy.mean(), sy.std(), change.mean(), change.std()])


def single_action_clips(summary: DemoSummary, split_list: Path) -> tuple[np.ndarray, np.ndarray]:
    clips = [(clip, pairs[0][1]) for clip, pairs in read_split(split_list).items() if len(pairs) == 1]
    features = np.stack([motion_descriptor(decode(summary.video_dir / clip)) for clip, _ in clips])
    return features, np.array([action for _, action in clips])


def classifier() -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))


def test_action_is_learnable_from_motion(tmp_path: Path):
    data = make_demo_data(tmp_path, train_clips=80, test_clips=40, seed=3, size=64, num_frames=16)
    x_train, y_train = single_action_clips(data, data.train_list)
    x_test, y_test = single_action_clips(data, data.test_list)
    accuracy = (classifier().fit(x_train, y_train).predict(x_test) == y_test).mean()
    chance = max(1 / len(ACTIONS), max((y_test == a).mean() for a in ACTIONS))
    assert accuracy >= 2 * chance, (accuracy, chance)


@pytest.fixture(scope="module")
def captioned() -> tuple[np.ndarray, list[str]]:
    return render_captioned_frames(600, size=64, seed=5)


def foreground(image: np.ndarray) -> np.ndarray:
    """Backdrops are vertical gradients: the largest blob differing from its row's median is the animal."""
    f = image.astype(np.float32)
    mask = np.abs(f - np.median(f, axis=1, keepdims=True)).sum(-1) > 80
    blobs, count = ndimage.label(mask)
    if count == 0:
        return mask
    return blobs == 1 + np.argmax(ndimage.sum(mask, blobs, range(1, count + 1)))


def colour_descriptor(image: np.ndarray) -> np.ndarray:
    """Colour histogram, mean and spread of the foreground, and its size and aspect."""
    mask = foreground(image)
    pixels = image[mask].astype(np.float32) if mask.any() else np.zeros((1, 3), np.float32)
    bins = (pixels // 64).astype(int)
    hist = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64) / len(pixels)
    ys, xs = np.nonzero(mask) if mask.any() else (np.zeros(1), np.zeros(1))
    width, height = np.ptp(xs) + 1, np.ptp(ys) + 1
    return np.concatenate([hist, pixels.mean(0) / 255, pixels.std(0) / 255, [mask.mean(), width, height, height / width]])


def test_species_is_learnable_from_captioned_frames(captioned):
    images, captions = captioned
    names = [s.name.lower() for s in SPECIES]
    species = np.array([next(n for n in names if f" {n} at the " in c) for c in captions])
    x = np.stack([colour_descriptor(image) for image in images])
    accuracy = (classifier().fit(x[:400], species[:400]).predict(x[400:]) == species[400:]).mean()
    assert accuracy >= 3 / len(SPECIES), accuracy


def test_captions_describe_what_the_frame_shows(captioned):
    images, captions = captioned
    words = re.compile(r"^a (small|medium|large) (\w+) ([a-z ]+) at the (top|middle|bottom) (left|centre|right), "
                       r"facing (left|right|the viewer)(, [a-z -]+)*$")
    agree = 0
    for image, text in zip(images, captions):
        match = words.match(text)
        assert match, text
        species = next(s for s in SPECIES if s.name.lower() == match.group(3))
        assert match.group(2) in {name for name, _ in species.colours}
        ys, xs = np.nonzero(foreground(image))
        third = ("left", "centre", "right")[min(2, int(3 * xs.mean() / image.shape[1]))] if len(xs) else None
        agree += third == match.group(5)
    assert agree >= 0.8 * len(captions)
    poses = " ".join(captions)
    for word in ("in mid-air", "wings up", "wings down", "legs extended", "facing the viewer", "tail bent"):
        assert word in poses
