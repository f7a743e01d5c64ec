"""The zarr feature store: layout, creation, crash-safe sharded writing, and the reader.

One zarr v3 store (docs/design.md "Cache layout")::

    PATH/zarr.json                      schema, versions, the run config that made the features
    PATH/<split>/                       one group per split; attributes: views, frames, manifest sha
        cls           (N,V,T,D)   f16   many clips per chunk; loaded whole for training
        patches       (N,V,T,P,W) f16   one view of one clip per chunk (optional)
        done          (N,)        bool  set after a clip's data is on disk
        error         (N,)        str   why a clip failed ("" = it did not)
        decoder       (N,)        str   which video decoder decoded the clip ("" = none did)
        frame_indices (N,V,T) i32 the source frames of every view, written with the clip's cls chunk
        species_probs (N,A)   f32   the species predictor's probabilities (only with species.model)
        clip_ids (N,) str, targets (N,C) u8, species (N,A) u8
    PATH/.<split>.lock                  byte-range locks of the writers, one byte per chunk
    PATH/text/<kind>/                   raw text embeddings of class names and descriptions

Crash safety rests on four facts. Groups appear by an atomic directory rename, so every reader
sees a whole split (attributes and creation-time arrays included) or none. zarr's LocalStore writes
each chunk to a temporary file and renames it, so a chunk is old or new, never torn. Each chunk has
one writer: shards split on chunk boundaries, and a writer holds an exclusive lock on its shard's
chunks, so a second process on the same chunks is refused. That writer rewrites a chunk's per-clip
arrays (``cls``, ``frame_indices``, ``error``, ...) whole from its own buffer, which holds what is on
disk for the clips already done, and writes ``done`` after them: so a clip marked done has all its
data, and its values never change again. The buffer is written when its chunk is complete and at
least every ``FLUSH_SECONDS``, so a kill loses at most that much work.

Integrity rests on two more. Every chunk of every array ends with the crc32c checksum of its bytes,
which zarr checks on every read: a chunk changed on disk (a flipped bit, a truncated copy, two
clips' rows swapped) is refused in one line naming its file and clips. And every array's declared
shape is checked against the signature, the split's attributes and its clip list before anything
is read, so an edited ``zarr.json`` cannot make a reader allocate an absurd array.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c
import numpy as np
import torch
import zarr
from zarr.buffer.cpu import NDBuffer
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from anim_clip import __version__
from anim_clip.errors import CacheError, DamagedCache
from anim_clip.models.features import FrameFeatures

SCHEMA_VERSION = 3  # 2: the per-clip decoder; 3: every chunk ends with its crc32c checksum
CHUNK_BYTES = 2 << 20  # target size of a cls chunk: loaded whole, so a few MB keeps reads efficient
MAX_ERROR_CHARS = 200
TEXT_GROUP = "text"
FLUSH_SECONDS = 30.0  # a writer saves the clips of incomplete chunks at least this often
CHUNK_ARRAYS = ("cls", "frame_indices", "error", "decoder")  # per-clip arrays chunked like cls, written before done
SPECIES_PROBS = "species_probs"  # one more of them, in the splits of a cache extracted with a species predictor
# what zarr, the JSON parser and the codecs raise on a damaged store (truncated chunk, invalid
# zarr.json, missing array); only zarr calls are wrapped, so none of these is a bug of ours
DAMAGE = (ValueError, KeyError, RuntimeError, OSError, TypeError, AttributeError)

# fp16 activations have near-random mantissas: zstd saves ~8% of disk at about half the speed
# of no codec, lz4 saves nothing (benchmarks/bench_cache_io.py, results/cache_io.json): so none.
CODECS: dict[str, tuple[Any, ...]] = {
    "none": (),
    "blosc-lz4": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),),
    "blosc-zstd": (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),),
    "zstd": (ZstdCodec(level=3),),
}
CLS_CODEC = "none"
PATCH_CODEC = "none"
SMALL_CODEC = "zstd"  # flags, strings, labels, text: zarr's own default (zstd at its default level, 3)
SHOWN_CLIPS = 3


def compressors(name: str) -> list[Any]:
    """zarr's ``compressors=`` argument for a codec name of ``CODECS``: its codecs, then the crc32c
    checksum of the stored bytes that every read checks, so a chunk changed on disk is refused."""
    return [*CODECS[name], Crc32cCodec()]


# ----------------------------------------------------------------------------------------------
# chunking and sharding


def clips_per_chunk(views: int, frames: int, dim: int) -> int:
    """How many clips fill a ``cls`` chunk of about ``CHUNK_BYTES``."""
    return max(1, CHUNK_BYTES // (views * frames * dim * 2))


def shard_range(num_clips: int, shard: int, num_shards: int, clips_per_chunk: int) -> range:
    """Clips of shard ``shard`` of ``num_shards``: contiguous whole chunks, so no chunk has two writers."""
    if not 0 <= shard < num_shards:
        raise CacheError(f"shard {shard}/{num_shards}: need 0 <= shard < num_shards")
    chunks = math.ceil(num_clips / clips_per_chunk)
    first, last = shard * chunks // num_shards, (shard + 1) * chunks // num_shards
    return range(min(first * clips_per_chunk, num_clips), min(last * clips_per_chunk, num_clips))


def _rows_per_chunk(row_bytes: int) -> int:
    return max(1, CHUNK_BYTES // max(1, row_bytes))


# ----------------------------------------------------------------------------------------------
# attributes and compatibility

_ABSENT = object()


def _jsonable(obj: Any) -> Any:
    """What ``obj`` reads back as from zarr.json (tuples become lists, and so on)."""
    return json.loads(json.dumps(obj))


def _first_difference(stored: Any, expected: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The dotted name and both values of the first field that differs, expected's order first."""
    keys = [*expected, *(k for k in stored if k not in expected)]
    for key in keys:
        a, b = stored.get(key, _ABSENT), expected.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def check_compatible(stored: dict[str, Any], expected: dict[str, Any], where: str | Path) -> None:
    """Refuse a cache built with another config, naming the first field that differs."""
    found = _first_difference(_jsonable(stored), _jsonable(expected))
    if found:
        field, was, now = found
        if was is _ABSENT:  # a field this version records and the one that began the cache did not
            raise CacheError(f"cache {where} was begun by an earlier anim-clip, which did not record {field} "
                             f"(this run: {_show(now)}, field {field}); extract into a new cache path")
        raise CacheError(
            f"cache {where} was built with {field}={_show(was)}, this run uses {_show(now)} (field {field}); "
            "use another cache path or the matching config"
        )


def _is_group(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def unreadable(path: Path, error: Exception) -> str:
    """What is wrong with a part of a store that cannot be read: missing, or damaged."""
    if isinstance(error, (KeyError, FileNotFoundError)):
        return f"{path} is missing"
    return f"{path} cannot be read ({type(error).__name__}: {' '.join(str(error).split())})"


def chunk_files(array: Path, first: Iterable[int] | None = None) -> list[tuple[tuple[int, ...], Path]]:
    """Coordinates and file of the chunks on disk of the array at ``array`` (zarr v3's default keys,
    ``c/i/j/...``), all or those whose first coordinate is in ``first``, in order."""
    root = array / "c"
    tops = [root / str(i) for i in first] if first is not None else list(root.iterdir()) if root.is_dir() else []
    found = []
    for top in tops:
        for file in [top] if top.is_file() else top.rglob("*"):
            parts = file.relative_to(root).parts  # a writer's leftover temporary (``0.<hex>.partial``) is no chunk
            if file.is_file() and all(part.isdigit() for part in parts):
                found.append((tuple(map(int, parts)), file))
    return sorted(found)


def chunk_intact(file: Path) -> bool:
    """Whether the crc32c checksum a chunk file ends with matches the bytes before it."""
    data = file.read_bytes()
    return len(data) >= 4 and google_crc32c.value(data[:-4]) == int.from_bytes(data[-4:], "little")


def _held(group: Path, start: int, stop: int) -> str:
    """What rows ``start..stop-1`` of an array of ``group`` are: clips, by name when the clip list is readable."""
    if not (group / "clip_ids").is_dir():
        return f"rows {start}..{stop - 1}"
    try:
        ids = zarr.open_array(group / "clip_ids", mode="r")[start:stop].tolist()
    except DAMAGE:
        return f"clips {start}..{stop - 1}"
    more = f" and {len(ids) - SHOWN_CLIPS} more" if len(ids) > SHOWN_CLIPS else ""
    return f"clips {start}..{stop - 1}: {', '.join(ids[:SHOWN_CLIPS])}{more}"


def checksum_failures(array: Path, first: Iterable[int] | None = None, workers: int = 1) -> list[str]:
    """One line per chunk of the array at ``array`` (all, or those whose first coordinate is in
    ``first``) whose bytes no longer match their checksum, naming the file and the clips it holds."""
    with ThreadPoolExecutor(workers) as pool:
        chunks = chunk_files(array, first)
        bad = [(coords, file) for (coords, file), ok in zip(chunks, pool.map(chunk_intact, (f for _, f in chunks)))
               if not ok]
    if not bad:
        return []
    meta = zarr.open_array(array, mode="r")
    rows, total = meta.chunks[0], meta.shape[0]
    return [f"{file}: checksum mismatch, its bytes changed after they were written "
            f"({_held(array.parent, coords[0] * rows, min((coords[0] + 1) * rows, total))})" for coords, file in bad]


def _damage(path: Path, error: Exception, first: Iterable[int] | None) -> str:
    """What is wrong with the part of a store at ``path``: the first chunk that fails its checksum
    when ``path`` is an array, else ``unreadable``."""
    if (path / "c").is_dir():
        try:
            failures = checksum_failures(path, first)
        except DAMAGE:  # its metadata is damaged too: say what the read said
            failures = []
        if failures:
            return failures[0]
    return unreadable(path, error)


@contextmanager
def reading(path: Path, cache: Path, first: Iterable[int] | None = None) -> Iterator[None]:
    """Turn the errors of a damaged store at ``path`` into one line naming it (for an array whose
    chunk fails its checksum: the chunk file and its clips; ``first``: the chunks along the first
    axis that were read, all if None) and the check to run."""
    try:
        yield
    except DAMAGE as e:
        raise DamagedCache(cache, _damage(path, e, first)) from e


def read_array(group: Path, name: str, cache: Path, rows: int | slice = slice(None)) -> np.ndarray:
    """``rows`` (default: all) of array ``name`` of the group at ``group``; a missing or damaged
    array is one CacheError."""
    with reading(group / name, cache):
        return zarr.open_array(group / name, mode="r")[rows]


def read_group_attrs(group: Path, cache: Path) -> dict[str, Any]:
    """The attributes of the group at ``group``; an invalid ``zarr.json`` is one CacheError."""
    with reading(group / "zarr.json", cache):
        return dict(zarr.open_group(group, mode="r").attrs)


def read_root_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of the cache at ``path``, refusing what is not one of ours."""
    path = Path(path)
    if not _is_group(path):
        raise CacheError(f"{path}: no feature cache here (run `anim-clip extract` to build one)")
    attrs = read_group_attrs(path, path)
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise CacheError(f"{path}: cache schema version {attrs.get('schema_version')!r} is not "
                         f"{SCHEMA_VERSION}, the one this anim_clip reads; rebuild the cache")
    return attrs


# ----------------------------------------------------------------------------------------------
# creation: build in a hidden temporary directory, publish by one rename


def _publish(dest: Path, build: Callable[[Path], None]) -> None:
    """Build a group in a temporary directory beside ``dest`` and rename it into place.

    The rename is atomic and fails when ``dest`` already holds something, so when several
    processes start at once exactly one group wins and the others validate it.
    """
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        build(tmp)
        os.rename(tmp, dest)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise OSError(e.errno, e.strerror, str(dest)) from None  # the cache's name, not the temporary's
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if not _is_group(dest):
        raise CacheError(f"{dest} exists and is not part of an anim-clip cache; choose another path")


def _versions() -> dict[str, str]:
    return {"anim_clip_version": __version__, "torch_version": torch.__version__,
            "open_clip_version": package_version("open_clip_torch"), "zarr_version": zarr.__version__}


def create_store(path: str | Path, config: dict[str, Any]) -> None:
    """Create the cache at ``path`` for ``config`` if absent; otherwise check it was built for it."""
    path = Path(path)

    def build(tmp: Path) -> None:
        attrs = {"schema_version": SCHEMA_VERSION, **_versions(),
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": config}
        zarr.open_group(tmp, mode="w", attributes=_jsonable(attrs)).create_group(TEXT_GROUP)

    if not _is_group(path):
        _publish(path, build)
    check_compatible(read_root_attrs(path)["config"], config, path)


def _check_split_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name == TEXT_GROUP:
        raise CacheError(f"invalid split name {name!r}")


def manifest_sha256(clip_ids: Sequence[str], arrays: Sequence[np.ndarray]) -> str:
    """Fingerprint of everything fixed at creation: clips and labels."""
    h = hashlib.sha256("\n".join(clip_ids).encode())
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class SplitSpec:
    """Everything fixed when a split is created; the writer fills in the features later."""

    clip_ids: Sequence[str]
    targets: np.ndarray  # (N, C) multi-hot
    species: np.ndarray  # (N, A) multi-hot
    views: int  # V views per clip
    frames: int  # T frames per view
    dim: int  # D of the CLS embeddings
    view_kind: str  # e.g. "augmented" (train) or "4 clips x 3 crops" (test)
    patch_shape: tuple[int, int] | None = None  # (P, W) when patch tokens are stored
    species_probs: bool = False  # the species predictor's probabilities are stored

    def arrays(self) -> dict[str, np.ndarray]:
        n = len(self.clip_ids)
        out = {"targets": np.asarray(self.targets, dtype=np.uint8),
               "species": np.asarray(self.species, dtype=np.uint8)}
        for name, a in out.items():
            if a.ndim != 2 or a.shape[0] != n:
                raise CacheError(f"{name}: shape {a.shape} does not fit {n} clips (needs (N, classes))")
        return out

    def attributes(self) -> dict[str, Any]:
        arrays = self.arrays()
        return {"num_clips": len(self.clip_ids), "num_views": self.views, "view_kind": self.view_kind,
                "frames": self.frames, "dim": self.dim,
                "patches": list(self.patch_shape) if self.patch_shape else None,
                "manifest_sha256": manifest_sha256(self.clip_ids, list(arrays.values())),
                # only when set, so that splits made before the species predictor existed still match
                **({SPECIES_PROBS: True} if self.species_probs else {})}


def _build_split(tmp: Path, spec: SplitSpec) -> None:
    attrs = spec.attributes()
    n, v, t, d = attrs["num_clips"], attrs["num_views"], attrs["frames"], attrs["dim"]
    cpc = min(clips_per_chunk(v, t, d), max(n, 1))
    g = zarr.open_group(tmp, mode="w", attributes=attrs)
    g.create_array("cls", shape=(n, v, t, d), chunks=(cpc, v, t, d), dtype="float16",
                   fill_value=np.nan, compressors=compressors(CLS_CODEC))
    if spec.patch_shape:
        p, w = spec.patch_shape
        g.create_array("patches", shape=(n, v, t, p, w), chunks=(1, 1, t, p, w), dtype="float16",
                       fill_value=np.nan, compressors=compressors(PATCH_CODEC))
    small = compressors(SMALL_CODEC)
    g.create_array("frame_indices", shape=(n, v, t), chunks=(cpc, v, t), dtype="int32", fill_value=-1,
                   compressors=small)
    g.create_array("done", shape=(n,), chunks=(cpc,), dtype=bool, fill_value=False, compressors=small)
    g.create_array("error", shape=(n,), chunks=(cpc,), dtype=str, fill_value="", compressors=small)
    g.create_array("decoder", shape=(n,), chunks=(cpc,), dtype=str, fill_value="", compressors=small)
    if spec.species_probs:
        a = spec.species.shape[1]
        g.create_array(SPECIES_PROBS, shape=(n, a), chunks=(cpc, a), dtype="float32", fill_value=np.nan,
                       compressors=small)
    _write_strings(g, "clip_ids", spec.clip_ids)
    for name, a in spec.arrays().items():
        rows = _rows_per_chunk(a[:1].nbytes)
        g.create_array(name, shape=a.shape, chunks=(min(rows, max(n, 1)), *a.shape[1:]), dtype=a.dtype,
                       compressors=small)
        if n:
            g[name][...] = a


def _write_strings(group: zarr.Group, name: str, strings: Sequence[str]) -> None:
    arr = group.create_array(name, shape=(len(strings),), chunks=(max(len(strings), 1),), dtype=str,
                             compressors=compressors(SMALL_CODEC))
    if strings:
        arr[...] = np.array(strings, dtype=np.dtypes.StringDType())


def create_split(path: str | Path, split: str, spec: SplitSpec) -> None:
    """Create split ``split`` if absent; otherwise check it holds the same clips, views and shapes."""
    path = Path(path)
    read_root_attrs(path)
    _check_split_name(split)
    dest = path / split
    if not _is_group(dest):
        _publish(dest, lambda tmp: _build_split(tmp, spec))
    check_compatible(read_group_attrs(dest, path), spec.attributes(), f"{path} split {split!r}")


# ----------------------------------------------------------------------------------------------
# declared shapes: checked before anything is read, so an edited zarr.json cannot make a reader allocate


SPLIT_ARRAYS = ("cls", "done", "error", "decoder", "clip_ids", "frame_indices", "targets", "species")
LABELS = {"targets": "actions", "species": "species"}  # label array -> the text group naming its classes


def _signed_attributes(attrs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The split attributes the cache's signature fixes: views, frames, embedding width, patch grid."""
    backbone, sampling = config.get("backbone", {}), config.get("sampling", {})
    views = (sampling.get("train_views") if attrs.get("view_kind") == "augmented"
             else sampling.get("test_clips", 0) * sampling.get("test_crops", 0))
    patches = backbone.get("patch_shape") if backbone.get("patches", "none") != "none" else None
    return {"num_views": views, "frames": sampling.get("num_frames"), "dim": backbone.get("embed_dim"),
            "patches": patches}


def declared_shape_problems(shapes: dict[str, tuple[int, ...]], attrs: dict[str, Any],
                            config: dict[str, Any] | None, classes: dict[str, int]) -> list[str]:
    """What is wrong with a split's declared shapes (``shapes``: array -> shape in its zarr.json):
    its attributes against the signature ``config`` (None: unreadable, not compared), every array
    against the attributes and the clip list, the label widths against the text groups' ``classes``
    (kind -> names, for the groups there are)."""
    if config is not None:
        wrong = [f"attribute {key}={attrs.get(key)!r}, the cache's signature says {value!r}"
                 for key, value in _signed_attributes(attrs, config).items() if attrs.get(key) != value]
        if wrong:
            return wrong
    n, v, t, d = (attrs.get(key) for key in ("num_clips", "num_views", "frames", "dim"))
    if not all(isinstance(x, int) for x in (n, v, t, d)):
        return [f"attributes num_clips={n!r}, num_views={v!r}, frames={t!r}, dim={d!r} are not all numbers"]
    expected: dict[str, tuple[int | None, ...]] = {
        "cls": (n, v, t, d), "done": (n,), "error": (n,), "decoder": (n,), "clip_ids": (n,), "frame_indices": (n, v, t),
        **{name: (n, classes.get(kind)) for name, kind in LABELS.items()}}
    if attrs.get("patches"):
        expected["patches"] = (n, v, t, *attrs["patches"])
    if SPECIES_PROBS in shapes:
        expected[SPECIES_PROBS] = expected["species"]
    return [f"{name} declares shape {shapes[name]}, the split's attributes and clip list say "
            f"{tuple('any' if e is None else e for e in shape)}"
            for name, shape in expected.items() if name in shapes and not _fits(shapes[name], shape)]


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def class_counts(cache: Path) -> dict[str, int]:
    """How many classes each text group of the cache names (a group not there yet is left out)."""
    return {kind: read_group_attrs(cache / TEXT_GROUP / kind, cache).get("num_names")
            for kind in group_names(cache / TEXT_GROUP)}


def open_arrays(group: Path, names: Iterable[str], cache: Path) -> dict[str, zarr.Array]:
    """The group's arrays ``names``, opened (their metadata read, no data); missing or invalid is one CacheError."""
    arrays = {}
    for name in names:
        with reading(group / name, cache):
            arrays[name] = zarr.open_array(group / name, mode="r")
    return arrays


def check_declared_shapes(group: Path, attrs: dict[str, Any], cache: Path) -> None:
    """Refuse the split at ``group`` (attributes ``attrs``) whose arrays declare shapes its signature,
    attributes and clip list do not give, in one line, before any array is read."""
    kept = [name for name in ("patches", SPECIES_PROBS) if attrs.get(name)]
    shapes = {name: tuple(array.shape) for name, array in open_arrays(group, [*SPLIT_ARRAYS, *kept], cache).items()}
    problems = declared_shape_problems(shapes, attrs, read_group_attrs(cache, cache).get("config", {}),
                                       class_counts(cache))
    if problems:
        raise DamagedCache(cache, f"{group}: {problems[0]}")


# ----------------------------------------------------------------------------------------------
# text embeddings


@dataclass(frozen=True)
class TextFeatures:
    """Raw text embeddings of one kind of class (actions or species); pool them at training time."""

    names: list[str]  # (C,) class names
    name_embeddings: torch.Tensor  # (C, D) float32
    descriptions: list[str]  # (S,) every description string
    description_embeddings: torch.Tensor  # (S, D) float32
    owner: torch.Tensor  # (S,) int64 class id of each description

    def attributes(self) -> dict[str, Any]:
        h = hashlib.sha256("\n".join(self.names).encode())
        h.update("\n".join(self.descriptions).encode())
        h.update(self.owner.numpy().astype(np.int64).tobytes())
        return {"num_names": len(self.names), "num_descriptions": len(self.descriptions),
                "strings_sha256": h.hexdigest()}

    def check(self) -> None:
        c, s = len(self.names), len(self.descriptions)
        if self.name_embeddings.shape[0] != c or self.description_embeddings.shape[0] != s or self.owner.shape != (s,):
            raise CacheError(f"text: {c} names with {tuple(self.name_embeddings.shape)} embeddings, {s} descriptions "
                             f"with {tuple(self.description_embeddings.shape)} embeddings and owner "
                             f"{tuple(self.owner.shape)} do not fit together")
        if s and not (0 <= int(self.owner.min()) and int(self.owner.max()) < c):
            raise CacheError(f"text: description owners must be class ids in [0, {c})")


def _build_text(tmp: Path, text: TextFeatures) -> None:
    g = zarr.open_group(tmp, mode="w", attributes=text.attributes())
    _write_strings(g, "names", text.names)
    _write_strings(g, "descriptions", text.descriptions)
    for name, tensor in (("name_embeddings", text.name_embeddings),
                         ("description_embeddings", text.description_embeddings), ("owner", text.owner)):
        a = tensor.detach().cpu().numpy().astype(np.int64 if name == "owner" else np.float32)
        arr = g.create_array(name, shape=a.shape, chunks=(max(a.shape[0], 1), *a.shape[1:]), dtype=a.dtype,
                             compressors=compressors(SMALL_CODEC))
        if a.size:
            arr[...] = a


def write_text(path: str | Path, kind: str, text: TextFeatures) -> None:
    """Store the text embeddings of ``kind`` ("actions", "species") once; later runs must match."""
    path = Path(path)
    read_root_attrs(path)
    _check_split_name(kind)
    text.check()
    dest = path / TEXT_GROUP / kind
    if not _is_group(dest):
        _publish(dest, lambda tmp: _build_text(tmp, text))
    check_compatible(read_group_attrs(dest, path), text.attributes(), f"{path} text {kind!r}")


def _check_text_shapes(path: Path, dest: Path) -> None:
    """Refuse text arrays whose declared shapes the group's counts and the signature's width do not
    give, before any is read."""
    attrs = read_group_attrs(dest, path)
    c, s = attrs.get("num_names"), attrs.get("num_descriptions")
    d = read_group_attrs(path, path).get("config", {}).get("backbone", {}).get("embed_dim")
    expected = {"names": (c,), "name_embeddings": (c, d), "descriptions": (s,), "description_embeddings": (s, d),
                "owner": (s,)}
    for name, array in open_arrays(dest, expected, path).items():
        if tuple(array.shape) != expected[name]:
            raise DamagedCache(path, f"{dest}: {name} declares shape {tuple(array.shape)}, the group's counts and "
                                     f"the cache's signature say {expected[name]}")


def read_text(path: Path, kind: str) -> TextFeatures:
    dest = path / TEXT_GROUP / kind
    if not _is_group(dest):
        raise CacheError(f"cache {path} has no {kind!r} text embeddings")
    _check_text_shapes(path, dest)
    read = lambda name: read_array(dest, name, path)  # noqa: E731
    return TextFeatures(
        names=read("names").tolist(),
        name_embeddings=torch.from_numpy(read("name_embeddings")),
        descriptions=read("descriptions").tolist(),
        description_embeddings=torch.from_numpy(read("description_embeddings")),
        owner=torch.from_numpy(read("owner")),
    )


# ----------------------------------------------------------------------------------------------
# writer


@dataclass
class _ChunkBuffer:
    """One chunk's rows of every ``CHUNK_ARRAYS`` array and its done flags, as they will be on disk."""

    start: int
    rows: dict[str, np.ndarray]  # array name -> the chunk's rows
    done: np.ndarray  # (clips of the chunk,) the flags on disk
    arrived: set[int]  # clips given since the buffer was last written
    missing: set[int]  # clips neither done before nor given yet


class SplitWriter:
    """Writes the clips of one shard; a clip becomes ``done`` only when all its data is on disk.

    Iterate ``pending`` (clips of this shard not yet done), call ``write`` or ``fail`` for each in
    any order. Patches go to disk at once; the other per-clip arrays are buffered a chunk at a time
    and written whole, then the done flags of the clips they hold: when the chunk is complete, and
    every ``FLUSH_SECONDS`` for incomplete ones (``flush`` does it at once). A crash loses at most
    the clips given since then, which a re-run with the same arguments redoes. The shard's chunks
    are locked until ``close``: a second writer of any of them, in another process, is refused.
    """

    def __init__(self, path: str | Path, split: str, shard: int = 0, num_shards: int = 1):
        self.path = Path(path) / split
        if not _is_group(self.path):
            raise CacheError(f"cache {path} has no split {split!r}; create it first")
        check_declared_shapes(self.path, read_group_attrs(self.path, Path(path)), Path(path))
        with reading(self.path, Path(path)):
            g = zarr.open_group(self.path, mode="r+")
            self._arrays = {name: g[name] for name in CHUNK_ARRAYS}
            if g.attrs.get(SPECIES_PROBS):
                self._arrays[SPECIES_PROBS] = g[SPECIES_PROBS]
            self._done = g["done"]
            self._patches = g["patches"] if "patches" in g else None
        self.num_clips = self._done.shape[0]
        self.clips_per_chunk = self._done.chunks[0]
        self.clips = shard_range(self.num_clips, shard, num_shards, self.clips_per_chunk)
        self._lock = _lock_chunks(Path(path), split, self.clips, self.clips_per_chunk)
        with reading(self.path / "done", Path(path)):
            done = self._done[self.clips.start:self.clips.stop]
        self.pending = [i for i, d in zip(self.clips, done) if not d]
        self._todo = set(self.pending)
        self._buffers: dict[int, _ChunkBuffer] = {}
        self._flushed_at = time.monotonic()

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the shard's lock (the buffers of incomplete chunks are not written: ``flush``)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _take(self, index: int) -> _ChunkBuffer:
        if index not in self._todo:
            raise CacheError(f"clip {index} of {self.path} is done, already given, or outside this "
                             f"shard's clips {self.clips.start}..{self.clips.stop - 1}")
        self._todo.discard(index)
        chunk = index // self.clips_per_chunk
        if chunk not in self._buffers:
            self._buffers[chunk] = self._read_chunk(chunk)
        return self._buffers[chunk]

    def _read_chunk(self, chunk: int) -> _ChunkBuffer:
        """The chunk as on disk, with the rows of clips not done reset (a crash may have left data there)."""
        start = chunk * self.clips_per_chunk
        stop = min(start + self.clips_per_chunk, self.num_clips)
        with reading(self.path / "done", self.path.parent, [chunk]):
            done = self._done[start:stop]
        rows = {}
        for name, array in self._arrays.items():
            with reading(self.path / name, self.path.parent, [chunk]):
                rows[name] = array[start:stop]
            rows[name][~done] = array.fill_value
        return _ChunkBuffer(start, rows, done, set(), {start + i for i in np.flatnonzero(~done)})

    def write(self, index: int, features: FrameFeatures, frame_indices: np.ndarray, decoder: str) -> None:
        """Store clip ``index``: ``features.cls`` ``(V,T,D)``, if kept ``patches`` ``(V,T,P,W)`` and the
        mean over views of the species probabilities ``species`` ``(V,A)``, the source frame of every
        view's frame ``(V,T)`` and the video decoder that decoded them."""
        cls = _half(features.cls, self._arrays["cls"].shape[1:], f"clip {index} cls")
        extra = {SPECIES_PROBS: self._species_probs(index, features.species)} if SPECIES_PROBS in self._arrays else {}
        if tuple(np.shape(frame_indices)) != tuple(self._arrays["frame_indices"].shape[1:]):
            raise CacheError(f"clip {index} frame indices: shape {np.shape(frame_indices)}, "
                             f"the cache expects {tuple(self._arrays['frame_indices'].shape[1:])}")
        if self._patches is not None:
            if features.patches is None:
                raise CacheError(f"{self.path} stores patch tokens but clip {index} came without them")
            patches = _half(features.patches, self._patches.shape[1:], f"clip {index} patches")
        buffer = self._take(index)
        if self._patches is not None:
            self._patches[index] = patches
        self._arrived(buffer, index, cls=cls, frame_indices=frame_indices, decoder=decoder, **extra)

    def _species_probs(self, index: int, species: torch.Tensor | None) -> np.ndarray:
        """A clip's species probabilities: the mean of its views'."""
        shape = (self._arrays["cls"].shape[1], self._arrays[SPECIES_PROBS].shape[1])
        if species is None or tuple(species.shape) != shape:
            got = None if species is None else tuple(species.shape)
            raise CacheError(f"{self.path} stores species probabilities {shape} per clip, clip {index} came with {got}")
        return species.detach().to("cpu", torch.float32).mean(0).numpy()

    def fail(self, index: int, reason: str) -> None:
        """Record that clip ``index`` could not be made; its features stay NaN."""
        self._arrived(self._take(index), index, error=" ".join(reason.split())[:MAX_ERROR_CHARS] or "failed")

    def _arrived(self, buffer: _ChunkBuffer, index: int, **values: Any) -> None:
        for name, value in values.items():
            buffer.rows[name][index - buffer.start] = value
        buffer.arrived.add(index)
        buffer.missing.discard(index)
        if not buffer.missing:
            self._write(buffer)
            del self._buffers[index // self.clips_per_chunk]
        if time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write every clip given so far, so that stopping now loses none of them."""
        for buffer in self._buffers.values():
            if buffer.arrived:
                self._write(buffer)
        self._flushed_at = time.monotonic()

    def _write(self, buffer: _ChunkBuffer) -> None:
        """The chunk's rows of every array, then the done flags of the clips that arrived."""
        stop = buffer.start + len(buffer.done)
        for name, array in self._arrays.items():
            array[buffer.start:stop] = buffer.rows[name]
        done = buffer.done.copy()
        done[[i - buffer.start for i in buffer.arrived]] = True
        self._mark_done(buffer.start, done)
        buffer.done, buffer.arrived = done, set()

    def _mark_done(self, start: int, flags: np.ndarray) -> None:
        self._done[start:start + len(flags)] = flags


def _lock_chunks(path: Path, split: str, clips: range, clips_per_chunk: int) -> BinaryIO | None:
    """Lock the chunks of ``clips`` against writers in other processes, until the returned file closes.

    POSIX byte-range locks on one file per split, one byte per chunk: disjoint shards do not
    conflict, and the OS releases the locks of a process that dies.
    """
    if not clips:
        return None  # a length of 0 would lock the whole file
    first, count = clips.start // clips_per_chunk, math.ceil(len(clips) / clips_per_chunk)
    file = open(path / f".{split}.lock", "ab")
    try:
        fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB, count, first)
    except OSError as e:
        file.close()
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        raise CacheError(f"{path}: clips {clips.start}..{clips.stop - 1} of split {split!r} are being extracted by "
                         "another process; wait for it to finish (processes share a store only as shards: "
                         "--shard i/n or torchrun)") from None
    return file


def _half(tensor: torch.Tensor, shape: tuple[int, ...], what: str) -> np.ndarray:
    if tuple(tensor.shape) != tuple(shape):
        raise CacheError(f"{what}: shape {tuple(tensor.shape)}, the cache expects {tuple(shape)}")
    return tensor.detach().to("cpu", torch.float16).numpy()


# ----------------------------------------------------------------------------------------------
# reader


class CachedSplit:
    """One split with ``cls`` whole in memory: batches are gathers, never per-sample Python."""

    def __init__(self, path: Path, name: str, device: torch.device | str | None = None):
        self.path = path / name
        if not _is_group(self.path):
            raise CacheError(f"cache {path} has no split {name!r}")
        self.attrs: dict[str, Any] = read_group_attrs(self.path, path)
        check_declared_shapes(self.path, self.attrs, path)
        read = lambda array: read_array(self.path, array, path)  # noqa: E731
        self.device = torch.device(device or "cpu")
        self.cls = torch.from_numpy(read("cls")).to(self.device)  # (N, V, T, D) float16
        self.done = torch.from_numpy(read("done")).to(self.device)  # (N,) bool
        self.errors: list[str] = read("error").tolist()
        self.failed = torch.tensor([bool(e) for e in self.errors], dtype=torch.bool, device=self.device)
        self.targets = torch.from_numpy(read("targets")).to(self.device)  # (N, C) uint8
        self.species = torch.from_numpy(read("species")).to(self.device)  # (N, A) uint8
        self.frame_indices = torch.from_numpy(read("frame_indices"))  # (N, V, T) int32
        # (N, A) float32, the species predictor's probabilities; None in a cache extracted without one
        self.species_probs = (torch.from_numpy(read(SPECIES_PROBS)).to(self.device)
                              if self.attrs.get(SPECIES_PROBS) else None)
        self.clip_ids: list[str] = read("clip_ids").tolist()
        self._patches = None
        if self.attrs.get("patches"):
            with reading(self.path / "patches", path):
                self._patches = zarr.open_array(self.path / "patches", mode="r")

    @property
    def valid(self) -> torch.Tensor:
        """Clips with features: done and not failed."""
        return self.done & ~self.failed

    def __len__(self) -> int:
        return self.cls.shape[0]

    def features(self, indices: torch.Tensor, views: torch.Tensor) -> FrameFeatures:
        """CLS features ``(B,T,D)`` of view ``views[b]`` of clip ``indices[b]``."""
        return FrameFeatures(cls=self.cls[indices, views], patches=None)

    def patch_loader(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], workers: int = 4, prefetch: int = 2
    ) -> Iterator[FrameFeatures]:
        """FrameFeatures with patches for each ``(indices, views)`` batch, in the order given.

        Each sample is one chunk, read by a pool of ``workers`` threads; the reads of the next
        ``prefetch`` batches are under way while the caller works on the current one.
        """
        if self._patches is None:
            raise CacheError(f"{self.path} holds no patch tokens (extract with backbone.patches=fp16)")
        pool = ThreadPoolExecutor(workers, thread_name_prefix="patches")
        queue: deque[Future[FrameFeatures]] = deque()
        try:
            for indices, views in batches:
                queue.append(_PatchBatch(self, indices, views).submit(pool))
                if len(queue) > prefetch:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class _PatchBatch:
    """One batch read by many threads; the thread that reads its last sample assembles it.

    So the consumer waits once per batch: with busy reader threads every GIL hand-over to it
    costs up to the 5 ms switch interval, and a wait per sample halved the throughput.
    """

    def __init__(self, split: CachedSplit, indices: torch.Tensor, views: torch.Tensor):
        self.split, self.indices, self.views = split, indices, views
        self.clips, self.picks = indices.cpu().numpy(), views.cpu().numpy()
        self.out = np.empty((len(self.clips), *split._patches.shape[2:]), np.float16)
        self.remaining = len(self.clips)
        self.lock = threading.Lock()
        self.result: Future[FrameFeatures] = Future()

    def submit(self, pool: ThreadPoolExecutor) -> Future[FrameFeatures]:
        if not self.remaining:
            self.result.set_result(self.assemble())
        for j in range(len(self.clips)):
            pool.submit(self.read, j)
        return self.result

    def read(self, j: int) -> None:
        try:  # decoded straight into the batch: no extra copy
            with reading(self.split.path / "patches", self.split.path.parent, [int(self.clips[j])]):
                self.split._patches.get_basic_selection(
                    (int(self.clips[j]), int(self.picks[j])), out=NDBuffer.from_numpy_array(self.out[j]))
            if not np.isfinite(self.out[j]).all():
                raise DamagedCache(self.split.path.parent, f"{self.split.path / 'patches'}: clip "
                                   f"{self.split.clip_ids[self.clips[j]]!r} holds NaN/inf patch tokens")
            with self.lock:
                self.remaining -= 1
                last = self.remaining == 0
            if last:
                self.result.set_result(self.assemble())
        except BaseException as e:
            with self.lock:
                if not self.result.done():
                    self.result.set_exception(e)

    def assemble(self) -> FrameFeatures:
        device = self.split.device
        return FrameFeatures(cls=self.split.cls[self.indices.to(device), self.views.to(device)],
                             patches=torch.from_numpy(self.out).to(device))


def group_names(path: Path) -> list[str]:
    """The groups in the folder ``path``, by their ``zarr.json`` (no zarr listing: it may be damaged)."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(".") and _is_group(p))


def split_names(path: Path) -> list[str]:
    return [name for name in group_names(path) if name != TEXT_GROUP]


class FeatureCache:
    """Read access to a cache: its attributes, splits and text embeddings."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.attrs = read_root_attrs(self.path)

    @property
    def config(self) -> dict[str, Any]:
        return self.attrs["config"]

    @property
    def splits(self) -> list[str]:
        return split_names(self.path)

    @property
    def text_kinds(self) -> list[str]:
        return group_names(self.path / TEXT_GROUP)

    def split(self, name: str, device: torch.device | str | None = None) -> CachedSplit:
        return CachedSplit(self.path, name, device)

    def text(self, kind: str) -> TextFeatures:
        return read_text(self.path, kind)
