"""Benchmark normalisation: one entry point, sharing the pretraining standardiser."""

import numpy as np
import pytest

from spacenit_jax import sensors
from spacenit_jax.data import normalize
from spacenit_jax.eval import normalization

SENSOR = "sentinel2_l2a"


def raw_image(seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 6000, (8, 8, sensors.get(SENSOR).num_channels))


def test_pretrained_is_the_pretraining_standardiser_itself():
    x = raw_image()
    x[0, 0] = sensors.MISSING_VALUE
    got = normalization.normalize_image(x, SENSOR, "pretrained")
    np.testing.assert_array_equal(got, normalize.normalize_array(SENSOR, x, np.float64))
    assert (got[0, 0] == sensors.MISSING_VALUE).all()  # the fill value is kept


def test_two_std_bounds_with_the_pretraining_stats_equal_the_pretraining_standardiser():
    """The dataset-statistics formula and the pretraining one are the same arithmetic."""
    computed = normalize.load_stats("computed")[SENSOR]
    bands = sensors.get(SENSOR).bands
    stats = {"mean": [computed[b]["mean"] for b in bands],
             "std": [computed[b]["std"] for b in bands]}
    x = raw_image(1)
    np.testing.assert_allclose(
        normalization.normalize_image(x, SENSOR, "norm_no_clip_2_std", stats),
        normalize.normalize_array(SENSOR, x, np.float64), rtol=1e-12, atol=1e-12)


def test_method_names_and_errors():
    assert normalization.parse_norm_method("pretrained").kind == "pretrained"
    assert normalization.parse_norm_method("norm_yes_clip_3_std_int") == \
        normalization.NormMethod("norm_yes_clip_3_std_int", "bounds", 3.0, True, True, False)
    with pytest.raises(ValueError, match="needs the dataset's band statistics"):
        normalization.normalize_image(raw_image(), SENSOR, "norm_no_clip")
    with pytest.raises(ValueError, match="uses the pretraining statistics"):
        normalization.apply_dataset_norm(raw_image(), normalization.parse_norm_method(
            "pretrained"), 0.0, 1.0)
