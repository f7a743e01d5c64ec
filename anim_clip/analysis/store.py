"""The prompt space persisted beside its checkpoint, and refused once the checkpoint changed.

``run/last.pt`` gets ``run/last.prompt-space/``::

    space.json            what was built from what: checkpoint (path, size, mtime, sha256), index
                          kind and settings, vocabularies, the files below; written last
    index-<build>.faiss   the CPU faiss index (vectors in condition-major rows, space.py)
    ids-<build>.npz       the id map: condition, action and species (-1 none, -2 a set) per row,
                          the conditions' species (padded with -1), the can-perform mask

Every file is written atomically and ``space.json`` names the data files of its build, so a reader
sees one whole build or the previous one, never a mixture, whenever a writer is killed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from anim_clip import __version__
from anim_clip.analysis.index import IndexKind, PromptIndex, index_settings
from anim_clip.analysis.space import PromptSpace, build_space
from anim_clip.cache.store import FeatureCache, read_array
from anim_clip.errors import AnimClipError
from anim_clip.runtime.rundir import resolve_checkpoint
from anim_clip.io import atomic_write, atomic_write_json
from anim_clip.models.checkpoint import Checkpoint, load_checkpoint
from anim_clip.models.factory import model_from_checkpoint
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.ui import console

FORMAT = "anim-clip-prompt-space/1"
SUFFIX = ".prompt-space"
META = "space.json"


class StaleSpaceError(AnimClipError):
    """The checkpoint changed after its prompt space was built."""


@dataclass
class StoredSpace:
    """A prompt space with its index, as built from (and saved beside) one checkpoint."""

    space: PromptSpace
    index: PromptIndex
    checkpoint: Path
    directory: Path
    meta: dict[str, Any]

    def head(self, device: torch.device | None = None) -> AnimalCLIPHead:
        """The checkpoint's head (for the queries that run the model on clips)."""
        return checkpoint_head(load_checkpoint(self.checkpoint), device)


def space_dir(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + SUFFIX)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


def matches_checkpoint(recorded: dict[str, Any], path: Path) -> bool:
    """Same bytes as when the space was built; size and mtime unchanged spare hashing a large file."""
    st = path.stat()
    if (st.st_size, st.st_mtime_ns) == (recorded["size"], recorded["mtime_ns"]):
        return True
    return st.st_size == recorded["size"] and sha256_file(path) == recorded["sha256"]


def checkpoint_head(ckpt: Checkpoint, device: torch.device | None = None) -> AnimalCLIPHead:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model_from_checkpoint(ckpt, "cached").to(device).eval()


def vocabulary_names(ckpt: Checkpoint, head: AnimalCLIPHead) -> tuple[list[str], list[str]]:
    vocab = ckpt.vocab or {}
    actions = vocab.get("actions") or [f"action {i}" for i in range(head.vocab.num_actions)]
    species = vocab.get("species") or [f"species {i}" for i in range(head.vocab.num_species)]
    return list(actions), list(species)


def species_sets_in(cache: str | Path) -> list[tuple[int, ...]]:
    """The distinct multi-species sets of every split of a cache (its ``species`` arrays only:
    opening the splits through :class:`FeatureCache` would load their features too)."""
    cache = FeatureCache(cache)
    sets: set[tuple[int, ...]] = set()
    for name in cache.splits:
        species = read_array(cache.path / name, "species", cache.path)
        sets.update(tuple(np.flatnonzero(row)) for row in np.unique(species[species.sum(1) > 1], axis=0))
    return sorted(sets)


def save_space(directory: Path, space: PromptSpace, index: PromptIndex, checkpoint: Path,
               kind: str, sets_from: str | None) -> dict[str, Any]:
    """Write the index and id map, then ``space.json`` naming them; older builds' files go."""
    build = uuid.uuid4().hex[:12]
    index_file, ids_file = f"index-{build}.faiss", f"ids-{build}.npz"
    atomic_write(directory / index_file, lambda tmp: faiss.write_index(index.cpu, str(tmp)))
    condition, action = space.id_map()
    width = max(1, max(len(c) for c in space.conditions))
    padded = np.full((len(space.conditions), width), -1, dtype=np.int64)
    for k, c in enumerate(space.conditions):
        padded[k, : len(c)] = c

    def write_ids(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, condition=condition, action=action, species=space.species_column(), conditions=padded,
                     can_perform=space.can_perform)

    atomic_write(directory / ids_file, write_ids)
    meta = {
        "format": FORMAT,
        "build": build,
        "files": {"index": index_file, "ids": ids_file},
        "checkpoint": {**checkpoint_stamp(checkpoint), "kind": kind},
        "index": {"kind": index.kind, "rows": space.rows, "dim": int(space.vectors.shape[1]),
                  **index_settings(index.cpu)},
        "conditions": {"count": len(space.conditions), "species_sets_from": sets_from,
                       "species_sets": [list(c) for c in space.conditions if len(c) > 1]},
        "actions": space.actions,
        "species": space.species,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"anim_clip": __version__, "faiss": faiss.__version__},
    }
    atomic_write_json(directory / META, meta)
    for old in [*directory.glob("index-*.faiss"), *directory.glob("ids-*.npz")]:
        if old.name not in (index_file, ids_file):
            old.unlink(missing_ok=True)
    return meta


def read_meta(directory: Path) -> dict[str, Any] | None:
    """``space.json``, or None when no space was built there."""
    path = directory / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnimClipError(f"{path}: unreadable ({e}); delete the folder or run anim-clip analyze build") from None
    if meta.get("format") != FORMAT:
        raise AnimClipError(f"{path}: not a prompt space of this version (format {meta.get('format')!r}, "
                            f"expected {FORMAT!r}); run anim-clip analyze build to rebuild it")
    return meta


def load_space(directory: Path, checkpoint: Path, num_gpus: int | None = None) -> StoredSpace:
    """The space saved in ``directory``, refused (:class:`StaleSpaceError`) when ``checkpoint``
    is no longer the file it was built from."""
    meta = read_meta(directory)
    if meta is None:
        raise AnimClipError(f"{directory}: no prompt space built; run anim-clip analyze build")
    if not matches_checkpoint(meta["checkpoint"], checkpoint):
        raise StaleSpaceError(
            f"{directory} was built from another version of {checkpoint} (sha256 "
            f"{meta['checkpoint']['sha256'][:12]}…, the file has changed since); rebuild it: anim-clip analyze build"
        )
    index_path, ids_path = (directory / meta["files"][k] for k in ("index", "ids"))
    if not index_path.is_file() or not ids_path.is_file():
        raise AnimClipError(f"{directory}: files of build {meta['build']} are missing; run anim-clip analyze build")
    index = PromptIndex(faiss.read_index(str(index_path)), num_gpus)
    with np.load(ids_path) as ids:
        conditions = [tuple(int(s) for s in row if s >= 0) for row in ids["conditions"]]
        space = PromptSpace(index.vectors(), conditions, meta["actions"], meta["species"], ids["can_perform"])
        expected = space.id_map()
        if index.rows != meta["index"]["rows"] or any(not np.array_equal(ids[n], e)
                                                       for n, e in zip(("condition", "action"), expected)):
            raise AnimClipError(f"{directory}: index and id map disagree; run anim-clip analyze build")
    return StoredSpace(space, index, checkpoint, directory, meta)


def build_and_save(checkpoint: Path, kind: IndexKind = "flat", *, species_sets: list[tuple[int, ...]] | None = None,
                   sets_from: str | None = None, num_gpus: int | None = None,
                   device: torch.device | None = None) -> StoredSpace:
    """Build the prompt space of ``checkpoint`` (a head or an end-to-end model) and save it beside it."""
    ckpt = load_checkpoint(checkpoint)
    head = checkpoint_head(ckpt, device)
    actions, species = vocabulary_names(ckpt, head)
    space = build_space(head, actions, species, species_sets or ())
    index = PromptIndex.build(space.vectors, kind, num_gpus)
    directory = space_dir(checkpoint)
    meta = save_space(directory, space, index, checkpoint, ckpt.kind, sets_from)
    console.print(f"prompt space of {checkpoint}: {len(space.conditions)} conditions × {space.num_actions} actions "
                  f"= {space.rows} prompts ({index.kind}) -> {directory}", highlight=False, soft_wrap=True)
    return StoredSpace(space, index, checkpoint, directory, meta)


def open_space(run: str | Path, weights: str = "last", *, num_gpus: int | None = None) -> StoredSpace:
    """The prompt space of a run (its ``last.pt`` / ``best.pt``) or checkpoint file: loaded when
    built and current, built (flat, single species) when missing, and rebuilt with the options it
    was built with when the checkpoint changed since."""
    checkpoint = resolve_checkpoint(run, weights)
    directory = space_dir(checkpoint)
    meta = read_meta(directory)
    if meta is None:
        return build_and_save(checkpoint, num_gpus=num_gpus)
    try:
        return load_space(directory, checkpoint, num_gpus)
    except StaleSpaceError as e:
        console.print(f"[yellow]{e}: rebuilding it now[/]", highlight=False, soft_wrap=True)
        return build_and_save(checkpoint, meta["index"]["kind"],
                              species_sets=[tuple(s) for s in meta["conditions"]["species_sets"]],
                              sets_from=meta["conditions"]["species_sets_from"], num_gpus=num_gpus)
