"""Metrics against hand-computed values."""

import numpy as np
import pytest

from spacenit_jax.eval import metrics


def test_confusion_matrix_and_segmentation_scores_by_hand():
    labels = np.array([[0, 0, 1, 1], [2, 2, -1, 1]])
    preds = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    cm = np.asarray(metrics.confusion_matrix(preds, labels, 4))
    expected = np.array([
        [1, 1, 0, 0],  # gt 0: one right, one predicted as 1
        [0, 2, 0, 0],  # gt 1 at (0,2),(0,3) right; (1,3) predicted 2 -> below
        [1, 0, 1, 0],
        [0, 0, 0, 0],
    ])
    expected[1, 2] += 1  # gt 1 -> pred 2 at (1, 3); the -1 pixel is ignored
    np.testing.assert_array_equal(cm, expected)

    s = metrics.segmentation_scores(cm)
    # tp = [1, 2, 1, 0]; fp = [1, 1, 1, 0]; fn = [1, 1, 1, 0]; class 3 has no union
    iou = np.array([1 / 3, 2 / 4, 1 / 3])
    assert float(s["miou"]) == pytest.approx(iou.mean(), abs=1e-6)
    assert float(s["overall_accuracy"]) == pytest.approx(4 / 7, abs=1e-6)
    recall = np.array([1 / 2, 2 / 3, 1 / 2])
    assert float(s["macro_accuracy"]) == pytest.approx(recall.mean(), abs=1e-6)
    precision = np.array([1 / 2, 2 / 3, 1 / 2])
    f1 = 2 * precision * recall / (precision + recall)
    assert float(s["macro_f1"]) == pytest.approx(f1.mean(), abs=1e-6)
    assert float(s["per_class_iou"][3]) == 0.0


def test_confusion_matrix_weights_and_type_checks():
    cm = metrics.confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2,
                                  weights=np.array([1, 1, 0]))
    np.testing.assert_array_equal(np.asarray(cm), [[1, 0], [0, 1]])
    with pytest.raises(TypeError, match="integer"):
        metrics.confusion_matrix(np.array([0.0]), np.array([0]), 2)
    with pytest.raises(ValueError, match="differ"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0]), 2)


def test_accuracy_ignores_minus_one():
    assert float(metrics.accuracy(np.array([1, 2, 3, 0]), np.array([1, 2, 0, -1]))) == \
        pytest.approx(2 / 3)


def test_multilabel_scores_by_hand():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    p = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]])
    # tp = 1 + 1 + 2 = 4, fp = 1, fn = 1
    assert float(metrics.micro_f1(p, y)) == pytest.approx(8 / 10)
    assert float(metrics.exact_match(p, y)) == pytest.approx(1 / 3)
    counts = np.asarray(metrics.multilabel_counts(p, y, weights=np.array([1, 1, 0])))
    np.testing.assert_array_equal(counts, [2, 0, 1, 1, 2])
