"""Training losses (docs/method.md §3). The release trains with soft-target cross-entropy on
un-normalised multi-hot (then mixed) targets; the others are ablations."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_target_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_b -sum_k y_bk log softmax(z_b)_k`` with y as given (a 3-label clip has mass 3)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def normalised_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft-target CE with each clip's target mass scaled to 1 (docs/method.md D8 ablation)."""
    return soft_target_ce(logits, targets / targets.sum(-1, keepdim=True).clamp(min=1e-12))


def bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the logits (the ACM MM'23 predecessor's loss)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.clamp(0, 1))


def asymmetric(logits: torch.Tensor, targets: torch.Tensor, gamma_neg: float = 2.0, gamma_pos: float = 1.0,
               clip: float = 0.05) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al.) with the release's settings; focusing weights carry no gradient.

    The release sums over the batch; this averages, so the learning rate does not depend on the batch size.
    """
    y = targets.clamp(0, 1)
    p = torch.sigmoid(logits.float())
    p_neg = (p - clip).clamp(min=0)
    loss_pos = y * torch.log(p.clamp(min=1e-8))
    loss_neg = (1 - y) * torch.log((1 - p_neg).clamp(min=1e-8))
    with torch.no_grad():
        weight = torch.pow(1 - p * y - p_neg * (1 - y), gamma_pos * y + gamma_neg * (1 - y))
    return -((loss_pos + loss_neg) * weight).sum(-1).mean()


LOSSES: dict[str, Loss] = {"ce": soft_target_ce, "ce_norm": normalised_ce, "bce": bce, "asl": asymmetric}
