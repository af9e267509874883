"""A self-contained PyTorch implementation of SpaceNit, built from a `ModelConfig`.

This is our own PyTorch twin of the model (written from `spec/reference-model.md`, no code
of the original). It serves two purposes:

* for the reference presets (``config.preset`` in {"reference_head", "reference_v1"}) the
  module tree, state-dict keys, shapes and forward semantics are exactly those of the
  original (latest revision = "HEAD", "v1 freeze" = "V1"), so the original's checkpoints and
  the golden vectors load with ``strict=True`` and reproduce to float32 round-off;
* for the design-card preset it is the PyTorch baseline of our JAX model.

Which revision's *API* a model follows is decided by ``config.decoder``: ``"cross"`` (HEAD
and the design card) or ``"v1"``.

=============================  =============================================================
HEAD API (decoder="cross")     V1 API (decoder="v1")
=============================  =============================================================
Encoder -> (tokens, sensor_ids,  Encoder -> (tokens, sensor_ids, layout)
spatial_ids, temporal_ids,
layout)
LatentPredictor(visibility_mask) LatentPredictor(visible_indices, target_indices)
pooled = mean over patch tokens  pooled = mean over all tokens (type tokens included)
=============================  =============================================================

Block structure follows the config's switches: ``prenorm=True`` gives the HEAD block
(``norm1``, ``attn``, ``norm2``, ``mlp``; self- OR cross-attention), ``prenorm=False`` the
V1 post-norm block (``self_attn``, ``self_attn_norm``, [``cross_attn``, ``cross_attn_norm``],
``ffn``, ``ffn_norm``). ``norm`` selects LayerNorm / RMSNorm (eps = ``norm_eps``), ``ffn``
selects the exact-GELU MLP (``fc1``/``fc2``) or SwiGLU (``gate_proj``/``up_proj``/
``down_proj``), ``bias`` the biases of the transformer linears (q/k/v/out and FFN).

Design-card key naming (prenorm, RMSNorm, SwiGLU, no bias, GQA) — the HEAD tree with the
design card's modules::

    tokenizer.patch_embeds.<label>[__g<i>].proj.{weight,bias}    (D, C_g*P0*P0), (D,)
    tokenizer.sensor_embed.embedding.weight                      (S, D)
    tokenizer.sensor_type_tokens.<label>                         (1, 1, D)
    month_embed.proj.weight                                      (D, 2)
    transformer.layers.{i}.norm1.weight                          (D,)
    transformer.layers.{i}.attn.q_proj.weight                    (nh*hd, D)
    transformer.layers.{i}.attn.{k,v}_proj.weight                (nkv*hd, D)
    transformer.layers.{i}.attn.out_proj.weight                  (D, nh*hd)
    transformer.layers.{i}.norm2.weight                          (D,)
    transformer.layers.{i}.mlp.{gate,up}_proj.weight             (h, D)
    transformer.layers.{i}.mlp.down_proj.weight                  (D, h)
    norm.weight                                                  (D,)
    decoder: mask_token, input_norm.weight, encoder_to_decoder_embed.{weight,bias},
             month_embed.proj.weight, sensor_embed.embedding.weight,
             transformer.layers.{i}.<block keys as above>, norm.weight
    online_proj / target_proj: net.0.{weight,bias}, net.2.{weight,bias}

Rule for biases: ``config.bias`` applies to the transformer linears only; the "outer"
linears — patch embedding, ``encoder_to_decoder_embed``, projection and pixel heads — are
always biased (as in both revisions of the original); month embedding and pooling-head
attention are always bias-free.

Positions: each sensor's RoPE / decoder position multiplier is
``config.layout.pos_scale(label, patch_size, gsd)``. ``gsd=None`` (the default) means the
preset's default: the original's 10 m scalar for the reference presets (so the scale is
``P`` in HEAD and ``1`` in V1) and each sensor's own metres per pixel for the design card.
For the reference presets the patch is ``P`` stored pixels for every sensor (as in the
original); the design card uses ``layout.patch_pixels`` (naip_10 is stored 4x finer).
RoPE and decoder sin-cos frequencies are computed in float64 and rounded once to float32,
as the JAX model does (the original computes them in float32, up to one ulp away; see
``_frequencies``), so both stay within float32 round-off even at large positions.

Deliberate twins of the original's quirks (spec section 16), reproduced by default:

* item 7: HEAD decoder query slots of samples with fewer PREDICTED tokens than the batch
  maximum are filled by their first VISIBLE (or inactive) tokens, which leave the context;
* item 8: PREDICTED positions are gathered assuming equal per-sample counts
  (``nonzero()`` reshaped to (B, -1)), i.e. a reshape error or silently misaligned rows
  when counts differ;
* item 9: online/target index sets are padded by repeating the last index, the duplicates
  take part in attention and in ``encoder_pooled``; the encoder gets no attention mask;
* item 10: the target encoder runs in the mode of the whole model (DropPath active in
  training).

Our JAX model uses explicit masks instead and agrees with this module whenever every sample
has the same counts. Only ``dropout == 0`` is supported (a ValueError otherwise).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spacenit_jax import sensors
from spacenit_jax import tokenization as tk
from spacenit_jax.model.config import ModelConfig

VISIBLE_ENCODER, TARGET_ONLY, PREDICTED, ABSENT = tk.TokenState  # the original's names

__all__ = [
    "ABSENT", "PREDICTED", "TARGET_ONLY", "VISIBLE_ENCODER",
    "AdaptivePatchEmbed", "AutoEncoder", "CyclicMonthEmbed", "Decoder", "DropPath",
    "DualBranch", "Encoder", "GroupedQueryAttention", "LatentPredictor", "LayerNorm", "Mlp",
    "MultiSensorTokenizer", "PixelHead", "PoolingHead", "ProjectionHead", "RMSNorm",
    "SensorEmbed", "SpatialRoPE", "SpatioTemporalEncoder", "SwiGLU", "TemporalRoPE",
    "TransformerBlock", "TransformerStack", "V1Decoder", "V1TransformerBlock",
    "apply_rope", "build_model",
]  # fmt: skip


def _check_dropout(dropout: float) -> None:
    if dropout != 0.0:
        raise ValueError(f"only dropout == 0 is supported, got {dropout}")


def _is_v1(config: ModelConfig) -> bool:
    return config.decoder == "v1"


def _is_reference(config: ModelConfig) -> bool:
    return config.preset in ("reference_head", "reference_v1")


def _gsd_value(gsd) -> float | None:
    """The original uses the mean of a tensor gsd (one scale per batch)."""
    if gsd is None:
        return None
    if torch.is_tensor(gsd):
        return float(gsd.detach().float().mean())
    return float(gsd)


# ======================================================================================
# Norms, feed-forward, attention, DropPath


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
    """torch LayerNorm (weight and bias; eps from the config, 1e-5 in HEAD)."""


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    if config.norm == "layer":
        return LayerNorm(dim, eps=config.norm_eps)
    return RMSNorm(dim, eps=config.norm_eps)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        _check_dropout(dropout)
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Mlp(nn.Module):
    """fc2(gelu_exact(fc1(x)))."""

    def __init__(self, dim: int, hidden: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        _check_dropout(dropout)
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


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2k, 2k+1) of x (B, H, N, hd) by unit complex rot (B, N, hd/2).

    Computed in float32 and cast back to x's dtype.
    """
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    xc = torch.view_as_complex(xf.contiguous())
    out = torch.view_as_real(xc * rot.unsqueeze(1).to(torch.complex64)).flatten(-2)
    return out.to(x.dtype)


def _normalise_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
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


class GroupedQueryAttention(nn.Module):
    """Multi-head attention with nkv <= nh key/value heads (repeated per group).

    Separate q/k/v/out projections; RoPE on q and k only (self-attention); boolean masks
    (True = may attend); query rows with no valid key give a zero output.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None,
                 bias: bool = False, dropout: float = 0.0):
        super().__init__()
        _check_dropout(dropout)
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
        mask = _normalise_mask(mask)
        # PyTorch's fused attention, as the original uses (its CPU flash kernel is what
        # makes the original's speed); rows without any valid key give a zero output.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if mask is not None:
            out = torch.where(mask.any(-1, keepdim=True), out, torch.zeros_like(out))
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * hd)
        return self.out_proj(out)


# ======================================================================================
# Transformer blocks


class TransformerBlock(nn.Module):
    """Pre-norm block (HEAD / design card): self-attention, or cross-attention if built so.

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
    """Post-norm block of the v1 revision.

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


# ======================================================================================
# Positional modules


def _frequencies(theta: float, exponents: np.ndarray) -> np.ndarray:
    """theta^(-e) computed in float64 and rounded once to float32.

    The original computes 1 / theta^e in float32, which can land one ulp away; positions
    reach ~10^3 rad (64-row grids at gsd 30 m), where one ulp of a frequency moves an angle
    by ~1e-4. Rounding once, exactly as spacenit_jax.model.positions does, keeps this module
    and the JAX model at float32 round-off of each other (and within it of the original).
    """
    return (float(theta) ** -np.asarray(exponents, np.float64)).astype(np.float32)


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


class SpatialRoPE(nn.Module):
    """2-D spatial rotary frequencies omega_j = theta^(-4j/hd), j < hd/4 (no parameters)."""

    def __init__(self, head_dim: int, max_grid: int = 64, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim % 4 == 0, got {head_dim}")
        inv = torch.tensor(_frequencies(theta, 4.0 * np.arange(head_dim // 4) / head_dim))
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
        inv = torch.tensor(_frequencies(theta, 2.0 * np.arange(head_dim // 2) / head_dim))
        ang = torch.outer(torch.arange(max_timesteps, dtype=torch.float32), inv)
        self.register_buffer("freqs", torch.polar(torch.ones_like(ang), ang), persistent=False)
        self.max_timesteps = max_timesteps

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (..., N) integer (>= 0) -> unit complex (..., N, hd/2)."""
        if t.numel() and int(t.max()) >= self.max_timesteps:
            raise IndexError(f"timestep {int(t.max())} >= max_timesteps {self.max_timesteps}")
        return self.freqs[t.long()]


# ======================================================================================
# Tokenizer


class AdaptivePatchEmbed(nn.Module):
    """Linear(C_g * P0 * P0 -> D) over channel-major flattened patches."""

    def __init__(self, base_patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.base_patch_size = base_patch_size
        self.in_channels = in_channels
        self.proj = nn.Linear(in_channels * base_patch_size**2, embed_dim, bias=True)

    @staticmethod
    def patchify(x: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
        """(N, C, H, W) -> (N, Hp*Wp, C*k*k) row-major grid, channel-major within a patch."""
        n, c, h, w = x.shape
        hp, wp = h // k, w // k
        x = x[:, :, : hp * k, : wp * k].reshape(n, c, hp, k, wp, k)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(n, hp * wp, c * k * k)
        return x, hp, wp

    def forward(self, x: torch.Tensor, pixels: int, mode: str, what: str = "input"
                ) -> tuple[torch.Tensor, int, int]:
        """x (N, C, H, W) at `pixels` stored pixels per patch side -> (N, Hp*Wp, D), Hp, Wp."""
        p, p0 = pixels, self.base_patch_size
        h, w = x.shape[-2:]
        if p < 1:
            raise ValueError(f"{what}: patch size must be >= 1, got {p}")
        if mode == "input":
            if p != p0:
                if h % p or w % p:
                    raise ValueError(f"{what}: spatial size {h}x{w} is not divisible by "
                                     f"the patch size {p}")
                size = (h // p * p0, w // p * p0)
                x = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True,
                                  align_corners=False).to(x.dtype)
            patches, hp, wp = self.patchify(x, p0)
            return self.proj(patches), hp, wp
        # "weight": area-resize the kernel to P x P (float32), bias unchanged.
        if h % p or w % p:
            raise ValueError(f"{what}: spatial size {h}x{w} is not divisible by the patch size {p}")
        weight = self.proj.weight
        if p != p0:
            d = weight.shape[0]
            kern = weight.reshape(d, self.in_channels, p0, p0).float()
            weight = F.interpolate(kern, size=(p, p), mode="area").to(weight.dtype)
            weight = weight.reshape(d, self.in_channels * p * p)
        patches, hp, wp = self.patchify(x, p)
        return F.linear(patches, weight, self.proj.bias), hp, wp


class SensorEmbed(nn.Module):
    def __init__(self, num_sensors: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_sensors, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)


class TokenIds:
    """Per-token ids of one batch in tokenizer order (all (N,) long tensors, same for all
    samples), plus the per-token position scale and the (label, count) layout."""

    def __init__(self, tokens: tk.SampleTokens, scale, layout, device):
        def t(a):
            return torch.as_tensor(a, dtype=torch.long, device=device)

        self.sensor = t(tokens.sensor)
        self.row = t(tokens.row)
        self.col = t(tokens.col)
        self.time = t(tokens.time)
        self.scale = torch.as_tensor(scale, dtype=torch.float32, device=device)
        self.layout = layout

    @property
    def spatial(self) -> torch.Tensor:
        return torch.stack([self.row, self.col], -1)


class MultiSensorTokenizer(nn.Module):
    """Patch embeddings per (sensor, group), sensor embedding and one type token per sensor."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        layout = config.layout
        d = config.embed_dim
        self.patch_embeds = nn.ModuleDict({
            g.key: AdaptivePatchEmbed(layout.base_patch_size, len(g.channels), d)
            for g in layout.groups
        })
        self.sensor_embed = SensorEmbed(len(layout.sensor_labels), d)
        self.sensor_type_tokens = nn.ParameterDict({
            label: nn.Parameter(torch.empty(1, 1, d)) for label in sorted(layout.sensor_labels)
        })
        for p in self.sensor_type_tokens.values():
            nn.init.normal_(p, std=0.02)

    def _pixels(self, label: str, patch_size: int) -> int:
        if _is_reference(self.config):
            return patch_size
        return self.config.layout.patch_pixels(label, patch_size)

    def present(self, sensor_data: Mapping[str, torch.Tensor]) -> list[str]:
        labels = [label for label in self.config.layout.sensor_labels if label in sensor_data]
        if not labels:
            raise ValueError(f"none of the configured sensors "
                             f"{list(self.config.layout.sensor_labels)} is in the input "
                             f"(got {list(sensor_data)})")
        return labels

    def grids(self, sensor_data: Mapping[str, torch.Tensor], patch_size: int
              ) -> dict[str, tk.SensorGrid]:
        """Patch grid of every present configured sensor, without running the embeddings."""
        layout = self.config.layout
        out = {}
        for label in self.present(sensor_data):
            x = sensor_data[label]
            if x.ndim not in (4, 5):
                raise ValueError(f"sensor {label!r}: expected (B,C,H,W) or (B,C,H,W,T), "
                                 f"got shape {tuple(x.shape)}")
            pix = self._pixels(label, patch_size)
            h, w = x.shape[2], x.shape[3]
            if layout.patch_resize == "weight" or pix != layout.base_patch_size:
                if h % pix or w % pix:
                    raise ValueError(f"sensor {label!r}: spatial size {h}x{w} is not "
                                     f"divisible by the patch size {pix}")
            out[label] = tk.SensorGrid(h // pix, w // pix, x.shape[4] if x.ndim == 5 else 1,
                                       x.ndim == 5)
        return out

    def token_ids(self, sensor_data, patch_size: int, gsd=None) -> TokenIds:
        layout = self.config.layout
        grids = self.grids(sensor_data, patch_size)
        for label, g in grids.items():
            if g.hp > self.config.max_grid or g.wp > self.config.max_grid:
                raise ValueError(f"sensor {label!r}: patch grid {g.hp}x{g.wp} exceeds "
                                 f"max_grid {self.config.max_grid}")
            if g.temporal and g.t > self.config.max_timesteps:
                raise ValueError(f"sensor {label!r}: {g.t} timesteps exceed max_timesteps "
                                 f"{self.config.max_timesteps}")
        tokens = tk.sample_tokens(layout, grids)
        gsd = _gsd_value(gsd)
        table = [layout.pos_scale(label, patch_size, gsd) for label in layout.sensor_labels]
        scale = [table[s] for s in tokens.sensor]
        groups_per = {label: len(layout.sensor_groups(label)) for label in grids}
        lay = [(label, 1 + g.t * groups_per[label] * g.hp * g.wp) for label, g in grids.items()]
        device = next(iter(sensor_data.values())).device
        return TokenIds(tokens, scale, lay, device)

    def forward(self, sensor_data: Mapping[str, torch.Tensor], patch_size: int
                ) -> torch.Tensor:
        """-> tokens (B, N, D) in the original's token order."""
        layout = self.config.layout
        b = next(iter(sensor_data.values())).shape[0]
        parts = []
        for label in self.present(sensor_data):
            x = sensor_data[label]
            spec = sensors.get(label)
            if x.shape[1] != spec.num_channels:
                raise ValueError(f"sensor {label!r}: expected {spec.num_channels} channels "
                                 f"({', '.join(spec.bands)}) in axis 1, got {tuple(x.shape)}")
            if x.ndim == 5:
                bb, c, h, w, t = x.shape
                x = x.permute(0, 4, 1, 2, 3).reshape(bb * t, c, h, w)
            else:
                t = 1
            pix = self._pixels(label, patch_size)
            embs = []
            for grp in layout.sensor_groups(label):
                whole = list(grp.channels) == list(range(spec.num_channels))
                sub = x if whole else x[:, list(grp.channels)]
                e, _, _ = self.patch_embeds[grp.key](sub, pix, layout.patch_resize,
                                                      what=f"sensor {label!r}")
                embs.append(e)
            e = torch.cat(embs, 1).reshape(b, -1, self.config.embed_dim)
            sid = layout.sensor_id(label)
            e = e + self.sensor_embed(torch.tensor(sid, device=e.device))
            type_tok = self.sensor_type_tokens[label].to(e.dtype).expand(b, 1, -1)
            parts.append(torch.cat([type_tok, e], 1))
        return torch.cat(parts, 1)


# ======================================================================================
# Encoder


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) gathered at idx (B, K) along axis 1."""
    shape = idx.shape + x.shape[2:]
    index = idx.reshape(*idx.shape, *([1] * (x.ndim - 2))).expand(shape)
    return torch.gather(x, 1, index)


class Encoder(nn.Module):
    """Tokenizer + month embedding + RoPE transformer + final norm (spec section 6)."""

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        _check_dropout(dropout)
        self.config = config
        d, hd = config.embed_dim, config.head_dim
        self.patch_size = config.layout.base_patch_size
        self.tokenizer = MultiSensorTokenizer(config)
        self.month_embed = CyclicMonthEmbed(d)
        self.spatial_rope = SpatialRoPE(hd, config.max_grid, config.rope_theta)
        self.temporal_rope = TemporalRoPE(hd, config.max_timesteps, config.rope_theta)
        self.transformer = TransformerStack(
            config, d, config.depth, config.num_heads, config.num_kv_heads,
            config.ffn_expansion, drop_path=config.drop_path)
        self.norm = make_norm(config, d)

    def token_ids(self, sensor_data, patch_size: int | None = None, gsd=None) -> TokenIds:
        return self.tokenizer.token_ids(sensor_data, patch_size or self.patch_size, gsd)

    def rotations(self, ids: TokenIds) -> torch.Tensor:
        """Unit complex per-token rotations (N, hd/2); identity for type tokens."""
        r, c, t = ids.row.clamp(min=0), ids.col.clamp(min=0), ids.time.clamp(min=0)
        rot = torch.cat([self.spatial_rope(r, ids.scale), self.spatial_rope(c, ids.scale)], -1)
        rot = rot * self.temporal_rope(t)
        ident = torch.ones_like(rot)
        return torch.where((ids.row == -1).unsqueeze(-1), ident, rot)

    def forward(self, sensor_data: Mapping[str, torch.Tensor], *,
                patch_size: int | None = None, month_indices: torch.Tensor | None = None,
                gsd=None, mask_indices: torch.Tensor | None = None):
        """sensor_data: label -> (B, C, H, W[, T]) channel-first, time last.

        Returns (tokens, sensor_ids, spatial_ids, temporal_ids, layout) for the HEAD API,
        (tokens, sensor_ids, layout) for the V1 API (decoder == "v1").
        """
        p = patch_size or self.patch_size
        ids = self.tokenizer.token_ids(sensor_data, p, gsd)
        x = self.tokenizer(sensor_data, p)
        b, n, _ = x.shape
        if month_indices is not None:
            x = x + self.month_embed.per_token(month_indices, ids.time.unsqueeze(0)).to(x.dtype)
        rot = self.rotations(ids).unsqueeze(0).expand(b, n, -1)
        sensor_ids = ids.sensor.unsqueeze(0).expand(b, n)
        spatial_ids = ids.spatial.unsqueeze(0).expand(b, n, 2)
        temporal_ids = ids.time.unsqueeze(0).expand(b, n)
        if mask_indices is not None:
            mi = mask_indices.long()
            x = _gather_tokens(x, mi)
            rot = _gather_tokens(rot, mi)
            sensor_ids = _gather_tokens(sensor_ids, mi)
            spatial_ids = _gather_tokens(spatial_ids, mi)
            temporal_ids = _gather_tokens(temporal_ids, mi)
        x = self.norm(self.transformer(x, rope=rot))
        if _is_v1(self.config):
            return x, sensor_ids.contiguous(), ids.layout
        return (x, sensor_ids.contiguous(), spatial_ids.contiguous(),
                temporal_ids.contiguous(), ids.layout)


# ======================================================================================
# Decoders


def sincos_1d(n: int, pos: torch.Tensor) -> torch.Tensor:
    """[sin(p w_i)..., cos(p w_i)...], w_i = 10000^(-i/(2n)), i < n/2 (float32)."""
    omega = torch.from_numpy(_frequencies(10000.0, np.arange(n // 2) / (2.0 * n)))
    ang = pos.float().unsqueeze(-1) * omega.to(pos.device)
    return torch.cat([torch.sin(ang), torch.cos(ang)], -1)


class Decoder(nn.Module):
    """The latest revision's decoder: PREDICTED queries cross-attend to VISIBLE tokens.

    Additive re-encoding (sensor, month, sin-cos space scaled by the per-token position
    scale rho, sin-cos time) of the whole sequence; the query-slot quirk of the original is
    reproduced (see the module docstring).
    """

    def __init__(self, config: ModelConfig, num_sensors: int | None = None, *,
                 dropout: float = 0.0):
        super().__init__()
        _check_dropout(dropout)
        self.config = config
        d = config.embed_dim
        if d % 8:
            raise ValueError(f"the decoder sin-cos encodings need embed_dim % 8 == 0, got {d}")
        num_sensors = num_sensors or len(config.layout.sensor_labels) or 32
        self.mask_token = nn.Parameter(torch.empty(1, 1, d))
        nn.init.normal_(self.mask_token, std=0.02)
        self.input_norm = make_norm(config, d)
        self.encoder_to_decoder_embed = nn.Linear(d, d, bias=True)
        self.month_embed = CyclicMonthEmbed(d)
        self.sensor_embed = SensorEmbed(num_sensors, d)
        self.transformer = TransformerStack(
            config, d, config.decoder_depth, config.decoder_num_heads,
            config.decoder_num_kv_heads, config.decoder_ffn_expansion, cross_attention=True)
        self.norm = make_norm(config, d)

    def position_scale(self, sensor_ids: torch.Tensor, patch_size: int, gsd) -> torch.Tensor:
        layout = self.config.layout
        gsd = _gsd_value(gsd)
        table = torch.tensor([layout.pos_scale(label, patch_size, gsd)
                              for label in layout.sensor_labels],
                             dtype=torch.float32, device=sensor_ids.device)
        return table[sensor_ids.clamp(min=0)]

    def reencode(self, x, sensor_ids, spatial_ids, temporal_ids, month_indices, patch_size,
                 gsd):
        d = x.shape[-1]
        x = x + self.sensor_embed(sensor_ids)
        if month_indices is not None:
            x = x + self.month_embed.per_token(month_indices, temporal_ids).to(x.dtype)
        rho = self.position_scale(sensor_ids, patch_size, gsd)
        row, col = spatial_ids[..., 0], spatial_ids[..., 1]
        e_sp = torch.cat([sincos_1d(d // 4, row * rho), sincos_1d(d // 4, col * rho)], -1)
        e_sp = torch.where((row == -1).unsqueeze(-1), torch.zeros_like(e_sp), e_sp)
        e_t = sincos_1d(d - d // 2, temporal_ids.clamp(min=0))
        e_t = torch.where((temporal_ids == -1).unsqueeze(-1), torch.zeros_like(e_t), e_t)
        return x + torch.cat([e_sp, e_t], -1).to(x.dtype)

    def forward(self, all_tokens: torch.Tensor, visibility_mask: torch.Tensor,
                sensor_ids: torch.Tensor | None = None, spatial_ids: torch.Tensor | None = None,
                temporal_ids: torch.Tensor | None = None,
                month_indices: torch.Tensor | None = None, patch_size: int | None = None,
                gsd=None) -> torch.Tensor:
        b, n, d = all_tokens.shape
        p = patch_size or self.config.layout.base_patch_size
        vis = visibility_mask.long()
        x = self.encoder_to_decoder_embed(self.input_norm(all_tokens))
        x = torch.where((vis == PREDICTED).unsqueeze(-1), self.mask_token.to(x.dtype), x)
        if sensor_ids is not None:
            x = self.reencode(x, sensor_ids.expand(b, n), spatial_ids.expand(b, n, 2),
                              temporal_ids.expand(b, n), month_indices, p, gsd)
        active = (vis == VISIBLE_ENCODER) | (vis == PREDICTED)
        key = torch.where(active, vis, torch.full_like(vis, -1))
        max_pred = int((key == PREDICTED).sum(1).max()) if n else 0
        max_vis = int((key == VISIBLE_ENCODER).sum(1).max()) if n else 0
        if max_pred == 0:
            return self.norm(x)
        skey, order = torch.sort(key, dim=1, descending=True, stable=True)
        xs = _gather_tokens(x, order)
        queries = xs[:, :max_pred]
        context = xs[:, max_pred:max_pred + max_vis]
        ctx_mask = (skey[:, max_pred:max_pred + max_vis] == VISIBLE_ENCODER)[:, None, None, :]
        queries = self.transformer(queries, context=context, cross_mask=ctx_mask)
        xs = torch.cat([queries, xs[:, max_pred:]], 1)
        out = torch.empty_like(xs).scatter_(1, order.unsqueeze(-1).expand(b, n, d), xs)
        return self.norm(out)


class V1Decoder(nn.Module):
    """The v1 decoder: mask-token queries, 1-layer context enrichment, no positions."""

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        _check_dropout(dropout)
        self.config = config
        d = config.embed_dim
        self.mask_token = nn.Parameter(torch.empty(1, 1, d))
        nn.init.normal_(self.mask_token, std=0.02)
        kw = dict(dim=d, num_heads=config.decoder_num_heads,
                  num_kv_heads=config.decoder_num_kv_heads,
                  ffn_expansion=config.decoder_ffn_expansion, cross_attention=True)
        self.transformer = TransformerStack(config, depth=config.decoder_depth, **kw)
        self.context_cross_attn = TransformerStack(config, depth=1, **kw)
        self.norm = make_norm(config, d)

    def forward(self, context: torch.Tensor, num_predictions: int) -> torch.Tensor:
        b, _, d = context.shape
        if num_predictions == 0:
            return context.new_zeros(b, 0, d)
        queries = self.mask_token.to(context.dtype).expand(b, num_predictions, d)
        enriched = self.context_cross_attn(context, context=queries)
        return self.norm(self.transformer(queries, context=enriched))


# ======================================================================================
# Heads


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


# ======================================================================================
# Composite models


def _padded_indices(select: torch.Tensor) -> torch.Tensor:
    """Ascending positions of True per row, padded by repeating the last one (the
    original's rule; an empty row stays all zeros). (B, N) bool -> (B, n_max) long."""
    b = select.shape[0]
    counts = select.sum(1)
    n_max = int(counts.max()) if b else 0
    out = torch.zeros(b, n_max, dtype=torch.long, device=select.device)
    for i in range(b):
        idx = torch.nonzero(select[i]).squeeze(1)
        if idx.numel():
            out[i, : idx.numel()] = idx
            out[i, idx.numel():] = idx[-1]
    return out


def _predicted_positions(mask: torch.Tensor) -> torch.Tensor:
    """The original's gather of PREDICTED positions: nonzero (b, n) pairs in row-major
    order, column indices reshaped to (B, -1) (assumes equal counts per sample)."""
    return torch.nonzero(mask == PREDICTED)[:, 1].reshape(mask.shape[0], -1)


def _scatter_tokens(src: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    b, _, d = src.shape
    out = src.new_zeros(b, n, d)
    return out.scatter(1, idx.unsqueeze(-1).expand(-1, -1, d), src)


def _masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    w = keep.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


class _EmaMixin:
    def _init_ema(self, config: ModelConfig):
        self.ema_momentum = config.ema_momentum
        self.ema_momentum_end = config.ema_momentum_end
        self.ema_warmup_steps = config.ema_warmup_steps
        self._ema_momentum = config.ema_momentum
        self.register_buffer("_step", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def step_ema(self) -> float:
        step = int(self._step)
        progress = min(step / max(self.ema_warmup_steps, 1), 1.0)
        m = self.ema_momentum + (self.ema_momentum_end - self.ema_momentum) * progress
        self._ema_momentum = m
        for online, target in ((self.encoder, self.target_encoder),
                               (self.online_proj, self.target_proj)):
            tp = dict(target.named_parameters())
            for name, p in online.named_parameters():
                if name in tp:
                    tp[name].mul_(m).add_(p.detach(), alpha=1.0 - m)
        self._step += 1
        return m


def _frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


class LatentPredictor(_EmaMixin, nn.Module):
    """Online encoder + EMA target encoder + decoder + projection heads (spec 9.1 / 9.2)."""

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        _check_dropout(dropout)
        self.config = config
        self._init_ema(config)
        d = config.embed_dim
        self.encoder = Encoder(config)
        self.target_encoder = _frozen_copy(self.encoder)
        self.decoder = V1Decoder(config) if _is_v1(config) else Decoder(config)
        self.online_proj = ProjectionHead(d, d, config.projection_dim)
        self.target_proj = ProjectionHead(d, d, config.projection_dim)
        for p in self.target_proj.parameters():
            p.requires_grad_(False)

    def forward(self, sensor_data, *, visibility_mask=None, visible_indices=None,
                target_indices=None, patch_size=None, month_indices=None, gsd=None,
                contrastive_only: bool = False):
        """HEAD API: visibility_mask (B, N) of TokenVisibility values in tokenizer order.
        V1 API: visible_indices (B, N_vis) and target_indices (B, N_pred)."""
        if _is_v1(self.config):
            if visibility_mask is not None:
                raise ValueError("the v1 LatentPredictor takes visible_indices/target_indices")
            return self._forward_v1(sensor_data, visible_indices, target_indices, patch_size,
                                    month_indices, gsd, contrastive_only)
        if visible_indices is not None or target_indices is not None:
            raise ValueError("this LatentPredictor takes visibility_mask (latest-revision API)")
        return self._forward_head(sensor_data, visibility_mask, patch_size, month_indices,
                                  gsd, contrastive_only)

    def _forward_head(self, sensor_data, mask, patch_size, months, gsd, contrastive_only):
        p = patch_size or self.encoder.patch_size
        ids = self.encoder.token_ids(sensor_data, p, gsd)
        n = ids.sensor.shape[0]
        b = next(iter(sensor_data.values())).shape[0]
        kw = dict(patch_size=p, month_indices=months, gsd=gsd)
        online_idx = None
        if mask is not None:
            mask = mask.long()
            if mask.shape != (b, n):
                raise ValueError(f"visibility_mask must be (B, N) = {(b, n)}, "
                                 f"got {tuple(mask.shape)}")
            if not contrastive_only:
                online_idx = _padded_indices(mask == VISIBLE_ENCODER)
        encoded, _, enc_spatial, _, _ = self.encoder(sensor_data, mask_indices=online_idx, **kw)
        with torch.no_grad():
            if mask is not None:
                target_idx = _padded_indices(mask != ABSENT)
                sub = self.target_encoder(sensor_data, mask_indices=target_idx, **kw)[0]
                target_encoded = _scatter_tokens(sub, target_idx, n)
            else:
                target_encoded = self.target_encoder(sensor_data, **kw)[0]
        encoder_pooled = _masked_mean(encoded, enc_spatial[..., 0] != -1)
        is_patch = (ids.row != -1).unsqueeze(0).expand(b, n)
        if contrastive_only:
            keep = is_patch if mask is None else is_patch & (mask != ABSENT)
            target_pooled = _masked_mean(target_encoded, keep)
            return {"online_proj": self.online_proj(encoder_pooled),
                    "target_proj": self.target_proj(target_pooled).detach()}
        if mask is None:
            return {"predictions": encoded, "targets": target_encoded.detach(),
                    "online_proj": self.online_proj(encoded),
                    "target_proj": self.target_proj(target_encoded).detach(),
                    "encoder_pooled": encoder_pooled}
        full = _scatter_tokens(encoded, online_idx, n)
        decoded = self.decoder(full, mask, ids.sensor.unsqueeze(0), ids.spatial.unsqueeze(0),
                               ids.time.unsqueeze(0), months, p, gsd)
        pred_idx = _predicted_positions(mask)
        predictions = _gather_tokens(decoded, pred_idx)
        targets = _gather_tokens(target_encoded, pred_idx).detach()
        return {"predictions": predictions, "targets": targets,
                "online_proj": self.online_proj(predictions),
                "target_proj": self.target_proj(targets).detach(),
                "encoder_pooled": encoder_pooled}

    def _forward_v1(self, sensor_data, visible_indices, target_indices, patch_size, months,
                    gsd, contrastive_only):
        kw = dict(patch_size=patch_size, month_indices=months, gsd=gsd)
        encoded = self.encoder(sensor_data, mask_indices=visible_indices, **kw)[0]
        with torch.no_grad():
            target_encoded = self.target_encoder(sensor_data, **kw)[0]
        if contrastive_only:
            return {"online_proj": self.online_proj(encoded.mean(1)),
                    "target_proj": self.target_proj(target_encoded.mean(1)).detach()}
        if target_indices is not None:
            num_pred = target_indices.shape[1]
            targets = _gather_tokens(target_encoded, target_indices.long())
        else:
            num_pred = 0
            targets = target_encoded
        targets = targets.detach()
        predictions = self.decoder(encoded, num_pred)
        return {"predictions": predictions, "targets": targets,
                "online_proj": self.online_proj(predictions),
                "target_proj": self.target_proj(targets).detach()}


class AutoEncoder(nn.Module):
    """Encoder + decoder + pixel head (spec 9.4); no target encoder, no `_step`."""

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        _check_dropout(dropout)
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = V1Decoder(config) if _is_v1(config) else Decoder(config)
        self.pixel_head = PixelHead(config.embed_dim, config.layout.base_patch_size,
                                    config.pixel_channels)

    def forward(self, sensor_data, *, visibility_mask=None, visible_indices=None,
                masked_indices=None, patch_size=None, month_indices=None, gsd=None,
                height: int = 224, width: int = 224):
        kw = dict(patch_size=patch_size, month_indices=month_indices, gsd=gsd)
        if _is_v1(self.config):
            encoded = self.encoder(sensor_data, mask_indices=visible_indices, **kw)[0]
            # The spec leaves masked_indices=None open; we decode as many tokens as encoded.
            num = masked_indices.shape[1] if masked_indices is not None else encoded.shape[1]
            decoded = self.decoder(encoded, num)
        else:
            encoded, sid, spatial, temporal, _ = self.encoder(sensor_data, **kw)
            mask = (visibility_mask.long() if visibility_mask is not None
                    else torch.zeros_like(sid))
            p = patch_size or self.encoder.patch_size
            decoded = self.decoder(encoded, mask, sid, spatial, temporal, month_indices, p, gsd)
            if visibility_mask is not None:
                decoded = _gather_tokens(decoded, _predicted_positions(mask))
        return {"reconstructed": self.pixel_head(decoded, height, width), "encoded": encoded}


class DualBranch(_EmaMixin, nn.Module):
    """Latent prediction and pixel reconstruction branches (spec 9.5)."""

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        _check_dropout(dropout)
        self.config = config
        self._init_ema(config)
        d = config.embed_dim
        dec = V1Decoder if _is_v1(config) else Decoder
        self.encoder = Encoder(config)
        self.target_encoder = _frozen_copy(self.encoder)
        self.latent_decoder = dec(config)
        self.pixel_decoder = dec(config)
        self.pixel_head = PixelHead(d, config.layout.base_patch_size, config.pixel_channels)
        self.online_proj = ProjectionHead(d, d, config.projection_dim)
        self.target_proj = ProjectionHead(d, d, config.projection_dim)
        for p in self.target_proj.parameters():
            p.requires_grad_(False)

    def forward(self, sensor_data, *, visibility_mask=None, visible_indices=None,
                target_indices=None, patch_size=None, month_indices=None, gsd=None,
                height: int = 224, width: int = 224):
        kw = dict(patch_size=patch_size, month_indices=month_indices, gsd=gsd)
        if _is_v1(self.config):
            encoded = self.encoder(sensor_data, mask_indices=visible_indices, **kw)[0]
            with torch.no_grad():
                target_encoded = self.target_encoder(sensor_data, **kw)[0]
            if target_indices is not None:
                num = target_indices.shape[1]
                targets = _gather_tokens(target_encoded, target_indices.long())
            else:
                num, targets = 0, target_encoded
            latent = self.latent_decoder(encoded, num)
            pixel = self.pixel_decoder(encoded, num)
        else:
            encoded, sid, spatial, temporal, _ = self.encoder(sensor_data, **kw)
            with torch.no_grad():
                target_encoded = self.target_encoder(sensor_data, **kw)[0]
            mask = (visibility_mask.long() if visibility_mask is not None
                    else torch.zeros_like(sid))
            p = patch_size or self.encoder.patch_size
            args = (mask, sid, spatial, temporal, month_indices, p, gsd)
            latent = self.latent_decoder(encoded, *args)
            pixel = self.pixel_decoder(encoded, *args)
            targets = target_encoded
            if visibility_mask is not None:
                idx = _predicted_positions(mask)
                latent = _gather_tokens(latent, idx)
                pixel = _gather_tokens(pixel, idx)
                targets = _gather_tokens(target_encoded, idx)
        targets = targets.detach()
        return {"latent_predictions": latent, "targets": targets,
                "online_proj": self.online_proj(latent),
                "target_proj": self.target_proj(targets).detach(),
                "reconstructed": self.pixel_head(pixel, height, width), "encoded": encoded}


class AxialAttentionBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        kw = dict(dim=config.embed_dim, num_heads=config.num_heads,
                  num_kv_heads=config.num_kv_heads, ffn_expansion=config.ffn_expansion)
        self.h_block = make_block(config, **kw)
        self.w_block = make_block(config, **kw)
        self.t_block = make_block(config, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, T, D) -> same, attention along H, then W, then T (no RoPE/masks)."""
        b, h, w, t, d = x.shape
        y = x.permute(0, 2, 3, 1, 4).reshape(b * w * t, h, d)
        x = self.h_block(y).reshape(b, w, t, h, d).permute(0, 3, 1, 2, 4)
        y = x.permute(0, 1, 3, 2, 4).reshape(b * h * t, w, d)
        x = self.w_block(y).reshape(b, h, t, w, d).permute(0, 1, 3, 2, 4)
        y = x.reshape(b * h * w, t, d)
        return self.t_block(y).reshape(b, h, w, t, d)


class SpatioTemporalEncoder(nn.Module):
    """Encoder + axial attention + pooling head + projection (spec 9.6).

    Faithful to the original, including its (H, W, T) reshape of the patch tokens, which is
    only consistent for one single-group sensor with T = 1 (spec 16 item 16).
    """

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        _check_dropout(dropout)
        self.config = config
        d = config.embed_dim
        self.encoder = Encoder(config)
        self.axial_layers = nn.ModuleList(
            [AxialAttentionBlock(config) for _ in range(config.axial_depth)])
        self.norm = RMSNorm(d, eps=1e-6)
        self.pool = PoolingHead(d, config.pooling_heads)
        self.proj = ProjectionHead(d, d, config.projection_dim)

    def forward(self, sensor_data, *, H: int, W: int, T: int = 1, patch_size=None,
                month_indices=None, gsd=None):
        out = self.encoder(sensor_data, patch_size=patch_size, month_indices=month_indices,
                           gsd=gsd)
        x, layout = out[0], out[-1]
        b, n, d = x.shape
        keep = torch.ones(n, dtype=torch.bool, device=x.device)
        start = 0
        for _, count in layout:
            keep[start] = False
            start += count
        pos = torch.nonzero(keep).squeeze(1)
        if pos.numel() != H * W * T:
            raise ValueError(f"{pos.numel()} patch tokens do not form an H*W*T = "
                             f"{H}*{W}*{T} grid")
        y = x[:, pos].reshape(b, H, W, T, d)
        for layer in self.axial_layers:
            y = layer(y)
        x = x.clone()
        x[:, pos] = y.reshape(b, -1, d)
        x = self.norm(x)
        pooled = self.pool(x)
        return {"encoded": x, "pooled": pooled, "projected": self.proj(pooled)}


_MODELS = {
    "encoder": Encoder, "latent_predictor": LatentPredictor, "autoencoder": AutoEncoder,
    "dual_branch": DualBranch, "spatiotemporal": SpatioTemporalEncoder,
}


def build_model(config: ModelConfig, kind: str = "latent_predictor",
                device: torch.device | str | None = None) -> nn.Module:
    """Build one of the models (`kind` in encoder, latent_predictor, autoencoder,
    dual_branch, spatiotemporal), optionally directly on `device` (e.g. "meta")."""
    try:
        cls = _MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {tuple(_MODELS)}") from None
    if device is None:
        return cls(config)
    with torch.device(device):
        return cls(config)


def state_dict_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_npz_weights(module: nn.Module, arrays: Mapping[str, object], prefix: str = "w/",
                     strict: bool = True):
    """Load `prefix<state-dict key>` arrays (e.g. a golden npz) into `module`."""
    sd = {k[len(prefix):]: torch.as_tensor(arrays[k]) for k in arrays if k.startswith(prefix)}
    return module.load_state_dict(sd, strict=strict)


def count_parameters(module: nn.Module, names: Sequence[str] | None = None) -> int:
    if names is None:
        return sum(p.numel() for p in module.parameters())
    return sum(p.numel() for n, p in module.named_parameters() if n.split(".")[0] in names)
