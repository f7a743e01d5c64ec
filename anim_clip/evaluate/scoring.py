"""One scoring path for everything that turns features into scores: ``eval`` on a cache or on
videos, validation during training, ``predict`` (and its windows), ``analyze clip`` and
``analyze confusions``.

A view's logits come from the head's two halves: the species-conditioned class embeddings
(:meth:`AnimalCLIPHead.conditioned_text`), which depend on the species vector alone, and the
view's video embedding. So the text half is computed once per *distinct* species vector — exactly:
the distinct rows, then a gather — a chunk of distinct vectors at a time across a whole split, and
every view that shares them is scored against them. The clips of a split share few species sets
(Animal Kingdom's 6 096 test clips have 611), so this removes almost all of the text half's cost;
soft species vectors (``species_source=predicted``, mixtures) stay exact and simply repeat less.
Scores are the softmax (or sigmoid, ``eval.scores``) of each view, averaged over a clip's views
(docs/method.md §5). The head runs in ``backbone.precision`` (:mod:`anim_clip.runtime.precision`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from anim_clip.cache.reader import CachedSplitData
from anim_clip.config import Config
from anim_clip.models.features import FrameFeatures, HeadOutput
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.runtime.precision import autocast

TEXT_CHUNK = 64  # distinct species vectors whose class embeddings are held at once
VIEW_BATCH = 256  # views scored per call of the head

ReadViews = Callable[[list[Tensor]], Iterator[FrameFeatures]]  # batches of view rows -> their features


def probabilities(logits: Tensor, kind: str) -> Tensor:
    return logits.softmax(-1) if kind == "softmax" else logits.sigmoid()


def scored_batches(head: AnimalCLIPHead, distinct: Tensor, index: Tensor, read: ReadViews, precision: str
                   ) -> Iterator[tuple[Tensor, HeadOutput]]:
    """``(rows, output)`` for every view row: view r has species vector ``distinct[index[r]]``.

    Rows are visited grouped by species vector, :data:`TEXT_CHUNK` distinct vectors at a time (their
    class embeddings computed once), in batches of :data:`VIEW_BATCH`; ``read`` gets the list of
    batches up front, so it can read ahead.
    """
    order = torch.argsort(index, stable=True)
    edges = torch.arange(0, len(distinct) + TEXT_CHUNK, TEXT_CHUNK, device=index.device)
    bounds = torch.searchsorted(index[order], edges).tolist()
    plan = [(start, list(order[bounds[k]:bounds[k + 1]].split(VIEW_BATCH)))
            for k, start in enumerate(range(0, len(distinct), TEXT_CHUNK))]
    views = read([rows for _, batches in plan for rows in batches])
    device = index.device
    with torch.no_grad(), autocast(precision, device, "head"):
        for start, batches in plan:
            text = head.conditioned_text(distinct[start:start + TEXT_CHUNK])
            for rows in batches:
                features = next(views).to(device)
                yield rows, head.score(features, distinct[index[rows]], text, index[rows] - start)


@dataclass
class ViewScores:
    """Per view: logits and scores ``(R, C)``, video embedding ``(R, D)``, species vector used ``(R, A)``."""

    logits: Tensor
    scores: Tensor
    video: Tensor
    species: Tensor


def score_views(head: AnimalCLIPHead, features: FrameFeatures, species: Tensor | None, cfg: Config) -> ViewScores:
    """Views held in memory: ``features (R, T, D)``, ``species (R, A)`` as given (None: predicted or none)."""
    with torch.no_grad():
        used = head.species_vector(features.cls.float(), species)
    distinct, index = torch.unique(used, dim=0, return_inverse=True)
    logits = torch.empty(len(used), head.vocab.num_actions, device=used.device)
    video = torch.empty(len(used), head.dims["embed_dim"], device=used.device)
    read = lambda batches: (features[rows] for rows in batches)  # noqa: E731
    for rows, out in scored_batches(head, distinct, index, read, cfg.runtime.precision):
        logits[rows], video[rows] = out.logits.float(), out.video.float()
    return ViewScores(logits, probabilities(logits, cfg.eval.scores), video, used)


def clip_scores(head: AnimalCLIPHead, features: FrameFeatures, species: Tensor | None, cfg: Config) -> Tensor:
    """``(N, C)`` scores of clips from their views ``features (N, V, T, D)`` and species ``(N, A)``."""
    n, v = features.cls.shape[:2]
    views = FrameFeatures(features.cls.flatten(0, 1), None if features.patches is None else features.patches.flatten(0, 1))
    given = None if species is None else species.repeat_interleave(v, 0)
    return score_views(head, views, given, cfg).scores.view(n, v, -1).mean(1)


def split_scores(head: AnimalCLIPHead, data: CachedSplitData, rows: Tensor, cfg: Config) -> Tensor:
    """``(N, C)`` scores of the cached clips ``rows``, every cached view of each: the species vectors
    of the whole set are deduplicated first, so each is conditioned on once."""
    split, views = data.split, data.num_views
    scores = torch.zeros(len(rows) * views, head.vocab.num_actions, device=rows.device)
    if not len(rows):
        return scores
    with torch.no_grad():
        if head.predicts_species:  # per view, from its frames
            view_species = torch.cat([head.species_vector(split.cls[part].flatten(0, 1).float(), None)
                                      for part in rows.split(max(1, 8192 // views))])
            distinct, index = torch.unique(view_species, dim=0, return_inverse=True)
        else:  # per clip: the annotation, the species predictor's cached probabilities, or none
            distinct, clip_index = torch.unique(head.given_species(data.condition(rows), len(rows)), dim=0,
                                                return_inverse=True)
            index = clip_index.repeat_interleave(views)

    def read(batches: list[Tensor]) -> Iterator[FrameFeatures]:
        return (batch.features for batch in data.batches([(rows[r // views], r % views) for r in batches]))

    for view_rows, out in scored_batches(head, distinct, index, read, cfg.runtime.precision):
        scores[view_rows] = probabilities(out.logits.float(), cfg.eval.scores)
    return scores.view(len(rows), views, -1).mean(1)

