"""Text-side helpers: merging the K description embeddings of a class (docs/method.md §2.4)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from anim_clip.errors import AnimClipError


def pool_text(
    embeddings: Tensor, owner: Tensor, num_classes: int, mode: Literal["max", "mean"] = "max"
) -> Tensor:
    """``(S, D)`` raw text embeddings owned by classes ``owner (S,)`` -> ``(num_classes, D)``.

    ``max`` is the release's element-wise maximum over a class's descriptions; ``mean`` the ablation.
    A class without any text is an error (its row would silently be zero).
    """
    if mode not in ("max", "mean"):
        raise AnimClipError(f"text pooling must be 'max' or 'mean', got {mode!r}")
    owner = owner.to(device=embeddings.device, dtype=torch.long)
    counts = torch.bincount(owner, minlength=num_classes)
    if len(counts) > num_classes or bool((counts == 0).any()):
        missing = (counts[:num_classes] == 0).nonzero().flatten().tolist()
        raise AnimClipError(f"every class needs at least one text; classes without: {missing[:10]}")
    index = owner[:, None].expand_as(embeddings)
    out = embeddings.new_zeros(num_classes, embeddings.shape[1])
    return out.scatter_reduce(0, index, embeddings, reduce="amax" if mode == "max" else "mean", include_self=False)
