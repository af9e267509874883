"""Augmentations act on the H/W axes of channel-last arrays, from explicit RNGs."""

import numpy as np
import pytest

from spacenit_jax.data import augment
from spacenit_jax.sensors import MISSING_VALUE


def _arrays(seed=0, n=4):
    rng = np.random.default_rng(seed)
    return {"sentinel2_l2a": rng.random((n, n, 3, 12)).astype(np.float32),
            "worldcover": rng.random((n, n, 1, 1)).astype(np.float32),
            "naip_10": rng.random((4 * n, 4 * n, 1, 4)).astype(np.float32),
            "era5_10": rng.random((3, 6)).astype(np.float32)}


def test_dihedral_symmetries():
    x = np.arange(2 * 3).reshape(2, 3)[:, :, None, None] * np.ones((1, 1, 2, 5))
    img = x[:, :, 0, 0]
    expect = [img, np.rot90(img, 1), np.rot90(img, 2), np.rot90(img, 3), img[:, ::-1], img[::-1],
              np.rot90(img, 1)[:, ::-1], np.rot90(img, 1)[::-1]]
    outs = set()
    for sym in range(8):
        y = augment.dihedral(x, sym)
        np.testing.assert_array_equal(y[:, :, 1, 4], expect[sym])  # H/W axes only
        assert y.shape[2:] == (2, 5)
        outs.add(y[:, :, 0, 0].tobytes() + bytes(y.shape[:2]))
    assert len(outs) == 8
    with pytest.raises(ValueError):
        augment.dihedral(x, 8)


def test_dihedral_transform_same_symmetry_for_all_spatial_sensors():
    a = _arrays()
    t = augment.build_transform("dihedral")
    for seed in range(8):
        out = t.apply([a], [np.random.default_rng(seed)])[0]
        sym = int(np.random.default_rng(seed).integers(0, 8))
        for lab in ("sentinel2_l2a", "worldcover", "naip_10"):
            np.testing.assert_array_equal(out[lab], augment.dihedral(a[lab], sym))
        assert out["era5_10"] is a["era5_10"]


def test_cutmix_on_spatial_axes():
    a, b = _arrays(0), _arrays(1)
    t = augment.build_transform({"type": "cutmix", "alpha": 1.0})
    out = t.apply([a, b], [np.random.default_rng(3), np.random.default_rng(4)])
    for lab, m in (("sentinel2_l2a", 1), ("worldcover", 1), ("naip_10", 4)):
        took = np.all(out[0][lab] == b[lab], axis=(2, 3))  # whole pixels (all T, C) replaced
        kept = np.all(out[0][lab] == a[lab], axis=(2, 3))
        assert np.all(took | kept)
        assert took.any() and kept.any()
        rows, cols = np.flatnonzero(took.any(1)), np.flatnonzero(took.any(0))
        assert np.all(took[rows.min():rows.max() + 1, cols.min():cols.max() + 1])  # a box
        assert rows.size % m == 0 and cols.size % m == 0
    np.testing.assert_array_equal(out[0]["era5_10"], a["era5_10"])


def test_sensor_dropout_marks_absent_and_keeps_shapes():
    a = _arrays()
    t = augment.build_transform({"type": "sensor_dropout", "drop_prob": 0.9, "min_sensors": 2})
    for seed in range(10):
        out = t.apply([a], [np.random.default_rng(seed)])[0]
        assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in a.items()}
        dropped = [k for k, v in out.items() if np.all(v == MISSING_VALUE)]
        kept = [k for k, v in out.items() if np.array_equal(v, a[k])]
        assert len(kept) >= 2 and len(dropped) + len(kept) == 4


def test_compose_and_errors():
    t = augment.build_transform({"type": "compose", "transforms": ["dihedral", {"type": "cutmix"}]})
    assert isinstance(t, augment.Compose) and len(t.transforms) == 2
    t2 = augment.build_transform({"transform_type": "sensor_dropout", "transform_kwargs": {"drop_prob": 0.5}})
    assert t2 == augment.SensorDropout(0.5, 1)
    with pytest.raises(ValueError, match="unknown augmentation type"):
        augment.build_transform("mixup")
    with pytest.raises(ValueError, match="unknown fields"):
        augment.build_transform({"type": "cutmix", "beta": 2})
