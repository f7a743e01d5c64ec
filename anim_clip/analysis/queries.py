"""Queries on the prompt space alone (no clips): nearest actions, confusable pairs, the spread of
an action across species. Each returns a JSON-able dict; the tables are drawn from it.

Searches inside one condition are exact products over its C prompts (C ≤ a few hundred); searches
over the whole space go through the faiss index.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from anim_clip.analysis.space import PromptSpace
from anim_clip.analysis.store import StoredSpace
from anim_clip.errors import AnimClipError

PAIR_BATCH = 64  # conditions per batched Gram matrix


def lookup(names: Sequence[str], name: str, what: str) -> int:
    """Index of ``name`` (case-insensitive, or a number); an unknown name is refused with the closest."""
    index = {n.lower(): i for i, n in enumerate(names)}
    key = name.strip().lower()
    if key in index:
        return index[key]
    if key.isdigit() and int(key) < len(names):
        return int(key)
    close = difflib.get_close_matches(key, list(index), n=3, cutoff=0.5)
    hint = f"close matches: {', '.join(names[index[c]] for c in close)}" if close else \
        f"known: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}"
    raise AnimClipError(f"unknown {what} {name!r}; {hint}")


def species_condition(space: PromptSpace, species: str | None) -> int:
    """The condition of one named species; 0 (no species) when None."""
    return 0 if species is None else space.condition_of([lookup(space.species, species, "species")])


def _row(space: PromptSpace, row: int, cosine: float, **extra: Any) -> dict[str, Any]:
    condition, action = divmod(int(row), space.num_actions)
    return {"row": int(row), "species": space.label(condition), "action": space.actions[action],
            "cosine": float(cosine), **extra}


def neighbors(stored: StoredSpace, action: str, species: str | None = None, k: int = 10) -> dict[str, Any]:
    """The k actions nearest to ``action`` within one species (or unconditioned), and its k nearest
    prompts anywhere in the space (any species, any action) from the faiss index."""
    space = stored.space
    a = lookup(space.actions, action, "action")
    condition = species_condition(space, species)
    query = space.vectors[space.row(condition, a)]
    cosines = space.block(condition) @ query
    order = [b for b in np.argsort(-cosines, kind="stable") if b != a][:k]
    performable = space.performable(condition)
    scores, ids = stored.index.search(query, k + 1)
    found = [(i, s) for i, s in zip(ids[0], scores[0]) if i >= 0 and i != space.row(condition, a)][:k]
    return {
        "query": {"action": space.actions[a], "species": space.label(condition), "row": space.row(condition, a)},
        "index": {"kind": stored.index.kind, "device": stored.index.device},
        "within_species": [{"action": space.actions[b], "cosine": float(cosines[b]), "performable": bool(performable[b])}
                           for b in order],
        "anywhere": [_row(space, i, s, same_action=int(i) % space.num_actions == a) for i, s in found],
    }


def _pair_masks(space: PromptSpace, conditions: Sequence[int], performable: bool) -> torch.Tensor:
    """``(K, C, C)`` bool: pairs a < b to rank, both performable by the condition's species if asked."""
    C = space.num_actions
    upper = torch.ones(C, C, dtype=torch.bool).triu(1)
    if not performable:
        return upper.expand(len(conditions), C, C)
    perf = torch.from_numpy(np.stack([space.performable(k) for k in conditions]))
    return upper & perf[:, :, None] & perf[:, None, :]


def confusable(space: PromptSpace, species: str | None = None, top: int = 10,
               performable: bool = False) -> dict[str, Any]:
    """The ``top`` most similar action pairs (cosine of their prompts) of every condition, or of one
    species; and overall, the pairs ranked by their mean cosine over the single species (with the
    species where they are closest). ``performable``: only pairs both of which the species performs."""
    conditions = list(range(len(space.conditions))) if species is None else [species_condition(space, species)]
    blocks = torch.from_numpy(space.blocks())
    C = space.num_actions
    per_condition: dict[str, list[dict[str, Any]]] = {}
    total, count = torch.zeros(C, C, dtype=torch.float64), torch.zeros(C, C, dtype=torch.float64)
    best, best_at = torch.full((C, C), -torch.inf), torch.full((C, C), -1, dtype=torch.long)
    for start in range(0, len(conditions), PAIR_BATCH):
        ks = conditions[start : start + PAIR_BATCH]
        gram = blocks[ks] @ blocks[ks].transpose(1, 2)  # (b, C, C)
        mask = _pair_masks(space, ks, performable)
        ranked = gram.masked_fill(~mask, -torch.inf).flatten(1)
        values, flat = ranked.topk(min(top, C * C), dim=1)
        for k, vs, fs in zip(ks, values.tolist(), flat.tolist()):
            per_condition[space.label(k)] = [
                {"actions": [space.actions[f // C], space.actions[f % C]], "cosine": v}
                for v, f in zip(vs, fs) if v > -np.inf
            ]
        single = torch.tensor([len(space.conditions[k]) == 1 for k in ks])
        weights = (mask & single[:, None, None]).double()
        total += (gram.double() * weights).sum(0)
        count += weights.sum(0)
        masked = gram.masked_fill(~(mask & single[:, None, None]), -torch.inf)
        value, where = masked.max(0)
        better = value > best
        best = torch.where(better, value, best)
        best_at = torch.where(better, torch.tensor(ks)[where], best_at)
    overall = []
    if species is None:
        mean = torch.where(count > 0, total / count.clamp_min(1), torch.tensor(-torch.inf, dtype=torch.float64))
        values, flat = mean.flatten().topk(min(top, C * C))
        overall = [
            {"actions": [space.actions[f // C], space.actions[f % C]], "mean_cosine": v,
             "max_cosine": float(best.flatten()[f]), "closest_in": space.label(int(best_at.flatten()[f])),
             "species_counted": int(count.flatten()[f])}
            for v, f in zip(values.tolist(), flat.tolist()) if v > -np.inf
        ]
    return {"performable_only": performable, "top": top, "per_species": per_condition, "overall": overall}


def spread(space: PromptSpace, action: str | None = None) -> dict[str, Any]:
    """How category-specific each action's prompt is: the mean pairwise cosine of its prompts over
    all single species (and over those that perform it), their cosine to the unconditioned prompt,
    and ``drift_vs_separation`` = (1 − that mean) / (1 − the mean cosine between different actions
    of one species): near 0, species barely move the prompt; near 1, as far as actions lie apart."""
    A, C = len(space.species), space.num_actions
    if A < 2:
        raise AnimClipError("the spread across species needs at least two species in the vocabulary")
    blocks = space.blocks()
    prompts = blocks[1 : A + 1]  # (A, C, D) float32 view of the single-species conditions; sums in float64
    total = prompts.sum(0, dtype=np.float64)  # (C, D)
    mean_pairwise = ((total * total).sum(-1) - A) / (A * (A - 1))
    perf = space.can_perform
    perf_total = np.einsum("ac,acd->cd", perf.astype(np.float32), prompts).astype(np.float64)
    n = perf.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        perf_pairwise = np.where(n >= 2, ((perf_total * perf_total).sum(-1) - n) / (n * (n - 1)), np.nan)
    centroid = (total / np.linalg.norm(total, axis=-1, keepdims=True)).astype(np.float32)
    to_centroid = np.einsum("acd,cd->ac", prompts, centroid)
    to_unconditioned = np.einsum("acd,cd->ac", prompts, blocks[0])
    per_species_total = prompts.sum(1)  # (A, D)
    between = ((np.einsum("acd,ad->ac", prompts, per_species_total).astype(np.float64) - 1) / max(C - 1, 1)).mean(0)
    drift = (1 - mean_pairwise) / np.maximum(1 - between, 1e-12)

    def summary(c: int) -> dict[str, Any]:
        outlier = int(np.argmin(to_centroid[:, c]))
        return {
            "action": space.actions[c], "mean_pairwise_cosine": float(mean_pairwise[c]),
            "performers": int(n[c]),
            "performers_mean_pairwise_cosine": None if np.isnan(perf_pairwise[c]) else float(perf_pairwise[c]),
            "mean_cosine_to_unconditioned": float(to_unconditioned[:, c].mean()),
            "between_actions_mean_cosine": float(between[c]), "drift_vs_separation": float(drift[c]),
            "outlier_species": space.species[outlier], "outlier_cosine_to_centroid": float(to_centroid[outlier, c]),
        }

    if action is None:
        order = np.argsort(mean_pairwise, kind="stable")
        return {"actions": [summary(int(c)) for c in order]}
    c = lookup(space.actions, action, "action")
    action_prompts = prompts[:, c].astype(np.float64)
    gram = action_prompts @ action_prompts.T
    np.fill_diagonal(gram, np.inf)
    i, j = np.unravel_index(np.argmin(gram), gram.shape)
    order = np.argsort(to_centroid[:, c], kind="stable")
    return {
        "summary": summary(c),
        "farthest_pair": {"species": [space.species[i], space.species[j]], "cosine": float(gram[i, j])},
        "species": [{"species": space.species[s], "cosine_to_centroid": float(to_centroid[s, c]),
                     "cosine_to_unconditioned": float(to_unconditioned[s, c]),
                     "performs": bool(space.can_perform[s, c])} for s in order],
    }
