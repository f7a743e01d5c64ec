"""Turn test scores into the field's report: metrics, long-tail groups, the baselines beside the head, a
table, JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from rich.table import Table

from anim_clip.config import EvalConfig
from anim_clip.evaluate.baselines import TITLES, frequency_scores
from anim_clip.evaluate.metrics import (
    any_topk_accuracy,
    frequency_groups,
    group_means,
    group_topk_accuracy,
    inconsistency_rate,
    long_tail_thresholds,
    mean_average_precision,
    per_class_accuracy,
    topk_accuracy,
)
from anim_clip.ui import table


@dataclass(frozen=True)
class EvalContext:
    """What the metrics need besides scores: the vocabulary, training frequencies and the graph."""

    actions: list[str]
    train_counts: np.ndarray  # (C,) training clips per action
    can_perform: np.ndarray  # (A, C) bool
    multilabel: bool
    unseen_species: tuple[int, ...] = ()  # species held out of training (data.unseen_species)


HEADLINE = ("mAP", "top1", "top5", "mean_class_accuracy")  # the action metrics compared across species inputs
SPECIES_INPUTS = {False: "annotated", True: "predicted"}  # the species the head is given, by "predicted?"


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The report's action metrics that :data:`HEADLINE` names (those its dataset has)."""
    return {key: report[key] for key in HEADLINE if key in report}


def predictor_accuracy(probabilities: np.ndarray, annotated: np.ndarray, predictor: Mapping[str, Any]) -> dict[str, Any]:
    """A species predictor's top-1/top-5 against the multi-hot annotation (clips without an
    annotated species left out and counted), with the ``predictor``'s model and template."""
    labelled = annotated.sum(1) > 0
    return {"model": predictor["model"], "template": predictor["template"],
            "top1": any_topk_accuracy(probabilities, annotated, 1), "top5": any_topk_accuracy(probabilities, annotated, 5),
            "clips": int(labelled.sum()), "clips_without_species": int((~labelled).sum())}


def species_input(own_predicted: bool, own: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """The head's action metrics given the annotated species and given the predicted ones, side by
    side: ``own`` is the report of the species the head takes, ``other`` of the others."""
    return {"report_uses": SPECIES_INPUTS[own_predicted], SPECIES_INPUTS[own_predicted]: headline(own),
            SPECIES_INPUTS[not own_predicted]: headline(other)}


def primary_metric(report: dict[str, Any]) -> tuple[str, float]:
    """mAP for multi-label datasets (AK), top-1 accuracy for single-label ones (docs/method.md §4.1)."""
    key = "mAP" if report["multilabel"] else "top1"
    return key, report[key]


def evaluation_report(scores: np.ndarray, targets: np.ndarray, species: np.ndarray, ctx: EvalContext,
                      cfg: EvalConfig, baselines: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The head's metrics, and under ``baselines`` the same metrics of the class-frequency baseline and
    of the other ``baselines`` scores given (:mod:`anim_clip.evaluate.baselines`); its ``unit`` says
    they are fractions (tables, CSV and plots show them in percent)."""
    report = {"unit": "fraction", **metrics_report(scores, targets, species, ctx, cfg)}
    given = {"frequency": frequency_scores(ctx.train_counts, len(scores)), **(baselines or {})}
    report["baselines"] = {name: metrics_report(s, targets, species, ctx, cfg) for name, s in given.items()}
    return report


def metrics_report(scores: np.ndarray, targets: np.ndarray, species: np.ndarray, ctx: EvalContext,
                   cfg: EvalConfig) -> dict[str, Any]:
    """Every metric of ``scores`` as plain JSON-able values; fractions (not percentages), as the release logs them."""
    mAP, per_class_ap = mean_average_precision(scores, targets)
    out: dict[str, Any] = {
        "clips": int(len(scores)),
        "multilabel": ctx.multilabel,
        "mAP": mAP,
        "per_class_ap": {a: (None if np.isnan(v) else float(v)) for a, v in zip(ctx.actions, per_class_ap)},
    }
    thresholds = long_tail_thresholds(ctx.train_counts, cfg.head_min, cfg.tail_max) if cfg.long_tail else None
    groups = frequency_groups(ctx.train_counts, thresholds["head_min"], thresholds["tail_max"]) if thresholds else {}
    if groups:
        out["long_tail"] = thresholds
        out["groups"] = {name: [ctx.actions[i] for i in ids] for name, ids in groups.items()}
        out["group_mAP"] = group_means(per_class_ap, groups)
    if not ctx.multilabel:
        labels = targets.argmax(1)
        out["top1"] = topk_accuracy(scores, labels, 1)
        out["top5"] = topk_accuracy(scores, labels, 5)
        out["mean_class_accuracy"] = float(np.nanmean(per_class_accuracy(scores, labels, len(ctx.actions))))
        if groups:
            out["group_top1"] = group_topk_accuracy(scores, labels, groups, 1)
            out["group_top5"] = group_topk_accuracy(scores, labels, groups, 5)
    if cfg.inconsistency and species.shape[1]:
        out["inconsistent_top5"] = inconsistency_rate(scores, species, ctx.can_perform, k=5)
    if ctx.unseen_species:
        # the same metrics on the clips that show a species never seen in training
        mask = species[:, list(ctx.unseen_species)].sum(1) > 0
        if mask.any():
            seen_ctx = replace(ctx, unseen_species=())
            out["unseen_species"] = metrics_report(scores[mask], targets[mask], species[mask], seen_ctx, cfg)
    return out


def _pct(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.2f}"


def metric_rows(report: dict[str, Any]) -> dict[str, str]:
    """Row label -> formatted value of one report's metrics (the head's or a baseline's)."""
    rows = {"mAP": _pct(report["mAP"])}
    for name, value in report.get("group_mAP", {}).items():
        count = len(report["groups"][name])
        rows[f"{name} mAP ({count} class{'es' if count != 1 else ''})"] = _pct(value)
    for key in ("top1", "top5", "mean_class_accuracy"):
        if key in report:
            rows[key.replace("_", " ")] = _pct(report[key])
    for name, value in report.get("group_top1", {}).items():
        rows[f"{name} top-1"] = _pct(value)
    if "inconsistent_top5" in report:
        rows["top-5 actions the species cannot perform"] = _pct(report["inconsistent_top5"])
    if "unseen_species" in report:
        unseen = report["unseen_species"]
        key = "mAP" if unseen["multilabel"] else "top1"
        rows[f"unseen species: {key} ({unseen['clips']} clips)"] = _pct(unseen[key])
    return rows


MODEL_COLUMN = "Animal-CLIP"  # the trained model's column: not "head", a name the long-tail rows use


def report_table(report: dict[str, Any], title: str) -> Table:
    """The model's metrics and, in a column each beside them, the baselines'; then the species predictor's
    rows (:func:`_predictor_rows`), the model's alone; under the table, the long-tail groups' thresholds."""
    columns = {MODEL_COLUMN: metric_rows(report)}
    columns |= {TITLES[name]: metric_rows(baseline) for name, baseline in report.get("baselines", {}).items()}
    rows = [[label, *(column.get(label, "-") for column in columns.values())] for label in columns[MODEL_COLUMN]]
    blank = [""] * (len(columns) - 1)
    rows += [[label, value, *blank] for label, value in _predictor_rows(report)]
    for split, count in report.get("pending_clips", {}).items():
        rows.append([f"{split} clips not extracted (left out, --allow-incomplete)", str(count), *blank])
    out = table(f"{title} ({report['clips']} clips, %)", ["metric", *columns], rows)
    notes = [note for note in (long_tail_note(report), baseline_gap_note(report)) if note]
    out.caption, out.caption_justify = "\n".join(notes) or None, "left"
    return out


def baseline_gap_note(report: dict[str, Any]) -> str | None:
    """Said in plain words when a baseline beats the trained model on the primary metric, with the gap:
    on a small training set a probe on the frozen features can, and a reader of one number would miss it."""
    metric, value = primary_metric(report)
    baselines = {name: primary_metric(b)[1] for name, b in report.get("baselines", {}).items()}
    ahead = {name: v - value for name, v in baselines.items() if v > value}  # NaN compares false
    if not ahead:
        return None
    best = max(ahead, key=ahead.get)
    return (f"the {TITLES[best]} baseline is {100 * ahead[best]:.2f} points of {metric} ahead of {MODEL_COLUMN} "
            "on this split: the trained model does worse than it here (most often on a small training set)")


def long_tail_note(report: dict[str, Any]) -> str | None:
    """Which thresholds made the long-tail groups, and why (configured, or derived from the training counts)."""
    thresholds = report.get("long_tail")
    if thresholds is None:
        return None
    note = f"groups by training clips per class: head > {thresholds['head_min']}, tail < {thresholds['tail_max']}"
    return note + (f" ({thresholds['derived']})" if thresholds["derived"] else " (eval.head_min, eval.tail_max)")


def _predictor_rows(report: dict[str, Any]) -> list[list[str]]:
    """The species predictor's accuracy, then each action metric given the annotated | predicted species."""
    predictor = report.get("species_predictor")
    if predictor is None:
        return []
    without = predictor["clips_without_species"]
    clips = f"{predictor['clips']} clips" + (f"; {without} without annotated species left out" if without else "")
    rows = [["species predictor", predictor["model"]],
            *([f"predicted species top-{k} ({clips})", _pct(predictor[f"top{k}"])] for k in (1, 5))]
    given = report.get("species_input")
    if given is not None:
        rows.append(["the metrics above are given", f"{given['report_uses']} species"])
        rows += [[f"{key.replace('_', ' ')} given annotated | predicted species",
                  f"{_pct(given['annotated'][key])} | {_pct(given['predicted'][key])}"] for key in given["annotated"]]
    return rows
