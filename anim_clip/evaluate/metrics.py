"""The field's metrics (docs/method.md §5), vectorised in torch, exact against sklearn.

- multi-label (AK): mAP over classes with at least one positive, non-interpolated AP per class
  (equal to ``sklearn.metrics.average_precision_score``, ties included), head/middle/tail mAP;
- single-label (MammalNet, LoTE): top-1/top-5, mean class accuracy, head/middle/tail accuracy;
- "inconsistent predictions": the share of top-5 actions the clip's species cannot perform;
- a species predictor's top-1/top-5 against multi-hot annotations (any annotated species counts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _tensor(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()


def average_precision(scores: ArrayLike, targets: ArrayLike) -> torch.Tensor:
    """Per-class AP ``(C,)`` of ``scores``/``targets`` ``(N, C)``; NaN for classes without positives.

    Sort each column by score; precision is evaluated at the end of each group of tied scores
    (sklearn's thresholds), and every positive contributes the precision at its group's end.
    """
    s, y = _tensor(scores), _tensor(targets)
    n = s.shape[0]
    order = torch.argsort(s, dim=0, descending=True, stable=True)
    s_sorted, y_sorted = s.gather(0, order), y.gather(0, order)
    tp = torch.cumsum(y_sorted, 0)
    rank = torch.arange(1, n + 1, dtype=s.dtype).unsqueeze(1)
    precision = tp / rank
    is_end = torch.ones_like(s_sorted, dtype=torch.bool)
    is_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    index = torch.arange(n).unsqueeze(1).expand_as(s_sorted)
    end_index = torch.where(is_end, index, torch.full_like(index, n))
    group_end = torch.flip(torch.cummin(torch.flip(end_index, [0]), dim=0).values, [0])
    positives = y.sum(0)
    ap = (y_sorted * precision.gather(0, group_end)).sum(0) / positives
    return torch.where(positives > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> tuple[float, np.ndarray]:
    """mAP over classes with at least one positive, and the per-class AP (NaN where no positive)."""
    ap = average_precision(scores, targets)
    valid = ~torch.isnan(ap)
    return (float(ap[valid].mean()) if valid.any() else float("nan")), ap.numpy()


def frequency_groups(train_counts: ArrayLike, head_min: int, tail_max: int) -> dict[str, np.ndarray]:
    """Class ids per long-tail group from training frequencies: head > head_min, tail < tail_max.

    AK's definition (head > 500, tail < 100) reproduces the release's hard-coded lists.
    """
    counts = np.asarray(train_counts)
    head = np.flatnonzero(counts > head_min)
    tail = np.flatnonzero(counts < tail_max)
    middle = np.flatnonzero((counts >= tail_max) & (counts <= head_min))
    return {"head": head, "middle": middle, "tail": tail}


def long_tail_thresholds(train_counts: ArrayLike, head_min: int, tail_max: int) -> dict[str, Any]:
    """The thresholds the long-tail groups use, and why: the configured ones, unless they leave a
    group empty (every class "tail" on a small training set); then cut points at the thirds of the
    classes sorted by training clips (head: the most frequent third, tail: the least), so the group
    rows compare frequent with rare classes of this training set. Ties can still empty a group."""
    counts = np.sort(np.asarray(train_counts))
    configured = {"head_min": int(head_min), "tail_max": int(tail_max)}
    empty = [name for name, ids in frequency_groups(counts, head_min, tail_max).items() if not len(ids)]
    if not empty or len(counts) < 3:
        return {**configured, "derived": None}
    third = len(counts) // 3
    derived = {"head_min": int(counts[-1 - third]), "tail_max": int(counts[third])}
    return {**derived, "derived": f"the configured eval.head_min={head_min}, eval.tail_max={tail_max} left "
                                  f"{' and '.join(empty)} empty; cut at the thirds of the training counts instead"}


def group_means(per_class: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of a per-class metric within each group, ignoring classes where it is undefined (NaN)."""
    out = {}
    for name, ids in groups.items():
        values = per_class[ids]
        values = values[~np.isnan(values)]
        out[name] = float(values.mean()) if len(values) else float("nan")
    return out


def topk_accuracy(scores: ArrayLike, labels: ArrayLike, k: int) -> float:
    """Share of clips whose label is among the k best scores (single-label datasets)."""
    s, y = _tensor(scores), torch.as_tensor(np.asarray(labels)).long()
    top = s.topk(min(k, s.shape[1]), dim=1).indices
    return float((top == y.unsqueeze(1)).any(1).double().mean())


def any_topk_accuracy(scores: ArrayLike, targets: ArrayLike, k: int) -> float:
    """Share of rows one of whose positives (multi-hot ``targets``) is among the k best scores;
    rows without a positive are left out (NaN when none has one). A clip showing two species is
    right when either of them is in its top k."""
    s, y = _tensor(scores), _tensor(targets)
    labelled = y.sum(1) > 0
    if not labelled.any():
        return float("nan")
    top = s.topk(min(k, s.shape[1]), dim=1).indices
    return float((y.gather(1, top) > 0).any(1)[labelled].double().mean())


def per_class_accuracy(scores: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Top-1 accuracy of each class's clips ``(C,)``; NaN for classes without clips."""
    y = torch.as_tensor(np.asarray(labels)).long()
    correct = (_tensor(scores).argmax(1) == y).double()
    hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, y, correct)
    count = torch.bincount(y, minlength=num_classes).double()
    return torch.where(count > 0, hits / count.clamp(min=1), torch.full_like(hits, float("nan"))).numpy()


def group_topk_accuracy(scores: ArrayLike, labels: ArrayLike, groups: dict[str, np.ndarray], k: int) -> dict[str, float]:
    """Instance-level top-k accuracy restricted to clips whose label is in each group (release ``lt_acc``)."""
    y = np.asarray(labels)
    s = _tensor(scores)
    out = {}
    for name, ids in groups.items():
        mask = np.isin(y, ids)
        out[name] = topk_accuracy(s[torch.as_tensor(mask)], y[mask], k) if mask.any() else float("nan")
    return out


def inconsistency_rate(scores: ArrayLike, species: ArrayLike, can_perform: np.ndarray, k: int = 5) -> float:
    """Share of top-k predicted actions that none of the clip's species can perform.

    ``species`` ``(N, A)`` multi-hot, ``can_perform`` ``(A, C)`` boolean from the relation graph.
    Clips without species are left out (nothing constrains them).
    """
    s = _tensor(scores)
    sp = torch.as_tensor(np.asarray(species)).double()
    allowed = (sp @ torch.as_tensor(can_perform).double()) > 0  # (N, C)
    has_species = sp.sum(1) > 0
    if not has_species.any():
        return float("nan")
    top = s.topk(min(k, s.shape[1]), dim=1).indices
    impossible = ~allowed.gather(1, top)
    return float(impossible[has_species].double().mean())
