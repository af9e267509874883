"""Tokenizer and encoder (the PyTorch twin of spacenit_jax/model/encoder.py).

Input: ``sensor_data``, a dict sensor label -> tensor (B, C, H, W) or (B, C, H, W, T),
channels on axis 1 and time last (the original's layout), normalised values, one entry
per sensor of the model's config (a subset is fine). Tokens come out in the original's
order: per configured sensor, its type token, then per timestep, token group, row and
column one patch token. Bad input (an unknown, misspelled or unconfigured sensor, a wrong
channel count or layout, sizes not divisible by the patch size, grids or time series
beyond the position tables) raises a one-line error naming the sensor and what was
expected; nothing is dropped or cropped silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from spacenit_jax import sensors
from spacenit_jax import tokenization as tk
from spacenit_jax.model.config import ModelConfig
from torch_bridge.torch_model import reference_quirks as quirks
from torch_bridge.torch_model.layers import (
    TransformerStack,
    check_dropout,
    gather_tokens,
    is_reference,
    is_v1,
    make_norm,
)
from torch_bridge.torch_model.positions import CyclicMonthEmbed, SpatialRoPE, TemporalRoPE

# ======================================================================================
# Input checks


def _closest(label: str, candidates) -> str | None:
    """The candidate closest to `label` (case-insensitive), if any is close."""
    lower = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(str(label).lower(), list(lower), n=1, cutoff=0.6)
    return lower[match[0]] if match else None


def check_sensor_label(label, configured) -> None:
    """Raise a one-line ValueError unless `label` is one of the `configured` sensors; the
    message says whether it is unknown or known but not configured, and suggests the
    closest label."""
    configured = list(configured)
    if isinstance(label, str) and label in configured:
        return
    known = sensors.all_labels()
    close = _closest(label, dict.fromkeys([*configured, *known]))
    hint = f" (did you mean {close!r}?)" if close and close != label else ""
    if isinstance(label, str) and label in known:
        raise ValueError(f"sensor {label!r} is not one of this model's sensors "
                         f"({', '.join(configured)}): the model has no weights for it{hint}")
    raise ValueError(f"unknown sensor {label!r}{hint}; this model's sensors: "
                     f"{', '.join(configured)} (all known sensors: {', '.join(known)})")


def check_sensor_input(label: str, x, weight_dtype: torch.dtype | None = None) -> None:
    """Type, layout, channel count and dtype of one sensor's input tensor."""
    spec = sensors.get(label)
    c = spec.num_channels
    if not torch.is_tensor(x):
        hint = " (torch.from_numpy(array))" if hasattr(x, "__array__") else ""
        raise TypeError(f"sensor {label!r}: expected a torch.Tensor (B, {c}, H, W[, T]), got "
                        f"{type(x).__name__}{hint}")
    shape = tuple(x.shape)
    if x.ndim not in (4, 5):
        raise ValueError(f"sensor {label!r}: expected a (B, {c}, H, W) or (B, {c}, H, W, T) "
                         f"tensor (channels on axis 1, time last), got shape {shape}")
    if shape[1] != c:
        hint = ""
        if shape[-1] == c:
            perm = "0, 3, 1, 2" if x.ndim == 4 else "0, 4, 1, 2, 3"
            hint = f"; it looks channel-last: use x.permute({perm})"
        raise ValueError(f"sensor {label!r}: expected {c} channels ({', '.join(spec.bands)}) "
                         f"on axis 1 of (B, C, H, W[, T]), got shape {shape}{hint}")
    if not x.is_floating_point():
        raise TypeError(f"sensor {label!r}: dtype {x.dtype}, expected a floating-point tensor "
                        f"of normalised values (e.g. x.float() after normalisation)")
    if (weight_dtype is not None and x.dtype != weight_dtype
            and not torch.is_autocast_enabled(x.device.type)):
        raise TypeError(f"sensor {label!r}: dtype {x.dtype}, but the model's parameters are "
                        f"{weight_dtype}: convert with x.to({weight_dtype})")


def check_index_tensor(name: str, idx, batch: int, n: int) -> None:
    """idx: a (B, K) integer tensor of token positions in [0, N)."""
    if (not torch.is_tensor(idx) or idx.ndim != 2 or idx.shape[0] != batch
            or idx.is_floating_point() or idx.dtype == torch.bool):
        shape = tuple(idx.shape) if hasattr(idx, "shape") else type(idx).__name__
        raise ValueError(f"{name}: expected a ({batch}, K) integer tensor of token positions "
                         f"in [0, {n}), got {shape}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"{name}: token positions must be in [0, {n}) (the input has {n} "
                         f"tokens), got values from {int(idx.min())} to {int(idx.max())}")


def check_months(months: torch.Tensor, batch: int) -> None:
    """month_indices: (B, T_m) integers in [-12, 11] (negative months wrap, as in the
    original's table lookup)."""
    if (not torch.is_tensor(months) or months.ndim != 2 or months.shape[0] != batch
            or months.is_floating_point()):
        shape = tuple(months.shape) if hasattr(months, "shape") else type(months).__name__
        raise ValueError(f"month_indices: expected a ({batch}, T) integer tensor of months "
                         f"0-11, got {shape}")
    if months.numel() and (int(months.min()) < -12 or int(months.max()) > 11):
        raise ValueError(f"month_indices: months are 0-11 (January = 0), got values from "
                         f"{int(months.min())} to {int(months.max())}")


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
        """(N, C, H, W) with H, W multiples of k -> (N, Hp*Wp, C*k*k): row-major grid,
        channel-major within a patch."""
        n, c, h, w = x.shape
        hp, wp = h // k, w // k
        x = x.reshape(n, c, hp, k, wp, k)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(n, hp * wp, c * k * k)
        return x, hp, wp

    def forward(self, x: torch.Tensor, pixels: int, mode: str, what: str = "input"
                ) -> tuple[torch.Tensor, int, int]:
        """x (N, C, H, W) at `pixels` stored pixels per patch side -> (N, Hp*Wp, D), Hp, Wp.

        mode "input": resize the image so that a patch is P0 pixels (bicubic, antialiased;
        the latest original); "weight": area-resize the kernel to P x P (the v1 original).
        """
        p, p0 = pixels, self.base_patch_size
        h, w = x.shape[-2:]
        if p < 1:
            raise ValueError(f"{what}: patch size must be >= 1, got {p}")
        if h % p or w % p:
            raise ValueError(f"{what}: spatial size {h}x{w} is not divisible by the patch "
                             f"size {p}")
        if mode == "input":
            if p != p0:
                size = (h // p * p0, w // p * p0)
                x = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True,
                                  align_corners=False).to(x.dtype)
            patches, hp, wp = self.patchify(x, p0)
            return self.proj(patches), hp, wp
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
        """Stored pixels per patch side: P for every sensor in the original; the design
        card's ground-aligned patches span more pixels of a finer-stored sensor."""
        if is_reference(self.config):
            return patch_size
        return self.config.layout.patch_pixels(label, patch_size)

    def present(self, sensor_data: Mapping[str, torch.Tensor]) -> list[str]:
        """The input's sensors in config order, after checking every entry (see the module
        docstring); raises a one-line error naming the sensor at the first bad one."""
        configured = self.config.layout.sensor_labels
        if not isinstance(sensor_data, Mapping):
            raise TypeError(f"sensor_data must be a dict sensor label -> tensor "
                            f"(B, C, H, W[, T]), got {type(sensor_data).__name__}")
        if not sensor_data:
            raise ValueError(f"no sensor inputs given; this model's sensors: "
                             f"{', '.join(configured)}")
        weight_dtype = next(iter(self.patch_embeds.values())).proj.weight.dtype
        for label, x in sensor_data.items():
            check_sensor_label(label, configured)
            check_sensor_input(label, x, weight_dtype)
        batch = {label: int(x.shape[0]) for label, x in sensor_data.items()}
        if len(set(batch.values())) > 1:
            raise ValueError(f"sensor inputs have different batch sizes: {batch}")
        return [label for label in configured if label in sensor_data]

    def grids(self, sensor_data: Mapping[str, torch.Tensor], patch_size: int
              ) -> dict[str, tk.SensorGrid]:
        """Patch grid of every input sensor, without running the embeddings."""
        out = {}
        for label in self.present(sensor_data):
            x = sensor_data[label]
            pix = self._pixels(label, patch_size)
            h, w = x.shape[2], x.shape[3]
            if h % pix or w % pix:
                raise ValueError(f"sensor {label!r}: spatial size {h}x{w} is not divisible "
                                 f"by the patch size {pix} (stored pixels per patch side); "
                                 f"crop or pad the image to a multiple of {pix}")
            out[label] = tk.SensorGrid(h // pix, w // pix, x.shape[4] if x.ndim == 5 else 1,
                                       x.ndim == 5)
        return out

    def token_ids(self, sensor_data, patch_size: int, gsd=None) -> TokenIds:
        layout = self.config.layout
        if isinstance(patch_size, bool) or int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer (pixels per patch side), "
                             f"got {patch_size!r}")
        patch_size = int(patch_size)
        grids = self.grids(sensor_data, patch_size)
        for label, g in grids.items():
            if g.hp > self.config.max_grid or g.wp > self.config.max_grid:
                raise ValueError(f"sensor {label!r}: patch grid {g.hp}x{g.wp} exceeds "
                                 f"max_grid {self.config.max_grid}")
            if g.temporal and g.t > self.config.max_timesteps:
                raise ValueError(f"sensor {label!r}: {g.t} timesteps exceed max_timesteps "
                                 f"{self.config.max_timesteps}")
        tokens = tk.sample_tokens(layout, grids)
        gsd = quirks.batch_gsd(gsd)
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
            if x.ndim == 5:
                bb, c, h, w, t = x.shape
                x = x.permute(0, 4, 1, 2, 3).reshape(bb * t, c, h, w)
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


class Encoder(nn.Module):
    """Tokenizer + month embedding + RoPE transformer + final norm."""

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
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
        p = self.patch_size if patch_size is None else patch_size
        return self.tokenizer.token_ids(sensor_data, p, gsd)

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
        """sensor_data: label -> (B, C, H, W[, T]) channel-first, time last;
        month_indices (B, T_m) months 0-11; gsd metres per pixel (number or per-sample
        tensor, reduced to one scale per batch as the original does); mask_indices (B, K)
        positions of the tokens to encode (the rest are dropped before the transformer).

        Returns (tokens, sensor_ids, spatial_ids, temporal_ids, layout) for the latest
        original's API, (tokens, sensor_ids, layout) for the v1 API (decoder == "v1").
        """
        p = self.patch_size if patch_size is None else patch_size
        ids = self.tokenizer.token_ids(sensor_data, p, gsd)
        x = self.tokenizer(sensor_data, p)
        b, n, _ = x.shape
        if month_indices is not None:
            check_months(month_indices, b)
            x = x + self.month_embed.per_token(month_indices, ids.time.unsqueeze(0)).to(x.dtype)
        rot = self.rotations(ids).unsqueeze(0).expand(b, n, -1)
        sensor_ids = ids.sensor.unsqueeze(0).expand(b, n)
        spatial_ids = ids.spatial.unsqueeze(0).expand(b, n, 2)
        temporal_ids = ids.time.unsqueeze(0).expand(b, n)
        if mask_indices is not None:
            check_index_tensor("mask_indices", mask_indices, b, n)
            mi = mask_indices.long()
            x = gather_tokens(x, mi)
            rot = gather_tokens(rot, mi)
            sensor_ids = gather_tokens(sensor_ids, mi)
            spatial_ids = gather_tokens(spatial_ids, mi)
            temporal_ids = gather_tokens(temporal_ids, mi)
        x = self.norm(self.transformer(x, rope=rot))
        if is_v1(self.config):
            return x, sensor_ids.contiguous(), ids.layout
        return (x, sensor_ids.contiguous(), spatial_ids.contiguous(),
                temporal_ids.contiguous(), ids.layout)
