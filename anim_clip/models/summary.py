"""Parameter counts per module: total, trainable, and dead (docs/method.md §2.12, D16)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ParameterRow:
    """``dead``: trainable parameters that can never receive a gradient (reported by a module's
    ``dead_parameters()``, e.g. the q/k projections of a generator conditioned on one token)."""

    module: str
    total: int
    trainable: int
    dead: int


def _group(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "head" and len(parts) > 2:
        return f"head.{parts[1]}"
    if parts[0] == "visual" and any(p.startswith("message_") for p in parts):
        return "visual.message_tokens"
    return parts[0]


def parameter_summary(model: nn.Module) -> list[ParameterRow]:
    """One row per module group (in order of appearance), then a ``total`` row."""
    dead = {id(p) for m in model.modules() if hasattr(m, "dead_parameters") for p in m.dead_parameters()}
    counts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        row = counts.setdefault(_group(name), [0, 0, 0])
        row[0] += p.numel()
        row[1] += p.numel() if p.requires_grad else 0
        row[2] += p.numel() if p.requires_grad and id(p) in dead else 0
    rows = [ParameterRow(name, *values) for name, values in counts.items()]
    return rows + [ParameterRow("total", *(sum(getattr(r, f) for r in rows) for f in ("total", "trainable", "dead")))]
