"""A phase-two training step of an Animal-Kingdom-sized head: fp32, bf16 autocast and torch.compile,
at batch 16, 64 and 256, with and without the text half deduplicated within the batch.

The head is ViT-B/16-sized (D = 512, T = 8) on AK's vocabulary and release graph (140 actions, 897
species) at random weights; a batch is random features of clips drawn from AK's training list with
their annotated species and actions; one step is forward, soft-target CE, backward and AdamW.
"dedup" is the head as it is (the text half once per distinct species vector of the batch); "per
clip" computes the text half for every clip, as the head did before. Species are the annotation
(``train.mix_species=false``, the release) or mixed with mixup's lambda (the default), which leaves
fewer rows equal. One process, ``--threads`` threads; compile time is reported apart.

    python -m benchmarks.bench_head [--device cpu|cuda] [--threads N] [--quick]   (results/head.json)
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from anim_clip.models.features import FrameFeatures
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.runtime.precision import autocast
from anim_clip.train.losses import LOSSES
from benchmarks.bench_eval import D, T, ak_head
from benchmarks.common import save, seconds_per_call


def per_clip_logits(head: AnimalCLIPHead, features: FrameFeatures, species: torch.Tensor) -> torch.Tensor:
    """The head before deduplication: every clip's text half computed for it."""
    used = head.species_vector(features.cls, species)
    return head.score(features, used, head.conditioned_text(used), torch.arange(len(used), device=used.device)).logits


def batch(species: torch.Tensor, targets: torch.Tensor, size: int, mixed: bool, device: torch.device,
          gen: torch.Generator) -> tuple[FrameFeatures, torch.Tensor, torch.Tensor]:
    rows = torch.randint(len(species), (size,), generator=gen)
    s, y = species[rows], targets[rows]
    if mixed:  # mixup's lambda and partner, as the training loop mixes species by default
        lam, partner = 0.7, torch.randperm(size, generator=gen)
        s, y = lam * s + (1 - lam) * s[partner], lam * y + (1 - lam) * y[partner]
    return FrameFeatures(torch.randn(size, T, D, generator=gen).to(device)), s.to(device), y.to(device)


def step_seconds(forward, optimizer, inputs, precision: str, device: torch.device, repeats: int) -> float:
    features, species, targets = inputs

    def step() -> None:
        with autocast(precision, device, "head"):
            loss = LOSSES["ce"](forward(features, species), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return seconds_per_call(step, device, repeats, warmup=1)  # the warm-up step compiles, when compiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="batch 16 only, one repeat")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches, repeats = ([16], 1) if args.quick else (args.batches, args.repeats)
    head, dataset = ak_head()
    species, targets = torch.from_numpy(dataset.species_vectors("train")), torch.from_numpy(dataset.targets("train"))
    head = head.to(device).train()
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []
    for size in batches:
        for mixed in (False, True):
            inputs = batch(species, targets, size, mixed, device, gen)
            distinct = len(torch.unique(inputs[1], dim=0))
            row: dict[str, Any] = {"batch": size, "species": "mixed" if mixed else "annotated",
                                   "distinct_species_vectors": distinct}
            for name, precision in (("fp32", "fp32"), ("bf16", "bf16")):
                row[f"{name}_dedup_s"] = step_seconds(lambda f, s: head(f, s).logits, optimizer, inputs, precision,
                                                      device, repeats)
                row[f"{name}_per_clip_s"] = step_seconds(lambda f, s: per_clip_logits(head, f, s), optimizer, inputs,
                                                         precision, device, repeats)
            print(row, flush=True)
            rows.append(row)
    compiled = torch.compile(head, dynamic=True)
    for size in batches:
        inputs = batch(species, targets, size, False, device, gen)
        start = time.perf_counter()
        step_seconds(lambda f, s: compiled(f, s).logits, optimizer, inputs, "fp32", device, 1)
        row = {"batch": size, "species": "annotated", "compile_and_two_steps_s": time.perf_counter() - start,
               "compiled_fp32_dedup_s": step_seconds(lambda f, s: compiled(f, s).logits, optimizer, inputs, "fp32",
                                                     device, repeats),
               "eager_fp32_dedup_s": step_seconds(lambda f, s: head(f, s).logits, optimizer, inputs, "fp32", device,
                                                  repeats)}
        print(row, flush=True)
        rows.append(row)
    save("head", {"device": str(device), "threads": args.threads, "repeats": repeats, "rows": rows})


if __name__ == "__main__":
    main()
