"""AdamW with the release's parameter groups (docs/method.md §6).

Two learning rates: the CLIP image tower at ``train.lr``; the new modules (message tokens and the
whole head: MIT, graph refinement, prompts) at ``train.head_lr`` (10×). Weight decay applies to
weights of two or more dimensions, never to biases, norms, scalars or positional embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from anim_clip.config import TrainConfig


def is_new_module(name: str, whole_model_is_head: bool) -> bool:
    """Parameters the release trains at 10×: names with ``message_`` and everything in the head."""
    return whole_model_is_head or name.startswith("head.") or "message_" in name


def decays(name: str, param: nn.Parameter) -> bool:
    return param.ndim >= 2 and "positional_embedding" not in name


def param_groups(model: nn.Module, cfg: TrainConfig, whole_model_is_head: bool) -> list[dict]:
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((is_new_module(name, whole_model_is_head), decays(name, param)), []).append(param)
    return [
        {"params": params, "lr": cfg.head_lr if new else cfg.lr, "weight_decay": cfg.weight_decay if decay else 0.0,
         "name": f"{'new' if new else 'backbone'}{'' if decay else '-no-decay'}"}
        for (new, decay), params in sorted(groups.items())
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig, whole_model_is_head: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg, whole_model_is_head), betas=cfg.betas, eps=cfg.eps)
