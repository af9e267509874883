"""Transformer layers: norms, feed-forwards, grouped-query attention, DropPath, the two
block kinds and the block stack (the PyTorch twin of spacenit_jax/model/layers.py).

Block structure follows the config's switches: ``prenorm=True`` gives the latest
original's block (``norm1``, ``attn``, ``norm2``, ``mlp``; self- OR cross-attention),
``prenorm=False`` the v1 original's post-norm block (``self_attn``, ``self_attn_norm``,
[``cross_attn``, ``cross_attn_norm``], ``ffn``, ``ffn_norm``). ``norm`` selects LayerNorm
or RMSNorm (eps = ``norm_eps``), ``ffn`` the exact-GELU MLP (``fc1``/``fc2``) or SwiGLU
(``gate_proj``/``up_proj``/``down_proj``), ``bias`` the biases of the transformer linears
(q/k/v/out and FFN). Only ``dropout == 0`` is supported (a ValueError otherwise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spacenit_jax.model.config import ModelConfig
from torch_bridge.torch_model.attention import dot_product_attention
from torch_bridge.torch_model.positions import apply_rope


def check_dropout(dropout: float) -> None:
    if dropout != 0.0:
        raise ValueError(f"only dropout == 0 is supported, got {dropout}")


def is_v1(config: ModelConfig) -> bool:
    """Whether the model follows the v1 original's API (decoder == "v1")."""
    return config.decoder == "v1"


def is_reference(config: ModelConfig) -> bool:
    return config.preset in ("reference_head", "reference_v1")


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) gathered at idx (B, K) along axis 1."""
    shape = idx.shape + x.shape[2:]
    index = idx.reshape(*idx.shape, *([1] * (x.ndim - 2))).expand(shape)
    return torch.gather(x, 1, index)


def scatter_tokens(src: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """src (B, K, D) written at positions idx (B, K) of a zero (B, n, D) tensor."""
    b, _, d = src.shape
    out = src.new_zeros(b, n, d)
    return out.scatter(1, idx.unsqueeze(-1).expand(-1, -1, d), src)


# ======================================================================================
# Norms, feed-forward, DropPath


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps), normalised in float32, cast back, times weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


class LayerNorm(nn.LayerNorm):
    """torch LayerNorm (weight and bias; eps from the config, 1e-5 in the latest original)."""


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    if config.norm == "layer":
        return LayerNorm(dim, eps=config.norm_eps)
    return RMSNorm(dim, eps=config.norm_eps)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Mlp(nn.Module):
    """fc2(gelu_exact(fc1(x)))."""

    def __init__(self, dim: int, hidden: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def make_ffn(config: ModelConfig, dim: int, expansion: float) -> nn.Module:
    hidden = config.ffn_hidden(expansion)
    if config.ffn == "gelu":
        return Mlp(dim, hidden, bias=config.bias)
    return SwiGLU(dim, hidden, bias=config.bias)


class DropPath(nn.Module):
    """Per-sample stochastic depth: keep with prob 1 - p, kept samples scaled by 1/(1 - p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep


# ======================================================================================
# Attention


class GroupedQueryAttention(nn.Module):
    """Multi-head attention with nkv <= nh key/value heads (repeated per group).

    Separate q/k/v/out projections; RoPE on q and k only (self-attention); boolean masks
    (True = may attend); query rows with no valid key give a zero output.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None,
                 bias: bool = False, dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads {self.num_kv_heads} must divide num_heads {num_heads}")
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * self.head_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: torch.Tensor | None = None, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        b, n, _ = x.shape
        kv = x if context is None else context
        m = kv.shape[1]
        hd = self.head_dim
        q = self.q_proj(x).view(b, n, self.num_heads, hd).transpose(1, 2)
        k = self.k_proj(kv).view(b, m, self.num_kv_heads, hd).transpose(1, 2)
        v = self.v_proj(kv).view(b, m, self.num_kv_heads, hd).transpose(1, 2)
        if rope is not None:
            q = apply_rope(q, rope)
            k = apply_rope(k, rope)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = dot_product_attention(q, k, v, mask)
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * hd)
        return self.out_proj(out)


# ======================================================================================
# Transformer blocks


class TransformerBlock(nn.Module):
    """Pre-norm block (latest original, design card): self- or cross-attention.

    x <- x + DP(Attn(N1(x)))  [cross: k/v from the raw, un-normalised context, no RoPE]
    x <- x + DP(FFN(N2(x)))
    """

    def __init__(self, config: ModelConfig, dim: int, num_heads: int,
                 num_kv_heads: int | None, ffn_expansion: float, drop_path: float = 0.0,
                 cross_attention: bool = False):
        super().__init__()
        self.cross_attention = cross_attention
        self.norm1 = make_norm(config, dim)
        self.attn = GroupedQueryAttention(dim, num_heads, num_kv_heads, bias=config.bias)
        self.norm2 = make_norm(config, dim)
        self.mlp = make_ffn(config, dim, ffn_expansion)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, context=None, rope=None, mask=None, cross_mask=None):
        if context is None:
            a = self.attn(self.norm1(x), rope=rope, mask=mask)
        else:
            if not self.cross_attention:
                raise ValueError("context given to a block built without cross_attention")
            a = self.attn(self.norm1(x), context=context, mask=cross_mask)
        x = x + self.drop_path(a)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class V1TransformerBlock(nn.Module):
    """Post-norm block of the v1 original.

    x <- N_sa(x + SelfAttn(x)); [x <- N_ca(x + CrossAttn(x, ctx))]; x <- N_ffn(x + FFN(x))
    """

    def __init__(self, config: ModelConfig, dim: int, num_heads: int,
                 num_kv_heads: int | None, ffn_expansion: float, drop_path: float = 0.0,
                 cross_attention: bool = False):
        super().__init__()
        if drop_path:
            raise ValueError("the post-norm (v1) block has no stochastic depth")
        self.cross_attention = cross_attention
        self.self_attn = GroupedQueryAttention(dim, num_heads, num_kv_heads, bias=config.bias)
        self.self_attn_norm = make_norm(config, dim)
        if cross_attention:
            self.cross_attn = GroupedQueryAttention(dim, num_heads, num_kv_heads,
                                                    bias=config.bias)
            self.cross_attn_norm = make_norm(config, dim)
        self.ffn = make_ffn(config, dim, ffn_expansion)
        self.ffn_norm = make_norm(config, dim)

    def forward(self, x, context=None, rope=None, mask=None, cross_mask=None):
        x = self.self_attn_norm(x + self.self_attn(x, rope=rope, mask=mask))
        if self.cross_attention and context is not None:
            x = self.cross_attn_norm(x + self.cross_attn(x, context=context, mask=cross_mask))
        return self.ffn_norm(x + self.ffn(x))


def make_block(config: ModelConfig, **kw) -> nn.Module:
    return (TransformerBlock if config.prenorm else V1TransformerBlock)(config, **kw)


class TransformerStack(nn.Module):
    """`depth` identical blocks; every layer gets the same context, rope and masks."""

    def __init__(self, config: ModelConfig, dim: int, depth: int, num_heads: int,
                 num_kv_heads: int | None, ffn_expansion: float, drop_path: float = 0.0,
                 cross_attention: bool = False):
        super().__init__()
        self.layers = nn.ModuleList([
            make_block(config, dim=dim, num_heads=num_heads, num_kv_heads=num_kv_heads,
                       ffn_expansion=ffn_expansion, drop_path=drop_path,
                       cross_attention=cross_attention)
            for _ in range(depth)
        ])

    def forward(self, x, context=None, rope=None, mask=None, cross_mask=None):
        for layer in self.layers:
            x = layer(x, context=context, rope=rope, mask=mask, cross_mask=cross_mask)
        return x
