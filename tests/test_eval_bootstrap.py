"""Bootstrap confidence intervals."""

import numpy as np
import pytest

from spacenit_jax.eval import bootstrap, metrics


def predictions(n, accuracy, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    wrong = rng.permutation(n)[: int(round((1 - accuracy) * n))]
    preds = labels.copy()
    preds[wrong] = (labels[wrong] + 1) % 5
    return preds, labels


def test_interval_contains_point_estimate_and_shrinks_with_more_samples():
    widths = []
    for n in (200, 5000):
        preds, labels = predictions(n, 0.7)
        point = float(np.mean(preds == labels))
        res = bootstrap.bootstrap_accuracy(preds, labels, n_bootstrap=300, seed=42)
        assert res.ci_lower <= point <= res.ci_upper
        assert res.mean == pytest.approx(point, abs=0.01)
        assert res.std == pytest.approx(np.sqrt(point * (1 - point) / n), rel=0.25)
        assert res.scores.shape == (300,)
        widths.append(res.ci_upper - res.ci_lower)
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(n): (200/5000) ** 0.5 = 0.2


def test_resampling_uses_pcg64_seed_and_population_std():
    preds, labels = predictions(50, 0.6, seed=1)
    res = bootstrap.bootstrap_accuracy(preds, labels, n_bootstrap=20, seed=7)
    rng = np.random.Generator(np.random.PCG64(7))
    correct = preds == labels
    want = np.array([correct[rng.choice(50, 50, replace=True)].mean() for _ in range(20)])
    np.testing.assert_allclose(res.scores, want)
    assert res.std == pytest.approx(want.std(ddof=0))
    assert res.ci_lower == pytest.approx(np.percentile(want, 2.5))
    assert res.as_dict()["bootstrap_ci_upper"] == res.ci_upper
    again = bootstrap.bootstrap_accuracy(preds, labels, n_bootstrap=20, seed=7)
    np.testing.assert_array_equal(again.scores, res.scores)


def test_micro_f1_and_miou_variants():
    rng = np.random.default_rng(2)
    y = (rng.random((100, 4)) < 0.5).astype(int)
    p = np.where(rng.random((100, 4)) < 0.8, y, 1 - y)
    res = bootstrap.bootstrap_micro_f1(p, y, n_bootstrap=50)
    point = float(metrics.micro_f1(p, y))
    assert res.ci_lower <= point <= res.ci_upper

    lab = rng.integers(0, 3, (30, 8, 8))
    pred = np.where(rng.random((30, 8, 8)) < 0.7, lab, (lab + 1) % 3)
    cms = np.stack([np.asarray(metrics.confusion_matrix(pred[i], lab[i], 3)) for i in range(30)])
    res = bootstrap.bootstrap_miou(cms, n_bootstrap=30)
    point = float(metrics.segmentation_scores(cms.sum(0))["miou"])
    assert res.ci_lower <= point <= res.ci_upper


def test_errors():
    with pytest.raises(ValueError, match="n_bootstrap"):
        bootstrap.bootstrap_accuracy(np.zeros(3), np.zeros(3), n_bootstrap=0)
