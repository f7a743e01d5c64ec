"""open_clip's ViT with X-CLIP's cross-frame message tokens in every block (docs/method.md §2.2).

The CLIP parameters are adopted from an open_clip ``VisionTransformer`` (pretrained or not), so the
state-dict names are CLIP's (``conv1``, ``transformer.resblocks.{i}.attn`` ...), and each block
gains ``message_fc``, ``message_ln`` and ``message_attn`` with PyTorch's default initialisation,
as in the release (the message path is not zero-initialised).
"""

from __future__ import annotations

import torch
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from anim_clip.errors import AnimClipError
from anim_clip.models.backbone import tower_name
from anim_clip.models.features import FrameFeatures


class CrossFrameBlock(nn.Module):
    """A CLIP block whose frames also attend to one message token per frame.

    Message tokens ``m_t = W cls_t + b`` exchange information across the T frames of a clip
    (self-attention over time, pre-LN, residual), each frame's token set is extended by its own
    message token for CLIP's attention, and the message token is dropped before the MLP.
    """

    def __init__(self, block: ResidualAttentionBlock):
        super().__init__()
        width, heads = block.attn.embed_dim, block.attn.num_heads
        self.message_fc = nn.Linear(width, width)
        self.message_ln = type(block.ln_1)(width)
        self.message_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1, self.attn, self.ls_1 = block.ln_1, block.attn, block.ls_1
        self.ln_2, self.mlp, self.ls_2 = block.ln_2, block.mlp, block.ls_2

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        frames, tokens, width = x.shape
        msg = self.message_fc(x[:, 0]).view(frames // num_frames, num_frames, width)
        y = self.message_ln(msg)
        msg = msg + self.message_attn(y, y, y, need_weights=False)[0]
        x = torch.cat([x, msg.reshape(frames, 1, width)], dim=1)
        y = self.ln_1(x)
        x = x + self.ls_1(self.attn(y, y, y, need_weights=False)[0])
        x = x[:, :tokens]
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class CrossFrameTransformer(nn.Module):
    def __init__(self, blocks: list[CrossFrameBlock]):
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, num_frames, use_reentrant=False)
            else:
                x = block(x, num_frames)
        return x


class CrossFrameVisionTransformer(nn.Module):
    """``video (B, T, 3, H, W)`` -> :class:`FrameFeatures` (CLS after ``ln_post @ proj``; patch
    tokens before ``ln_post``, as X-CLIP uses them)."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        cross_frame_dims(vit)
        self.conv1 = vit.conv1
        self.class_embedding = vit.class_embedding
        self.positional_embedding = vit.positional_embedding
        self.patch_dropout = vit.patch_dropout
        self.ln_pre = vit.ln_pre
        self.transformer = CrossFrameTransformer([CrossFrameBlock(b) for b in vit.transformer.resblocks])
        self.ln_post = vit.ln_post
        self.proj = vit.proj

    @property
    def width(self) -> int:
        return self.class_embedding.shape[0]

    def forward(self, video: Tensor) -> FrameFeatures:
        b, t = video.shape[:2]
        x = self.conv1(video.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B·T, N, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(self.patch_dropout(x))
        x = self.transformer(x, t)
        cls = self.ln_post(x[:, 0]) @ self.proj
        return FrameFeatures(cls=cls.view(b, t, -1), patches=x[:, 1:].unflatten(0, (b, t)))


FAMILY = "open_clip's native VisionTransformer family (ViT-B-16, ViT-L-14, BioCLIP, ...)"


def cross_frame_dims(visual: nn.Module, model: str = "the backbone") -> tuple[int, int]:
    """``(embedding width, token width)`` of an image tower that can carry message tokens; any
    other is refused in one line naming ``model`` and the family end-to-end mode needs."""
    why = _unsupported(visual)
    if why is not None:
        raise AnimClipError(f"end-to-end mode (cross-frame message tokens) needs {FAMILY}; {model}'s image tower "
                            f"is {tower_name(visual)}{why}: train it in cached mode (train.mode=cached)")
    return visual.proj.shape[1], visual.class_embedding.shape[0]


def _unsupported(visual: nn.Module) -> str | None:
    """Why message tokens do not fit ``visual`` (None when they do; "" for another kind of tower):
    they are defined for plain CLIP ViTs, with class-token pooling, a projection and standard blocks."""
    if not isinstance(visual, VisionTransformer):
        return ""
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.proj is None:
        return ", pooled otherwise than at its class token with a projection"
    if not all(isinstance(b, ResidualAttentionBlock) and b.attn.batch_first for b in visual.transformer.resblocks):
        return ", with non-standard attention blocks"
    return None
