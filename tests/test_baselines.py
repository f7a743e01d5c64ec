"""The baselines beside the head: zero-shot and the linear probe against independent computations
(numpy on the stored arrays, scikit-learn), and every report that carries them — eval.json, the
table of `anim-clip eval`, the sweep's comparison, the demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from processes import run_cli
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_train import cache, cfg_for, data, run  # noqa: F401  (module fixtures: a demo cache and a trained run)

from anim_clip.cache.reader import open_cached_data
from anim_clip.config import Config, load_config
from anim_clip.data.dataset import hold_out, load_dataset
from anim_clip.demo import finished_report
from anim_clip.errors import AnimClipError
from anim_clip.evaluate.baselines import (PROBE_C, PROBE_VAL_FRACTION, cached_baselines, fit_probe,
                                          temporal_statistics, train_probe)
from anim_clip.runtime.rundir import RunDir
from anim_clip.models.inputs import HeadInputs


def stored(cache: Path, path: str) -> np.ndarray:
    return zarr.open_array(cache / path, mode="r")[...]


def frame_features(cache: Path, split: str) -> np.ndarray:
    """``(N, V, T, D)`` float64, read straight from the store (every clip of the fixture is usable)."""
    return stored(cache, f"{split}/cls").astype(np.float64)


def mAP(scores: np.ndarray, targets: np.ndarray) -> float:
    present = targets.sum(0) > 0
    return float(average_precision_score(targets[:, present], scores[:, present], average=None).mean())


def zero_shot_by_hand(cls: np.ndarray, text: np.ndarray, scale: float, kind: str) -> np.ndarray:
    video = cls.mean(2)
    video /= np.linalg.norm(video, axis=-1, keepdims=True)
    logits = scale * video @ (text / np.linalg.norm(text, axis=-1, keepdims=True)).T
    if kind == "softmax":
        views = np.exp(logits - logits.max(-1, keepdims=True))
        views /= views.sum(-1, keepdims=True)
    else:
        views = 1 / (1 + np.exp(-logits))
    return views.mean(1)


def statistics_by_hand(cls: np.ndarray) -> np.ndarray:
    return np.concatenate([cls.mean(2), cls.std(2)], -1)


def views(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every view of clips ``x (N, V, F)`` a sample, with its clip's labels."""
    return x.reshape(-1, x.shape[-1]), np.repeat(y, x.shape[1], 0)


def sklearn_probe(x: np.ndarray, y: np.ndarray, C: float, multilabel: bool):
    regression = LogisticRegression(C=C, max_iter=5000, tol=1e-8)
    x_views, y_views = views(x, y)
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(regression) if multilabel else regression)
    return model.fit(x_views, y_views if multilabel else y_views.argmax(1))


def objective_by_hand(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray, C: float,
                      multilabel: bool) -> float:
    """scikit-learn's: the mean loss of ``x`` (standardised views) plus |W|² / (2·C·n)."""
    logits = x @ weight + bias
    if multilabel:
        loss = np.logaddexp(0, logits) - y * logits  # binary cross-entropy, summed over the classes
    else:
        loss = np.logaddexp.reduce(logits, axis=1) - logits[np.arange(len(y)), y.argmax(1)]
    return float(loss.sum() / len(x) + (weight**2).sum() / (2 * C * len(x)))


def sklearn_parameters(model, present: np.ndarray, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weights and biases of the classes with training examples (scikit-learn models only those)."""
    last = model[-1]
    if multilabel:
        fitted = [last.estimators_[k] for k in np.flatnonzero(present)]
        return np.stack([e.coef_[0] for e in fitted], 1), np.array([e.intercept_[0] for e in fitted])
    return last.coef_.T, last.intercept_


def primary_by_hand(scores: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    return mAP(scores, y) if multilabel else float((scores.argmax(1) == y.argmax(1)).mean())


def fp32(data: Path, *extra: str) -> Config:
    return cfg_for(data, "runtime.precision=fp32", *extra)


def opened(cfg: Config, cache: Path):
    return open_cached_data(cfg, cache, load_dataset(cfg.data), torch.device("cpu"), HeadInputs.of_config(cfg))


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_zero_shot_is_clip_on_the_frame_mean_against_the_class_text(data: Path, cache: Path, kind: str):
    cfg = fp32(data, f"eval.scores={kind}")
    cache_obj, splits = opened(cfg, cache)
    scores, _ = cached_baselines(cache_obj, splits, "test", cfg, multilabel=True)
    expected = zero_shot_by_hand(frame_features(cache, "test"), stored(cache, "text/actions/name_embeddings"),
                                 cfg.model.logit_scale, kind)
    assert np.allclose(scores["zero_shot"], expected, atol=1e-5)


def training_views(cache: Path, multilabel: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The probe's input by hand: statistics of the training and test clips, and the training labels
    (for single-label data: each clip's first action)."""
    x, x_test = statistics_by_hand(frame_features(cache, "train")), statistics_by_hand(frame_features(cache, "test"))
    y = stored(cache, "train/targets").astype(np.float64)
    return x, x_test, (y if multilabel else np.eye(y.shape[1])[y.argmax(1)])


def test_the_probe_reads_the_mean_and_std_over_frames(data: Path, cache: Path):
    _, splits = opened(fp32(data), cache)
    for split in ("train", "test"):
        features = temporal_statistics(splits[split]).numpy()
        assert np.allclose(features, statistics_by_hand(frame_features(cache, split)), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Label not 0 is present")
@pytest.mark.parametrize("multilabel", [True, False])
def test_the_probe_solves_sklearns_logistic_regression(cache: Path, multilabel: bool):
    x, x_test, y = training_views(cache, multilabel)
    if multilabel:
        y[:, 0] = 0  # a class without a training example: scored 0, as scikit-learn's one-vs-rest does
    present = y.sum(0) > 0
    for C in PROBE_C:
        probe = fit_probe(torch.from_numpy(x).float(), torch.from_numpy(y), multilabel, C)
        reference = sklearn_probe(x, y, C, multilabel)
        scaler = reference[0]
        assert np.allclose(probe.mean.numpy(), scaler.mean_, atol=1e-5)
        assert np.allclose(probe.scale.numpy(), scaler.scale_, rtol=1e-5)
        standardised, labels = scaler.transform(views(x, y)[0]), views(x, y)[1][:, present]
        ours = objective_by_hand(probe.weight[:, present].double().numpy(), probe.bias[present].double().numpy(),
                                 standardised, labels, C, multilabel)
        best = objective_by_hand(*sklearn_parameters(reference, present, multilabel), standardised, labels, C,
                                 multilabel)
        assert ours == pytest.approx(best, rel=1e-4), C  # the same minimum, to scikit-learn's default tolerance
        proba = reference.predict_proba(x_test.reshape(-1, x_test.shape[-1]))
        if not multilabel:
            proba = np.insert(proba, np.flatnonzero(~present) - np.arange((~present).sum()), 0, axis=1)
        expected = proba.reshape(len(x_test), x_test.shape[1], -1).mean(1)
        assert np.abs(probe.scores(torch.from_numpy(x_test).float()) - expected).max() < 0.01, C


@pytest.mark.parametrize("multilabel", [True, False])
def test_the_probes_c_is_chosen_on_held_out_training_clips_then_refitted_on_all(cache: Path, multilabel: bool):
    x, x_test, y = (torch.from_numpy(a).float() for a in training_views(cache, multilabel))
    fit, val = hold_out(torch.arange(len(x)), PROBE_VAL_FRACTION, seed=3)
    held_out = [primary_by_hand(fit_probe(x[fit], y[fit], multilabel, C).scores(x[val]), y[val].numpy(), multilabel)
                for C in PROBE_C]
    probe = train_probe(x, y, multilabel, seed=3)
    assert probe.C == PROBE_C[int(np.argmax(held_out))]
    assert np.array_equal(probe.scores(x_test), fit_probe(x, y, multilabel, probe.C).scores(x_test))


def test_eval_json_and_the_eval_table_carry_every_baseline(run: Path, data: Path, cache: Path, tmp_path: Path):
    report = json.loads((run / "eval.json").read_text())
    baselines = report["baselines"]
    assert list(baselines) == ["frequency", "zero_shot", "linear_probe"]
    for baseline in baselines.values():  # the head's metrics, each of them
        assert {k for k in report if k in ("mAP", "per_class_ap", "group_mAP", "inconsistent_top5", "top1")} <= set(baseline)
    targets = stored(cache, "test/targets")
    counts = stored(cache, "train/targets").sum(0)
    assert baselines["frequency"]["mAP"] == pytest.approx(mAP(np.tile(counts / counts.sum(), (len(targets), 1)), targets))
    cfg = load_config(run / "config.yaml")
    zero_shot = zero_shot_by_hand(frame_features(cache, "test"), stored(cache, "text/actions/name_embeddings"),
                                  cfg.model.logit_scale, cfg.eval.scores)
    assert baselines["zero_shot"]["mAP"] == pytest.approx(mAP(zero_shot, targets), abs=1e-9)
    _, splits = opened(cfg, cache)
    probe = train_probe(temporal_statistics(splits["train"]), splits["train"].targets(), report["multilabel"],
                        cfg.train.seed)
    assert baselines["linear_probe"]["C"] == probe.C
    assert baselines["linear_probe"]["mAP"] == pytest.approx(mAP(probe.scores(temporal_statistics(splits["test"])),
                                                                 targets), abs=1e-9)

    proc = run_cli("eval", str(run), "--cache", str(cache), "--out", str(tmp_path))
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["baselines"] == baselines
    header = next(line for line in proc.stdout.splitlines() if "metric" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ["metric", "Animal-CLIP", "frequency", "zero-shot",
                                                                  "linear probe"]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("│ mAP "))
    assert [c.strip() for c in row.strip("│ ").split("│")][1:] == [
        f"{100 * v:.2f}" for v in (again["mAP"], *(b["mAP"] for b in baselines.values()))]


def test_the_demo_reuses_only_a_run_of_its_own_recipe(run: Path, data: Path, tmp_path: Path):
    cfg = load_config(run / "config.yaml")
    assert finished_report(RunDir(run), cfg) == json.loads((run / "eval.json").read_text())
    with pytest.raises(AnimClipError, match=r"trained otherwise \(train\.epochs\): delete it"):
        finished_report(RunDir(run), cfg_for(data, "train.epochs=7"))
    old = Path(shutil.copytree(run, tmp_path / "old"))
    report = json.loads((old / "eval.json").read_text())
    del report["baselines"]
    (old / "eval.json").write_text(json.dumps(report))
    with pytest.raises(AnimClipError, match="its report has no baselines"):
        finished_report(RunDir(old), cfg)
    assert finished_report(RunDir(tmp_path / "none"), cfg) is None
