"""Weighted k-nearest-neighbour classifier on frozen features.

What it computes (the reference's kNN evaluation): train and query features are
L2-normalised (x / max(||x||, 1e-8)), similarities are their dot products, each query's k
nearest train rows (k=20 by default) vote for their class with weight exp(sim / tau)
(tau=0.07), and the prediction is the class with the largest vote total.

Why this shape: the whole query set is scored inside one jitted program: queries are padded
to a multiple of `chunk_size` and processed chunk by chunk with `lax.map`, so memory stays at
chunk_size x N_train similarities whatever the query count, and each (N_train, N_query, D,
k, ...) combination compiles once.

Inputs are checked first (`validation`): one non-finite feature row would make every
similarity with it NaN, and `top_k` ranks NaN first, so every vote would be NaN and every
prediction class 0.

Multilabel tasks run one binary kNN per class, as in the reference; since the neighbours do
not depend on the class, they are retrieved once and each class votes "present" vs "absent"
with the same weights (ties go to "absent", like argmax over [absent, present]).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from spacenit_jax.eval import metrics, validation
from spacenit_jax.model.heads import l2_normalize

DEFAULT_K = 20
DEFAULT_TAU = 0.07
DEFAULT_CHUNK = 2000
NORM_EPS = 1e-8  # the reference kNN's normalisation floor (torch F.normalize's default is 1e-12)


@partial(jax.jit, static_argnames=("k", "skip_nearest", "chunk_size"))
def _neighbour_votes(train_features, train_targets, query_features, tau, *, k, skip_nearest,
                     chunk_size):
    """Sum over the top-k neighbours of exp(sim/tau) * target; target is (N_train, C) float."""
    train = l2_normalize(train_features.astype(jnp.float32), NORM_EPS)
    queries = l2_normalize(query_features.astype(jnp.float32), NORM_EPS)
    n_query = queries.shape[0]
    n_chunks = -(-n_query // chunk_size)
    pad = n_chunks * chunk_size - n_query
    queries = jnp.pad(queries, ((0, pad), (0, 0))).reshape(n_chunks, chunk_size, -1)
    n_retrieve = k + 1 if skip_nearest else k

    def one_chunk(q):
        sims = q @ train.T  # (chunk, N_train)
        top_sims, top_idx = jax.lax.top_k(sims, n_retrieve)
        if skip_nearest:
            top_sims, top_idx = top_sims[:, 1:], top_idx[:, 1:]
        weights = jnp.exp(top_sims / tau)  # (chunk, k)
        return jnp.einsum("qk,qkc->qc", weights, train_targets[top_idx])

    votes = jax.lax.map(one_chunk, queries)
    return votes.reshape(n_chunks * chunk_size, -1)[:n_query]


def _check(train_features, train_labels, query_features, query_labels, *, multilabel: bool,
           num_classes, k, skip_nearest):
    """Every input checked (see `validation`), then k against the train size."""
    task = "multilabel" if multilabel else "classification"
    validation.check_eval_inputs({"train": (train_features, train_labels),
                                  "query": (query_features, query_labels)},
                                 task=task, num_classes=None if multilabel else num_classes)
    n_train = np.shape(train_features)[0]
    needed = k + 1 if skip_nearest else k
    if not 1 <= needed <= n_train:
        raise ValueError(f"kNN: k={k} (skip_nearest={skip_nearest}) needs at least {needed} "
                         f"train samples, have {n_train}")


def _class_scores(train_features, train_labels, query_features, *, num_classes, k, tau,
                  skip_nearest, chunk_size):
    train_features, query_features = jnp.asarray(train_features), jnp.asarray(query_features)
    onehot = jax.nn.one_hot(jnp.asarray(train_labels), num_classes, dtype=jnp.float32)
    chunk = max(1, min(chunk_size, query_features.shape[0]))
    return _neighbour_votes(train_features, onehot, query_features, jnp.float32(tau), k=k,
                            skip_nearest=skip_nearest, chunk_size=chunk)


def _multilabel_predictions(train_features, train_multi_hot, query_features, *, k, tau,
                            skip_nearest, chunk_size):
    train_features, query_features = jnp.asarray(train_features), jnp.asarray(query_features)
    targets = (jnp.asarray(train_multi_hot) > 0.5).astype(jnp.float32)
    chunk = max(1, min(chunk_size, query_features.shape[0]))
    # One retrieval for all classes: columns [present_0..present_C-1, absent_0..absent_C-1].
    votes = _neighbour_votes(train_features, jnp.concatenate([targets, 1.0 - targets], axis=1),
                             query_features, jnp.float32(tau), k=k, skip_nearest=skip_nearest,
                             chunk_size=chunk)
    present, absent = jnp.split(votes, 2, axis=1)
    return np.asarray(present > absent).astype(np.int32)


def knn_class_scores(train_features, train_labels, query_features, *, num_classes: int,
                     k: int = DEFAULT_K, tau: float = DEFAULT_TAU, skip_nearest: bool = False,
                     chunk_size: int = DEFAULT_CHUNK) -> jnp.ndarray:
    """(N_query, num_classes) vote totals: sum of exp(sim/tau) over neighbours of each class.

    Raises validation.EvalInputError for invalid inputs (non-finite features, labels outside
    [0, num_classes), mismatched rows or dims, ...), ValueError when k exceeds the train set.
    """
    _check(train_features, train_labels, query_features, None, multilabel=False,
           num_classes=num_classes, k=k, skip_nearest=skip_nearest)
    return _class_scores(train_features, train_labels, query_features, num_classes=num_classes,
                         k=k, tau=tau, skip_nearest=skip_nearest, chunk_size=chunk_size)


def knn_predict(train_features, train_labels, query_features, *, num_classes: int,
                k: int = DEFAULT_K, tau: float = DEFAULT_TAU, skip_nearest: bool = False,
                chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """Integer class predictions (N_query,) = argmax of the weighted votes."""
    scores = knn_class_scores(train_features, train_labels, query_features,
                              num_classes=num_classes, k=k, tau=tau,
                              skip_nearest=skip_nearest, chunk_size=chunk_size)
    return np.asarray(jnp.argmax(scores, axis=-1))


def knn_predict_multilabel(train_features, train_multi_hot, query_features, *,
                           k: int = DEFAULT_K, tau: float = DEFAULT_TAU,
                           skip_nearest: bool = False,
                           chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """Multi-hot predictions (N_query, C): one binary weighted kNN per class."""
    _check(train_features, train_multi_hot, query_features, None, multilabel=True,
           num_classes=None, k=k, skip_nearest=skip_nearest)
    return _multilabel_predictions(train_features, train_multi_hot, query_features, k=k,
                                   tau=tau, skip_nearest=skip_nearest, chunk_size=chunk_size)


@dataclasses.dataclass(frozen=True)
class KnnResult:
    """Primary score (accuracy, or micro-F1 for multilabel, as the reference reports under the
    same "accuracy" key), the predictions (for bootstrap) and the settings used."""

    accuracy: float
    predictions: np.ndarray
    k: int
    tau: float
    multilabel: bool


def knn_evaluate(train_features, train_labels, query_features, query_labels, *,
                 num_classes: int | None = None, k: int = DEFAULT_K, tau: float = DEFAULT_TAU,
                 skip_nearest: bool = False, chunk_size: int = DEFAULT_CHUNK) -> KnnResult:
    """Score query features against the train database; multilabel if labels are (N, C).

    num_classes None: 1 + the largest label of either split. Invalid inputs raise
    validation.EvalInputError naming the split ("train" or "query") and the rows.
    """
    train_labels, query_labels = np.asarray(train_labels), np.asarray(query_labels)
    multilabel = train_labels.ndim == 2
    _check(train_features, train_labels, query_features, query_labels, multilabel=multilabel,
           num_classes=num_classes, k=k, skip_nearest=skip_nearest)
    if multilabel:
        preds = _multilabel_predictions(train_features, train_labels, query_features, k=k,
                                        tau=tau, skip_nearest=skip_nearest,
                                        chunk_size=chunk_size)
        score = float(metrics.micro_f1(preds, query_labels))
        return KnnResult(score, preds, k, tau, True)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    scores = _class_scores(train_features, train_labels, query_features,
                           num_classes=num_classes, k=k, tau=tau, skip_nearest=skip_nearest,
                           chunk_size=chunk_size)
    preds = np.asarray(jnp.argmax(scores, axis=-1))
    return KnnResult(float(metrics.accuracy(preds, query_labels)), preds, k, tau, False)
