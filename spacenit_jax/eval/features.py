"""Features of a (pretrained) model for kNN, linear probes and fine-tuning.

What is extracted, by `FeatureConfig`:

- representation: "encoder" (default; the online encoder, or the model itself when it is a
  bare Encoder), "target_encoder" (the EMA target), "projection" (the reference's
  contrastive-mode features: target_proj of the pooled target-encoder tokens, falling back to
  online_proj of the pooled online tokens when the model has no target) or
  "online_projection" (online_proj of the pooled online tokens). The reference's aliases
  "backbone", "ema" and "proj" are accepted.
- pooling: "mean" (default) or "max" over patch tokens, "attention" (a PoolingHead: the
  model's own `pool` when it has one, otherwise a freshly initialised head, which is
  *untrained* and only meaningful after fine-tuning), "tokens" (the raw patch tokens
  (B, N_patch, D) in the encoder's order, ABSENT ones zeroed) or "spatial" (one feature per
  patch position (B, Hp*Wp, D), the mean over that position's groups, timesteps and sensors:
  the input of the segmentation probe). Sensor-type tokens are never pooled, whatever the
  preset (the reference's eval adapter excludes them), and neither are ABSENT tokens.
- ABSENT tokens (every underlying pixel = -99999, the missing-data fill; a patch with any
  real pixel is present) are found on the device from the
  images and marked ABSENT in the view's visibility mask, so the encoder does not see them;
  a sensor whose tokens are all ABSENT also loses its type token.
- patch_size (default 4, the task default), months (off by default: the reference's eval
  passes no month indices), gsd (None: each sensor's default).

How it runs: the batch is split over a 1-D mesh of all devices (or the mesh the parameters
are sharded on, e.g. the training mesh) when the batch size divides by the device count,
otherwise it runs on the first device; parameters are replicated, except arrays already laid
out over the mesh's devices, which are left where they are. The forward is one
module-level `jax.jit` with the model's graph definition as a static argument, so one program
is compiled per (model structure, input shape, options) and reused by every extractor, every
split and every in-loop evaluation of a run. The last batch is padded to the batch size by
repeating its last sample and the padding is dropped, so a split needs one shape only.
`tracing.trace_count("extract")` counts its traces. `extract` shows a progress bar
(batches/s, ETA; advanced as batches finish on the device, without waiting for them) and
checks the features it returns: a non-finite row raises validation.EvalInputError naming the
split and the sample indices (and which of them had non-finite pixels).

Single process only: with several JAX processes the outputs are gathered with
`multihost_utils.process_allgather`, but every process must feed the same batches.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from spacenit_jax import sensors, tracing
from spacenit_jax.eval import progress as progress_lib
from spacenit_jax.eval import validation
from spacenit_jax.model import heads, models
from spacenit_jax.model.config import ModelConfig
from spacenit_jax.tokenization import SensorGrid, sample_tokens

log = logging.getLogger(__name__)

REPRESENTATIONS = ("encoder", "target_encoder", "projection", "online_projection")
_REPRESENTATION_ALIASES = {"backbone": "encoder", "ema": "target_encoder", "proj": "projection"}
POOLINGS = ("mean", "max", "attention", "tokens", "spatial")
POOLED = ("mean", "max", "attention")  # poolings that give one vector per sample

def canonical_representation(name: str) -> str:
    key = _REPRESENTATION_ALIASES.get(name, name)
    if key not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {name!r}; expected one of {REPRESENTATIONS} "
                         f"(or an alias {sorted(_REPRESENTATION_ALIASES)})")
    return key


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """What to extract (see the module docstring)."""

    representation: str = "encoder"
    pooling: str = "mean"
    patch_size: int = 4
    batch_size: int = 128
    use_months: bool = False  # True: month index of each sample's timestamps (off in the reference)
    gsd: float | None = None  # metres per pixel for every sensor; None = each sensor's own
    pool_seed: int = 0  # init of a fresh (untrained) attention-pooling head

    def __post_init__(self):
        object.__setattr__(self, "representation", canonical_representation(self.representation))
        if self.pooling not in POOLINGS:
            raise ValueError(f"FeatureConfig.pooling must be one of {POOLINGS}, got "
                             f"{self.pooling!r}")
        if self.patch_size < 1 or self.batch_size < 1:
            raise ValueError(f"FeatureConfig: patch_size and batch_size must be >= 1, got "
                             f"{self.patch_size} and {self.batch_size}")


# --------------------------------------------------------------------------- pure pieces


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
    """Static (hashable) settings of the jitted forward."""

    cfg: ModelConfig
    patch_size: int
    pooling: str
    gsd: float | None = None


def _as_temporal(img):
    return img if img.ndim == 5 else img[:, :, :, None, :]


def absent_visibility(cfg: ModelConfig, images: Mapping[str, jax.Array], patch_size: int):
    """(visibility (B, N) int32 with ABSENT where every pixel of a patch is -99999, else
    VISIBLE, in the encoder's token order; the token ids; {label: (Hp, Wp)}).

    Uses the same ids as `image_tokens` (`sample_tokens` over the same grids), so the mask
    lines up with the tokens by construction.
    """
    layout = cfg.layout
    grids, absent = {}, {}
    for label in layout.sensor_labels:
        if label not in images:
            continue
        temporal = images[label].ndim == 5
        img = _as_temporal(images[label])
        b, h, w, t, c = img.shape
        pix = layout.patch_pixels(label, patch_size)
        hp, wp = h // pix, w // pix
        cells = img[:, : hp * pix, : wp * pix].reshape(b, hp, pix, wp, pix, t, c)
        flags = jnp.all(cells == sensors.MISSING_VALUE, axis=(2, 4, 6))  # (B, Hp, Wp, T)
        absent[label] = jnp.transpose(flags, (0, 3, 1, 2)).reshape(b, t * hp * wp)
        grids[label] = SensorGrid(hp, wp, t, temporal)
    unknown = sorted(set(images) - set(grids))
    if unknown or not grids:
        raise KeyError(f"sensor images {unknown or list(images)} are not configured for this "
                       f"model; configured: {list(layout.sensor_labels)}")
    ids = sample_tokens(layout, grids)
    b = next(iter(absent.values())).shape[0]
    vis = jnp.full((b, ids.sensor.shape[0]), models.VISIBLE, jnp.int32)
    for label, flags in absent.items():
        sid = layout.sensor_id(label)
        patch_idx = np.flatnonzero((ids.sensor == sid) & (ids.group >= 0))
        type_idx = np.flatnonzero((ids.sensor == sid) & (ids.group < 0))
        state = jnp.where(flags[:, ids.patch[patch_idx]], models.ABSENT, models.VISIBLE)
        vis = vis.at[:, patch_idx].set(state)
        whole = jnp.where(jnp.all(flags, axis=1), models.ABSENT, models.VISIBLE)
        vis = vis.at[:, type_idx].set(whole[:, None])
    return vis, ids, {k: (g.hp, g.wp) for k, g in grids.items()}


def pool_tokens(x, stream, pooling: str, *, ids=None, grids=None, pool_head=None):
    """Pool encoder outputs x (B, N, D) over present patch tokens (see module docstring)."""
    patch = (stream.segment >= 0) & (stream.group >= 0)
    if pooling == "mean":
        return heads.segment_mean(x, stream.segment, patch, 1)[0][:, 0]
    if pooling == "max":
        masked = jnp.where(patch[..., None], x, jnp.asarray(-jnp.inf, x.dtype))
        return jnp.where(jnp.any(patch, axis=1)[:, None], jnp.max(masked, axis=1),
                         jnp.zeros((), x.dtype))
    if pooling == "attention":
        if pool_head is None:
            raise ValueError("attention pooling needs a PoolingHead")
        return pool_head(x, stream.segment, 1, include=patch)[:, 0]
    if pooling == "tokens":
        idx = np.flatnonzero(ids.group >= 0)
        return jnp.where(patch[:, idx, None], x[:, idx], jnp.zeros((), x.dtype))
    if pooling == "spatial":
        shapes = set(grids.values())
        if len(shapes) != 1:
            raise ValueError(f"spatial pooling needs one patch grid for every sensor, got {grids}")
        hp, wp = shapes.pop()
        slot = jnp.where(patch, stream.row * wp + stream.col, -1)
        return heads.segment_mean(x, slot, patch, hp * wp)[0]
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


class FeatureParts(nnx.Module):
    """The modules a representation needs: an encoder, optional projection and pooling head."""

    def __init__(self, encoder, proj=None, pool=None):
        self.encoder, self.proj, self.pool = encoder, proj, pool


def encode_and_pool(parts: FeatureParts, images, months, opts: EncodeOptions, *,
                    deterministic: bool = True, rng=None):
    """Encode images (dict label -> (B,H,W,T,C)) and pool; float32 features."""
    vis, ids, grids = absent_visibility(opts.cfg, images, opts.patch_size)
    view = models.view_from_images(opts.cfg, images, visibility=vis, patch_size=opts.patch_size,
                                   months=months, gsd=opts.gsd)
    x, stream = parts.encoder(view.patches, view.tokens, view.online,
                              deterministic=deterministic, rng=rng)
    feats = pool_tokens(x, stream, opts.pooling, ids=ids, grids=grids, pool_head=parts.pool)
    if parts.proj is not None:
        feats = parts.proj(feats)
    return feats.astype(jnp.float32)


def model_config_of(model) -> ModelConfig:
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"{type(model).__name__} has no ModelConfig `cfg`; expected a SpaceNit "
                        "model (LatentPredictor, Encoder, ...)")
    return cfg


def build_parts(model, representation: str = "encoder", pooling: str = "mean", *,
                pool_head=None, pool_seed: int = 0) -> FeatureParts:
    """Pick the modules of `representation` out of a model (no copies)."""
    representation = canonical_representation(representation)
    cfg = model_config_of(model)
    kind = type(model).__name__

    def sub(name):
        module = getattr(model, name, None)
        if module is None:
            raise ValueError(f"representation {representation!r} needs `{name}`, which a "
                             f"{kind} does not have")
        return module

    online = model if hasattr(model, "tokenizer") else sub("encoder")
    proj = None
    if representation == "encoder":
        encoder = online
    elif representation == "target_encoder":
        encoder = sub("target_encoder")
    elif representation == "projection":
        if getattr(model, "target_encoder", None) is not None and hasattr(model, "target_proj"):
            encoder, proj = model.target_encoder, model.target_proj
        else:
            encoder, proj = online, sub("online_proj")
    else:
        encoder, proj = online, sub("online_proj")
    pool = None
    if pooling == "attention":
        pool = pool_head if pool_head is not None else getattr(model, "pool", None)
        if not isinstance(pool, heads.PoolingHead):
            pool = fresh_pool_head(cfg, pool_seed)
    return FeatureParts(encoder, proj, pool)


def fresh_pool_head(cfg: ModelConfig, seed: int = 0) -> heads.PoolingHead:
    """An untrained PoolingHead, drawn on the host with the module's init distributions
    (query N(0, 0.02^2), kernels U(+-1/sqrt(fan_in)), norm scale 1): eager device init
    would compile one small program per parameter shape."""

    def build():
        return heads.PoolingHead(cfg.embed_dim, cfg.pooling_heads, rngs=nnx.Rngs(params=seed))

    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng([seed, 7])

    def init(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "query":
            return rng.normal(0.0, 0.02, leaf.shape).astype(leaf.dtype)
        if name == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        if name in ("kernel", "bias"):
            fan_in = leaf.shape[0] if name == "kernel" else cfg.embed_dim
            bound = 1.0 / np.sqrt(fan_in)
            return rng.uniform(-bound, bound, leaf.shape).astype(leaf.dtype)
        raise KeyError(name)

    try:
        state = jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(init(p, x)), state)
    except KeyError:  # a parameter this function does not know: use the module's own init
        return build()
    return nnx.merge(graphdef, state)


@partial(jax.jit, static_argnums=(0, 4))
@tracing.counted("extract")
def _extract_batch(graphdef, state, images, months, opts: EncodeOptions):
    return encode_and_pool(nnx.merge(graphdef, state), images, months, opts)


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class ArraySplit:
    """A split held in memory: images (N, H, W, T, C) of one sensor, labels, months (N, T),
    `extra` {sensor: (N, H', W', T, C')} images of further sensors on the same timeline, and
    the split's name for messages ("train", "valid", ...; "" when unknown)."""

    images: np.ndarray
    labels: np.ndarray
    sensor: str
    months: np.ndarray | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    name: str = ""

    def __post_init__(self):
        if self.images.ndim != 5 or self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"ArraySplit: images must be (N, H, W, T, C) with one label per "
                             f"image, got {self.images.shape} and labels {self.labels.shape}")
        for sensor, images in self.extra.items():
            if images.ndim != 5 or images.shape[0] != self.images.shape[0]:
                raise ValueError(f"ArraySplit: {sensor} images must be (N, H, W, T, C) with "
                                 f"N={self.images.shape[0]}, got {images.shape}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def from_dataset(cls, dataset) -> ArraySplit:
        """Load a dataset of EvalSamples (GeoBench, GEO-Bench-2, synthetic) into memory."""
        images, labels, months, sensor, extra = _stack(dataset, 0, len(dataset))
        return cls(images, labels, sensor, months, extra,
                   str(getattr(dataset, "split", "") or ""))


def _stack(data, start: int, stop: int):
    """(images, labels, months, sensor, extra) of data[start:stop] (dataset or ArraySplit)."""
    if isinstance(data, ArraySplit):
        months = None if data.months is None else data.months[start:stop]
        extra = {k: v[start:stop] for k, v in data.extra.items()}
        return data.images[start:stop], data.labels[start:stop], months, data.sensor, extra
    if stop <= start:
        raise ValueError("empty dataset")
    items = [data[i] for i in range(start, stop)]
    sensor = items[0].sensor
    extras = tuple(getattr(items[0], "extra", {}))
    if any(s.sensor != sensor or tuple(getattr(s, "extra", {})) != extras for s in items):
        raise ValueError(f"samples {start}..{stop - 1} mix sensors; one sensor set per split")
    images = np.stack([s.image for s in items]).astype(np.float32)
    labels = np.stack([np.asarray(s.label) for s in items])
    months = np.stack([np.asarray(s.timestamps)[:, 1] for s in items]).astype(np.int32)
    extra = {k: np.stack([s.extra[k] for s in items]).astype(np.float32) for k in extras}
    return images, labels, months, sensor, extra


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape[0] == size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)])


@dataclasses.dataclass
class Features:
    features: np.ndarray  # (N, D), (N, N_patch, D) or (N, Hp*Wp, D)
    labels: np.ndarray


def data_mesh(devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), ("batch",), axis_types=(AxisType.Auto,),
                         devices=devices)


def param_mesh(state) -> Mesh | None:
    """The mesh that (sharded) parameters live on, if any: e.g. the training mesh."""
    for leaf in jax.tree.leaves(state):
        if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding) \
                and leaf.sharding.mesh.devices.size > 1:
            return leaf.sharding.mesh
    return None


def place_state(state, mesh: Mesh):
    """Replicate parameters over the mesh, leaving arrays that are already laid out over
    the same devices in the same order (e.g. FSDP-sharded training parameters)."""
    order = list(mesh.devices.flat)
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(x):
        if (isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)
                and len(order) > 1 and list(x.sharding.mesh.devices.flat) == order):
            return x
        return jax.device_put(x, replicated)

    return jax.tree.map(one, state)


def _to_host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


class FeatureExtractor:
    """Batched, sharded, jitted feature extraction from a model (see module docstring).

    model: a SpaceNit model (LatentPredictor, DualBranch, AutoEncoder, SpatioTemporalEncoder
    or a bare Encoder). devices: the devices to spread batches over (default all); mesh: use
    this mesh instead (batches are split over all its axes). Without either, parameters that
    are sharded over a mesh (the training mesh) bring that mesh, and stay where they are.
    """

    def __init__(self, model, config: FeatureConfig = FeatureConfig(), *, devices=None,
                 mesh: Mesh | None = None, pool_head=None):
        parts = build_parts(model, config.representation, config.pooling, pool_head=pool_head,
                            pool_seed=config.pool_seed)
        self._setup(parts, model_config_of(model), config, devices, mesh)

    @classmethod
    def from_parts(cls, parts: FeatureParts, cfg: ModelConfig, config: FeatureConfig, *,
                   devices=None, mesh: Mesh | None = None) -> FeatureExtractor:
        """An extractor of given modules (e.g. a fine-tuned encoder and pooling head);
        config.representation is not used."""
        self = cls.__new__(cls)
        self._setup(parts, cfg, config, devices, mesh)
        return self

    def _setup(self, parts, cfg, config, devices, mesh):
        self.config, self.cfg = config, cfg
        self.graphdef, state = nnx.split(parts)
        self.opts = EncodeOptions(cfg, config.patch_size, config.pooling, config.gsd)
        if mesh is None and devices is None:
            mesh = param_mesh(state)
        mesh = mesh if mesh is not None else data_mesh(devices)
        if config.batch_size % mesh.devices.size:
            log.info("feature batch %d does not divide over %d devices: using one device",
                     config.batch_size, mesh.devices.size)
            mesh = data_mesh(mesh.devices.flat[:1])
        self.mesh = mesh
        self.state = place_state(state, mesh)

    def _put(self, x):
        spec = PartitionSpec(self.mesh.axis_names, *([None] * (x.ndim - 1)))
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    def embed_batch(self, images: np.ndarray, sensor: str, months=None, extra=None
                    ) -> jax.Array:
        """Features of one batch (B, H, W, T, C) of `sensor` images, with `extra`
        {sensor: (B, H', W', T, C')} images of further sensors (B = any; not padded)."""
        months = months if self.config.use_months else None
        batch = {sensor: self._put(images), **{k: self._put(v) for k, v in (extra or {}).items()}}
        return _extract_batch(self.graphdef, self.state, batch,
                              None if months is None else self._put(np.asarray(months)),
                              self.opts)

    def extract(self, data, *, split: str | None = None, progress: bool | None = None
                ) -> Features:
        """Features and labels of a whole split: a dataset of EvalSamples or an ArraySplit.

        split: the split's name in messages and on the progress bar (default: the data's
        `split` or `name` attribute, else "eval"). progress: a tqdm bar on stderr with
        batches/s and ETA (None: when stderr is a terminal, see `progress.bar`).

        Host loading of the next batch overlaps the device work of the previous one (async
        dispatch); everything is fetched to the host at the end. Then the features are
        checked: a non-finite row raises validation.EvalInputError naming the split and the
        sample indices, and whether their images had non-finite pixels.
        """
        n = len(data)
        split = split or getattr(data, "split", None) or getattr(data, "name", None) or "eval"
        if n == 0:
            raise validation.EvalInputError(f"{split} split: no samples (empty split)")
        bs = self.config.batch_size
        outs, labels, bad_inputs = [], [], []
        with progress_lib.bar(-(-n // bs), f"features {split}", unit="batch",
                              enabled=progress) as bar:
            tracker = progress_lib.DeviceProgress(bar)
            for start in range(0, n, bs):
                images, y, months, sensor, extra = _stack(data, start, min(start + bs, n))
                real = images.shape[0]
                finite = np.isfinite(images).reshape(real, -1).all(axis=1)
                for more in extra.values():
                    finite &= np.isfinite(more).reshape(real, -1).all(axis=1)
                bad_inputs.extend(start + np.flatnonzero(~finite))
                images = _pad(images, bs)
                months = None if months is None else _pad(months, bs)
                extra = {k: _pad(v, bs) for k, v in extra.items()}
                out = self.embed_batch(images, sensor, months, extra)
                tracker.dispatched(out)
                outs.append((out, real))
                labels.append(y)
            feats = np.concatenate([_to_host(o)[:real] for o, real in outs])
            tracker.finish()
        validation.check_extracted(feats, split=split, bad_inputs=bad_inputs)
        return Features(feats, np.concatenate(labels))


def feature_config_from(task_cfg, **overrides) -> FeatureConfig:
    """FeatureConfig from an eval task config (configs/eval/*.py fields)."""
    kw = dict(representation=task_cfg.representation, pooling=task_cfg.pooling,
              patch_size=int(task_cfg.patch_size),
              batch_size=int(task_cfg.embedding_batch_size),
              use_months=bool(task_cfg.use_months), gsd=task_cfg.get("gsd"))
    kw.update(overrides)
    return FeatureConfig(**kw)
