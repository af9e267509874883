"""Positional signals: 2-D spatial + temporal RoPE, decoder sin-cos encodings, masks.

Everything is computed analytically from per-token ids (no tables), in float32, with
the original's conventions:
- RoPE pairs are interleaved (channels 2k, 2k+1); within a head the first half of the
  pairs carries row + time, the second half column + time; sensor-type tokens
  (row == -1) are not rotated. Spatial and temporal rotations are combined as a product
  of unit complex numbers, as the original does.
- Spatial positions are multiplied by the token's pos_scale (gsd * P / reference_gsd in
  the original, metres per patch / reference_gsd in the design card).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Rope(NamedTuple):
    cos: jax.Array  # (R, L, 1, hd/2) float32
    sin: jax.Array


def rope_frequencies(head_dim: int, theta: float):
    quarter, half = head_dim // 4, head_dim // 2
    spatial = theta ** (-4.0 * np.arange(quarter, dtype=np.float64) / head_dim)
    temporal = theta ** (-2.0 * np.arange(half, dtype=np.float64) / head_dim)
    return spatial.astype(np.float32), temporal.astype(np.float32)


def rope(row, col, time, pos_scale, head_dim: int, theta: float) -> Rope:
    """Per-token rotations from patch row/column, timestep and position scale."""
    w_sp, w_t = rope_frequencies(head_dim, theta)
    is_patch = row >= 0
    scale = pos_scale.astype(jnp.float32)
    r = (jnp.maximum(row, 0).astype(jnp.float32) * scale)[..., None] * w_sp
    c = (jnp.maximum(col, 0).astype(jnp.float32) * scale)[..., None] * w_sp
    spatial = jnp.concatenate([r, c], axis=-1)  # (R, L, hd/2)
    tau = jnp.maximum(time, 0).astype(jnp.float32)[..., None] * w_t
    cs, ss, ct, st = jnp.cos(spatial), jnp.sin(spatial), jnp.cos(tau), jnp.sin(tau)
    cos = cs * ct - ss * st
    sin = ss * ct + cs * st
    cos = jnp.where(is_patch[..., None], cos, 1.0)
    sin = jnp.where(is_patch[..., None], sin, 0.0)
    return Rope(cos[:, :, None, :], sin[:, :, None, :])


def apply_rope(x, rot: Rope):
    """Rotate interleaved channel pairs of x (R, L, heads, hd) in float32."""
    x32 = x.astype(jnp.float32)
    even, odd = x32[..., 0::2], x32[..., 1::2]
    out = jnp.stack([even * rot.cos - odd * rot.sin, even * rot.sin + odd * rot.cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def sincos(p, width: int):
    """The decoder's 1-D encoding: all sines then all cosines, omega_i = 1e4^(-i/(2n))."""
    omega = (10000.0 ** (-np.arange(width // 2, dtype=np.float64) / (2.0 * width)))
    angle = p.astype(jnp.float32)[..., None] * omega.astype(np.float32)
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def decoder_encoding(row, col, time, pos_scale, dim: int):
    """Additive space (channels [0, D/2)) and time (channels [D/2, D)) encodings."""
    half, quarter = dim // 2, dim // 4
    scale = pos_scale.astype(jnp.float32)
    spatial = jnp.concatenate([
        sincos(jnp.maximum(row, 0).astype(jnp.float32) * scale, quarter),
        sincos(jnp.maximum(col, 0).astype(jnp.float32) * scale, quarter)], axis=-1)
    spatial = jnp.where((row >= 0)[..., None], spatial, 0.0)
    temporal = jnp.where((time >= 0)[..., None], sincos(jnp.maximum(time, 0), dim - half), 0.0)
    return jnp.concatenate([spatial, temporal], axis=-1)


def segment_mask(seg_q, seg_k):
    """(R, Lq, Lk) True where query and key are real tokens of the same sample."""
    return (seg_q[:, :, None] == seg_k[:, None, :]) & (seg_q[:, :, None] >= 0)
