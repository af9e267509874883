"""Positional signals: 2-D spatial and temporal RoPE, the decoder's sin-cos encodings and
the cyclic month embedding (the PyTorch twin of spacenit_jax/model/positions.py).

RoPE rotates interleaved channel pairs (2k, 2k+1); within a head the first half of the
pairs carries row and time, the second half column and time, combined as a product of
unit complex numbers. Sensor-type tokens (row == -1) are not rotated (the encoder applies
that rule). Spatial positions are multiplied by each token's position scale.

Frequencies theta^(-e) are computed in float64 and rounded once to float32, as the JAX
model does. The original computes 1 / theta^e in float32, which can land one ulp away;
positions reach ~10^3 rad (64-row grids at gsd 30 m), where one ulp of a frequency moves
an angle by ~1e-4. Rounding once keeps this module and the JAX model at float32 round-off
of each other, and within it of the original.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def frequencies(theta: float, exponents: np.ndarray) -> np.ndarray:
    """theta^(-e), computed in float64 and rounded once to float32."""
    return (float(theta) ** -np.asarray(exponents, np.float64)).astype(np.float32)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2k, 2k+1) of x (B, H, N, hd) by unit complex rot (B, N, hd/2).

    Computed in float32 and cast back to x's dtype.
    """
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    xc = torch.view_as_complex(xf.contiguous())
    out = torch.view_as_real(xc * rot.unsqueeze(1).to(torch.complex64)).flatten(-2)
    return out.to(x.dtype)


class SpatialRoPE(nn.Module):
    """2-D spatial rotary frequencies omega_j = theta^(-4j/hd), j < hd/4 (no parameters)."""

    def __init__(self, head_dim: int, max_grid: int = 64, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim % 4 == 0, got {head_dim}")
        inv = torch.tensor(frequencies(theta, 4.0 * np.arange(head_dim // 4) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        self.register_buffer("positions", torch.arange(max_grid, dtype=torch.float32),
                             persistent=False)
        self.max_grid = max_grid

    def forward(self, pos: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """pos (..., N) integer (>= 0), scale (..., N) float32 -> unit complex (..., N, hd/4)."""
        ang = (pos.float() * scale.float()).unsqueeze(-1) * self.inv_freq
        return torch.polar(torch.ones_like(ang), ang)


class TemporalRoPE(nn.Module):
    """1-D temporal rotary table omega_k = theta^(-2k/hd), k < hd/2 (no parameters)."""

    def __init__(self, head_dim: int, max_timesteps: int = 64, theta: float = 10000.0):
        super().__init__()
        inv = torch.tensor(frequencies(theta, 2.0 * np.arange(head_dim // 2) / head_dim))
        ang = torch.outer(torch.arange(max_timesteps, dtype=torch.float32), inv)
        self.register_buffer("freqs", torch.polar(torch.ones_like(ang), ang), persistent=False)
        self.max_timesteps = max_timesteps

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (..., N) integer (>= 0) -> unit complex (..., N, hd/2)."""
        if t.numel() and int(t.max()) >= self.max_timesteps:
            raise IndexError(f"timestep {int(t.max())} >= max_timesteps {self.max_timesteps}")
        return self.freqs[t.long()]


def sincos_1d(n: int, pos: torch.Tensor) -> torch.Tensor:
    """[sin(p w_i)..., cos(p w_i)...], w_i = 10000^(-i/(2n)), i < n/2 (float32)."""
    omega = torch.from_numpy(frequencies(10000.0, np.arange(n // 2) / (2.0 * n)))
    ang = pos.float().unsqueeze(-1) * omega.to(pos.device)
    return torch.cat([torch.sin(ang), torch.cos(ang)], -1)


class CyclicMonthEmbed(nn.Module):
    """emb(m) = W (sin(2 pi m/12), cos(2 pi m/12)), table lookup (negative m wraps)."""

    def __init__(self, dim: int):
        super().__init__()
        m = torch.arange(12, dtype=torch.float64)
        raw = torch.stack([torch.sin(2 * math.pi * m / 12), torch.cos(2 * math.pi * m / 12)], -1)
        self.register_buffer("raw_embeddings", raw.float(), persistent=False)
        self.proj = nn.Linear(2, dim, bias=False)

    def forward(self, months: torch.Tensor) -> torch.Tensor:
        """months (B, T_m) long -> (B, T_m, D)."""
        raw = self.raw_embeddings[months.long()].to(self.proj.weight.dtype)
        return self.proj(raw)

    def per_token(self, months: torch.Tensor, temporal_ids: torch.Tensor) -> torch.Tensor:
        """Month embedding of every token: (B, T_m) months, (B, N) temporal ids -> (B, N, D).

        T_m == 1: that month for every token. Otherwise a token at timestep t gets month
        min(t, T_m - 1); tokens without a timestep (-1) get the mean over timesteps.
        """
        emb = self(months)
        b, t_m, d = emb.shape
        n = temporal_ids.shape[-1]
        if t_m == 1:
            return emb.expand(b, n, d)
        temporal_ids = temporal_ids.expand(b, n)
        idx = temporal_ids.clamp(0, t_m - 1)
        per = torch.gather(emb, 1, idx.unsqueeze(-1).expand(b, n, d))
        mean = emb.mean(1, keepdim=True).expand(b, n, d)
        return torch.where((temporal_ids >= 0).unsqueeze(-1), per, mean)
