"""The zarr feature store: layout, creation, crash-safe sharded writing, and the reader.

One zarr v3 store (DESIGN.md "Cache layout")::

    PATH/zarr.json                      schema, versions, the run config that made the features
    PATH/<split>/                       one group per split; attributes: views, frames, manifest sha
        cls           (N,V,T,D)   f16   many clips per chunk; loaded whole for training
        patches       (N,V,T,P,W) f16   one view of one clip per chunk (optional)
        done          (N,)        bool  set after a chunk's data is on disk
        error         (N,)        str   why a clip failed ("" = it did not)
        frame_indices (N,V,T) i32 the source frames of every view, written with the clip's cls chunk
        clip_ids (N,) str, targets (N,C) u8, species (N,A) u8
    PATH/text/<kind>/                   raw text embeddings of class names and descriptions

Crash safety rests on three facts. Groups appear by an atomic directory rename, so every reader
sees a whole split (attributes and creation-time arrays included) or none. zarr's LocalStore writes
each chunk to a temporary file and renames it, so a chunk is old or new, never torn. ``done`` is
written last, a whole chunk at a time, by the only writer that owns that chunk (shards split on
chunk boundaries), so a clip marked done has all its data and is never written again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.buffer.cpu import NDBuffer
from zarr.codecs import BloscCodec, ZstdCodec

from anim_clip import __version__
from anim_clip.errors import CacheError
from anim_clip.models.features import FrameFeatures

SCHEMA_VERSION = 1
CHUNK_BYTES = 2 << 20  # target size of a cls chunk: loaded whole, so a few MB keeps reads efficient
MAX_ERROR_CHARS = 200
TEXT_GROUP = "text"

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


def compressors(name: str) -> list[Any] | None:
    """zarr's ``compressors=`` argument for a codec name of ``CODECS``."""
    return list(CODECS[name]) or None


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
        raise CacheError(
            f"cache {where} was built with {field}={_show(was)}, this run uses {_show(now)} (field {field}); "
            "use another cache path or the matching config"
        )


def _read_attrs(path: Path) -> dict[str, Any]:
    return dict(zarr.open_group(path, mode="r").attrs)


def _is_group(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def read_root_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of the cache at ``path``, refusing what is not one of ours."""
    path = Path(path)
    if not _is_group(path):
        raise CacheError(f"{path}: no feature cache here (run `anim-clip extract` to build one)")
    attrs = _read_attrs(path)
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
                "manifest_sha256": manifest_sha256(self.clip_ids, list(arrays.values()))}


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
    g.create_array("frame_indices", shape=(n, v, t), chunks=(cpc, v, t), dtype="int32", fill_value=-1)
    g.create_array("done", shape=(n,), chunks=(cpc,), dtype=bool, fill_value=False)
    g.create_array("error", shape=(n,), chunks=(cpc,), dtype=str, fill_value="")
    _write_strings(g, "clip_ids", spec.clip_ids)
    for name, a in spec.arrays().items():
        rows = _rows_per_chunk(a[:1].nbytes)
        g.create_array(name, shape=a.shape, chunks=(min(rows, max(n, 1)), *a.shape[1:]), dtype=a.dtype)
        if n:
            g[name][...] = a


def _write_strings(group: zarr.Group, name: str, strings: Sequence[str]) -> None:
    arr = group.create_array(name, shape=(len(strings),), chunks=(max(len(strings), 1),), dtype=str)
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
    check_compatible(_read_attrs(dest), spec.attributes(), f"{path} split {split!r}")


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
        arr = g.create_array(name, shape=a.shape, chunks=(max(a.shape[0], 1), *a.shape[1:]), dtype=a.dtype)
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
    check_compatible(_read_attrs(dest), text.attributes(), f"{path} text {kind!r}")


def read_text(path: Path, kind: str) -> TextFeatures:
    dest = path / TEXT_GROUP / kind
    if not _is_group(dest):
        raise CacheError(f"cache {path} has no {kind!r} text embeddings")
    g = zarr.open_group(dest, mode="r")
    return TextFeatures(
        names=g["names"][...].tolist(),
        name_embeddings=torch.from_numpy(g["name_embeddings"][...]),
        descriptions=g["descriptions"][...].tolist(),
        description_embeddings=torch.from_numpy(g["description_embeddings"][...]),
        owner=torch.from_numpy(g["owner"][...]),
    )


# ----------------------------------------------------------------------------------------------
# writer


@dataclass
class _ChunkBuffer:
    """The ``cls`` rows and error strings of one chunk, until all its clips have arrived."""

    start: int
    cls: np.ndarray
    frame_indices: np.ndarray
    errors: list[str]
    missing: set[int]


class SplitWriter:
    """Writes the clips of one shard; a chunk becomes ``done`` only when all its data is on disk.

    Iterate ``pending`` (clips of this shard not yet done), call ``write`` or ``fail`` for each in
    any order. Patches go to disk at once; ``cls`` rows wait for their chunk to be complete, then
    the chunk, its error strings and lastly its ``done`` flags are written. A crash loses at most
    the incomplete chunks, which a re-run with the same arguments redoes.
    """

    def __init__(self, path: str | Path, split: str, shard: int = 0, num_shards: int = 1):
        self.path = Path(path) / split
        if not _is_group(self.path):
            raise CacheError(f"cache {path} has no split {split!r}; create it first")
        g = zarr.open_group(self.path, mode="r+")
        self._cls, self._done, self._error = g["cls"], g["done"], g["error"]
        self._frame_indices = g["frame_indices"]
        self._patches = g["patches"] if "patches" in g else None
        self.num_clips = self._cls.shape[0]
        self.clips_per_chunk = self._cls.chunks[0]
        self.clips = shard_range(self.num_clips, shard, num_shards, self.clips_per_chunk)
        self.pending = self._pending_clips()
        self._todo = set(self.pending)
        self._buffers: dict[int, _ChunkBuffer] = {}

    def _chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.clips_per_chunk
        return start, min(start + self.clips_per_chunk, self.num_clips)

    def _pending_clips(self) -> list[int]:
        """Clips of every chunk in this shard not yet entirely done (done is written per chunk)."""
        done = self._done[self.clips.start:self.clips.stop]
        out: list[int] = []
        for start in range(self.clips.start, self.clips.stop, self.clips_per_chunk):
            stop = min(start + self.clips_per_chunk, self.clips.stop)
            if not done[start - self.clips.start: stop - self.clips.start].all():
                out.extend(range(start, stop))
        return out

    def _take(self, index: int) -> _ChunkBuffer:
        if index not in self._todo:
            raise CacheError(f"clip {index} of {self.path} is done, already given, or outside this "
                             f"shard's clips {self.clips.start}..{self.clips.stop - 1}")
        self._todo.discard(index)
        chunk = index // self.clips_per_chunk
        if chunk not in self._buffers:
            start, stop = self._chunk_bounds(chunk)
            shape = (stop - start, *self._cls.shape[1:])
            self._buffers[chunk] = _ChunkBuffer(start, np.full(shape, np.nan, np.float16),
                                                np.full(shape[:3], -1, np.int32),
                                                [""] * (stop - start), set(range(start, stop)))
        return self._buffers[chunk]

    def write(self, index: int, features: FrameFeatures, frame_indices: np.ndarray) -> None:
        """Store clip ``index``: ``features.cls`` ``(V,T,D)``, if kept ``patches`` ``(V,T,P,W)``, and
        the source frame of every view's frame ``(V,T)``."""
        cls = _half(features.cls, self._cls.shape[1:], f"clip {index} cls")
        if tuple(np.shape(frame_indices)) != tuple(self._frame_indices.shape[1:]):
            raise CacheError(f"clip {index} frame indices: shape {np.shape(frame_indices)}, "
                             f"the cache expects {tuple(self._frame_indices.shape[1:])}")
        if self._patches is not None:
            if features.patches is None:
                raise CacheError(f"{self.path} stores patch tokens but clip {index} came without them")
            patches = _half(features.patches, self._patches.shape[1:], f"clip {index} patches")
        buffer = self._take(index)
        if self._patches is not None:
            self._patches[index] = patches
        buffer.cls[index - buffer.start] = cls
        buffer.frame_indices[index - buffer.start] = frame_indices
        self._arrived(buffer, index)

    def fail(self, index: int, reason: str) -> None:
        """Record that clip ``index`` could not be made; its features stay NaN."""
        buffer = self._take(index)
        buffer.errors[index - buffer.start] = " ".join(reason.split())[:MAX_ERROR_CHARS] or "failed"
        self._arrived(buffer, index)

    def _arrived(self, buffer: _ChunkBuffer, index: int) -> None:
        buffer.missing.discard(index)
        if not buffer.missing:
            self._flush(buffer)
            del self._buffers[index // self.clips_per_chunk]

    def _flush(self, buffer: _ChunkBuffer) -> None:
        stop = buffer.start + len(buffer.errors)
        self._cls[buffer.start:stop] = buffer.cls
        self._frame_indices[buffer.start:stop] = buffer.frame_indices
        # always written: replaces reasons a crashed run left for clips that succeed now
        self._error[buffer.start:stop] = np.array(buffer.errors, dtype=np.dtypes.StringDType())
        self._mark_done(buffer.start, stop)

    def _mark_done(self, start: int, stop: int) -> None:
        self._done[start:stop] = True

    @property
    def unfinished(self) -> int:
        """Clips given whose chunk is still incomplete: lost (and redone next run) if we stop now."""
        return sum(len(b.errors) - len(b.missing) for b in self._buffers.values())


def _half(tensor: torch.Tensor, shape: tuple[int, ...], what: str) -> np.ndarray:
    if tuple(tensor.shape) != tuple(shape):
        raise CacheError(f"{what}: shape {tuple(tensor.shape)}, the cache expects {tuple(shape)}")
    return tensor.detach().to("cpu", torch.float16).numpy()


# ----------------------------------------------------------------------------------------------
# reader


class CachedSplit:
    """One split with ``cls`` whole in memory: batches are gathers, never per-sample Python."""

    def __init__(self, path: Path, name: str, device: torch.device | str | None = None):
        if not _is_group(path / name):
            raise CacheError(f"cache {path} has no split {name!r}")
        g = zarr.open_group(path / name, mode="r")
        self.path = path / name
        self.attrs: dict[str, Any] = dict(g.attrs)
        self.device = torch.device(device or "cpu")
        self.cls = torch.from_numpy(g["cls"][...]).to(self.device)  # (N, V, T, D) float16
        self.done = torch.from_numpy(g["done"][...]).to(self.device)  # (N,) bool
        self.errors: list[str] = g["error"][...].tolist()
        self.failed = torch.tensor([bool(e) for e in self.errors], dtype=torch.bool, device=self.device)
        self.targets = torch.from_numpy(g["targets"][...]).to(self.device)  # (N, C) uint8
        self.species = torch.from_numpy(g["species"][...]).to(self.device)  # (N, A) uint8
        self.frame_indices = torch.from_numpy(g["frame_indices"][...])  # (N, V, T) int32
        self.clip_ids: list[str] = g["clip_ids"][...].tolist()
        self._patches = g["patches"] if "patches" in g else None

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
            self.split._patches.get_basic_selection(
                (int(self.clips[j]), int(self.picks[j])), out=NDBuffer.from_numpy_array(self.out[j]))
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
        return sorted(p.name for p in self.path.iterdir()
                      if p.name != TEXT_GROUP and not p.name.startswith(".") and _is_group(p))

    @property
    def text_kinds(self) -> list[str]:
        root = self.path / TEXT_GROUP
        return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and _is_group(p))

    def split(self, name: str, device: torch.device | str | None = None) -> CachedSplit:
        return CachedSplit(self.path, name, device)

    def text(self, kind: str) -> TextFeatures:
        return read_text(self.path, kind)
