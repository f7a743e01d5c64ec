"""What flows between the image tower and the head, and what the head returns (docs/design.md).

The head never knows where ``FrameFeatures`` came from: live from the cross-frame backbone
(end-to-end mode, evaluation on raw videos) or read from the feature cache (phase two).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class FrameFeatures:
    """Per-frame outputs of the image tower for a batch of clips.

    ``cls``: ``(B, T, D)`` CLS embedding after ``ln_post`` and ``proj``, not normalised (the MIT
    input, docs/method.md §2.3). ``patches``: ``(B, T, N, W)`` last-block patch tokens *before*
    ``ln_post`` (X-CLIP's video-specific prompt input, docs/method.md Appendix B), or None.
    ``species``: ``(B, A)`` the separate species predictor's probabilities of each view
    (``species.model``, computed with the frames: extraction, predict, eval on videos), or None.
    """

    cls: Tensor
    patches: Tensor | None = None
    species: Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FrameFeatures:
        patches = None if self.patches is None else self.patches.to(device, dtype)
        species = None if self.species is None else self.species.to(device)
        return FrameFeatures(self.cls.to(device, dtype), patches, species)

    def __getitem__(self, index) -> FrameFeatures:
        """Select clips (``features[idx]``) so a batch can be split or permuted as one object."""
        patches = None if self.patches is None else self.patches[index]
        species = None if self.species is None else self.species[index]
        return FrameFeatures(self.cls[index], patches, species)


@dataclass
class HeadOutput:
    """``logits (B, C)`` = scale × cosine; ``video (B, D)`` L2-normalised; ``text (U, C, D)`` the
    L2-normalised class embeddings of the batch, ``index (B,)`` each clip's row of them (rows are
    shared by clips with the same species vector)."""

    logits: Tensor
    video: Tensor
    text: Tensor
    index: Tensor


Inputs = FrameFeatures | Tensor  # cached features, or normalised pixels (B, T, 3, S, S) end to end


@dataclass
class Batch:
    """One batch of a rank. ``features``: the model's input, cached :class:`FrameFeatures` or, end
    to end, normalised pixels ``(B, T, 3, S, S)``. ``valid`` (None = all) marks clips that count in
    the loss: a clip whose video could not be decoded keeps its slot, filled with a copy of a good
    clip, so shapes stay fixed and every DDP rank still runs its step; ``skipped`` says why."""

    features: Inputs
    targets: Tensor  # (B, C)
    species: Tensor  # (B, A)
    valid: Tensor | None = None  # (B,) bool
    skipped: list[str] = field(default_factory=list)
