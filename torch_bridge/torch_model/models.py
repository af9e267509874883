"""Composite models: LatentPredictor, AutoEncoder, DualBranch, SpatioTemporalEncoder, and
`build_model` (the PyTorch twin of spacenit_jax/model/models.py).

Which original's API a model follows is decided by ``config.decoder``:

=============================  =============================================================
latest (decoder="cross")        v1 (decoder="v1")
=============================  =============================================================
Encoder -> (tokens, sensor_ids,  Encoder -> (tokens, sensor_ids, layout)
spatial_ids, temporal_ids,
layout)
LatentPredictor(visibility_mask) LatentPredictor(visible_indices, target_indices)
pooled = mean over patch tokens  pooled = mean over all tokens (type tokens included)
=============================  =============================================================

Token selection follows the original's index arithmetic (reference_quirks, behaviours
2-4 and 6).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from spacenit_jax.model.config import ModelConfig, config_from_dict
from spacenit_jax.tokenization import TokenState
from torch_bridge.torch_model import reference_quirks as quirks
from torch_bridge.torch_model.decoder import make_decoder
from torch_bridge.torch_model.encoder import Encoder
from torch_bridge.torch_model.heads import PixelHead, PoolingHead, ProjectionHead, masked_mean
from torch_bridge.torch_model.layers import (
    RMSNorm,
    check_dropout,
    gather_tokens,
    is_v1,
    make_block,
    scatter_tokens,
)

VISIBLE, ABSENT = TokenState.VISIBLE, TokenState.ABSENT


def check_visibility(mask, batch: int, n: int) -> torch.Tensor:
    """visibility_mask: (B, N) integer TokenState values (0 VISIBLE, 1 TARGET_ONLY,
    2 PREDICTED, 3 ABSENT) in tokenizer order -> the mask as int64."""
    states = ", ".join(f"{int(s)} {s.name}" for s in TokenState)
    if (not torch.is_tensor(mask) or mask.dtype == torch.bool or mask.is_floating_point()
            or tuple(mask.shape) != (batch, n)):
        got = (f"{mask.dtype} {tuple(mask.shape)}" if torch.is_tensor(mask)
               else type(mask).__name__)
        raise ValueError(f"visibility_mask must be a (B, N) = {(batch, n)} integer tensor of "
                         f"token states ({states}), got {got}")
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > 3):
        raise ValueError(f"visibility_mask: token states are {states}; got values from "
                         f"{int(mask.min())} to {int(mask.max())}")
    return mask.long()


class _EmaMixin:
    """The EMA target's momentum schedule and update, and the persistent `_step` buffer
    (an int64 scalar, first in the state dict, as in the original)."""

    def _init_encoders(self, config: ModelConfig):
        """`_step`, the online encoder and its frozen copy, the EMA target encoder (built
        in the original's module order: the state-dict key order follows it)."""
        self.ema_momentum = config.ema_momentum
        self.ema_momentum_end = config.ema_momentum_end
        self.ema_warmup_steps = config.ema_warmup_steps
        self._ema_momentum = config.ema_momentum
        self.register_buffer("_step", torch.zeros((), dtype=torch.long))
        self.encoder = Encoder(config)
        self.target_encoder = _frozen_copy(self.encoder)

    def _init_projections(self, config: ModelConfig):
        """The online projection head and the target one (never trained: EMA only)."""
        d = config.embed_dim
        self.online_proj = ProjectionHead(d, d, config.projection_dim)
        self.target_proj = ProjectionHead(d, d, config.projection_dim)
        for p in self.target_proj.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def step_ema(self) -> float:
        """target <- m target + (1 - m) online, m linear from ema_momentum to
        ema_momentum_end over ema_warmup_steps; returns m and advances `_step`."""
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


def _v1_targets(target_encoded: torch.Tensor, target_indices: torch.Tensor | None):
    """(number of predictions, targets) of the v1 API: the target encoder's tokens at
    target_indices (B, K), or all of them (and no prediction) without indices."""
    if target_indices is None:
        return 0, target_encoded
    return target_indices.shape[1], gather_tokens(target_encoded, target_indices.long())


class LatentPredictor(_EmaMixin, nn.Module):
    """Online encoder + EMA target encoder + decoder + projection heads."""

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
        self.config = config
        self._init_encoders(config)
        self.decoder = make_decoder(config)
        self._init_projections(config)

    def forward(self, sensor_data, *, visibility_mask=None, visible_indices=None,
                target_indices=None, patch_size=None, month_indices=None, gsd=None,
                contrastive_only: bool = False):
        """Latest API: visibility_mask (B, N) of TokenState values in tokenizer order.
        v1 API: visible_indices (B, N_vis) and target_indices (B, N_pred)."""
        if is_v1(self.config):
            if visibility_mask is not None:
                raise ValueError("the v1 LatentPredictor takes visible_indices/target_indices")
            return self._forward_v1(sensor_data, visible_indices, target_indices, patch_size,
                                    month_indices, gsd, contrastive_only)
        if visible_indices is not None or target_indices is not None:
            raise ValueError("this LatentPredictor takes visibility_mask (latest-revision API)")
        return self._forward_latest(sensor_data, visibility_mask, patch_size, month_indices,
                                    gsd, contrastive_only)

    def _forward_latest(self, sensor_data, mask, patch_size, months, gsd, contrastive_only):
        p = self.encoder.patch_size if patch_size is None else patch_size
        ids = self.encoder.token_ids(sensor_data, p, gsd)
        n = ids.sensor.shape[0]
        b = next(iter(sensor_data.values())).shape[0]
        kw = dict(patch_size=p, month_indices=months, gsd=gsd)
        online_idx = None
        if mask is not None:
            mask = check_visibility(mask, b, n)
            if not contrastive_only:
                online_idx = quirks.padded_indices(mask == VISIBLE)
        encoded, _, enc_spatial, _, _ = self.encoder(sensor_data, mask_indices=online_idx, **kw)
        with torch.no_grad():
            if mask is not None:
                target_idx = quirks.padded_indices(mask != ABSENT)
                sub = self.target_encoder(sensor_data, mask_indices=target_idx, **kw)[0]
                target_encoded = scatter_tokens(sub, target_idx, n)
            else:
                target_encoded = self.target_encoder(sensor_data, **kw)[0]
        encoder_pooled = masked_mean(encoded, enc_spatial[..., 0] != -1)
        is_patch = (ids.row != -1).unsqueeze(0).expand(b, n)
        if contrastive_only:
            keep = is_patch if mask is None else is_patch & (mask != ABSENT)
            target_pooled = masked_mean(target_encoded, keep)
            return {"online_proj": self.online_proj(encoder_pooled),
                    "target_proj": self.target_proj(target_pooled).detach()}
        if mask is None:
            return {"predictions": encoded, "targets": target_encoded.detach(),
                    "online_proj": self.online_proj(encoded),
                    "target_proj": self.target_proj(target_encoded).detach(),
                    "encoder_pooled": encoder_pooled}
        full = scatter_tokens(encoded, online_idx, n)
        decoded = self.decoder(full, mask, ids.sensor.unsqueeze(0), ids.spatial.unsqueeze(0),
                               ids.time.unsqueeze(0), months, p, gsd)
        pred_idx = quirks.predicted_positions(mask)
        predictions = gather_tokens(decoded, pred_idx)
        targets = gather_tokens(target_encoded, pred_idx).detach()
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
        num_pred, targets = _v1_targets(target_encoded, target_indices)
        targets = targets.detach()
        predictions = self.decoder(encoded, num_pred)
        return {"predictions": predictions, "targets": targets,
                "online_proj": self.online_proj(predictions),
                "target_proj": self.target_proj(targets).detach()}


class AutoEncoder(nn.Module):
    """Encoder + decoder + pixel head; no target encoder, no `_step`."""

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = make_decoder(config)
        self.pixel_head = PixelHead(config.embed_dim, config.layout.base_patch_size,
                                    config.pixel_channels)

    def forward(self, sensor_data, *, visibility_mask=None, visible_indices=None,
                masked_indices=None, patch_size=None, month_indices=None, gsd=None,
                height: int = 224, width: int = 224):
        kw = dict(patch_size=patch_size, month_indices=month_indices, gsd=gsd)
        if is_v1(self.config):
            encoded = self.encoder(sensor_data, mask_indices=visible_indices, **kw)[0]
            # Without masked_indices we decode as many tokens as were encoded (the
            # original leaves this case undefined).
            num = masked_indices.shape[1] if masked_indices is not None else encoded.shape[1]
            decoded = self.decoder(encoded, num)
        else:
            encoded, sid, spatial, temporal, _ = self.encoder(sensor_data, **kw)
            mask = (check_visibility(visibility_mask, *sid.shape)
                    if visibility_mask is not None else torch.zeros_like(sid))
            p = self.encoder.patch_size if patch_size is None else patch_size
            decoded = self.decoder(encoded, mask, sid, spatial, temporal, month_indices, p, gsd)
            if visibility_mask is not None:
                decoded = gather_tokens(decoded, quirks.predicted_positions(mask))
        return {"reconstructed": self.pixel_head(decoded, height, width), "encoded": encoded}


class DualBranch(_EmaMixin, nn.Module):
    """Latent prediction and pixel reconstruction branches."""

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
        self.config = config
        self._init_encoders(config)
        self.latent_decoder = make_decoder(config)
        self.pixel_decoder = make_decoder(config)
        self.pixel_head = PixelHead(config.embed_dim, config.layout.base_patch_size,
                                    config.pixel_channels)
        self._init_projections(config)

    def forward(self, sensor_data, *, visibility_mask=None, visible_indices=None,
                target_indices=None, patch_size=None, month_indices=None, gsd=None,
                height: int = 224, width: int = 224):
        kw = dict(patch_size=patch_size, month_indices=month_indices, gsd=gsd)
        if is_v1(self.config):
            encoded = self.encoder(sensor_data, mask_indices=visible_indices, **kw)[0]
            with torch.no_grad():
                target_encoded = self.target_encoder(sensor_data, **kw)[0]
            num, targets = _v1_targets(target_encoded, target_indices)
            latent = self.latent_decoder(encoded, num)
            pixel = self.pixel_decoder(encoded, num)
        else:
            encoded, sid, spatial, temporal, _ = self.encoder(sensor_data, **kw)
            with torch.no_grad():
                target_encoded = self.target_encoder(sensor_data, **kw)[0]
            mask = (check_visibility(visibility_mask, *sid.shape)
                    if visibility_mask is not None else torch.zeros_like(sid))
            p = self.encoder.patch_size if patch_size is None else patch_size
            args = (mask, sid, spatial, temporal, month_indices, p, gsd)
            latent = self.latent_decoder(encoded, *args)
            pixel = self.pixel_decoder(encoded, *args)
            targets = target_encoded
            if visibility_mask is not None:
                idx = quirks.predicted_positions(mask)
                latent = gather_tokens(latent, idx)
                pixel = gather_tokens(pixel, idx)
                targets = gather_tokens(target_encoded, idx)
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
    """Encoder + axial attention over the (H, W, T) patch grid + pooling head + projection.

    The patch tokens are arranged as the original does (reference_quirks, behaviour 6).
    """

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
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
        pos = quirks.axial_grid_positions(layout, n, H, W, T, device=x.device)
        y = x[:, pos].reshape(b, H, W, T, d)
        for layer in self.axial_layers:
            y = layer(y)
        x = x.clone()
        x[:, pos] = y.reshape(b, -1, d)
        x = self.norm(x)
        pooled = self.pool(x)
        return {"encoded": x, "pooled": pooled, "projected": self.proj(pooled)}


MODELS = {
    "encoder": Encoder, "latent_predictor": LatentPredictor, "autoencoder": AutoEncoder,
    "dual_branch": DualBranch, "spatiotemporal": SpatioTemporalEncoder,
}


def build_model(config: ModelConfig | Mapping, kind: str = "latent_predictor",
                device: torch.device | str | None = None) -> nn.Module:
    """Build one of the models (`kind` in MODELS), optionally directly on `device` (e.g.
    "meta"). `config` is a ModelConfig or its dict form (the "config" entry of an
    export's config.json)."""
    if isinstance(config, Mapping):
        config = config_from_dict(config)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig or its dict form, got "
                        f"{type(config).__name__}")
    try:
        cls = MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {tuple(MODELS)}") from None
    if device is None:
        return cls(config)
    with torch.device(device):
        return cls(config)


def state_dict_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """{state-dict key: shape} of a module, in its state-dict order."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
