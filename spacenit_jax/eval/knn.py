"""Weighted k-nearest-neighbour classifier on frozen features (spec §9.2).

Why this shape: the reference scores classification tasks with a cosine kNN (k=20,
tau=0.07) whose vote weights are exp(sim/tau). The whole query set is scored inside one jitted
program: queries are padded to a multiple of `chunk_size` and processed chunk by chunk with
`lax.map`, so memory stays at chunk_size x N_train similarities whatever the query count, and
each (N_train, N_query, D, k, ...) combination compiles once.

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

from spacenit_jax.eval import metrics

DEFAULT_K = 20
DEFAULT_TAU = 0.07
DEFAULT_CHUNK = 2000
_NORM_EPS = 1e-8


def l2_normalize(x: jnp.ndarray, eps: float = _NORM_EPS) -> jnp.ndarray:
    """x / max(||x||, eps) along the last axis (same convention as torch F.normalize)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)


@partial(jax.jit, static_argnames=("k", "skip_nearest", "chunk_size"))
def _neighbour_votes(train_features, train_targets, query_features, tau, *, k, skip_nearest,
                     chunk_size):
    """Sum over the top-k neighbours of exp(sim/tau) * target; target is (N_train, C) float."""
    train = l2_normalize(train_features.astype(jnp.float32))
    queries = l2_normalize(query_features.astype(jnp.float32))
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


def _check(train_features, train_labels, query_features, k, skip_nearest):
    if train_features.ndim != 2 or query_features.ndim != 2:
        raise ValueError("kNN needs 2-D features (N, D); got train "
                         f"{train_features.shape} and query {query_features.shape}")
    if train_features.shape[1] != query_features.shape[1]:
        raise ValueError(f"kNN feature dims differ: train D={train_features.shape[1]}, "
                         f"query D={query_features.shape[1]}")
    if train_labels.shape[0] != train_features.shape[0]:
        raise ValueError(f"kNN: {train_labels.shape[0]} train labels for "
                         f"{train_features.shape[0]} train features")
    needed = k + 1 if skip_nearest else k
    if not 1 <= needed <= train_features.shape[0]:
        raise ValueError(f"kNN: k={k} (skip_nearest={skip_nearest}) needs at least {needed} "
                         f"train samples, have {train_features.shape[0]}")


def knn_class_scores(train_features, train_labels, query_features, *, num_classes: int,
                     k: int = DEFAULT_K, tau: float = DEFAULT_TAU, skip_nearest: bool = False,
                     chunk_size: int = DEFAULT_CHUNK) -> jnp.ndarray:
    """(N_query, num_classes) vote totals: sum of exp(sim/tau) over neighbours of each class."""
    train_features, query_features = jnp.asarray(train_features), jnp.asarray(query_features)
    train_labels = jnp.asarray(train_labels)
    _check(train_features, train_labels, query_features, k, skip_nearest)
    if train_labels.ndim != 1 or not jnp.issubdtype(train_labels.dtype, jnp.integer):
        raise ValueError("single-label kNN needs integer train labels of shape (N,), got "
                         f"{train_labels.dtype}{tuple(train_labels.shape)}")
    onehot = jax.nn.one_hot(train_labels, num_classes, dtype=jnp.float32)
    chunk = max(1, min(chunk_size, query_features.shape[0]))
    return _neighbour_votes(train_features, onehot, query_features, jnp.float32(tau), k=k,
                            skip_nearest=skip_nearest, chunk_size=chunk)


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
    train_features, query_features = jnp.asarray(train_features), jnp.asarray(query_features)
    targets = jnp.asarray(train_multi_hot)
    _check(train_features, targets, query_features, k, skip_nearest)
    if targets.ndim != 2:
        raise ValueError(f"multilabel kNN needs (N, C) multi-hot train labels, got {targets.shape}")
    targets = (targets > 0.5).astype(jnp.float32)
    chunk = max(1, min(chunk_size, query_features.shape[0]))
    # One retrieval for all classes: columns [present_0..present_C-1, absent_0..absent_C-1].
    votes = _neighbour_votes(train_features, jnp.concatenate([targets, 1.0 - targets], axis=1),
                             query_features, jnp.float32(tau), k=k, skip_nearest=skip_nearest,
                             chunk_size=chunk)
    present, absent = jnp.split(votes, 2, axis=1)
    return np.asarray(present > absent).astype(np.int32)


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
    """Score query features against the train database; multilabel if labels are (N, C)."""
    train_labels, query_labels = np.asarray(train_labels), np.asarray(query_labels)
    if train_labels.ndim == 2:
        preds = knn_predict_multilabel(train_features, train_labels, query_features, k=k,
                                       tau=tau, skip_nearest=skip_nearest,
                                       chunk_size=chunk_size)
        score = float(metrics.micro_f1(preds, query_labels))
        return KnnResult(score, preds, k, tau, True)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    preds = knn_predict(train_features, train_labels, query_features, num_classes=num_classes,
                        k=k, tau=tau, skip_nearest=skip_nearest, chunk_size=chunk_size)
    return KnnResult(float(metrics.accuracy(preds, query_labels)), preds, k, tau, False)
