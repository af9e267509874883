"""Packing plan numbers and packed views that reference exactly the right tokens."""

import numpy as np
import pytest

from spacenit_jax import sensors
from spacenit_jax.batch import embed_table_offsets
from spacenit_jax.data import budget, masking, packing, tokenize
from spacenit_jax.data.masking import ABSENT, PREDICTED, VISIBLE
from spacenit_jax.data.plan import PackingPlan, suggest_row_length
from spacenit_jax.model.config import make_config
from spacenit_jax.sensors import MISSING_VALUE

NANO = make_config("design_card", "nano").layout
OFFICIAL = masking.build_masking({
    "type": "cross_sensor_random", "base_encode_ratio": 0.5, "base_decode_ratio": 0.5,
    "decode_only_sensors": list(sensors.OFFICIAL_DECODE_ONLY)})


def test_plan_fits_and_is_optimal():
    plan = PackingPlan.build(NANO, 2250, range(1, 13), 4, 2250, OFFICIAL, align=8)
    assert plan.k[1] >= 1 and plan.max_samples_per_row == max(plan.k.values())
    for s in plan.shapes:
        k = plan.k[s.hw_p]
        assert s.tokens == budget.token_count(NANO, s.hw_p, 2250)
        assert k * s.tokens <= plan.row_length and k * s.max_visible <= plan.online_length
        assert k * s.max_predicted <= plan.decoder_length
        # k is the most that fits all three streams
        assert ((k + 1) * s.tokens > plan.row_length or (k + 1) * s.max_visible > plan.online_length
                or (k + 1) * s.max_predicted > plan.decoder_length)
        for key, n in s.group_tokens:
            assert k * n <= plan.caps[key]
    assert plan.online_length % 8 == 0 and plan.decoder_length % 8 == 0
    # official masking at hw_p = 1: S2/S1/Landsat 36 tokens half visible, 6 decode-only
    # sensors 1 visible each, 9 type tokens
    s1 = plan.shape(1)
    assert (s1.tokens, s1.max_visible, s1.max_predicted) == (87, 18 + 6 + 12 + 6 + 9, 36)
    # no (L_o, L_d) does better on the cost-weighted objective (brute force)
    n = np.array([s.tokens for s in plan.shapes])
    v = np.array([s.max_visible for s in plan.shapes])
    d = np.array([s.max_predicted for s in plan.shapes])
    lo = np.arange(v.max(), 2251)[:, None, None]
    ld = np.arange(d.max(), 2251)[None, :, None]
    k = np.minimum(np.minimum(2250 // n, lo // v), ld // d)
    eff = (k * (n + 3 * v + 3 * d)).mean(-1) / (2250 + 3 * lo[..., 0] + 3 * ld[..., 0])
    aligned = eff[(lo[:, 0, 0] % 8 == 0)][:, ld[0, :, 0] % 8 == 0]
    assert aligned.max() == pytest.approx(plan.efficiency(), abs=1e-12)
    assert plan.efficiency() > 0.99 * eff.max()  # alignment to 8 costs < 1%


def test_plan_without_masking_and_errors():
    plan = PackingPlan.build(NANO, 2250, [2, 5], 2, 2250, masking.NoMasking())
    assert (plan.online_length, plan.decoder_length) == (2250, 1)
    assert plan.k == {2: 7, 5: 1}
    with pytest.raises(ValueError, match="shorter than one sample"):
        PackingPlan.build(NANO, 2250, [11], 2, 2000, OFFICIAL)
    with pytest.raises(KeyError, match="not in the plan"):
        plan.samples_per_batch(3)


def _sample_arrays(rng, hw, p, t, absent_sensor=None, absent_step=None):
    n = hw * p
    out = {}
    for lab in NANO.sensor_labels:
        spec = sensors.get(lab)
        tt = t if spec.kind == sensors.SensorKind.SPACE_TIME else 1
        out[lab] = rng.random((n, n, tt, spec.num_channels), dtype=np.float32)
    if absent_sensor:
        out[absent_sensor][:] = MISSING_VALUE
    if absent_step is not None:
        out["sentinel1"][:, :, absent_step] = MISSING_VALUE
        out["landsat"][: p, : p, absent_step] = MISSING_VALUE  # one patch position only
    return out


@pytest.mark.parametrize("strategy", [OFFICIAL, masking.NoMasking()])
def test_packed_view_references_exactly_the_right_tokens(strategy):
    hw, p = 3, 2
    plan = PackingPlan.build(NANO, 2250, [3], 2, 2250, strategy)
    k = plan.k[3]
    t_out = plan.shape(3).t_out
    rng = np.random.default_rng(0)
    prepared = []
    n_samples = 2 * k - 1  # one unused slot
    for j in range(n_samples):
        arrays = _sample_arrays(rng, hw, p, t_out, absent_sensor="cdl" if j == 1 else None,
                                absent_step=j % t_out if j % 2 == 0 else None)
        ms = masking.mask_sample(NANO, arrays, p, strategy, rng)
        months = np.arange(t_out) % 12
        prepared.append(tokenize.prepare_sample(NANO, arrays, p, months, ms))
    view, stats = packing.pack_view(plan, NANO, prepared, 3)
    offsets, type_off = embed_table_offsets(NANO, plan.caps)
    keys = [g.key for g in NANO.groups]
    tok = view.tokens
    assert tok.sensor.shape == (2, plan.row_length)
    assert view.online.src.shape == (2, plan.online_length)
    assert view.sample_valid.sum() == n_samples and not view.sample_valid[1, k - 1]
    total = [0, 0, 0]
    for j, s in enumerate(prepared):
        r, seg = divmod(j, k)
        in_seg = np.flatnonzero(tok.segment[r] == seg)
        keep = np.flatnonzero(s.states != ABSENT)
        assert in_seg.size == keep.size and np.all(np.diff(in_seg) == 1)
        for f in ("sensor", "group", "row", "col", "time"):
            np.testing.assert_array_equal(getattr(tok, f)[r, in_seg], getattr(s.ids, f)[keep])
        np.testing.assert_array_equal(tok.month[r, in_seg], s.month[keep])
        np.testing.assert_array_equal(tok.pos_scale[r, in_seg], s.pos_scale[keep])
        # pixels behind each token's embed_index are that token's patch
        for pos, ti in zip(in_seg, keep, strict=True):
            e = tok.embed_index[r, pos]
            g = s.ids.group[ti]
            if g < 0:
                assert e == type_off + s.ids.sensor[ti]
            else:
                key = keys[g]
                slot = e - offsets[key]
                assert 0 <= slot < plan.caps[key]
                np.testing.assert_array_equal(view.patches[key][r, slot], s.patches[key][s.ids.patch[ti]])
        for sub, state in ((view.online, VISIBLE), (view.decoder, PREDICTED)):
            sel = sub.segment[r] == seg
            want = np.flatnonzero(s.states[keep] == state) + in_seg[0]
            if not plan.masked and state == VISIBLE:
                want = in_seg  # the tokens stream itself
            if not plan.masked and state == PREDICTED:
                want = np.zeros(0, int)
            np.testing.assert_array_equal(sub.src[r, sel], want)
        total[0] += keep.size
    pad = tok.segment == -1
    assert np.all(tok.embed_index[pad] == 0) and np.all(tok.sensor[pad] == 0)
    assert np.all(view.online.src[view.online.segment == -1] == 0)
    assert stats.num_samples == n_samples and stats.real_tokens == total[0]
    assert stats.pad_tokens == pytest.approx(1 - total[0] / (2 * plan.row_length))
    if not plan.masked:
        np.testing.assert_array_equal(view.online.segment, tok.segment)
        assert view.decoder.src.shape == (2, 1) and np.all(view.decoder.segment == -1)
    with pytest.raises(ValueError, match="do not fit"):
        packing.pack_view(plan, NANO, prepared * 2, 3)


def test_row_length_suggestions():
    rows = suggest_row_length(NANO, 2250, range(1, 13), OFFICIAL, [2192, 4376])
    assert [r["L_t"] for r in rows] == [2192, 4376]
    assert rows[1]["cost_weighted_efficiency"] > rows[0]["cost_weighted_efficiency"]


def test_padding_floor_bounds_every_plan():
    hws = range(1, 13)
    floor = PackingPlan.build(NANO, 2250, hws, 1, 2192, OFFICIAL).padding_floor()
    assert 0.05 < floor < 0.12  # the split of VISIBLE / PREDICTED varies with hw_p
    for lt in (2192, 4376, 22000):
        plan = PackingPlan.build(NANO, 2250, hws, 1, lt, OFFICIAL)
        assert plan.report()["expected"]["pad_overall"] >= floor - 1e-3
    # one crop size: equal samples, the streams can be sized exactly
    one = PackingPlan.build(NANO, 2250, [4], 1, 1264, OFFICIAL)
    assert one.padding_floor() < 1e-3


@pytest.mark.parametrize("preset", ["design_card", "reference_v1"])
def test_matmul_xp_matches_tokenization_numpy(preset):
    from spacenit_jax.tokenization import sensor_patches

    layout = make_config(preset, "nano").layout
    rng = np.random.default_rng(0)
    for p in (1, 3, 5, 8):
        x = rng.random((3 * p, 3 * p, 2, 12), dtype=np.float32)
        a, ga = sensor_patches(layout, "sentinel2_l2a", x, p, True)
        b, gb = sensor_patches(layout, "sentinel2_l2a", x, p, True, xp=tokenize.FAST_NP)
        assert ga == gb and a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=2e-6)
