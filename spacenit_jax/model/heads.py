"""Heads and pooling: projection, pixel reconstruction, mean and attention pooling.

Pooling is per segment (sample slot): a row of K slots pools to (R, K, D).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from spacenit_jax.model import layers
from spacenit_jax.model.attention import Segments


def l2_normalize(x, eps: float = 1e-12):
    """x / max(||x||_2, eps) along the last axis, computed in float32, returned in x's
    dtype (torch.nn.functional.normalize's definition). The one L2 normalisation of the
    project: projection heads, the contrastive losses, KNN on embeddings."""
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


class ProjectionHead(nnx.Module):
    """Linear -> exact GELU -> Linear -> L2 normalisation."""

    def __init__(self, dim: int, out_dim: int, *, rngs: nnx.Rngs, hidden: int | None = None):
        hidden = hidden or dim
        self.fc1 = layers.Dense(dim, hidden, bias=True, rngs=rngs, axes=("embed", "mlp"))
        self.fc2 = layers.Dense(hidden, out_dim, bias=True, rngs=rngs, axes=("mlp", "proj"))

    def __call__(self, x):
        return l2_normalize(self.fc2(jax.nn.gelu(self.fc1(x), approximate=False)))


class PixelHead(nnx.Module):
    """Linear D -> channels * P0 * P0 (channel-major, like a patch vector).

    A token of a group with C_g channels is compared with the first C_g * P0^2 outputs.
    """

    def __init__(self, dim: int, channels: int, base_patch_size: int, *, rngs: nnx.Rngs):
        self.channels, self.patch = channels, base_patch_size
        self.proj = layers.Dense(dim, channels * base_patch_size**2, bias=True, rngs=rngs,
                                 axes=("embed", "patch"))

    def __call__(self, x):
        return self.proj(x)


def segment_mean(x, segment, include, num_slots: int):
    """Mean of x (R, L, D) over tokens of each slot where `include` (R, L) -> (R, K, D)."""
    onehot = (segment[..., None] == jnp.arange(num_slots)) & include[..., None]
    onehot = onehot.astype(jnp.float32)
    total = jnp.einsum("rlk,rld->rkd", onehot, x.astype(jnp.float32))
    count = jnp.sum(onehot, axis=1)[..., None]
    return (total / jnp.maximum(count, 1.0)).astype(x.dtype), count[..., 0]


class PoolingHead(nnx.Module):
    """Attention pooling: a learned query cross-attends to each sample's tokens."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, *, rngs: nnx.Rngs):
        self.query = layers.param(0.02 * jax.random.normal(rngs.params(), (dim,)), ("embed",))
        self.cross_attn = layers.Attention(dim, heads, kv_heads, bias=False, rngs=rngs)
        self.norm = layers.RMSNorm(dim, 1e-6)

    def __call__(self, x, segment, num_slots: int, include=None):
        r = x.shape[0]
        slots = jnp.broadcast_to(jnp.arange(num_slots, dtype=segment.dtype), (r, num_slots))
        key_seg = segment if include is None else jnp.where(include, segment, -1)
        q = jnp.broadcast_to(self.query[...].astype(x.dtype), (r, num_slots, x.shape[-1]))
        out = self.cross_attn(q, Segments(slots, key_seg, num_segments=num_slots), context=x)
        return self.norm(out)
