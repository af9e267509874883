"""Fine-tuning: the pretrained encoder plus a linear head, trained end to end.

The recipe is the reference's fine-tuning:

- model: encoder (online by default, or the EMA target) -> pooling over present patch tokens
  (mean by default; "attention" adds a PoolingHead that is trained with the head from the
  first epoch) -> Linear(D, classes), initialised like torch's nn.Linear. Segmentation:
  one feature per patch position ("spatial" pooling) -> Linear(D, classes * s * s), each
  token's s x s pixel block, bilinear resize to the label size (the linear probe's head,
  s = int(sqrt(H * W / tokens)));
- loss: cross-entropy (classification; segmentation over pixels whose label is not -1) or
  the mean over classes of sigmoid BCE (multilabel, = torch's MultiLabelSoftMarginLoss);
- the backbone is frozen for the first ceil(freeze_fraction * epochs) epochs (0.2), then
  unfrozen and the learning rate set to lr * unfreeze_lr_factor (0.1);
- AdamW with torch's semantics (betas 0.9/0.999, eps 1e-8, decoupled weight decay 0.01 on
  every parameter), composed from optax (`optimizer`): `optax.inject_hyperparams` keeps the
  learning rate in the optimizer state, where it is set between epochs; `optax.partition`
  gives the backbone and the trainable part (head, attention pooling) each their own AdamW;
  the backbone's is wrapped in `optax.transforms.conditionally_mask`, so while it is frozen
  its update is zero and its Adam state (moments and step count) does not move. In torch a
  frozen parameter has no optimizer state until its first gradient, so there too the
  backbone's bias correction starts at the unfreeze;
- ReduceLROnPlateau on the validation primary metric with torch's semantics (mode max,
  factor 0.2, patience 2, cooldown 10, relative threshold 1e-4, min_lr 0), stepped once per
  epoch (`plateau_step`; why not optax.contrib.reduce_on_plateau is said there);
- the best state by validation primary metric (strict improvement: the earliest best wins)
  is what `FinetuneResult.predict/evaluate` use. Primary: accuracy, exact-match (subset)
  accuracy for multilabel (micro-F1 reported too), mIoU for segmentation (accuracies and
  macro F1 too).

Inputs are checked first (`validation`): non-finite pixels, labels outside the classes,
splits of different image shapes and the like raise validation.EvalInputError naming the
split and the rows, instead of training on NaN.

Data: each epoch visits the train set in the order default_rng([seed, epoch]).permutation;
the last batch is padded with masked slots (no drop_last). Drop-path keys are
fold_in(fold_in(key(seed), epoch), step). Everything is a function of (config, data, initial
parameters, epoch), which is what makes resumption exact: after every epoch the whole state
(parameters, optimizer state with its learning rate, plateau counters, best state, history)
is written with Orbax to `checkpoint_dir` (`spacenit_jax.checkpoint.item_manager`), and a
later call with the same directory continues from the last finished epoch (a finished run is
simply reloaded). A checkpoint written with another config, other data or an older layout
is refused.

The train step is one jitted function and one compile for both phases: the freeze flag is a
traced argument (in the frozen phase the backbone's gradient is computed and dropped).
Batches are split over a 1-D mesh of the devices when the batch size divides by their
number. Progress (a tqdm bar on stderr: steps, ETA, and per epoch the train loss, the
validation score and the learning rate) is shown when stderr is a terminal, or as asked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from spacenit_jax import checkpoint, tracing
from spacenit_jax.eval import features as feat
from spacenit_jax.eval import metrics, validation
from spacenit_jax.eval import progress as progress_lib
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
    """Fine-tuning hyperparameters; the defaults are the reference's."""

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
    """The counters of torch's ReduceLROnPlateau(mode="max")."""

    best: float = -math.inf
    num_bad_epochs: int = 0
    cooldown_counter: int = 0


def plateau_step(state: Plateau, metric: float, lr: float, config: FinetuneConfig
                 ) -> tuple[Plateau, float]:
    """One scheduler step on the validation metric: (new counters, new learning rate).

    torch's ReduceLROnPlateau(mode="max", threshold_mode="rel"): an epoch improves when
    metric > best * (1 + threshold); after more than `patience` epochs without improvement
    the learning rate becomes max(lr * factor, min_lr) (unless that changes it by 1e-8 or
    less), and the next `cooldown` epochs count no bad epochs.

    optax.contrib.reduce_on_plateau (optax 0.2.8) is not used because it differs, as
    tests/test_eval_finetune.py shows on one metric sequence: (1) it minimises, and fed the
    negated metric its test becomes metric > best * (1 - rtol), so an unchanged accuracy
    counts as an improvement and a flat validation score never lowers the learning rate;
    (2) it reduces when the bad-epoch count reaches `patience`, torch when it exceeds it;
    (3) it scales the learning rate by a factor it owns, while the unfreeze sets the
    learning rate to lr * 0.1 outright, dropping any earlier reduction as torch does;
    (4) it has no 1e-8 minimum change.
    """
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


def optimizer(adamw: tuple[float, float, float, float]) -> optax.GradientTransformationExtraArgs:
    """AdamW (b1, b2, eps, weight decay) for params {"backbone": ..., "trainable": ...}.

    The learning rate is `state.hyperparams["learning_rate"]`; `update(...,
    train_backbone=flag)` leaves the backbone and its Adam state as they are while the flag
    is False (see the module docstring).
    """
    b1, b2, eps, weight_decay = adamw

    def build(learning_rate):
        def adamw_():
            return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)

        backbone = optax.transforms.conditionally_mask(
            adamw_(), lambda step, train_backbone: train_backbone, forward_extra_args=True)
        return optax.partition({"backbone": backbone, "trainable": adamw_()},
                               {"backbone": "backbone", "trainable": "trainable"})

    return optax.inject_hyperparams(build)(learning_rate=0.0)


def _logits(static: _Static, params, rest, images, months, *, deterministic, rng=None):
    encoder = nnx.merge(static.encoder_def, params["backbone"], rest)
    pool = (None if static.pool_def is None
            else nnx.merge(static.pool_def, params["trainable"]["pool"]))
    parts = feat.FeatureParts(encoder, None, pool)
    x = feat.encode_and_pool(parts, {static.sensor: images}, months, static.opts,
                             deterministic=deterministic, rng=rng)
    return head_logits(static, params["trainable"]["head"], x)


def head_logits(static: _Static, head, x):
    """The linear head on pooled features (B, D), or on spatial ones (B, Hp*Wp, D) as
    per-pixel logits (B, H, W, classes) for segmentation."""
    out = x @ head["w"] + head["b"]
    if static.task != "segmentation":
        return out
    return token_logits_to_pixels(out, static.geometry, static.num_classes)


def _loss(params, rest, images, months, labels, mask, rng, *, static):
    logits = _logits(static, params, rest, images, months, deterministic=False, rng=rng)
    w = mask.astype(jnp.float32)
    if static.task == "multilabel":
        per = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean(-1)
    elif static.task == "segmentation":  # pixels labelled -1 are ignored, as torch's CE
        w = w[:, None, None] * (labels != metrics.IGNORE_INDEX)
        per = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    else:
        per = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


@partial(jax.jit, static_argnames=("static",), donate_argnames=("state",))
@tracing.counted("finetune_train")
def _train_step(state, rest, images, months, labels, mask, seed_epoch_step, train_backbone,
                *, static: _Static):
    """One AdamW step on state {"params", "opt"}; the learning rate is in the optimizer
    state. While `train_backbone` is False the backbone and its Adam state are kept as they
    are (its gradient is computed and dropped: one compiled step for both phases rather
    than two compiles, at the price of a full backward pass in the frozen epochs)."""
    seed, epoch, step = seed_epoch_step
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), step)
    params = state["params"]
    loss, grads = jax.value_and_grad(partial(_loss, static=static))(
        params, rest, images, months, labels, mask, rng)
    updates, opt = optimizer(static.adamw).update(grads, state["opt"], params,
                                                  train_backbone=train_backbone)
    return {"params": optax.apply_updates(params, updates), "opt": opt}, loss


def score(preds: np.ndarray, labels: np.ndarray, task: str, num_classes: int | None = None
          ) -> dict[str, float]:
    """Primary = accuracy, exact-match accuracy for multilabel (plus micro-F1), mIoU for
    segmentation (pixels labelled -1 excluded; plus accuracies and macro F1)."""
    validation.check_labels(labels, task=task, num_classes=num_classes,
                            rows=np.shape(preds)[0], split="query")
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

    def predict(self, data, *, split: str | None = None) -> np.ndarray:
        """Predictions of the best state on `data` (an ArraySplit or a dataset of
        EvalSamples): classes (N,), multi-hot (N, C) or class maps (N, H, W). split: its
        name in messages (default: the data's own, else "query")."""
        data = _as_split(data)
        split = split or data.name or "query"
        return self._runner.predict(self.best_state, self._runner.check_query(data, split),
                                    split)

    def evaluate(self, data, *, split: str | None = None) -> dict[str, float]:
        """Scores of the best state on `data` (see `score`)."""
        data = _as_split(data)
        return score(self.predict(data, split=split), data.labels, self.config.task,
                     self.config.num_classes)


def _as_split(data) -> feat.ArraySplit:
    return data if isinstance(data, feat.ArraySplit) else feat.ArraySplit.from_dataset(data)


class _Runner:
    """Holds the model structure, placement and jitted steps of one fine-tuning run."""

    def __init__(self, model, config: FinetuneConfig, train: feat.ArraySplit, devices=None):
        self.config = config
        self.image_shape = train.images.shape[1:]
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

    def init_state(self, lr: float) -> dict:
        """{"params": fresh parameters, "opt": the optimizer's initial state with learning
        rate `lr`}, built on the host (host copies: the train step donates its state, and
        these are the model's own arrays) from the shapes of `optimizer(...).init`, whose
        initial state is all zeros (moments, counts); nothing compiles."""
        params = jax.tree.map(lambda x: np.array(x, copy=True), self.initial)
        shapes = jax.eval_shape(optimizer(self.static.adamw).init, params)
        opt = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
        return set_learning_rate(feat.place_state({"params": params, "opt": opt}, self.mesh),
                                 lr)

    def months(self, split: feat.ArraySplit, idx):
        if not self.config.use_months or split.months is None:
            return None
        return split.months[idx]

    def check_query(self, split: feat.ArraySplit, name: str) -> feat.ArraySplit:
        """A split to predict on: valid images of the fine-tuned sensor and shape."""
        if split.sensor != self.static.sensor:
            raise validation.EvalInputError(f"{name} split: images of sensor {split.sensor!r}, "
                                            f"the model was fine-tuned on "
                                            f"{self.static.sensor!r}")
        validation.check_eval_inputs({name: (split.images, None)}, task=self.config.task,
                                     inputs="images")
        if self.config.task == "segmentation" and split.images.shape[1:] != self.image_shape:
            raise validation.EvalInputError(
                f"{name} split: image shape {split.images.shape[1:]} per row differs from the "
                f"train split's {self.image_shape} (segmentation maps are predicted on the "
                "train grid)")
        return split

    def predict(self, params: dict, split: feat.ArraySplit, name: str = "query") -> np.ndarray:
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
        x = extractor.extract(split, split=name, progress=False).features
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


def learning_rate(state: dict) -> float:
    """The learning rate held in a fine-tuning state's optimizer state."""
    return float(jax.device_get(state["opt"].hyperparams["learning_rate"]))


def set_learning_rate(state: dict, lr: float) -> dict:
    """The state with the optimizer's learning rate set to `lr` (same dtype and placement,
    so the train step does not recompile)."""
    opt = state["opt"]
    old = opt.hyperparams["learning_rate"]
    new = np.asarray(lr, old.dtype)
    if isinstance(old, jax.Array):
        new = jax.device_put(new, old.sharding)
    return {**state, "opt": opt._replace(hyperparams={**opt.hyperparams, "learning_rate": new})}


@partial(jax.jit, static_argnums=0)
def _pixel_predictions(static: _Static, head, x):
    return jnp.argmax(head_logits(static, head, x), axis=-1).astype(jnp.int32)


def _segmentation_geometry(cfg, config: FinetuneConfig, train: feat.ArraySplit) -> SegGeometry:
    """Token grid of the images at the configured patch size, against the label maps."""
    _, h, w = train.images.shape[:3]
    pixels = cfg.layout.patch_pixels(train.sensor, config.patch_size)
    if h % pixels or w % pixels:
        raise ValueError(f"segmentation fine-tuning: {h}x{w} images are not a whole number of "
                         f"{pixels}-pixel patches (patch_size {config.patch_size})")
    grid = (h // pixels, w // pixels)
    return segmentation_geometry(grid[0] * grid[1], train.labels.shape[1:], grid)


_CHECKPOINT_LAYOUT = 2  # 2: {"params", "opt": optax state}; 1 (refused): hand-written AdamW


def _fingerprint(config: FinetuneConfig, train: feat.ArraySplit, valid: feat.ArraySplit) -> str:
    h = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    h.update(f"layout {_CHECKPOINT_LAYOUT}".encode())
    for split in (train, valid):
        h.update(repr((split.sensor, split.images.shape, split.labels.shape)).encode())
        h.update(np.ascontiguousarray(split.labels).tobytes())
        h.update(np.ascontiguousarray(split.images[:: max(1, len(split) // 8)]).tobytes())
    return h.hexdigest()[:16]


def check_splits(train: feat.ArraySplit, valid: feat.ArraySplit, config: FinetuneConfig):
    """Both splits valid and consistent for `config` (see `validation`); raises
    validation.EvalInputError naming the split and rows."""
    if train.sensor != valid.sensor:
        raise validation.EvalInputError(f"valid split: images of sensor {valid.sensor!r}, the "
                                        f"train split's are {train.sensor!r}")
    validation.check_eval_inputs({"train": (train.images, train.labels),
                                  "valid": (valid.images, valid.labels)},
                                 task=config.task, num_classes=config.num_classes,
                                 inputs="images")


def finetune(model, train, valid, *, config: FinetuneConfig = FinetuneConfig(),
             checkpoint_dir=None, stop_after: int | None = None, devices=None,
             progress: bool | None = None) -> FinetuneResult:
    """Fine-tune `model`'s encoder with a linear head on `train`, selecting on `valid`.

    train/valid: ArraySplits or datasets of EvalSamples (loaded into memory). checkpoint_dir:
    where each epoch's state is written and resumed from (None: no checkpoints).
    stop_after: run at most this many epochs in this call (e.g. a preemptible job's slice).
    progress: a tqdm bar on stderr (None: when stderr is a terminal; see `progress.bar`).
    The model itself is not modified. Invalid inputs raise validation.EvalInputError.
    """
    import orbax.checkpoint as ocp

    train, valid = _as_split(train), _as_split(valid)
    check_splits(train, valid, config)
    runner = _Runner(model, config, train, devices)
    state = runner.init_state(config.lr)
    lr, plateau = config.lr, Plateau()
    history: list[dict] = []
    best_metric, best_epoch, best_state = -math.inf, -1, None
    start_epoch = 0
    fingerprint = _fingerprint(config, train, valid)
    mngr = (checkpoint.item_manager(checkpoint_dir, ("state", "meta"))
            if checkpoint_dir is not None else None)
    if mngr is not None and mngr.latest_step() is not None:
        step = mngr.latest_step()
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(f"fine-tuning checkpoint {checkpoint_dir} was written with another "
                             "config, other data or an older layout (fingerprint "
                             f"{meta.get('fingerprint')} != {fingerprint}); use a new directory")
        # host (numpy) trees both ways: Orbax on device arrays replicated over several
        # devices runs (and compiles) slicing ops per array shape
        host = jax.device_get(state)
        template = {"train": host, "best": host["params"]}
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template)))["state"]
        state = feat.place_state(restored["train"], runner.mesh)
        best_state = jax.device_get(restored["best"])
        # the host's float64 learning rate; the optimizer state holds its float32 copy
        lr, plateau = meta["lr"], Plateau(**meta["plateau"])
        history, best_metric, best_epoch = meta["history"], meta["best_metric"], meta["best_epoch"]
        start_epoch = step + 1
        log.info("fine-tuning resumes after epoch %d from %s", step, checkpoint_dir)

    n, bs = len(train), config.batch_size
    steps = -(-n // bs)
    last = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    with progress_lib.bar(config.epochs * steps, "finetune", unit="step",
                          initial=start_epoch * steps, enabled=progress) as bar:
        tracker = progress_lib.DeviceProgress(bar)
        for epoch in range(start_epoch, last):
            bar.set_description(f"finetune epoch {epoch + 1}/{config.epochs}")
            trained = epoch >= config.freeze_epochs
            if config.freeze_epochs and epoch == config.freeze_epochs:
                lr = config.lr * config.unfreeze_lr_factor
                state = set_learning_rate(state, lr)
            order = np.random.default_rng([config.seed, epoch]).permutation(n)
            order = np.concatenate([order, np.full(steps * bs - n, order[-1])])
            losses = []
            for i in range(steps):
                idx = order[i * bs:(i + 1) * bs]
                mask = np.arange(i * bs, (i + 1) * bs) < n
                state, loss = _train_step(
                    state, runner.rest, runner.put_batch(train.images[idx]),
                    runner.put_batch(runner.months(train, idx)),
                    runner.put_batch(train.labels[idx]), runner.put_batch(mask),
                    np.array([config.seed, epoch, i], np.int32), np.bool_(trained),
                    static=runner.static)
                tracker.dispatched(loss)
                losses.append(loss)
            train_loss = float(np.mean(jax.device_get(losses)))
            tracker.finish()
            params = state["params"]
            val = score(runner.predict(params, valid, "valid"), valid.labels, config.task,
                        config.num_classes)
            history.append({"epoch": epoch, "train_loss": train_loss, "lr": lr,
                            "backbone_trained": trained,
                            **{f"val_{k}": v for k, v in val.items()}})
            if val["primary"] > best_metric:  # copies: device_get may alias donated buffers
                best_metric, best_epoch = val["primary"], epoch
                best_state = jax.tree.map(lambda x: np.array(x, copy=True), params)
            plateau, new_lr = plateau_step(plateau, val["primary"], lr, config)
            if new_lr != lr:
                lr = new_lr
                state = set_learning_rate(state, lr)
            bar.set_postfix({"loss": f"{train_loss:.4f}", "val": f"{val['primary']:.4f}",
                             "lr": f"{lr:.3g}"})
            log.info("finetune epoch %d: loss %.4f val %.4f lr %.3g", epoch, train_loss,
                     val["primary"], lr)
            if mngr is not None:
                meta = {"fingerprint": fingerprint, "lr": lr,
                        "plateau": dataclasses.asdict(plateau),
                        "history": history, "best_metric": best_metric,
                        "best_epoch": best_epoch}
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
