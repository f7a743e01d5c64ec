"""A dataset at a glance: clips, vocabularies, labels per clip, species per clip, the graph."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from anim_clip.data.dataset import Dataset
from anim_clip.data.graph import compare_graphs
from anim_clip.ui import table


def dataset_summary(dataset: Dataset, graph_source: str) -> dict[str, Any]:
    """Figures a user checks before spending compute on a dataset (also written as JSON)."""
    graph = dataset.graph(graph_source)
    out: dict[str, Any] = {
        "name": dataset.name,
        "actions": dataset.num_actions,
        "species": dataset.num_species,
        "graph": graph_source,
        "graph_pairs": len(graph.pairs()),
        "splits": {},
    }
    for split in dataset.splits:
        targets, species = dataset.targets(split), dataset.species_vectors(split)
        n = len(targets)
        out["splits"][split] = {
            "clips": n,
            "labels_per_clip": round(float(targets.sum(1).mean()), 3) if n else 0.0,
            "multi_label_clips": int((targets.sum(1) > 1).sum()),
            "species_per_clip": round(float(species.sum(1).mean()), 3) if n else 0.0,
            "multi_species_clips": int((species.sum(1) > 1).sum()),
            "actions_without_clips": int((targets.sum(0) == 0).sum()),
        }
    if dataset.release_graph is not None:
        out["release_vs_train_graph"] = compare_graphs(dataset.release_graph, dataset.train_graph()).summary()
    return out


def summary_table(summary: dict[str, Any]) -> Table:
    splits = list(summary["splits"])
    rows = [
        [key.replace("_", " ")] + [summary["splits"][s][key] for s in splits]
        for key in next(iter(summary["splits"].values()))
    ]
    title = (
        f"{summary['name']}: {summary['actions']} actions, {summary['species']} species, "
        f"{summary['graph_pairs']} species-action pairs ({summary['graph']} graph)"
    )
    return table(title, ["", *splits], rows)
