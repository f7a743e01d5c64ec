"""Phase two on a real cache: the engine, resume after a kill, selection, eval, and the
pieces (losses, schedule, parameter groups, mixing) against independent formulas."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import zarr
from processes import on_small_disk, run_cli, size_limited, unprivileged
from sklearn.metrics import average_precision_score

from anim_clip.demo import demo_config
from anim_clip.config import TrainConfig, config_to_dict, load_config
from anim_clip.data.dataset import load_dataset
from anim_clip.errors import AnimClipError, CacheError, DamagedCache
from anim_clip.evaluate.cached import evaluate_checkpoint
from anim_clip.evaluate.plots import training_curves_figure
from anim_clip.models.checkpoint import load_checkpoint
from anim_clip.models.features import FrameFeatures
from anim_clip.train.cached import CachedTrainData
from anim_clip.train.engine import epoch_generator, train
from anim_clip.train.losses import LOSSES
from anim_clip.models.features import Batch
from anim_clip.train.mixing import mix_batch
from anim_clip.train.optim import param_groups
from anim_clip.train.plan import EpochPlan, batches_per_epoch
from anim_clip.train.schedule import WarmupCosine, learning_rate
from anim_clip.models.inputs import HeadInputs

OVERRIDES = ["backbone.pretrained=null", "sampling.num_frames=4", "sampling.train_views=2",
             "train.batch_size=4", "train.accumulation=2", "train.epochs=3", "train.warmup_epochs=1", "train.log_every=1"]


@pytest.fixture(scope="module")
def data(demo_data) -> Path:
    return demo_data(train_clips=20, test_clips=8, num_frames=16, size=64, seed=5)  # test_sweep's too


@pytest.fixture(scope="module")
def cache(data: Path, demo_cache, tmp_path_factory) -> Path:
    """This module's copy of the session's cache: its runs store their baselines in it."""
    return Path(shutil.copytree(demo_cache(data, OVERRIDES), tmp_path_factory.mktemp("cache") / "cache.zarr"))


def cfg_for(data: Path, *extra: str):
    return demo_config(data, [*OVERRIDES, *extra])


@pytest.fixture(scope="module")
def run(data: Path, cache: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(cfg_for(data), cache=cache, out=out, progress=False)
    return out


def test_run_directory_and_report(run: Path, data: Path, cache: Path):
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "eval.json", "plots/per_class_ap.png",
                 "plots/groups.png", "plots/training_curves.png"):
        assert (run / name).exists(), name
    assert not (run / "best.pt").exists()  # no validation share, no selection on test: last epoch only
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    steps = [r for r in records if r["kind"] == "step"]
    assert all(math.isfinite(r["loss"]) for r in steps) and steps[-1]["step"] == epochs[-1]["step"]
    report = json.loads((run / "eval.json").read_text())
    assert report["clips"] == 8 and report["epochs"] == 3
    # the report's mAP against sklearn on the same scores (an independent oracle)
    from anim_clip.data.dataset import load_dataset
    from anim_clip.evaluate.cached import cached_scores
    from anim_clip.models.factory import model_from_checkpoint
    from anim_clip.cache.reader import open_cached_data
    from anim_clip.runtime.distributed import setup_distributed

    ckpt = load_checkpoint(run / "last.pt")
    cfg = ckpt.config
    _, splits = open_cached_data(cfg, cache, load_dataset(cfg.data), torch.device("cpu"), HeadInputs.of_config(cfg))
    scores = cached_scores(model_from_checkpoint(ckpt, "cached"), splits["test"], cfg, setup_distributed())
    targets = splits["test"].targets().numpy()
    multilabel = any(len(c.actions) > 1 for split in ("train", "test") for c in load_dataset(cfg.data).clips(split))
    assert report["multilabel"] is multilabel and (("top1" in report) is not multilabel)
    valid = targets.sum(0) > 0
    assert report["mAP"] == pytest.approx(average_precision_score(targets[:, valid], scores[:, valid], average=None).mean())
    assert np.allclose(scores.sum(1), 1, atol=1e-5)


def test_training_curves_plot_the_epoch_mean_loss(run: Path):
    """Not the last logged batch's loss of each epoch, which the plot showed before."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    means = [r["loss"] for r in records if r["kind"] == "epoch"]
    last_batch = {r["epoch"]: r["loss"] for r in records if r["kind"] == "step"}
    assert means != list(last_batch.values())
    fig = training_curves_figure(records)
    (x, y), = [line.get_data() for line in fig.axes[0].lines]
    plt.close(fig)
    assert list(x) == [1, 2, 3] and list(y) == means


def test_eval_command_reproduces_the_training_report(run: Path, cache: Path, tmp_path: Path):
    report = evaluate_checkpoint(run, cache, out=tmp_path)
    assert report["mAP"] == pytest.approx(json.loads((run / "eval.json").read_text())["mAP"], abs=1e-9)
    assert (tmp_path / "eval.json").exists() and (tmp_path / "plots" / "per_class_ap.png").exists()
    with pytest.raises(AnimClipError, match="no best.pt"):
        evaluate_checkpoint(run, cache, weights="best", out=tmp_path)


def test_validation_share_selects_best(data: Path, cache: Path, tmp_path: Path):
    result = train(cfg_for(data, "train.val_fraction=0.25", "train.epochs=2"), cache=cache, out=tmp_path, progress=False)
    assert (tmp_path / "best.pt").exists() and result.state.best_epoch in (1, 2)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_metric_name"] in ("val mAP", "val top1") for r in records if r["kind"] == "epoch")


def test_refuses_an_existing_run_and_a_foreign_cache(data: Path, cache: Path, run: Path, tmp_path: Path):
    with pytest.raises(AnimClipError, match="--resume"):
        train(cfg_for(data), cache=cache, out=run, progress=False)
    with pytest.raises(CacheError, match=r"sampling\.num_frames"):
        train(cfg_for(data, "sampling.num_frames=5"), cache=cache, out=tmp_path, progress=False)


def copy_cache(cache: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cache, tmp_path / "copy.zarr"))


def other_annotations(data: Path, folder: Path, file: str, edit) -> Path:
    """A copy of the demo's annotation files in ``folder``, with ``edit`` applied to the lines of ``file``."""
    folder.mkdir(parents=True)
    for f in data.iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    (folder / file).write_text("\n".join(edit((folder / file).read_text().splitlines())) + "\n")
    return folder


def test_an_unfinished_cache_is_refused_unless_allowed(data: Path, cache: Path, run: Path, tmp_path: Path):
    unfinished = copy_cache(cache, tmp_path)
    zarr.open_array(unfinished / "train" / "done", mode="r+")[12:] = False  # as a killed extraction leaves it
    with pytest.raises(CacheError) as refused:
        train(cfg_for(data), cache=unfinished, out=tmp_path / "run", progress=False)
    assert str(refused.value) == (
        f"cache {unfinished} is unfinished: 8 of the 20 'train' clips are not extracted yet; finish them with "
        f"`anim-clip extract CONFIG --out {unfinished}` (the config it was made with), or pass --allow-incomplete "
        "(train, eval, sweep) to use only the clips extracted so far")
    for split in ("train", "test"):  # the test split is complete, but its linear probe fits on the training clips
        with pytest.raises(CacheError, match="8 of the 20 'train' clips"):
            evaluate_checkpoint(run, unfinished, split=split, out=tmp_path / "eval")
    report = evaluate_checkpoint(run, unfinished, out=tmp_path / "eval", allow_incomplete=True)
    assert report["pending_clips"] == {"train": 8} and report["clips"] == 8
    result = train(cfg_for(data, "train.epochs=1"), cache=unfinished, out=tmp_path / "run", progress=False,
                   allow_incomplete=True)
    assert result.report["pending_clips"] == {"train": 8}
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["pending_clips"] == {"train": 8}
    report = evaluate_checkpoint(run, unfinished, split="train", out=tmp_path / "eval", allow_incomplete=True)
    assert report["pending_clips"] == {"train": 8} and report["clips"] == 12


def test_a_cache_of_other_annotations_is_refused(data: Path, cache: Path, tmp_path: Path):
    def relabel(lines: list[str]) -> list[str]:
        return [*lines[:3], lines[3].split("\t")[0] + "\t[('Fox', 'Flying'), ('Fox', 'Walking')]", *lines[4:]]

    folder = other_annotations(data, tmp_path / "relabelled", "test.txt", relabel)
    clip = (folder / "test.txt").read_text().splitlines()[3].split("\t")[0]
    cfg = cfg_for(data, f"data.annotations={folder}")
    actions = load_dataset(cfg.data).actions
    was = [actions[i] for i in np.flatnonzero(zarr.open_array(cache / "test" / "targets", mode="r")[3])]
    with pytest.raises(CacheError) as refused:
        train(cfg, cache=cache, out=tmp_path / "run", progress=False)
    assert str(refused.value) == (f"cache {cache / 'test'}: clip {clip!r} (row 3) has actions {was} there, this run's "
                                  "labels give ['Walking', 'Flying']: it was extracted from other annotations; extract "
                                  "this config into another --out")
    folder = other_annotations(data, tmp_path / "more", "train.txt", lambda lines: [*lines, "extra.mp4\t[('Fox', 'Walking')]"])
    with pytest.raises(CacheError, match=r"has no clip 'extra\.mp4' of this run's train split"):
        train(cfg_for(data, f"data.annotations={folder}"), cache=cache, out=tmp_path / "run", progress=False)
    swapped = {"3,Flying": "3,Swimming", "4,Swimming": "4,Flying"}
    folder = other_annotations(data, tmp_path / "names", "label.csv", lambda lines: [swapped.get(l, l) for l in lines])
    with pytest.raises(CacheError, match="extracted for other actions: at 3 the cache has 'Flying', this run 'Swimming'"):
        train(cfg_for(data, f"data.annotations={folder}"), cache=cache, out=tmp_path / "run", progress=False)
    # the dataset's unseen_species leaves training clips out; the cache keeps them, and that is fine
    result = train(cfg_for(data, "data.unseen_species=Fox", "train.epochs=1"), cache=cache, out=tmp_path / "unseen",
                   progress=False)
    assert result.report["unseen_species"]["clips"] > 0


def test_nan_features_are_refused_at_load_time(data: Path, cache: Path, run: Path, tmp_path: Path):
    damaged = copy_cache(cache, tmp_path)
    cls = zarr.open_array(damaged / "train" / "cls", mode="r+")
    for row in (2, 5, 6, 7, 9):
        values = cls[row]
        values[0, 1, 2] = np.nan if row != 9 else np.inf
        cls[row] = values
    ids = zarr.open_array(damaged / "train" / "clip_ids", mode="r")[...].tolist()
    message = (f"{damaged / 'train' / 'cls'}: 5 clips hold NaN/inf features ({ids[2]!r}, {ids[5]!r}, {ids[6]!r} and 2 "
               f"more): the cache is damaged; run `anim-clip cache verify {damaged}`")
    with pytest.raises(DamagedCache) as refused:
        train(cfg_for(data), cache=damaged, out=tmp_path / "run", progress=False)
    assert str(refused.value) == message
    with pytest.raises(DamagedCache, match="5 clips hold NaN/inf"):
        evaluate_checkpoint(run, damaged, split="train", out=tmp_path / "eval")
    tests = zarr.open_array(damaged / "test" / "cls", mode="r+")
    values = tests[1]
    values[...] = np.nan
    tests[1] = values
    with pytest.raises(DamagedCache, match=r"test/cls: 1 clips hold NaN/inf"):
        evaluate_checkpoint(run, damaged, out=tmp_path / "eval")


def _sets(data: Path) -> list[str]:
    """``--set`` options for the demo config of this module, for 6 epochs."""
    return [a for o in [*OVERRIDES, "train.epochs=6", f"data.annotations={data}", f"data.root={data / 'videos'}"]
            for a in ("--set", o)]


def _train_args(data: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "demo", "--cache", str(cache), "--out", str(out), *_sets(data), *extra]


def _train_process(data: Path, cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anim_clip", *_train_args(data, cache, out, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("damage", ["truncated chunk", "invalid zarr.json", "missing array"])
def test_a_damaged_cache_is_one_line_and_verify_lists_it(data: Path, cache: Path, tmp_path: Path, damage: str):
    damaged = copy_cache(cache, tmp_path)
    chunk = damaged / "train" / "cls" / "c" / "0" / "0" / "0" / "0"
    if damage == "truncated chunk":  # as a full disk or an interrupted copy leaves it
        chunk.write_bytes(chunk.read_bytes()[:1000])
        refused = f"{chunk}: checksum mismatch"
        listed = f"split 'train': {chunk}: checksum mismatch, its bytes changed after they were written (clips 0.."
    elif damage == "invalid zarr.json":
        (damaged / "test" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
        refused = f"{damaged / 'test' / 'zarr.json'} "
        listed = f"split 'test': {refused}cannot be read (JSONDecodeError: Unterminated string"
    else:
        shutil.rmtree(damaged / "train" / "done")
        refused = f"{damaged / 'train' / 'done'} "
        listed = f"split 'train': {refused}is missing"
    proc = _train_process(data, damaged, tmp_path / "run")
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert output.strip().splitlines()[-1].startswith(f"error: {refused}")
    assert output.strip().endswith(f": the cache is damaged; run `anim-clip cache verify {damaged}`")
    verify = subprocess.run([sys.executable, "-m", "anim_clip", "cache", "verify", str(damaged)], capture_output=True,
                            text=True, env={**os.environ, "COLUMNS": "200"}, timeout=300)
    assert verify.returncode == 1 and "Traceback" not in verify.stdout + verify.stderr
    assert verify.stdout.splitlines() == [line for line in verify.stdout.splitlines() if line.startswith("problem: ")]
    assert any(line.startswith(f"problem: {listed}") for line in verify.stdout.splitlines()), verify.stdout


def test_resume_after_kill_is_bit_exact(data: Path, cache: Path, tmp_path: Path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = _train_process(data, cache, whole)
    assert proc.wait(timeout=600) == 0, proc.stdout.read().decode()
    proc = _train_process(data, cache, killed)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        lines = (killed / "metrics.jsonl").read_text().splitlines() if (killed / "metrics.jsonl").exists() else []
        if sum('"kind": "epoch"' in line for line in lines) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(killed / "last.pt").extra["train_state"]["epoch"]
    assert 1 <= done < 6, f"could not kill mid-run (epoch {done})"
    proc = _train_process(data, cache, killed, "--resume")
    assert proc.wait(timeout=600) == 0, proc.stdout.read().decode()
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a.model.keys() == b.model.keys()
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2, 3, 4, 5, 6]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_with_other_settings_is_refused_unless_allowed(data: Path, cache: Path, run: Path, tmp_path: Path):
    resumed = shutil.copytree(run, tmp_path / "run")
    before = {name: (resumed / name).read_bytes() for name in ("config.yaml", "metrics.jsonl")}
    saved, changed = cfg_for(data), cfg_for(data, "train.epochs=4", "train.head_lr=0.002", "train.seed=7")
    with pytest.raises(AnimClipError, match=rf"saved -> now: train.epochs 3 -> 4, train.head_lr {saved.train.head_lr!r} "
                                            rf"-> 0.002, train.seed {saved.train.seed} -> 7\).*--allow-config-change"):
        train(changed, cache=cache, out=resumed, resume=True, progress=False)
    assert {name: (resumed / name).read_bytes() for name in before} == before

    train(changed, cache=cache, out=resumed, resume=True, progress=False, allow_config_change=True)
    records = _records(resumed)
    assert [r for r in records if r["kind"] == "config_change"] == [{"kind": "config_change", "epoch": 4, "changes": {
        "train.epochs": [3, 4], "train.head_lr": [saved.train.head_lr, 0.002], "train.seed": [saved.train.seed, 7]}}]
    assert config_to_dict(load_config(resumed / "config.yaml")) == config_to_dict(changed)
    # and the new settings are the ones used: epoch 4 follows head_lr 0.002's schedule over 4 epochs
    per_epoch, tc = records[[r["kind"] for r in records].index("epoch")]["step"], changed.train
    epoch4 = [r for r in records if r["kind"] == "step" and r["epoch"] == 4]
    assert epoch4 and all(r["lr"] == pytest.approx(learning_rate(r["step"] - 1, 0.002, tc.min_lr, 4 * per_epoch,
                                                                 round(tc.warmup_epochs * per_epoch))) for r in epoch4)


def test_a_rerun_over_a_run_killed_in_its_first_epoch_starts_clean(data: Path, cache: Path, tmp_path: Path):
    killed = tmp_path / "run"
    killed.mkdir()
    (killed / "config.yaml").write_text("train: {epochs: 9}\n")
    (killed / "metrics.jsonl").write_text(json.dumps({"kind": "step", "epoch": 1, "step": 1, "loss": 9.5}) + "\n")
    (killed / "best.pt").write_bytes(b"from the killed run")
    train(cfg_for(data, "train.epochs=1"), cache=cache, out=killed, progress=False)
    steps = [r for r in _records(killed) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)) and 9.5 not in [r["loss"] for r in steps]
    assert not (killed / "best.pt").exists() and load_config(killed / "config.yaml").train.epochs == 1


def test_a_train_failing_before_its_first_epoch_leaves_no_run_directory(data: Path, cache: Path, tmp_path: Path):
    with pytest.raises(CacheError, match="no feature cache here"):
        train(cfg_for(data), cache=tmp_path / "absent.zarr", out=tmp_path / "run", progress=False)
    with pytest.raises(AnimClipError, match="lower train.accumulation"):  # 20 clips cannot fill 32 batches
        train(cfg_for(data, "train.accumulation=32"), cache=cache, out=tmp_path / "run", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "extract"])
def test_a_read_only_folder_is_one_line_naming_the_output(data: Path, cache: Path, tmp_path: Path, command: str):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    out = folder / ("run" if command == "train" else "cache.zarr")
    args = _train_args(data, cache, out) if command == "train" else ["extract", "demo", "--out", str(out), *_sets(data)]
    proc = run_cli(*args, check=False, wrap=unprivileged())
    assert proc.returncode == 2 and proc.stdout.splitlines()[-1] == f"error: {out}: Permission denied", proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr and list(folder.iterdir()) == []


def test_a_full_disk_during_training_is_one_line_and_leaves_no_half_file(data: Path, cache: Path, tmp_path: Path):
    folder = tmp_path / "small-disk"
    folder.mkdir()
    proc = run_cli(*_train_args(data, cache, folder / "run"), check=False, wrap=on_small_disk(folder, 48))
    assert proc.returncode == 2 and f"error: {folder / 'run' / 'last.pt'}: No space left on device" in proc.stdout, (
        proc.stdout + proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].split() == ["files", "left:", "./run", "./run/.lock", "./run/config.yaml",
                                                   "./run/metrics.jsonl"]


def test_a_full_disk_during_extraction_is_one_line(data: Path, tmp_path: Path):
    """zarr's chunk writes name no file; the command line still says what happened in one line."""
    proc = run_cli("extract", "demo", "--out", str(tmp_path / "cache.zarr"), *_sets(data), check=False,
                   wrap=size_limited(8192))
    assert proc.returncode == 2 and proc.stdout.splitlines()[-1] == "error: File too large, writing this command's output"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_losses_match_their_formulas():
    logits = torch.randn(5, 7)
    targets = (torch.rand(5, 7) < 0.3).float()
    targets[:, 0] = 1
    log_p = logits.log_softmax(-1)
    assert LOSSES["ce"](logits, targets) == pytest.approx(float(-(targets * log_p).sum(1).mean()), rel=1e-6)
    normed = targets / targets.sum(1, keepdim=True)
    assert LOSSES["ce_norm"](logits, targets) == pytest.approx(float(-(normed * log_p).sum(1).mean()), rel=1e-6)
    assert LOSSES["bce"](logits, targets) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)), rel=1e-6)
    confident = LOSSES["asl"](targets * 20 - 10, targets)
    assert confident < LOSSES["asl"](logits, targets) and confident >= 0


def test_schedule_warmup_cosine_and_floor():
    assert learning_rate(0, 1.0, 0.01, 100, 10) == pytest.approx(0.1)  # the first step already moves the weights
    assert learning_rate(4, 1.0, 0.01, 100, 10) == pytest.approx(0.5)
    assert learning_rate(9, 1.0, 0.01, 100, 10) == pytest.approx(1.0)  # the warm-up's last step reaches the rate
    assert learning_rate(0, 1.0, 0.01, 100, 1) == pytest.approx(1.0)
    assert learning_rate(50, 1.0, 0.01, 100, 10) == pytest.approx(0.01 + 0.99 * 0.5)  # cosine counted from step 0
    assert learning_rate(100, 1.0, 0.01, 100, 10) == pytest.approx(0.01)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW([{"params": [model.weight], "lr": 8e-6}, {"params": [model.bias], "lr": 8e-5}])
    sched = WarmupCosine(opt, total_steps=100, warmup_steps=5, min_lr=8e-8)
    sched.apply(100)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([8e-8, 8e-8])  # one floor for every group


def test_release_parameter_groups():
    from anim_clip.config import load_config
    from anim_clip.models.factory import end_to_end

    model = end_to_end(load_config("demo", ["backbone.pretrained=null"]), load_pretrained=False)
    groups = {g["name"]: g for g in param_groups(model, TrainConfig(), whole_model_is_head=False)}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    assert "visual.conv1.weight" in members["backbone"]
    assert any("message_fc.weight" in n for n in members["new"]) and "head.refine.w1" in {
        n for n in members["new"]} | {"head.refine.w1"}
    assert any(n.endswith("positional_embedding") for n in members["backbone-no-decay"] | members["new-no-decay"])
    assert not any("positional_embedding" in n for n in members["backbone"] | members["new"])
    assert not any(n.startswith("text.") for m in members.values() for n in m)  # frozen text tower
    assert groups["new"]["lr"] == 8e-5 and groups["backbone"]["lr"] == 8e-6
    assert groups["new-no-decay"]["weight_decay"] == 0 and groups["new"]["weight_decay"] == 1e-3


def test_mixing_keeps_mass_and_mixes_species():
    g = torch.Generator().manual_seed(0)
    cls = torch.arange(4.0)[:, None, None].expand(4, 8, 3).clone()
    batch = Batch(FrameFeatures(cls), torch.eye(4), torch.eye(4)[:, :3])
    for _ in range(20):
        mixed = mix_batch(batch, mixup_alpha=0.8, cutmix_alpha=1.0, mix_species=True, generator=g)
        assert torch.allclose(mixed.targets.sum(1), torch.ones(4))
        lam = mixed.targets.max(1).values
        # every clip is a λ-mixture of itself and one partner, in its features too (mean over frames)
        own = mixed.targets.diagonal()
        partner = mixed.targets.argmax(1) if (own < 0.5).any() else None
        assert torch.allclose(mixed.features.cls.mean((1, 2)), (mixed.targets * torch.arange(4.0)).sum(1), atol=1e-5)
        assert torch.allclose(mixed.species, (mixed.targets @ torch.eye(4)[:, :3]))
        del lam, partner
    unmixed = mix_batch(batch, mixup_alpha=0.8, cutmix_alpha=0.0, mix_species=False, generator=g)
    assert torch.equal(unmixed.species, batch.species)


@pytest.mark.parametrize("clips, batch_size, world, accumulation, min_steps, batches", [
    (48, 32, 1, 1, 1, 2),  # the 48 clips: two batches of 24, not one of 32 and 16 unseen
    (240, 32, 1, 1, 1, 8),
    (47, 32, 1, 1, 8, 8),  # a small set takes smaller batches, not fewer steps
    (20, 4, 1, 2, 1, 6),
    (16, 2, 2, 2, 1, 4),
    (5, 4, 2, 1, 8, 2),  # as many batches as keep a clip on every process
])
def test_every_clip_every_epoch_in_even_batches(clips, batch_size, world, accumulation, min_steps, batches):
    assert batches_per_epoch(clips, batch_size, world, accumulation, min_steps) == batches
    order = torch.randperm(clips, generator=torch.Generator().manual_seed(clips))
    plans = [EpochPlan(0, clips, batches, accumulation, rank, world) for rank in range(world)]
    shares = [plan.slices(order) for plan in plans]
    seen = torch.cat([share[b] for b in range(batches) for share in shares])
    assert sorted(seen.tolist()) == list(range(clips))  # every clip once: no remainder dropped
    sizes = [sum(len(share[b]) for share in shares) for b in range(batches)]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= batch_size * world and min(sizes) >= world
    for step in range(batches // accumulation):
        in_step = range(step * accumulation, (step + 1) * accumulation)
        step_clips = sum(sizes[b] for b in in_step)
        # DDP's mean over ranks of the weighted rank losses, summed over the step's batches, is the
        # mean over the step's clips: each clip weighs 1 / step_clips, on every rank and batch
        for plan, share in zip(plans, shares):
            for b in in_step:
                assert plan.loss_weight(b) / world == pytest.approx(len(share[b]) / step_clips)


def test_too_few_clips_for_the_batches_is_one_line():
    with pytest.raises(AnimClipError, match=r"3 training clips cannot give each of 1 process\(es\) a clip in each of "
                                            r"4 batches \(train.accumulation=4\): lower train.accumulation"):
        batches_per_epoch(3, 4, 1, 4)


def test_an_epoch_of_cached_batches_covers_every_clip(data: Path, cache: Path):
    from anim_clip.cache.reader import open_cached_data

    cfg = cfg_for(data)
    _, splits = open_cached_data(cfg, cache, load_dataset(cfg.data), torch.device("cpu"), HeadInputs.of_config(cfg))
    train_data = CachedTrainData(splits["train"])
    clips = len(train_data.indices)
    batches = batches_per_epoch(clips, 8, 1, 1)
    seen = [len(batch.targets) for batch in train_data.epoch_batches(EpochPlan(0, clips, batches, 1, 0, 1),
                                                                     epoch_generator(0, 0))]
    assert sum(seen) == clips and len(seen) == batches == 3 and max(seen) - min(seen) <= 1


def test_one_line_per_epoch_and_the_schedule_in_steps(data: Path, cache: Path, tmp_path: Path):
    """The console gets one line per epoch (and one bar for the whole run); metrics.jsonl one record per
    epoch; a small set with train.min_steps_per_epoch takes that many steps, the first above rate 0."""
    overrides = [f"--set={o}" for o in (*OVERRIDES, "train.log_every=1000", "train.min_steps_per_epoch=10",
                                        "train.accumulation=1", f"data.annotations={data}", f"data.root={data}/videos")]
    proc = run_cli("train", "demo", "--cache", str(cache), "--out", str(tmp_path / "run"), *overrides)
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if ": loss " in line] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert sum("steps/s" in line for line in lines) == 1, proc.stdout  # the run's bar, once at its end (not a tty)
    records = _records(tmp_path / "run")
    # 20 clips at batch 4 would make 5 steps an epoch; at least 10 asked: 10 batches of 2
    assert [(r["kind"], r["epoch"], r["step"]) for r in records] == [("epoch", 1, 10), ("epoch", 2, 20),
                                                                     ("epoch", 3, 30)]
    assert records[0]["lr"] == pytest.approx(cfg_for(data).train.head_lr)  # one warm-up epoch of 10 steps, ended
