"""Queries that run the model on clips: one clip's nearest prompts against its logits, and whether
the model's confusions on a split follow the prompt space's neighbours."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from anim_clip.analysis.space import BUILD_BATCH, PromptSpace, species_matrix
from anim_clip.analysis.store import StoredSpace
from anim_clip.cache.store import SPECIES_PROBS, FeatureCache, read_array
from anim_clip.config import Config
from anim_clip.errors import AnimClipError
from anim_clip.data.video import open_video
from anim_clip.evaluate.cached import cached_scores
from anim_clip.evaluate.scorer import VideoScorer
from anim_clip.evaluate.scoring import score_views
from anim_clip.models.features import FrameFeatures
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.models.inputs import HeadInputs
from anim_clip.cache.reader import CachedSplitData, check_cache
from anim_clip.runtime.distributed import Distributed


@dataclass
class ClipInput:
    """One clip's views as the head sees them, and what is known about it."""

    name: str  # clip id in the cache, or the video path
    source: str  # "cache <split>" or "video"
    features: FrameFeatures  # (V, T, D) views of the clip (patches when the head needs them)
    species: torch.Tensor | None  # (A,) annotated or given species; None: the head predicts them
    inputs: HeadInputs  # how the head takes ``species``
    targets: np.ndarray | None = None  # (C,) multi-hot, known for cached clips


def clip_from_cache(cache: str | Path, clip_id: str, cfg: Config, inputs: HeadInputs,
                    split: str | None = None) -> ClipInput:
    """A cached clip by its id (as in the split file), looked up in ``split`` or in every split, read
    for a head with ``inputs``: its annotated species, or the species predictor's cached
    probabilities. Reads only that clip's rows: opening the split whole would load all of its features."""
    store = FeatureCache(cache)
    check_cache(cfg, store, inputs)
    predicted = inputs.species == "predictor"
    splits = [split] if split else store.splits
    ids: list[str] = []
    for name in splits:
        if name not in store.splits:
            raise AnimClipError(f"cache {store.path} has no split {name!r}; it has {', '.join(store.splits)}")
        group = store.path / name
        ids = read_array(group, "clip_ids", store.path).tolist()
        if clip_id not in ids:
            continue
        row = ids.index(clip_id)
        read = lambda array: read_array(group, array, store.path, row)  # noqa: E731
        if not read("done") or read("error"):
            raise AnimClipError(f"clip {clip_id!r} has no features in {store.path} "
                                f"({read('error') or 'not extracted yet'})")
        patches = torch.from_numpy(read("patches")).float() if inputs.patches else None
        return ClipInput(clip_id, f"cache {name}", FrameFeatures(torch.from_numpy(read("cls")).float(), patches),
                         torch.from_numpy(read(SPECIES_PROBS if predicted else "species")).float(), inputs,
                         read("targets").astype(bool))
    close = difflib.get_close_matches(clip_id, ids, n=3, cutoff=0.6)
    hint = f"; close matches in {splits[-1]}: {', '.join(close)}" if close else ""
    raise AnimClipError(f"no clip {clip_id!r} in the {'/'.join(splits)} split(s) of cache {store.path}{hint}")


def clip_from_video(scorer: VideoScorer, video: str | Path) -> ClipInput:
    """A video as ``predict`` scores it: the checkpoint's test views, its image tower, and the species
    the :class:`~anim_clip.evaluate.scorer.VideoScorer` gives (or predicts)."""
    s = scorer.cfg.sampling
    with open_video(video, s.decoder, s.decode_threads, scorer.device) as file:
        decoded = scorer.decode(file, 0, file.num_frames, 0)
        scorer.fallbacks(file.fallback)
    [(features, species)] = scorer.encode([decoded])
    return ClipInput(str(video), "video", features, species, scorer.inputs)


def _clip_species(used: torch.Tensor, given: torch.Tensor | None) -> list[int]:
    """The species the clip is taken to show: the given ones, else the most probable predicted one."""
    if given is not None:
        return torch.nonzero(given > 0).flatten().tolist()
    return [int(used.argmax())] if float(used.sum()) > 0 else []


def clip_report(stored: StoredSpace, head: AnimalCLIPHead, clip: ClipInput, cfg: Config, k: int = 5) -> dict[str, Any]:
    """The model's top actions by logit next to the clip's nearest prompts (within its species, and
    anywhere in the space), flagging actions no species of the clip performs."""
    space = stored.space
    device = next(head.parameters()).device
    features = clip.features.to(device)
    views = features.cls.shape[0]
    given = None if clip.species is None else clip.species.to(device)[None].expand(views, -1)
    scored = score_views(head, features, given, clip.inputs, cfg.runtime.precision, cfg.eval.scores)
    used = scored.species.mean(0)
    logits, probs = scored.logits.mean(0), scored.scores.mean(0)
    video = F.normalize(scored.video.mean(0), dim=-1)
    with torch.inference_mode():
        cosines = (head.class_embeddings(used[None])[0].float() @ video).cpu().numpy()
    logits, probs = logits.cpu().numpy(), probs.cpu().numpy()
    annotated = clip.inputs.species == "annotated"  # annotated or named by the user
    species = _clip_species(used, clip.species if annotated else None)
    performable = space.can_perform[species].any(0) if species else None
    truth = clip.targets

    def flags(c: int, can: np.ndarray | None = performable) -> dict[str, Any]:
        """Whether action ``c`` is performable (by the clip's species, or by ``can``'s) and true of the clip."""
        return {"performable": None if can is None else bool(can[c]), "true": None if truth is None else bool(truth[c])}

    by_logit = np.argsort(-logits, kind="stable")
    by_cosine = np.argsort(-cosines, kind="stable")
    logit_rank, cosine_rank = np.argsort(by_logit) + 1, np.argsort(by_cosine) + 1
    scores, ids = stored.index.search(video.cpu().numpy(), k)
    condition = space.condition_of(species) if annotated else None
    top = int(by_logit[0])
    report = {
        "clip": clip.name, "source": clip.source, "views": views,
        "species": [space.species[s] for s in species],
        "species_source": "given" if annotated else clip.inputs.source,
        "prediction": {"action": space.actions[top], "probability": float(probs[top]), **flags(top)},
        "by_logit": [{"action": space.actions[c], "logit": float(logits[c]), "probability": float(probs[c]),
                      "cosine": float(cosines[c]), "cosine_rank": int(cosine_rank[c]), **flags(c)} for c in by_logit[:k]],
        "by_prompt": [{"action": space.actions[c], "cosine": float(cosines[c]), "logit_rank": int(logit_rank[c]),
                       **flags(c)} for c in by_cosine[:k]],
        "anywhere": [{"row": int(i), "species": space.label(int(i) // space.num_actions),
                      "action": space.actions[int(i) % space.num_actions], "cosine": float(s),
                      "own_species": condition is not None and int(i) // space.num_actions == condition,
                      **flags(int(i) % space.num_actions, space.performable(int(i) // space.num_actions))}
                     for i, s in zip(ids[0], scores[0]) if i >= 0],  # performable by that row's species
        "true_actions": [] if truth is None else [
            {"action": space.actions[c], "logit_rank": int(logit_rank[c]), "cosine_rank": int(cosine_rank[c]),
             "probability": float(probs[c])} for c in np.flatnonzero(truth)],
    }
    report["flags"] = _clip_flags(report, performable, space, by_logit[:k])
    return report


def _clip_flags(report: dict[str, Any], performable: np.ndarray | None, space: PromptSpace,
                top: np.ndarray) -> list[str]:
    """One sentence per problem a person should see first."""
    out = []
    species = " + ".join(report["species"])
    if performable is not None and not performable[top[0]]:
        out.append(f"top-1 prediction {space.actions[top[0]]!r}: {species} cannot perform it (species–action graph)")
    impossible = [space.actions[c] for c in top[1:] if performable is not None and not performable[c]]
    if impossible:
        out.append(f"{len(impossible)} more of the top {len(top)} are actions {species} cannot perform: "
                   f"{', '.join(impossible)}")
    if report["prediction"]["true"] is False:
        out.append(f"wrong: true {', '.join(t['action'] for t in report['true_actions'])}")
    if report["by_logit"][0]["action"] != report["by_prompt"][0]["action"]:
        out.append("the nearest prompt differs from the top logit (views averaged differently, or the "
                   "video-specific prompt moves the text)")
    return out


@dataclass
class ConfusionAnalysis:
    """The report and the per-pair arrays it was computed from (pairs a < b)."""

    report: dict[str, Any]
    pairs: np.ndarray  # (P, 2) action ids
    confusions: np.ndarray  # (P,) confusions between the two, both directions
    similarity: np.ndarray  # (P,) mean prompt cosine over the split's clips


def confusion_matrix(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(C, C)`` [true, predicted] counts of top-1 errors; a clip with several true actions
    shares its one error equally among them."""
    pred = scores.argmax(1)
    wrong = targets[np.arange(len(pred)), pred] == 0
    share = targets[wrong] / np.maximum(targets[wrong].sum(1, keepdims=True), 1)
    return share.T @ np.eye(scores.shape[1])[pred[wrong]]


@torch.inference_mode()
def condition_grams(stored: StoredSpace, head: AnimalCLIPHead, species: np.ndarray) -> np.ndarray:
    """``(U, C, C)`` prompt cosines under each species set (rows of ``species (U, A)``): from the
    space where it holds the set, else from the head, in batches."""
    space = stored.space
    blocks = np.empty((len(species), space.num_actions, space.vectors.shape[1]), dtype=np.float32)
    missing = []
    for u, row in enumerate(species):
        condition = space.condition_of(np.flatnonzero(row).tolist())
        if condition is None:
            missing.append(u)
        else:
            blocks[u] = space.block(condition)
    device = next(head.parameters()).device
    for start in range(0, len(missing), BUILD_BATCH):
        part = missing[start : start + BUILD_BATCH]
        sets = [tuple(np.flatnonzero(species[u]).tolist()) for u in part]
        blocks[part] = head.class_embeddings(species_matrix(sets, species.shape[1]).to(device)).float().cpu().numpy()
    return np.einsum("ucd,ued->uce", blocks, blocks)


def confusion_report(stored: StoredSpace, head: AnimalCLIPHead, data: CachedSplitData, cfg: Config, *,
                     split: str = "test", k: int = 5, top: int = 10) -> ConfusionAnalysis:
    """Do the model's top-1 confusions on ``split`` follow prompt-space neighbours? Spearman's rank
    correlation, over all action pairs, between how often the pair is confused and the mean
    cosine of its prompts under the species of the split's clips; how often the wrong prediction
    is among the true action's k nearest prompts (and chance); the most confused pairs."""
    device = next(head.parameters()).device
    scores = cached_scores(head, data, cfg, Distributed(0, 1, device))
    targets = data.targets().cpu().numpy()
    species = data.species().cpu().numpy()
    C = scores.shape[1]
    confusion = confusion_matrix(scores, targets)
    sets, inverse, counts = np.unique(species > 0, axis=0, return_inverse=True, return_counts=True)
    grams = condition_grams(stored, head, sets)
    similarity = np.einsum("u,uce->ce", counts / counts.sum(), grams)
    a, b = np.triu_indices(C, 1)
    pair_confusions = confusion[a, b] + confusion[b, a]
    pair_similarity = similarity[a, b]
    correlation = spearmanr(pair_confusions, pair_similarity) if pair_confusions.any() else None
    rho = None if correlation is None or np.isnan(correlation.statistic) else float(correlation.statistic)

    pred = scores.argmax(1)
    wrong = np.flatnonzero(targets[np.arange(len(pred)), pred] == 0)
    hits = ranks = weight = 0.0
    for i in wrong:  # one vectorised rank per error: errors are few next to pairs
        gram = grams[inverse[i]]
        trues = np.flatnonzero(targets[i])
        rank = (gram[trues] > gram[trues, pred[i]][:, None]).sum(1) - (gram[trues, trues] > gram[trues, pred[i]])
        hits += float((rank < k).sum()) / len(trues)
        ranks += float((rank + 1).sum()) / len(trues)
        weight += 1.0
    sim_rank = np.empty(len(a), dtype=np.int64)
    sim_rank[np.argsort(-pair_similarity, kind="stable")] = np.arange(1, len(a) + 1)
    order = [p for p in np.argsort(-pair_confusions, kind="stable") if pair_confusions[p] > 0][:top]
    report = {
        "split": split, "clips": len(scores), "errors": len(wrong),
        "top1": float(1 - len(wrong) / max(len(scores), 1)), "pairs": len(a),
        "confused_pairs": int((pair_confusions > 0).sum()),
        "spearman": {"rho": rho, "p_value": None if rho is None else float(correlation.pvalue),
                     "over": "all action pairs: confusions (both directions) vs mean prompt cosine"},
        "neighbour_hits": {"k": k, "rate": hits / weight if weight else None, "chance": min(k, C - 1) / max(C - 1, 1),
                           "mean_rank": ranks / weight if weight else None},
        "similarity": "mean over the split's clips of the prompt cosine under each clip's annotated species",
        "top_pairs": [{"actions": [stored.space.actions[a[p]], stored.space.actions[b[p]]],
                       "confusions": float(pair_confusions[p]),
                       "first_as_second": float(confusion[a[p], b[p]]),
                       "second_as_first": float(confusion[b[p], a[p]]),
                       "cosine": float(pair_similarity[p]), "similarity_rank": int(sim_rank[p])} for p in order],
    }
    return ConfusionAnalysis(report, np.stack([a, b], 1), pair_confusions, pair_similarity)
