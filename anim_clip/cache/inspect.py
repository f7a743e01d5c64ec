"""What is in a feature cache (``cache_info``) and whether it can be trusted (``verify_cache``)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from rich.table import Table
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from anim_clip.cache.store import (
    SPECIES_PROBS,
    SPLIT_ARRAYS,
    TEXT_GROUP,
    FeatureCache,
    TextFeatures,
    check_declared_shapes,
    checksum_failures,
    class_counts,
    declared_shape_problems,
    group_names,
    open_arrays,
    manifest_sha256,
    read_array,
    read_group_attrs,
    read_root_attrs,
    read_text,
    reading,
    split_names,
)
from anim_clip.errors import CacheError, DamagedCache
from anim_clip.ui import table

ROOT_KEYS = ("schema_version", "anim_clip_version", "created", "torch_version", "open_clip_version", "zarr_version",
             "config")
SPLIT_KEYS = ("num_clips", "num_views", "view_kind", "frames", "dim", "patches", "manifest_sha256")
SHOWN_FAILURES = 10
SHOWN_CLIPS = 5
SUM_TOLERANCE = 1e-3  # species probabilities of a clip sum to 1 (float32 softmax, averaged over views)


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
        elif isinstance(c, Crc32cCodec):
            names.append("crc32c")
        else:
            names.append(type(c).__name__)
    return "+".join(names) or "none"


def _array_info(arr: zarr.Array, path: Path) -> dict[str, Any]:
    dtype = "str" if arr.dtype.kind == "T" else str(arr.dtype)
    return {"shape": list(arr.shape), "chunks": list(arr.chunks), "dtype": dtype,
            "codec": _codec(arr), "bytes": disk_bytes(path)}


def _outcomes(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``done``, ``failed`` (done with a reason) and the reasons, one entry per clip of the split ``path``."""
    done = read_array(path, "done", path.parent)
    errors = np.asarray(read_array(path, "error", path.parent).tolist(), dtype=object)
    return done, done & (errors != ""), errors


def _decoded_by(path: Path, decoded: np.ndarray) -> dict[str, int]:
    """How many of the ``decoded`` clips of the split ``path`` each video decoder decoded, most first."""
    return dict(Counter(read_array(path, "decoder", path.parent)[decoded].tolist()).most_common())


def cache_decoders(path: str | Path) -> dict[str, int]:
    """How many clips of every split of the cache at ``path`` each video decoder decoded, most first."""
    total: Counter[str] = Counter()
    for split in FeatureCache(path).splits:
        done, failed, _ = _outcomes(Path(path) / split)
        total.update(_decoded_by(Path(path) / split, done & ~failed))
    return dict(total.most_common())


MEASURED_DECODERS = {"decord", "pyav"}  # compared pixel by pixel: benchmarks/results/decoder_pixels.json


def mixed_decoders_note(decoders: dict[str, int]) -> str | None:
    """What a cache whose clips more than one decoder decoded (PyAV, where the configured decoder
    failed on a file) should say: the measured facts; None for one decoder."""
    if len(decoders) < 2:
        return None
    if set(decoders) <= MEASURED_DECODERS:
        facts = ("decord and PyAV give the same pixels, to the bit, on 8-bit video of even height, and differ on "
                 "10-bit and odd-height 4:2:0 video (benchmarks/results/decoder_pixels.json), so only such clips' "
                 "features differ from what one decoder would give")
    else:
        facts = "these decoders' pixels have not been compared (benchmarks/bench_decoder_pixels.py compares decord and PyAV)"
    return f"clips decoded by {decoders_text(decoders)} (PyAV decoded the files the configured decoder failed on): {facts}"


def cache_warnings(path: str | Path) -> list[str]:
    """What ``cache verify`` says about a sound cache without failing it: decoders mixed in it."""
    note = mixed_decoders_note(cache_decoders(path))
    return [] if note is None else [f"holds {note}"]


def decoders_text(decoders: dict[str, int]) -> str:
    """``decord 30, pyav 2``: clips per decoder, most first."""
    return ", ".join(f"{name} {n}" for name, n in Counter(decoders).most_common()) or "-"


def _split_info(path: Path) -> dict[str, Any]:
    attrs = read_group_attrs(path, path.parent)
    check_declared_shapes(path, attrs, path.parent)
    done, failed, errors = _outcomes(path)
    clip_ids = read_array(path, "clip_ids", path.parent).tolist()
    with reading(path, path.parent):
        g = zarr.open_group(path, mode="r")
        arrays = {name: _array_info(g[name], path / name) for name in sorted(g.array_keys())}
    return {
        **attrs,
        "clips_per_chunk": arrays["done"]["chunks"][0],
        "done": int(done.sum()),
        "failed": int(failed.sum()),
        "pending": int((~done).sum()),
        "decoders": _decoded_by(path, done & ~failed),
        "failures": [[clip_ids[i], errors[i]] for i in np.flatnonzero(failed)],
        "arrays": arrays,
    }


def cache_info(path: str | Path) -> dict[str, Any]:
    """A JSON-able summary: versions, config, per split counts and failures, per array size and codec."""
    path = Path(path)
    cache = FeatureCache(path)
    text = {}
    for kind in cache.text_kinds:
        attrs = read_group_attrs(path / TEXT_GROUP / kind, path)
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
        *([("species predictor", f"{p['model']} ({p['template']!r}): {SPECIES_PROBS} per clip")]
          if (p := info["config"].get("species")) else []),
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


WHOLE_ARRAYS = ("done", "error", "decoder", "clip_ids", "frame_indices", "targets", "species")  # cls: a chunk at a time


def _open_arrays(path: Path, names: list[str], where: str) -> tuple[dict[str, zarr.Array], list[str]]:
    """The split's arrays by name, and a problem for each that is missing or has invalid metadata."""
    arrays, problems = {}, []
    for name in names:
        try:
            with reading(path / name, path.parent):
                arrays[name] = zarr.open_array(path / name, mode="r")
        except DamagedCache as e:
            problems.append(f"{where}: {e.problem}")
    return arrays, problems


def _classes(cache: Path) -> dict[str, int]:
    """``class_counts``, or none known when a text group is damaged (its own check reports it)."""
    try:
        return class_counts(cache)
    except DamagedCache:
        return {}


def _shape_problems(path: Path, arrays: dict[str, zarr.Array], attrs: dict[str, Any], config: dict[str, Any] | None,
                    where: str) -> list[str]:
    """The split's declared shapes against the signature, its attributes, the clip list and the text
    groups, and the per-clip arrays' chunking: all from metadata, before any data is read."""
    shapes = {name: tuple(array.shape) for name, array in arrays.items()}
    problems = [f"{where}: {p}" for p in declared_shape_problems(shapes, attrs, config, _classes(path.parent))]
    chunked = [name for name in ("cls", "done", "error", "decoder", "frame_indices", SPECIES_PROBS) if name in arrays]
    chunks = {arrays[name].chunks[0] for name in chunked}
    if len(chunks) > 1:
        problems.append(f"{where}: {', '.join(chunked)} are chunked differently ({sorted(chunks)}): "
                        "shards would share chunks")
    return problems


def _read_whole(path: Path, where: str) -> tuple[dict[str, np.ndarray], list[str]]:
    values, problems = {}, []
    for name in WHOLE_ARRAYS:
        try:
            values[name] = read_array(path, name, path.parent)
        except DamagedCache as e:
            problems.append(f"{where}: {e.problem}")
    return values, problems


def _chunk_file(array: Path, chunk: int, ndim: int) -> Path:
    """The file of chunk ``chunk`` along the first axis (zarr v3's default chunk key encoding)."""
    return array.joinpath("c", str(chunk), *["0"] * (ndim - 1))


def _cls_problems(path: Path, arr: zarr.Array, done: np.ndarray, failed: np.ndarray,
                  clip_ids: list[str], where: str) -> list[str]:
    """Each cls chunk holding done clips, read once: unreadable chunks, flags and data that disagree."""
    per_chunk = arr.chunks[0]
    problems, bad_cls, failed_with_data = [], [], []
    for start in range(0, arr.shape[0], per_chunk):
        stop = min(start + per_chunk, arr.shape[0])
        if not done[start:stop].any():
            continue
        try:
            with reading(_chunk_file(path / "cls", start // per_chunk, arr.ndim), path.parent):
                values = arr[start:stop]
        except DamagedCache as e:
            problems.append(f"{where}: {e.problem} (clips {start}..{stop - 1})")
            continue
        finite = np.isfinite(values).reshape(stop - start, -1).all(axis=1)
        ok = done[start:stop] & ~failed[start:stop]
        bad_cls.extend(start + np.flatnonzero(ok & ~finite))
        failed_with_data.extend(start + np.flatnonzero(failed[start:stop] & finite))
    if bad_cls:
        problems.append(f"{where}: {len(bad_cls)} done clips have NaN/inf or missing cls features: "
                        f"{_clip_list(clip_ids, np.asarray(bad_cls))}")
    if failed_with_data:
        problems.append(f"{where}: {len(failed_with_data)} clips are marked failed yet hold cls features: "
                        f"{_clip_list(clip_ids, np.asarray(failed_with_data))}")
    return problems


NONFINITE = "NaN/inf or missing values"


def _patch_problems(path: Path, arr: zarr.Array, clips: np.ndarray, clip_ids: list[str], where: str,
                    workers: int) -> list[str]:
    """The clips of ``clips`` whose patches hold NaN, inf or never-written (NaN-filled) values, or
    cannot be read; one clip at a time."""
    def check(i: int) -> str | None:
        try:
            with reading(path / "patches", path.parent, [int(i)]):
                return None if np.isfinite(arr[int(i)]).all() else NONFINITE
        except DamagedCache as e:
            return e.problem

    with ThreadPoolExecutor(workers) as pool:
        found = list(pool.map(check, clips))
    problems = []
    nonfinite = np.asarray([i for i, f in zip(clips, found) if f == NONFINITE], dtype=np.int64)
    if len(nonfinite):
        problems.append(f"{where}: {len(nonfinite)} done clips have NaN/inf or missing patches: "
                        f"{_clip_list(clip_ids, nonfinite)}")
    unreadable = [(i, f) for i, f in zip(clips, found) if f not in (None, NONFINITE)]
    if unreadable:
        problems.append(f"{where}: the patches of {len(unreadable)} done clips cannot be read: "
                        f"{_clip_list(clip_ids, np.asarray([i for i, _ in unreadable]))} ({unreadable[0][1]})")
    return problems


def _species_problems(path: Path, usable: np.ndarray, clip_ids: list[str], where: str) -> list[str]:
    """Done clips whose species probabilities are not finite or do not sum to 1."""
    try:
        probabilities = read_array(path, SPECIES_PROBS, path.parent)
    except DamagedCache as e:
        return [f"{where}: {e.problem}"]
    sums = probabilities.astype(np.float64).sum(1)
    bad = np.flatnonzero(usable & ~(np.isfinite(sums) & (np.abs(sums - 1) <= SUM_TOLERANCE)))
    if not len(bad):
        return []
    return [f"{where}: {len(bad)} done clips have species probabilities that are NaN/inf, missing or do not sum "
            f"to 1: {_clip_list(clip_ids, bad)}"]


def _data_problems(path: Path, arrays: dict[str, zarr.Array], values: dict[str, np.ndarray], where: str,
                   workers: int) -> list[str]:
    done = values["done"]
    errors = np.asarray(values["error"].tolist(), dtype=object)
    failed = done & (errors != "")
    clip_ids = values["clip_ids"].tolist()
    problems = []
    if len(done) and failed.all():
        problems.append(f"{where}: all {len(done)} clips failed (e.g. {clip_ids[0]}: {errors[0]}): nothing to train "
                        "or evaluate on")
    problems += _cls_problems(path, arrays["cls"], done, failed, clip_ids, where)
    if SPECIES_PROBS in arrays:
        problems += _species_problems(path, done & ~failed, clip_ids, where)
    if "patches" in arrays:
        problems += _patch_problems(path, arrays["patches"], np.flatnonzero(done & ~failed), clip_ids, where, workers)
    return problems


def _manifest_problem(values: dict[str, np.ndarray], attrs: dict[str, Any], where: str) -> list[str]:
    if manifest_sha256(values["clip_ids"].tolist(), [values["targets"], values["species"]]) != attrs["manifest_sha256"]:
        return [f"{where}: clip ids or labels changed since creation (manifest sha256 differs)"]
    return []


def _checksum_problems(path: Path, names: Iterable[str], where: str, workers: int) -> list[str]:
    """Every chunk of the arrays ``names`` of the group ``path`` whose bytes fail their checksum."""
    return [f"{where}: {failure}" for name in names for failure in checksum_failures(path / name, workers=workers)]


def _verify_split(path: Path, workers: int, config: dict[str, Any] | None) -> list[str]:
    """The split's problems; ``config``: the cache's signature (None: the root cannot be read)."""
    where = f"split {path.name!r}"
    try:
        attrs = read_group_attrs(path, path.parent)
    except DamagedCache as e:
        return [f"{where}: {e.problem}"]
    missing = [f"{where}: attribute {key!r} is missing" for key in SPLIT_KEYS if key not in attrs]
    if missing:
        return missing
    optional = [name for name, kept in (("patches", attrs["patches"]), (SPECIES_PROBS, attrs.get(SPECIES_PROBS)))
                if kept]
    arrays, problems = _open_arrays(path, [*SPLIT_ARRAYS, *optional], where)
    if (path / "patches").is_dir() and not attrs["patches"]:
        problems.append(f"{where}: holds patches although its attributes say it has none")
    predictor = None if config is None else "species" in config
    if predictor is not None and predictor != bool(attrs.get(SPECIES_PROBS)):
        problems.append(f"{where}: {'holds no' if predictor else 'holds'} {SPECIES_PROBS} although the cache was "
                        f"extracted {'with' if predictor else 'without'} a species predictor")
    if problems:
        return problems
    problems = _shape_problems(path, arrays, attrs, config, where) or _checksum_problems(path, arrays, where, workers)
    if problems:
        return problems
    values, problems = _read_whole(path, where)
    if problems:
        return problems
    return _manifest_problem(values, attrs, where) + _data_problems(path, arrays, values, where, workers)


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


def _text_problems(path: Path, kind: str, workers: int) -> list[str]:
    where = f"text {kind!r}"
    dest = path / TEXT_GROUP / kind
    try:
        names = [a.name for a in dest.iterdir() if (a / "zarr.json").is_file()]
        problems = _checksum_problems(dest, open_arrays(dest, names, path), where, workers)
        return problems or _verify_text(read_text(path, kind), read_group_attrs(path / TEXT_GROUP / kind, path), where)
    except DamagedCache as e:
        return [f"{where}: {e.problem}"]


def verify_cache(path: str | Path, workers: int = 4) -> list[str]:
    """Every problem found (empty = OK): attributes, declared shapes, chunk alignment, every chunk
    whose bytes fail their checksum, done vs data, finiteness, species probabilities (finite, summing
    to 1), and every part that cannot be read.

    Reads every chunk file once for its checksum, then every done clip's features a chunk at a time,
    so it takes about as long as two passes over the cache.
    """
    path = Path(path)
    config = None
    try:
        attrs = read_root_attrs(path)
        problems = [f"root attribute {key!r} is missing" for key in ROOT_KEYS if key not in attrs]
        config = attrs.get("config", {})
    except DamagedCache as e:  # the splits may still be sound: check them too
        problems = [e.problem]
    except CacheError as e:
        return [str(e)]
    for split in split_names(path):
        problems += _verify_split(path / split, workers, config)
    for kind in group_names(path / TEXT_GROUP):
        problems += _text_problems(path, kind, workers)
    return problems
