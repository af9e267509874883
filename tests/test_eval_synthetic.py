"""The built-in synthetic classification set: format, determinism, learnable labels."""

import numpy as np
import pytest

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


def test_segmentation_tiles_are_labelled_per_pixel():
    from spacenit_jax.eval.synthetic import SyntheticSegmentation

    ds = SyntheticSegmentation("valid", num_samples=4, num_classes=3, image_size=16, block=8,
                               noise=0.0)
    s = ds[2]
    assert s.image.shape == (16, 16, 1, 12) and s.label.shape == (16, 16)
    np.testing.assert_array_equal(s.image, ds[2].image)  # a pure function of the index
    assert np.array_equal(s.label[:8, :8], np.full((8, 8), s.label[0, 0]))  # one class a tile
    # without noise each pixel's spectrum is its class signature times a positive factor
    spectra = s.image[:, :, 0] / np.linalg.norm(s.image[:, :, 0], axis=-1, keepdims=True)
    sig = ds.signatures / np.linalg.norm(ds.signatures, axis=-1, keepdims=True)
    np.testing.assert_array_equal(np.argmax(spectra @ sig.T, axis=-1), s.label)
    with pytest.raises(ValueError, match="block 5 must divide image_size 16"):
        SyntheticSegmentation(image_size=16, block=5)
