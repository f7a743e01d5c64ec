"""One in-memory dataset model for every source: AK, MammalNet, LoTE-Animal, a user's CSV, the demo.

A ``Dataset`` holds the action and species vocabularies, the clips of each split (video path,
action ids, species ids, and the (species, action) pairs where the annotation pairs them), the
release's relation graph when one is given, and it derives the tensors the model needs: multi-hot
targets, species vectors, and the species–action graph rebuilt from the training split.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from anim_clip.config import DataConfig
from anim_clip.data.formats import (
    SplitEntry,
    read_ak_split,
    read_class_list,
    read_csv_split,
    read_id_split,
    read_name_list,
    read_relation,
)
from anim_clip.data.graph import SpeciesActionGraph
from anim_clip.errors import ConfigError, DatasetFormatError

RELEASE_DIR = Path(__file__).parent / "release"

# Per format: the shipped annotation folder and its file names (docs/method.md §4.2).
FORMATS: dict[str, dict[str, str | None]] = {
    "ak": dict(
        folder="AK", labels="label.csv", species="animal_label.csv",
        relation="animal-action-relation.txt", train="train_all.txt", test="test_animal.txt",
    ),
    "mammalnet": dict(
        folder="MammalNet", labels="behavior_to_id.csv", species="genus_to_id.csv",
        relation="relation.txt", train="train.txt", test="test.txt",
    ),
    "lote": dict(
        folder="LoTE-Animal", labels="LoTE_label.csv", species="animal_label.csv",
        relation="relation.txt", train="LoTE_train.txt", test="LoTE_test.txt",
    ),
    "csv": dict(folder=None, labels=None, species=None, relation=None, train="train.csv", test="test.csv"),
}

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Clip:
    path: str  # as written in the split file, relative to the video root
    actions: tuple[int, ...]
    species: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]  # (species, action) pairs; empty when the clip has no species


@dataclass
class Dataset:
    name: str
    actions: list[str]
    species: list[str]
    splits: dict[str, list[Clip]]
    release_graph: SpeciesActionGraph | None
    root: Path | None
    files: dict[str, Path] = field(default_factory=dict)  # split -> the file that lists its clips

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    @property
    def num_species(self) -> int:
        return len(self.species)

    def clips(self, split: str) -> list[Clip]:
        if split not in self.splits:
            raise ConfigError(f"unknown split '{split}'; this dataset has {', '.join(self.splits)}")
        return self.splits[split]

    def targets(self, split: str) -> np.ndarray:
        """Multi-hot action targets ``(N, C)`` float32 (duplicate labels collapse)."""
        return _multi_hot([c.actions for c in self.clips(split)], self.num_actions)

    def species_vectors(self, split: str) -> np.ndarray:
        """Multi-hot species vectors ``(N, A)`` float32 (the release's ``animal_pred``)."""
        return _multi_hot([c.species for c in self.clips(split)], self.num_species)

    def video_path(self, clip: Clip) -> Path:
        if self.root is None:
            raise ConfigError("data.root is not set: point it at the folder that holds the videos")
        return self.root / clip.path

    def train_graph(self, splits: tuple[str, ...] = ("train",)) -> SpeciesActionGraph:
        """The species–action graph rebuilt from annotated pairs (docs/method.md D6: no test leakage)."""
        pairs = [p for split in splits for clip in self.clips(split) for p in clip.pairs]
        return SpeciesActionGraph.from_pairs(pairs, self.num_species, self.num_actions)

    def graph(self, source: str) -> SpeciesActionGraph:
        """``release``: the relation file as shipped; ``train``: rebuilt from the train split."""
        if source == "train":
            return self.train_graph()
        if self.release_graph is None:
            raise ConfigError("data.graph=release but this dataset has no relation file; use data.graph=train")
        return self.release_graph

    def manifest_sha256(self, split: str) -> str:
        """Fingerprint of a split's clip list and labels: caches built from another list are refused."""
        h = hashlib.sha256()
        for c in self.clips(split):
            h.update(f"{c.path}\t{c.actions}\t{c.species}\n".encode())
        return h.hexdigest()


def _multi_hot(rows: list[tuple[int, ...]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.float32)
    for i, ids in enumerate(rows):
        out[i, list(ids)] = 1.0
    return out


def _index(names: list[str]) -> dict[str, int]:
    """Name -> id; a name listed twice keeps its first id."""
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)
    return index


# How an unknown id or name is reported, per kind of class: the list it is missing from.
_LISTS = {"action": "label list", "species": "species list"}


def _class_id(value: int | str, index: dict[str, int], count: int, kind: str, path: Path, line: int) -> int:
    """The vocabulary id of ``value``, an id or a name as the split file gives it; one the
    vocabulary of ``count`` classes lacks is refused naming the file and line."""
    if isinstance(value, int):
        if value >= count:
            raise DatasetFormatError(path, f"{kind} id {value} out of range (0..{count - 1})", line)
        return value
    if value not in index:
        raise DatasetFormatError(path, f"{kind} {value!r} is not in the {_LISTS[kind]}", line)
    return index[value]


def _resolve(entries: list[SplitEntry], path: Path, actions: list[str], species: list[str]) -> list[Clip]:
    """Turn names or ids into vocabulary ids, with the line number of anything unknown."""
    action_index, species_index = _index(actions), _index(species)
    clips = []
    for e in entries:
        pairs = []
        for s, a in e.pairs:
            action = _class_id(a, action_index, len(actions), "action", path, e.line)
            pairs.append((None if s is None else _class_id(s, species_index, len(species), "species", path, e.line), action))
        acts = tuple(sorted({a for _, a in pairs}))
        spec = tuple(sorted({s for s, _ in pairs if s is not None}))
        known = tuple(sorted({(s, a) for s, a in pairs if s is not None}))
        clips.append(Clip(e.path, acts, spec, known))
    return clips


def _file(cfg: DataConfig, folder: Path, key: str) -> Path | None:
    name = getattr(cfg, key) or FORMATS[cfg.format][key]
    return None if name is None else folder / name


def _outside_root(clip: str, root: Path | None, real_root: Path | None) -> str | None:
    """How ``clip`` (normalised) leaves ``root``: by its text, or through a symbolic link (followed
    without opening anything; ``real_root`` is the root resolved), or None when it stays inside."""
    if posixpath.isabs(clip) or clip.split("/")[0] == "..":
        return "lies outside data.root"
    if root is None:
        return None
    target = (root / clip).resolve()
    return None if target.is_relative_to(real_root) else f"is a symbolic link to {target}, outside data.root"


def _check_clip_paths(entries: dict[str, list[SplitEntry]], files: dict[str, Path], root: Path | None,
                      allow_outside_root: bool) -> None:
    """Every clip once, under ``data.root``: a clip listed twice would count twice in training and
    in the metrics (or leak test clips into training) whether or not its labels agree, and a path
    leaving the root, in its text or through a symbolic link, reads videos nobody meant to list."""
    seen: dict[str, tuple[Path, SplitEntry]] = {}
    real_root = None if root is None else root.resolve()
    for split, split_entries in entries.items():
        for e in split_entries:
            clip = posixpath.normpath(e.path)
            outside = None if allow_outside_root else _outside_root(clip, root, real_root)
            if outside is not None:
                raise DatasetFormatError(files[split], f"clip {e.path!r} {outside}; move it under "
                                                       "data.root, or set data.allow_outside_root=true", e.line)
            if clip in seen:
                first, earlier = seen[clip]
                agree = "the same labels" if set(earlier.pairs) == set(e.pairs) else "other labels"
                raise DatasetFormatError(files[split], f"clip {e.path!r} is listed again, with {agree} "
                                                       f"(first at {first}:{earlier.line}); list each clip once", e.line)
            seen[clip] = (files[split], e)


def _vocabulary(path: Path | None, plain_names: bool, entries: dict[str, list[SplitEntry]], position: int) -> list[str]:
    """A class list: read from ``path`` (plain names, one a line, or the release's id,name list), or
    without one, the sorted names at ``position`` of the split files' (species, action) pairs."""
    if path is not None:
        return read_name_list(path) if plain_names else read_class_list(path)
    names = {pair[position] for split in entries.values() for e in split for pair in e.pairs}
    return sorted(n for n in names if n is not None)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Read a dataset as ``cfg`` describes it; every file problem is one ``DatasetFormatError``."""
    fmt = FORMATS[cfg.format]
    if cfg.annotations is not None:
        folder = Path(cfg.annotations).expanduser()
    elif fmt["folder"] is not None:
        folder = RELEASE_DIR / str(fmt["folder"])
    else:
        raise ConfigError("data.format=csv needs data.annotations: the folder with your train/test CSV files")
    if not folder.is_dir():
        hint = f"; `anim-clip make-demo-data {folder}` generates the demo dataset there" if cfg.name == "demo" else ""
        raise ConfigError(f"{folder}: annotation folder not found (data.annotations){hint}")

    reader = {"ak": read_ak_split, "mammalnet": read_id_split, "lote": read_id_split, "csv": read_csv_split}[cfg.format]
    split_paths = {s: _file(cfg, folder, s) for s in SPLITS}
    entries = {s: reader(p) for s, p in split_paths.items()}
    root = Path(cfg.root).expanduser() if cfg.root else None
    _check_clip_paths(entries, split_paths, root, cfg.allow_outside_root)

    plain_names = cfg.format == "csv"
    actions = _vocabulary(_file(cfg, folder, "labels"), plain_names, entries, 1)
    species = _vocabulary(_file(cfg, folder, "species"), plain_names, entries, 0)
    splits = {s: _resolve(entries[s], split_paths[s], actions, species) for s in SPLITS}

    release_graph = None
    relation_path = _file(cfg, folder, "relation")
    if relation_path is not None and (cfg.format != "csv" or relation_path.exists()):
        rows = read_relation(relation_path, len(actions))
        if len(rows) != len(species):
            raise DatasetFormatError(relation_path, f"{len(rows)} species lines, but the species list has {len(species)}")
        for i, (name, _) in enumerate(rows):
            if name != species[i]:
                raise DatasetFormatError(relation_path, f"species {name!r} where the species list has {species[i]!r}", i + 1)
        release_graph = SpeciesActionGraph.from_lists((ids for _, ids in rows), len(actions))

    dataset = Dataset(cfg.name, actions, species, splits, release_graph, root, split_paths)
    _hold_out_unseen(dataset, cfg.unseen_species)
    return dataset


def _hold_out_unseen(dataset: Dataset, names: list[str]) -> None:
    """Drop training clips that show a held-out species, so test results on them measure transfer."""
    if not names:
        return
    index = _index(dataset.species)
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ConfigError(f"data.unseen_species: {unknown[0]!r} is not in the species list")
    held = {index[n] for n in names}
    dataset.splits["train"] = [c for c in dataset.splits["train"] if not held & set(c.species)]


def hold_out(rows: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor | None]:
    """``(train_rows, val_rows)``: a seeded share of ``rows`` held out for per-epoch selection
    (None when ``fraction`` is 0), both sorted, so every mode and every rank holds out the same clips."""
    if fraction <= 0:
        return rows, None
    perm = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).to(rows.device)]
    n_val = max(1, round(fraction * len(rows)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values
