"""Decoders (the PyTorch twin of spacenit_jax/model/decoder.py).

`Decoder` is the latest original's: PREDICTED queries cross-attend to VISIBLE tokens, after
an additive re-encoding (sensor, month, sin-cos space scaled by the per-token position
scale, sin-cos time) of the whole sequence. Which tokens become queries and context
follows the original's index arithmetic (reference_quirks, behaviour 1).
`V1Decoder` is the v1 original's: identical mask-token queries with no positional
signal, a one-layer context enrichment, then self- and cross-attention blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from spacenit_jax.model.config import ModelConfig
from spacenit_jax.tokenization import TokenState
from torch_bridge.torch_model import reference_quirks as quirks
from torch_bridge.torch_model.encoder import SensorEmbed
from torch_bridge.torch_model.layers import (
    TransformerStack,
    check_dropout,
    gather_tokens,
    make_norm,
)
from torch_bridge.torch_model.positions import CyclicMonthEmbed, sincos_1d


class Decoder(nn.Module):
    """The latest original's decoder: PREDICTED queries cross-attend to VISIBLE tokens."""

    def __init__(self, config: ModelConfig, num_sensors: int | None = None, *,
                 dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
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
        gsd = quirks.batch_gsd(gsd)
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
        """all_tokens (B, N, D) in tokenizer order, visibility_mask (B, N) TokenState
        values -> (B, N, D): PREDICTED positions decoded, every position normalised."""
        b, n, d = all_tokens.shape
        p = self.config.layout.base_patch_size if patch_size is None else patch_size
        vis = visibility_mask.long()
        x = self.encoder_to_decoder_embed(self.input_norm(all_tokens))
        x = torch.where((vis == TokenState.PREDICTED).unsqueeze(-1),
                        self.mask_token.to(x.dtype), x)
        if sensor_ids is not None:
            x = self.reencode(x, sensor_ids.expand(b, n), spatial_ids.expand(b, n, 2),
                              temporal_ids.expand(b, n), month_indices, p, gsd)
        order, max_pred, max_vis, ctx_mask = quirks.decoder_slots(vis)
        if max_pred == 0:
            return self.norm(x)
        xs = gather_tokens(x, order)
        queries = xs[:, :max_pred]
        context = xs[:, max_pred:max_pred + max_vis]
        queries = self.transformer(queries, context=context, cross_mask=ctx_mask)
        xs = torch.cat([queries, xs[:, max_pred:]], 1)
        out = torch.empty_like(xs).scatter_(1, order.unsqueeze(-1).expand(b, n, d), xs)
        return self.norm(out)


class V1Decoder(nn.Module):
    """The v1 decoder: mask-token queries, 1-layer context enrichment, no positions."""

    def __init__(self, config: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        check_dropout(dropout)
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


def make_decoder(config: ModelConfig) -> nn.Module:
    return V1Decoder(config) if config.decoder == "v1" else Decoder(config)
