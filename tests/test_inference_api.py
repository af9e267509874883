"""The public encode API on real imagery (tests/data/terramind-examples): loading, band
names, units, normalisation identical to the training pipeline, encode identical to the
training encoder, ABSENT tokens for nodata, errors, one compile per shape, and the one
patch-grid rule at every patch size (issue 12, fault 6)."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest
import rasterio
from inference_tiny import SENSORS, save_tiny, tiny_config

import spacenit_jax
from spacenit_jax import checkpoint, sensors, tracing
from spacenit_jax.data import masking, normalize, packing, plan, tokenize
from spacenit_jax.data.h5 import H5Source
from spacenit_jax.inference import convert, prepare
from spacenit_jax.model.encoder import image_tokens
from spacenit_jax.sensors import MISSING_VALUE
from spacenit_jax.tokenization import TokenState

LOC = "38D_378R_2_3"
TERRAMIND_S2 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
                "B12")


def read_tif(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read().transpose(1, 2, 0)


@pytest.fixture(scope="module")
def raw(data_dir):
    root = data_dir / "terramind-examples"
    return {"sentinel2_l2a": read_tif(root / "S2L2A" / f"{LOC}.tif"),
            "sentinel1": read_tif(root / "S1RTC" / f"{LOC}.tif"),
            "srtm": read_tif(root / "DEM" / f"{LOC}.tif")}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return spacenit_jax.load(save_tiny(tmp_path_factory.mktemp("tiny")))


def window(raw, r=0, c=0, size=32):
    return {k: v[r:r + size, c:c + size] for k, v in raw.items()}


BANDS = {"sentinel2_l2a": TERRAMIND_S2}


# --------------------------------------------------------------------------- loading


def test_load_any_checkpoint_path_and_normalisation(tmp_path, model):
    work = save_tiny(tmp_path / "w", normalize=False)
    for path in (work, work / "checkpoints", work / "checkpoints" / "1"):
        m = spacenit_jax.load(path)
        assert m.step == 1 and m.cfg == tiny_config() and m.source == "workdir"
        assert not m.normalization.enabled and "data.normalize" in m.normalization.source
    assert model.normalization.enabled
    assert model.normalization.strategies == {k: "computed" for k in SENSORS}
    with pytest.raises(FileNotFoundError, match="not a checkpoint: expected a pretraining"):
        spacenit_jax.load(work / "checkpoints" / "1" / "params")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        spacenit_jax.load(tmp_path / "nowhere")


def test_export_loads_and_encodes_like_its_workdir(tmp_path, raw):
    pytest.importorskip("safetensors")
    from torch_bridge import export

    work = save_tiny(tmp_path / "w", kind="latent_predictor", seed=3)
    out = export.export_checkpoint(work, tmp_path / "export")
    a, b = spacenit_jax.load(work), spacenit_jax.load(out)
    assert b.source == "export" and b.normalization.enabled
    assert "implied" in b.normalization.source
    img = window(raw)
    ea = a.encode(img, bands=BANDS, pooling="mean").embeddings
    eb = b.encode(img, bands=BANDS, pooling="mean").embeddings
    np.testing.assert_allclose(ea, eb, rtol=1e-6, atol=1e-6)


def test_public_names_are_lazy():
    code = ("import sys, spacenit_jax, spacenit_jax.sensors; "
            "assert 'jax' not in sys.modules, 'jax imported'; "
            "assert callable(spacenit_jax.load); assert 'jax' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# --------------------------------------------------------------------------- same as training


@pytest.fixture(scope="module")
def converted(data_dir, tmp_path_factory):
    """The real location converted to the H5 training format (32-px samples)."""
    out = tmp_path_factory.mktemp("h5")
    res = convert.convert_folder(data_dir / "terramind-examples", out, tile_size=32)
    return H5Source(res.path, SENSORS)


def pipeline_sample(source: H5Source, loc_index: int, r: int, c: int):
    """The sample of location `loc_index` at sample row r, column c (7 x 7 per location),
    as the training pipeline reads and normalises it."""
    i = loc_index * 49 + r * 7 + c
    s = source.read(i)
    return s, normalize.normalize_sample(s.arrays, source.dtype, True)


def test_band_names_and_normalisation_give_the_pipelines_input(model, raw, converted):
    loc_index = sorted(["38D_378R_2_3", "282D_485L_3_3"]).index(LOC)
    s, pipe = pipeline_sample(converted, loc_index, 2, 5)
    img = window(raw, 64, 160)
    ours, missing = model.prepare(img, bands=BANDS)
    assert missing == {k: 0 for k in SENSORS}
    np.testing.assert_array_equal(ours["sentinel2_l2a"][0], pipe["sentinel2_l2a"][:, :, :1])
    np.testing.assert_array_equal(ours["sentinel1"][0], pipe["sentinel1"][:, :, :1])
    np.testing.assert_array_equal(ours["srtm"][0], pipe["srtm"][:, :, 0])
    # the reordering really happened: the model's first band is B02, the file's second
    np.testing.assert_array_equal(
        ours["sentinel2_l2a"][0, :, :, 0, 0],
        normalize.normalize_array("sentinel2_l2a", prepare_s2_in_model_order(img))[..., 0])
    assert pipe["sentinel2_l2a"][0, 0, 1, 0] == MISSING_VALUE  # T padded to 12 by the reader


def prepare_s2_in_model_order(img):
    order = [TERRAMIND_S2.index(b) for b in sensors.get("sentinel2_l2a").bands]
    return img["sentinel2_l2a"][..., order].astype(np.float32)


def test_encode_equals_the_training_encoder_on_the_same_sample(raw, converted, tmp_path):
    """Packed token-level path of pretraining (prepare_sample + pack_view + Encoder) vs
    encode() on the raw GeoTIFF pixels."""
    m = spacenit_jax.load(save_tiny(tmp_path / "lp", kind="latent_predictor", seed=5))
    loc_index = sorted(["38D_378R_2_3", "282D_485L_3_3"]).index(LOC)
    s, pipe = pipeline_sample(converted, loc_index, 4, 1)
    p, cfg = 8, m.cfg
    strategy = masking.NoMasking()
    masks = masking.mask_sample(cfg.layout, pipe, p, strategy, np.random.default_rng(0))
    months = np.clip(s.timestamps[:, 1], 0, 11)
    prep = tokenize.prepare_sample(cfg.layout, pipe, p, months, masks)
    pplan = plan.PackingPlan.build(cfg.layout, 2250, [4], 1, 1024, strategy)
    view, _ = packing.pack_view(pplan, cfg.layout, [prep], 4)
    model = checkpoint.load_model(tmp_path / "lp").model
    x, stream = model.encoder(jax.tree.map(np.asarray, view.patches), view.tokens, view.online)
    x, stream = np.asarray(x[0]), jax.tree.map(lambda a: np.asarray(a[0]), stream)
    got = m.encode(window(raw, 128, 32), bands=BANDS, months=[int(months[0])])
    assert got.absent_tokens == {k: 0 for k in SENSORS}
    for label in SENSORS:
        sid = cfg.layout.sensor_id(label)
        sel = (stream.segment >= 0) & (stream.sensor == sid) & (stream.group >= 0)
        assert set(stream.time[sel].tolist()) <= {0, -1}  # timesteps 1..11 are ABSENT
        want = np.zeros((4, 4, cfg.embed_dim))
        n = np.zeros((4, 4))
        for j in np.flatnonzero(sel):
            want[stream.row[j], stream.col[j]] += x[j]
            n[stream.row[j], stream.col[j]] += 1
        want /= n[..., None]
        emb = got[label][:, :, 0] if got[label].ndim == 4 else got[label]
        np.testing.assert_allclose(emb, want, atol=2e-5, rtol=1e-5)


# --------------------------------------------------------------------------- behaviour


def test_outputs_shapes_poolings_and_one_compile_per_shape(model, raw):
    img = window(raw)
    n0 = tracing.trace_count("encode")
    out = model.encode(img, bands=BANDS)
    assert out["sentinel2_l2a"].shape == (4, 4, 1, 32) and out["srtm"].shape == (4, 4, 32)
    assert out.tokens == {"sentinel2_l2a": 48, "sentinel1": 16, "srtm": 16}
    again = model.encode(window(raw, 32, 32), bands=BANDS)
    assert tracing.trace_count("encode") == n0 + 1  # same shape: no new compile
    batch = model.encode_batch({k: np.stack([img[k], window(raw, 32, 32)[k]]) for k in img},
                               bands=BANDS)
    assert tracing.trace_count("encode") == n0 + 2
    for label in SENSORS:
        np.testing.assert_allclose(batch[label][0], out[label], atol=1e-5)
        np.testing.assert_allclose(batch[label][1], again[label], atol=1e-5)
    mean = model.encode(img, bands=BANDS, pooling="mean").embeddings
    spatial = model.encode(img, bands=BANDS, pooling="spatial").embeddings
    # mean pooling = mean over every patch token (groups counted one by one)
    tok_sum = sum(out[k].reshape(-1, 32).sum(0) * len(model.cfg.layout.sensor_groups(k))
                  for k in SENSORS)
    np.testing.assert_allclose(mean, tok_sum / 80, atol=1e-5)
    s2, s1, dem = out["sentinel2_l2a"][:, :, 0], out["sentinel1"][:, :, 0], out["srtm"]
    np.testing.assert_allclose(spatial, (3 * s2 + s1 + dem) / 5, atol=1e-5)
    with pytest.raises(ValueError, match="attention-pooling head.*use pooling='mean'"):
        model.encode(img, bands=BANDS, pooling="attention")


def test_nodata_and_nan_become_absent_tokens(model, raw):
    img = {k: v.astype(np.float32) for k, v in window(raw).items()}
    img["sentinel2_l2a"][:3, :10] = np.nan  # touches patches (0,0) and (0,1)
    img["sentinel1"][20:24, 20:24] = -1234.0  # one patch, declared nodata
    out = model.encode(img, bands=BANDS, nodata={"sentinel1": -1234.0})
    assert out.absent_tokens == {"sentinel2_l2a": 6, "sentinel1": 1, "srtm": 0}
    assert out.missing_pixels == {"sentinel2_l2a": 30, "sentinel1": 16, "srtm": 0}
    # +-Inf is missing like NaN: the same patches, the same embeddings
    inf = {k: v.copy() for k, v in img.items()}
    inf["sentinel2_l2a"][:3, :10] = np.inf
    inf["sentinel2_l2a"][0, 0] = -np.inf
    out_inf = model.encode(inf, bands=BANDS, nodata={"sentinel1": -1234.0})
    assert out_inf.absent_tokens == out.absent_tokens
    assert out_inf.missing_pixels == out.missing_pixels
    np.testing.assert_array_equal(out_inf["sentinel2_l2a"], out["sentinel2_l2a"])
    s2 = out["sentinel2_l2a"][:, :, 0]
    assert np.isnan(s2[0, :2]).all() and np.isfinite(s2[0, 2:]).all() and np.isfinite(s2[1:]).all()
    assert np.isnan(out["sentinel1"][2, 2]).all()
    # the other pixels of an ABSENT patch never reach the model: change them, same output
    img2 = {k: v.copy() for k, v in img.items()}
    img2["sentinel2_l2a"][3:8, :10] = 9999.0
    img2["sentinel1"][16:20, 16:24] = 3.0
    out2 = model.encode(img2, bands=BANDS, nodata={"sentinel1": -1234.0})
    for k in SENSORS:
        np.testing.assert_array_equal(out[k], out2[k])
    # a sensor missing everywhere: all its tokens ABSENT, the rest still encoded
    img3 = dict(img, srtm=np.full_like(img["srtm"], np.nan))
    out3 = model.encode(img3, bands=BANDS)
    assert out3.absent_tokens["srtm"] == 16 and np.isnan(out3["srtm"]).all()
    assert np.isfinite(model.encode(img3, bands=BANDS, pooling="mean").embeddings).all()


def test_patch_size_must_be_a_positive_integer(model, raw):
    img = window(raw)
    for bad in (0, -8, 2.5):
        with pytest.raises(ValueError, match=f"patch_size must be a positive integer, got {bad!r}"):
            model.encode(img, bands=BANDS, patch_size=bad)


def test_same_rule_at_every_patch_size_with_explicit_crop_or_pad(model, raw):
    """Issue 12 fault 6: 34x34 at the base patch size 8 used to drop 2 rows silently
    while 30x30 at patch 4 raised: now both raise the same error, and encode crops or
    pads only when asked."""
    cfg = tiny_config()
    z = np.zeros
    for size, p in ((34, 8), (30, 4), (20, 16)):
        with pytest.raises(ValueError, match=f"{size}x{size} is not divisible by the patch "
                                             f"size {p}"):
            image_tokens(cfg, {"sentinel1": z((1, size, size, 1, 2), np.float32)}, patch_size=p,
                         xp=np)
    img = window(raw, size=34)
    with pytest.raises(ValueError, match="34x34 is not divisible by the patch size 8.*"
                                         "edge='crop'"):
        model.encode(img, bands=BANDS)
    cropped = model.encode(img, bands=BANDS, edge="crop")
    exact = model.encode(window(raw, size=32), bands=BANDS)
    for k in SENSORS:
        np.testing.assert_array_equal(cropped[k], exact[k])
    padded = model.encode(img, bands=BANDS, edge="pad")
    assert padded["srtm"].shape == (5, 5, 32)
    assert np.isnan(padded["srtm"][4]).all() and np.isnan(padded["srtm"][:, 4]).all()
    assert padded.absent_tokens == {"sentinel2_l2a": 27, "sentinel1": 9, "srtm": 9}


@pytest.mark.parametrize("images,kw,match", [
    ({"sentinel2l2a": 0}, {}, "'sentinel2l2a' is not a known sensor.*did you mean "
                              "'sentinel2_l2a'"),
    ({"landsat": 0}, {}, "'landsat' is not one of this model's sensors"),
    ({"sentinel2_l2a": "s2_13"}, {}, "expected 12 bands in the last axis.*pass bands="),
    ({"sentinel2_l2a": "s2"}, {"bands": {"sentinel2_l2a": TERRAMIND_S2[:-1]}},
     "11 band names given for 12 bands"),
    ({"sentinel2_l2a": "s2"}, {"bands": {"sentinel2_l2a": TERRAMIND_S2[:-1] + ("B13",)}},
     r"unknown band names \['B13'\] \(did you mean 'B12'\?\)"),
    ({"sentinel2_l2a": "s2"}, {"bands": {"sentinel2_l2a": TERRAMIND_S2[:-1] + ("B11",)}},
     r"band names \['B11'\] appear more than once"),
    ({"sentinel2_l2a": "s2/1e4"}, {"bands": BANDS}, "look already normalised or scaled to 0-1"),
    ({"sentinel1": "s1lin"}, {}, "look like linear power.*units 'linear'"),
    ({"sentinel1": "s1"}, {"units": {"sentinel1": "linear"}}, "look like dB already"),
    ({"sentinel2_l2a": "s2"}, {"bands": BANDS, "normalized": True},
     "look raw, not normalised"),
    ({"sentinel2_l2a": "big"}, {"bands": BANDS}, "patch grid 65x65.*max_grid 64.*launch.embed"),
    ({"sentinel1": "s1"}, {"months": [12]}, "months must be integer month indices 0..11"),
    ({"srtm": "dem_t2"}, {}, "'srtm' has no time axis but the input has 2 timesteps"),
])
def test_bad_input_gives_one_clear_line(model, raw, images, kw, match):
    arrays = {"s2": raw["sentinel2_l2a"][:32, :32], "s2/1e4": raw["sentinel2_l2a"][:32, :32] / 1e4,
              "s1": raw["sentinel1"][:32, :32], "s1lin": 10 ** (raw["sentinel1"][:32, :32] / 10),
              "big": np.full((520, 520, 12), 1000, np.int16),
              "s2_13": np.concatenate([raw["sentinel2_l2a"][:32, :32]] * 2, -1)[..., :13],
              "dem_t2": np.repeat(raw["srtm"][:32, :32, None], 2, axis=2)}
    imgs = {k: arrays.get(v, np.zeros((32, 32, 2))) if isinstance(v, str) or v == 0 else v
            for k, v in images.items()}
    with pytest.raises(ValueError, match=match) as err:
        model.encode(imgs, **kw)
    assert "\n" not in str(err.value)


def test_linear_sentinel1_is_converted_to_db_and_other_units_checked(model, raw):
    img = window(raw)
    lin = dict(img, sentinel1=10 ** (img["sentinel1"] / 10))
    a = model.encode(img, bands=BANDS)
    b = model.encode(lin, bands=BANDS, units={"sentinel1": "linear"})
    np.testing.assert_allclose(a["sentinel1"], b["sentinel1"], atol=1e-4)
    with pytest.raises(ValueError, match="not ESA WorldCover class codes"):
        prepare.check_plausible("worldcover", np.array([1.0, 2.0, 9.0]), normalized=False)
    prepare.check_plausible("worldcover", np.array([10.0, 95.0, 100.0]), normalized=False)
    prepare.check_plausible("srtm", np.array([0.0, 1.0, 2.5]), normalized=False)  # coastal flats


def test_model_trained_without_normalisation_gets_raw_values(tmp_path, raw):
    m = spacenit_jax.load(save_tiny(tmp_path / "raw", normalize=False))
    img = window(raw)
    ours, _ = m.prepare(img, bands=BANDS)
    np.testing.assert_array_equal(ours["srtm"][0], img["srtm"].astype(np.float32))
    np.testing.assert_array_equal(ours["sentinel2_l2a"][0, :, :, 0],
                                  prepare_s2_in_model_order(img))
    with pytest.raises(ValueError, match="trained on raw values"):
        m.encode(img, bands=BANDS, normalized=True)


def test_absent_state_is_the_tokenizers(model):
    assert TokenState.ABSENT == 3


def test_batches_split_over_devices_give_the_same_embeddings(tmp_path, raw):
    devices = jax.devices()
    assert len(devices) == 8  # conftest's virtual CPU devices
    path = save_tiny(tmp_path / "m", seed=4)
    one, many = spacenit_jax.load(path), spacenit_jax.load(path, devices=devices)
    imgs = {k: np.stack([window(raw, 24 * i, 16, 32)[k] for i in range(8)]) for k in raw}
    a = one.encode_batch(imgs, bands=BANDS, pooling="spatial").embeddings
    b = many.encode_batch(imgs, bands=BANDS, pooling="spatial").embeddings
    np.testing.assert_allclose(a, b, atol=1e-5)
