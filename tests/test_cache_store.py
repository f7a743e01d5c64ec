"""The zarr feature store: round trips, sharding, crash safety with real processes, reader, verify."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from anim_clip.cache import store
from anim_clip.cache.inspect import cache_info, cache_info_tables, verify_cache
from anim_clip.cache.store import (
    FeatureCache,
    SplitSpec,
    SplitWriter,
    TextFeatures,
    check_compatible,
    create_split,
    create_store,
    shard_range,
    write_text,
)
from anim_clip.errors import AnimClipError, CacheError, DamagedCache
from anim_clip.models.features import FrameFeatures
from anim_clip.ui import console

N, V, T, D, P, W, C, A = 10, 2, 3, 8, 4, 5, 3, 3  # C, A: text_features' names
CLIPS_PER_CHUNK = 3  # chunks [0,3) [3,6) [6,9) [9,10): the last one partial
CHUNK_BYTES = CLIPS_PER_CHUNK * V * T * D * 2
CONFIG = {"backbone": {"model": "ViT-B-16", "pretrained": "openai", "sha256": None, "patches": "fp16",
                       "embed_dim": D, "patch_shape": [P, W]},
          "sampling": {"num_frames": T, "image_size": 224, "train_views": V, "test_clips": 1, "test_crops": V},
          "dataset": "demo"}
FAILING = {4: "cannot decode video:\n  moov atom   not found"}
FELL_BACK = 7  # the clip the configured decoder failed on and PyAV decoded


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "CHUNK_BYTES", CHUNK_BYTES)


def spec(first_clip: int = 0) -> SplitSpec:
    rng = np.random.default_rng(1)
    return SplitSpec(
        clip_ids=[f"video_{i + first_clip:02d}.mp4" for i in range(N)],
        targets=rng.integers(0, 2, (N, C)),
        species=rng.integers(0, 2, (N, A)),
        views=V,
        frames=T,
        dim=D,
        view_kind="augmented",
        patch_shape=(P, W),
    )


def clip_cls(i: int) -> np.ndarray:
    return (np.arange(V * T * D).reshape(V, T, D) / 16 - i).astype(np.float16)


def clip_frames(i: int) -> np.ndarray:
    return np.arange(V * T).reshape(V, T) + 100 * i


def clip_patches(i: int) -> np.ndarray:
    return (np.arange(V * T * P * W).reshape(V, T, P, W) / 32 + i).astype(np.float16)


def give(writer: SplitWriter, i: int) -> None:
    if i in FAILING:
        writer.fail(i, FAILING[i])
    else:
        writer.write(i, FrameFeatures(torch.from_numpy(clip_cls(i)).float(), torch.from_numpy(clip_patches(i))),
                     clip_frames(i), "pyav" if i == FELL_BACK else "decord")


def extract(path: str, shard: int = 0, num_shards: int = 1, kill_after_clip: int | None = None,
            kill_at_done_call: int | None = None, flush_seconds: float = store.FLUSH_SECONDS) -> None:
    """What an extraction process does; optionally SIGKILLs itself at a chosen moment."""
    store.CHUNK_BYTES = CHUNK_BYTES  # spawned children do not inherit the fixture
    store.FLUSH_SECONDS = flush_seconds
    create_store(path, CONFIG)
    create_split(path, "train", spec())
    with SplitWriter(path, "train", shard, num_shards) as writer:
        if kill_at_done_call is not None:
            mark_done, calls = writer._mark_done, []

            def dying_mark_done(start: int, flags: np.ndarray) -> None:
                calls.append(start)
                if len(calls) == kill_at_done_call:  # the cls chunk is on disk, its done flags are not
                    os.kill(os.getpid(), signal.SIGKILL)
                mark_done(start, flags)

            writer._mark_done = dying_mark_done
        for i in writer.pending:
            give(writer, i)
            if i == kill_after_clip:  # patches of this clip written, its cls chunk incomplete
                os.kill(os.getpid(), signal.SIGKILL)


def extract_or_refusal(results: multiprocessing.Queue, **job) -> None:
    """``extract(**job)``, putting "done" or the message of the CacheError that refused it on ``results``."""
    try:
        extract(**job)
        results.put("done")
    except CacheError as e:
        results.put(str(e))


def run_processes(*jobs: dict) -> list[int]:
    """Run ``extract(**job)`` for every job in its own spawned process, all at once."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=extract, kwargs=job) for job in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


def snapshot(path: Path) -> dict[str, object]:
    """Every array of the train split as numpy (strings as lists), plus the split attributes."""
    g = zarr.open_group(path / "train", mode="r")
    out: dict[str, object] = {"attrs": dict(g.attrs)}
    for name in g.array_keys():
        a = g[name][...]
        out[name] = a.tolist() if a.dtype.kind == "T" else a
    return out


def assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert np.array_equal(a[key], b[key], equal_nan=True), key
        else:
            assert a[key] == b[key], key


def chunk_stats(path: Path, done_chunks: list[int], done_clips: list[int]) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file holding data of the given chunks and clips."""
    files = [path / "train" / name / "c" / str(c) for name in ("done", "error") for c in done_chunks]
    files += [path / "train" / "cls" / "c" / str(c) / "0" / "0" / "0" for c in done_chunks]
    files += [path / "train" / "patches" / "c" / str(i) / str(v) / "0" / "0" / "0" for i in done_clips for v in range(V)]
    return {str(f): (f.stat().st_ino, f.stat().st_mtime_ns) for f in files if f.exists()}


@pytest.fixture
def full(tmp_path: Path) -> Path:
    path = tmp_path / "cache.zarr"
    extract(str(path))
    return path


# ----------------------------------------------------------------------------------------------


def test_round_trip_exact_in_fp16(full: Path) -> None:
    split = FeatureCache(full).split("train")
    ok = [i for i in range(N) if i not in FAILING]
    assert torch.equal(split.cls[ok], torch.from_numpy(np.stack([clip_cls(i) for i in ok])))
    assert split.cls[4].isnan().all()
    assert split.cls.dtype == torch.float16 and split.cls.shape == (N, V, T, D)
    s = spec()
    assert split.clip_ids == list(s.clip_ids)
    assert torch.equal(split.targets, torch.from_numpy(s.targets.astype(np.uint8)))
    assert torch.equal(split.species, torch.from_numpy(s.species.astype(np.uint8)))
    assert torch.equal(split.frame_indices[ok], torch.from_numpy(np.stack([clip_frames(i) for i in ok]).astype(np.int32)))
    assert (split.frame_indices[4] == -1).all()
    assert split.done.all()
    assert split.valid.tolist() == [i not in FAILING for i in range(N)]
    patches = zarr.open_array(full / "train" / "patches", mode="r")
    assert np.array_equal(patches[7], clip_patches(7))


def test_error_strings_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    create_store(path, CONFIG)
    create_split(path, "train", spec())
    writer = SplitWriter(path, "train")
    reasons = {0: "vidéo illisible: ünïcode ✓", 1: "x" * 500, 2: "  "}
    for i in writer.pending:
        writer.fail(i, reasons.get(i, f"reason {i}"))
    errors = FeatureCache(path).split("train").errors
    assert errors[0] == reasons[0]
    assert errors[1] == "x" * store.MAX_ERROR_CHARS
    assert errors[2] == "failed"
    assert errors[9] == "reason 9"
    assert cache_info(path)["splits"]["train"]["failed"] == N
    assert verify_cache(path) == [f"split 'train': all {N} clips failed (e.g. video_00.mp4: {reasons[0]}): nothing to "
                                  "train or evaluate on"]


@pytest.mark.parametrize("num_clips,per_chunk", [(10, 3), (64, 8), (5, 7), (100, 1)])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_shard_ranges_cover_clips_on_chunk_boundaries(num_clips: int, per_chunk: int, num_shards: int) -> None:
    ranges = [shard_range(num_clips, s, num_shards, per_chunk) for s in range(num_shards)]
    assert [i for r in ranges for i in r] == list(range(num_clips))
    chunks = [{i // per_chunk for i in r} for r in ranges]
    assert sum(len(c) for c in chunks) == len(set().union(*chunks))
    assert all(r.start % per_chunk == 0 for r in ranges if r)


def test_shard_out_of_range_refused() -> None:
    with pytest.raises(CacheError, match="shard 2/2"):
        shard_range(10, 2, 2, 3)


def test_two_processes_equal_one(tmp_path: Path, full: Path) -> None:
    path = tmp_path / "sharded.zarr"
    assert run_processes({"path": str(path), "shard": 0, "num_shards": 2},
                         {"path": str(path), "shard": 1, "num_shards": 2}) == [0, 0]
    assert_same(snapshot(path), snapshot(full))
    assert verify_cache(path) == []
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]  # the losing creator cleaned up


def test_a_second_writer_of_the_same_chunks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    create_store(path, CONFIG)
    create_split(path, "train", spec())
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()

    def run(**job) -> str:
        proc = ctx.Process(target=extract_or_refusal, args=(results,), kwargs={"path": str(path), **job})
        proc.start()
        proc.join(120)
        assert proc.exitcode == 0
        return results.get(timeout=10)

    with SplitWriter(path, "train", 0, 2) as held:  # this process holds the first half's chunks
        assert run(shard=1, num_shards=2) == "done"  # the other half: another shard, no conflict
        refused = run()
        assert refused == (f"{path}: clips 0..9 of split 'train' are being extracted by another process; wait for it "
                           "to finish (processes share a store only as shards: --shard i/n or torchrun)")
        assert run(shard=0, num_shards=3).startswith(f"{path}: clips 0..2 of split 'train' are being extracted")
        assert FeatureCache(path).split("train").done.tolist() == [False] * 6 + [True] * 4
        assert held.pending == list(range(6))
    assert run() == "done"  # released: the first half is extracted now
    assert verify_cache(path) == []


def test_resume_after_sigkill_equals_uninterrupted(tmp_path: Path, full: Path) -> None:
    # (kill, clips done when killed): the clips of an incomplete chunk are saved every FLUSH_SECONDS
    kills = {"mid-chunk": ({"kill_after_clip": 4}, CLIPS_PER_CHUNK),
             "before-done": ({"kill_at_done_call": 2}, CLIPS_PER_CHUNK),
             "mid-chunk, flushed": ({"kill_after_clip": 4, "flush_seconds": 0}, 5)}
    paths = {name: tmp_path / f"{name}.zarr" for name in kills}
    assert run_processes(*({"path": str(paths[n]), **k} for n, (k, _) in kills.items())) == [-signal.SIGKILL] * 3
    before, saved = {}, {}
    for name, path in paths.items():
        done_when_killed = kills[name][1]
        split = FeatureCache(path).split("train")
        assert split.done.tolist() == [True] * done_when_killed + [False] * (N - done_when_killed), name
        with SplitWriter(path, "train") as writer:
            assert writer.pending == list(range(done_when_killed, N))
        saved[name] = (split.cls[:done_when_killed].clone(), split.errors[:done_when_killed])
        before[name] = chunk_stats(path, [0], list(range(CLIPS_PER_CHUNK)))
        assert len(before[name]) == 1 + 1 + CLIPS_PER_CHUNK * V  # done, cls, every patch chunk; no error chunk

    assert run_processes(*({"path": str(path)} for path in paths.values())) == [0, 0, 0]
    for name, path in paths.items():
        assert chunk_stats(path, [0], list(range(CLIPS_PER_CHUNK))) == before[name]  # complete chunks never rewritten
        split = FeatureCache(path).split("train")
        cls, errors = saved[name]
        assert torch.equal(split.cls[:len(errors)].isnan(), cls.isnan()), name  # done clips keep their values
        assert torch.equal(split.cls[:len(errors)].nan_to_num(), cls.nan_to_num()) and split.errors[:len(errors)] == errors
        assert_same(snapshot(path), snapshot(full))
        assert verify_cache(path) == []


def test_rerun_clears_reasons_left_by_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.zarr"
    create_store(path, CONFIG)
    create_split(path, "train", spec())
    writer = SplitWriter(path, "train")

    def crash(start: int, flags: np.ndarray) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_mark_done", crash)
    writer.fail(0, "transient: file busy")
    give(writer, 1)
    with pytest.raises(KeyboardInterrupt):  # cls and error chunk written, done flags not
        give(writer, 2)
    assert FeatureCache(path).split("train").errors[0] == "transient: file busy"
    writer = SplitWriter(path, "train")
    assert writer.pending == list(range(N))
    for i in range(3):
        give(writer, i)
    split = FeatureCache(path).split("train")
    assert split.errors[:3] == ["", "", ""] and split.valid[:3].all()


def test_writer_refuses_done_and_repeated_clips(tmp_path: Path, full: Path) -> None:
    writer = SplitWriter(full, "train")
    assert writer.pending == []
    with pytest.raises(CacheError, match="clip 0"):
        give(writer, 0)
    path = tmp_path / "fresh.zarr"
    create_store(path, CONFIG)
    create_split(path, "train", spec())
    writer = SplitWriter(path, "train", shard=1, num_shards=2)
    give(writer, writer.pending[0])
    with pytest.raises(CacheError, match="already given"):
        give(writer, writer.pending[0])
    with pytest.raises(CacheError, match="outside this shard"):
        give(writer, 0)


def test_writer_checks_shapes(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    create_store(path, CONFIG)
    create_split(path, "train", spec())
    writer = SplitWriter(path, "train")
    with pytest.raises(CacheError, match=r"expects \(2, 3, 8\)"):
        writer.write(0, FrameFeatures(torch.zeros(V, T, D + 1), torch.zeros(V, T, P, W)), clip_frames(0), "decord")
    with pytest.raises(CacheError, match="without them"):
        writer.write(0, FrameFeatures(torch.zeros(V, T, D)), clip_frames(0), "decord")
    assert writer.pending == list(range(N))  # a refused clip can still be given


def test_mismatched_config_refused_naming_the_field(full: Path) -> None:
    other = {**CONFIG, "backbone": {**CONFIG["backbone"], "model": "anim-clip-tiny"}}
    with pytest.raises(AnimClipError) as e:
        create_store(full, other)
    assert str(e.value).startswith(f"cache {full} was built with backbone.model='ViT-B-16', this run uses "
                                   "'anim-clip-tiny' (field backbone.model)")
    # a field the cache's version did not record yet: no config can match, so a new cache is the fix
    with pytest.raises(CacheError, match=r"begun by an earlier anim-clip, which did not record sampling\.crop "
                                         r"\(this run: 3, field sampling\.crop\); extract into a new cache path"):
        check_compatible(CONFIG, {**CONFIG, "sampling": {**CONFIG["sampling"], "crop": 3}}, full)
    check_compatible(CONFIG, {"dataset": "demo", "sampling": dict(reversed(CONFIG["sampling"].items())),
                              "backbone": dict(CONFIG["backbone"])}, full)  # key order does not matter


def test_mismatched_split_refused(full: Path) -> None:
    with pytest.raises(CacheError, match="field manifest_sha256"):
        create_split(full, "train", spec(first_clip=1))
    create_split(full, "train", spec())  # the same split again is fine


def test_not_a_cache_refused(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(CacheError, match="not part of an anim-clip cache"):
        create_store(tmp_path / "notes", CONFIG)
    with pytest.raises(CacheError, match="no feature cache"):
        FeatureCache(tmp_path / "missing")


def test_features_gather_equals_numpy_indexing(full: Path) -> None:
    split = FeatureCache(full).split("train", device="cpu")
    cls = zarr.open_array(full / "train" / "cls", mode="r")[...]
    rng = np.random.default_rng(0)
    indices, views = rng.integers(0, N, 16), rng.integers(0, V, 16)
    out = split.features(torch.from_numpy(indices), torch.from_numpy(views))
    assert out.patches is None
    assert np.array_equal(out.cls.numpy(), cls[indices, views], equal_nan=True)


def test_patch_loader_keeps_batch_order(full: Path) -> None:
    split = FeatureCache(full).split("train")
    rng = np.random.default_rng(0)
    ok = np.array([i for i in range(N) if i not in FAILING])
    batches = [(torch.from_numpy(rng.choice(ok, 5)), torch.from_numpy(rng.integers(0, V, 5))) for _ in range(7)]
    got = list(split.patch_loader(batches, workers=3, prefetch=2))
    assert len(got) == len(batches)
    for (indices, views), features in zip(batches, got):
        expected = np.stack([clip_patches(int(i))[int(v)] for i, v in zip(indices, views)])
        assert np.array_equal(features.patches.numpy(), expected)
        assert torch.equal(features.cls, split.cls[indices, views])
    first = next(iter(split.patch_loader(batches, workers=2, prefetch=1)))  # abandoned early: no hang
    assert first.patches.shape == (5, T, P, W)


def test_verify_detects_nan_and_done_without_data(full: Path) -> None:
    assert verify_cache(full) == []
    cls = zarr.open_array(full / "train" / "cls", mode="r+")
    row = cls[7].copy()
    row[1, 2, 3] = np.nan
    cls[7] = row
    patches = zarr.open_array(full / "train" / "patches", mode="r+")
    bad = patches[2, 1].copy()
    bad[0, 0, 0] = np.inf
    patches[2, 1] = bad
    problems = verify_cache(full)
    assert any("cls" in p and "video_07.mp4" in p for p in problems), problems
    assert any("patches" in p and "video_02.mp4" in p for p in problems), problems


def test_verify_detects_done_flag_without_data(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    create_store(path, CONFIG)
    create_split(path, "train", spec())
    zarr.open_array(path / "train" / "done", mode="r+")[0:3] = True
    zarr.open_array(path / "train" / "done", mode="r+")[6] = True
    problems = verify_cache(path)
    assert any("missing cls" in p and "video_00.mp4" in p for p in problems), problems
    assert any("missing patches" in p for p in problems), problems


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# damage -> (what verify says, the part a reader names)
DAMAGES = {
    "truncated cls chunk": (lambda p: truncate(p / "train/cls/c/1/0/0/0"),
                            "split 'train': {p}/train/cls/c/1/0/0/0: checksum mismatch, its bytes changed after they "
                            "were written (clips 3..5: video_03.mp4, video_04.mp4, video_05.mp4)",
                            "{p}/train/cls/c/1/0/0/0: checksum mismatch, its bytes changed after they were written "
                            "(clips 3..5: video_03.mp4, video_04.mp4, video_05.mp4)"),
    "truncated done chunk": (lambda p: truncate(p / "train/done/c/0"),
                             "split 'train': {p}/train/done/c/0: checksum mismatch",
                             "{p}/train/done/c/0: checksum mismatch"),
    "invalid split zarr.json": (lambda p: (p / "train/zarr.json").write_text("{not json"),
                                "split 'train': {p}/train/zarr.json cannot be read (JSONDecodeError: Expecting property "
                                "name enclosed in double quotes: line 1 column 2 (char 1))", "{p}/train/zarr.json cannot"),
    "invalid array zarr.json": (lambda p: (p / "train/error/zarr.json").write_text("[]"),
                                "split 'train': {p}/train/error cannot be read (", "{p}/train/error cannot be read ("),
    "missing array": (lambda p: shutil.rmtree(p / "train/clip_ids"), "split 'train': {p}/train/clip_ids is missing",
                      "{p}/train/clip_ids is missing"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_store_is_listed_by_verify_and_refused_in_one_line(full: Path, damage: str) -> None:
    make, listed, named = DAMAGES[damage]
    make(full)
    problems = verify_cache(full)
    assert len(problems) == 1 and problems[0].startswith(listed.format(p=full)), problems
    readers = [lambda: FeatureCache(full).split("train")]
    if "cls" not in damage:  # info reads no features
        readers.append(lambda: cache_info(full))
    for read in readers:
        with pytest.raises(DamagedCache) as refused:
            read()
        assert str(refused.value).startswith(named.format(p=full))
        assert str(refused.value).endswith(f": the cache is damaged; run `anim-clip cache verify {full}`")
        assert "\n" not in str(refused.value)


def test_damaged_patches_are_refused_as_they_are_read(full: Path) -> None:
    patches = zarr.open_array(full / "train" / "patches", mode="r+")
    bad = patches[2, 1].copy()
    bad[0, 0, 0] = np.nan
    patches[2, 1] = bad
    truncate(full / "train/patches/c/7/0/0/0/0")
    split = FeatureCache(full).split("train")
    for clip, view, problem in ((2, 1, f"{full}/train/patches: clip 'video_02.mp4' holds NaN/inf patch tokens"),
                                (7, 0, f"{full}/train/patches/c/7/0/0/0/0: checksum mismatch, its bytes changed "
                                       "after they were written (clips 7..7: video_07.mp4)")):
        with pytest.raises(DamagedCache) as refused:
            list(split.patch_loader([(torch.tensor([0, clip]), torch.tensor([0, view]))]))
        assert str(refused.value).startswith(problem)
        assert str(refused.value).endswith(f": the cache is damaged; run `anim-clip cache verify {full}`")
    assert verify_cache(full) == [f"split 'train': {full}/train/patches/c/7/0/0/0/0: checksum mismatch, its bytes "
                                  "changed after they were written (clips 7..7: video_07.mp4)"]


def test_verify_goes_on_past_an_invalid_root(full: Path) -> None:
    (full / "zarr.json").write_text("")
    truncate(full / "train/cls/c/0/0/0/0")
    problems = verify_cache(full)
    assert problems[0].startswith(f"{full}/zarr.json cannot be read (JSONDecodeError")
    assert problems[1].startswith(f"split 'train': {full}/train/cls/c/0/0/0/0: checksum mismatch") and len(problems) == 2
    with pytest.raises(DamagedCache, match=r"zarr\.json cannot be read .*: the cache is damaged; run `anim-clip cache verify"):
        FeatureCache(full)


def test_verify_reports_unknown_schema(full: Path) -> None:
    group = zarr.open_group(full, mode="r+")
    group.attrs["schema_version"] = 99
    assert "schema version 99" in verify_cache(full)[0]


def text_features(descriptions: list[str]) -> TextFeatures:
    gen = torch.Generator().manual_seed(0)
    return TextFeatures(names=["eating", "running", "flying"], name_embeddings=torch.randn(3, D, generator=gen),
                        descriptions=descriptions, description_embeddings=torch.randn(len(descriptions), D, generator=gen),
                        owner=torch.arange(len(descriptions)) % 3)


def test_text_round_trip(full: Path) -> None:
    actions = text_features(["an animal eats", "an animal runs", "a bird flies", "chewing food"])
    species = text_features([])
    write_text(full, "actions", actions)
    write_text(full, "species", species)
    write_text(full, "actions", actions)  # a second run with the same strings is fine
    cache = FeatureCache(full)
    assert cache.text_kinds == ["actions", "species"]
    back = cache.text("actions")
    assert back.names == actions.names and back.descriptions == actions.descriptions
    assert torch.equal(back.name_embeddings, actions.name_embeddings)
    assert torch.equal(back.description_embeddings, actions.description_embeddings)
    assert back.owner.dtype == torch.int64 and torch.equal(back.owner, actions.owner)
    assert cache.text("species").description_embeddings.shape == (0, D)
    with pytest.raises(CacheError, match="field strings_sha256"):
        write_text(full, "actions", text_features(["an animal eats", "x", "y", "z"]))
    assert verify_cache(full) == []


def test_cache_info_summarises(full: Path) -> None:
    info = cache_info(full)
    train = info["splits"]["train"]
    assert (train["num_clips"], train["done"], train["failed"], train["pending"]) == (N, N, 1, 0)
    assert train["failures"] == [["video_04.mp4", "cannot decode video: moov atom not found"]]
    assert train["arrays"]["cls"]["chunks"] == [CLIPS_PER_CHUNK, V, T, D]
    assert {name: a["codec"] for name, a in train["arrays"].items()} == {  # every chunk carries its checksum
        name: "crc32c" if name in ("cls", "patches") else "zstd(3)+crc32c" for name in train["arrays"]}
    assert train["arrays"]["patches"]["bytes"] >= (N - 1) * V * T * P * W * 2 / 2
    assert info["config"] == CONFIG and info["schema_version"] == store.SCHEMA_VERSION
    assert train["decoders"] == info["decoders"] == {"decord": N - 2, "pyav": 1}  # failed clips have none
    assert zarr.open_array(full / "train" / "decoder", mode="r")[FELL_BACK] == "pyav"
    with console.capture() as captured:
        for t in cache_info_tables(info):
            console.print(t)
    assert "moov atom" in captured.get()
    assert "MIXED DECODERS" in captured.get() and "decord 8, pyav 1" in " ".join(captured.get().split())


# ----------------------------------------------------------------------------------------------
# integrity: checksums on every chunk, declared shapes checked before any read

ROW_BYTES = V * T * D * 2  # one clip's cls rows in a chunk file (no codec: raw float16, then 4 checksum bytes)
DAMAGED = "the cache is damaged; run `anim-clip cache verify {p}`"


def refusal(read, full: Path) -> str:
    """The one line ``read()`` is refused with, checked to be a damaged-cache error naming verify."""
    with pytest.raises(DamagedCache) as refused:
        read()
    message = str(refused.value)
    assert message.endswith(": " + DAMAGED.format(p=full)) and "\n" not in message
    return message


def test_two_clips_swapped_inside_a_cls_chunk_are_refused_naming_the_chunk(full: Path) -> None:
    file = full / "train/cls/c/0/0/0/0"
    data = bytearray(file.read_bytes())
    first, second = data[:ROW_BYTES], data[ROW_BYTES:2 * ROW_BYTES]
    assert first != second and len(data) == CLIPS_PER_CHUNK * ROW_BYTES + 4
    data[:ROW_BYTES], data[ROW_BYTES:2 * ROW_BYTES] = second, first  # well-formed, finite, wrong features
    file.write_bytes(bytes(data))
    bad = (f"{file}: checksum mismatch, its bytes changed after they were written "
           "(clips 0..2: video_00.mp4, video_01.mp4, video_02.mp4)")
    assert refusal(lambda: FeatureCache(full).split("train"), full) == f"{bad}: {DAMAGED.format(p=full)}"
    assert verify_cache(full) == [f"split 'train': {bad}"]


def flip_bit(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(bytes([data[0] ^ 1]) + data[1:])


def test_verify_lists_every_bad_chunk_and_a_writer_refuses_to_build_on_one(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    create_store(path, CONFIG)
    create_split(path, "train", spec())
    with SplitWriter(path, "train") as writer:
        for i in (0, 1, 3, 4, 5):  # chunk 0 is left incomplete, chunk 1 complete
            give(writer, i)
        writer.flush()
    flip_bit(path / "train/cls/c/0/0/0/0")
    with SplitWriter(path, "train") as writer:  # resuming chunk 0 reads back its done clips' rows
        assert refusal(lambda: give(writer, 2), path).startswith(
            f"{path}/train/cls/c/0/0/0/0: checksum mismatch, its bytes changed after they were written (clips 0..2: ")
    flip_bit(path / "train/done/c/1")
    flip_bit(path / "train/clip_ids/c/0")
    (path / "train/cls/c/1/0/0/0.1f2e.partial").write_bytes(b"a writer killed mid-write")  # not a chunk
    problems = verify_cache(path)
    assert [p.split(": checksum mismatch")[0] for p in problems] == [
        f"split 'train': {path}/train/{name}" for name in ("cls/c/0/0/0/0", "done/c/1", "clip_ids/c/0")]
    assert problems[0].endswith("(clips 0..2)")  # the clip list itself is damaged: named by index


def edit_metadata(node: Path, field: str, value: object) -> None:
    """Set the dotted ``field`` of the zarr.json of the group or array at ``node``."""
    meta = json.loads((node / "zarr.json").read_text())
    *parents, last = field.split(".")
    target = meta
    for key in parents:
        target = target[key]
    target[last] = value
    (node / "zarr.json").write_text(json.dumps(meta))


# the zarr.json edited, the field, its absurd value, the start of the one line that refuses it
ABSURD = {
    "cls shape": ("train/cls", "shape", [10**12, V, T, D],
                  f"train: cls declares shape ({10**12}, {V}, {T}, {D}), the split's attributes and clip list say "
                  f"({N}, {V}, {T}, {D})"),
    "clip list": ("train/clip_ids", "shape", [10**12], f"train: clip_ids declares shape ({10**12},)"),
    "label width": ("train/targets", "shape", [N, 10**9], f"train: targets declares shape ({N}, {10**9})"),
    "split dim": ("train", "attributes.dim", 10**6, f"train: attribute dim={10**6}, the cache's signature says {D}"),
    "text width": ("text/actions/name_embeddings", "shape", [C, 10**12],
                   f"text/actions: name_embeddings declares shape ({C}, {10**12}), the group's counts"),
}


@pytest.mark.parametrize("edit", ABSURD)
def test_an_absurd_declared_shape_is_refused_before_any_allocation(full: Path, edit: str) -> None:
    write_text(full, "actions", text_features(["an animal eats"]))
    write_text(full, "species", text_features([]))
    where, field, value, said = ABSURD[edit]
    edit_metadata(full / where, field, value)
    cache = FeatureCache(full)
    readers = ([lambda: cache.text("actions")] if where.startswith("text") else
               [lambda: cache.split("train"), lambda: cache_info(full), lambda: SplitWriter(full, "train")])
    for read in readers:
        assert refusal(read, full).startswith(f"{full}/{said}")
    problems = verify_cache(full)
    assert len(problems) == 1 and said.split(": ", 1)[1] in problems[0], problems


def test_a_cache_of_the_previous_schema_is_refused_with_rebuild(full: Path) -> None:
    zarr.open_group(full, mode="r+").attrs["schema_version"] = 2  # no checksums: nothing it holds can be checked
    with pytest.raises(CacheError, match=r"schema version 2 is not 3, the one this anim_clip reads; rebuild the cache"):
        FeatureCache(full)
