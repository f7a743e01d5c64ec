"""The one scoring path: the text half once per distinct species vector gives the logits of the
per-view path (the head run on every view by itself), for given, zero-shot and no species, on the
parity fixture and on a trained demo run; training's in-batch deduplication gives the same
gradients; every command that scores goes through the path; the precision policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoint import fixture_head
from videos import indexed_frames, write_video

from anim_clip.analysis.clips import clip_from_cache, clip_from_video, clip_report, confusion_report
from anim_clip.analysis.store import build_and_save
from anim_clip.cache.extract import extract
from anim_clip.cache.reader import open_cached_data
from anim_clip.data.dataset import load_dataset
from anim_clip.data.demo import make_demo_data
from anim_clip.demo import demo_config
from anim_clip.evaluate import scoring
from anim_clip.evaluate.cached import eval_context, evaluate_checkpoint
from anim_clip.evaluate.report import evaluation_report
from anim_clip.evaluate.scorer import VideoScorer
from anim_clip.evaluate.scoring import clip_scores, score_views, split_scores
from anim_clip.evaluate.videos import evaluate_checkpoint_on_videos
from anim_clip.models.checkpoint import load_checkpoint
from anim_clip.models.factory import model_from_checkpoint
from anim_clip.models.features import FrameFeatures
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.models.inputs import HeadInputs
from anim_clip.predict import Predictor
from anim_clip.runtime import precision
from anim_clip.train.engine import train

CPU = torch.device("cpu")
SPECIES_INPUTS = ["annotated", "zero-shot", "none"]  # a predictor's probabilities are given as annotations are


def per_view_logits(head: AnimalCLIPHead, features: FrameFeatures, species: torch.Tensor | None) -> torch.Tensor:
    """The reference: the head run on every view by itself, its text half computed for that view."""
    with torch.no_grad():
        return torch.cat([head(features[r:r + 1], None if species is None else species[r:r + 1]).logits
                          for r in range(len(features.cls))])


@pytest.mark.parametrize("kind", SPECIES_INPUTS)
def test_the_fixtures_views_score_as_the_per_view_path(fixture: dict, kind: str):
    head = fixture_head(fixture).eval()
    head.inputs = HeadInputs(kind)  # the reference, the head's own forward, takes the same inputs
    features = FrameFeatures(fixture["outputs"]["frame_features"])
    species = fixture["inputs"]["species"]
    views = FrameFeatures(features.cls.repeat(3, 1, 1))  # repeated species rows, as in a split
    given = species.repeat(3, 1)
    scored = score_views(head, views, given, head.inputs, "fp32", "softmax")
    expected = per_view_logits(head, views, given)
    torch.testing.assert_close(scored.logits, expected, atol=1e-5, rtol=0)
    if kind == "annotated":  # and the release's own logits, through the new path
        torch.testing.assert_close(scored.logits[: len(species)], fixture["outputs"]["logits"], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny demo run with a held-out share (validation scores through the path every epoch)."""
    root = tmp_path_factory.mktemp("scoring")
    make_demo_data(root / "data", train_clips=24, test_clips=12, num_frames=16, size=64, seed=3)
    cfg = demo_config(root / "data", ["backbone.pretrained=null", "runtime.precision=fp32", "sampling.num_frames=4",
                                      "sampling.train_views=2", "sampling.test_clips=2", "train.epochs=2",
                                      "train.batch_size=4", "train.accumulation=1", "train.val_fraction=0.25",
                                      "train.num_workers=0"])
    extract(cfg, root / "cache", progress=False, device=CPU)
    train(cfg, cache=root / "cache", out=root / "run", progress=False)
    return {"root": root, "cfg": cfg, "cache": root / "cache", "run": root / "run"}


@pytest.mark.parametrize("kind", SPECIES_INPUTS)
def test_a_cached_split_scores_as_the_per_view_path_and_reports_the_same_metrics(trained: dict, kind: str):
    cfg = trained["cfg"]
    head = model_from_checkpoint(load_checkpoint(trained["run"] / "last.pt"), "cached").eval()
    head.inputs = HeadInputs(kind)  # the reference, the head's own forward, takes the same inputs
    dataset = load_dataset(cfg.data)
    _, data = open_cached_data(cfg, trained["cache"], dataset, CPU, head.inputs)
    test = data["test"]
    new = split_scores(head, test, test.indices, cfg.runtime.precision, cfg.eval.scores)
    cls = test.split.cls[test.indices].float()  # (N, V, T, D)
    n, v = cls.shape[:2]
    given = test.split.species[test.indices].float().repeat_interleave(v, 0)
    old = per_view_logits(head, FrameFeatures(cls.flatten(0, 1)), given).softmax(-1).view(n, v, -1).mean(1)
    torch.testing.assert_close(new, old, atol=1e-5, rtol=0)
    ctx, targets, species = eval_context(dataset, cfg), test.targets().numpy(), test.species().numpy()
    report_new = evaluation_report(new.numpy(), targets, species, ctx, cfg.eval)
    report_old = evaluation_report(old.numpy(), targets, species, ctx, cfg.eval)
    for key in ("mAP", "top1", "top5", "inconsistent_top5"):
        assert report_new.get(key) == pytest.approx(report_old.get(key), abs=1e-6), key
    new_ap, old_ap = report_new["per_class_ap"], report_old["per_class_ap"]
    assert new_ap.keys() == old_ap.keys()
    for action, ap in new_ap.items():
        assert ap == (None if old_ap[action] is None else pytest.approx(old_ap[action], abs=1e-6)), action
    # clips held in memory take the same path
    held = clip_scores(head, FrameFeatures(cls), test.species().float(), head.inputs, cfg.runtime.precision,
                       cfg.eval.scores)
    torch.testing.assert_close(held, new, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mixed", [False, True])
def test_training_deduplicates_the_text_half_with_the_same_gradients(fixture: dict, mixed: bool):
    features = FrameFeatures(fixture["outputs"]["frame_features"].repeat(4, 1, 1))
    species = fixture["inputs"]["species"].repeat(4, 1)
    if mixed:  # mixup's soft species vectors: fewer rows repeat, still exact
        species = 0.7 * species + 0.3 * species.roll(1, 0)
    grads = []
    for dedupe in (True, False):
        head = fixture_head(fixture).train()
        if dedupe:
            conditioned, rows = head.conditioned_text, []
            head.conditioned_text = lambda s, vocab=None: rows.append(len(s)) or conditioned(s, vocab)
            logits = head(features, species).logits
            assert rows == [len(torch.unique(species, dim=0))] and rows[0] < len(species)  # distinct rows only
        else:  # the text half of every row by itself
            used = head.species_vector(features.cls, species)
            logits = head.score(features, used, head.conditioned_text(used), torch.arange(len(used))).logits
        logits.logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-4, msg=name)


def test_every_command_that_scores_goes_through_the_one_path(trained: dict, monkeypatch, tmp_path: Path):
    calls: list[str] = []
    original = scoring.scored_batches

    def counted(*args, **kwargs):
        calls.append("scored")
        return original(*args, **kwargs)

    monkeypatch.setattr(scoring, "scored_batches", counted)
    cfg, run, cache = trained["cfg"], trained["run"], trained["cache"]
    video = write_video(tmp_path / "clip.mp4", indexed_frames(16, 64, 64))

    def uses_the_path(what, action) -> None:
        calls.clear()
        action()
        assert calls, f"{what} did not score through anim_clip.evaluate.scoring"

    uses_the_path("eval on a cache", lambda: evaluate_checkpoint(run, cache, out=tmp_path / "e1"))
    uses_the_path("eval --videos", lambda: evaluate_checkpoint_on_videos(run, out=tmp_path / "e2"))
    uses_the_path("predict", lambda: Predictor(run / "last.pt", species=["Fox"], device="cpu").predict(video))
    uses_the_path("predict --window", lambda: Predictor(run / "last.pt", device="cpu").predict(video, window=0.5))
    stored = build_and_save(run / "last.pt", num_gpus=0, device=CPU)
    head = model_from_checkpoint(load_checkpoint(run / "last.pt"), "cached").eval()
    cached = clip_from_cache(cache, "test00001.mp4", cfg, head.inputs)
    uses_the_path("analyze clip", lambda: clip_report(stored, head, cached, cfg))
    scorer = VideoScorer(run / "last.pt", device="cpu")
    uses_the_path("analyze clip --video", lambda: clip_report(stored, scorer.head, clip_from_video(scorer, video),
                                                              scorer.cfg))
    _, data = open_cached_data(cfg, cache, load_dataset(cfg.data), CPU, head.inputs)
    uses_the_path("analyze confusions", lambda: confusion_report(stored, head, data["test"], cfg))
    uses_the_path("validation during training", lambda: train(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1)), cache=cache,
        out=tmp_path / "run", progress=False))


def test_auto_precision_is_bf16_for_the_head_only_on_cpus_with_native_bf16(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
        assert precision.autocast_dtype("auto", cpu, "head") == (torch.bfloat16 if native else None)
        assert precision.autocast_dtype("auto", cpu, "tower") is None
    for part in ("head", "tower"):
        assert precision.autocast_dtype("auto", gpu, part) == torch.bfloat16
        assert precision.autocast_dtype("bf16", cpu, part) == torch.bfloat16
        assert precision.autocast_dtype("fp32", gpu, part) is None


def test_bf16_scores_stay_close_to_fp32(fixture: dict):
    head = fixture_head(fixture).eval()
    features = FrameFeatures(fixture["outputs"]["frame_features"])
    species = fixture["inputs"]["species"]
    low, high = (score_views(head, features, species, head.inputs, kind, "softmax") for kind in ("bf16", "fp32"))
    assert low.logits.dtype == torch.float32
    spread = float(high.logits.max() - high.logits.min())
    assert float((low.logits - high.logits).abs().max()) < 0.05 * spread
    assert torch.equal(low.logits.argmax(-1), high.logits.argmax(-1))
    assert np.isfinite(low.scores.numpy()).all()
