"""What end-to-end training costs next to cached training of the same model.

1. Training steps of the same Animal-CLIP model in both modes on the same synthetic batch: the head
   on cached per-frame features, and the cross-frame ViT + head on pixels (random weights, the
   release's mixup/CutMix on, soft-target CE, AdamW with the release's groups), for ViT-B/16 and
   the tiny model, gradient checkpointing off and on. Step time, clips/s, peak memory.
2. One epoch of phase two on an Animal-Kingdom-sized cache held in memory (30 000 clips × V=4
   views, synthetic features): the engine's gather, mix, forward, backward and step, batch 16.
3. The end-to-end input pipeline on a real 1280×720 video: decode + TSN/multi-scale crop/flip,
   then resize, per-frame colour jitter and normalisation, per clip (one process, no workers).

Every case runs in a fresh process so its peak memory is its own: on CPU the peak resident set
(``ru_maxrss``) and its growth over the process after the model was built (activations, gradients,
optimiser state); on a GPU ``torch.cuda.max_memory_allocated``. On CPU the cases use ``--threads``
intra-op threads (default 1: on a shared machine, OpenMP threads that wait for each other make
wall times swing several-fold, while one thread's time is what the work costs) and report wall and
CPU seconds. On a GPU (``--device cuda``) the steps run in bf16 autocast at the release's batch
(16 clips × 8 frames).

    python -m benchmarks.bench_train [--device cpu|cuda] [--threads N] [--quick]   (writes results/train.json)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from anim_clip.config import Config, load_config
from anim_clip.data.dataset import Clip, Dataset, load_dataset
from anim_clip.data.transforms import color_augment
from anim_clip.runtime.precision import training_autocast
from anim_clip.models.factory import end_to_end
from anim_clip.models.features import FrameFeatures
from anim_clip.train.engine import batch_loss, freeze_dead_parameters
from anim_clip.train.losses import LOSSES
from anim_clip.models.features import Batch
from anim_clip.train.mixing import mix_batch
from anim_clip.train.optim import make_optimizer
from anim_clip.train.videos import VideoTrainData, decode_train_clip
from anim_clip.ui import console, table
from benchmarks.common import REAL_CLIP, save

VIDEO = REAL_CLIP
AK_CLIPS, AK_VIEWS = 30_000, 4
MB = 2**20


def ak_config(model: str, frames: int, mode: str, precision: str) -> Config:
    """The release recipe (``ak``) for ``mode``: the engine reads the mode for the step's precision."""
    return load_config("ak", ["backbone.pretrained=null", f"backbone.model={model}", f"sampling.num_frames={frames}",
                              f"train.mode={mode}", f"runtime.precision={precision}"])


def ak_model(cfg: Config, mode: str, checkpointing: bool) -> torch.nn.Module:
    """The AK-sized model (140 actions, 897 species, the release graph) with random text embeddings."""
    dataset = load_dataset(cfg.data)
    model = end_to_end(cfg)  # the head shaped by the tower
    head, dim = model.head, model.head.dims["embed_dim"]
    g = torch.Generator().manual_seed(0)
    head.set_vocabulary(torch.randn(dataset.num_actions, dim, generator=g), torch.randn(dataset.num_species, dim, generator=g),
                        torch.from_numpy(dataset.graph("release").adjacency()))
    if mode == "cached":
        return head
    model.set_grad_checkpointing(checkpointing)
    return model


def labels(n: int, cfg: Config, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-hot targets (about 2 actions per clip, as AK) and one species per clip."""
    dataset = load_dataset(cfg.data)
    targets = (torch.rand(n, dataset.num_actions, generator=g) < 2 / dataset.num_actions).to(torch.uint8)
    targets[torch.arange(n), torch.randint(dataset.num_actions, (n,), generator=g)] = 1
    species = torch.zeros(n, dataset.num_species, dtype=torch.uint8)
    species[torch.arange(n), torch.randint(dataset.num_species, (n,), generator=g)] = 1
    return targets, species


class Memory:
    """Peak memory since the process started (CPU: resident set; GPU: allocated by torch)."""

    def __init__(self, device: torch.device):
        self.device = device

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, cfg: Config,
               device: torch.device, g: torch.Generator) -> None:
    """One step as the engine takes it (accumulation 1)."""
    mixed = mix_batch(batch, mixup_alpha=0.8, cutmix_alpha=1.0, mix_species=False, generator=g)
    with training_autocast(cfg, device):
        loss = batch_loss(model, mixed, LOSSES["ce"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_case(spec: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(spec["device"])
    cfg = ak_config(spec["model"], spec["frames"], spec["mode"], spec["precision"])
    model = ak_model(cfg, spec["mode"], spec["checkpointing"]).to(device)
    freeze_dead_parameters(model)
    optimizer = make_optimizer(model, cfg.train, whole_model_is_head=spec["mode"] == "cached")
    g = torch.Generator().manual_seed(0)
    b, t = spec["batch"], spec["frames"]
    if spec["mode"] == "cached":
        inputs = FrameFeatures(torch.randn(b, t, model.dims["embed_dim"], generator=g).to(device))
    else:
        size = model.visual.positional_embedding.shape[0]
        side = round((size - 1) ** 0.5) * model.visual.conv1.kernel_size[0]
        inputs = torch.randn(b, t, 3, side, side, generator=g).to(device)
    targets, species = labels(b, cfg, g)
    batch = Batch(inputs, targets.float().to(device), species.float().to(device))
    memory = Memory(device)
    built = memory.peak_mb()
    times, cpu = [], []
    for _ in range(spec["warmup"] + spec["steps"]):
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        train_step(model, optimizer, batch, cfg, device, g)
        sync(device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    step = statistics.median(times[spec["warmup"]:])
    return {**spec, "step_s": step, "step_cpu_s": statistics.median(cpu[spec["warmup"]:]), "clips_per_s": b / step,
            "peak_mb": memory.peak_mb(), "built_mb": built,
            "training_mb": memory.peak_mb() - built,
            "trainable_params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6}


def ak_epoch_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Phase two on an in-memory AK-sized cache: timed steps, extrapolated to the epoch."""
    device = torch.device(spec["device"])
    cfg = ak_config("ViT-B-16", 8, "cached", spec["precision"])
    g = torch.Generator().manual_seed(0)
    memory = Memory(device)
    before = memory.peak_mb()
    cls = torch.empty(AK_CLIPS, AK_VIEWS, 8, 512, dtype=torch.float16).normal_(generator=g).to(device)
    targets, species = (x.to(device) for x in labels(AK_CLIPS, cfg, g))
    cache_mb = memory.peak_mb() - before
    head = ak_model(cfg, "cached", False).to(device)
    freeze_dead_parameters(head)
    optimizer = make_optimizer(head, cfg.train, whole_model_is_head=True)
    b = spec["batch"]
    order = torch.randperm(AK_CLIPS, generator=g).to(device)
    views = torch.randint(AK_VIEWS, (AK_CLIPS,), generator=g).to(device)
    steps_per_epoch = AK_CLIPS // b
    timed = min(spec["steps"], steps_per_epoch)
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for s in range(timed):
        rows, v = order[s * b:(s + 1) * b], views[s * b:(s + 1) * b]
        batch = Batch(FrameFeatures(cls[rows, v].float()), targets[rows].float(), species[rows].float())
        train_step(head, optimizer, batch, cfg, device, g)
    sync(device)
    step = (time.perf_counter() - start) / timed
    return {**spec, "clips": AK_CLIPS, "views": AK_VIEWS, "steps_per_epoch": steps_per_epoch, "timed_steps": timed,
            "step_s": step, "step_cpu_s": (time.process_time() - start_cpu) / timed, "clips_per_s": b / step,
            "epoch_s": step * steps_per_epoch, "cache_mb": cache_mb,
            "peak_mb": memory.peak_mb()}


def pipeline_case(spec: dict[str, Any]) -> dict[str, Any]:
    """The e2e input of ``batch`` clips of a real video at the release's 224 px, one process."""
    cfg = ak_config("ViT-B-16", 8, "e2e", "fp32")
    n = spec["batch"] * spec["batches"]
    clips = [Clip(VIDEO.name, (0,), (0,), ())] * n
    dataset = Dataset("bench", ["a"], ["s"], {"train": clips}, None, VIDEO.parent)
    data = VideoTrainData(dataset, "train", torch.arange(n), cfg, torch.device("cpu"))
    decode_s = render_s = 0.0
    for k in range(spec["batches"]):
        start = time.perf_counter()
        decoded = [decode_train_clip(data.paths, cfg, 0, i) for i in range(k * spec["batch"], (k + 1) * spec["batch"])]
        decode_s += time.perf_counter() - start
        start = time.perf_counter()
        data.batch(decoded, 0)
        render_s += time.perf_counter() - start
    frames = torch.rand(spec["batch"], 8, 3, 224, 224)
    start = time.perf_counter()
    color_augment(frames, torch.Generator().manual_seed(0))
    colour_s = (time.perf_counter() - start) * spec["batches"]
    return {**spec, "video": VIDEO.name, "decode_ms_per_clip": 1e3 * decode_s / n,
            "render_augment_ms_per_clip": 1e3 * render_s / n, "colour_jitter_ms_per_clip": 1e3 * colour_s / n,
            "clips_per_s": n / (decode_s + render_s)}


CASES = {"step": step_case, "ak_epoch": ak_epoch_case, "pipeline": pipeline_case}


def in_subprocess(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in a fresh interpreter (its own peak memory); its result is the last stdout line."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_train", "--case", json.dumps({"kind": kind, **spec})],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan(device: str, threads: int, quick: bool) -> list[tuple[str, dict[str, Any]]]:
    gpu = device == "cuda"
    vit_batch = 16 if gpu else 2  # the release's batch on a GPU; what two CPU cores finish in seconds
    steps, warmup = (10, 3) if gpu else ((1, 1) if quick else (2, 1))
    cases = []
    for model, batch, frames in (("ViT-B-16", vit_batch, 8), ("anim-clip-tiny", 16, 8)):
        # one precision for both modes, so their ratio is the caching's alone (auto on a CPU would
        # give the head bf16 and the end-to-end model fp32)
        base = {"device": device, "threads": threads, "model": model, "batch": batch, "frames": frames, "steps": steps,
                "warmup": warmup, "precision": "auto" if gpu else "fp32"}
        cases.append(("step", {**base, "mode": "cached", "checkpointing": False}))
        cases += [("step", {**base, "mode": "e2e", "checkpointing": c}) for c in (False, True)]
    if not gpu:  # the head at the release's batch, which the e2e model cannot take on two CPU cores
        cases += [("step", {"device": device, "threads": threads, "model": "ViT-B-16", "batch": 16, "frames": 8,
                            "steps": 5, "warmup": 1, "mode": "cached", "checkpointing": False, "precision": p})
                  for p in ("fp32", "auto")]
    # a whole epoch where it takes minutes (GPU); timed steps extrapolated to the epoch on two CPU cores
    cases += [("ak_epoch", {"device": device, "threads": threads, "batch": 16, "precision": p,
                            "steps": AK_CLIPS // 16 if gpu else (5 if quick else 30)}) for p in ("fp32", "auto")]
    if VIDEO.is_file():
        cases.append(("pipeline", {"device": "cpu", "threads": threads, "batch": 4, "batches": 2 if quick else 4}))
    return cases


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Cached over e2e throughput for each model at the same batch."""
    out = {}
    steps = [r for r in results if r["kind"] == "step"]
    for r in steps:
        if r["mode"] == "e2e" and not r["checkpointing"]:
            cached = next(c for c in steps if c["mode"] == "cached" and c["model"] == r["model"] and c["batch"] == r["batch"])
            ckpt = next(c for c in steps if c["mode"] == "e2e" and c["checkpointing"] and c["model"] == r["model"])
            out[r["model"]] = {"batch": r["batch"], "cached_over_e2e_clips_per_s": cached["clips_per_s"] / r["clips_per_s"],
                               "checkpointing_step_time_factor": ckpt["step_s"] / r["step_s"],
                               "checkpointing_training_mb_saved": r["training_mb"] - ckpt["training_mb"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of each case (CPU)")
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run, figures not for the record)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        spec = json.loads(args.case)
        torch.set_num_threads(spec["threads"])
        print(json.dumps({"kind": spec["kind"], **CASES[spec.pop("kind")](spec)}))
        return
    load_before = os.getloadavg()
    results = []
    for kind, spec in plan(args.device, args.threads, args.quick):
        console.print(f"{kind} {spec}")
        results.append(in_subprocess(kind, spec))
    report = {"case_threads": args.threads, "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
              "quick": args.quick, "results": results, "summary": summary(results)}
    save("train-quick" if args.quick else "train", report)
    steps = [r for r in results if r["kind"] == "step"]
    console.print(table("training steps", ["model", "mode", "batch x T", "grad ckpt", "step s", "CPU s", "clips/s",
                                           "peak MB", "training MB"],
                        [[r["model"], r["mode"], f"{r['batch']}x{r['frames']}", r["checkpointing"], f"{r['step_s']:.3f}",
                          f"{r['step_cpu_s']:.3f}", f"{r['clips_per_s']:.2f}", f"{r['peak_mb']:.0f}",
                          f"{r['training_mb']:.0f}"] for r in steps]))
    console.print(json.dumps(report["summary"], indent=2))
    for r in results:
        if r["kind"] != "step":
            console.print(json.dumps(r))


if __name__ == "__main__":
    main()
