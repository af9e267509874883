"""Normalisation with the original's statistics, missing values kept, NaN/Inf -> 0."""

import json

import numpy as np
import pytest

from spacenit_jax import sensors
from spacenit_jax.data import normalize
from spacenit_jax.sensors import MISSING_VALUE


def test_json_structure_and_coverage():
    comp = normalize.load_stats("computed")
    pre = normalize.load_stats("predefined")
    assert (comp["total_n"], comp["sampled_n"], comp["tile_path"]) == (103896, 103896, "")
    computed_sensors = {"sentinel2_l2a", "sentinel1", "landsat", "worldcover", "srtm", "era5_10",
                        "naip", "naip_10", "cdl", "wri_canopy_height_map", "worldpop", "gse"}
    assert {k for k, v in comp.items() if isinstance(v, dict)} == computed_sensors
    assert set(pre) == {"openstreetmap_raster", "worldcereal", "sentinel2", "latlon", "sentinel1",
                        "sentinel2_l2a", "srtm", "worldcover", "latlon_cartesian"}
    for label in computed_sensors:
        assert list(comp[label]) == list(sensors.get(label).bands)
        for st in comp[label].values():
            assert set(st) == {"count", "mean", "std", "var"}
    s2 = comp["sentinel2_l2a"]["B02"]
    assert s2["count"] == 80759239680
    assert s2["var"] == pytest.approx(s2["std"] ** 2 * s2["count"])  # sum of squares
    assert list(pre["sentinel2_l2a"]) == list(sensors.get("sentinel2").bands)  # 13 incl. B10
    # every official sensor resolves to some statistics
    for label in sensors.OFFICIAL_SENSORS:
        lo, hi, strategy = normalize.band_range(label)
        assert lo.shape == (sensors.get(label).num_channels,)
        expected = "predefined" if label in ("openstreetmap_raster", "worldcereal") else "computed"
        assert strategy == expected
    json.dumps(comp)


def _one(label, values):
    c = sensors.get(label).num_channels
    x = np.asarray(values, np.float32).reshape(1, 1, 1, c)
    return normalize.normalize_array(label, x)[0, 0, 0]


def test_hand_computed_values():
    # S2 B02: mean 1188.9412572078477, std 1859.1923971769581: y = (x - m + 2s) / (4s)
    x = np.full(12, 1000.0)
    y = _one("sentinel2_l2a", x)
    assert y[0] == np.float32((1000.0 - 1188.9412572078477 + 2 * 1859.1923971769581)
                              / (4 * 1859.1923971769581))
    assert y[0] == pytest.approx(0.4745936, abs=1e-7)
    # the band mean maps to exactly 0.5, mean + 2 std to 1.0
    assert _one("sentinel1", [-11.648990747328444, -17.745436133270044 + 2 * 10.216274681392647]
                ).tolist() == [0.5, 1.0]
    assert _one("srtm", [677.0219719644446])[0] == 0.5
    # placeholders: cdl y = x / 200, wri y = x / 20, worldpop y = (x + 50) / 400
    assert _one("cdl", [100.0])[0] == 0.5
    assert _one("wri_canopy_height_map", [5.0])[0] == 0.25
    assert _one("worldpop", [150.0])[0] == 0.5
    # predefined fallback: worldcereal [0, 100], OSM [0, 1], latlon [-90, 90] x [-180, 180]
    assert _one("worldcereal", [50.0] * 8).tolist() == [0.5] * 8
    osm = np.arange(30) % 2
    assert _one("openstreetmap_raster", osm).tolist() == osm.tolist()
    assert _one("latlon", [45.0, -90.0]).tolist() == [0.75, 0.25]
    # landsat B10: float64 arithmetic, then cast (a float32 computation differs here)
    x = np.full(11, 65535.0)
    y = _one("landsat", x)[9]
    m, s = 21347.89356940543, 10957.2815012006
    assert y == np.float32((65535.0 - m + 2 * s) / (4 * s))


def test_absent_nan_inf():
    x = np.full((2, 2, 3, 2), -11.648990747328444, np.float32)
    x[0, 0, 1] = MISSING_VALUE  # a missing timestep
    x[1, 1, 0, 0] = np.nan
    x[1, 1, 0, 1] = np.inf
    y = normalize.normalize_array("sentinel1", x)
    assert y.dtype == np.float32
    assert np.all(y[0, 0, 1] == MISSING_VALUE)
    assert y[1, 1, 0, 0] == 0.0 and y[1, 1, 0, 1] == 0.0
    assert y[0, 1, 2, 0] == 0.5
    full = np.full((2, 2, 1, 1), MISSING_VALUE, np.float32)
    np.testing.assert_array_equal(normalize.normalize_array("worldcover", full), full)
    # normalisation off: cast + NaN/Inf -> 0 only
    out = normalize.normalize_sample({"sentinel1": x}, enabled=False)["sentinel1"]
    assert out[1, 1, 0, 0] == 0 and out[0, 0, 1, 0] == MISSING_VALUE and out[0, 1, 2, 0] == x[0, 1, 2, 0]


def test_errors():
    with pytest.raises(ValueError, match="expected 2 channels"):
        normalize.normalize_array("sentinel1", np.zeros((1, 1, 1, 3)))
    with pytest.raises(ValueError, match="unknown statistics file"):
        normalize.load_stats("other")


def test_shared_formula_matches_evaluation_dataset_norm():
    """`std_bounds` + `scale_to_unit` are the formula of the COMPUTED strategy and of
    evaluation's bounds-based dataset normalisation (eval.normalization)."""
    from spacenit_jax.eval import normalization

    rng = np.random.default_rng(0)
    x = rng.normal(1000, 300, (4, 5, 3))
    mean, std = np.array([900.0, 1000.0, 1200.0]), np.array([250.0, 300.0, 400.0])
    lo, hi = normalize.std_bounds(mean, std, 2)
    np.testing.assert_array_equal(lo, mean - 2 * std)
    y = normalize.scale_to_unit(x, lo, hi)
    np.testing.assert_allclose(y, (x - mean + 2 * std) / (4 * std), rtol=1e-12)
    for k in (1, 2, 3):
        name = "norm_no_clip" + ("" if k == 1 else f"_{k}_std")
        ref = normalization.apply_dataset_norm(x, normalization.parse_norm_method(name), mean, std)
        np.testing.assert_allclose(normalize.scale_to_unit(x, *normalize.std_bounds(mean, std, k)),
                                   ref, rtol=1e-12)
    # the packaged S2 bounds are mean +- 2 std of computed.json
    comp = normalize.load_stats("computed")["sentinel2_l2a"]
    lo, hi, _ = normalize.band_range("sentinel2_l2a")
    b02 = comp["B02"]
    assert lo[0] == pytest.approx(b02["mean"] - 2 * b02["std"]) and hi[0] == pytest.approx(
        b02["mean"] + 2 * b02["std"])
