"""The public inference API: `load(path)` -> `InferenceModel`, `encode`, `encode_batch`.

    model = spacenit_jax.load("runs/nano")                    # workdir, step dir or export
    out = model.encode({"sentinel2_l2a": s2}, bands={"sentinel2_l2a": names}, patch_size=8)
    out["sentinel2_l2a"]                                       # (H/8, W/8, 1, D) float32

What `encode` does, in order: resolves sensor names (a misspelling gets the closest
name); reorders bands by name to the model's order; finds missing pixels (NaN, nodata,
Sentinel-1's -32768); runs the documented plausibility check (`prepare`); converts
Sentinel-1 linear power to dB if declared; normalises with the training pipeline's own
function and statistics; then, on the device, turns every patch with a missing pixel
into an ABSENT token (its pixels never reach the model) and runs the model's image-level
path (`eval.features.absent_visibility`, `model.models.view_from_images`, the encoder,
`eval.features.pool_tokens`), one jitted program per input shape
(`tracing.trace_count("encode")` counts them).

Outputs (float32, NaN where every token of a position is ABSENT):
  pooling="none"       {sensor: (Hp, Wp, D)} for space-only sensors, (Hp, Wp, T, D) for
                       space+time sensors: the mean over the sensor's spectral-group
                       tokens of each patch (and timestep);
  pooling="spatial"    (Hp, Wp, D): the mean over every sensor, group and timestep of a
                       patch position (what the scene rasters hold; all sensors must
                       share the patch grid);
  pooling="mean"       (D,): the mean of all present patch tokens (the evaluation
                       features' mean pooling);
  pooling="attention"  (D,): the model's trained attention-pooling head (models of kind
                       "spatiotemporal" only; other models have none).
`encode_batch` takes and returns a leading batch axis.

Grid rule (one rule at every patch size): H and W must be multiples of the patch size
(in the sensor's stored pixels), else ValueError; `edge="crop"` drops the last rows and
columns beyond a multiple, `edge="pad"` pads them with nodata (the partial patches then
come out ABSENT, NaN). A patch grid larger than the model's `max_grid` is refused with a
pointer to tiled inference (`embed_scene`, `python -m launch.embed`).

Normalisation: the model's `normalization` says what the checkpoint was trained with: a
pretraining workdir records `data.normalize` in its run config; a torch_bridge export
carries only the model config, and implies the pipeline default (normalisation on) with
the statistics packaged in `spacenit_jax/data/norm_stats` (the only ones the pipeline
uses). When training ran without normalisation, `encode` does not normalise either.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spacenit_jax import checkpoint, sensors, tracing
from spacenit_jax.data import normalize
from spacenit_jax.eval import features
from spacenit_jax.inference import prepare
from spacenit_jax.model import heads, models
from spacenit_jax.model.config import ModelConfig
from spacenit_jax.sensors import MISSING_VALUE, SensorKind
from spacenit_jax.tokenization import TokenState, check_divisible

log = logging.getLogger(__name__)

POOLINGS = ("none", "spatial", "mean", "attention")
EDGES = ("error", "crop", "pad")
TRACE_NAME = "encode"


@dataclasses.dataclass(frozen=True)
class Normalization:
    """What normalisation a model was trained with (and `encode` therefore applies)."""

    enabled: bool
    source: str  # where that came from
    strategies: dict  # sensor -> "computed" (mean +- 2 std) or "predefined" (min/max)

    def describe(self) -> str:
        if not self.enabled:
            return f"none ({self.source})"
        per = ", ".join(f"{k}: {v}" for k, v in self.strategies.items())
        return f"packaged statistics ({per}) ({self.source})"


def _normalization(cfg: ModelConfig, run_config: dict, kind: str) -> Normalization:
    data = run_config.get("data") if isinstance(run_config, dict) else None
    if isinstance(data, dict) and "normalize" in data:
        enabled = bool(data["normalize"])
        source = "run config data.normalize"
    else:
        enabled = True
        source = ("torch_bridge export: no data config is carried, the pipeline default "
                  "(normalise) is implied" if kind == "export"
                  else "no data config recorded: the pipeline default (normalise) is implied")
    strategies = {}
    for label in cfg.sensor_labels:
        try:
            strategies[label] = normalize.band_range(label)[2]
        except KeyError:
            strategies[label] = "none available"
    return Normalization(enabled, source, strategies)


@dataclasses.dataclass
class Encoded:
    """What `encode` returns. `embeddings` is a dict sensor -> array (pooling "none") or
    one array; `absent_tokens` / `tokens` count each sensor's ABSENT / all patch tokens
    (one per spectral group, patch and timestep); `missing_pixels` counts missing input
    pixels per sensor."""

    embeddings: dict | np.ndarray
    absent_tokens: dict[str, int]
    tokens: dict[str, int]
    missing_pixels: dict[str, int]
    patch_size: int
    pooling: str

    def __getitem__(self, label: str) -> np.ndarray:
        if not isinstance(self.embeddings, dict):
            raise TypeError(f"pooling {self.pooling!r} gives one array, not one per sensor; "
                            "use .embeddings")
        return self.embeddings[label]

    def keys(self):
        return self.embeddings.keys() if isinstance(self.embeddings, dict) else ()


# --------------------------------------------------------------------------- device side


def _mark_missing_patches(cfg: ModelConfig, images, patch_size: int):
    """Per sensor: (image with every pixel of a patch holding a missing pixel set to
    MISSING_VALUE, the same image with those pixels set to 0). The first finds ABSENT
    tokens; the second feeds the tokenizer, so no fill value leaks into neighbouring
    patches through the patch resize."""
    marked, filled = {}, {}
    for label, img in images.items():
        pix = cfg.layout.patch_pixels(label, patch_size)
        b, h, w = img.shape[:3]
        rest = img.shape[3:-1]  # (T,) or ()
        miss = jnp.any(img == MISSING_VALUE, axis=-1)  # (B, H, W, [T])
        cells = miss.reshape(b, h // pix, pix, w // pix, pix, *rest)
        patch = jnp.any(cells, axis=(2, 4))
        patch = jnp.repeat(jnp.repeat(patch, pix, axis=1), pix, axis=2)[..., None]
        marked[label] = jnp.where(patch, jnp.asarray(MISSING_VALUE, img.dtype), img)
        filled[label] = jnp.where(patch, jnp.zeros((), img.dtype), img)
    return marked, filled


def _group_means(x, present, slot, num_slots: int):
    """Mean over tokens x (B, n, D) sharing a static slot id (n,), counting only `present`
    (B, n); NaN where a slot has no present token. Returns (mean (B, S, D), count (B, S))."""
    seg = jnp.asarray(slot, jnp.int32)
    xs = jnp.where(present[..., None], x.astype(jnp.float32), 0.0)
    total = jax.ops.segment_sum(jnp.moveaxis(xs, 1, 0), seg, num_segments=num_slots)
    count = jax.ops.segment_sum(jnp.moveaxis(present.astype(jnp.float32), 1, 0), seg,
                                num_segments=num_slots)
    total, count = jnp.moveaxis(total, 0, 1), jnp.moveaxis(count, 0, 1)  # (B, S, D), (B, S)
    mean = jnp.where(count[..., None] > 0, total / jnp.maximum(count, 1.0)[..., None], jnp.nan)
    return mean, count


def encode_device(parts, images, months, opts: features.EncodeOptions):
    """The jitted body: images dict label -> (B, H, W, T, C) space+time or (B, H, W, C)
    space-only, normalised, MISSING_VALUE at missing pixels."""
    cfg, p = opts.cfg, opts.patch_size
    marked, filled = _mark_missing_patches(cfg, images, p)
    vis, ids, grids = features.absent_visibility(cfg, marked, p)
    view = models.view_from_images(cfg, filled, visibility=vis, patch_size=p, months=months,
                                   gsd=opts.gsd)
    x, stream = parts.encoder(view.patches, view.tokens, view.online)
    is_patch = ids.group >= 0
    absent = {}
    for label in grids:
        sel = np.flatnonzero(is_patch & (ids.sensor == cfg.layout.sensor_id(label)))
        absent[label] = jnp.sum(vis[:, sel] == TokenState.ABSENT, axis=1)
    if opts.pooling in ("mean", "attention"):
        pooled = features.pool_tokens(x, stream, opts.pooling, ids=ids, pool_head=parts.pool)
        has = jnp.any((stream.segment >= 0) & (stream.group >= 0), axis=1)
        return jnp.where(has[:, None], pooled.astype(jnp.float32), jnp.nan), absent
    tokens = features.pool_tokens(x, stream, "tokens", ids=ids)  # (B, N_patch, D), ABSENT -> 0
    pidx = np.flatnonzero(is_patch)
    present = vis[:, pidx] != TokenState.ABSENT
    if opts.pooling == "spatial":
        hp, wp = next(iter(grids.values()))
        slot = ids.row[pidx] * wp + ids.col[pidx]
        mean, count = _group_means(tokens, present, slot, hp * wp)
        return mean.reshape(mean.shape[0], hp, wp, -1), count.reshape(-1, hp, wp), absent
    out = {}
    for label, (hp, wp) in grids.items():
        sid = cfg.layout.sensor_id(label)
        own = np.flatnonzero(ids.sensor[pidx] == sid)
        t = max(int(ids.time[pidx][own].max()) + 1, 1)
        slot = (np.maximum(ids.time[pidx][own], 0) * hp + ids.row[pidx][own]) * wp \
            + ids.col[pidx][own]
        mean, _ = _group_means(tokens[:, own], present[:, own], slot, t * hp * wp)
        mean = mean.reshape(mean.shape[0], t, hp, wp, -1)
        if sensors.get(label).kind == SensorKind.SPACE_TIME:
            out[label] = jnp.moveaxis(mean, 1, 3)  # (B, Hp, Wp, T, D)
        else:
            out[label] = mean[:, 0]
    return out, absent


@partial(jax.jit, static_argnums=(0, 4))
@tracing.counted(TRACE_NAME)
def _encode_jit(graphdef, state, images, months, opts: features.EncodeOptions):
    return encode_device(nnx.merge(graphdef, state), images, months, opts)


# --------------------------------------------------------------------------- host side


class InferenceModel:
    """A loaded encoder ready for inference (see the module docstring).

    Attributes: cfg (ModelConfig), kind, step, source ("workdir" or "export"), path,
    run_config, normalization, sensor_labels, embed_dim, base_patch_size, max_grid.
    devices: None (the first device) or a list of devices to split batches over (when the
    batch divides evenly; parameters are replicated).
    """

    def __init__(self, loaded: checkpoint.LoadedModel, *, representation: str = "encoder",
                 path=None, devices=None):
        self.cfg = loaded.cfg
        self.kind = loaded.kind
        self.step = loaded.step
        self.source = loaded.source
        self.run_config = loaded.run_config
        self.path = path
        self.normalization = _normalization(self.cfg, self.run_config, loaded.source)
        pool = getattr(loaded.model, "pool", None)
        self.has_attention_pool = isinstance(pool, heads.PoolingHead)
        parts = features.build_parts(loaded.model, representation, "mean")
        parts.pool = pool if self.has_attention_pool else None
        self._graphdef, state = nnx.split(parts)
        devices = list(devices) if devices is not None else jax.devices()[:1]
        self._mesh = features.data_mesh(devices)
        self._state = features.place_state(state, self._mesh)

    # -- properties ------------------------------------------------------------------
    @property
    def sensor_labels(self) -> tuple[str, ...]:
        return self.cfg.sensor_labels

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def base_patch_size(self) -> int:
        return self.cfg.layout.base_patch_size

    @property
    def max_grid(self) -> int:
        return self.cfg.max_grid

    def __repr__(self) -> str:
        return (f"InferenceModel({self.kind}, {self.cfg.preset}, D={self.embed_dim}, "
                f"sensors={list(self.sensor_labels)}, step={self.step}, "
                f"normalisation: {self.normalization.describe()})")

    # -- input -----------------------------------------------------------------------
    def resolve_patch_size(self, patch_size: int | None) -> int:
        """The patch size to use: the model's base size when None; ValueError unless a
        positive integer."""
        if patch_size is None:
            return self.base_patch_size
        if isinstance(patch_size, bool) or int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
        return int(patch_size)

    def prepare(self, images: Mapping[str, np.ndarray], *, batched: bool = False,
                bands=None, normalized: bool = False, units=None, nodata=None,
                edge: str = "error", patch_size: int | None = None, check: bool = True):
        """Raw arrays -> (model input dict label -> (B, H, W, T, C) / (B, H, W, C) float32,
        missing pixel counts). See the module docstring for the rules and errors."""
        p = self.resolve_patch_size(patch_size)
        if edge not in EDGES:
            raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
        if not isinstance(images, Mapping) or not images:
            raise ValueError(f"images must be a non-empty dict sensor label -> array; the "
                             f"model takes {', '.join(self.sensor_labels)}")
        for opt, name in ((bands, "bands"), (units, "units"), (nodata, "nodata")):
            if isinstance(opt, Mapping):
                for label in opt:
                    if label not in images:
                        raise ValueError(f"{name} given for sensor {label!r}, which is not "
                                         f"among the images ({', '.join(images)})")
        if bands is not None and not isinstance(bands, Mapping) and len(images) > 1:
            raise ValueError("bands must be a dict sensor -> band names when several sensors "
                             "are given")
        if normalized and not self.normalization.enabled:
            raise ValueError("normalized=True, but this model was trained on raw values "
                             f"(normalisation: {self.normalization.describe()}): pass raw values")
        out, missing = {}, {}
        lead = 1 if batched else 0
        for label, x in images.items():
            label = prepare.resolve_sensor(label, self.sensor_labels)
            spec = sensors.get(label)
            x = np.asarray(x)
            b = "(B, " if batched else "("
            if x.ndim not in (3 + lead, 4 + lead):
                raise ValueError(f"sensor {label!r}: expected {b}H, W, T, C) or {b}H, W, C) "
                                 f"channel-last, got shape {x.shape}")
            if x.ndim == 3 + lead:
                x = x[..., None, :]  # one timestep
            if not batched:
                x = x[None]
            t = x.shape[3]
            if spec.kind == SensorKind.SPACE and t != 1:
                raise ValueError(f"sensor {label!r} has no time axis but the input has {t} "
                                 f"timesteps (shape {x.shape[1 - lead:]})")
            if t > self.cfg.max_timesteps:
                raise ValueError(f"sensor {label!r}: {t} timesteps, the model takes at most "
                                 f"{self.cfg.max_timesteps}")
            x = self._edge(label, x, p, edge, nodata)
            prep = prepare.prepare_sensor(
                label, x, bands=prepare.per_sensor(bands, label), normalized=normalized,
                apply_normalization=self.normalization.enabled and not normalized,
                units=prepare.per_sensor(units, label), check=check,
                nodata=prepare.per_sensor(nodata, label), what="input")
            arr = prep.array
            out[label] = arr if spec.kind == SensorKind.SPACE_TIME else arr[:, :, :, 0]
            missing[label] = prep.missing_pixels
        self._check_grid(out, p)
        return out, missing

    def _edge(self, label, x, p, edge, nodata):
        pix = self.cfg.layout.patch_pixels(label, p)
        h, w = x.shape[1:3]
        if h % pix == 0 and w % pix == 0 and h >= pix and w >= pix:
            return x
        if edge == "error":
            try:
                check_divisible(h, w, pix, f"sensor {label!r}")
            except ValueError as err:
                raise ValueError(f"{err}; or pass edge='crop' (drop the remainder) or "
                                 f"edge='pad' (pad with nodata)") from None
        if edge == "crop":
            hh, ww = h // pix * pix, w // pix * pix
            if hh == 0 or ww == 0:
                raise ValueError(f"sensor {label!r}: {h}x{w} is smaller than one patch ({pix})")
            return x[:, :hh, :ww]
        fill = prepare.per_sensor(nodata, label)
        fill = np.nan if fill is None else fill
        ph, pw = -h % pix, -w % pix
        if np.isnan(fill) and not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)  # NaN marks the padding as missing
        return np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0), (0, 0)), constant_values=fill)

    def _check_grid(self, images, p):
        grids = {}
        for label, x in images.items():
            pix = self.cfg.layout.patch_pixels(label, p)
            grids[label] = (x.shape[1] // pix, x.shape[2] // pix)
            if max(grids[label]) > self.max_grid:
                raise ValueError(
                    f"sensor {label!r}: patch grid {grids[label][0]}x{grids[label][1]} (image "
                    f"{x.shape[1]}x{x.shape[2]}, patch {p}) exceeds the model's max_grid "
                    f"{self.max_grid}; encode large scenes tile by tile with "
                    f"spacenit_jax.inference.embed_scene or python -m launch.embed")
        batch = {label: x.shape[0] for label, x in images.items()}
        if len(set(batch.values())) > 1:
            raise ValueError(f"sensor images have different batch sizes: {batch}")
        return grids

    def _months(self, months, images, batched):
        if months is None:
            return None
        m = np.asarray(months)
        if not np.issubdtype(m.dtype, np.integer) or m.size == 0 or m.min() < 0 or m.max() > 11:
            raise ValueError(f"months must be integer month indices 0..11 (January = 0), got "
                             f"{m.tolist() if m.size < 20 else m.shape}")
        t = max((x.shape[3] for x in images.values() if x.ndim == 5), default=1)
        b = next(iter(images.values())).shape[0]
        m = m.reshape(b, -1) if batched else m.reshape(1, -1)
        if m.shape[1] not in (1, t):
            raise ValueError(f"months has {m.shape[1]} entries per sample; the images have "
                             f"{t} timesteps (give one month per timestep, or one for all)")
        return m.astype(np.int32)

    # -- running -----------------------------------------------------------------------
    def _put(self, x):
        n = self._mesh.devices.size
        if n > 1 and x.shape[0] % n == 0:
            spec = jax.sharding.PartitionSpec(self._mesh.axis_names, *([None] * (x.ndim - 1)))
        else:
            spec = jax.sharding.PartitionSpec()
        return jax.device_put(x, jax.sharding.NamedSharding(self._mesh, spec))

    def run(self, prepared: Mapping[str, np.ndarray], *, patch_size: int | None = None,
            months=None, pooling: str = "none", gsd=None):
        """Dispatch the jitted encoder on prepared model input (see `prepare`); returns the
        device outputs without waiting for them (asynchronous dispatch)."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling == "attention" and not self.has_attention_pool:
            raise ValueError(f"pooling 'attention' needs a trained attention-pooling head; a "
                             f"{self.kind} model has none (only 'spatiotemporal' models do): "
                             f"use pooling='mean'")
        p = self.resolve_patch_size(patch_size)
        if pooling == "spatial":
            grids = self._check_grid(prepared, p)
            if len(set(grids.values())) > 1:
                raise ValueError(f"pooling 'spatial' needs one patch grid for every sensor, "
                                 f"got {grids}")
        opts = features.EncodeOptions(self.cfg, p, pooling, None if gsd is None else float(gsd))
        images = {k: self._put(v) for k, v in prepared.items()}
        m = None if months is None else self._put(np.asarray(months))
        return _encode_jit(self._graphdef, self._state, images, m, opts)

    def encode_batch(self, images: Mapping[str, np.ndarray], *, patch_size: int | None = None,
                     months=None, pooling: str = "none", bands=None, normalized: bool = False,
                     units=None, nodata=None, edge: str = "error", gsd=None) -> Encoded:
        """Like `encode` with a leading batch axis on every image (and on months, (B, T))."""
        return self._encode(images, True, patch_size, months, pooling, bands, normalized,
                            units, nodata, edge, gsd)

    def encode(self, images: Mapping[str, np.ndarray], *, patch_size: int | None = None,
               months=None, pooling: str = "none", bands=None, normalized: bool = False,
               units=None, nodata=None, edge: str = "error", gsd=None) -> Encoded:
        """Embeddings of one image set (see the module docstring).

        images: {sensor label: (H, W, C) or (H, W, T, C)} raw values in physical units:
          Sentinel-2 reflectance x 10,000, Sentinel-1 backscatter in dB (or linear power with
          units={"sentinel1": "linear"}), SRTM elevation in metres, land-cover class codes.
        patch_size: pixels per patch side (default: the model's base patch size).
        months: month index 0..11 of each timestep (or one for all); None: no month signal.
        bands: {sensor: band names of the last axis} (default: the model's band order).
        normalized: True if the values are already normalised with the model's statistics.
        nodata: a value (or {sensor: value}) marking missing pixels besides NaN.
        edge: "error" | "crop" | "pad" for images that are not whole patches.
        gsd: metres per pixel for every sensor (None: each sensor's own).
        """
        return self._encode(images, False, patch_size, months, pooling, bands, normalized,
                            units, nodata, edge, gsd)

    def _encode(self, images, batched, patch_size, months, pooling, bands, normalized,
                units, nodata, edge, gsd) -> Encoded:
        p = self.resolve_patch_size(patch_size)
        prepared, missing = self.prepare(images, batched=batched, bands=bands,
                                         normalized=normalized, units=units, nodata=nodata,
                                         edge=edge, patch_size=p)
        m = self._months(months, prepared, batched)
        out = jax.device_get(self.run(prepared, patch_size=p, months=m, pooling=pooling,
                                      gsd=gsd))
        emb, absent = out[0], out[-1]
        tokens = {}
        for label, x in prepared.items():
            pix = self.cfg.layout.patch_pixels(label, p)
            t = x.shape[3] if x.ndim == 5 else 1
            tokens[label] = (x.shape[0] * t * len(self.cfg.layout.sensor_groups(label))
                             * (x.shape[1] // pix) * (x.shape[2] // pix))
        absent = {k: int(np.sum(v)) for k, v in absent.items()}
        if isinstance(emb, dict):
            emb = {k: np.asarray(v) if batched else np.asarray(v)[0] for k, v in emb.items()}
        else:
            emb = np.asarray(emb) if batched else np.asarray(emb)[0]
        return Encoded(emb, absent, tokens, missing, p, pooling)


def load(path, *, step: int | None = None, representation: str = "encoder",
         devices=None) -> InferenceModel:
    """The model at `path` ready for inference: a pretraining workdir (latest step unless
    `step`), its `checkpoints/` folder, one `checkpoints/<step>/` folder, or a torch_bridge
    export (safetensors or the original's weights.pth); anything else raises
    FileNotFoundError naming what was expected. representation: "encoder" (the online
    encoder) or "target_encoder" (the EMA target, where the model has one)."""
    loaded = checkpoint.load_model(path, step=step)
    if representation not in ("encoder", "target_encoder"):
        raise ValueError(f"representation must be 'encoder' or 'target_encoder' for "
                         f"inference, got {representation!r}")
    return InferenceModel(loaded, representation=representation, path=path, devices=devices)


def patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Patches covering an image (the last partial ones included)."""
    return math.ceil(height / patch_size), math.ceil(width / patch_size)
