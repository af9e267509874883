"""The built-in synthetic classification set: format, determinism, learnable labels."""

import numpy as np

from spacenit_jax.eval import knn
from spacenit_jax.eval.synthetic import SyntheticClassification


def test_format_matches_the_geobench_reader():
    ds = SyntheticClassification("train", num_samples=20, image_size=16)
    s = ds[3]
    assert s.image.shape == (16, 16, 1, 12) and s.image.dtype == np.float32
    assert s.label == 3 and s.sensor == "sentinel2_l2a"
    np.testing.assert_array_equal(s.timestamps, [[1, 6, 2020]])
    assert len(SyntheticClassification("valid")) == 100 and len(SyntheticClassification()) == 300


def test_deterministic_per_seed_split_and_index():
    a = SyntheticClassification("test", num_samples=10, seed=1)
    b = SyntheticClassification("test", num_samples=50, seed=1)
    np.testing.assert_array_equal(a[7].image, b[7].image)
    assert not np.array_equal(a[7].image, SyntheticClassification("train", seed=1)[7].image)
    assert not np.array_equal(a[7].image, SyntheticClassification("test", seed=2)[7].image)


def test_classes_are_recoverable_from_the_mean_spectrum():
    train_x, train_y = SyntheticClassification("train", image_size=16).load_arrays()
    test_x, test_y = SyntheticClassification("test", image_size=16).load_arrays()
    assert np.bincount(train_y).tolist() == [30] * 10
    res = knn.knn_evaluate(train_x.mean(axis=(1, 2, 3)), train_y, test_x.mean(axis=(1, 2, 3)),
                           test_y, num_classes=10)
    assert res.accuracy >= 0.95
