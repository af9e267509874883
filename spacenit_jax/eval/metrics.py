"""Scores for probes and kNN: accuracy, micro-F1, exact match, segmentation metrics.

Everything is written with `jax.numpy` and without data-dependent shapes (masks instead of
boolean indexing), so the same functions score inside a jitted training loop (best-on-val
selection) and on host arrays afterwards; each is jitted so host-side scoring is one compiled
call rather than a string of eagerly dispatched ops. Definitions are the original's:

- confusion matrix over pixels whose label is not the ignore index (-1);
- IoU_c = tp/(tp+fp+fn+1e-8), mIoU = mean over classes with union > 0;
- overall accuracy = sum(tp)/(sum(all)+1e-8);
- macro accuracy / macro F1 = mean over classes with ground truth > 0;
- regression: RMSE = sqrt(mean squared error) and MAE over the target values (non-finite
  ones would not count; the inputs are checked finite first), in the targets' own units.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = -1
_EPS = 1e-8


@partial(jax.jit, static_argnames=("ignore_index",))
def accuracy(predictions, labels, *, ignore_index: int = IGNORE_INDEX) -> jnp.ndarray:
    """Fraction of correct integer predictions; labels equal to `ignore_index` do not count."""
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"accuracy: predictions {predictions.shape} and labels {labels.shape} differ")
    valid = labels != ignore_index
    correct = jnp.sum((predictions == labels) & valid)
    return correct / jnp.maximum(jnp.sum(valid), 1)


@jax.jit
def multilabel_counts(predictions, labels, weights=None) -> jnp.ndarray:
    """[tp, fp, fn, exact_matches, samples] of multi-hot predictions (N, C) vs labels (N, C).

    Counts (not ratios) so batches can be summed before the score is formed; samples with
    weight 0 (optional (N,) mask) are left out.
    """
    p, y = jnp.asarray(predictions) > 0.5, jnp.asarray(labels) > 0.5
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"multilabel predictions {p.shape} and labels {y.shape} must both be (N, C)")
    w = jnp.ones(p.shape[:1], bool) if weights is None else jnp.asarray(weights) > 0
    cell = w[:, None]
    tp = jnp.sum(p & y & cell)
    fp = jnp.sum(p & ~y & cell)
    fn = jnp.sum(~p & y & cell)
    exact = jnp.sum(jnp.all(p == y, axis=-1) & w)
    return jnp.stack([tp, fp, fn, exact, jnp.sum(w)]).astype(jnp.int32)


@jax.jit
def micro_f1_from_counts(counts) -> jnp.ndarray:
    tp, fp, fn = counts[0], counts[1], counts[2]
    return 2.0 * tp / jnp.maximum(2 * tp + fp + fn, 1)


@jax.jit
def micro_f1(predictions, labels) -> jnp.ndarray:
    """Micro-averaged F1 of multi-hot predictions: 2TP / (2TP + FP + FN) pooled over classes."""
    return micro_f1_from_counts(multilabel_counts(predictions, labels))


@jax.jit
def exact_match(predictions, labels) -> jnp.ndarray:
    """Subset accuracy: fraction of samples whose whole multi-hot vector is right."""
    counts = multilabel_counts(predictions, labels)
    return counts[3] / jnp.maximum(counts[4], 1)


@partial(jax.jit, static_argnames=("num_classes", "ignore_index"))
def confusion_matrix(predictions, labels, num_classes: int, *, ignore_index: int = IGNORE_INDEX,
                     weights=None) -> jnp.ndarray:
    """(num_classes, num_classes) int32 counts, rows = ground truth, columns = prediction.

    Works for any shape of integer predictions/labels (pixels of a batch of masks, or one label
    per sample). Positions with label == ignore_index, or with weight 0 when `weights` (same
    shape, bool/0-1) is given, are not counted.
    """
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"confusion_matrix: predictions {predictions.shape} and labels {labels.shape} differ")
    if not (jnp.issubdtype(predictions.dtype, jnp.integer)
            and jnp.issubdtype(labels.dtype, jnp.integer)):
        raise TypeError("confusion_matrix needs integer predictions and labels, got "
                        f"{predictions.dtype} and {labels.dtype}")
    valid = labels != ignore_index
    if weights is not None:
        valid = valid & (jnp.asarray(weights) > 0)
    flat = jnp.clip(labels, 0, num_classes - 1) * num_classes + jnp.clip(predictions, 0,
                                                                          num_classes - 1)
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32)
    counts = counts.at[flat.reshape(-1)].add(valid.reshape(-1).astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


@jax.jit
def segmentation_scores(confusion) -> dict[str, jnp.ndarray]:
    """mIoU (primary), overall/macro accuracy, macro F1 and per-class IoU from a confusion matrix."""
    cm = jnp.asarray(confusion).astype(jnp.float32)
    tp = jnp.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    union = tp + fp + fn
    iou = tp / (union + _EPS)
    has_union = union > 0
    miou = jnp.sum(jnp.where(has_union, iou, 0.0)) / jnp.maximum(jnp.sum(has_union), 1)
    overall_acc = jnp.sum(tp) / (jnp.sum(cm) + _EPS)
    has_gt = (tp + fn) > 0
    n_gt = jnp.maximum(jnp.sum(has_gt), 1)
    recall = tp / (tp + fn + _EPS)
    precision = tp / (tp + fp + _EPS)
    f1 = 2 * precision * recall / (precision + recall + _EPS)
    return {
        "miou": miou,
        "overall_accuracy": overall_acc,
        "macro_accuracy": jnp.sum(jnp.where(has_gt, recall, 0.0)) / n_gt,
        "macro_f1": jnp.sum(jnp.where(has_gt, f1, 0.0)) / n_gt,
        "per_class_iou": iou,
    }


def per_sample_confusion(predictions, labels, num_classes: int) -> np.ndarray:
    """(N, C, C) confusion matrices of N segmentation maps (for bootstrapping mIoU)."""
    fn = jax.vmap(lambda p, y: confusion_matrix(p, y, num_classes))
    return np.asarray(fn(jnp.asarray(predictions, jnp.int32), jnp.asarray(labels, jnp.int32)))


def segmentation_summary(predictions, labels, num_classes: int) -> dict[str, float]:
    """Host scores of segmentation maps: primary = mIoU, accuracies, macro F1."""
    cm = confusion_matrix(jnp.asarray(predictions, jnp.int32), jnp.asarray(labels, jnp.int32),
                          num_classes)
    out = {k: float(v) for k, v in segmentation_scores(cm).items() if k != "per_class_iou"}
    return {"primary": out["miou"], **out}


@jax.jit
def regression_counts(predictions, targets, weights=None) -> jnp.ndarray:
    """[sum of squared errors, sum of absolute errors, count] over finite targets (float32).

    predictions and targets have the same shape (any); NaN targets, and entries whose
    optional `weights` (broadcastable to the leading axes) is 0, do not count.
    """
    p, y = jnp.asarray(predictions, jnp.float32), jnp.asarray(targets, jnp.float32)
    if p.shape != y.shape:
        raise ValueError(f"regression predictions {p.shape} and targets {y.shape} differ")
    valid = jnp.isfinite(y)
    if weights is not None:
        w = jnp.asarray(weights) > 0
        valid = valid & w.reshape(w.shape + (1,) * (y.ndim - w.ndim))
    err = jnp.where(valid, p - jnp.where(valid, y, 0.0), 0.0)
    return jnp.stack([jnp.sum(err * err), jnp.sum(jnp.abs(err)),
                      jnp.sum(valid).astype(jnp.float32)])


@jax.jit
def rmse_from_counts(counts) -> jnp.ndarray:
    return jnp.sqrt(counts[0] / jnp.maximum(counts[2], 1.0))


def regression_summary(predictions, targets) -> dict[str, float]:
    """Host scores of regression predictions: primary = RMSE (lower is better), MAE."""
    c = np.asarray(regression_counts(predictions, targets), np.float64)
    n = max(c[2], 1.0)
    rmse = float(np.sqrt(c[0] / n))
    return {"primary": rmse, "rmse": rmse, "mae": float(c[1] / n)}
