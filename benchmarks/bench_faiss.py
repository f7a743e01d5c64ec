"""How fast the prompt space of an Animal Kingdom-sized run is built and searched.

The space is AK's: 897 species + "no species" × 140 actions = 125 720 prompts of 512-d, made by
an Animal-CLIP head (release defaults, random init) over AK's shipped relation graph, through
``build_space`` (64 conditions per call). The text embeddings are random Gaussian (no CLIP weights
can be downloaded here): the space's structure comes from the head and the graph, the one that
matters for the index (every action's prompts cluster across species).

For each index kind (flat, ivf, hnsw; and on the GPU when faiss reports one) it measures the
build (IVF: k-means training included), saving and loading, batch search throughput and
one-at-a-time latency at k=10, and recall@10 against the exact flat index, for two kinds of
query: prompts of the space (what ``neighbors`` asks) and random unit directions (a clip's video
embedding, which sits far from every prompt: the hard case for approximate indexes). Then the
analysis queries themselves on that space.

    python benchmarks/bench_faiss.py [--out benchmarks/results/faiss.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import Any

import faiss
import numpy as np
import torch

from anim_clip.analysis.index import INDEX_KINDS, PromptIndex, index_settings
from anim_clip.analysis.plots import prompt_map
from anim_clip.analysis.queries import confusable, neighbors, spread
from anim_clip.analysis.space import build_space
from anim_clip.analysis.store import StoredSpace
from anim_clip.config import ModelConfig, load_config
from anim_clip.data.dataset import load_dataset
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.ui import console, table
from anim_clip.models.inputs import HeadInputs

D, K = 512, 10
BATCH_QUERIES, SINGLE_QUERIES, REPEATS = 1000, 200, 3


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = perf_counter()
        out = fn()
        times.append(perf_counter() - start)
    return statistics.median(times), out


def ak_head(num_species: int | None) -> tuple[AnimalCLIPHead, list[str], list[str]]:
    """A release-default head over AK's graph (the first ``num_species`` species with --quick)."""
    dataset = load_dataset(load_config("ak").data)
    adjacency = torch.from_numpy(dataset.graph("release").adjacency())
    A, C = dataset.num_species, dataset.num_actions
    keep = num_species or A
    nodes = torch.cat([torch.arange(keep), torch.arange(A, A + C)])
    g = torch.Generator().manual_seed(0)
    head = AnimalCLIPHead(ModelConfig(), inputs=HeadInputs("annotated"), embed_dim=D, num_frames=8, adjacency=adjacency[nodes][:, nodes],
                          action_text=torch.randn(C, D, generator=g), species_text=torch.randn(keep, D, generator=g))
    return head.eval(), list(dataset.actions), list(dataset.species[:keep])


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact)]))


def measure_index(vectors: np.ndarray, kind: str, num_gpus: int, queries: dict[str, np.ndarray],
                  exact: dict[str, np.ndarray]) -> dict[str, Any]:
    build_s, index = timed(lambda: PromptIndex.build(vectors, kind, num_gpus, quiet=True))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        write_s, _ = timed(lambda: faiss.write_index(index.cpu, path))
        size = os.path.getsize(path)
        read_s, _ = timed(lambda: faiss.read_index(path))
    out: dict[str, Any] = {"kind": kind, "device": index.device, **index_settings(index.cpu), "build_s": build_s,
                           "build_rows_per_s": len(vectors) / build_s, "write_s": write_s, "read_s": read_s,
                           "file_mb": size / 1e6}
    for name, q in queries.items():
        batch_s, (_, ids) = timed(lambda: index.search(q, K), REPEATS)
        single = q[:SINGLE_QUERIES]
        single_s, _ = timed(lambda: [index.search(row, K) for row in single], REPEATS)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # on shared cores, OpenMP's spinning threads dominate a single query
        single_1_s, _ = timed(lambda: [index.search(row, K) for row in single], REPEATS)
        faiss.omp_set_num_threads(threads)
        out[name] = {"batch_qps": len(q) / batch_s, "single_ms": 1000 * single_s / len(single),
                     "single_ms_1_thread": 1000 * single_1_s / len(single), "recall_at_10": recall(ids, exact[name])}
    return out


def measure_queries(stored: StoredSpace) -> dict[str, float]:
    space = stored.space
    return {
        "neighbors_s": timed(lambda: neighbors(stored, space.actions[0], space.species[0], K), REPEATS)[0],
        "confusable_all_s": timed(lambda: confusable(space, top=K))[0],
        "spread_all_s": timed(lambda: spread(space))[0],
        "map_pca_kmeans_png_s": timed(lambda: prompt_map(space, Path(tempfile.mkdtemp()) / "map.png"))[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "faiss.json")
    parser.add_argument("--quick", action="store_true", help="100 species instead of 897 (a smoke run)")
    args = parser.parse_args()
    num_gpus = faiss.get_num_gpus()
    head, actions, species = ak_head(100 if args.quick else None)
    build_s, space = timed(lambda: build_space(head, actions, species))
    console.print(f"space: {space.rows} × {space.vectors.shape[1]} built by the head in {build_s:.1f} s")
    rng = np.random.default_rng(0)
    random = rng.standard_normal((BATCH_QUERIES, D)).astype(np.float32)
    queries = {"prompt_queries": space.vectors[rng.choice(space.rows, BATCH_QUERIES, replace=False)],
               "random_queries": random / np.linalg.norm(random, axis=1, keepdims=True)}
    exact_index = PromptIndex.build(space.vectors, "flat", 0, quiet=True)
    exact = {name: exact_index.search(q, K)[1] for name, q in queries.items()}
    runs = [measure_index(space.vectors, kind, 0, queries, exact) for kind in INDEX_KINDS]
    if num_gpus > 0:
        runs += [measure_index(space.vectors, kind, num_gpus, queries, exact) for kind in ("flat", "ivf")]
    stored = StoredSpace(space, exact_index, Path("benchmark"), Path(tempfile.mkdtemp()), {})
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "faiss": faiss.__version__, "faiss_omp_threads": faiss.omp_get_max_threads(),
                    "faiss_gpus": num_gpus},
        "space": {"rows": space.rows, "dim": D, "conditions": len(space.conditions), "actions": space.num_actions,
                  "build_s": build_s, "build_conditions_per_s": len(space.conditions) / build_s,
                  "text": "random Gaussian text embeddings, release-default head at random init, AK release graph"},
        "k": K, "batch_queries": BATCH_QUERIES, "single_queries": SINGLE_QUERIES,
        "indexes": runs,
        "queries": measure_queries(stored),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    rows = [(f"{r['kind']} ({r['device']})", f"{r['build_s']:.2f}", f"{r['file_mb']:.0f}",
             f"{r['prompt_queries']['batch_qps']:.0f}", f"{r['prompt_queries']['single_ms_1_thread']:.2f}",
             f"{r['prompt_queries']['recall_at_10']:.3f}", f"{r['random_queries']['batch_qps']:.0f}",
             f"{r['random_queries']['recall_at_10']:.3f}") for r in runs]
    console.print(table(f"faiss over {space.rows} × {D} prompts, k={K}",
                        ["index", "build s", "MB", "prompt q/s", "1-query ms (1 thread)", "recall@10", "random q/s",
                         "recall@10 (random)"], rows))
    console.print(table("analysis queries", ["query", "seconds"],
                        [(k, f"{v:.2f}") for k, v in result["queries"].items()]))
    console.print(f"-> {args.out}")


if __name__ == "__main__":
    main()
