"""torchrun with two CPU processes (gloo, 127.0.0.1): both ranks end with identical weights, equal to
one process training on the same global batch, in cached and in end-to-end mode."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anim_clip.cache.extract import extract
from anim_clip.demo import demo_config
from anim_clip.train.engine import train

# Mixup off: the release mixes within each rank's batch, which a single process cannot reproduce.
# AdamW's eps raised from 1e-8: an element whose gradient is about eps moves by ±lr at the first step
# depending on its last rounding bit, so with 1e-8 fp32 summation order alone decides a few weights;
# with 1e-3 the update is a smooth function of the gradient and the weights differ by rounding only.
COMMON = ["backbone.pretrained=null", "runtime.precision=fp32", "sampling.num_frames=4", "sampling.train_views=2", "train.accumulation=2",
          "train.epochs=1", "train.warmup_epochs=0", "train.mixup_alpha=0", "train.cutmix_alpha=0", "train.eps=1e-3",
          "train.num_workers=0", "train.log_every=1", "train.min_steps_per_epoch=1"]  # full batches, not the demo's 8 steps
PER_RANK_BATCH = 2


@pytest.fixture(scope="module")
def data(demo_data) -> Path:
    return demo_data(train_clips=16, test_clips=6, num_frames=16, size=64, seed=11)  # read only here


@pytest.fixture(scope="module")
def cache(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "cache.zarr"
    extract(demo_config(data, COMMON), out, progress=False)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(data: Path, out: Path, mode: str, cache: Path | None) -> None:
    """``torchrun --nproc-per-node 2``; each rank trains and saves the weights it ends with."""
    overrides = [*COMMON, f"train.mode={mode}", f"train.batch_size={PER_RANK_BATCH}"]
    code = (
        "import os, torch; from pathlib import Path; from anim_clip.demo import demo_config; "
        "from anim_clip.train.engine import train; "
        f"r = train(demo_config(Path({str(data)!r}), {overrides!r}), cache={None if cache is None else str(cache)!r}, "
        f"out={str(out)!r}, progress=False); "
        f"torch.save(r.model.state_dict(), Path({str(out)!r}) / f\"rank{{os.environ['RANK']}}.pt\")"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--no-python", sys.executable, "-c", code]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout.decode()[-5000:]


@pytest.mark.parametrize("mode", ["cached", "e2e"])
def test_two_ranks_equal_one_process_with_the_global_batch(data: Path, cache: Path, tmp_path: Path, mode: str):
    torchrun(data, tmp_path / "ddp", mode, cache if mode == "cached" else None)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1)]
    single = train(demo_config(data, [*COMMON, f"train.mode={mode}", f"train.batch_size={2 * PER_RANK_BATCH}"]),
                   cache=cache if mode == "cached" else None, out=tmp_path / "single", progress=False)
    reference = single.model.state_dict()
    assert ranks[0].keys() == ranks[1].keys() == reference.keys()
    for key in reference:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"ranks differ in {key}"
        # gradients are averaged in another order than one batch sums them: fp32 rounding only
        torch.testing.assert_close(ranks[0][key], reference[key], atol=1e-5, rtol=1e-4, msg=key)
    saved = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], ranks[0][k].cpu()) for k in saved)  # rank 0 wrote the checkpoint
    ddp_report, single_report = (json.loads((p / "eval.json").read_text()) for p in (tmp_path / "ddp", tmp_path / "single"))
    assert ddp_report["clips"] == single_report["clips"] == 6  # scores gathered from both ranks
    assert ddp_report["mAP"] == pytest.approx(single_report["mAP"], abs=1e-4)
    steps = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == [1, 2]  # 16 clips / (2 ranks x 2) / accumulation 2
