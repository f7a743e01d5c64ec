"""Graph refinement at Animal Kingdom scale: dense (release-style) vs the sparse fast path.

A=897 species, C=140 actions, the release's AK relation graph, D=512, h=256. Species vectors:
'oracle' (multi-hot, 1.15 species per clip as in AK) and 'predicted' (a full softmax).
Usage: python -m benchmarks.bench_gcn [--device cuda] [--batch 16 64 256]
"""

import argparse
import json
from pathlib import Path

import torch

from anim_clip.data.formats import read_relation
from anim_clip.data.graph import SpeciesActionGraph
from anim_clip.models.graph_refine import BipartiteGraph, GraphRefinement
from benchmarks.common import save, seconds_per_call

RELATION = Path(__file__).resolve().parents[1] / "anim_clip/data/release/AK/animal-action-relation.txt"


def dense_refine(ref: GraphRefinement, action_text, species_text, species, adjacency):
    """The release's computation: every node of every clip through both layers."""
    a = species_text.shape[0]
    x = torch.cat([species[:, :, None] * species_text, action_text.expand(species.shape[0], -1, -1)], 1)
    h = ref.layers[0].post(adjacency @ (x @ ref.layers[0].weight))
    return ref.layers[1].post(adjacency[a:] @ (h @ ref.layers[1].weight))


def species_batch(kind, b, a, gen):
    if kind == "predicted":
        return torch.softmax(torch.randn(b, a, generator=gen) * 5, -1)
    s = torch.zeros(b, a)
    s[torch.arange(b), torch.randint(0, a, (b,), generator=gen)] = 1
    extra = torch.rand(b, generator=gen) < 0.15
    s[extra.nonzero()[:, 0], torch.randint(0, a, (int(extra.sum()),), generator=gen)] = 1
    return s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    rel = read_relation(RELATION, num_actions=140)
    graph = SpeciesActionGraph.from_lists([ids for _, ids in rel], 140)
    adjacency = torch.from_numpy(graph.adjacency()).to(device)
    a, c, d = graph.num_species, graph.num_actions, 512
    gen = torch.Generator().manual_seed(0)
    ref = GraphRefinement(d).to(device)
    sparse_graph = BipartiteGraph(adjacency, a).to(device)
    action_text, species_text = torch.randn(c, d, device=device), torch.randn(a, d, device=device)
    results = []
    for kind in ("oracle", "predicted"):
        for b in args.batch:
            s = species_batch(kind, b, a, gen).to(device)
            err = (ref(action_text, species_text, s, sparse_graph) - dense_refine(ref, action_text, species_text, s, adjacency)).abs().max().item()
            row = {"species": kind, "batch": b, "max_abs_diff": err}
            for name, fn in (("dense", lambda: dense_refine(ref, action_text, species_text, s, adjacency)),
                             ("sparse", lambda: ref(action_text, species_text, s, sparse_graph))):
                with torch.no_grad():
                    row[f"{name}_fwd_ms"] = 1000 * seconds_per_call(fn, device, args.repeat)
                row[f"{name}_fwd_bwd_ms"] = 1000 * seconds_per_call(lambda: fn().mul(1.0).sum().backward(), device, args.repeat)
            results.append(row)
            print(json.dumps(row))
    save("gcn", {"device": str(device), "results": results})


if __name__ == "__main__":
    main()
