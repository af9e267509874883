"""kNN classifier: known answers, a NumPy oracle, chunking, multilabel, compile caching."""

import numpy as np
import pytest

from spacenit_jax.eval import knn
from spacenit_jax.eval.validation import EvalInputError


def clusters(n, num_classes=4, dim=16, spread=0.3, seed=0):
    centres = np.random.default_rng(100).normal(size=(num_classes, dim)) * 3
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    return (centres[y] + spread * rng.normal(size=(n, dim))).astype(np.float32), y


def numpy_knn_scores(train, labels, query, num_classes, k, tau, skip=False):
    """Straightforward reference: cosine sims, top-k, exp(sim/tau) votes."""
    t = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-8)
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-8)
    sims = q @ t.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, : k + int(skip)][:, int(skip):]
    scores = np.zeros((len(query), num_classes))
    for i, row in enumerate(order):
        for j in row:
            scores[i, labels[j]] += np.exp(sims[i, j] / tau)
    return scores


def test_separable_clusters_are_classified_perfectly():
    tx, ty = clusters(200)
    qx, qy = clusters(100, seed=1)
    res = knn.knn_evaluate(tx, ty, qx, qy, num_classes=4)
    assert res.accuracy == 1.0 and res.k == 20 and res.tau == 0.07
    np.testing.assert_array_equal(res.predictions, qy)


def test_matches_numpy_oracle_and_is_chunk_invariant():
    rng = np.random.default_rng(3)
    tx = rng.normal(size=(120, 8)).astype(np.float32)
    ty = rng.integers(0, 5, 120)
    qx = rng.normal(size=(37, 8)).astype(np.float32)
    want = numpy_knn_scores(tx, ty, qx, 5, k=7, tau=0.1)
    got = np.asarray(knn.knn_class_scores(tx, ty, qx, num_classes=5, k=7, tau=0.1))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    chunked = np.asarray(knn.knn_class_scores(tx, ty, qx, num_classes=5, k=7, tau=0.1,
                                              chunk_size=10))
    np.testing.assert_allclose(chunked, got, rtol=1e-6)


def test_skip_nearest_is_leave_one_out():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    want = numpy_knn_scores(x, y, x, 3, k=5, tau=0.07, skip=True)
    got = np.asarray(knn.knn_class_scores(x, y, x, num_classes=3, k=5, skip_nearest=True))
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_multilabel_is_one_binary_knn_per_class():
    rng = np.random.default_rng(5)
    tx = rng.normal(size=(80, 6)).astype(np.float32)
    ty = (rng.random((80, 4)) < 0.4).astype(np.int32)
    qx = rng.normal(size=(25, 6)).astype(np.float32)
    got = knn.knn_predict_multilabel(tx, ty, qx, k=9)
    for c in range(4):
        binary = knn.knn_predict(tx, ty[:, c], qx, num_classes=2, k=9)
        np.testing.assert_array_equal(got[:, c], binary)
    res = knn.knn_evaluate(tx, ty, qx, got, k=9)
    assert res.multilabel and res.accuracy == 1.0  # micro-F1 of predictions against themselves


def test_one_compile_per_shape():
    tx, ty = clusters(64, seed=6)
    qx, _ = clusters(32, seed=7)
    knn.knn_predict(tx, ty, qx, num_classes=4, k=3)
    before = knn._neighbour_votes._cache_size()
    for seed in (8, 9):
        knn.knn_predict(tx, ty, clusters(32, seed=seed)[0], num_classes=4, k=3)
    assert knn._neighbour_votes._cache_size() == before


def test_clear_errors():
    tx, ty = clusters(10)
    with pytest.raises(ValueError, match="k=20"):
        knn.knn_predict(tx, ty, tx, num_classes=4)
    with pytest.raises(EvalInputError, match=r"query split: feature shape \(3,\) per row "
                                             r"differs from the train split's \(16,\)"):
        knn.knn_predict(tx, ty, tx[:, :3], num_classes=4, k=2)


def test_one_nan_train_row_is_an_error_not_a_third_of_the_accuracy():
    """Issue #12: one NaN row among 30 train rows made every vote NaN and every prediction
    class 0 (accuracy 1.0 -> 0.333) without a word."""
    tx, ty = clusters(30, num_classes=3)
    qx, qy = clusters(30, num_classes=3, seed=1)
    assert knn.knn_evaluate(tx, ty, qx, qy, k=5).accuracy == 1.0
    tx[7, 2] = np.nan
    # what the unchecked computation gives: NaN similarities rank first in top_k
    votes = np.asarray(knn._class_scores(tx, ty, qx, num_classes=3, k=5, tau=0.07,
                                         skip_nearest=False, chunk_size=2000))
    assert np.isnan(votes).all() and np.mean(votes.argmax(1) == qy) == pytest.approx(1 / 3)
    message = r"train split: features have non-finite values \(NaN or Inf\) in rows \[7\] " \
              r"\(1 of 30\)"
    for call in (lambda: knn.knn_evaluate(tx, ty, qx, qy, k=5),
                 lambda: knn.knn_predict(tx, ty, qx, num_classes=3, k=5),
                 lambda: knn.knn_class_scores(tx, ty, qx, num_classes=3, k=5),
                 lambda: knn.knn_predict_multilabel(tx, np.eye(3)[ty], qx, k=5),
                 lambda: knn.knn_evaluate(qx, qy, tx, ty, k=5)):
        with pytest.raises(EvalInputError, match=message.replace("train", "(train|query)")):
            call()


def test_labels_outside_the_classes_are_errors():
    tx, ty = clusters(30, num_classes=3)
    with pytest.raises(EvalInputError, match=r"train split: class labels \[-1\] outside >= 0 "
                                             r"in rows \[4\] \(1 of 30\)"):
        knn.knn_evaluate(tx, np.where(np.arange(30) == 4, -1, ty), tx, ty, k=5)
    with pytest.raises(EvalInputError, match=r"query split: class labels \[3\] outside "
                                             r"\[0, num_classes=3\)"):
        knn.knn_evaluate(tx, ty, tx, np.where(np.arange(30) == 2, 3, ty), num_classes=3, k=5)
