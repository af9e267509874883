"""Decoders: queries are the PREDICTED tokens, context the encoded VISIBLE tokens.

`CrossDecoder` is the latest original's decoder: context = input-norm + linear of the
online encoder's outputs plus the additive re-encoding (decoder sensor embedding, month
embedding, sin-cos encodings of row, column and timestep), queries = mask token plus the
same re-encoding, cross-attention blocks from the queries to the raw (un-normalised)
context, final norm. The original gathers an equal number of queries and context tokens
per sample and, for a sample with fewer PREDICTED tokens, fills the surplus query slots
with its first VISIBLE tokens (removing them from its context); here queries and context
are the sample's own tokens, kept apart by segment ids. With equal per-sample counts the
two agree exactly.

`V1Decoder` is the v1 original's decoder: identical mask-token queries with no
positional signal (so all outputs of a sample are equal), a one-layer context
enrichment (the context self-attends, then cross-attends to the queries), then
self+cross blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from spacenit_jax.batch import TokenStream
from spacenit_jax.model import layers, positions
from spacenit_jax.model.attention import Segments
from spacenit_jax.model.config import ModelConfig
from spacenit_jax.sharding import constrain


def _decoder_block(cfg: ModelConfig, *, self_attention: bool, rngs):
    return layers.Block(
        cfg.embed_dim, cfg.decoder_num_heads, cfg.decoder_num_kv_heads, ffn=cfg.ffn,
        hidden=cfg.ffn_hidden(cfg.decoder_ffn_expansion), norm=cfg.norm, eps=cfg.norm_eps,
        prenorm=cfg.prenorm, bias=cfg.bias, self_attention=self_attention,
        cross_attention=True, rngs=rngs, dtype=cfg.dtype, impl=cfg.attention_impl)


class CrossDecoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d = cfg.embed_dim
        self.dim = d
        self.mask_token = layers.param(0.02 * _normal(rngs, (d,)), ("embed",))
        self.input_norm = layers.make_norm(cfg.norm, d, cfg.norm_eps)
        self.embed = layers.Dense(d, d, bias=True, rngs=rngs, axes=("embed", "embed2"))
        self.month_embed = layers.Dense(2, d, bias=False, rngs=rngs, axes=(None, "embed"))
        self.sensor_embed = layers.Embed(len(cfg.sensor_labels), d, rngs=rngs)
        self.blocks = layers.Stack(
            lambda r: _decoder_block(cfg, self_attention=False, rngs=r),
            cfg.decoder_depth, rngs=rngs, scan=cfg.scan_layers, remat=cfg.remat)
        self.norm = layers.make_norm(cfg.norm, d, cfg.norm_eps)

    def reencode(self, s: TokenStream):
        return (self.sensor_embed(s.sensor) + self.month_embed(s.month)
                + positions.decoder_encoding(s.row, s.col, s.time, s.pos_scale, self.dim))

    def __call__(self, context, context_stream: TokenStream, query_stream: TokenStream,
                 num_segments: int | None = None):
        """context (R, Lc, D) online-encoder outputs -> (R, Lq, D) decoded queries."""
        ctx = self.embed(self.input_norm(context))
        ctx = constrain(ctx + self.reencode(context_stream).astype(ctx.dtype), layers.TOKENS)
        q = self.mask_token[...] + self.reencode(query_stream)
        q = constrain(q.astype(context.dtype), layers.TOKENS)
        cross = Segments(query_stream.segment, context_stream.segment,
                         num_segments=num_segments)
        q = self.blocks(q, context=ctx, cross=cross, segment=query_stream.segment)
        return self.norm(q)


class V1Decoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d = cfg.embed_dim
        self.mask_token = layers.param(0.02 * _normal(rngs, (d,)), ("embed",))
        self.blocks = layers.Stack(
            lambda r: _decoder_block(cfg, self_attention=True, rngs=r),
            cfg.decoder_depth, rngs=rngs, scan=cfg.scan_layers, remat=cfg.remat)
        self.context_block = _decoder_block(cfg, self_attention=True, rngs=rngs)
        self.norm = layers.make_norm(cfg.norm, d, cfg.norm_eps)

    def __call__(self, context, context_stream: TokenStream, query_stream: TokenStream,
                 num_segments: int | None = None):
        seg_q, seg_c = query_stream.segment, context_stream.segment
        q = jnp.broadcast_to(self.mask_token[...].astype(context.dtype),
                             seg_q.shape + self.mask_token.shape)
        q = constrain(q, layers.TOKENS)

        def segs(a, b):
            return Segments(a, b, num_segments=num_segments)

        enriched = self.context_block(context, attn=segs(seg_c, seg_c), context=q,
                                      cross=segs(seg_c, seg_q), segment=seg_c)
        q = self.blocks(q, attn=segs(seg_q, seg_q), context=enriched, cross=segs(seg_q, seg_c),
                        segment=seg_q)
        return self.norm(q)


def _normal(rngs, shape):
    return jax.random.normal(rngs.params(), shape)


def make_decoder(cfg: ModelConfig, *, rngs: nnx.Rngs):
    return CrossDecoder(cfg, rngs=rngs) if cfg.decoder == "cross" else V1Decoder(cfg, rngs=rngs)
