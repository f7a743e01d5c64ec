"""The baselines every report shows beside the head, so a user sees whether the head earns its keep
(docs/method.md §5.1):

- **frequency**: every clip scored by its classes' share of the training clips — what knowing
  nothing about the clip gives;
- **zero-shot**: the frozen backbone alone — each view's L2-normalised frame-mean embedding against
  the text embeddings the head starts from (the class names, or the pooled descriptions when the
  run uses them), ``model.logit_scale`` × cosine;
- **linear probe**: logistic regression on temporal statistics of each view's frozen per-frame
  features (their mean and standard deviation over frames), fitted on the run's training clips,
  its regularisation chosen on a held-out share of them — what a linear classifier gets from the
  same features without the head's temporal transformer, graph or prompts.

Zero-shot and probe scores are formed per view (softmax or sigmoid per ``eval.scores`` for
zero-shot; the probe's own probabilities) and averaged over a clip's views, as the head's are.

The baselines are properties of the cache, not of a training run (the probe's seed is
:data:`PROBE_SEED`, not ``train.seed``): their scores are stored in the cache folder,
``CACHE/.baselines/<split>-<key>.npz``, under a key of everything they depend on (the cache's
signature, the clips fitted and scored, the text, the settings), so every run of a sweep, ``eval``
and later sweeps on the same cache read them instead of fitting the probe again. They live in the
cache because they belong to its content: they go where it goes and die with it, and a store only
grows by clips marked done, whose features never change. A cache folder that cannot be written
(read-only, shared) still gets its baselines, computed each time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from anim_clip.cache.reader import CachedSplitData, class_text
from anim_clip.cache.store import FeatureCache
from anim_clip.config import Config
from anim_clip.data.dataset import hold_out
from anim_clip.evaluate.metrics import mean_average_precision, topk_accuracy
from anim_clip.evaluate.scoring import probabilities
from anim_clip.io import atomic_write
from anim_clip.ui import console

TITLES = {"frequency": "frequency", "zero_shot": "zero-shot", "linear_probe": "linear probe"}
PROBE_C = (1e-3, 1e-2, 1e-1, 1.0)  # inverse L2 strengths tried on the held-out share (standardised features)
PROBE_VAL_FRACTION = 0.2  # of the training clips, to choose C; the probe is then refitted on all of them
PROBE_MAX_VIEWS = 20_000  # training views a fit uses at most: a seeded subsample beyond (AK has 96 000)
PROBE_MAX_ITER = 500  # L-BFGS iterations at most
PROBE_TOLERANCE = 1e-4  # on the largest gradient entry of the mean loss (scikit-learn's default tol)
PROBE_SEED = 0  # the held-out share and the subsample: one probe per cache and split, whatever the run's seed
STORE_VERSION = 1  # raise when a baseline's computation changes: stored scores of an older one are not read
STORE = ".baselines"  # folder in the cache holding the stored baseline scores
CLIP_CHUNK = 1024  # clips whose frame features are converted to fp32 at once


def frequency_scores(train_counts: np.ndarray, clips: int) -> np.ndarray:
    """``(clips, C)``: every clip scored by the training share of each class."""
    return np.tile(train_counts / max(train_counts.sum(), 1), (clips, 1))


def per_view(data: CachedSplitData, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``fn`` of the fp32 frame features ``(n, V, T, D)`` of the split's clips, a chunk of clips at a time."""
    return torch.cat([fn(data.split.cls[rows].float()) for rows in data.indices.split(CLIP_CHUNK)])


def zero_shot_scores(data: CachedSplitData, text: Tensor, cfg: Config) -> np.ndarray:
    """``(N, C)``: each view's normalised frame-mean embedding against the normalised class ``text (C, D)``."""
    classes = F.normalize(text.float().to(data.split.cls.device), dim=-1)

    def scores(cls: Tensor) -> Tensor:
        logits = cfg.model.logit_scale * F.normalize(cls.mean(2), dim=-1) @ classes.T
        return probabilities(logits, cfg.eval.scores).mean(1)

    return per_view(data, scores).cpu().numpy()


def temporal_statistics(data: CachedSplitData) -> Tensor:
    """``(N, V, 2D)`` the probe's input: per view, the mean and standard deviation over frames of the
    raw per-frame CLS features (the standard deviation is where motion shows in frozen features)."""
    return per_view(data, lambda cls: torch.cat([cls.mean(2), cls.std(2, correction=0)], -1))


@dataclass
class LinearProbe:
    """Standardisation, then logistic regression with inverse L2 strength ``C``: independent
    sigmoids for multi-label data (one-vs-rest), one softmax otherwise."""

    mean: Tensor  # (F,)
    scale: Tensor  # (F,)
    weight: Tensor  # (F, C)
    bias: Tensor  # (C,), -inf for classes without a training example
    multilabel: bool
    C: float

    def scores(self, features: Tensor) -> np.ndarray:
        """``(N, C)`` of views ``features (N, V, F)``: the views' probabilities, averaged over views."""
        logits = (features - self.mean) / self.scale @ self.weight + self.bias
        return (logits.sigmoid() if self.multilabel else logits.softmax(-1)).mean(1).cpu().numpy()


def fit_probe(features: Tensor, targets: Tensor, multilabel: bool, C: float, seed: int = 0) -> LinearProbe:
    """The probe fitted on every view of clips ``features (N, V, F)`` with labels ``targets (N, C)``,
    or on a ``seed``-ed subsample of :data:`PROBE_MAX_VIEWS` of them.

    scikit-learn's ``LogisticRegression`` — the mean loss plus ``|W|² / (2·C·n)``, the bias
    unpenalised, standardised inputs, a class without a training example scored 0 — but every
    class at once, in one full-batch L-BFGS on the features' device (a GPU when there is one),
    where one-vs-rest fits the classes one after another (``benchmarks/bench_baselines.py``)."""
    x = features.flatten(0, 1)
    y = targets.float().repeat_interleave(features.shape[1], 0)
    if len(x) > PROBE_MAX_VIEWS:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:PROBE_MAX_VIEWS].to(x.device)
        x, y = x[keep], y[keep]
    mean, scale = x.mean(0), x.std(0, correction=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant features, as StandardScaler
    x = (x - mean) / scale
    present = y.sum(0) > 0
    y = y[:, present]
    weight = x.new_zeros(x.shape[1], y.shape[1], requires_grad=True)
    bias = x.new_zeros(y.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=PROBE_MAX_ITER, tolerance_grad=PROBE_TOLERANCE,
                                  tolerance_change=0, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        optimizer.zero_grad()
        logits = x @ weight + bias
        loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="sum") if multilabel
                else F.cross_entropy(logits, y.argmax(1), reduction="sum")) / len(x)
        loss = loss + weight.square().sum() / (2 * C * len(x))
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    full_weight = x.new_zeros(x.shape[1], len(present))
    full_weight[:, present] = weight.detach()
    full_bias = x.new_full((len(present),), -torch.inf)
    full_bias[present] = bias.detach()
    return LinearProbe(mean, scale, full_weight, full_bias, multilabel, C)


def primary_value(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """The dataset's primary metric (mAP, or top-1 for single-label data), for choosing ``C``."""
    if multilabel:
        return mean_average_precision(scores, targets)[0]
    return topk_accuracy(scores, targets.argmax(1), 1)


def train_probe(features: Tensor, targets: Tensor, multilabel: bool, seed: int) -> LinearProbe:
    """The probe with the ``C`` of :data:`PROBE_C` whose fit on the rest of the training clips
    scores best on a seeded :data:`PROBE_VAL_FRACTION` of them, refitted on them all."""
    fit, val = hold_out(torch.arange(len(features), device=features.device), PROBE_VAL_FRACTION, seed)
    held_out = targets[val].cpu().numpy()
    values = [primary_value(fit_probe(features[fit], targets[fit], multilabel, C, seed).scores(features[val]),
                            held_out, multilabel) for C in PROBE_C]
    best = int(np.argmax(np.nan_to_num(values, nan=-np.inf)))  # no positive held out: the strongest penalty
    return fit_probe(features, targets, multilabel, PROBE_C[best], seed)


def compute_baselines(cache: FeatureCache, data: dict[str, CachedSplitData], split: str, cfg: Config,
                      multilabel: bool) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Zero-shot and linear-probe scores ``(N, C)`` of the clips of ``data[split]`` (the probe fitted on
    ``data["train"]``), and what their reports add: the probe's ``C``."""
    text = class_text(cache, "actions", cfg.data.descriptions is not None, cfg.model.pooling)
    probe = train_probe(temporal_statistics(data["train"]), data["train"].targets(), multilabel, PROBE_SEED)
    scores = {"zero_shot": zero_shot_scores(data[split], text, cfg),
              "linear_probe": probe.scores(temporal_statistics(data[split]))}
    return scores, {"linear_probe": {"C": probe.C}}


def _rows_digest(rows: Tensor) -> str:
    return hashlib.sha256(rows.cpu().numpy().astype(np.int64).tobytes()).hexdigest()


def baseline_key(cache: FeatureCache, data: dict[str, CachedSplitData], split: str, cfg: Config,
                 multilabel: bool) -> dict[str, Any]:
    """Everything :func:`compute_baselines` depends on: the cache's signature, the rows scored and
    fitted (a clip's features never change once done), the class text, the settings and constants."""
    descriptions = cfg.data.descriptions is not None
    return {"version": STORE_VERSION, "cache": cache.attrs, "split": split,
            "rows": _rows_digest(data[split].indices), "train_rows": _rows_digest(data["train"].indices),
            "text": {"descriptions": descriptions, "pooling": cfg.model.pooling if descriptions else None},
            "logit_scale": cfg.model.logit_scale, "scores": cfg.eval.scores, "multilabel": multilabel,
            "probe": {"C": PROBE_C, "val_fraction": PROBE_VAL_FRACTION, "max_views": PROBE_MAX_VIEWS,
                      "max_iter": PROBE_MAX_ITER, "tolerance": PROBE_TOLERANCE, "seed": PROBE_SEED}}


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def baseline_file(cache: FeatureCache, split: str, key: dict[str, Any]) -> Path:
    """Where the baselines of ``key`` are stored: ``CACHE/.baselines/<split>-<digest>.npz``."""
    digest = hashlib.sha256(_key_text(key).encode()).hexdigest()[:20]
    return cache.path / STORE / f"{split}-{digest}.npz"


def _read_stored(path: Path, key: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]] | None:
    """The stored baselines of ``key``, None when there are none (or a file of another key)."""
    if not path.exists():
        return None
    with np.load(path) as stored:
        if str(stored["key"]) != _key_text(key):
            return None
        scores = {name: stored[name] for name in ("zero_shot", "linear_probe")}
        return scores, {"linear_probe": {"C": float(stored["probe_C"])}}


def _store(path: Path, key: dict[str, Any], scores: dict[str, np.ndarray], notes: dict[str, dict[str, float]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, key=_key_text(key), probe_C=notes["linear_probe"]["C"], **scores)

    atomic_write(path, write)


def cached_baselines(cache: FeatureCache, data: dict[str, CachedSplitData], split: str, cfg: Config,
                     multilabel: bool) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """:func:`compute_baselines`, read from the cache's store when computed before for the same
    :func:`baseline_key`, else computed and stored. Processes asking at once (a sweep's workers)
    wait on one lock, so one of them fits and the others read."""
    key = baseline_key(cache, data, split, cfg, multilabel)
    path = baseline_file(cache, split, key)
    try:
        path.parent.mkdir(exist_ok=True)
        lock = path.with_suffix(".lock").open("a")
    except OSError as e:
        _not_stored(cache, e)
        return compute_baselines(cache, data, split, cfg, multilabel)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = _read_stored(path, key)
        if stored is not None:
            return stored
        scores, notes = compute_baselines(cache, data, split, cfg, multilabel)
        try:
            _store(path, key, scores, notes)
        except OSError as e:  # a full disk: the report still gets its baselines
            _not_stored(cache, e)
        return scores, notes


def _not_stored(cache: FeatureCache, error: OSError) -> None:
    console.print(f"[yellow]baselines not stored in {cache.path} ({error.strerror or error}): computed for this "
                  "report only[/]", soft_wrap=True, highlight=False)
