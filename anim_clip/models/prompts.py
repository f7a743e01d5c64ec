"""Prompt generators: queries cross-attend to a context set, then a residual MLP (docs/method.md §2.7).

One class serves three uses: the category-specific prompts on the text side (queries = the C class
embeddings) and on the video side (query = the video embedding), both conditioned on the single
animal token, and X-CLIP's video-specific prompt (queries = class embeddings, context = the
time-averaged patch tokens, docs/method.md Appendix B).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import Tensor, nn


class CrossAttention(nn.Module):
    """X-CLIP's multi-head cross-attention: bias-free q/k/v projections, output projection with bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        if context.shape[1] == 1:
            # A softmax over one key is exactly 1: every query receives the projected value.
            return self.proj(self.v_proj(context))
        b, m, d = queries.shape
        q = self.q_proj(queries).view(b, m, self.heads, -1).transpose(1, 2)
        k = self.k_proj(context).view(b, context.shape[1], self.heads, -1).transpose(1, 2)
        v = self.v_proj(context).view(b, context.shape[1], self.heads, -1).transpose(1, 2)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, m, d))


class PromptLayer(nn.Module):
    """``Q <- Q + Attn(LN1(Q), V)``; ``Q <- Q + MLP(LN3(Q))`` (names follow the release)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.cross_attn = CrossAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(dim, dim * 4), gelu=QuickGELU(), c_proj=nn.Linear(dim * 4, dim))
        )

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        x = queries + self.cross_attn(self.norm1(queries), context)
        return x + self.mlp(self.norm3(x))


class PromptGenerator(nn.Module):
    """Returns ``Q + α ⊙ Decoder(Q, LN(V))`` with a per-channel α (the release's caller-side residual
    folded in, so callers write ``out = generator(q, v)``).

    ``single_token_context``: the context is always one token (the animal token). The attention
    then returns the projected value whatever the queries, so the q/k projections and ``norm1``
    are dead (docs/method.md D16); they are kept so the release's checkpoints load, and reported by
    :meth:`dead_parameters`.
    """

    def __init__(self, dim: int, layers: int, alpha: float, *, single_token_context: bool):
        super().__init__()
        self.single_token_context = single_token_context
        self.norm = nn.LayerNorm(dim)
        self.decoder = nn.ModuleList(PromptLayer(dim, dim // 64) for _ in range(layers))
        self.alpha = nn.Parameter(torch.full((dim,), alpha))
        self.apply(_init_release)

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        if self.single_token_context and context.shape[1] != 1:
            raise ValueError(f"this generator is conditioned on one token, got {context.shape[1]}")
        context = self.norm(context)
        x = queries
        for layer in self.decoder:
            x = layer(x, context)
        return queries + self.alpha * x

    def dead_parameters(self) -> Iterator[nn.Parameter]:
        if not self.single_token_context:
            return
        for layer in self.decoder:
            yield layer.cross_attn.q_proj.weight
            yield layer.cross_attn.k_proj.weight
            yield from layer.norm1.parameters()


class VideoSpecificPrompt(nn.Module):
    """X-CLIP's video-specific prompt: class embeddings attend to the clip's patch tokens.

    The context is ``mean_t(LN(patches_t) @ proj)`` with ``proj`` a ``W × D`` matrix initialised
    N(0, 1) as in X-CLIP (the generator's context LayerNorm removes its scale). The mean and the
    projection commute, so the projection runs once per clip instead of once per frame.
    """

    def __init__(self, patch_width: int, dim: int, layers: int, alpha: float):
        super().__init__()
        self.ln = nn.LayerNorm(patch_width)
        self.proj = nn.Parameter(torch.randn(patch_width, dim))
        self.generator = PromptGenerator(dim, layers, alpha, single_token_context=False)

    def forward(self, class_embeddings: Tensor, patches: Tensor) -> Tensor:
        context = self.ln(patches.to(self.proj.dtype)).mean(dim=1) @ self.proj
        return self.generator(class_embeddings, context)


def _init_release(m: nn.Module) -> None:
    """X-CLIP's generator init: Linear trunc-normal 0.02 with zero bias; LayerNorm (1, 0)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
