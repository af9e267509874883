"""Decoders: queries are the PREDICTED tokens, context the encoded VISIBLE tokens.

`CrossDecoder` is the latest original's decoder (reference-model spec 7.1) with explicit
query/key padding masks instead of its equal-count gathers (spec 16 items 7-9): context
= input-norm + linear of the online encoder's outputs plus the additive re-encoding,
queries = mask token plus the re-encoding, cross-attention blocks from queries to the
raw context, final norm. With equal per-sample counts it equals the original exactly.

`V1Decoder` is the v1 original's decoder (spec 7.2): identical mask-token queries with no
positional signal, a one-layer context enrichment, then self+cross blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from spacenit_jax.batch import TokenStream
from spacenit_jax.model import layers, positions
from spacenit_jax.model.config import ModelConfig


def _decoder_block(cfg: ModelConfig, *, self_attention: bool, rngs, dtype):
    return layers.Block(
        cfg.embed_dim, cfg.decoder_num_heads, cfg.decoder_num_kv_heads, ffn=cfg.ffn,
        hidden=cfg.ffn_hidden(cfg.decoder_ffn_expansion), norm=cfg.norm, eps=cfg.norm_eps,
        prenorm=cfg.prenorm, bias=cfg.bias, self_attention=self_attention,
        cross_attention=True, rngs=rngs, dtype=dtype, impl=cfg.attention_impl)


class CrossDecoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d = cfg.embed_dim
        dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else None
        self.dim = d
        self.mask_token = layers.param(0.02 * _normal(rngs, (d,)), ("embed",))
        self.input_norm = layers.make_norm(cfg.norm, d, cfg.norm_eps)
        self.embed = layers.Dense(d, d, bias=True, rngs=rngs, axes=("embed", "embed2"))
        self.month_embed = layers.Dense(2, d, bias=False, rngs=rngs, axes=(None, "embed"))
        self.sensor_embed = layers.Embed(len(cfg.sensor_labels), d, rngs=rngs)
        self.blocks = layers.Stack(
            lambda r: _decoder_block(cfg, self_attention=False, rngs=r, dtype=dtype),
            cfg.decoder_depth, rngs=rngs, scan=cfg.scan_layers, remat=cfg.remat)
        self.norm = layers.make_norm(cfg.norm, d, cfg.norm_eps)

    def reencode(self, s: TokenStream):
        return (self.sensor_embed(s.sensor) + self.month_embed(s.month)
                + positions.decoder_encoding(s.row, s.col, s.time, s.pos_scale, self.dim))

    def __call__(self, context, context_stream: TokenStream, query_stream: TokenStream):
        """context (R, Lc, D) online-encoder outputs -> (R, Lq, D) decoded queries."""
        ctx = self.embed(self.input_norm(context))
        ctx = ctx + self.reencode(context_stream).astype(ctx.dtype)
        q = self.mask_token[...] + self.reencode(query_stream)
        q = q.astype(context.dtype)
        cross = positions.segment_mask(query_stream.segment, context_stream.segment)
        q = self.blocks(q, context=ctx, cross_mask=cross, segment=query_stream.segment)
        return self.norm(q)


class V1Decoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d = cfg.embed_dim
        dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else None
        self.mask_token = layers.param(0.02 * _normal(rngs, (d,)), ("embed",))
        self.blocks = layers.Stack(
            lambda r: _decoder_block(cfg, self_attention=True, rngs=r, dtype=dtype),
            cfg.decoder_depth, rngs=rngs, scan=cfg.scan_layers, remat=cfg.remat)
        self.context_block = _decoder_block(cfg, self_attention=True, rngs=rngs, dtype=dtype)
        self.norm = layers.make_norm(cfg.norm, d, cfg.norm_eps)

    def __call__(self, context, context_stream: TokenStream, query_stream: TokenStream):
        seg_q, seg_c = query_stream.segment, context_stream.segment
        q = jnp.broadcast_to(self.mask_token[...].astype(context.dtype),
                             seg_q.shape + self.mask_token.shape)
        enriched = self.context_block(
            context, mask=positions.segment_mask(seg_c, seg_c), context=q,
            cross_mask=positions.segment_mask(seg_c, seg_q), segment=seg_c)
        q = self.blocks(q, mask=positions.segment_mask(seg_q, seg_q), context=enriched,
                        cross_mask=positions.segment_mask(seg_q, seg_c), segment=seg_q)
        return self.norm(q)


def _normal(rngs, shape):
    return jax.random.normal(rngs.params(), shape)


def make_decoder(cfg: ModelConfig, *, rngs: nnx.Rngs):
    return CrossDecoder(cfg, rngs=rngs) if cfg.decoder == "cross" else V1Decoder(cfg, rngs=rngs)
