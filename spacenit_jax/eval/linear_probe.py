"""Linear probes on frozen features: classification, multilabel, segmentation, regression.

Three recipes (`ProbeConfig.recipe`), each reported with the score it produced:

- "lbfgs" (default for classification, multilabel and segmentation): the L2-regularised
  logistic (softmax / sigmoid) loss minimised to convergence with full-batch L-BFGS
  (`optax.lbfgs` with its zoom line search), from zero weights, on standardised features.
  The objective is mean loss + ||W||^2 / (2 C N) (N = training samples; the bias is not
  penalised), i.e. scikit-learn's LogisticRegression objective divided by N, so C has
  scikit-learn's meaning (default 1.0). With validation data every C of `cs` is fitted
  (one vmapped program, run in blocks of iterations so that progress shows) and the best
  on validation is kept; stopping: gradient norm below `tol` or `max_iter` iterations.
  Segmentation uses the mean loss over labelled pixels. Full-batch passes run over fixed-size chunks of rows under `jax.checkpoint`, so memory
  is bounded by the chunk, not the dataset.
- "ridge" (default for regression): closed-form L2-regularised least squares,
  minimising sum of squared errors + alpha ||W||^2 (scikit-learn's Ridge objective, bias
  not penalised), solved in float64 on the host from X^T X accumulated on the device,
  for every alpha of `alphas`; the best validation RMSE wins.
- "reference_adamw": the original's recipe, kept for comparability with published numbers
  (it stops before convergence: on scikit-learn's digits it scores 2.1 points below the
  converged logistic regression, `python -m launch.benchmark_eval --probe-recipes`).
  Classification probe BatchNorm1d(D) -> Linear(D, C): the features are standardised
  with the train mean and biased variance, eps 1e-5, no learnable affine (absorbed by the
  linear layer; BatchNorm at eval time with exact population statistics).
  AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.01 on every parameter), torch's
  nn.Linear init U(+-1/sqrt(D)), learning rate set every iteration by a half-cycle cosine
  with linear warmup over int(0.1*epochs) epochs and floor 1e-5 at fractional epoch
  e = epoch + i/steps_per_epoch; training in chunks of `eval_interval` epochs, each with a
  fresh AdamW state and a validation pass, keeping the best chunk (strict improvement).
  Segmentation probes are not standardised in this recipe (as in the original). Every
  learning rate of `lrs` is trained by one vmapped epoch program (compiled once, driven
  epoch by epoch so that progress shows) with the same initialisation and batch order; the
  last batch of an epoch is padded with masked slots, so each step has one shape.
  Regression under this recipe uses the mean squared error.

Heads. Classification / multilabel / pooled regression: Linear(D, C). Segmentation and
dense regression: Linear(D, C*s*s) per patch token, s = int(sqrt(H*W / T)); each token's
output is read as (C, s, s), placed at its patch (tokens row-major over the Hp x Wp grid),
and the map is resized bilinearly with align_corners=True to the label size if it differs.
Labels: (N,) classes, (N, C) multi-hot, (N, H, W) class maps with -1 = ignore, regression
targets (N, K) or (N, H, W, K) (or (N,) / (N, H, W) for one output), finite.
Scores: accuracy, micro-F1 (+ exact match), mIoU (+ accuracies, macro-F1), RMSE (+ MAE;
lower is better).
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

RECIPES = ("lbfgs", "ridge", "reference_adamw")
TASKS = ("classification", "multilabel", "segmentation", "regression")
DEFAULT_LRS = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1, 5e-1)  # reference_adamw sweep
DEFAULT_CS = (0.01, 0.1, 1.0, 10.0, 100.0)  # lbfgs inverse L2 strengths (sklearn's C)
DEFAULT_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # ridge L2 strengths
GRID_NAMES = {"lbfgs": "C", "ridge": "alpha", "reference_adamw": "lr"}
_BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Probe hyperparameters (see the module docstring for each recipe).

    num_classes: classes, or target channels K for regression. recipe None: "ridge" for
    regression, "lbfgs" otherwise. The reference_adamw fields keep the original's defaults.
    """

    task: str = "classification"  # "classification" | "multilabel" | "segmentation" | "regression"
    num_classes: int = 10
    recipe: str | None = None
    # lbfgs
    cs: tuple[float, ...] = DEFAULT_CS
    max_iter: int = 1000
    tol: float = 1e-5  # gradient norm of the mean objective
    # ridge
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    # full-batch passes (lbfgs, ridge): rows per chunk (samples; for dense tasks, the
    # samples whose output maps hold at most chunk_size * 1024 values)
    chunk_size: int = 1024
    # reference_adamw
    lrs: tuple[float, ...] = DEFAULT_LRS
    epochs: int = 50
    batch_size: int = 32
    eval_interval: int | None = None  # epochs per chunk (fresh AdamW each); None = epochs
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    min_lr: float = 1e-5
    warmup_fraction: float = 0.1  # warmup epochs = int(warmup_fraction * epochs)
    normalize: bool | None = None  # None: recipe default (see standardize)
    eval_batch_size: int = 256
    seed: int = 0
    patch_grid: tuple[int, int] | None = None  # dense tasks (Hp, Wp); None = square sqrt(T)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"ProbeConfig.task must be one of {TASKS}, got {self.task!r}")
        recipe = self.recipe or ("ridge" if self.task == "regression" else "lbfgs")
        if recipe not in RECIPES:
            raise ValueError(f"ProbeConfig.recipe must be one of {RECIPES}, got {recipe!r}")
        if recipe == "ridge" and self.task != "regression":
            raise ValueError(f"recipe 'ridge' is for regression; a {self.task} probe takes "
                             "'lbfgs' or 'reference_adamw'")
        if recipe == "lbfgs" and self.task == "regression":
            raise ValueError("a regression probe takes recipe 'ridge' (closed form) or "
                             "'reference_adamw'")
        object.__setattr__(self, "recipe", recipe)
        for name in ("num_classes", "epochs", "batch_size", "eval_batch_size", "max_iter",
                     "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_interval is not None and (
                self.eval_interval < 1 or self.epochs % self.eval_interval):
            raise ValueError(f"ProbeConfig.eval_interval={self.eval_interval} must divide "
                             f"epochs={self.epochs} (chunks must have equal length)")
        for name in ("cs", "alphas", "lrs"):
            values = tuple(float(v) for v in getattr(self, name))
            if not values or any(not v > 0 for v in values):
                raise ValueError(f"ProbeConfig.{name} must be positive numbers, got {values}")
            object.__setattr__(self, name, values)

    @property
    def warmup_epochs(self) -> int:
        return int(self.warmup_fraction * self.epochs)

    @property
    def chunk_epochs(self) -> int:
        return self.eval_interval or self.epochs

    @property
    def standardize(self) -> bool:
        if self.normalize is not None:
            return self.normalize
        return self.recipe != "reference_adamw" or self.task != "segmentation"

    @property
    def grid_name(self) -> str:
        """The swept hyperparameter: "C" (lbfgs), "alpha" (ridge) or "lr" (reference)."""
        return GRID_NAMES[self.recipe]

    @property
    def grid(self) -> tuple[float, ...]:
        return {"lbfgs": self.cs, "ridge": self.alphas, "reference_adamw": self.lrs}[self.recipe]

    @property
    def primary(self) -> str:
        return {"classification": "accuracy", "multilabel": "micro_f1",
                "segmentation": "miou", "regression": "rmse"}[self.task]


def half_cycle_cosine_lr(epoch, max_lr, epochs: int, warmup_epochs: int, min_lr: float = 1e-5):
    """Learning rate at fractional epoch `epoch`: linear warmup then cosine down to min_lr."""
    epoch = jnp.asarray(epoch, jnp.float32)
    decay = min_lr + (max_lr - min_lr) * 0.5 * (
        1.0 + jnp.cos(jnp.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))
    if warmup_epochs <= 0:
        return decay
    return jnp.where(epoch < warmup_epochs, max_lr * epoch / warmup_epochs, decay)


# --------------------------------------------------------------------------- dense heads


@dataclasses.dataclass(frozen=True)
class SegGeometry:
    """Token grid (Hp, Wp), pixels per token side s, and the label size (H, W)."""

    grid_h: int
    grid_w: int
    scale: int
    label_h: int
    label_w: int

    @property
    def exact(self) -> bool:
        """True when the s x s blocks tile the labels exactly (no resize)."""
        return (self.grid_h * self.scale, self.grid_w * self.scale) == (self.label_h,
                                                                        self.label_w)


def segmentation_geometry(num_tokens: int, label_hw: tuple[int, int],
                          patch_grid: tuple[int, int] | None = None) -> SegGeometry:
    """Reference rule s = int(sqrt(H*W / T)); the token grid is square unless given."""
    h, w = label_hw
    if patch_grid is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"dense probe: {num_tokens} tokens per sample is not a square "
                             "grid; pass ProbeConfig.patch_grid=(Hp, Wp)")
        patch_grid = (side, side)
    if patch_grid[0] * patch_grid[1] != num_tokens:
        raise ValueError(f"dense probe: patch_grid {patch_grid} does not hold {num_tokens} "
                         "tokens")
    scale = int(math.sqrt(h * w / num_tokens))
    if scale < 1:
        raise ValueError(f"dense probe: labels {h}x{w} are smaller than the token grid "
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


def token_logits_to_pixels(out, g: SegGeometry, num_classes: int) -> jnp.ndarray:
    """(B, Hp*Wp, C*s*s) per-token outputs -> (B, H, W, C): each token's s x s pixel block,
    then a bilinear resize (align_corners) to the label size (the reference's head)."""
    b = out.shape[0]
    out = out.reshape(b, g.grid_h, g.grid_w, num_classes, g.scale, g.scale)
    out = out.transpose(0, 1, 4, 2, 5, 3).reshape(b, g.grid_h * g.scale, g.grid_w * g.scale,
                                                  num_classes)
    return resize_bilinear_align_corners(out, (g.label_h, g.label_w))


def pixels_to_token_blocks(y: np.ndarray, g: SegGeometry) -> np.ndarray:
    """Inverse of the block placement for exact geometries: (N, H, W, K) -> (N, T, K*s*s)
    in the head's output order (channel-major, then rows and columns of the block)."""
    n, k = y.shape[0], y.shape[-1]
    y = y.reshape(n, g.grid_h, g.scale, g.grid_w, g.scale, k)
    return y.transpose(0, 1, 3, 5, 2, 4).reshape(n, g.grid_h * g.grid_w, k * g.scale ** 2)


# --------------------------------------------------------------------------- shared pieces


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
    """Outputs: (B, C) pooled, (B, H, W, C) dense (segmentation, dense regression)."""
    mean, inv_std = standardizer
    z = (x.astype(jnp.float32) - mean) * inv_std
    out = z @ params["w"] + params["b"]
    if geometry is None:
        return out
    return token_logits_to_pixels(out, geometry, config.num_classes)


def _masked_mean(values, weights):
    weights = weights.astype(jnp.float32)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _loss_terms(logits, y, sample_mask, config):
    """(sum of per-item losses, item count) of one batch; items are samples (classification,
    multilabel), labelled pixels (segmentation) or finite target values (regression)."""
    mask = sample_mask.astype(bool)
    if config.task == "multilabel":
        per = optax.sigmoid_binary_cross_entropy(logits, y).sum(axis=-1)
        return jnp.sum(jnp.where(mask, per, 0.0)), jnp.sum(mask).astype(jnp.float32)
    if config.task == "regression":
        valid = jnp.isfinite(y) & mask.reshape(mask.shape + (1,) * (y.ndim - 1))
        err = jnp.where(valid, logits - jnp.where(valid, y, 0.0), 0.0)
        return jnp.sum(err * err), jnp.sum(valid).astype(jnp.float32)
    valid = (y != metrics.IGNORE_INDEX) & mask.reshape(mask.shape + (1,) * (y.ndim - 1))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
    return jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(valid).astype(jnp.float32)


def probe_loss(params, standardizer, x, y, sample_mask, *, config, geometry=None):
    """Mean loss of a batch over its real items (the reference_adamw training loss).

    Classification and segmentation: cross-entropy over labels != -1; multilabel: the
    per-sample mean of sigmoid BCE over classes; regression: mean squared error over
    finite targets.
    """
    logits = probe_logits(params, standardizer, x, config=config, geometry=geometry)
    if config.task == "multilabel":
        per_sample = optax.sigmoid_binary_cross_entropy(logits, y).mean(axis=-1)
        return _masked_mean(per_sample, sample_mask)
    total, count = _loss_terms(logits, y, sample_mask, config)
    return total / jnp.maximum(count, 1.0)


def _predict_batch(params, standardizer, x, *, config, geometry):
    logits = probe_logits(params, standardizer, x, config=config, geometry=geometry)
    if config.task == "regression":
        return logits
    if config.task == "multilabel":
        return (logits > 0).astype(jnp.int32)  # sigmoid(logit) > 0.5
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _batch_counts(preds, y, mask, *, config):
    """Additive counts from which the primary score is formed (see `_score_from_counts`)."""
    if config.task == "multilabel":
        return metrics.multilabel_counts(preds, y, weights=mask)
    if config.task == "regression":
        return metrics.regression_counts(preds, y, weights=mask)
    if config.task == "segmentation":
        mask = jnp.broadcast_to(mask[:, None, None], y.shape)
    return metrics.confusion_matrix(preds, y, config.num_classes, weights=mask)


def _zero_counts(config):
    if config.task == "multilabel":
        return jnp.zeros((5,), jnp.int32)
    if config.task == "regression":
        return jnp.zeros((3,), jnp.float32)
    return jnp.zeros((config.num_classes, config.num_classes), jnp.int32)


def _score_from_counts(counts, *, config):
    """Selection score, higher is better (negated RMSE for regression)."""
    if config.task == "multilabel":
        return metrics.micro_f1_from_counts(counts)
    if config.task == "regression":
        return -metrics.rmse_from_counts(counts)
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


# --------------------------------------------------------------------------- reference_adamw


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


def _adamw(config: ProbeConfig):
    return optax.chain(
        optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.adam_eps),
        optax.add_decayed_weights(config.weight_decay),
    )


def _train_epoch(max_lr, params, opt_state, epoch, idx, batch_mask, train_x, train_y,
                 standardizer, *, config, geometry):
    """One epoch of one probe at peak learning rate `max_lr` (a scan over its steps)."""
    steps = batch_mask.shape[0]
    tx = _adamw(config)
    grad_fn = jax.grad(partial(probe_loss, config=config, geometry=geometry))

    def step(carry, inputs):
        params, opt_state = carry
        i, batch, mask = inputs
        lr = half_cycle_cosine_lr(epoch + i / steps, max_lr, config.epochs,
                                  config.warmup_epochs, config.min_lr)
        grads = grad_fn(params, standardizer, train_x[batch], train_y[batch], mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        return (params, opt_state), None

    (params, opt_state), _ = jax.lax.scan(
        step, (params, opt_state), (jnp.arange(steps, dtype=jnp.float32), idx, batch_mask))
    return params, opt_state


@partial(jax.jit, static_argnames=("config", "geometry"), donate_argnums=(1, 2))
def _sweep_epoch(lrs, params, opt_state, epoch, idx, batch_mask, train_x, train_y,
                 standardizer, *, config, geometry):
    """One epoch of every learning rate of the sweep (vmapped, same batches)."""
    fn = partial(_train_epoch, config=config, geometry=geometry)
    return jax.vmap(fn, in_axes=(0, 0, 0) + (None,) * 6)(
        lrs, params, opt_state, epoch, idx, batch_mask, train_x, train_y, standardizer)


@partial(jax.jit, static_argnames=("config",))
def _sweep_init(params, *, config):
    return jax.vmap(_adamw(config).init)(params)


@partial(jax.jit, static_argnames=("config", "geometry"))
def _sweep_select(params, best_params, best_score, val_x, val_y, standardizer, *, config,
                  geometry):
    """Validation score of each sweep member; keep its parameters on strict improvement."""

    def one(p, best_p, best_s):
        counts = _dataset_counts(p, standardizer, val_x, val_y, config=config, geometry=geometry)
        score = _score_from_counts(counts, config=config).astype(jnp.float32)
        better = score > best_s
        best_p = jax.tree.map(lambda new, old: jnp.where(better, new, old), p, best_p)
        return best_p, jnp.maximum(score, best_s), score

    return jax.vmap(one)(params, best_params, best_score)


def _fit_reference(grid, init, train_x, train_y, val_x, val_y, standardizer, config, geometry,
                   has_val, bar):
    """The original's recipe for every learning rate at once; epochs are driven from here
    (one compiled epoch program) so that progress can be shown; chunks of eval_interval
    epochs each start a fresh AdamW state and end with a validation pass."""
    n = len(grid)
    lrs = jnp.asarray(grid, jnp.float32)
    params = jax.tree.map(lambda p: jnp.broadcast_to(jnp.asarray(p), (n, *p.shape)), init)
    params = jax.tree.map(jnp.array, params)  # own buffers (donated below)
    best_params = jax.tree.map(jnp.copy, params)
    best_score = jnp.full((n,), -jnp.inf, jnp.float32)
    batches, batch_mask = epoch_batches(train_x.shape[0], config)
    batch_mask = jnp.asarray(batch_mask)
    history = []
    for start in range(0, config.epochs, config.chunk_epochs):
        opt_state = _sweep_init(params, config=config)
        for epoch in range(start, start + config.chunk_epochs):
            params, opt_state = _sweep_epoch(
                lrs, params, opt_state, jnp.float32(epoch), jnp.asarray(batches[epoch]),
                batch_mask, train_x, train_y, standardizer, config=config, geometry=geometry)
            bar.update(1)
        if has_val:
            best_params, best_score, score = _sweep_select(
                params, best_params, best_score, val_x, val_y, standardizer, config=config,
                geometry=geometry)
            history.append(score)
    if not has_val:
        return params, None, None
    return best_params, np.asarray(best_score), np.stack([np.asarray(h) for h in history], 1)


# --------------------------------------------------------------------------- lbfgs


def _chunk_rows(config: ProbeConfig, n: int, geometry: SegGeometry | None) -> int:
    """Rows per full-batch chunk: chunk_size samples, or for dense heads as many samples
    as keep a chunk's output maps at chunk_size * 1024 values."""
    if geometry is None:
        return max(1, min(n, config.chunk_size))
    per_sample = geometry.label_h * geometry.label_w * config.num_classes
    return max(1, min(n, config.chunk_size * 1024 // per_sample))


def _chunked(a, chunk: int):
    """(n_chunks, chunk, ...) zero-padded rows and the (n_chunks, chunk) validity mask."""
    n = a.shape[0]
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    padded = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1))
    mask = (jnp.arange(n_chunks * chunk) < n).reshape(n_chunks, chunk)
    return padded.reshape(n_chunks, chunk, *a.shape[1:]), mask


def _full_batch_objective(params, c, xs, ys, masks, standardizer, n_samples, *, config,
                          geometry):
    """Mean loss over every training item + ||W||^2 / (2 C N); one chunk at a time."""

    blocks = geometry is not None and geometry.exact and config.task == "segmentation"

    @jax.checkpoint
    def chunk_terms(params, x, y, m):
        if blocks:  # labels already in token-block layout: no pixel transposes per pass
            return _block_terms(params, standardizer, x, y, m, config)
        logits = probe_logits(params, standardizer, x, config=config, geometry=geometry)
        return _loss_terms(logits, y, m, config)

    def body(acc, inputs):
        total, count = chunk_terms(params, *inputs)
        return (acc[0] + total, acc[1] + count), None

    (total, count), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)), (xs, ys, masks))
    data = total / jnp.maximum(count, 1.0)
    return data + jnp.sum(jnp.square(params["w"])) / (2.0 * c * n_samples)


def _block_terms(params, standardizer, x, y, mask, config):
    """Segmentation loss terms with labels laid out as (B, T, s*s) token blocks (exact
    geometry): the head's (B, T, C*s*s) outputs are read as (B, T, C, s*s)."""
    mean, inv_std = standardizer
    out = ((x.astype(jnp.float32) - mean) * inv_std) @ params["w"] + params["b"]
    logp = jax.nn.log_softmax(out.reshape(*out.shape[:2], config.num_classes, -1), axis=2)
    valid = (y != metrics.IGNORE_INDEX) & mask[:, None, None]
    picked = jnp.take_along_axis(logp, jnp.maximum(y, 0)[:, :, None, :], axis=2)[:, :, 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)), jnp.sum(valid).astype(jnp.float32)


_LBFGS_BLOCK = 25  # iterations per compiled call (progress granularity)


def _lbfgs_objective(c, xs, ys, masks, standardizer, n_samples, config, geometry):
    return partial(_full_batch_objective, c=c, xs=xs, ys=ys, masks=masks,
                   standardizer=standardizer, n_samples=n_samples, config=config,
                   geometry=geometry)


@partial(jax.jit, static_argnames=("config", "geometry"))
def _lbfgs_block(cs, params, state, grad_norm, xs, ys, masks, standardizer, n_samples, *,
                 config, geometry):
    """Up to _LBFGS_BLOCK more L-BFGS iterations of every C (vmapped; members that have
    converged stay as they are)."""
    opt = optax.lbfgs()

    def one(c, params, state, grad_norm):
        objective = _lbfgs_objective(c, xs, ys, masks, standardizer, n_samples, config,
                                     geometry)
        value_and_grad = optax.value_and_grad_from_state(objective)
        stop = jnp.minimum(optax.tree.get(state, "count") + _LBFGS_BLOCK, config.max_iter)

        def step(carry):
            params, state, _ = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                        value_fn=objective)
            # the line search stores the gradient at the new parameters in the state
            return (optax.apply_updates(params, updates), state,
                    optax.tree.norm(optax.tree.get(state, "grad")))

        def keep_going(carry):
            _, state, norm = carry
            count = optax.tree.get(state, "count")
            return (count == 0) | ((count < stop) & (norm >= config.tol))

        return jax.lax.while_loop(keep_going, step, (params, state, grad_norm))

    return jax.vmap(one)(cs, params, state, grad_norm)


@partial(jax.jit, static_argnames=("config", "geometry", "has_val"))
def _lbfgs_finish(cs, params, xs, ys, masks, val_x, val_y, standardizer, n_samples, *, config,
                  geometry, has_val):
    """(validation score, gradient norm at the solution) of every C."""

    def one(c, params):
        objective = _lbfgs_objective(c, xs, ys, masks, standardizer, n_samples, config,
                                     geometry)
        norm = optax.tree.norm(jax.grad(objective)(params))
        if not has_val:
            return jnp.float32(0.0), norm
        counts = _dataset_counts(params, standardizer, val_x, val_y, config=config,
                                 geometry=geometry)
        return _score_from_counts(counts, config=config).astype(jnp.float32), norm

    return jax.vmap(one)(cs, params)


def _fit_lbfgs(grid, train_x, train_y, val_x, val_y, standardizer, config, geometry, has_val,
               out_dim, bar):
    n = len(grid)
    cs = jnp.asarray(grid, jnp.float32)
    params = {"w": jnp.zeros((n, train_x.shape[-1], out_dim), jnp.float32),
              "b": jnp.zeros((n, out_dim), jnp.float32)}
    state = jax.vmap(optax.lbfgs().init)(params)
    norm = jnp.full((n,), jnp.inf, jnp.float32)
    rows = _chunk_rows(config, train_x.shape[0], geometry)
    xs, masks = _chunked(train_x, rows)
    if geometry is not None and geometry.exact and config.task == "segmentation":
        train_y = jnp.asarray(pixels_to_token_blocks(np.asarray(train_y)[..., None], geometry))
    ys, _ = _chunked(train_y, rows)
    n_samples = jnp.float32(train_x.shape[0])
    done = 0
    while True:
        params, state, norm = _lbfgs_block(cs, params, state, norm, xs, ys, masks,
                                           standardizer, n_samples, config=config,
                                           geometry=geometry)
        count = np.asarray(optax.tree.get(state, "count"))
        bar.update(int(count.max()) - done)
        done = int(count.max())
        converged = (np.asarray(norm) < config.tol) & (count > 0)
        if np.all(converged | (count >= config.max_iter)):
            break
    scores, norms = _lbfgs_finish(cs, params, xs, ys, masks, val_x, val_y, standardizer,
                                  n_samples, config=config, geometry=geometry, has_val=has_val)
    return params, (np.asarray(scores) if has_val else None), count, np.asarray(norms)


# --------------------------------------------------------------------------- ridge


@jax.jit
def _gram(xs, ys, masks, standardizer):
    """Sufficient statistics of least squares with a bias column, chunk by chunk:
    G = Z^T Z (D+1, D+1) and Z^T y (K, D+1), Z the standardised features and a ones column."""
    mean, inv_std = standardizer
    d, k = xs.shape[-1], ys.shape[-1]
    hp = jax.lax.Precision.HIGHEST

    def body(acc, inputs):
        g, zty = acc
        x, y, m = inputs
        z = (x - mean) * inv_std
        z = jnp.concatenate([z, jnp.ones(z.shape[:-1] + (1,), z.dtype)], axis=-1)
        z = jnp.where(m[:, None], z, 0.0)  # padded rows add nothing
        g = g + jnp.einsum("ri,rj->ij", z, z, precision=hp)
        return (g, zty + jnp.einsum("rk,ri->ki", jnp.where(m[:, None], y, 0.0), z,
                                    precision=hp)), None

    init = (jnp.zeros((d + 1, d + 1), jnp.float32), jnp.zeros((k, d + 1), jnp.float32))
    out, _ = jax.lax.scan(body, init, (xs, ys, masks))
    return out


def _ridge_solutions(g: np.ndarray, zty: np.ndarray, alphas) -> np.ndarray:
    """(n_alphas, D+1, K) minimisers of ||Z w - y||^2 + alpha ||w[:D]||^2 (bias free)."""
    g, zty = np.asarray(g, np.float64), np.asarray(zty, np.float64)
    penalty = np.ones(g.shape[0])
    penalty[-1] = 0.0
    # lstsq: a singular system (e.g. a constant feature) still has its minimum-norm solution
    return np.stack([np.linalg.lstsq(g + alpha * np.diag(penalty), zty.T, rcond=None)[0]
                     for alpha in alphas])


# --------------------------------------------------------------------------- checks


def _check_features(x, config: ProbeConfig, what: str, dense: bool | None = None):
    if dense is None:
        dense = config.task == "segmentation"
    want = "(N, T, D) tokens" if dense else "(N, D) features"
    if x.ndim != (3 if dense else 2) or x.shape[0] == 0:
        raise ValueError(f"{config.task} probe: {what} needs {want}, got shape {x.shape}")


def _as_targets(y, x, config: ProbeConfig, what: str) -> np.ndarray:
    """Regression targets as (N, K) (pooled) or (N, H, W, K) (dense), float32."""
    y = np.asarray(y, np.float32)
    dense = x.ndim == 3
    if dense and y.ndim == 3 or not dense and y.ndim == 1:
        y = y[..., None]
    want = "(N, H, W, K) maps" if dense else "(N, K) targets"
    if y.ndim != (4 if dense else 2) or y.shape[-1] != config.num_classes:
        raise ValueError(f"regression probe: {what} targets must be {want} with "
                         f"K={config.num_classes}, got {np.shape(y)}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"probe: {what} has {x.shape[0]} feature rows but {y.shape[0]} "
                         "targets")
    return y


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
    if config.task == "regression":
        return jnp.asarray(y, jnp.float32)
    return jnp.asarray(y, jnp.int32)


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class ProbeFit:
    """Result of a sweep: one parameter set per grid value (leading axis).

    grid: the swept values of `config.grid_name` ("C", "alpha" or "lr"); val_scores: the
    validation score of each (higher is better; negated RMSE for regression), None without
    validation. iterations / grad_norms (lbfgs): L-BFGS iterations used and the final
    gradient norm of each fit (convergence check).
    """

    config: ProbeConfig
    grid: np.ndarray
    params: dict  # numpy {"w": (n_grid, D, out), "b": (n_grid, out)}
    standardizer: tuple[jnp.ndarray, jnp.ndarray]
    geometry: SegGeometry | None
    val_scores: np.ndarray | None
    val_history: np.ndarray | None  # reference_adamw: (n_grid, n_chunks) score per chunk
    best_index: int
    iterations: np.ndarray | None = None
    grad_norms: np.ndarray | None = None

    @property
    def recipe(self) -> str:
        return self.config.recipe

    @property
    def best_value(self) -> float:
        """The selected value of the swept hyperparameter."""
        return float(self.grid[self.best_index])

    @property
    def lrs(self) -> np.ndarray:  # reference_adamw name of the grid
        return self.grid

    @property
    def best_lr(self) -> float:
        return self.best_value

    def hyperparameters(self) -> dict:
        """What produced the selected probe, for result rows."""
        out = {"recipe": self.recipe, self.config.grid_name: float(f"{self.best_value:.6g}")}
        if self.recipe == "lbfgs" and self.iterations is not None:
            out["iterations"] = int(self.iterations[self.best_index])
        if self.recipe == "reference_adamw":
            out.update(epochs=self.config.epochs, batch_size=self.config.batch_size)
        return out

    def params_at(self, index: int | None = None) -> dict:
        i = self.best_index if index is None else index
        return jax.tree.map(lambda p: p[i], self.params)

    def predict(self, x, lr_index: int | None = None) -> np.ndarray:
        """Classes (N,), multi-hot (N, C), pixel classes (N, H, W), or regression values
        (N, K) / (N, H, W, K). lr_index: a grid index (default: the selected one)."""
        validation.check_eval_inputs({"query": (x, None)}, task=self.config.task,
                                     feature_dim=self.params["w"].shape[1],
                                     dense=self.geometry is not None)
        x = jnp.asarray(x, jnp.float32)
        _check_features(x, self.config, "query", self.geometry is not None)
        return np.asarray(_predict_all(self.params_at(lr_index), self.standardizer, x,
                                       config=self.config, geometry=self.geometry))

    def evaluate(self, x, y, lr_index: int | None = None) -> dict[str, float]:
        """Scores of one sweep member (default: the selected one) on (x, y).

        "primary" is accuracy, micro-F1, mIoU or RMSE (by task).
        """
        preds = self.predict(x, lr_index)
        if self.config.task == "regression":
            y = _as_targets(y, np.asarray(x), self.config, "query")
        return score_predictions(preds, np.asarray(y), self.config)


@partial(jax.jit, static_argnames=("config", "geometry"))
def _predict_all(params, standardizer, x, *, config, geometry):
    batch = min(config.eval_batch_size, x.shape[0])
    idx, _ = _padded_batches(x.shape[0], batch)
    preds = jax.lax.map(lambda i: _predict_batch(params, standardizer, x[i], config=config,
                                                 geometry=geometry), idx)
    return preds.reshape(-1, *preds.shape[2:])[: x.shape[0]]


def score_predictions(preds, y, config: ProbeConfig) -> dict[str, float]:
    """Host-side scores of predictions from `ProbeFit.predict` (also used by bootstrap)."""
    dense = config.task == "regression" and np.ndim(preds) > 2
    validation.check_labels(y, task=config.task, num_classes=config.num_classes,
                            rows=np.shape(preds)[0], split="query", dense=dense)
    if config.task == "multilabel":
        f1 = float(metrics.micro_f1(preds, y))
        return {"primary": f1, "micro_f1": f1, "exact_match": float(metrics.exact_match(preds, y))}
    if config.task == "segmentation":
        return metrics.segmentation_summary(preds, y, config.num_classes)
    if config.task == "regression":
        return metrics.regression_summary(preds, np.asarray(y, np.float32).reshape(
            np.shape(preds)))
    acc = float(metrics.accuracy(preds, y))
    return {"primary": acc, "accuracy": acc}


# --------------------------------------------------------------------------- entry point


def fit_linear_probe(train_x, train_y, val_x=None, val_y=None, *,
                     config: ProbeConfig = ProbeConfig(), lrs=None, grid=None,
                     progress: bool | None = None) -> ProbeFit:
    """Fit one probe per value of the recipe's grid and select on validation data.

    train_x: (N, D) features, or (N, T, D) patch tokens for segmentation and dense
    regression. train_y: see the module docstring. grid: the values of the swept
    hyperparameter (default: config.cs / alphas / lrs by recipe); lrs: the same, for the
    reference_adamw recipe. Without validation data a grid of one value is required
    (nothing to select on) and that fit is returned. progress: a tqdm bar with ETA (L-BFGS
    iterations, or epochs) on stderr; None shows it on a terminal only.
    """
    validation.check_eval_inputs({"train": (train_x, train_y), "valid": (val_x, val_y)},
                                 task=config.task, num_classes=config.num_classes,
                                 dense=config.task == "regression" and np.ndim(train_x) == 3)
    if lrs is not None:
        if config.recipe != "reference_adamw":
            raise ValueError(f"fit_linear_probe: lrs= is for recipe 'reference_adamw'; the "
                             f"{config.recipe!r} recipe sweeps {config.grid_name} (grid=)")
        grid = lrs
    grid = np.asarray(config.grid if grid is None else grid, np.float64).reshape(-1)
    if grid.size == 0 or np.any(~(grid > 0)):
        raise ValueError(f"fit_linear_probe: {config.grid_name} values must be positive, got "
                         f"{grid}")
    train_x = jnp.asarray(train_x, jnp.float32)
    dense = config.task == "segmentation" or (config.task == "regression" and train_x.ndim == 3)
    _check_features(train_x, config, "train", dense)
    if config.task == "regression":
        train_y = _as_targets(train_y, train_x, config, "train")
    else:
        _check_labels(train_x, np.asarray(train_y), config, "train")
    has_val = val_x is not None
    if has_val != (val_y is not None):
        raise ValueError("fit_linear_probe: give both val_x and val_y, or neither")
    if not has_val and grid.size > 1:
        raise ValueError(f"fit_linear_probe: a sweep over several {config.grid_name} values "
                         f"needs validation data (val_x, val_y) to select on; give one value "
                         f"(grid=[...]) or validation data")
    geometry = None
    if dense:
        geometry = segmentation_geometry(train_x.shape[1], np.shape(train_y)[1:3],
                                         config.patch_grid)
    if has_val:
        val_x = jnp.asarray(val_x, jnp.float32)
        _check_features(val_x, config, "validation", dense)
        if config.task == "regression":
            val_y = _as_targets(val_y, val_x, config, "validation")
        else:
            _check_labels(val_x, np.asarray(val_y), config, "validation")
    standardizer = feature_standardizer(train_x, config.standardize)
    out_dim = config.num_classes * (geometry.scale ** 2 if geometry else 1)
    if config.recipe == "ridge":
        return _fit_ridge(train_x, train_y, val_x, val_y, grid, config, geometry, standardizer,
                          has_val)
    train_y = _as_labels(train_y, config)
    if has_val:
        val_y = _as_labels(val_y, config)
    else:  # placeholders of the right rank; never read
        val_x = jnp.zeros((1, *train_x.shape[1:]), jnp.float32)
        val_y = jnp.zeros((1, *train_y.shape[1:]), train_y.dtype)
    iterations = grad_norms = history = None
    desc = f"probe {config.recipe} ({len(grid)} x {config.grid_name})"
    if config.recipe == "lbfgs":
        with _progress(progress, config.max_iter, desc, "it") as bar:
            params, val_scores, iterations, grad_norms = _fit_lbfgs(
                grid, train_x, train_y, val_x, val_y, standardizer, config, geometry, has_val,
                out_dim, bar)
    else:
        init = init_probe_params(config.seed, train_x.shape[-1], out_dim)
        with _progress(progress, config.epochs, desc, "epoch") as bar:
            params, val_scores, history = _fit_reference(
                grid, init, train_x, train_y, val_x, val_y, standardizer, config, geometry,
                has_val, bar)
    best_index = int(np.argmax(val_scores)) if has_val else 0
    return ProbeFit(config, grid, jax.tree.map(np.asarray, params), standardizer, geometry,
                    val_scores, history, best_index, iterations, grad_norms)


def _progress(progress: bool | None, total: int, desc: str, unit: str):
    """A tqdm bar with ETA on stderr (eval/progress.py; None: on a terminal only)."""
    from spacenit_jax.eval import progress as progress_lib

    return progress_lib.bar(total, desc, unit=unit, enabled=progress)


def _fit_ridge(train_x, train_y, val_x, val_y, grid, config, geometry, standardizer, has_val):
    """Closed-form ridge over every alpha of the grid (see the module docstring)."""
    if geometry is not None:
        if not geometry.exact:
            raise ValueError(
                f"ridge probe: the {geometry.grid_h}x{geometry.grid_w} token grid with "
                f"{geometry.scale}-pixel blocks does not tile the {geometry.label_h}x"
                f"{geometry.label_w} targets (a resize is not linear least squares); use a "
                "patch size that divides the image, or recipe 'reference_adamw'")
        rows_x = train_x.reshape(-1, train_x.shape[-1])
        rows_y = pixels_to_token_blocks(train_y, geometry).reshape(rows_x.shape[0], -1)
    else:
        rows_x, rows_y = train_x, train_y
    rows = max(1, min(rows_x.shape[0], config.chunk_size * 64))  # token rows
    xs, masks = _chunked(rows_x, rows)
    ys, _ = _chunked(jnp.asarray(rows_y), rows)
    g, xty = _gram(xs, ys, masks, standardizer)
    solutions = _ridge_solutions(np.asarray(g), np.asarray(xty), grid)
    params = {"w": solutions[:, :-1, :].astype(np.float32),
              "b": solutions[:, -1, :].astype(np.float32)}
    fit = ProbeFit(config, grid, params, standardizer, geometry, None, None, 0)
    if has_val:
        scores = []
        for i in range(len(grid)):
            preds = fit.predict(val_x, i)
            scores.append(-metrics.regression_summary(preds, val_y)["rmse"])
        fit.val_scores = np.asarray(scores)
        fit.best_index = int(np.argmax(fit.val_scores))
    return fit
