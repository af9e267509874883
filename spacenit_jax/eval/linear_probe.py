"""Linear probes on frozen features, with the learning-rate sweep compiled as one program.

What the reference does (spec §9.3/§9.4) and what we do:

- Classification probe: BatchNorm1d(D) -> Linear(D, C). We standardise the features with the
  mean and (biased) variance of the *train* features, eps 1e-5, and no learnable affine (a
  learnable scale/shift in front of a linear layer is absorbed by that layer). This is what
  BatchNorm computes at eval time with exact population statistics; unlike BatchNorm in train
  mode it does not depend on the batch composition, which keeps the probe deterministic.
  Segmentation probes have no normalisation in the reference (`normalize=None` follows that).
- Segmentation probe: Linear(D, C*s*s) per patch token, s = int(sqrt(H*W / T)); each token's
  output is read as (C, s, s), placed at its patch (tokens are row-major over the Hp x Wp
  grid), and the logits are bilinearly resized with align_corners=True to the label size if
  it differs. Loss: cross-entropy with ignore index -1. Multilabel: sigmoid BCE.
- AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.01 on every parameter, like torch's
  default param group). The learning rate is set every iteration by a half-cycle cosine
  with linear warmup over int(0.1*epochs) epochs and floor 1e-5, evaluated at fractional
  epoch e = epoch + i/steps_per_epoch.
- Training runs in chunks of `eval_interval` epochs (default: all epochs in one chunk); each
  chunk starts a fresh AdamW state, ends with a validation pass, and the best-on-validation
  parameters are kept (strict improvement, so the earliest best wins).

Static shapes: an epoch is ceil(N/batch) steps over a permutation of the train set drawn from
(seed, epoch); the last batch is padded with masked slots (weight 0), so every step has the
same shape and the loss of the short batch is the mean over its real samples, as in a torch
loader without drop_last. The whole run (all chunks, epochs, steps, validations) is one
`lax.scan` nest, and the learning-rate sweep is `jax.vmap` over that: one compiled program
trains every learning rate with the same initialisation and the same batch order, so each
sweep member equals a separate single-rate run.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spacenit_jax.eval import metrics, validation

DEFAULT_LRS = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1, 5e-1)
TASKS = ("classification", "multilabel", "segmentation")
_BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Probe hyperparameters; defaults are the reference's (spec §9.3, §9.8)."""

    task: str = "classification"  # "classification" | "multilabel" | "segmentation"
    num_classes: int = 10
    epochs: int = 50
    batch_size: int = 32
    eval_interval: int | None = None  # epochs per chunk (fresh AdamW each); None = epochs
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    min_lr: float = 1e-5
    warmup_fraction: float = 0.1  # warmup epochs = int(warmup_fraction * epochs)
    normalize: bool | None = None  # None: True for (multilabel) classification, False for seg
    eval_batch_size: int = 256
    seed: int = 0
    patch_grid: tuple[int, int] | None = None  # segmentation (Hp, Wp); None = square sqrt(T)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"ProbeConfig.task must be one of {TASKS}, got {self.task!r}")
        for name in ("num_classes", "epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_interval is not None and (
                self.eval_interval < 1 or self.epochs % self.eval_interval):
            raise ValueError(f"ProbeConfig.eval_interval={self.eval_interval} must divide "
                             f"epochs={self.epochs} (chunks must have equal length)")

    @property
    def warmup_epochs(self) -> int:
        return int(self.warmup_fraction * self.epochs)

    @property
    def chunk_epochs(self) -> int:
        return self.eval_interval or self.epochs

    @property
    def standardize(self) -> bool:
        return self.normalize if self.normalize is not None else self.task != "segmentation"


def half_cycle_cosine_lr(epoch, max_lr, epochs: int, warmup_epochs: int, min_lr: float = 1e-5):
    """Learning rate at fractional epoch `epoch`: linear warmup then cosine down to min_lr."""
    epoch = jnp.asarray(epoch, jnp.float32)
    decay = min_lr + (max_lr - min_lr) * 0.5 * (
        1.0 + jnp.cos(jnp.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))
    if warmup_epochs <= 0:
        return decay
    return jnp.where(epoch < warmup_epochs, max_lr * epoch / warmup_epochs, decay)


@dataclasses.dataclass(frozen=True)
class SegGeometry:
    """Token grid (Hp, Wp), pixels per token side s, and the label size (H, W)."""

    grid_h: int
    grid_w: int
    scale: int
    label_h: int
    label_w: int


def segmentation_geometry(num_tokens: int, label_hw: tuple[int, int],
                          patch_grid: tuple[int, int] | None = None) -> SegGeometry:
    """Reference rule s = int(sqrt(H*W / T)); the token grid is square unless given."""
    h, w = label_hw
    if patch_grid is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"segmentation probe: {num_tokens} tokens per sample is not a "
                             "square grid; pass ProbeConfig.patch_grid=(Hp, Wp)")
        patch_grid = (side, side)
    if patch_grid[0] * patch_grid[1] != num_tokens:
        raise ValueError(f"segmentation probe: patch_grid {patch_grid} does not hold "
                         f"{num_tokens} tokens")
    scale = int(math.sqrt(h * w / num_tokens))
    if scale < 1:
        raise ValueError(f"segmentation probe: labels {h}x{w} are smaller than the token grid "
                         f"{patch_grid}")
    return SegGeometry(patch_grid[0], patch_grid[1], scale, h, w)


def _align_corners_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights with align_corners=True sampling."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == 1:
        m[:, 0] = 1.0
        return m
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo).astype(np.float32)
    m[np.arange(n_out), lo] += 1.0 - frac
    m[np.arange(n_out), hi] += frac
    return m


def resize_bilinear_align_corners(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Bilinear resize of (B, H, W, C) with align_corners=True (torch F.interpolate semantics).

    `jax.image.resize` samples at half-pixel centres (align_corners=False), so the separable
    interpolation matrices are built here instead.
    """
    _, h, w, _ = x.shape
    if (h, w) == tuple(size):
        return x
    mh = jnp.asarray(_align_corners_matrix(size[0], h))
    mw = jnp.asarray(_align_corners_matrix(size[1], w))
    x = jnp.einsum("oh,bhwc->bowc", mh, x)
    return jnp.einsum("pw,bowc->bopc", mw, x)


def init_probe_params(seed: int, in_dim: int, out_dim: int) -> dict[str, np.ndarray]:
    """torch nn.Linear default init: weight and bias ~ U(-1/sqrt(D), 1/sqrt(D)).

    Drawn with numpy on the host: it is the same for every learning rate of a sweep, and the
    compiled program then holds no RNG.
    """
    bound = 1.0 / math.sqrt(in_dim)
    rng = np.random.default_rng([seed, 1])
    return {
        "w": rng.uniform(-bound, bound, (in_dim, out_dim)).astype(np.float32),
        "b": rng.uniform(-bound, bound, (out_dim,)).astype(np.float32),
    }


@partial(jax.jit, static_argnames=("enabled",))
def feature_standardizer(x, enabled: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(mean, 1/sqrt(var + 1e-5)) per feature over every axis but the last (train stats)."""
    x = jnp.asarray(x, jnp.float32)
    dim = x.shape[-1]
    if not enabled:
        return jnp.zeros((dim,), jnp.float32), jnp.ones((dim,), jnp.float32)
    flat = x.reshape(-1, dim)
    mean = flat.mean(axis=0)
    var = jnp.mean(jnp.square(flat - mean), axis=0)
    return mean, jax.lax.rsqrt(var + _BN_EPS)


def probe_logits(params, standardizer, x, *, config: ProbeConfig,
                 geometry: SegGeometry | None = None) -> jnp.ndarray:
    """Logits: (B, C) for (multilabel) classification, (B, H, W, C) for segmentation."""
    mean, inv_std = standardizer
    z = (x.astype(jnp.float32) - mean) * inv_std
    out = z @ params["w"] + params["b"]
    if config.task != "segmentation":
        return out
    return token_logits_to_pixels(out, geometry, config.num_classes)


def token_logits_to_pixels(out, g: SegGeometry, num_classes: int) -> jnp.ndarray:
    """(B, Hp*Wp, C*s*s) per-token logits -> (B, H, W, C): each token's s x s pixel block,
    then a bilinear resize (align_corners) to the label size (the reference's head)."""
    b = out.shape[0]
    out = out.reshape(b, g.grid_h, g.grid_w, num_classes, g.scale, g.scale)
    out = out.transpose(0, 1, 4, 2, 5, 3).reshape(b, g.grid_h * g.scale, g.grid_w * g.scale,
                                                  num_classes)
    return resize_bilinear_align_corners(out, (g.label_h, g.label_w))


def _masked_mean(values, weights):
    weights = weights.astype(jnp.float32)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def probe_loss(params, standardizer, x, y, sample_mask, *, config, geometry=None):
    """Mean loss over real samples (and, for segmentation, over pixels with label != -1)."""
    logits = probe_logits(params, standardizer, x, config=config, geometry=geometry)
    if config.task == "multilabel":
        per_sample = optax.sigmoid_binary_cross_entropy(logits, y).mean(axis=-1)
        return _masked_mean(per_sample, sample_mask)
    valid = y != metrics.IGNORE_INDEX
    if config.task == "segmentation":
        valid = valid & sample_mask[:, None, None]
    else:
        valid = valid & sample_mask
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
    return _masked_mean(ce, valid)


def _predict_batch(params, standardizer, x, *, config, geometry):
    logits = probe_logits(params, standardizer, x, config=config, geometry=geometry)
    if config.task == "multilabel":
        return (logits > 0).astype(jnp.int32)  # sigmoid(logit) > 0.5
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _batch_counts(preds, y, mask, *, config):
    """Additive counts from which the primary score is formed (see `_score_from_counts`)."""
    if config.task == "multilabel":
        return metrics.multilabel_counts(preds, y, weights=mask)
    if config.task == "segmentation":
        mask = jnp.broadcast_to(mask[:, None, None], y.shape)
    return metrics.confusion_matrix(preds, y, config.num_classes, weights=mask)


def _zero_counts(config):
    if config.task == "multilabel":
        return jnp.zeros((5,), jnp.int32)
    return jnp.zeros((config.num_classes, config.num_classes), jnp.int32)


def _score_from_counts(counts, *, config):
    if config.task == "multilabel":
        return metrics.micro_f1_from_counts(counts)
    if config.task == "segmentation":
        return metrics.segmentation_scores(counts)["miou"]
    return jnp.trace(counts) / jnp.maximum(jnp.sum(counts), 1)


def _padded_batches(n: int, batch: int):
    """Index/mask arrays (steps, batch) covering 0..n-1 once, padding the tail with masks."""
    steps = -(-n // batch)
    idx = jnp.arange(steps * batch)
    return jnp.minimum(idx, n - 1).reshape(steps, batch), (idx < n).reshape(steps, batch)


def _dataset_counts(params, standardizer, x, y, *, config, geometry):
    idx, mask = _padded_batches(x.shape[0], min(config.eval_batch_size, x.shape[0]))

    def body(acc, batch):
        i, m = batch
        preds = _predict_batch(params, standardizer, x[i], config=config, geometry=geometry)
        return acc + _batch_counts(preds, y[i], m, config=config), None

    counts, _ = jax.lax.scan(body, _zero_counts(config), (idx, mask))
    return counts


def epoch_batches(n: int, config: ProbeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train-row indices (epochs, steps, batch) and validity mask (steps, batch).

    Epoch e visits the rows in the order of numpy's default_rng([seed, e]).permutation(n);
    the last batch of each epoch is padded with masked slots. Drawn on the host so that the
    compiled program holds no RNG, and shared by every learning rate of a sweep.
    """
    steps = -(-n // config.batch_size)
    pad = steps * config.batch_size - n
    order = np.stack([np.random.default_rng([config.seed, e]).permutation(n)
                      for e in range(config.epochs)])
    order = np.pad(order, ((0, 0), (0, pad))).astype(np.int32)
    mask = np.arange(steps * config.batch_size) < n
    return (order.reshape(config.epochs, steps, config.batch_size),
            mask.reshape(steps, config.batch_size))


def _train_one(max_lr, params, batches, batch_mask, train_x, train_y, val_x, val_y,
               standardizer, *, config, geometry, has_val):
    """Train one probe at peak learning rate `max_lr`; returns its best-on-val state."""
    steps = batch_mask.shape[0]
    tx = optax.chain(
        optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.adam_eps),
        optax.add_decayed_weights(config.weight_decay),
    )
    grad_fn = jax.grad(partial(probe_loss, config=config, geometry=geometry))

    def step(carry, inputs):
        params, opt_state, epoch = carry
        i, idx, mask = inputs
        lr = half_cycle_cosine_lr(epoch + i / steps, max_lr, config.epochs,
                                  config.warmup_epochs, config.min_lr)
        grads = grad_fn(params, standardizer, train_x[idx], train_y[idx], mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        return (params, opt_state, epoch), None

    def epoch_fn(carry, inputs):
        epoch, idx = inputs
        params, opt_state = carry
        (params, opt_state, _), _ = jax.lax.scan(
            step, (params, opt_state, epoch.astype(jnp.float32)),
            (jnp.arange(steps, dtype=jnp.float32), idx, batch_mask))
        return (params, opt_state), None

    def chunk_fn(carry, inputs):
        params, best_params, best_score = carry
        epochs, idx = inputs
        (params, _), _ = jax.lax.scan(epoch_fn, (params, tx.init(params)), (epochs, idx))
        if has_val:
            counts = _dataset_counts(params, standardizer, val_x, val_y, config=config,
                                     geometry=geometry)
            score = _score_from_counts(counts, config=config)
        else:
            score = jnp.float32(0.0)
        better = score > best_score
        best_params = jax.tree.map(lambda new, old: jnp.where(better, new, old), params,
                                   best_params)
        return (params, best_params, jnp.maximum(score, best_score)), score

    n_chunks = config.epochs // config.chunk_epochs
    per_chunk = (jnp.arange(config.epochs).reshape(n_chunks, config.chunk_epochs),
                 batches.reshape(n_chunks, config.chunk_epochs, *batches.shape[1:]))
    carry = (params, params, jnp.float32(-jnp.inf))
    (final_params, best_params, best_score), history = jax.lax.scan(chunk_fn, carry, per_chunk)
    if not has_val:
        best_params = final_params
    return best_params, best_score, history


@partial(jax.jit, static_argnames=("config", "geometry", "has_val"))
def _train_sweep(lrs, params, batches, batch_mask, train_x, train_y, val_x, val_y, standardizer,
                 *, config, geometry, has_val):
    train = partial(_train_one, config=config, geometry=geometry, has_val=has_val)
    shared = (None,) * 8
    return jax.vmap(train, in_axes=(0, *shared))(
        lrs, params, batches, batch_mask, train_x, train_y, val_x, val_y, standardizer)


@partial(jax.jit, static_argnames=("config", "geometry"))
def _predict_all(params, standardizer, x, *, config, geometry):
    batch = min(config.eval_batch_size, x.shape[0])
    idx, _ = _padded_batches(x.shape[0], batch)
    preds = jax.lax.map(lambda i: _predict_batch(params, standardizer, x[i], config=config,
                                                 geometry=geometry), idx)
    return preds.reshape(-1, *preds.shape[2:])[: x.shape[0]]


def _check_features(x, config: ProbeConfig, what: str):
    want = "(N, T, D) tokens" if config.task == "segmentation" else "(N, D) features"
    if x.ndim != (3 if config.task == "segmentation" else 2) or x.shape[0] == 0:
        raise ValueError(f"{config.task} probe: {what} needs {want}, got shape {x.shape}")


def _check_labels(x, y, config: ProbeConfig, what: str):
    want = {"classification": "(N,) integer classes",
            "multilabel": f"(N, {config.num_classes}) multi-hot",
            "segmentation": "(N, H, W) integer masks"}[config.task]
    ndim = {"classification": 1, "multilabel": 2, "segmentation": 3}[config.task]
    if y.ndim != ndim or (config.task == "multilabel" and y.shape[1] != config.num_classes):
        raise ValueError(f"{config.task} probe: {what} labels must be {want}, got {y.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"probe: {what} has {x.shape[0]} feature rows but {y.shape[0]} labels")
    if config.task != "multilabel" and y.max() >= config.num_classes:
        raise ValueError(f"probe: {what} labels reach {int(y.max())} but "
                         f"num_classes={config.num_classes}")


def _as_labels(y, config):
    if config.task == "multilabel":
        return jnp.asarray(y, jnp.float32)
    return jnp.asarray(y, jnp.int32)


@dataclasses.dataclass
class ProbeFit:
    """Result of a sweep: one best-on-val parameter set per learning rate (leading axis)."""

    config: ProbeConfig
    lrs: np.ndarray
    params: dict  # numpy {"w": (n_lrs, D, out), "b": (n_lrs, out)}
    standardizer: tuple[jnp.ndarray, jnp.ndarray]
    geometry: SegGeometry | None
    val_scores: np.ndarray | None  # best validation score per lr (None without validation)
    val_history: np.ndarray | None  # (n_lrs, n_chunks) score after each chunk
    best_index: int

    @property
    def best_lr(self) -> float:
        return float(self.lrs[self.best_index])

    def params_at(self, lr_index: int | None = None) -> dict:
        i = self.best_index if lr_index is None else lr_index
        return jax.tree.map(lambda p: p[i], self.params)

    def predict(self, x, lr_index: int | None = None) -> np.ndarray:
        """Integer classes (N,), multi-hot (N, C) or pixel classes (N, H, W)."""
        validation.check_eval_inputs({"query": (x, None)}, task=self.config.task,
                                     feature_dim=self.params["w"].shape[1])
        x = jnp.asarray(x, jnp.float32)
        _check_features(x, self.config, "query")
        return np.asarray(_predict_all(self.params_at(lr_index), self.standardizer, x,
                                       config=self.config, geometry=self.geometry))

    def evaluate(self, x, y, lr_index: int | None = None) -> dict[str, float]:
        """Scores of one sweep member (default: the best on validation) on (x, y).

        "primary" is accuracy (classification), micro-F1 (multilabel) or mIoU (segmentation).
        """
        preds = self.predict(x, lr_index)
        return score_predictions(preds, np.asarray(y), self.config)


def score_predictions(preds, y, config: ProbeConfig) -> dict[str, float]:
    """Host-side scores of predictions from `ProbeFit.predict` (also used by bootstrap)."""
    validation.check_labels(y, task=config.task, num_classes=config.num_classes,
                            rows=np.shape(preds)[0], split="query")
    if config.task == "multilabel":
        f1 = float(metrics.micro_f1(preds, y))
        return {"primary": f1, "micro_f1": f1, "exact_match": float(metrics.exact_match(preds, y))}
    if config.task == "segmentation":
        return metrics.segmentation_summary(preds, y, config.num_classes)
    acc = float(metrics.accuracy(preds, y))
    return {"primary": acc, "accuracy": acc}


def fit_linear_probe(train_x, train_y, val_x=None, val_y=None, *,
                     config: ProbeConfig = ProbeConfig(),
                     lrs=DEFAULT_LRS) -> ProbeFit:
    """Train one probe per learning rate (vmapped, one compiled program) and select on val.

    train_x: (N, D) features, or (N, T, D) patch tokens for segmentation. train_y: (N,) ints,
    (N, C) multi-hot, or (N, H, W) ints with -1 = ignore. Without validation data each lr keeps
    its final state, and a sweep of more than one lr is refused (nothing to select on).
    """
    validation.check_eval_inputs({"train": (train_x, train_y), "valid": (val_x, val_y)},
                                 task=config.task, num_classes=config.num_classes)
    train_x = jnp.asarray(train_x, jnp.float32)
    _check_features(train_x, config, "train")
    _check_labels(train_x, np.asarray(train_y), config, "train")
    has_val = val_x is not None
    if has_val != (val_y is not None):
        raise ValueError("fit_linear_probe: give both val_x and val_y, or neither")
    lrs = np.asarray(lrs, np.float32).reshape(-1)
    if lrs.size == 0 or np.any(lrs <= 0):
        raise ValueError(f"fit_linear_probe: learning rates must be positive, got {lrs}")
    if not has_val and lrs.size > 1:
        raise ValueError("fit_linear_probe: a sweep over several learning rates needs "
                         "validation data (val_x, val_y) to select on")
    geometry = None
    if config.task == "segmentation":
        geometry = segmentation_geometry(train_x.shape[1], np.shape(train_y)[1:],
                                         config.patch_grid)
    train_y = _as_labels(train_y, config)
    if has_val:
        val_x = jnp.asarray(val_x, jnp.float32)
        _check_features(val_x, config, "validation")
        _check_labels(val_x, np.asarray(val_y), config, "validation")
        val_y = _as_labels(val_y, config)
    else:  # placeholders of the right rank; never read
        val_x = jnp.zeros((1, *train_x.shape[1:]), jnp.float32)
        val_y = jnp.zeros((1, *train_y.shape[1:]), train_y.dtype)
    standardizer = feature_standardizer(train_x, config.standardize)
    out_dim = config.num_classes * (geometry.scale ** 2 if geometry else 1)
    init = init_probe_params(config.seed, train_x.shape[-1], out_dim)
    batches, batch_mask = epoch_batches(train_x.shape[0], config)
    params, best, history = _train_sweep(
        jnp.asarray(lrs), init, jnp.asarray(batches), jnp.asarray(batch_mask), train_x, train_y,
        val_x, val_y, standardizer, config=config, geometry=geometry, has_val=has_val)
    val_scores = np.asarray(best) if has_val else None
    best_index = int(np.argmax(val_scores)) if has_val else 0
    params = jax.tree.map(np.asarray, params)
    return ProbeFit(config, lrs, params, standardizer, geometry, val_scores,
                    np.asarray(history) if has_val else None, best_index)
