"""Fine-tuning: the pretrained encoder plus a linear head, trained end to end (spec §9.4).

The recipe follows the reference:

- model: encoder (online by default, or the EMA target) -> pooling over present patch tokens
  (mean by default; "attention" adds a PoolingHead that is trained with the head from the
  first epoch) -> Linear(D, classes), initialised like torch's nn.Linear. Segmentation:
  one feature per patch position ("spatial" pooling) -> Linear(D, classes * s * s), each
  token's s x s pixel block, bilinear resize to the label size (the linear probe's head,
  s = int(sqrt(H * W / tokens)));
- loss: cross-entropy (classification; segmentation over pixels whose label is not -1) or
  the mean over classes of sigmoid BCE (multilabel, = torch's MultiLabelSoftMarginLoss);
- the backbone is frozen for the first ceil(freeze_fraction * epochs) epochs (0.2), then
  unfrozen and the learning rate set to lr * 0.1;
- AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.01 on every parameter). As in torch, a
  frozen parameter has no optimizer state until it first gets a gradient, so the backbone
  has its own Adam state whose step count (bias correction) starts at the unfreeze;
- ReduceLROnPlateau on the validation primary metric, torch semantics (mode max, factor 0.2,
  patience 2, cooldown 10, relative threshold 1e-4, min_lr 0), stepped once per epoch;
- the best state by validation primary metric (strict improvement: the earliest best wins)
  is what `FinetuneResult.predict/evaluate` use. Primary: accuracy, exact-match (subset)
  accuracy for multilabel (micro-F1 reported too), mIoU for segmentation (accuracies and
  macro F1 too).

Data: each epoch visits the train set in the order default_rng([seed, epoch]).permutation;
the last batch is padded with masked slots (no drop_last). Drop-path keys are
fold_in(fold_in(key(seed), epoch), step). Everything is a function of (config, data, initial
parameters, epoch), which is what makes resumption exact: after every epoch the whole state
(parameters, both optimizer states, learning rate, plateau counters, best state, history) is
written with Orbax to `checkpoint_dir`, and a later call with the same directory continues
from the last finished epoch (a finished run is simply reloaded). A checkpoint written with
another config or other data is refused.

The train step is one jitted function and one compile for both phases (in the frozen phase
the backbone's gradient is computed and dropped). Batches are split over a
1-D mesh of the devices when the batch size divides by their number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import pathlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from spacenit_jax import tracing
from spacenit_jax.eval import features as feat
from spacenit_jax.eval import metrics
from spacenit_jax.eval.linear_probe import (
    SegGeometry,
    init_probe_params,
    segmentation_geometry,
    token_logits_to_pixels,
)

log = logging.getLogger(__name__)

TASKS = ("classification", "multilabel", "segmentation")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyperparameters; defaults are the reference's (spec §9.4, §9.8)."""

    task: str = "classification"  # "classification" | "multilabel" | "segmentation"
    num_classes: int = 10
    lr: float = 1e-4  # the reference sweeps [1e-4, 5e-4, 1e-3]
    epochs: int = 50
    batch_size: int = 32
    eval_batch_size: int = 128
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    freeze_fraction: float = 0.2
    unfreeze_lr_factor: float = 0.1
    plateau_factor: float = 0.2
    plateau_patience: int = 2
    plateau_cooldown: int = 10
    plateau_threshold: float = 1e-4  # relative, as torch's default threshold_mode "rel"
    min_lr: float = 0.0
    seed: int = 42
    representation: str = "encoder"  # "encoder" | "target_encoder"
    pooling: str | None = None  # "mean" (default) | "max" | "attention"; segmentation:
    #                             "spatial" (its default)
    patch_size: int = 4
    use_months: bool = False
    gsd: float | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"FinetuneConfig.task must be one of {TASKS}, got {self.task!r}")
        if self.pooling is None:  # segmentation needs one feature per patch position
            object.__setattr__(self, "pooling",
                               "spatial" if self.task == "segmentation" else "mean")
        rep = feat.canonical_representation(self.representation)
        if rep not in ("encoder", "target_encoder"):
            raise ValueError("FinetuneConfig.representation must be 'encoder' or "
                             f"'target_encoder' (a backbone to train), got {self.representation!r}")
        object.__setattr__(self, "representation", rep)
        allowed = ("spatial",) if self.task == "segmentation" else feat.POOLED
        if self.pooling not in allowed:
            raise ValueError(f"FinetuneConfig.pooling must be one of {allowed} for "
                             f"{self.task}, got {self.pooling!r}")
        for name in ("num_classes", "epochs", "batch_size", "eval_batch_size", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.freeze_fraction <= 1:
            raise ValueError(f"FinetuneConfig: lr must be > 0 and freeze_fraction in [0, 1], "
                             f"got {self.lr} and {self.freeze_fraction}")

    @property
    def freeze_epochs(self) -> int:
        return math.ceil(self.freeze_fraction * self.epochs)


# --------------------------------------------------------------------------- plateau


@dataclasses.dataclass
class Plateau:
    """torch ReduceLROnPlateau(mode="max") counters."""

    best: float = -math.inf
    num_bad_epochs: int = 0
    cooldown_counter: int = 0


def plateau_step(state: Plateau, metric: float, lr: float, config: FinetuneConfig
                 ) -> tuple[Plateau, float]:
    """One scheduler step on the validation metric: (new counters, new learning rate)."""
    state = dataclasses.replace(state)
    if metric > state.best * (1.0 + config.plateau_threshold):  # torch's "rel" rule, verbatim
        state.best, state.num_bad_epochs = metric, 0
    else:
        state.num_bad_epochs += 1
    if state.cooldown_counter > 0:
        state.cooldown_counter -= 1
        state.num_bad_epochs = 0
    if state.num_bad_epochs > config.plateau_patience:
        new_lr = max(lr * config.plateau_factor, config.min_lr)
        if lr - new_lr > 1e-8:
            lr = new_lr
        state.cooldown_counter = config.plateau_cooldown
        state.num_bad_epochs = 0
    return state, lr


# --------------------------------------------------------------------------- jitted steps


@dataclasses.dataclass(frozen=True)
class _Static:
    encoder_def: nnx.GraphDef
    pool_def: nnx.GraphDef | None
    opts: feat.EncodeOptions
    sensor: str
    task: str
    adamw: tuple[float, float, float, float]  # b1, b2, eps, weight decay
    num_classes: int
    geometry: SegGeometry | None  # segmentation only


def _logits(static: _Static, backbone, trainable, rest, images, months, *, deterministic,
            rng=None):
    encoder = nnx.merge(static.encoder_def, backbone, rest)
    pool = None if static.pool_def is None else nnx.merge(static.pool_def, trainable["pool"])
    parts = feat.FeatureParts(encoder, None, pool)
    x = feat.encode_and_pool(parts, {static.sensor: images}, months, static.opts,
                             deterministic=deterministic, rng=rng)
    return head_logits(static, trainable["head"], x)


def head_logits(static: _Static, head, x):
    """The linear head on pooled features (B, D), or on spatial ones (B, Hp*Wp, D) as
    per-pixel logits (B, H, W, classes) for segmentation."""
    out = x @ head["w"] + head["b"]
    if static.task != "segmentation":
        return out
    return token_logits_to_pixels(out, static.geometry, static.num_classes)


def _loss(backbone, trainable, rest, images, months, labels, mask, rng, *, static):
    logits = _logits(static, backbone, trainable, rest, images, months, deterministic=False,
                     rng=rng)
    w = mask.astype(jnp.float32)
    if static.task == "multilabel":
        per = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean(-1)
    elif static.task == "segmentation":  # pixels labelled -1 are ignored, as torch's CE
        w = w[:, None, None] * (labels != metrics.IGNORE_INDEX)
        per = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    else:
        per = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


def _adamw(params, grads, opt, lr, adamw):
    """torch AdamW: p <- p - lr * (adam(g) + wd * p)."""
    b1, b2, eps, wd = adamw
    updates, opt = optax.scale_by_adam(b1=b1, b2=b2, eps=eps).update(grads, opt, params)
    params = jax.tree.map(lambda p, u: p - lr * (u + wd * p), params, updates)
    return params, opt


@partial(jax.jit, static_argnames=("static",), donate_argnames=("state",))
@tracing.counted("finetune_train")
def _train_step(state, rest, images, months, labels, mask, lr, seed_epoch_step, train_backbone,
                *, static: _Static):
    """One AdamW step. While `train_backbone` is False the backbone and its Adam state are
    kept as they are (its gradient is computed and dropped: one compiled step for both
    phases rather than two compiles, at the price of a full backward pass in the frozen
    epochs)."""
    seed, epoch, step = seed_epoch_step
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), step)
    loss, (g_backbone, g_train) = jax.value_and_grad(partial(_loss, static=static),
                                                     argnums=(0, 1))(
        state["backbone"], state["trainable"], rest, images, months, labels, mask, rng)
    state = dict(state)
    backbone, opt_backbone = _adamw(state["backbone"], g_backbone, state["opt_backbone"], lr,
                                    static.adamw)

    def keep(new, old):
        return jax.tree.map(lambda n, o: jnp.where(train_backbone, n, o), new, old)

    state["backbone"] = keep(backbone, state["backbone"])
    state["opt_backbone"] = keep(opt_backbone, state["opt_backbone"])
    state["trainable"], state["opt_trainable"] = _adamw(
        state["trainable"], g_train, state["opt_trainable"], lr, static.adamw)
    return state, loss


def score(preds: np.ndarray, labels: np.ndarray, task: str, num_classes: int | None = None
          ) -> dict[str, float]:
    """Primary = accuracy, exact-match accuracy for multilabel (plus micro-F1), mIoU for
    segmentation (pixels labelled -1 excluded; plus accuracies and macro F1)."""
    if task == "segmentation":
        return metrics.segmentation_summary(preds, labels, num_classes)
    if task == "multilabel":
        exact = float(metrics.exact_match(preds, labels))
        return {"primary": exact, "exact_match": exact,
                "micro_f1": float(metrics.micro_f1(preds, labels))}
    acc = float(metrics.accuracy(preds, labels))
    return {"primary": acc, "accuracy": acc}


# --------------------------------------------------------------------------- driver


@dataclasses.dataclass
class FinetuneResult:
    """History, the best-on-validation state, and prediction with that state."""

    config: FinetuneConfig
    history: list[dict]  # per epoch: epoch, train_loss, val scores, lr, backbone_trained
    best_epoch: int
    best_val: dict[str, float]
    completed: bool  # False when stopped early by `stop_after`
    best_state: dict  # host arrays {"backbone", "trainable"}
    _runner: _Runner = dataclasses.field(repr=False)

    def predict(self, data) -> np.ndarray:
        return self._runner.predict(self.best_state, _as_split(data))

    def evaluate(self, data) -> dict[str, float]:
        split = _as_split(data)
        return score(self.predict(split), split.labels, self.config.task,
                     self.config.num_classes)


def _as_split(data) -> feat.ArraySplit:
    return data if isinstance(data, feat.ArraySplit) else feat.ArraySplit.from_dataset(data)


class _Runner:
    """Holds the model structure, placement and jitted steps of one fine-tuning run."""

    def __init__(self, model, config: FinetuneConfig, train: feat.ArraySplit, devices=None):
        self.config = config
        sensor = train.sensor
        cfg = feat.model_config_of(model)
        parts = feat.build_parts(model, config.representation, config.pooling,
                                 pool_seed=config.seed)
        encoder_def, backbone, self.rest = nnx.split(parts.encoder, nnx.Param, ...)
        pool_def, pool_params = (None, {}) if parts.pool is None else nnx.split(parts.pool)
        opts = feat.EncodeOptions(cfg, config.patch_size, config.pooling, config.gsd)
        geometry, outputs = None, config.num_classes
        if config.task == "segmentation":
            geometry = _segmentation_geometry(cfg, config, train)
            outputs = config.num_classes * geometry.scale**2
        # only what the traced code reads, so that e.g. another lr or epoch count reuses it
        self.static = _Static(encoder_def, pool_def, opts, sensor, config.task,
                              (config.b1, config.b2, config.adam_eps, config.weight_decay),
                              config.num_classes, geometry)
        head = init_probe_params(config.seed, cfg.embed_dim, outputs)
        self.initial = {"backbone": nnx.to_pure_dict(backbone),
                        "trainable": {"head": head, "pool": nnx.to_pure_dict(pool_params)
                                      if pool_def is not None else {}}}
        mesh = feat.data_mesh(devices)
        if config.batch_size % mesh.devices.size or config.eval_batch_size % mesh.devices.size:
            mesh = feat.data_mesh(mesh.devices.flat[:1])
        self.mesh = mesh
        self.rest = feat.place_state(self.rest, mesh)

    def put_batch(self, x):
        if x is None:
            return None
        spec = PartitionSpec(self.mesh.axis_names, *([None] * (np.ndim(x) - 1)))
        return jax.device_put(np.asarray(x), NamedSharding(self.mesh, spec))

    def init_state(self) -> dict:
        """Fresh parameters (host copies: the train step donates its state, and these are the
        model's own arrays) and zero Adam states, built on the host so nothing compiles."""
        params = jax.tree.map(lambda x: np.array(x, copy=True), self.initial)

        def adam_state(tree):
            zeros = jax.tree.map(np.zeros_like, tree)
            return optax.ScaleByAdamState(np.zeros((), np.int32), zeros,
                                          jax.tree.map(np.zeros_like, tree))

        state = {**params, "opt_backbone": adam_state(params["backbone"]),
                 "opt_trainable": adam_state(params["trainable"])}
        return feat.place_state(state, self.mesh)

    def months(self, split: feat.ArraySplit, idx):
        if not self.config.use_months or split.months is None:
            return None
        return split.months[idx]

    def predict(self, params: dict, split: feat.ArraySplit) -> np.ndarray:
        """Predictions with `params`: features from the feature extractor's compiled forward
        (deterministic, so it is the same program as frozen-feature evaluation), then the
        linear head on the host."""
        encoder = nnx.merge(self.static.encoder_def, params["backbone"], self.rest)
        pool = (None if self.static.pool_def is None
                else nnx.merge(self.static.pool_def, params["trainable"]["pool"]))
        c = self.config
        config = feat.FeatureConfig(pooling=c.pooling, patch_size=c.patch_size,
                                    batch_size=c.eval_batch_size, use_months=c.use_months,
                                    gsd=c.gsd)
        extractor = feat.FeatureExtractor.from_parts(feat.FeatureParts(encoder, None, pool),
                                                     self.static.opts.cfg, config,
                                                     mesh=self.mesh)
        x = extractor.extract(split).features
        head = jax.device_get(params["trainable"]["head"])
        if self.static.task == "segmentation":  # per-pixel maps, one batch at a time
            bs = c.eval_batch_size
            return np.concatenate([np.asarray(_pixel_predictions(self.static, head,
                                                                 x[i:i + bs]))
                                   for i in range(0, len(x), bs)])
        logits = x @ np.asarray(head["w"], np.float32) + np.asarray(head["b"], np.float32)
        if self.static.task == "multilabel":
            return (logits > 0).astype(np.int32)
        return np.argmax(logits, axis=-1).astype(np.int32)


@partial(jax.jit, static_argnums=0)
def _pixel_predictions(static: _Static, head, x):
    return jnp.argmax(head_logits(static, head, x), axis=-1).astype(jnp.int32)


def _segmentation_geometry(cfg, config: FinetuneConfig, train: feat.ArraySplit) -> SegGeometry:
    """Token grid of the images at the configured patch size, against the label maps."""
    if train.labels.ndim != 3:
        raise ValueError(f"segmentation fine-tuning needs (N, H, W) label maps, got labels of "
                         f"shape {train.labels.shape}")
    _, h, w = train.images.shape[:3]
    pixels = cfg.layout.patch_pixels(train.sensor, config.patch_size)
    if h % pixels or w % pixels:
        raise ValueError(f"segmentation fine-tuning: {h}x{w} images are not a whole number of "
                         f"{pixels}-pixel patches (patch_size {config.patch_size})")
    grid = (h // pixels, w // pixels)
    return segmentation_geometry(grid[0] * grid[1], train.labels.shape[1:], grid)


def _fingerprint(config: FinetuneConfig, train: feat.ArraySplit, valid: feat.ArraySplit) -> str:
    h = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    for split in (train, valid):
        h.update(repr((split.sensor, split.images.shape, split.labels.shape)).encode())
        h.update(np.ascontiguousarray(split.labels).tobytes())
        h.update(np.ascontiguousarray(split.images[:: max(1, len(split) // 8)]).tobytes())
    return h.hexdigest()[:16]


def _manager(directory):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                           create=True)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), item_names=("state", "meta"),
                                 options=options)


def finetune(model, train, valid, *, config: FinetuneConfig = FinetuneConfig(),
             checkpoint_dir=None, stop_after: int | None = None, devices=None
             ) -> FinetuneResult:
    """Fine-tune `model`'s encoder with a linear head on `train`, selecting on `valid`.

    train/valid: ArraySplits or datasets of EvalSamples (loaded into memory). checkpoint_dir:
    where each epoch's state is written and resumed from (None: no checkpoints).
    stop_after: run at most this many epochs in this call (e.g. a preemptible job's slice).
    The model itself is not modified.
    """
    import orbax.checkpoint as ocp

    train, valid = _as_split(train), _as_split(valid)
    if train.sensor != valid.sensor:
        raise ValueError(f"train ({train.sensor}) and valid ({valid.sensor}) sensors differ")
    runner = _Runner(model, config, train, devices)
    state = runner.init_state()
    lr, plateau = config.lr, Plateau()
    history: list[dict] = []
    best_metric, best_epoch, best_state = -math.inf, -1, None
    start_epoch = 0
    fingerprint = _fingerprint(config, train, valid)
    mngr = _manager(checkpoint_dir) if checkpoint_dir is not None else None
    if mngr is not None and mngr.latest_step() is not None:
        step = mngr.latest_step()
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(f"fine-tuning checkpoint {checkpoint_dir} was written with another "
                             "config or other data (fingerprint "
                             f"{meta.get('fingerprint')} != {fingerprint}); use a new directory")
        # host (numpy) trees both ways: Orbax on device arrays replicated over several
        # devices runs (and compiles) slicing ops per array shape
        host = jax.device_get(state)
        template = {"train": host, "best": {k: host[k] for k in ("backbone", "trainable")}}
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template)))["state"]
        state = feat.place_state(restored["train"], runner.mesh)
        best_state = jax.device_get(restored["best"])
        lr, plateau = meta["lr"], Plateau(**meta["plateau"])
        history, best_metric, best_epoch = meta["history"], meta["best_metric"], meta["best_epoch"]
        start_epoch = step + 1
        log.info("fine-tuning resumes after epoch %d from %s", step, checkpoint_dir)

    n, bs = len(train), config.batch_size
    steps = -(-n // bs)
    last = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, last):
        trained = epoch >= config.freeze_epochs
        if config.freeze_epochs and epoch == config.freeze_epochs:
            lr = config.lr * config.unfreeze_lr_factor
        order = np.random.default_rng([config.seed, epoch]).permutation(n)
        order = np.concatenate([order, np.full(steps * bs - n, order[-1])])
        losses = []
        for i in range(steps):
            idx = order[i * bs:(i + 1) * bs]
            mask = np.arange(i * bs, (i + 1) * bs) < n
            state, loss = _train_step(
                state, runner.rest, runner.put_batch(train.images[idx]),
                runner.put_batch(runner.months(train, idx)), runner.put_batch(train.labels[idx]),
                runner.put_batch(mask), np.float32(lr),
                np.array([config.seed, epoch, i], np.int32), np.bool_(trained),
                static=runner.static)
            losses.append(loss)
        params = {k: state[k] for k in ("backbone", "trainable")}
        val = score(runner.predict(params, valid), valid.labels, config.task,
                    config.num_classes)
        history.append({"epoch": epoch, "train_loss": float(np.mean(jax.device_get(losses))),
                        "lr": lr, "backbone_trained": trained,
                        **{f"val_{k}": v for k, v in val.items()}})
        if val["primary"] > best_metric:  # copies: device_get may alias donated buffers
            best_metric, best_epoch = val["primary"], epoch
            best_state = jax.tree.map(lambda x: np.array(x, copy=True), params)
        plateau, lr = plateau_step(plateau, val["primary"], lr, config)
        log.info("finetune epoch %d: loss %.4f val %.4f lr %.3g", epoch,
                 history[-1]["train_loss"], val["primary"], lr)
        if mngr is not None:
            meta = {"fingerprint": fingerprint, "lr": lr, "plateau": dataclasses.asdict(plateau),
                    "history": history, "best_metric": best_metric, "best_epoch": best_epoch}
            mngr.save(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardSave({"train": jax.device_get(state),
                                             "best": best_state}),
                meta=ocp.args.JsonSave(meta)))
            mngr.wait_until_finished()
    if mngr is not None:
        mngr.close()
    if best_state is None:
        raise ValueError("fine-tuning ran no epoch (stop_after=0?)")
    best_val = {k[4:]: v for k, v in history[best_epoch].items() if k.startswith("val_")}
    return FinetuneResult(config, history, best_epoch, best_val, len(history) == config.epochs,
                          best_state, runner)
