"""Scaled dot-product attention with boolean masks (True = may attend).

PyTorch's fused kernel (`F.scaled_dot_product_attention`), as the original uses: its CPU
flash-attention kernel is what gives the original its speed. A query row without any
valid key gets a zero output (the fused kernel would give NaN there); the JAX model's
`Attention` does the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalise_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A boolean mask of shape (N, M), (B, N, M), (B, 1, N, M) or (B, H, N, M) -> 4-D."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"attention masks must be boolean (True = may attend), got {mask.dtype}")
    if mask.ndim == 2:
        return mask[None, None]
    if mask.ndim == 3:
        return mask[:, None]
    if mask.ndim == 4:
        return mask
    raise ValueError(f"attention mask must be (N,M), (B,N,M), (B,1,N,M) or (B,H,N,M), "
                     f"got shape {tuple(mask.shape)}")


def dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, H, N, hd), k/v (B, H, M, hd), mask as `normalise_mask` takes -> (B, H, N, hd)."""
    mask = normalise_mask(mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if mask is not None:
        out = torch.where(mask.any(-1, keepdim=True), out, torch.zeros_like(out))
    return out
