"""Checks of evaluation inputs, shared by every evaluation mode.

Why: invalid inputs do not fail on their own, they give plausible numbers. One NaN feature
row makes every cosine similarity with it NaN, `top_k` then ranks the NaN first, every vote
is NaN and every argmax is class 0; a linear probe standardises with the train mean and
variance, which one NaN row turns into NaN for every sample; a label of -1 becomes an
all-zero one-hot vector; a label >= num_classes is dropped by `one_hot`. So the inputs are
checked before any number is computed from them, and each fault is one line that names the
file (where there is one), the split, what was expected, and the first offending rows with
their count:

    tr.npz (train split): features have non-finite values (NaN or Inf) in rows [7] (1 of 30)

Every public evaluation function (kNN, linear probe fit / predict / scores, fine-tuning,
feature extraction) calls `check_eval_inputs` (or, for images, `check_images`) at its entry,
and the command line does so with the file names. What is checked:

- per split: not empty; features (N, D), or (N, T, D) patch tokens for segmentation and
  dense regression; images
  (N, H, W, T, C); every value finite (the missing-pixel fill value -99999 is finite and
  allowed in images); one label per row;
- labels by task: classification (N,) integers in [0, C); multilabel (N, C) multi-hot 0/1
  with C = num_classes; segmentation (N, H, W) integers in [0, C) or the ignore value -1;
  regression (N,) or (N, K) finite numbers, (N, H, W) or (N, H, W, K) maps when dense;
- across splits (the first split given is the reference, normally "train"): the same feature
  (or image) shape after the row axis, the same label layout (class indices vs multi-hot,
  segmentation map size).

A class that occurs in another split but not in train, and a classification train split of
one class only, are reported with `logging.warning` (naming the classes and rows), not
refused: such rows can never be predicted right, but a small benchmark partition (e.g.
GeoBench's 1% train split, or the few real samples shipped for smoke tests) may
legitimately lack classes, and the score is still a correct measurement.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from spacenit_jax.eval.metrics import IGNORE_INDEX

log = logging.getLogger(__name__)

TASKS = ("classification", "multilabel", "segmentation", "regression")
MAX_LISTED = 5  # rows named in a message; the count covers them all


class EvalInputError(ValueError):
    """An evaluation input is invalid or inconsistent; the message says where and how."""


def rows_text(rows, total: int) -> str:
    """'rows [3, 17] (2 of 30)': the first MAX_LISTED row indices and the count."""
    rows = np.asarray(rows).reshape(-1)
    listed = ", ".join(str(int(r)) for r in rows[:MAX_LISTED])
    more = ", ..." if rows.size > MAX_LISTED else ""
    return f"rows [{listed}{more}] ({rows.size} of {total})"


def where(split: str, source: str | None = None) -> str:
    return f"{source} ({split} split)" if source else f"{split} split"


def _fail(split: str, source: str | None, what: str):
    raise EvalInputError(f"{where(split, source)}: {what}")


def _bad_rows(mask: np.ndarray) -> np.ndarray:
    """Indices of rows (first axis) with any True."""
    return np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))


def _numeric(x, name: str, split: str, source: str | None) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        _fail(split, source, f"{name} must be numbers, got dtype {x.dtype}")
    return x


def _check_finite(x: np.ndarray, name: str, split: str, source: str | None):
    if x.dtype.kind == "f":
        bad = _bad_rows(~np.isfinite(x))
        if bad.size:
            _fail(split, source, f"{name} have non-finite values (NaN or Inf) in "
                                 f"{rows_text(bad, x.shape[0])}")


def feature_rank(task: str, dense: bool = False) -> int:
    """2 for (N, D) pooled features, 3 for (N, T, D) patch tokens (segmentation, or dense
    regression)."""
    return 3 if task == "segmentation" or dense else 2


def check_features(x, *, task: str, split: str, source: str | None = None,
                   dense: bool = False) -> np.ndarray:
    """Features of one split: (N, D) (or (N, T, D) for segmentation and dense regression),
    N > 0, all finite."""
    x = _numeric(x, "features", split, source)
    rank = feature_rank(task, dense)
    want = "(N, T, D) patch tokens" if rank == 3 else "(N, D)"
    if x.ndim != rank:
        _fail(split, source, f"features must be {want}, got shape {x.shape}")
    if x.shape[0] == 0:
        _fail(split, source, "no rows (empty split)")
    _check_finite(x, "features", split, source)
    return x


def check_images(images, *, split: str, source: str | None = None) -> np.ndarray:
    """Images of one split: (N, H, W, T, C), N > 0, all finite (-99999 fill is allowed)."""
    images = _numeric(images, "images", split, source)
    if images.ndim != 5:
        _fail(split, source, f"images must be (N, H, W, T, C), got shape {images.shape}")
    if images.shape[0] == 0:
        _fail(split, source, "no images (empty split)")
    _check_finite(images, "images", split, source)
    return images


def check_labels(y, *, task: str, num_classes: int | None, rows: int, split: str,
                 source: str | None = None, dense: bool = False) -> np.ndarray:
    """Labels of one split with `rows` feature rows (see the module docstring); dense:
    regression targets are per-pixel maps."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    y = _numeric(y, "labels", split, source)
    want = {"classification": "(N,) class indices",
            "multilabel": f"(N, {num_classes or 'C'}) multi-hot 0/1",
            "segmentation": "(N, H, W) class maps",
            "regression": "(N, H, W) or (N, H, W, K) target maps" if dense
            else "(N,) or (N, K) targets"}[task]
    ndims = {"classification": (1,), "multilabel": (2,), "segmentation": (3,),
             "regression": (3, 4) if dense else (1, 2)}[task]
    if y.ndim not in ndims:
        _fail(split, source, f"labels must be {want} for {task}, got shape {y.shape}")
    if y.shape[0] != rows:
        _fail(split, source, f"{y.shape[0]} labels for {rows} feature rows (one label per "
                             "row expected)")
    if task == "regression":
        _check_finite(y, "regression targets", split, source)
        return y
    if task == "multilabel":
        if num_classes is not None and y.shape[1] != num_classes:
            _fail(split, source, f"multi-hot labels have {y.shape[1]} columns, expected "
                                 f"num_classes={num_classes}")
        bad = _bad_rows((y != 0) & (y != 1))
        if bad.size:
            values = np.unique(y[bad][(y[bad] != 0) & (y[bad] != 1)])[:MAX_LISTED]
            _fail(split, source, f"multi-hot labels must be 0 or 1; values {values.tolist()} "
                                 f"in {rows_text(bad, rows)}")
        return y
    if y.dtype.kind not in "iu":
        extra = ""
        if y.dtype.kind == "f":
            fractional = _bad_rows(y != np.round(y))  # NaN != NaN counts too
            if fractional.size:
                extra = f"; not whole numbers in {rows_text(fractional, rows)}"
        _fail(split, source, f"class labels must be integers, got dtype {y.dtype}{extra}")
    lo = IGNORE_INDEX if task == "segmentation" else 0
    out_of_range = y < lo
    if num_classes is not None:
        out_of_range |= y >= num_classes
    bad = _bad_rows(out_of_range)
    if bad.size:
        values = np.unique(y[out_of_range])[:MAX_LISTED].tolist()
        allowed = f"[0, num_classes={num_classes})" if num_classes is not None else ">= 0"
        if task == "segmentation":
            allowed += f" or the ignore value {IGNORE_INDEX}"
        _fail(split, source, f"class labels {values} outside {allowed} in "
                             f"{rows_text(bad, rows)}")
    return y


def check_eval_inputs(splits: Mapping[str, tuple], *, task: str, num_classes: int | None = None,
                      inputs: str = "features", sources: Mapping[str, str] | None = None,
                      feature_dim: int | None = None, dense: bool = False) -> None:
    """Check every split and their consistency; raise EvalInputError on the first fault.

    splits: {name: (features or images, labels or None)}, in order, the first being the
    reference (normally "train"); a split whose array is None is skipped. inputs: "features"
    ((N, D), or (N, T, D) for segmentation) or "images" ((N, H, W, T, C)). sources: the file
    each split came from, named in messages. feature_dim: the D the features must have
    (e.g. a fitted probe's input size). num_classes None: only negative labels are refused.
    dense: regression on (N, T, D) tokens with per-pixel target maps.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if inputs not in ("features", "images"):
        raise ValueError(f"inputs must be 'features' or 'images', got {inputs!r}")
    sources = sources or {}
    reference = None  # (name, trailing shape, labels)
    for name, (x, y) in splits.items():
        if x is None:
            continue
        source = sources.get(name)
        x = (check_images(x, split=name, source=source) if inputs == "images"
             else check_features(x, task=task, split=name, source=source, dense=dense))
        if feature_dim is not None and x.shape[-1] != feature_dim:
            _fail(name, source, f"features have dimension {x.shape[-1]}, expected "
                                f"{feature_dim}")
        if y is not None:
            y = check_labels(y, task=task, num_classes=num_classes, rows=x.shape[0],
                             split=name, source=source, dense=dense)
        if reference is None:
            reference = (name, x.shape[1:], y)
            if y is not None and task == "classification":
                _check_several_classes(y, name, source)
            continue
        ref_name, ref_shape, ref_y = reference
        if x.shape[1:] != ref_shape:
            kind = "image" if inputs == "images" else "feature"
            _fail(name, source, f"{kind} shape {x.shape[1:]} per row differs from the "
                                f"{ref_name} split's {ref_shape}")
        if y is None or ref_y is None:
            continue
        if y.shape[1:] != ref_y.shape[1:]:
            what = "segmentation maps" if task == "segmentation" else "labels"
            _fail(name, source, f"{what} of shape {y.shape[1:]} per row differ from the "
                                f"{ref_name} split's {ref_y.shape[1:]}")
        if task == "classification":
            _warn_unseen_classes(ref_y, y, ref_name, name, source)


def _check_several_classes(y: np.ndarray, split: str, source: str | None):
    classes = np.unique(y)
    if classes.size < 2:
        log.warning("%s: every one of the %d labels is class %d: the classifier can only "
                    "predict that class", where(split, source), y.shape[0], int(classes[0]))


def _warn_unseen_classes(train_y, y, train_name: str, split: str, source: str | None):
    unseen = np.setdiff1d(np.unique(y), np.unique(train_y))
    if unseen.size:
        rows = np.flatnonzero(np.isin(y, unseen))
        log.warning("%s: classes %s never occur in the %s split, so their %s can never be "
                    "predicted right", where(split, source), unseen[:MAX_LISTED].tolist(),
                    train_name, rows_text(rows, y.shape[0]))


def check_extracted(features: np.ndarray, *, split: str, bad_inputs=()) -> None:
    """Features just computed from a model: every row finite. bad_inputs: rows whose input
    images had non-finite pixels (named in the message as the likely cause)."""
    bad = _bad_rows(~np.isfinite(features))
    bad_inputs = np.asarray(bad_inputs, np.int64)
    if not bad.size and not bad_inputs.size:
        return
    n = features.shape[0]
    if bad_inputs.size:
        cause = f"input images have non-finite pixels (NaN or Inf) in {rows_text(bad_inputs, n)}"
        if bad.size:
            cause = f"features of {rows_text(bad, n)} are not finite; their {cause}"
        raise EvalInputError(f"{split} split: {cause}: fix or drop those samples")
    raise EvalInputError(f"{split} split: the model produced non-finite features (NaN or Inf) "
                         f"in {rows_text(bad, n)} although their images are finite: the "
                         "model's parameters, or its computation in its dtype, overflow")
