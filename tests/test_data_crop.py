"""Token budget -> T_out (the original's token table) and the crop window."""

import numpy as np
import pytest

from spacenit_jax.data import budget, crop, h5
from spacenit_jax.model.config import make_config

NANO = make_config("design_card", "nano").layout

# the original's token table: nano / official sensors, budget 2250
T_OUT = [12, 12, 12, 12, 12, 9, 6, 4, 3, 2, 2, 1]
PATCH_TOKENS = [78, 312, 702, 1248, 1950, 2160, 2058, 1920, 1944, 1800, 2178, 1728]
WITH_TYPE = [87, 321, 711, 1257, 1959, 2169, 2067, 1929, 1953, 1809, 2187, 1737]


def test_budget_table_matches_the_originals():
    table = budget.token_table(NANO, 2250, range(1, 13))
    assert [table[h][0] for h in range(1, 13)] == T_OUT
    assert [table[h][1] for h in range(1, 13)] == PATCH_TOKENS
    assert [table[h][2] for h in range(1, 13)] == WITH_TYPE
    assert [budget.token_count(NANO, h, 2250) for h in range(1, 13)] == WITH_TYPE
    assert budget.max_hw_for_budget(NANO, 2250) == 13  # hw_p >= 14 violates t* >= 1
    with pytest.raises(ValueError, match="cannot hold one timestep"):
        budget.timesteps_for_budget(NANO, 14, 2250)
    # the v1 layout has one group per sensor: per_step = 3 hw^2, fixed = 6 hw^2
    v1 = make_config("reference_v1", "nano").layout
    assert budget.timesteps_for_budget(v1, 8, 2250) == min(12, (2250 - 6 * 64) // (3 * 64))


def test_allowed_hw_clips_to_tile():
    assert crop.allowed_hw(range(1, 13), 8, 64) == tuple(range(1, 9))
    assert crop.allowed_hw(range(1, 13), 6, 64) == tuple(range(1, 11))
    assert crop.allowed_hw(range(1, 13), 1, 256) == tuple(range(1, 13))
    assert crop.allowed_hw(range(1, 20), 1, 256, NANO, 2250) == tuple(range(1, 14))


def _header(cur=12, positions=None, size=32):
    ts = np.zeros((max(cur, 12), 3), np.int64)
    pos = positions if positions is not None else {"sentinel2_l2a": np.arange(cur)}
    return h5.SampleHeader("x.h5", ts, cur, pos, {}, size, size, positions is not None)


def test_window_is_deterministic_and_in_range():
    h = _header()
    for seed in range(20):
        a = crop.choose_window(h, 3, 4, 12, np.random.default_rng(seed))
        b = crop.choose_window(h, 3, 4, 12, np.random.default_rng(seed))
        assert a.t_start == b.t_start == 0 and a.t_len == 12
        np.testing.assert_array_equal(a.rows, b.rows)
        assert a.rows.size == 12 and 0 <= a.rows[0] and a.rows[-1] < 32
        assert np.all(np.diff(a.rows) == 1) and np.all(np.diff(a.cols) == 1)
    with pytest.raises(h5.H5FormatError, match="needs 40x40 pixels"):
        crop.choose_window(h, 5, 8, 12, np.random.default_rng(0))


def test_start_timestep_uses_masks():
    # current length 12, T_out 4: starts where some sensor has data and t + 4 <= 12
    pos = {"sentinel2_l2a": np.array([0, 9, 10]), "sentinel1": np.array([3, 11])}
    h = _header(12, pos)
    starts = {crop.choose_start_t(h, 4, np.random.default_rng(s)) for s in range(200)}
    assert starts == {0, 3}
    h2 = _header(12, None)
    h2 = h5.SampleHeader("x.h5", h2.timestamps, 12, h2.positions, {}, 32, 32, False)
    starts = {crop.choose_start_t(h2, 9, np.random.default_rng(s)) for s in range(200)}
    assert starts == {0, 1, 2, 3}


def test_patchwise_crop():
    h = _header()
    w = crop.choose_window(h, 3, 4, 12, np.random.default_rng(1), patchwise=True)
    assert w.rows.size == 12
    blocks = w.rows.reshape(3, 4)
    assert np.all(blocks % 4 == np.arange(4)) and len(set(blocks[:, 0])) == 3
