"""Multi-frame integration transformer: per-frame CLS embeddings -> one video embedding (docs/method.md §2.3)."""

from __future__ import annotations

import torch
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import Tensor, nn

from anim_clip.errors import AnimClipError


class MultiFrameIntegration(nn.Module):
    """``v = mean_t(Blocks(F + P)_t + F_t)``: the outer residual adds the *un-positioned* input.

    ``layers=0`` is the ablation "plain mean over frames" (no positional embedding, no block).
    Blocks are open_clip's pre-LN blocks (QuickGELU, ``D // 64`` heads), whose parameter names are
    the release's (``resblocks.{j}.attn/ln_1/mlp.c_fc/mlp.c_proj/ln_2``).
    """

    def __init__(self, num_frames: int, embed_dim: int, layers: int = 1):
        super().__init__()
        if layers and embed_dim < 64:
            raise AnimClipError(f"the temporal transformer has embed_dim // 64 attention heads, so it needs an "
                                f"embedding width of at least 64; this backbone's is {embed_dim}")
        self.num_frames = num_frames
        self.resblocks = nn.Sequential(
            *(ResidualAttentionBlock(embed_dim, embed_dim // 64, act_layer=QuickGELU) for _ in range(layers))
        )
        if layers:
            self.positional_embedding = nn.Parameter(torch.empty(1, num_frames, embed_dim))
            nn.init.trunc_normal_(self.positional_embedding, std=0.02)
            self.apply(_init_release)

    def forward(self, frames: Tensor) -> Tensor:
        if frames.shape[1] != self.num_frames:
            raise AnimClipError(
                f"the model integrates {self.num_frames} frames per clip, the features have {frames.shape[1]}"
            )
        if not len(self.resblocks):
            return frames.mean(dim=1)
        return (self.resblocks(frames + self.positional_embedding) + frames).mean(dim=1)


def _init_release(m: nn.Module) -> None:
    """X-CLIP's MIT init: every Linear (MHA's out-projection too) trunc-normal 0.02, zero bias.

    MHA's in-projection keeps PyTorch's Xavier init (it is not an ``nn.Linear``); LayerNorms (1, 0).
    """
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
