"""Phase one end to end: real mp4 files through decord (PyAV where decord fails on a file), the tiny
open_clip tower, a zarr cache on disk."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from processes import run_cli
from videos import decodes_alone, indexed_frames, write_garbage, write_video

from anim_clip.cache import store
from anim_clip.cache.extract import extract
from anim_clip.cache.inspect import cache_info, verify_cache
from anim_clip.cache.store import FeatureCache
from anim_clip.demo import demo_config
from anim_clip.config import BackboneConfig
from anim_clip.data.demo import make_demo_data
from anim_clip.data.transforms import normalization_stats, render_views
from anim_clip.data.sampling import union_indices
from anim_clip.data.video import decoder_unavailable, open_video
from anim_clip.errors import AnimClipError, CacheError, ConfigError, DecoderUnavailable
from anim_clip.frames import FrameEncoder, plan_views
from anim_clip.models.backbone import FrozenImageTower, create_clip
from anim_clip.ui import console

V, T = 2, 4
OVERRIDES = ["backbone.pretrained=null", f"sampling.train_views={V}", f"sampling.num_frames={T}",
             "backbone.batch_frames=16"]
CLIP_BYTES = V * T * 128 * 2  # one clip's cls features


def chunk_bytes(clips: int) -> int:
    return clips * CLIP_BYTES


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, train_clips=16, test_clips=6, num_frames=16, size=64, seed=3)
    return root


def config(data: Path, *extra: str):
    return demo_config(data, [*OVERRIDES, *extra])


def run_extract(data: Path, out: Path, *args: str, chunk_clips: int = 2,
                flush_seconds: float = store.FLUSH_SECONDS) -> subprocess.Popen:
    """The real command in a child process, with small chunks (to resume mid-split) and optionally
    another interval between the writes of incomplete chunks."""
    argv = ["extract", "demo", "--out", str(out), "--workers", "1",
            "--set", f"data.annotations={data}", "--set", f"data.root={data / 'videos'}",
            *[a for o in OVERRIDES for a in ("--set", o)], *args]
    code = (f"import sys; from anim_clip.cache import store; store.CHUNK_BYTES = {chunk_bytes(chunk_clips)}; "
            f"store.FLUSH_SECONDS = {flush_seconds}; "
            f"from anim_clip.cli import main; sys.argv = ['anim-clip'] + {argv!r}; main()")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def arrays(path: Path, split: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(path / split, mode="r")
    return {name: g[name][...] for name in ("cls", "done", "error", "decoder", "frame_indices")}


def copy_videos(data: Path, folder: Path) -> Path:
    """A copy of the demo videos to damage or replace."""
    folder.mkdir()
    for f in (data / "videos").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def assert_same_store(a: Path, b: Path, same_decoder: bool = True) -> None:
    for split in ("train", "test"):
        x, y = arrays(a, split), arrays(b, split)
        for name in ("done", "error", *(["decoder"] if same_decoder else []), "frame_indices"):
            np.testing.assert_array_equal(x[name], y[name], err_msg=f"{split}/{name}")
        # same frames, same model: equal up to fp16 rounding of float differences between batchings
        np.testing.assert_allclose(x["cls"].astype(np.float32), y["cls"].astype(np.float32), atol=2e-3, rtol=2e-3)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory) -> Path:
    """An uninterrupted single-process extraction, with one corrupt test video."""
    out = tmp_path_factory.mktemp("ref") / "cache.zarr"
    extract(config(data), out, progress=False)
    return out


def test_cache_holds_the_backbone_output(data: Path, reference: Path):
    cfg = config(data)
    cache = FeatureCache(reference)
    split = cache.split("test")
    assert split.valid.all() and split.cls.shape == (6, 1, T, 128)
    assert cache.config["backbone"]["weights"] == "random" and cache.attrs["config"]["random_weights"] is True
    model, _ = create_clip(cfg.backbone)
    tower = FrozenImageTower(model)
    mean, std = normalization_stats("clip")
    for i in (0, 5):
        with open_video(data / "videos" / split.clip_ids[i], "pyav") as video:  # the other decoder, as an oracle
            views = plan_views("test", i, video.num_frames, video.height, video.width, cfg.sampling)
            unique, positions = union_indices(views)
            frames = video.get_frames(unique)
        np.testing.assert_array_equal(split.frame_indices[i].numpy(), np.stack([v.frame_indices for v in views]))
        expected = tower(render_views(frames, views, positions, 64, mean, std).flatten(0, 1))[0]
        torch.testing.assert_close(split.cls[i, 0].float(), expected.half().float(), atol=1e-2, rtol=1e-2)
    text = cache.text("actions")
    assert text.names[0] == "Walking" and text.name_embeddings.shape == (7, 128)
    assert verify_cache(reference) == []


def test_corrupt_video_is_skipped_and_reported(data: Path, tmp_path: Path):
    videos = copy_videos(data, tmp_path / "videos")
    bad = sorted(videos.glob("test*.mp4"))[2]
    bad.write_bytes(bad.read_bytes()[:300])  # truncated: the header survives, the frames do not
    out = tmp_path / "cache.zarr"
    reports = extract(config(data, f"data.root={videos}"), out, progress=False)
    test = next(r for r in reports if r.split == "test")
    assert sum(test.failed.values()) == 1 and test.extracted == 5
    cls_bytes = test.extracted * T * 128 * 2  # 1 view x T frames x D=128, fp16
    assert cls_bytes <= test.bytes_written < cls_bytes + 2**16  # the features, plus flags, ids and metadata
    split = FeatureCache(out).split("test")
    failed = [i for i, e in enumerate(split.errors) if e]
    assert [split.clip_ids[i] for i in failed] == [bad.name]
    assert split.done.all() and not split.valid[failed[0]]
    assert verify_cache(out) == []


def test_rates_count_only_extracted_clips(data: Path, tmp_path: Path):
    """Every video unreadable: nothing was extracted, so the bars show no rate (they showed
    ~10^5 frames/s: failed clips advanced the bar, and each counted a clip's frames)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for f in (data / "videos").iterdir():
        write_garbage(videos / f.name)
    proc = run_extract(data, tmp_path / "cache.zarr", "--set", f"data.root={videos}")
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 2 and "error: all 16 clips of split 'train'" in output, output  # nothing usable
    bars = [line for line in output.splitlines() if "clips/s" in line and ("ETA" in line or "took" in line)]
    assert len(bars) == 1, output  # the first split stops the run
    for line in bars:
        assert "? clips/s" in line and "? frames/s" in line, line


def kill_when(proc: subprocess.Popen, path: Path, condition) -> np.ndarray:
    """SIGKILL ``proc`` once ``condition(done flags)`` holds, checked on the stopped process; the flags then."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            flags = zarr.open_array(path, mode="r")[...]
        except Exception:  # the store or split is not there yet
            flags = np.zeros(0, bool)
        if condition(flags):
            proc.send_signal(signal.SIGSTOP)
            flags = zarr.open_array(path, mode="r")[...]
            if condition(flags):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return flags
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"could not kill mid-run (exit {proc.wait()})")


def test_resume_after_kill_gives_the_same_store(data: Path, reference: Path, tmp_path: Path):
    out = tmp_path / "cache.zarr"
    per_chunk = 4
    proc = run_extract(data, out, chunk_clips=per_chunk, flush_seconds=0)  # every clip is written as it arrives
    # killed with at least one chunk finished and the next one partly done
    flags = kill_when(proc, out / "train" / "done", lambda done: done.sum() > per_chunk and done.sum() % per_chunk)
    before = arrays(out, "train")
    # chunks whose clips are all done survive untouched; a chunk with some clips done is rewritten
    # when the rest arrive, and its done clips keep their values
    finished = [k for k in range(-(-len(flags) // per_chunk)) if flags[k * per_chunk:(k + 1) * per_chunk].all()]
    stamps = {p: p.stat().st_mtime_ns for k in finished for p in (out / "train" / "cls" / "c" / str(k)).rglob("*")
              if p.is_file()}
    resumed = run_extract(data, out, chunk_clips=per_chunk, flush_seconds=0)
    output = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, output
    assert_same_store(out, reference)
    assert stamps and stamps == {p: p.stat().st_mtime_ns for p in stamps}, "a finished chunk was written again"
    after = arrays(out, "train")
    for name in ("cls", "frame_indices", "error"):
        np.testing.assert_array_equal(after[name][flags], before[name][flags], err_msg=name)


def test_ctrl_c_saves_the_clips_extracted_so_far(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    forward, calls = FrameEncoder._forward, []

    def interrupted_forward(self: FrameEncoder, queued: list) -> list:
        calls.append(1)
        if len(calls) == 3:  # two batches of two clips stored, in one incomplete chunk
            raise KeyboardInterrupt
        return forward(self, queued)

    monkeypatch.setattr(FrameEncoder, "_forward", interrupted_forward)
    out = tmp_path / "cache.zarr"
    reports = extract(config(data), out, progress=False)
    assert reports[-1].interrupted and reports[-1].extracted == 4
    done = zarr.open_array(out / "train" / "done", mode="r")
    assert done.chunks[0] > 4 and done[...].tolist() == [True] * 4 + [False] * 12


def test_a_wrong_video_root_is_refused_before_any_weights_load(data: Path, tmp_path: Path):
    out, nowhere = tmp_path / "cache.zarr", tmp_path / "nowhere"
    # weights that do not exist either: their error would come first if they were loaded first
    proc = run_extract(data, out, "--set", f"data.root={nowhere}", "--set", f"backbone.pretrained={tmp_path / 'w.pt'}")
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 2 and output.strip() == (
        f"error: data.root {nowhere} is not a folder: point it (--set data.root=...) at the folder that holds the videos")
    nowhere.mkdir()
    with pytest.raises(ConfigError, match=rf"none of the 16 videos of split 'train' is under data.root {nowhere} "
                                          rf"\(e.g. {nowhere}/train00000.mp4\)"):
        extract(config(data, f"data.root={nowhere}", f"backbone.pretrained={tmp_path / 'w.pt'}"), out, progress=False)
    assert not out.exists()


def test_missing_videos_are_counted_and_a_split_that_all_failed_is_an_error(data: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("anim_clip.cache.extract.SHOWN_FAILURES", 4)
    videos = tmp_path / "videos"
    shutil.copytree(data / "videos", videos)
    for name in ("train00003.mp4", "train00007.mp4"):
        (videos / name).unlink()
    for video in videos.glob("test*.mp4"):
        video.write_bytes(video.read_bytes()[:300])  # the header survives, the frames do not
    out = tmp_path / "cache.zarr"
    with console.capture() as captured, pytest.raises(CacheError) as failed:
        extract(config(data, f"data.root={videos}"), out, progress=False)
    assert (f"2 of 16 videos of split 'train' are missing (e.g. {videos / 'train00003.mp4'}); they will be recorded "
            "as failed") in captured.get()
    log = " ".join(captured.get().split())
    # every failed clip named with its reason, the first SHOWN_FAILURES, then a count
    assert "failed train clips (2): train00003.mp4: file not found; train00007.mp4: file not found" in log
    shown = re.search(r"failed test clips \(6\): (.*?); and 2 more \(all in `anim-clip cache info (\S+) --json`\)", log)
    assert shown is not None and shown[2] == str(out), log
    assert [clip.split(": ")[0] for clip in shown[1].split("; ")] == [f"test0000{i}.mp4" for i in range(4)]
    assert re.fullmatch(rf"all 6 clips of split 'test' in {out} failed \(6x .+\): nothing to train or evaluate on; "
                        rf"fix the cause \(data.root, sampling.decoder\), remove {out / 'test'} and extract again",
                        str(failed.value)), str(failed.value)
    problems = verify_cache(out)
    assert len(problems) == 1 and problems[0].startswith("split 'test': all 6 clips failed (e.g. test00000.mp4: ")
    assert FeatureCache(out).split("train").errors[3] == "file not found"


def test_two_shards_equal_one_process(data: Path, reference: Path, tmp_path: Path):
    out = tmp_path / "cache.zarr"
    procs = [run_extract(data, out, "--shard", "1/2"), run_extract(data, out, "--shard", "2/2")]
    for p in procs:
        output = p.communicate(timeout=300)[0].decode()
        assert p.returncode == 0, output
    assert_same_store(out, reference)


def test_extracting_again_gives_the_same_bits_with_threads_and_under_load(data: Path, reference: Path,
                                                                           tmp_path: Path):
    # reference: 4 decoding threads, 1 thread per decoder, an idle process; here 3 and 2, while
    # another process burns a CPU core
    out = tmp_path / "cache.zarr"
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        extract(config(data, "sampling.decode_threads=2"), out, workers=3, progress=False)
    finally:
        burner.kill()
        burner.wait()
    for split in ("train", "test"):
        again, first = arrays(out, split), arrays(reference, split)
        assert again.pop("cls").tobytes() == first.pop("cls").tobytes(), f"{split}/cls differs"
        for name, values in first.items():
            np.testing.assert_array_equal(again[name], values, err_msg=f"{split}/{name}")


def test_other_config_is_refused(data: Path, reference: Path):
    with pytest.raises(CacheError, match=r"sampling\.num_frames"):
        extract(config(data, f"sampling.num_frames={T + 1}"), reference, progress=False)


def test_extracting_a_finished_cache_again_says_so_and_writes_nothing(data: Path, reference: Path, capsys):
    before = {split: arrays(reference, split) for split in ("train", "test")}
    with console.capture() as captured:
        reports = extract(config(data), reference, progress=True)
    assert "train [1/1]: nothing left to do, all 16 clips were processed by an earlier run" in captured.get()
    assert "test [1/1]: nothing left to do, all 6 clips were processed by an earlier run" in captured.get()
    assert [(r.extracted, r.already_done) for r in reports] == [(0, 16), (0, 6)]
    for split, old in before.items():
        for name, values in arrays(reference, split).items():
            np.testing.assert_array_equal(values, old[name])


def test_features_of_another_precision_are_not_mixed_into_a_cache(data: Path, reference: Path):
    # `auto` runs the tower in bf16 on a GPU and fp32 on a CPU: a resume on other hardware is refused
    assert FeatureCache(reference).config["backbone"]["tower_precision"] == "float32"
    with pytest.raises(CacheError, match=r"backbone\.tower_precision='float32', this run uses 'bfloat16'"):
        extract(config(data, "runtime.precision=bf16"), reference, progress=False)


@pytest.mark.skipif(decoder_unavailable("torchcodec") is not None, reason=f"torchcodec: {decoder_unavailable('torchcodec')}")
def test_torchcodec_decoding_gives_the_same_store(data: Path, reference: Path, tmp_path: Path):
    out = tmp_path / "cache.zarr"
    extract(config(data, "sampling.decoder=torchcodec"), out, progress=False)
    assert_same_store(out, reference, same_decoder=False)
    decoded = arrays(out, "train")["decoder"]
    assert decoded.tolist() == ["torchcodec"] * len(decoded)  # the demo's 112x112 clips need no fallback


def test_another_decoder_is_not_mixed_into_a_cache(data: Path, reference: Path):
    # the decoders' pixels differ on some video (10-bit, odd height), so a cache has one configured decoder
    assert FeatureCache(reference).config["sampling"]["decoder"] == "decord"
    with pytest.raises(CacheError, match=r"sampling\.decoder='decord', this run uses 'pyav'"):
        extract(config(data, "sampling.decoder=pyav"), reference, progress=False)


def test_clips_decord_cannot_read_are_decoded_by_pyav_said_and_recorded(data: Path, tmp_path: Path):
    videos = copy_videos(data, tmp_path / "videos")
    raw, wide, odd = sorted(videos.glob("test*.mp4"))[:3]
    # a raw H.264 stream under an .mp4 name: decord cannot open it on any machine, PyAV decodes it
    raw.write_bytes(write_video(tmp_path / "raw.h264", indexed_frames(16, 64, 64)).read_bytes())
    write_video(wide, indexed_frames(16, 64, 96))  # decord2 3.4.0's frame-size failure on AVX-512 CPUs
    write_video(odd, indexed_frames(16, 63, 97), codec="mpeg4")
    out = tmp_path / "cache.zarr"
    with console.capture() as captured:
        reports = extract(config(data, f"data.root={videos}"), out, progress=False)
    log = " ".join(captured.get().split())
    expected = {raw.name: "pyav", **{p.name: "decord" if decodes_alone(p, "decord") else "pyav" for p in (wide, odd)}}
    split = FeatureCache(out).split("test")
    decoders = zarr.open_array(out / "test" / "decoder", mode="r")[...].tolist()
    assert split.valid.all() and verify_cache(out) == []
    assert decoders == [expected.get(clip, "decord") for clip in split.clip_ids]
    counts = dict(Counter(decoders).most_common())
    assert dict(next(r for r in reports if r.split == "test").decoders) == counts
    assert cache_info(out)["splits"]["test"]["decoders"] == counts
    assert log.count("decoder fallback:") == 1 and f"{raw.name}: cannot decode video: decord: " in log
    train_clips = len(FeatureCache(out).split("train"))
    mixed = f"clips decoded by decord {train_clips + counts['decord']}, pyav {counts['pyav']}"
    # the measured facts, not a request to extract everything again
    facts = ("decord and PyAV give the same pixels, to the bit, on 8-bit video of even height, and differ on 10-bit "
             "and odd-height 4:2:0 video (benchmarks/results/decoder_pixels.json)")
    assert f"WARNING: cache {out} holds {mixed}" in log and facts in log and "extract into a new cache" not in log
    # cache verify: sound, so exit code 0, with the mixed decoders as a warning line
    verified = run_cli("cache", "verify", str(out))
    said = " ".join(verified.stdout.split())
    assert f"warning: holds {mixed}" in said and facts in said and said.endswith(f"{out}: OK")


def test_portrait_phone_clips_are_extracted_upright(data: Path, tmp_path: Path):
    # stored sideways with a 90° / 270° display matrix, or stored upright: the same views of the
    # same pixels (lossless FFV1 RGB), so the same features; decord turns them itself
    sideways, upright = copy_videos(data, tmp_path / "sideways"), copy_videos(data, tmp_path / "upright")
    stored = indexed_frames(16, 120, 160)
    for clip, degrees in zip(sorted(p.name for p in sideways.glob("test*.mp4"))[:2], (90, 270)):
        write_video(sideways / clip, stored, codec="ffv1", pix_fmt="bgr0", rotation=degrees)
        write_video(upright / clip, np.ascontiguousarray(np.rot90(stored, degrees // 90, axes=(1, 2))),
                    codec="ffv1", pix_fmt="bgr0")
    caches = [tmp_path / f"{videos.name}.zarr" for videos in (sideways, upright)]
    for videos, out in zip((sideways, upright), caches):
        extract(config(data, f"data.root={videos}"), out, ("test",), progress=False)
    a, b = arrays(caches[0], "test"), arrays(caches[1], "test")
    assert a["done"].all() and a["decoder"].tolist() == ["decord"] * len(a["decoder"])
    for name in ("frame_indices", "cls"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_decoder_without_a_gpu_is_refused_before_anything_is_written(data: Path, tmp_path: Path):
    with pytest.raises(DecoderUnavailable, match="torch sees none"):
        extract(config(data, "sampling.decoder=torchcodec-cuda"), tmp_path / "cache.zarr", progress=False)
    assert not (tmp_path / "cache.zarr").exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_gives_the_same_features(tmp_path: Path, suffix: str):
    model, _ = create_clip(BackboneConfig(model="anim-clip-tiny", pretrained=None))
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded, info = create_clip(BackboneConfig(model="anim-clip-tiny", pretrained=str(path)))
    assert info.sha256 is not None and not info.random
    x = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(FrozenImageTower(loaded)(x)[0], FrozenImageTower(model)(x)[0], rtol=0, atol=0)


def test_unsafe_checkpoint_is_refused(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": Path("/")}, path)  # needs more than tensors to unpickle
    with pytest.raises(AnimClipError, match="refused"):
        create_clip(BackboneConfig(model="anim-clip-tiny", pretrained=str(path)))
    with pytest.raises(AnimClipError, match="checkpoint file not found"):
        create_clip(BackboneConfig(model="anim-clip-tiny", pretrained=str(tmp_path / "missing.pt")))


def test_an_empty_split_is_refused_naming_its_file_before_anything_is_made(data: Path, tmp_path: Path):
    annotations = tmp_path / "annotations"
    shutil.copytree(data, annotations, ignore=shutil.ignore_patterns("videos"))
    (annotations / "test.txt").write_text("")  # a split that lists no clip: not "processed by an earlier run"
    out = tmp_path / "cache.zarr"
    with pytest.raises(ConfigError) as refused:
        extract(config(data, f"data.annotations={annotations}"), out, progress=False)
    assert str(refused.value) == (f"split 'test' is empty: no clips listed in {annotations / 'test.txt'}; list its "
                                  "clips there, or extract only the other splits (--split)")
    assert not out.exists()


def test_a_shard_without_clips_says_so(data: Path, tmp_path: Path):
    # 16 training and 6 test clips fit in one chunk each: shard 1 of 4 holds none of them
    with console.capture() as captured:
        reports = extract(config(data), tmp_path / "cache.zarr", shard=0, num_shards=4, progress=False)
    said = " ".join(captured.get().split())
    assert "train [1/4]: no clips in this shard: the split's 16 clips fill fewer chunks than there are shards" in said
    assert "test [1/4]: no clips in this shard: the split's 6 clips" in said
    assert "earlier run" not in said and [(r.clips, r.extracted) for r in reports] == [(0, 0), (0, 0)]
