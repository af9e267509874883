"""Composite pretraining models: LatentPredictor, AutoEncoder, DualBranch, SpatioTemporal.

All take a batch.PackedView (several samples per row, three aligned token streams) and
handle any number of visible / predicted / absent tokens per sample through segment
masks, never by assuming equal counts. `view_from_images` builds a PackedView from
per-sensor images and a visibility mask in the original's token order (one sample per
row), which is how the reference behaviour is reproduced and tested.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spacenit_jax.batch import PackedView, SubStream, TokenStream, embed_table_offsets
from spacenit_jax.model import heads, layers
from spacenit_jax.model.attention import Segments
from spacenit_jax.model.config import ModelConfig
from spacenit_jax.model.decoder import make_decoder
from spacenit_jax.model.encoder import Encoder, image_tokens
from spacenit_jax.tokenization import TokenState

VISIBLE, TARGET_ONLY, PREDICTED, ABSENT = TokenState  # short names for the module

# (online module, EMA target module) pairs of the models that have an EMA target.
EMA_PAIRS = (("encoder", "target_encoder"), ("online_proj", "target_proj"))


def ema_momentum(cfg: ModelConfig, step):
    """The original's EMA momentum schedule: m = m0 + (m1 - m0) * min(step / max(warmup, 1), 1)."""
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / max(cfg.ema_warmup_steps, 1), 1.0)
    return cfg.ema_momentum + (cfg.ema_momentum_end - cfg.ema_momentum) * progress


def pools_type_tokens(cfg: ModelConfig) -> bool:
    """The v1 original pools over all tokens, the latest over patch tokens only."""
    return cfg.preset == "reference_v1"


def _pool(cfg, x, stream: TokenStream, num_slots: int):
    include = stream.segment >= 0
    if not pools_type_tokens(cfg):
        include = include & (stream.group >= 0)
    return heads.segment_mean(x, stream.segment, include, num_slots)


def _encode_both(model, view: PackedView, deterministic, rng, target_deterministic):
    """Online encoder on the VISIBLE stream, EMA target (no gradient) on every token.

    Returns (online outputs, their TokenStream, target outputs at the decoder's queries,
    the queries' TokenStream).
    """
    k_online, k_target = _split(rng, 2)
    slots = view.sample_valid.shape[1]
    online, online_stream = model.encoder(view.patches, view.tokens, view.online,
                                          deterministic=deterministic, rng=k_online,
                                          num_segments=slots)
    target, _ = model.target_encoder(view.patches, view.tokens,
                                     deterministic=target_deterministic, rng=k_target,
                                     num_segments=slots)
    targets = jnp.take_along_axis(jax.lax.stop_gradient(target), view.decoder.src[..., None],
                                  axis=1)
    return online, online_stream, targets, view.tokens.select(view.decoder, jnp)


class LatentPredictor(nnx.Module):
    """Online encoder, EMA target encoder (a copy at init), decoder, projection heads."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.target_encoder = nnx.clone(self.encoder)
        self.decoder = make_decoder(cfg, rngs=rngs)
        d = cfg.embed_dim
        self.online_proj = heads.ProjectionHead(d, cfg.projection_dim, rngs=rngs)
        self.target_proj = heads.ProjectionHead(d, cfg.projection_dim, rngs=rngs)

    def __call__(self, view: PackedView, *, deterministic: bool = True, rng=None,
                 target_deterministic: bool = True):
        num_slots = view.sample_valid.shape[1]
        online, online_stream, targets, query_stream = _encode_both(
            self, view, deterministic, rng, target_deterministic)
        predictions = self.decoder(online, online_stream, query_stream, num_slots)
        pooled, count = _pool(self.cfg, online, online_stream, num_slots)
        return {
            "predictions": predictions,
            "targets": targets,
            "decoder_segment": view.decoder.segment,
            "online_proj": self.online_proj(predictions),
            "target_proj": jax.lax.stop_gradient(self.target_proj(targets)),
            "encoder_pooled": pooled,
            "pooled_count": count,
        }

    def contrastive(self, view: PackedView, *, deterministic: bool = True, rng=None,
                    target_deterministic: bool = True):
        """The v1 recipe: online and target encoders on the same view, pooled + projected."""
        k_online, k_target = _split(rng, 2)
        num_slots = view.sample_valid.shape[1]
        online, online_stream = self.encoder(view.patches, view.tokens, view.online,
                                             deterministic=deterministic, rng=k_online,
                                             num_segments=num_slots)
        target, target_stream = self.target_encoder(view.patches, view.tokens,
                                                    deterministic=target_deterministic,
                                                    rng=k_target, num_segments=num_slots)
        online_pooled, count = _pool(self.cfg, online, online_stream, num_slots)
        target_pooled, _ = _pool(self.cfg, jax.lax.stop_gradient(target), target_stream,
                                 num_slots)
        return {
            "online_proj": self.online_proj(online_pooled),
            "target_proj": jax.lax.stop_gradient(self.target_proj(target_pooled)),
            "encoder_pooled": online_pooled,
            "pooled_count": count,
        }


class AutoEncoder(nnx.Module):
    """Encoder on visible tokens, decoder on predicted tokens, pixel head per token."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = make_decoder(cfg, rngs=rngs)
        self.pixel_head = heads.PixelHead(cfg.embed_dim, cfg.pixel_channels,
                                          cfg.layout.base_patch_size, rngs=rngs)

    def __call__(self, view: PackedView, *, deterministic: bool = True, rng=None):
        slots = view.sample_valid.shape[1]
        online, online_stream = self.encoder(view.patches, view.tokens, view.online,
                                             deterministic=deterministic, rng=rng,
                                             num_segments=slots)
        query_stream = view.tokens.select(view.decoder, jnp)
        decoded = self.decoder(online, online_stream, query_stream, slots)
        pixels, pixel_mask = token_pixels(self.cfg, view, query_stream,
                                          self.pixel_head.proj.kernel.shape[1])
        return {"reconstructed": self.pixel_head(decoded), "pixels": pixels,
                "pixel_mask": pixel_mask, "decoder_segment": view.decoder.segment,
                "encoded": online}


class DualBranch(nnx.Module):
    """Shared online encoder; latent branch against an EMA target and a pixel branch."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.target_encoder = nnx.clone(self.encoder)
        self.latent_decoder = make_decoder(cfg, rngs=rngs)
        self.pixel_decoder = make_decoder(cfg, rngs=rngs)
        self.pixel_head = heads.PixelHead(cfg.embed_dim, cfg.pixel_channels,
                                          cfg.layout.base_patch_size, rngs=rngs)
        d = cfg.embed_dim
        self.online_proj = heads.ProjectionHead(d, cfg.projection_dim, rngs=rngs)
        self.target_proj = heads.ProjectionHead(d, cfg.projection_dim, rngs=rngs)

    def __call__(self, view: PackedView, *, deterministic: bool = True, rng=None,
                 target_deterministic: bool = True):
        num_slots = view.sample_valid.shape[1]
        online, online_stream, targets, query_stream = _encode_both(
            self, view, deterministic, rng, target_deterministic)
        latent = self.latent_decoder(online, online_stream, query_stream, num_slots)
        decoded = self.pixel_decoder(online, online_stream, query_stream, num_slots)
        pixels, pixel_mask = token_pixels(self.cfg, view, query_stream,
                                          self.pixel_head.proj.kernel.shape[1])
        pooled, count = _pool(self.cfg, online, online_stream, num_slots)
        return {
            "latent_predictions": latent, "targets": targets,
            "decoder_segment": view.decoder.segment,
            "online_proj": self.online_proj(latent),
            "target_proj": jax.lax.stop_gradient(self.target_proj(targets)),
            "reconstructed": self.pixel_head(decoded), "pixels": pixels,
            "pixel_mask": pixel_mask, "encoder_pooled": pooled, "pooled_count": count,
            "encoded": online,
        }


class AxialBlock(nnx.Module):
    """Attention along rows, columns and time: three encoder-shaped blocks."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        def block():
            return layers.Block(
                cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, ffn=cfg.ffn,
                hidden=cfg.ffn_hidden(cfg.ffn_expansion), norm=cfg.norm, eps=cfg.norm_eps,
                prenorm=cfg.prenorm, bias=cfg.bias, rngs=rngs, dtype=cfg.dtype,
                impl=cfg.attention_impl)

        self.h_block, self.w_block, self.t_block = block(), block(), block()


class SpatioTemporalEncoder(nnx.Module):
    """Encoder, then axial attention along rows, columns and time, then attention pooling.

    The axes come from each token's ids (same sample, sensor, group and the other two
    coordinates), not from a reshape, so any token order, several sensors, several
    spectral groups and T > 1 are handled (the original reshapes the tokens to
    (H, W, T), which matches its (T, group, H, W) token order only for one single-group
    sensor with T = 1). Type tokens skip the axial layers and are pooled with the rest,
    as in the original.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.axial_layers = nnx.List([AxialBlock(cfg, rngs=rngs) for _ in range(cfg.axial_depth)])
        self.norm = layers.RMSNorm(cfg.embed_dim, 1e-6)
        self.pool = heads.PoolingHead(cfg.embed_dim, cfg.pooling_heads, rngs=rngs)
        self.proj = heads.ProjectionHead(cfg.embed_dim, cfg.projection_dim, rngs=rngs)

    def __call__(self, view: PackedView, *, deterministic: bool = True, rng=None):
        num_slots = view.sample_valid.shape[1]
        x, s = self.encoder(view.patches, view.tokens, view.online,
                            deterministic=deterministic, rng=rng, num_segments=num_slots)
        is_patch = s.group >= 0
        base = s.sensor[:, :, None] == s.sensor[:, None, :]
        base = base & (s.group[:, :, None] == s.group[:, None, :]) & is_patch[:, :, None]

        def same(*fields):
            m = base
            for f in fields:
                m = m & (f[:, :, None] == f[:, None, :])
            return m

        segs = [Segments(s.segment, s.segment, same(*axes)) for axes in
                ((s.col, s.time), (s.row, s.time), (s.row, s.col))]
        for axial in self.axial_layers:
            for blk, seg in zip((axial.h_block, axial.w_block, axial.t_block), segs,
                                strict=True):
                x = jnp.where(is_patch[..., None], blk(x, attn=seg, segment=s.segment), x)
        x = self.norm(x)
        pooled = self.pool(x, s.segment, num_slots)
        return {"encoded": x, "pooled": pooled, "projected": self.proj(pooled)}


MODELS = {
    "latent_predictor": LatentPredictor,
    "autoencoder": AutoEncoder,
    "dual_branch": DualBranch,
    "spatiotemporal": SpatioTemporalEncoder,
    "encoder": Encoder,
}


def build_model(cfg: ModelConfig, kind: str = "latent_predictor", *, seed: int = 0):
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {list(MODELS)}")
    return MODELS[kind](cfg, rngs=nnx.Rngs(params=seed))


def token_pixels(cfg: ModelConfig, view: PackedView, stream: TokenStream, width: int):
    """Each token's own patch vector (its group's channels at P0), zero padded to width."""
    caps = {k: v.shape[1] for k, v in view.patches.items()}
    offsets, _ = embed_table_offsets(cfg.layout, caps)
    out = jnp.zeros(stream.group.shape + (width,), jnp.float32)
    mask = jnp.zeros(stream.group.shape + (width,), bool)
    for grp in cfg.layout.groups:
        if grp.key not in offsets:
            continue
        buf = view.patches[grp.key]
        idx = jnp.clip(stream.embed_index - offsets[grp.key], 0, buf.shape[1] - 1)
        vals = jnp.take_along_axis(buf, idx[..., None], axis=1).astype(jnp.float32)
        k = buf.shape[-1]
        if k > width:
            raise ValueError(f"group {grp.key!r} has {k} values per patch but the pixel head "
                             f"predicts {width}; raise out_channels")
        sel = (stream.group == grp.index) & (stream.segment >= 0)
        vals = jnp.pad(vals, ((0, 0), (0, 0), (0, width - k)))
        out = jnp.where(sel[..., None], vals, out)
        mask = mask | (sel[..., None] & (jnp.arange(width) < k))
    return out, mask


def view_from_images(cfg: ModelConfig, images, *, visibility=None, patch_size=None,
                     months=None, gsd=None, target_sees_all: bool = False) -> PackedView:
    """A one-sample-per-row PackedView in the original's token order.

    visibility (B, N) holds 0 visible, 1 target-only, 2 predicted, 3 absent for every
    token including type tokens (None: everything visible, nothing predicted). Tokens
    outside a stream are padding (segment -1) rather than removed, so outputs stay
    aligned with the original's token positions. target_sees_all: the target encoder
    also sees ABSENT tokens (the v1 original, which has no ABSENT state).
    """
    patches, stream = image_tokens(cfg, images, patch_size=patch_size, months=months, gsd=gsd)
    b, n = stream.sensor.shape
    vis = (jnp.zeros((b, n), jnp.int32) if visibility is None
           else jnp.asarray(visibility, jnp.int32))
    if vis.shape != (b, n):
        raise ValueError(f"visibility mask has shape {vis.shape}, the input makes {(b, n)} tokens")
    src = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))

    def seg(keep):
        return jnp.where(keep, 0, -1).astype(jnp.int32)

    tokens = stream._replace(segment=seg(vis != ABSENT) if not target_sees_all
                             else jnp.zeros((b, n), jnp.int32))
    return PackedView(
        patches=patches, tokens=tokens,
        online=SubStream(src, seg(vis == VISIBLE)),
        decoder=SubStream(src, seg(vis == PREDICTED)),
        sample_valid=jnp.ones((b, 1), bool))


def gather_positions(x, mask, count: int):
    """Rows of x (B, N, D) where mask (B, N) is true, assuming `count` per sample."""
    idx = np.stack([np.flatnonzero(np.asarray(m)) for m in mask])
    if idx.shape[1] != count:
        raise ValueError(f"expected {count} positions per sample, got {idx.shape[1]}")
    return jnp.take_along_axis(x, jnp.asarray(idx)[..., None], axis=1)


def _split(rng, n):
    return (None,) * n if rng is None else tuple(jax.random.split(rng, n))
