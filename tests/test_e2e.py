"""End-to-end mode on real mp4 files and the tiny model: training, a corrupt video, resume after a
kill, warm start from a cached run's head, evaluation on raw videos with K x 3 views, pixel CutMix."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner
from videos import frame_ids, indexed_frames, write_video

from anim_clip.cache.extract import extract
from anim_clip.cli import app
from anim_clip.demo import demo_config
from anim_clip.data.dataset import load_dataset
from anim_clip.data.demo import make_demo_data
from anim_clip.errors import AnimClipError, ConfigError
from anim_clip.evaluate.cached import evaluate_checkpoint
from anim_clip.evaluate.videos import evaluate_checkpoint_on_videos
from anim_clip.models.backbone import create_clip, model_pixels
from anim_clip.models.checkpoint import load_checkpoint
from anim_clip.train.engine import TrainResult, e2e_model, load_initial_head, train
from anim_clip.models.features import Batch
from anim_clip.train.mixing import mix_batch
from anim_clip.train.videos import VideoTrainData, decode_train_clip

E2E = ["backbone.pretrained=null", "sampling.num_frames=4", "train.mode=e2e", "train.batch_size=4",
       "train.accumulation=1", "train.epochs=3", "train.warmup_epochs=1", "train.log_every=1", "train.num_workers=1",
       "sampling.test_clips=2", "sampling.test_crops=3"]
BAD = "train00003.mp4"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """12 training clips, one of them truncated (undecodable), 6 test clips."""
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, train_clips=12, test_clips=6, num_frames=16, size=64, seed=7)
    video = root / "videos" / BAD
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    return root


def cfg_for(data: Path, *extra: str):
    return demo_config(data, [*E2E, *extra])


def tower_pixels(cfg):
    """The pixels the config's tower takes, as the engine passes them from its model."""
    return model_pixels(create_clip(cfg.backbone, load_weights=False)[0])


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory) -> TrainResult:
    return train(cfg_for(data), out=tmp_path_factory.mktemp("run"), progress=False)


def test_e2e_trains_backbone_and_message_tokens_and_skips_the_bad_video(run: TrainResult, data: Path):
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert [r["skipped_clips"] for r in epochs] == [1, 1, 1]  # every epoch meets the truncated video, and goes on
    cfg = cfg_for(data)
    torch.manual_seed(cfg.train.seed)  # the engine's state when it builds the model
    before = e2e_model(cfg, load_dataset(cfg.data)).state_dict()
    after = load_checkpoint(run.run_dir / "last.pt")
    assert after.kind == "e2e" and before.keys() == after.model.keys()
    changed = {k for k in before if not torch.equal(before[k], after.model[k])}
    assert "visual.conv1.weight" in changed and "visual.transformer.resblocks.0.message_fc.weight" in changed
    assert any(k.startswith("head.mit.") for k in changed)
    assert not any(k.startswith("text.") for k in changed)  # the frozen text tower
    assert run.report["clips"] == 6 and run.report["views"] == "2 clips x 3 crops" and run.report["skipped_videos"] == 0


def test_a_bad_video_keeps_its_slot_but_not_its_loss(data: Path, capsys):
    cfg = cfg_for(data)
    dataset = load_dataset(cfg.data)
    bad = next(i for i, c in enumerate(dataset.clips("train")) if c.path.endswith(BAD))
    rows = [bad, 0, 5]
    videos = VideoTrainData(dataset, "train", torch.arange(12), cfg, torch.device("cpu"), tower_pixels(cfg))
    clips = [decode_train_clip(videos.paths, cfg, 0, i) for i in rows]
    batch = videos.batch(clips, epoch=0)
    assert batch.features.shape == (3, 4, 3, 64, 64) and torch.isfinite(batch.features).all()
    assert batch.valid.tolist() == [False, True, True]
    assert len(batch.skipped) == 1 and BAD in batch.skipped[0] and "cannot decode video" in batch.skipped[0]
    assert torch.equal(batch.features[0], batch.features[1]) and torch.equal(batch.targets[0], batch.targets[1])
    again = videos.batch([decode_train_clip(videos.paths, cfg, 0, i) for i in rows], epoch=0)
    assert torch.equal(again.features, batch.features)  # augmentation is a function of (seed, epoch, clip)
    other_epoch = videos.batch([decode_train_clip(videos.paths, cfg, 1, i) for i in rows], epoch=1)
    assert not torch.equal(other_epoch.features[1], batch.features[1])
    assert len(other_epoch.skipped) == 1  # counted in every epoch, printed once
    assert capsys.readouterr().out.count("cannot decode video") == 1


def test_a_video_decord_cannot_read_is_trained_on_with_pyav_and_said_once(data: Path, tmp_path: Path, capsys):
    cfg = cfg_for(data)
    videos = VideoTrainData(load_dataset(cfg.data), "train", torch.arange(12), cfg, torch.device("cpu"),
                            tower_pixels(cfg))
    videos.paths[0] = write_video(tmp_path / "raw.h264", indexed_frames(16, 64, 64))  # decord cannot open it
    clips = [decode_train_clip(videos.paths, cfg, 0, i) for i in (0, 1)]
    assert [c.decoder for c in clips] == ["pyav", "decord"] and clips[0].error is None
    assert frame_ids(clips[0].frames).tolist() == clips[0].views[0].frame_indices.tolist()
    for epoch in (0, 1):
        assert videos.batch(clips, epoch).valid.all()
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("decoder fallback:") == 1 and "raw.h264: cannot decode video: decord: " in out


def test_pixel_cutmix_pastes_one_box_on_every_frame_of_every_clip():
    clips = torch.arange(6.0)[:, None, None, None, None].expand(6, 4, 3, 32, 32).clone()
    batch = Batch(clips, torch.eye(6), torch.eye(6)[:, :2])
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        mixed = mix_batch(batch, mixup_alpha=0.0, cutmix_alpha=1.0, mix_species=False, generator=g)
        partner = mixed.targets.clone().fill_diagonal_(0).argmax(1)
        boxes = []
        for i in range(6):
            own = mixed.features[i] == i
            assert torch.equal(own, own[:1, :1].expand_as(own))  # the same box on every frame and channel
            if mixed.targets[i, i] < 1:
                assert (mixed.features[i][~own] == partner[i]).all()
                assert float(own.float().mean()) == pytest.approx(float(mixed.targets[i, i]))
                boxes.append(own[0, 0])
        assert all(torch.equal(b, boxes[0]) for b in boxes)  # one box for the batch
        assert torch.allclose(mixed.targets.sum(1), torch.ones(6)) and torch.equal(mixed.species, batch.species)
    blended = mix_batch(batch, mixup_alpha=0.8, cutmix_alpha=0.0, mix_species=True, generator=g)
    assert torch.allclose(blended.features.mean((1, 2, 3, 4)), blended.targets @ torch.arange(6.0), atol=1e-5)


def _train_process(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    sets = [a for o in [*E2E, f"data.annotations={data}", f"data.root={data / 'videos'}"] for a in ("--set", o)]
    return subprocess.Popen([sys.executable, "-m", "anim_clip", "train", "demo", "--out", str(out), *sets, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250"})


def test_resume_after_kill_is_bit_exact(data: Path, run: TrainResult, tmp_path: Path):
    """Killed with SIGKILL after an epoch's checkpoint, then resumed: the last.pt of an uninterrupted run
    (the module's run, same config) bit for bit. Exact because every random draw is a function of
    (seed, epoch, clip), the optimiser state is restored, and the CPU kernels are deterministic."""
    killed = tmp_path / "killed"
    proc = _train_process(data, killed)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (killed / "last.pt").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(killed / "last.pt").extra["train_state"]["epoch"]
    assert 1 <= done < 3, f"could not kill mid-run (epoch {done})"
    proc = _train_process(data, killed, "--resume")
    output = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, output
    assert f"{BAD}: cannot decode video" in output and "clip skipped" in output
    a, b = load_checkpoint(run.run_dir / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a.model.keys() == b.model.keys()
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    assert a.extra["train_state"] == b.extra["train_state"]
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2, 3]


def test_init_head_starts_from_a_cached_run(data: Path, tmp_path: Path):
    cached = demo_config(data, ["backbone.pretrained=null", "sampling.num_frames=4", "sampling.train_views=1",
                                "train.batch_size=4", "train.accumulation=1", "train.epochs=1", "train.num_workers=1"])
    extract(cached, tmp_path / "cache.zarr", progress=False)
    train(cached, cache=tmp_path / "cache.zarr", out=tmp_path / "cached", progress=False)
    head = load_checkpoint(tmp_path / "cached" / "last.pt").model
    # a head on the raw videos (through the frozen backbone) scores what it scores on the cache of the same views
    on_videos = evaluate_checkpoint_on_videos(tmp_path / "cached", out=tmp_path / "eval-videos")
    assert on_videos["mAP"] == pytest.approx(evaluate_checkpoint(tmp_path / "cached", tmp_path / "cache.zarr",
                                                                 out=tmp_path / "eval-cache")["mAP"], abs=1e-4)
    # head at learning rate 0 (and a floor of 0): the e2e run's head stays exactly the loaded one
    warm = train(cfg_for(data, "train.epochs=1", "train.head_lr=0", "train.min_lr=0", "sampling.test_clips=1",
                         "sampling.test_crops=1"), out=tmp_path / "e2e", init_head=tmp_path / "cached", progress=False)
    trained = load_checkpoint(warm.run_dir / "last.pt").model
    assert all(torch.equal(trained[f"head.{k}"], v) for k, v in head.items())
    cfg = cfg_for(data)
    fresh = e2e_model(cfg, load_dataset(cfg.data))
    assert not torch.equal(trained["visual.conv1.weight"], fresh.state_dict()["visual.conv1.weight"])  # backbone trained

    with pytest.raises(AnimClipError, match="trained on anim-clip-tiny features"):
        load_initial_head(fresh.head, tmp_path / "cached", cfg_for(data, "backbone.model=ViT-B-32"), load_dataset(cfg.data))
    with pytest.raises(AnimClipError, match="--init-head warm-starts end-to-end"):
        train(cached, cache=tmp_path / "cache.zarr", out=tmp_path / "x", init_head=tmp_path / "cached")
    with pytest.raises(AnimClipError, match="drop --cache"):
        train(cfg, cache=tmp_path / "cache.zarr", out=tmp_path / "x")


def test_eval_on_raw_videos_reproduces_the_training_report(run: TrainResult, tmp_path: Path):
    report = evaluate_checkpoint_on_videos(run.run_dir, out=tmp_path)
    trained = json.loads((run.run_dir / "eval.json").read_text())
    assert report["mAP"] == pytest.approx(trained["mAP"], abs=1e-6) and report["views"] == "2 clips x 3 crops"
    assert (tmp_path / "eval.json").exists() and (tmp_path / "plots" / "per_class_ap.png").exists()
    result = CliRunner().invoke(app, ["eval", str(run.run_dir), "--videos", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "eval.json").read_text())["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    result = CliRunner().invoke(app, ["eval", str(run.run_dir)])
    assert isinstance(result.exception, AnimClipError) and "--videos" in str(result.exception)


def test_gpu_decoding_in_worker_processes_is_refused_with_the_fix(data: Path):
    cfg = cfg_for(data, "sampling.decoder=torchcodec-cuda", "train.num_workers=2")
    with pytest.raises(ConfigError, match="set train.num_workers=0"):
        VideoTrainData(load_dataset(cfg.data), "train", torch.arange(4), cfg, torch.device("cpu"), tower_pixels(cfg))
