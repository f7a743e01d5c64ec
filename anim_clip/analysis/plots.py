"""A 2-D map of the prompt space: PCA (faiss) of every prompt, coloured by faiss k-means cluster,
with one species' or one action's prompts highlighted and named.

The cluster purities say what organises the space: by action (every cluster holds one action
across species: prompts are barely category-specific) or by species.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from anim_clip.analysis.index import search_device  # noqa: E402
from anim_clip.analysis.queries import lookup  # noqa: E402
from anim_clip.analysis.space import PromptSpace  # noqa: E402
from anim_clip.io import atomic_write  # noqa: E402

KMEANS_ITERATIONS = 20
LABELLED_POINTS = 40  # name highlighted points only when there are at most this many


def _purity(labels: np.ndarray, assign: np.ndarray) -> float:
    """Share of rows whose cluster's most common label is their own."""
    joint = np.zeros((assign.max() + 1, labels.max() + 1), dtype=np.int64)
    np.add.at(joint, (assign, labels), 1)
    return float(joint.max(1).sum() / len(labels))


def prompt_map(space: PromptSpace, path: Path, *, clusters: int = 8, species: str | None = None,
               action: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Write the map to ``path`` (PNG); returns its figures (explained variance, cluster sizes, purity)."""
    x = np.ascontiguousarray(space.vectors)
    pca = faiss.PCAMatrix(x.shape[1], 2)
    pca.train(x)
    xy = pca.apply(x)
    eigen = faiss.vector_to_array(pca.eigenvalues)
    clusters = max(1, min(clusters, space.rows))
    kmeans = faiss.Kmeans(x.shape[1], clusters, niter=KMEANS_ITERATIONS, seed=seed, spherical=True,
                          min_points_per_centroid=1, gpu=search_device("flat", faiss.get_num_gpus()) == "gpu")
    kmeans.train(x)
    assign = kmeans.index.search(x, 1)[1][:, 0]
    condition, action_ids = space.id_map()

    fig, ax = plt.subplots(figsize=(8, 7))
    colours = plt.get_cmap("tab20" if clusters > 10 else "tab10")
    ax.scatter(xy[:, 0], xy[:, 1], c=colours(assign % colours.N), s=4 if space.rows > 5000 else 14,
               alpha=0.6, linewidths=0, rasterized=True)
    base = condition == 0
    ax.scatter(xy[base, 0], xy[base, 1], marker="x", c="black", s=20, label="no species (unconditioned)")
    shown = _highlight(ax, space, xy, condition, action_ids, species, action)
    ax.set_xlabel(f"PC 1 ({100 * eigen[0] / eigen.sum():.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * eigen[1] / eigen.sum():.1f}% of variance)")
    ax.set_title(f"prompt space: {len(space.conditions)} conditions × {space.num_actions} actions, "
                 f"{clusters} k-means clusters{shown}")
    ax.legend(loc="best", fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)
    return {
        "png": str(path), "rows": space.rows, "method": "pca",
        "explained_variance": [float(e / eigen.sum()) for e in eigen[:2]],
        "clusters": clusters, "cluster_sizes": np.bincount(assign, minlength=clusters).tolist(),
        "action_purity": _purity(action_ids, assign), "species_purity": _purity(condition, assign),
        "highlight": {"species": species, "action": action},
    }


def _highlight(ax, space: PromptSpace, xy: np.ndarray, condition: np.ndarray, action_ids: np.ndarray,
               species: str | None, action: str | None) -> str:
    """Mark (and name, when few) the prompts of a species and/or an action; the title's suffix."""
    suffix = ""
    if species is not None:
        k = space.condition_of([lookup(space.species, species, "species")])
        rows = np.flatnonzero(condition == k)
        ax.scatter(xy[rows, 0], xy[rows, 1], s=60, facecolors="none", edgecolors="red", linewidths=1.5,
                   label=f"species {space.label(k)}")
        if len(rows) <= LABELLED_POINTS:
            for r in rows:
                ax.annotate(space.actions[action_ids[r]], xy[r], fontsize=7, color="red")
        suffix += f"; species {space.label(k)}"
    if action is not None:
        a = lookup(space.actions, action, "action")
        rows = np.flatnonzero(action_ids == a)
        ax.scatter(xy[rows, 0], xy[rows, 1], s=80, marker="*", c="navy", label=f"action {space.actions[a]}")
        if len(rows) <= LABELLED_POINTS:
            for r in rows:
                ax.annotate(space.label(condition[r]), xy[r], fontsize=7, color="navy")
        suffix += f"; action {space.actions[a]}"
    return suffix
