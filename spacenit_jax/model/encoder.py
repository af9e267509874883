"""Tokenizer and encoder, with the token-level and image-level entry points.

The token level (`Encoder.__call__`) takes a batch.PackedView-style (patches, TokenStream)
and is what pretraining uses: several samples share a row, attention stays inside a
segment. The image level (`Encoder.encode_images`) cuts images into the same structure
on the device (`image_tokens`, one sample per row, the original's token order) and then
runs the identical token-level code, so the two entry points agree by construction.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spacenit_jax import sensors
from spacenit_jax.batch import SubStream, TokenStream, embed_table_offsets
from spacenit_jax.model import layers, positions
from spacenit_jax.model.attention import Segments
from spacenit_jax.model.config import ModelConfig
from spacenit_jax.sharding import constrain
from spacenit_jax.tokenization import month_sincos, sample_tokens, sensor_patches


class Tokenizer(nnx.Module):
    """Per-group patch embeddings, sensor embeddings and one type token per sensor."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d = cfg.embed_dim
        self.layout = cfg.layout
        self.patch_embeds = nnx.Dict({
            g.key: layers.Dense(cfg.layout.patch_dim(g), d, bias=True, rngs=rngs,
                                axes=("patch", "embed"))
            for g in cfg.layout.groups})
        self.sensor_embed = layers.Embed(len(cfg.sensor_labels), d, rngs=rngs)
        self.type_tokens = nnx.Dict({
            label: layers.param(0.02 * jax.random.normal(rngs.params(), (d,)), ("embed",))
            for label in cfg.sensor_labels})

    def __call__(self, patches: Mapping[str, jax.Array], stream: TokenStream):
        caps = {k: v.shape[1] for k, v in patches.items()}
        unknown = sorted(set(caps) - {g.key for g in self.layout.groups})
        if unknown:
            raise KeyError(f"patches for unknown token groups {unknown}")
        offsets, _ = embed_table_offsets(self.layout, caps)
        table = [self.patch_embeds[g.key](patches[g.key]) for g in self.layout.groups
                 if g.key in offsets]
        types = jnp.stack([self.type_tokens[label][...] for label in self.layout.sensor_labels])
        r = stream.embed_index.shape[0]
        table.append(jnp.broadcast_to(types.astype(table[0].dtype if table else types.dtype),
                                      (r, *types.shape)))
        table = jnp.concatenate(table, axis=1)
        x = jnp.take_along_axis(table, stream.embed_index[..., None], axis=1)
        sensor = self.sensor_embed(stream.sensor).astype(x.dtype)
        return x + jnp.where((stream.group >= 0)[..., None], sensor, jnp.zeros((), x.dtype))


class Encoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.tokenizer = Tokenizer(cfg, rngs=rngs)
        self.month_embed = layers.Dense(2, cfg.embed_dim, bias=False, rngs=rngs,
                                        axes=(None, "embed"))

        def block(r):
            return layers.Block(
                cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, ffn=cfg.ffn,
                hidden=cfg.ffn_hidden(cfg.ffn_expansion), norm=cfg.norm, eps=cfg.norm_eps,
                prenorm=cfg.prenorm, bias=cfg.bias, rngs=r, dtype=cfg.dtype,
                impl=cfg.attention_impl)

        self.blocks = layers.Stack(block, cfg.depth, rngs=rngs, scan=cfg.scan_layers,
                                   remat=cfg.remat)
        self.norm = layers.make_norm(cfg.norm, cfg.embed_dim, cfg.norm_eps)

    def embed(self, patches, stream: TokenStream):
        x = self.tokenizer(patches, stream)
        return x + self.month_embed(stream.month).astype(x.dtype)

    def __call__(self, patches, stream: TokenStream, sub: SubStream | None = None, *,
                 deterministic: bool = True, rng=None, num_segments: int | None = None):
        """Encode the tokens of `stream` (or of its sub-stream `sub`).

        num_segments: a bound on the samples per row (the packed batch's slot count),
        which lets the cuDNN kernel treat each sample as its own sequence.
        Returns (encoded (R, L', D), the TokenStream of the encoded tokens).
        """
        if sub is not None:
            stream = stream.select(sub, jnp)
        x = constrain(self.embed(patches, stream), layers.TOKENS)
        rot = positions.rope(stream.row, stream.col, stream.time, stream.pos_scale,
                             self.cfg.head_dim, self.cfg.rope_theta)
        seg = Segments(stream.segment, stream.segment, num_segments=num_segments)
        x = self.blocks(x, attn=seg, rope=rot, segment=stream.segment,
                        drop_rate=0.0 if deterministic else self.cfg.drop_path,
                        rng=None if deterministic else rng)
        return constrain(self.norm(x), layers.TOKENS), stream

    def encode_images(self, images, *, patch_size: int | None = None, months=None, gsd=None,
                      deterministic: bool = True, rng=None):
        """Image-level entry point: dict label -> (B,H,W,T,C) or (B,H,W,C), channel last.

        Returns (tokens (B, N, D) in the original's token order, their TokenStream).
        """
        patches, stream = image_tokens(self.cfg, images, patch_size=patch_size,
                                       months=months, gsd=gsd)
        return self(patches, stream, deterministic=deterministic, rng=rng, num_segments=1)


def image_tokens(cfg: ModelConfig, images: Mapping[str, jax.Array], *,
                 patch_size: int | None = None, months=None, gsd=None, xp=jnp):
    """Cut per-sensor images into (patches, TokenStream) with one sample per row.

    gsd: None (each sensor's default), a float for every sensor (the original's single
    scalar), or a dict label -> metres per input pixel (design card's per-sensor scale).
    """
    layout = cfg.layout
    p = layout.base_patch_size if patch_size is None else int(patch_size)
    if not images:
        raise ValueError(f"no sensor images given; configured sensors: {list(layout.sensor_labels)}")
    for label in images:
        sensors.get(label)  # unknown labels: error listing the known ones
        if label not in layout.sensor_labels:
            raise KeyError(f"sensor {label!r} is not configured for this model; "
                           f"configured: {list(layout.sensor_labels)}")
    batch_sizes = {label: img.shape[0] for label, img in images.items()}
    if len(set(batch_sizes.values())) > 1:
        raise ValueError(f"sensor images have different batch sizes: {batch_sizes}")
    b = next(iter(batch_sizes.values()))
    patches, grids = {}, {}
    for label in layout.sensor_labels:
        if label not in images:
            continue
        img = images[label]
        spec = sensors.get(label)
        if img.ndim == 5:
            temporal = True
        elif img.ndim == 4:
            temporal, img = False, img[:, :, :, None, :]
        else:
            raise ValueError(
                f"sensor {label!r}: expected (B,H,W,T,{spec.num_channels}) or "
                f"(B,H,W,{spec.num_channels}) channel-last, got shape {tuple(img.shape)}")
        if img.shape[3] > cfg.max_timesteps:
            raise ValueError(f"sensor {label!r}: {img.shape[3]} timesteps, at most "
                             f"{cfg.max_timesteps} are supported (shape {tuple(img.shape)})")
        pts, grid = sensor_patches(layout, label, img, p, temporal, xp=xp)
        if max(grid.hp, grid.wp) > cfg.max_grid:
            raise ValueError(f"sensor {label!r}: patch grid {grid.hp}x{grid.wp} exceeds "
                             f"max_grid {cfg.max_grid} (image {tuple(img.shape)}, patch {p})")
        patches.update(pts)
        grids[label] = grid
    ids = sample_tokens(layout, grids)
    offsets, type_offset = embed_table_offsets(layout, {k: v.shape[1] for k, v in patches.items()})
    group_offset = np.asarray([offsets.get(g.key, 0) for g in layout.groups], np.int32)
    embed_index = np.where(ids.group >= 0, group_offset[np.maximum(ids.group, 0)] + ids.patch,
                           type_offset + ids.sensor).astype(np.int32)
    scales = np.asarray([_scale(layout, label, p, gsd) for label in layout.sensor_labels],
                        np.float32)
    n = ids.sensor.shape[0]

    def rows(a):
        return xp.broadcast_to(xp.asarray(a), (b, n))

    month = month_sincos(months, ids.time, xp=xp)
    month = xp.broadcast_to(month, (b, n, 2)).astype(xp.float32)
    stream = TokenStream(
        embed_index=rows(embed_index), sensor=rows(ids.sensor), group=rows(ids.group),
        row=rows(ids.row), col=rows(ids.col), time=rows(ids.time), month=month,
        pos_scale=rows(scales[ids.sensor]), segment=rows(np.zeros(n, np.int32)))
    return patches, stream


def _scale(layout, label, patch_size, gsd):
    if isinstance(gsd, Mapping):
        gsd = gsd.get(label)
    return layout.pos_scale(label, patch_size, gsd)
