"""Metrics against independent oracles: sklearn for AP, plain numpy loops for the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from anim_clip.config import DataConfig
from anim_clip.data.dataset import load_dataset
from anim_clip.evaluate.metrics import (
    frequency_groups,
    group_means,
    group_topk_accuracy,
    inconsistency_rate,
    long_tail_thresholds,
    mean_average_precision,
    per_class_accuracy,
    topk_accuracy,
)


@pytest.mark.parametrize("ties", [False, True])
def test_map_equals_sklearn(ties):
    rng = np.random.default_rng(0)
    targets = (rng.random((300, 40)) < 0.1).astype(np.float32)
    targets[:, 5] = 0  # a class without positives is left out
    scores = rng.random((300, 40))
    if ties:
        scores = np.round(scores * 8) / 8  # many tied scores
    mAP, per_class = mean_average_precision(scores, targets)
    valid = targets.sum(0) > 0
    oracle = average_precision_score(targets[:, valid], scores[:, valid], average=None)
    np.testing.assert_allclose(per_class[valid], oracle, rtol=1e-12)
    assert np.isnan(per_class[5])
    assert mAP == pytest.approx(oracle.mean(), rel=1e-12)
    mAP_t, _ = mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    assert mAP_t == pytest.approx(mAP)


def test_ak_groups_reproduce_the_release_lists():
    """docs/method.md §5: head > 500, tail < 100 training clips give the release's hard-coded AK lists."""
    train = load_dataset(DataConfig(format="ak")).targets("train").sum(0)
    groups = frequency_groups(train, head_min=500, tail_max=100)
    assert groups["head"].tolist() == [1, 2, 15, 38, 40, 48, 52, 67, 68, 69, 78, 90, 100, 102, 104, 123, 128, 133]
    assert groups["middle"].tolist() == [5, 7, 8, 10, 13, 16, 25, 26, 27, 32, 39, 45, 46, 47, 49, 51, 58, 65, 80,
                                         84, 96, 97, 99, 103, 105, 108, 112, 114, 116, 118, 120, 135]
    assert len(groups["tail"]) == 90


def test_ak_keeps_its_configured_thresholds():
    train = load_dataset(DataConfig(format="ak")).targets("train").sum(0)
    assert long_tail_thresholds(train, 500, 100) == {"head_min": 500, "tail_max": 100, "derived": None}


def test_a_small_training_set_gets_groups_from_its_own_counts():
    """48 demo clips: every class has fewer than 30 clips, so AK-style thresholds call every class tail."""
    counts = np.array([8, 7, 5, 4, 7, 14, 8])
    assert [len(ids) for ids in frequency_groups(counts, 50, 30).values()] == [0, 0, 7]
    thresholds = long_tail_thresholds(counts, 50, 30)
    assert (thresholds["head_min"], thresholds["tail_max"]) == (8, 7)  # sorted 4 5 7 7 8 8 14, cut at the thirds
    assert thresholds["derived"] == ("the configured eval.head_min=50, eval.tail_max=30 left head and middle empty; "
                                     "cut at the thirds of the training counts instead")
    groups = frequency_groups(counts, thresholds["head_min"], thresholds["tail_max"])
    assert {k: v.tolist() for k, v in groups.items()} == {"head": [5], "middle": [0, 1, 4, 6], "tail": [2, 3]}
    distinct = long_tail_thresholds(np.arange(1, 10), 50, 30)
    assert [len(ids) for ids in frequency_groups(np.arange(1, 10), distinct["head_min"], distinct["tail_max"]).values()] == [3, 3, 3]


def test_the_table_names_the_model_column_and_the_groups_thresholds():
    from anim_clip.config import EvalConfig
    from anim_clip.evaluate.report import EvalContext, evaluation_report, report_table
    from anim_clip.ui import console

    rng = np.random.default_rng(3)
    counts = np.array([8, 7, 5, 4, 7, 14, 8])
    targets = np.eye(7)[rng.integers(0, 7, 30)]
    ctx = EvalContext(actions=list("abcdefg"), train_counts=counts, can_perform=np.ones((2, 7), bool), multilabel=True)
    report = evaluation_report(rng.random((30, 7)), targets, np.eye(2)[rng.integers(0, 2, 30)], ctx,
                               EvalConfig(head_min=50, tail_max=30))
    assert report["long_tail"] == long_tail_thresholds(counts, 50, 30) and report["groups"]["head"] == ["f"]
    with console.capture() as captured:
        console.print(report_table(report, "test"), width=200)
    text = captured.get()
    header = next(line for line in text.splitlines() if "metric" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ["metric", "Animal-CLIP", "frequency"]
    assert "head mAP (1 class)" in text and "tail mAP (2 classes)" in text
    caption = " ".join(text.split("┘")[-1].split())  # under the table, wrapped to its width
    assert caption.startswith("groups by training clips per class: head > 8, tail < 7 (the configured eval.head_min=50")
    configured = evaluation_report(rng.random((30, 7)), targets, np.zeros((30, 2)), ctx, EvalConfig(head_min=7, tail_max=5))
    assert configured["long_tail"]["derived"] is None
    with console.capture() as captured:
        console.print(report_table(configured, "test"), width=200)
    assert "head > 7, tail < 5 (eval.head_min, eval.tail_max)" in " ".join(captured.get().split())


def test_group_means_ignore_undefined_classes():
    per_class = np.array([0.5, np.nan, 1.0, 0.25])
    out = group_means(per_class, {"head": np.array([0, 1]), "tail": np.array([2, 3]), "middle": np.array([1])})
    assert out["head"] == 0.5 and out["tail"] == 0.625 and np.isnan(out["middle"])


def test_single_label_accuracies():
    rng = np.random.default_rng(1)
    scores = rng.random((200, 12))
    labels = rng.integers(0, 12, 200)
    ranks = [(scores[i] > scores[i, labels[i]]).sum() for i in range(200)]
    assert topk_accuracy(scores, labels, 1) == pytest.approx(np.mean([r < 1 for r in ranks]))
    assert topk_accuracy(scores, labels, 5) == pytest.approx(np.mean([r < 5 for r in ranks]))
    pca = per_class_accuracy(scores, labels, 13)
    for c in range(12):
        mask = labels == c
        assert pca[c] == pytest.approx((scores[mask].argmax(1) == c).mean())
    assert np.isnan(pca[12])
    groups = {"head": np.array([0, 1, 2]), "tail": np.array([3, 4])}
    acc = group_topk_accuracy(scores, labels, groups, 1)
    mask = np.isin(labels, [0, 1, 2])
    assert acc["head"] == pytest.approx((scores[mask].argmax(1) == labels[mask]).mean())


def test_inconsistency_counts_impossible_top5():
    can = np.array([[1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1]], dtype=bool)  # 2 species, 7 actions
    scores = np.array([[7, 6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1]], dtype=float)
    species = np.array([[1, 0], [1, 0], [0, 0]])
    # clip 0: top-5 = 0..4, species 0 performs 0,1 -> 3 impossible; clip 1: top-5 = 6..2 -> 5 impossible;
    # clip 2 has no species and is left out
    assert inconsistency_rate(scores, species, can) == pytest.approx(8 / 10)
    both = np.array([[1, 1], [1, 1]])
    assert inconsistency_rate(scores[:2], both, can) == 0.0


def test_report_on_unseen_species_alone():
    from anim_clip.config import EvalConfig
    from anim_clip.evaluate.report import EvalContext, evaluation_report

    rng = np.random.default_rng(2)
    scores, targets = rng.random((40, 5)), np.eye(5)[rng.integers(0, 5, 40)]
    species = np.eye(3)[rng.integers(0, 3, 40)]
    ctx = EvalContext(actions=list("abcde"), train_counts=np.full(5, 10), can_perform=np.ones((3, 5), bool),
                      multilabel=False, unseen_species=(2,))
    report = evaluation_report(scores, targets, species, ctx, EvalConfig())
    mask = species[:, 2] > 0
    assert report["unseen_species"]["clips"] == int(mask.sum())
    assert report["unseen_species"]["top1"] == pytest.approx((scores[mask].argmax(1) == targets[mask].argmax(1)).mean())
    assert "unseen_species" not in report["unseen_species"]


def test_the_table_says_in_words_when_a_baseline_beats_the_model():
    from anim_clip.config import EvalConfig
    from anim_clip.evaluate.report import EvalContext, evaluation_report, report_table
    from anim_clip.ui import console

    rng = np.random.default_rng(5)
    targets = np.eye(4)[rng.integers(0, 4, 40)]
    ctx = EvalContext(actions=list("abcd"), train_counts=np.array([9, 9, 9, 9]), can_perform=np.ones((1, 4), bool),
                      multilabel=True)
    perfect, noise = targets + 0.01 * rng.random(targets.shape), rng.random(targets.shape)

    def caption(model: np.ndarray, probe: np.ndarray) -> str:
        report = evaluation_report(model, targets, np.zeros((40, 1)), ctx, EvalConfig(long_tail=False),
                                   {"linear_probe": probe})
        with console.capture() as captured:
            console.print(report_table(report, "test"), width=200)
        return " ".join(captured.get().split("┘")[-1].split()), report

    text, report = caption(noise, perfect)
    gap = 100 * (report["baselines"]["linear_probe"]["mAP"] - report["mAP"])
    assert f"the linear probe baseline is {gap:.2f} points of mAP ahead of Animal-CLIP" in text
    text, _ = caption(perfect, noise)
    assert "ahead of Animal-CLIP" not in text
