"""PNG plots a person would rather look at than read: per-class AP by class frequency, long-tail
group bars, training curves. Metrics are drawn in percent, as the tables show them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402

from anim_clip.io import atomic_write  # noqa: E402

GROUP_COLOURS = {"head": "#1b7837", "middle": "#5aae61", "tail": "#a6dba0"}


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def per_class_ap_figure(report: dict[str, Any], train_counts: np.ndarray) -> Figure:
    """AP of every class with test positives, sorted from the most to the least frequent in training."""
    names = list(report["per_class_ap"])
    order = [i for i in np.argsort(-np.asarray(train_counts), kind="stable") if report["per_class_ap"][names[i]] is not None]
    group_of = {n: g for g, members in report.get("groups", {}).items() for n in members}
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(order) + 2), 4))
    ax.bar(range(len(order)), [100 * report["per_class_ap"][names[i]] for i in order],
           color=[GROUP_COLOURS.get(group_of.get(names[i]), "#4d4d4d") for i in order])
    if len(order) <= 60:
        ax.set_xticks(range(len(order)), [names[i] for i in order], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
    ax.set_ylabel("average precision (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"per-class AP, classes by training frequency (mAP {100 * report['mAP']:.1f}%)")
    if group_of:
        ax.legend(handles=[Patch(color=c, label=g) for g, c in GROUP_COLOURS.items()], loc="upper right")
    return fig


def per_class_ap_plot(report: dict[str, Any], train_counts: np.ndarray, path: Path) -> Path:
    return _save(per_class_ap_figure(report, train_counts), path)


def group_figure(report: dict[str, Any]) -> Figure:
    """mAP of the head, middle and tail classes beside the overall mAP."""
    groups = report["group_mAP"]
    fig, ax = plt.subplots(figsize=(4, 3))
    values = [0.0 if v is None or np.isnan(v) else 100 * v for v in groups.values()]
    ax.bar(list(groups), values, color=[GROUP_COLOURS[g] for g in groups])
    ax.axhline(100 * report["mAP"], color="black", linestyle="--", linewidth=1,
               label=f"overall {100 * report['mAP']:.1f}%")
    ax.set_ylabel("mAP (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("mAP by training frequency")
    return fig


def group_plot(report: dict[str, Any], path: Path) -> Path:
    return _save(group_figure(report), path)


def training_curves_figure(records: list[dict[str, Any]]) -> Figure | None:
    """Each epoch's mean training loss (a step record holds one batch's, too noisy to compare epochs by),
    the learning rate per logged step, and the selection metric per epoch when there is one."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r for r in records if r.get("kind") == "step"]
    selected = [r for r in epochs if "val_metric" in r]
    if not epochs:
        return None
    fig, axes = plt.subplots(1, 3 if selected else 2, figsize=(12 if selected else 8, 3))
    axes[0].plot([r["epoch"] for r in epochs], [r["loss"] for r in epochs], marker="o")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training loss (epoch mean)")
    axes[1].plot([r["step"] for r in steps], [r["lr"] for r in steps])
    axes[1].set_xlabel("optimiser step")
    axes[1].set_ylabel("learning rate (new modules)")
    if selected:
        axes[2].plot([r["epoch"] for r in selected], [100 * r["val_metric"] for r in selected], marker="o")
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel(f"{selected[0].get('val_metric_name', 'selection metric')} (%)")
    fig.tight_layout()
    return fig


def training_curves_plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    """training_curves.png of a run's metrics.jsonl records; None before its first epoch ends."""
    fig = training_curves_figure(records)
    return None if fig is None else _save(fig, path)
