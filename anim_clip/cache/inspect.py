"""What is in a feature cache (``cache_info``) and whether it can be trusted (``verify_cache``)."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from rich.table import Table
from zarr.codecs import BloscCodec, ZstdCodec

from anim_clip.cache.store import (
    TEXT_GROUP,
    FeatureCache,
    TextFeatures,
    manifest_sha256,
    read_root_attrs,
    read_text,
)
from anim_clip.errors import CacheError
from anim_clip.ui import table

ROOT_KEYS = ("schema_version", "anim_clip_version", "created", "torch_version", "open_clip_version", "zarr_version",
             "config")
SPLIT_KEYS = ("num_clips", "num_views", "view_kind", "frames", "dim", "patches", "manifest_sha256")
SHOWN_FAILURES = 10
SHOWN_CLIPS = 5


# ----------------------------------------------------------------------------------------------
# info


def disk_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _codec(arr: zarr.Array) -> str:
    names = []
    for c in arr.compressors:
        if isinstance(c, BloscCodec):
            names.append(f"blosc({c.cname.value},{c.shuffle.value})")
        elif isinstance(c, ZstdCodec):
            names.append(f"zstd({c.level})")
        else:
            names.append(type(c).__name__)
    return "+".join(names) or "none"


def _array_info(arr: zarr.Array, path: Path) -> dict[str, Any]:
    dtype = "str" if arr.dtype.kind == "T" else str(arr.dtype)
    return {"shape": list(arr.shape), "chunks": list(arr.chunks), "dtype": dtype,
            "codec": _codec(arr), "bytes": disk_bytes(path)}


def _outcomes(group: zarr.Group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``done``, ``failed`` (done with a reason) and the reasons, one entry per clip."""
    done = group["done"][...]
    errors = np.asarray(group["error"][...].tolist(), dtype=object)
    return done, done & (errors != ""), errors


def _decoded_by(group: zarr.Group, decoded: np.ndarray) -> dict[str, int]:
    """How many of the ``decoded`` clips each video decoder decoded, most first."""
    return dict(Counter(group["decoder"][...][decoded].tolist()).most_common())


def cache_decoders(path: str | Path) -> dict[str, int]:
    """How many clips of every split of the cache at ``path`` each video decoder decoded, most first."""
    total: Counter[str] = Counter()
    for split in FeatureCache(path).splits:
        g = zarr.open_group(Path(path) / split, mode="r")
        done, failed, _ = _outcomes(g)
        total.update(_decoded_by(g, done & ~failed))
    return dict(total.most_common())


def mixed_decoders_note(decoders: dict[str, int]) -> str | None:
    """The warning a cache whose clips more than one decoder decoded deserves; None for one decoder."""
    if len(decoders) < 2:
        return None
    return (f"clips decoded by {decoders_text(decoders)}: the decoders' pixels differ on 10-bit and odd-height "
            "4:2:0 video (README, Video decoding), so their features may too; for one decoder throughout, "
            "extract into a new cache with --set sampling.decoder=pyav")


def decoders_text(decoders: dict[str, int]) -> str:
    """``decord 30, pyav 2``: clips per decoder, most first."""
    return ", ".join(f"{name} {n}" for name, n in Counter(decoders).most_common()) or "-"


def _split_info(path: Path) -> dict[str, Any]:
    g = zarr.open_group(path, mode="r")
    done, failed, errors = _outcomes(g)
    clip_ids = g["clip_ids"][...].tolist()
    return {
        **dict(g.attrs),
        "clips_per_chunk": g["cls"].chunks[0],
        "done": int(done.sum()),
        "failed": int(failed.sum()),
        "pending": int((~done).sum()),
        "decoders": _decoded_by(g, done & ~failed),
        "failures": [[clip_ids[i], errors[i]] for i in np.flatnonzero(failed)],
        "arrays": {name: _array_info(g[name], path / name) for name in sorted(g.array_keys())},
    }


def cache_info(path: str | Path) -> dict[str, Any]:
    """A JSON-able summary: versions, config, per split counts and failures, per array size and codec."""
    path = Path(path)
    cache = FeatureCache(path)
    text = {}
    for kind in cache.text_kinds:
        attrs = dict(zarr.open_group(path / TEXT_GROUP / kind, mode="r").attrs)
        text[kind] = {**attrs, "bytes": disk_bytes(path / TEXT_GROUP / kind)}
    return {"path": str(path), **{k: v for k, v in cache.attrs.items() if k != "config"},
            "splits": {name: _split_info(path / name) for name in cache.splits}, "decoders": cache_decoders(path),
            "text": text, "bytes": disk_bytes(path), "config": cache.config}


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _flatten(config: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in config.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def cache_info_tables(info: dict[str, Any]) -> list[Table]:
    """``cache_info`` as rich tables: overview, splits, arrays, failures, text, config."""
    overview = table(f"cache {info['path']}", ["", "value"], [
        ("schema", info["schema_version"]), ("created", info["created"]),
        ("anim_clip", info["anim_clip_version"]), ("torch", info["torch_version"]),
        ("open_clip", info["open_clip_version"]), ("zarr", info["zarr_version"]), ("on disk", _size(info["bytes"])),
        ("decoded by", decoders_text(info["decoders"])),
        *([("[bold yellow]MIXED DECODERS[/]", note)] if (note := mixed_decoders_note(info["decoders"])) else []),
    ])
    splits = table("splits", ["split", "clips", "views", "T", "D", "patches", "done", "failed", "pending",
                              "decoded by", "on disk"], [
        (name, s["num_clips"], f"{s['num_views']} ({s['view_kind']})", s["frames"], s["dim"],
         "x".join(map(str, s["patches"])) if s["patches"] else "no", s["done"], s["failed"], s["pending"],
         decoders_text(s["decoders"]), _size(sum(a["bytes"] for a in s["arrays"].values())))
        for name, s in info["splits"].items()
    ])
    arrays = table("arrays", ["array", "shape", "chunks", "dtype", "codec", "on disk"], [
        (f"{name}/{array}", "x".join(map(str, a["shape"])), "x".join(map(str, a["chunks"])), a["dtype"],
         a["codec"], _size(a["bytes"]))
        for name, s in info["splits"].items() for array, a in s["arrays"].items()
    ])
    failures = [(name, clip, reason) for name, s in info["splits"].items() for clip, reason in s["failures"]]
    shown = table(f"failed clips (first {SHOWN_FAILURES} of {len(failures)})", ["split", "clip", "reason"],
                  failures[:SHOWN_FAILURES])
    text = table("text embeddings", ["kind", "names", "descriptions", "on disk"], [
        (kind, t["num_names"], t["num_descriptions"], _size(t["bytes"])) for kind, t in info["text"].items()
    ])
    config = table("config", ["field", "value"], _flatten(info["config"]))
    return [overview, splits, arrays, *([shown] if failures else []), text, config]


# ----------------------------------------------------------------------------------------------
# verify


def _clip_list(clip_ids: list[str], indices: np.ndarray) -> str:
    names = ", ".join(clip_ids[i] for i in indices[:SHOWN_CLIPS])
    return names + (f" and {len(indices) - SHOWN_CLIPS} more" if len(indices) > SHOWN_CLIPS else "")


def _shape_problems(g: zarr.Group, attrs: dict[str, Any], where: str) -> list[str]:
    n, v, t, d = attrs["num_clips"], attrs["num_views"], attrs["frames"], attrs["dim"]
    expected = {"cls": (n, v, t, d), "done": (n,), "error": (n,), "decoder": (n,), "clip_ids": (n,),
                "frame_indices": (n, v, t)}
    if attrs["patches"]:
        expected["patches"] = (n, v, t, *attrs["patches"])
    present = set(g.array_keys())
    problems = [f"{where}: array {name!r} is missing"
                for name in [*expected, "targets", "species"] if name not in present]
    if "patches" in present and not attrs["patches"]:
        problems.append(f"{where}: holds patches although its attributes say it has none")
    if problems:
        return problems
    problems += [f"{where}: {name} has shape {g[name].shape}, expected {shape}"
                 for name, shape in expected.items() if g[name].shape != shape]
    problems += [f"{where}: {name} has {g[name].shape[0]} rows for {n} clips"
                 for name in ("targets", "species") if g[name].shape[0] != n]
    chunks = {g[name].chunks[0] for name in ("cls", "done", "error", "decoder")}
    if len(chunks) > 1:
        problems.append(f"{where}: cls, done, error and decoder are chunked differently ({sorted(chunks)}): shards would share chunks")
    return problems


def _nonfinite_clips(arr: zarr.Array, clips: np.ndarray, workers: int) -> np.ndarray:
    """Which of ``clips`` hold NaN, inf or never-written (NaN-filled) values, one clip at a time."""
    with ThreadPoolExecutor(workers) as pool:
        bad = list(pool.map(lambda i: not np.isfinite(arr[int(i)]).all(), clips))
    return clips[np.asarray(bad, dtype=bool)]


def _data_problems(g: zarr.Group, where: str, workers: int) -> list[str]:
    done, failed, _ = _outcomes(g)
    clip_ids = g["clip_ids"][...].tolist()
    cls, per_chunk = g["cls"], g["cls"].chunks[0]
    problems, bad_cls, failed_with_data = [], [], []
    for start in range(0, cls.shape[0], per_chunk):
        stop = min(start + per_chunk, cls.shape[0])
        if not done[start:stop].any():
            continue
        if not done[start:stop].all():
            problems.append(f"{where}: clips {start}..{stop - 1} share a chunk but only some are marked done")
        finite = np.isfinite(cls[start:stop]).reshape(stop - start, -1).all(axis=1)
        ok = done[start:stop] & ~failed[start:stop]
        bad_cls.extend(start + np.flatnonzero(ok & ~finite))
        failed_with_data.extend(start + np.flatnonzero(failed[start:stop] & finite))
    if bad_cls:
        problems.append(f"{where}: {len(bad_cls)} done clips have NaN/inf or missing cls features: "
                        f"{_clip_list(clip_ids, np.asarray(bad_cls))}")
    if failed_with_data:
        problems.append(f"{where}: {len(failed_with_data)} clips are marked failed yet hold cls features: "
                        f"{_clip_list(clip_ids, np.asarray(failed_with_data))}")
    if "patches" in g:
        bad = _nonfinite_clips(g["patches"], np.flatnonzero(done & ~failed), workers)
        if len(bad):
            problems.append(f"{where}: {len(bad)} done clips have NaN/inf or missing patches: {_clip_list(clip_ids, bad)}")
    return problems


def _manifest_problem(g: zarr.Group, attrs: dict[str, Any], where: str) -> list[str]:
    arrays = [g[name][...] for name in ("targets", "species")]
    if manifest_sha256(g["clip_ids"][...].tolist(), arrays) != attrs["manifest_sha256"]:
        return [f"{where}: clip ids or labels changed since creation (manifest sha256 differs)"]
    return []


def _verify_split(path: Path, workers: int) -> list[str]:
    where = f"split {path.name!r}"
    g = zarr.open_group(path, mode="r")
    attrs = dict(g.attrs)
    missing = [f"{where}: attribute {key!r} is missing" for key in SPLIT_KEYS if key not in attrs]
    if missing:
        return missing
    problems = _shape_problems(g, attrs, where)
    if problems:
        return problems
    return _manifest_problem(g, attrs, where) + _data_problems(g, where, workers)


def _verify_text(text: TextFeatures, attrs: dict[str, Any], where: str) -> list[str]:
    try:
        text.check()
    except CacheError as e:
        return [f"{where}: {e}"]
    problems = []
    if text.name_embeddings.shape[1:] != text.description_embeddings.shape[1:]:
        problems.append(f"{where}: name and description embeddings differ in width")
    if not (torch.isfinite(text.name_embeddings).all() and torch.isfinite(text.description_embeddings).all()):
        problems.append(f"{where}: embeddings hold NaN/inf")
    if text.attributes() != attrs:
        problems.append(f"{where}: strings or owners changed since creation (attributes differ)")
    return problems


def verify_cache(path: str | Path, workers: int = 4) -> list[str]:
    """Every problem found (empty = OK): attributes, shapes, chunk alignment, done vs data, finiteness.

    Reads every done clip's features once, a chunk at a time, so it takes about as long as one
    pass over the cache.
    """
    path = Path(path)
    try:
        attrs = read_root_attrs(path)
    except CacheError as e:
        return [str(e)]
    problems = [f"root attribute {key!r} is missing" for key in ROOT_KEYS if key not in attrs]
    cache = FeatureCache(path)
    for split in cache.splits:
        problems += _verify_split(path / split, workers)
    for kind in cache.text_kinds:
        group_attrs = dict(zarr.open_group(path / TEXT_GROUP / kind, mode="r").attrs)
        try:
            text = read_text(path, kind)
        except KeyError as e:
            problems.append(f"text {kind!r}: array {e} is missing")
            continue
        problems += _verify_text(text, group_attrs, f"text {kind!r}")
    return problems
