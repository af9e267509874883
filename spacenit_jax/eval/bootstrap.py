"""Bootstrap confidence intervals over test predictions, as the original reports them.

Predictions are computed once on the full test set; each resample draws n_test indices with
replacement from numpy's PCG64(seed) generator and recomputes the metric on them. Reported:
mean, population std (ddof=0), 2.5th and 97.5th percentiles, and every resampled score. The
metric is a function of an index array, so one routine serves accuracy, micro-F1,
segmentation mIoU (summing per-sample confusion matrices) and regression RMSE (summing
per-sample squared errors and counts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from spacenit_jax.eval.metrics import segmentation_scores

DEFAULT_SEED = 42


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    mean: float
    std: float
    ci_lower: float
    ci_upper: float
    scores: np.ndarray

    def as_dict(self, prefix: str = "bootstrap_") -> dict[str, float]:
        return {f"{prefix}mean": self.mean, f"{prefix}std": self.std,
                f"{prefix}ci_lower": self.ci_lower, f"{prefix}ci_upper": self.ci_upper}


def bootstrap_metric(metric: Callable[[np.ndarray], float], n_items: int, n_bootstrap: int,
                     seed: int = DEFAULT_SEED) -> BootstrapResult:
    """Resample item indices n_bootstrap times; `metric(indices)` scores one resample."""
    if n_items < 1:
        raise ValueError(f"bootstrap needs at least one test item, got n_items={n_items}")
    if n_bootstrap < 1:
        raise ValueError(f"bootstrap needs n_bootstrap >= 1, got {n_bootstrap}")
    rng = np.random.Generator(np.random.PCG64(seed))
    scores = np.array([metric(rng.choice(n_items, size=n_items, replace=True))
                       for _ in range(n_bootstrap)], np.float64)
    return BootstrapResult(float(scores.mean()), float(scores.std()),
                           float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5)),
                           scores)


def bootstrap_accuracy(predictions, labels, n_bootstrap: int,
                       seed: int = DEFAULT_SEED) -> BootstrapResult:
    """Single-label accuracy resampled over test samples."""
    correct = (np.asarray(predictions) == np.asarray(labels)).astype(np.float64)
    if correct.ndim != 1:
        raise ValueError(f"bootstrap_accuracy needs (N,) predictions/labels, got {correct.shape}")
    return bootstrap_metric(lambda idx: correct[idx].mean(), correct.shape[0], n_bootstrap, seed)


def bootstrap_micro_f1(predictions, labels, n_bootstrap: int,
                       seed: int = DEFAULT_SEED) -> BootstrapResult:
    """Multilabel micro-F1 resampled over test samples ((N, C) multi-hot arrays)."""
    p, y = np.asarray(predictions) > 0.5, np.asarray(labels) > 0.5
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"bootstrap_micro_f1 needs (N, C) arrays, got {p.shape} and {y.shape}")
    per_item = np.stack([(p & y).sum(1), (p & ~y).sum(1), (~p & y).sum(1)], axis=1)

    def f1(idx):
        tp, fp, fn = per_item[idx].sum(0)
        return 2 * tp / max(2 * tp + fp + fn, 1)

    return bootstrap_metric(f1, p.shape[0], n_bootstrap, seed)


def bootstrap_miou(per_sample_confusion, n_bootstrap: int,
                   seed: int = DEFAULT_SEED) -> BootstrapResult:
    """Segmentation mIoU resampled over test samples; input (N, C, C) confusion matrices."""
    cms = np.asarray(per_sample_confusion, np.int64)
    if cms.ndim != 3 or cms.shape[1] != cms.shape[2]:
        raise ValueError(f"bootstrap_miou needs (N, C, C) confusion matrices, got {cms.shape}")
    return bootstrap_metric(lambda idx: float(segmentation_scores(cms[idx].sum(0))["miou"]),
                            cms.shape[0], n_bootstrap, seed)


def bootstrap_rmse(predictions, targets, n_bootstrap: int,
                   seed: int = DEFAULT_SEED) -> BootstrapResult:
    """Regression RMSE resampled over test samples (any shape with samples first; NaN
    targets do not count)."""
    p, y = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
    if p.shape != y.shape or p.ndim < 1:
        raise ValueError(f"bootstrap_rmse needs predictions and targets of one shape, got "
                         f"{p.shape} and {y.shape}")
    valid = np.isfinite(y)
    sq = np.where(valid, p - np.where(valid, y, 0.0), 0.0) ** 2
    per_item = np.stack([sq.reshape(len(y), -1).sum(1), valid.reshape(len(y), -1).sum(1)], 1)

    def rmse(idx):
        sse, count = per_item[idx].sum(0)
        return float(np.sqrt(sse / max(count, 1.0)))

    return bootstrap_metric(rmse, y.shape[0], n_bootstrap, seed)
