"""Evaluation at Animal Kingdom's shape: the per-view scoring of before against the one scoring path.

The AK test split as the release lists it (6 096 clips, their annotated species vectors, 140
actions, 897 species, the release's relation graph) with 4 clips x 3 crops = 12 views of 8 frames
per clip, cached as random fp16 features in a real zarr store, scored by a ViT-B/16-sized head
(D = 512) at random weights in fp32, one process, ``--threads`` threads:

- per view: what evaluation did before, the head run on each view with its own text half (graph
  refinement + text prompt over the 140 class embeddings), 5 clips (60 views) per call;
- the path (:func:`anim_clip.evaluate.scoring.split_scores`): the text half once per distinct
  species vector of the split, the video half per view.

The per-view path costs the same per clip whatever the clip, so it is timed on the first
``--per-view-clips`` clips; the path runs on the whole split. ``max_abs_logit_diff`` compares the two
paths' logits on the clips both ran. Also: predicted species (a softmax per view, so every view's
vector is distinct and the path deduplicates nothing), and the path in bf16 autocast.

    python -m benchmarks.bench_eval [--device cpu|cuda] [--threads N] [--quick]   (results/eval.json)

``--quick`` runs a subset (600 clips; 24 per view) and writes only the file's ``quick`` entry.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anim_clip.cache.reader import CachedSplitData
from anim_clip.cache.store import FeatureCache, SplitSpec, SplitWriter, create_split, create_store
from anim_clip.config import Config, DataConfig
from anim_clip.data.dataset import Dataset, load_dataset
from anim_clip.evaluate.scoring import probabilities, score_views, split_scores
from anim_clip.models.features import FrameFeatures
from anim_clip.models.head import AnimalCLIPHead
from benchmarks.common import RESULTS, save

D, T, VIEWS = 512, 8, 12


def ak_head(seed: int = 0) -> tuple[AnimalCLIPHead, Dataset]:
    """A ViT-B/16-sized head at random weights on AK's vocabulary and release graph, and the dataset."""
    dataset = load_dataset(DataConfig(format="ak"))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = AnimalCLIPHead(Config().model, embed_dim=D, num_frames=T,
                          adjacency=torch.from_numpy(dataset.graph("release").adjacency()),
                          action_text=torch.randn(dataset.num_actions, D, generator=gen),
                          species_text=torch.randn(dataset.num_species, D, generator=gen))
    return head.eval(), dataset


def cached_split(root: Path, species: np.ndarray, device: torch.device, seed: int = 0) -> CachedSplitData:
    """A real store holding random features of every clip's 12 views, read onto ``device``."""
    n = len(species)
    create_store(root, {"benchmark": "eval", "backbone": {"embed_dim": D, "patches": "none"},  # what readers check
                        "sampling": {"num_frames": T, "test_clips": 4, "test_crops": 3}})
    create_split(root, "test", SplitSpec([f"clip{i:05d}" for i in range(n)], np.zeros((n, 140)), species,
                                         VIEWS, T, D, "4 clips x 3 crops"))
    gen = torch.Generator().manual_seed(seed)
    with SplitWriter(root, "test") as writer:
        for i in writer.pending:
            writer.write(i, FrameFeatures(torch.randn(VIEWS, T, D, generator=gen)), np.zeros((VIEWS, T)), "synthetic")
    split = FeatureCache(root).split("test", device)
    return CachedSplitData(split, torch.arange(n, device=device), needs_patches=False)


def per_view_logits(head: AnimalCLIPHead, data: CachedSplitData, rows: torch.Tensor) -> torch.Tensor:
    """``(N·V, C)``: evaluation before the path, every view with its own text half, as many clips
    per call as fit ``eval.batch_size`` (64) views."""
    out, v = [], data.num_views
    with torch.no_grad():
        for part in rows.split(max(1, 64 // v)):
            views = torch.arange(v, device=part.device).repeat(len(part))
            features = data.split.features(part.repeat_interleave(v), views)
            features = FrameFeatures(features.cls.float())
            species = head.species_vector(features.cls, data.split.species[part].float().repeat_interleave(v, 0))
            text = head.conditioned_text(species)
            out.append(head.score(features, species, text, torch.arange(len(species))).logits)
    return torch.cat(out)


def path_logits(head: AnimalCLIPHead, data: CachedSplitData, rows: torch.Tensor, cfg: Config) -> torch.Tensor:
    """``(N·V, C)`` logits of the same views through the path (views held in memory)."""
    cls = data.split.cls[rows].float()
    return score_views(head, FrameFeatures(cls.flatten(0, 1)), data.split.species[rows].float().repeat_interleave(VIEWS, 0),
                       cfg).logits


def timed(fn) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(head: AnimalCLIPHead, data: CachedSplitData, cfg: Config, clips: int, per_view_clips: int) -> dict[str, Any]:
    """The per-view path on ``per_view_clips`` clips, the path on ``clips``; both on ``cfg``'s precision."""
    rows = torch.arange(clips, device=data.indices.device)
    checked = rows[:per_view_clips]
    scores, seconds = timed(lambda: split_scores(head, data, rows, cfg))
    old, old_seconds = timed(lambda: per_view_logits(head, data, checked))
    new = path_logits(head, data, checked, cfg)
    old_scores = probabilities(old, cfg.eval.scores).view(len(checked), VIEWS, -1).mean(1)
    distinct = (len(torch.unique(data.split.species[rows].float(), dim=0)) if head.cfg.species_source == "oracle"
                else clips * VIEWS)  # predicted: a soft vector per view
    return {
        "clips": clips, "views": VIEWS, "distinct_species_vectors": distinct,
        "per_view_clips": per_view_clips, "per_view_seconds": old_seconds,
        "per_view_clips_per_s": per_view_clips / old_seconds,
        "seconds": seconds, "clips_per_s": clips / seconds,
        "speedup": (clips / seconds) / (per_view_clips / old_seconds),
        "max_abs_logit_diff": float((new - old).abs().max()),
        "max_abs_score_diff": float((scores[:per_view_clips] - old_scores).abs().max()),
    }


def run(head: AnimalCLIPHead, data: CachedSplitData, clips: int, per_view_clips: int,
        predicted_clips: int) -> dict[str, Any]:
    fp32 = dataclasses.replace(Config(), runtime=dataclasses.replace(Config().runtime, precision="fp32"))
    bf16 = dataclasses.replace(fp32, runtime=dataclasses.replace(fp32.runtime, precision="bf16"))
    result = compare(head, data, fp32, clips, per_view_clips)
    print(f"oracle species, fp32: per view {result['per_view_clips_per_s']:.2f} clips/s, path "
          f"{result['clips_per_s']:.1f} clips/s ({result['speedup']:.1f}x), max |logit diff| "
          f"{result['max_abs_logit_diff']:.2e}")
    rows = torch.arange(clips, device=data.indices.device)
    reference = split_scores(head, data, rows, fp32)
    low, seconds = timed(lambda: split_scores(head, data, rows, bf16))
    result["bf16"] = {"clips_per_s": clips / seconds, "max_abs_score_diff_vs_fp32": float((low - reference).abs().max()),
                      "top1_agreement": float((low.argmax(1) == reference.argmax(1)).float().mean())}
    print(f"oracle species, bf16 path: {result['bf16']['clips_per_s']:.1f} clips/s")
    head.cfg.species_source = "predicted"
    result["predicted"] = compare(head, data, fp32, predicted_clips, predicted_clips)
    head.cfg.species_source = "oracle"
    print(f"predicted species, fp32: per view {result['predicted']['per_view_clips_per_s']:.2f} clips/s, path "
          f"{result['predicted']['clips_per_s']:.2f} clips/s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-view-clips", type=int, default=120)
    parser.add_argument("--predicted-clips", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="a subset; writes only the quick entry")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    head, dataset = ak_head()
    species = dataset.species_vectors("test")
    with tempfile.TemporaryDirectory() as tmp:
        device = torch.device(args.device)
        data = cached_split(Path(tmp) / "cache.zarr", species, device)
        head = head.to(device)
        quick = run(head, data, 600, 24, 6)
        results: dict[str, Any] = {} if args.quick else run(head, data, len(species), args.per_view_clips,
                                                              args.predicted_clips)
    previous = RESULTS / "eval.json"
    if args.quick and previous.is_file():
        results = {k: v for k, v in json.loads(previous.read_text()).items() if k not in ("machine", "quick")}
    save("eval", {"device": str(device), "threads": args.threads, **results, "quick": quick})


if __name__ == "__main__":
    main()
