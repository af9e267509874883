"""Masks in the tokenizer's order, ABSENT detection, strategy bounds."""

import numpy as np
import pytest

from spacenit_jax import sensors
from spacenit_jax.data import budget, masking
from spacenit_jax.data.masking import ABSENT, PREDICTED, TARGET_ONLY, VISIBLE
from spacenit_jax.model.config import make_config
from spacenit_jax.sensors import MISSING_VALUE
from spacenit_jax.tokenization import SensorGrid, sample_tokens

LAYOUT = make_config("design_card", "nano", sensor_labels=("sentinel2_l2a", "sentinel1", "worldcover")).layout
OFFICIAL = {"type": "cross_sensor_random", "base_encode_ratio": 0.5, "base_decode_ratio": 0.5,
            "decode_only_sensors": list(sensors.OFFICIAL_DECODE_ONLY)}


def _sample(hw=3, p=2, t=4, seed=0):
    rng = np.random.default_rng(seed)
    n = hw * p
    return {"sentinel2_l2a": rng.random((n, n, t, 12), dtype=np.float32),
            "sentinel1": rng.random((n, n, t, 2), dtype=np.float32),
            "worldcover": rng.random((n, n, 1, 1), dtype=np.float32)}


def _ids(arrays, p):
    grids = {}
    for lab, x in arrays.items():
        st = sensors.get(lab).kind == sensors.SensorKind.SPACE_TIME
        grids[lab] = SensorGrid(x.shape[0] // p, x.shape[1] // p, x.shape[2] if st else 1, st)
    return sample_tokens(LAYOUT, grids)


def _vis(arrays, p, strategy, seed=0):
    ms = masking.mask_sample(LAYOUT, arrays, p, masking.build_masking(strategy),
                             np.random.default_rng(seed))
    return masking.visibility_vector(ms), ms


@pytest.mark.parametrize("structure,key", [("temporal", "time"), ("spatial", "rowcol"),
                                           ("spectral", "group")])
def test_structured_masks_follow_tokenizer_ids(structure, key):
    arrays = _sample()
    ids = _ids(arrays, 2)
    for seed in range(5):
        vis, _ = _vis(arrays, 2, {"type": structure, "encode_ratio": 0.4, "decode_ratio": 0.4}, seed)
        assert vis.shape == ids.sensor.shape
        for sid in range(3):
            sel = (ids.sensor == sid) & (ids.group >= 0)
            if key == "rowcol":
                k = ids.row[sel] * 100 + ids.col[sel]
            else:
                k = getattr(ids, key)[sel]
            states = vis[sel]
            for u in np.unique(k):  # one state per block, whatever the token's other ids
                assert len(set(states[k == u].tolist())) == 1
            if structure == "temporal" and sid == 0:
                # time-major: each timestep's tokens are one contiguous run
                t = ids.time[sel]
                assert np.all(np.diff(t) >= 0)
                block = sel.sum() // 4
                assert np.all(states.reshape(4, block) == states.reshape(4, block)[:, :1])


def test_absent_tokens_are_exactly_the_all_absent_patches():
    p, hw, t = 2, 3, 4
    arrays = _sample(hw, p, t)
    s2 = arrays["sentinel2_l2a"]
    s2[:, :, 1] = MISSING_VALUE  # a missing timestep
    s2[0:2, 4:6, 3] = MISSING_VALUE  # patch (r=0, c=2) at t=3
    s2[2:4, 0:2, 2, :5] = MISSING_VALUE  # only some channels: NOT absent
    s2[4, 4, 0] = MISSING_VALUE  # one pixel: NOT absent
    arrays["worldcover"][:] = MISSING_VALUE  # whole sensor
    ids = _ids(arrays, p)
    vis, ms = _vis(arrays, p, OFFICIAL)
    expect = np.zeros(vis.shape, bool)
    s2_tok = (ids.sensor == 0) & (ids.group >= 0)
    expect |= s2_tok & (ids.time == 1)
    expect |= s2_tok & (ids.time == 3) & (ids.row == 0) & (ids.col == 2)
    expect |= ids.sensor == 2  # worldcover: patch tokens and its type token
    np.testing.assert_array_equal(vis == ABSENT, expect)
    assert [m.type_state for m in ms] == [VISIBLE, VISIBLE, ABSENT]
    # absent_tokens itself, for every group of S2 (3 groups x 4 t x 3 x 3)
    a = masking.absent_tokens(LAYOUT, "sentinel2_l2a", s2, p)
    np.testing.assert_array_equal(a, expect[s2_tok])


def test_official_counts_and_decode_only():
    arrays = _sample(hw=4, p=1, t=3)
    ids = _ids(arrays, 1)
    vis, ms = _vis(arrays, 1, OFFICIAL)
    for m in ms:
        n = m.geometry.n
        c = np.bincount(m.states, minlength=4)
        if m.label == "worldcover":  # decode-only: max(1, int(0.05 N)) visible
            assert c[VISIBLE] == max(1, int(0.05 * n)) and c[PREDICTED] == n - c[VISIBLE]
        else:
            assert c[VISIBLE] == n // 2 and c[PREDICTED] == n // 2
    assert vis[ids.group < 0].tolist() == [VISIBLE] * 3


def test_none_masking_all_visible():
    arrays = _sample()
    arrays["sentinel1"][:, :, 0] = MISSING_VALUE
    vis, _ = _vis(arrays, 2, "none")
    ids = _ids(arrays, 2)
    absent = (ids.sensor == 1) & (ids.time == 0)
    assert np.all(vis[absent] == ABSENT) and np.all(vis[~absent] == VISIBLE)


STRATEGIES = [
    {"type": "random", "encode_ratio": 0.3, "decode_ratio": 0.5},
    {"type": "spatial", "encode_ratio": 0.25, "decode_ratio": 0.5},
    {"type": "temporal", "encode_ratio": 0.5, "decode_ratio": 0.25},
    {"type": "spectral", "encode_ratio": 0.34, "decode_ratio": 0.34},
    OFFICIAL,
    {"type": "cross_sensor", "base_encode_ratio": 0.01, "min_encoded": 0.15},
    {"type": "cross_sensor", "base_encode_ratio": 0.95, "base_decode_ratio": 0.05, "max_encoded": 0.5},
    {"type": "range", "min_encode": 0.2, "max_encode": 0.7, "decode_ratio": 0.2},
    {"type": "scheduled", "initial_encode_ratio": 0.1, "final_encode_ratio": 0.6, "warmup_steps": 3,
     "decode_ratio": 0.3, "structure": "spatial"},
    {"type": "composite", "strategies": [{"type": "random", "encode_ratio": 0.6},
                                         {"type": "temporal", "decode_ratio": 0.5}]},
    {"type": "union", "strategies": [{"type": "random", "encode_ratio": 0.2, "decode_ratio": 0.7},
                                     {"type": "spatial", "encode_ratio": 0.3, "decode_ratio": 0.6}]},
    {"type": "intersection", "strategies": [{"type": "random", "encode_ratio": 0.6, "decode_ratio": 0.3},
                                            {"type": "spectral", "encode_ratio": 0.5, "decode_ratio": 0.5}]},
    {"type": "cascade", "strategies": [{"type": "random", "encode_ratio": 0.6},
                                       {"type": "random", "encode_ratio": 0.5, "decode_ratio": 0.5}]},
]


@pytest.mark.parametrize("cfg", STRATEGIES, ids=lambda c: c["type"])
def test_bounds_hold(cfg):
    strat = masking.build_masking(cfg)
    geos = [budget.Geometry(t, g, h, h) for t, g, h in [(1, 1, 1), (3, 3, 2), (4, 2, 5), (12, 3, 1), (2, 1, 7)]]
    for geo in geos:
        bv, bp = strat.bounds("sentinel2_l2a", geo)
        assert 0 <= bv <= geo.n and 0 <= bp <= geo.n
        mv = mp = 0
        for seed in range(30):
            m = strat.mask("sentinel2_l2a", geo, np.random.default_rng(seed), step=seed)
            assert m.shape == (geo.n,) and m.dtype == np.int8
            c = np.bincount(m, minlength=4)
            assert c[ABSENT] == 0
            mv, mp = max(mv, c[VISIBLE]), max(mp, c[PREDICTED])
        assert mv <= bv and mp <= bp, (geo, mv, bv, mp, bp)
        if cfg["type"] in ("random", "spatial", "temporal", "spectral"):
            assert (mv, mp) == (bv, bp)  # exact for fixed ratios


def test_cross_sensor_min_clamp_and_schedule():
    geo = budget.Geometry(1, 1, 10, 10)
    m = masking.build_masking({"type": "cross_sensor", "base_encode_ratio": 0.01, "min_encoded": 0.15})
    assert np.sum(m.mask("x", geo, np.random.default_rng(0), 0) == VISIBLE) == 15
    s = masking.build_masking({"type": "scheduled", "warmup_steps": 10})
    early = np.sum(s.mask("x", geo, np.random.default_rng(0), 0) == VISIBLE)
    late = np.sum(s.mask("x", geo, np.random.default_rng(0), 100) == VISIBLE)
    assert (early, late) == (10, 50)


def test_compose_rules():
    a = np.array([0, 1, 2, 3, 0, 2], np.int8)
    b = np.array([2, 0, 1, 0, 3, 2], np.int8)
    np.testing.assert_array_equal(masking.compose_masks([a, b], "union"), [0, 0, 1, 3, 3, 2])
    np.testing.assert_array_equal(masking.compose_masks([a, b], "intersection"), [2, 1, 2, 3, 3, 2])
    np.testing.assert_array_equal(masking.compose_masks([a, b], "cascade"), [2, 1, 2, 3, 3, 2])
    assert masking.compose_masks([a], "union") is a
    with pytest.raises(ValueError, match="at least one"):
        masking.compose_masks([], "union")
    with pytest.raises(ValueError, match="unknown mask composition rule"):
        masking.compose_masks([a, b], "xor")


def test_build_errors():
    with pytest.raises(ValueError, match="unknown masking type"):
        masking.build_masking({"type": "nope"})
    with pytest.raises(ValueError, match="unknown fields"):
        masking.build_masking({"type": "random", "ratio": 0.5})
    with pytest.raises(ValueError, match="unknown mask structure"):
        masking.build_masking({"type": "range", "structure": "diagonal"})
    with pytest.raises(ValueError, match="not a multiple"):
        budget.sensor_geometry(LAYOUT, "sentinel1", np.zeros((5, 5, 2, 2)), 2)
    assert TARGET_ONLY == 1
