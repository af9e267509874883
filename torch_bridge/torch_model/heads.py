"""Heads and pooling: projection, pixel reconstruction, attention pooling, masked mean
(the PyTorch twin of spacenit_jax/model/heads.py).

Rule for biases: the projection and pixel heads are always biased (as in both revisions
of the original); the pooling head's attention is always bias-free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_bridge.torch_model.layers import GroupedQueryAttention, RMSNorm


class ProjectionHead(nn.Module):
    """Linear -> exact GELU -> Linear, L2-normalised output (keys net.0.*, net.2.*)."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 256):
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1, eps=1e-12)


class PixelHead(nn.Module):
    """Linear(D -> C*p*p) per token, folded into a (B, C, height, width) image."""

    def __init__(self, embed_dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.proj = nn.Linear(embed_dim, out_channels * patch_size**2)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, _ = tokens.shape
        p, c = self.patch_size, self.out_channels
        hp, wp = height // p, width // p
        if n != hp * wp:
            raise ValueError(f"PixelHead: {n} tokens cannot fill a {hp}x{wp} patch grid")
        x = self.proj(tokens).reshape(b, hp, wp, c, p, p)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, hp * p, wp * p)


class PoolingHead(nn.Module):
    """A learned query cross-attends to the raw tokens (no bias, no RoPE), then RMSNorm."""

    def __init__(self, embed_dim: int, num_heads: int = 8, num_kv_heads: int | None = None):
        super().__init__()
        self.query = nn.Parameter(torch.empty(1, 1, embed_dim))
        nn.init.normal_(self.query, std=0.02)
        self.cross_attn = GroupedQueryAttention(embed_dim, num_heads, num_kv_heads, bias=False)
        self.norm = RMSNorm(embed_dim, eps=1e-6)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b = tokens.shape[0]
        q = self.query.to(tokens.dtype).expand(b, 1, -1)
        out = self.cross_attn(q, context=tokens, mask=mask)
        return self.norm(out)[:, 0]


def masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, N, D) over the tokens where keep (B, N) is True -> (B, D)."""
    w = keep.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1)
