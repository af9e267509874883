"""GEO-Bench-2 reader on real samples (tests/data/geobench2): every task reads through
tacoreader, maps its items to the documented sensors, bands and timeline, and its labels."""

import datetime
import io

import h5py
import numpy as np
import pytest
import rasterio

from spacenit_jax import sensors
from spacenit_jax.data.normalize import band_range
from spacenit_jax.eval import geobench2

MISSING = sensors.MISSING_VALUE


@pytest.fixture(scope="module")
def root(data_dir):
    return data_dir / "geobench2"


def _normalised(sensor: str, band: str, raw):
    lo, hi, _ = band_range(sensor)
    i = sensors.get(sensor).bands.index(band)
    return (np.asarray(raw, np.float64) - lo[i]) / (hi[i] - lo[i])


def test_every_task_reads_each_split_into_its_sensors(root):
    expected = {"benv2": ("multilabel", (19,), {"sentinel2_l2a": 12, "sentinel1": 2}, 1),
                "pastis": ("segmentation", (32, 32), {"sentinel2_l2a": 12, "sentinel1": 2}, 12),
                "treesatai": ("multilabel", (15,), {"sentinel2_l2a": 12}, 1),
                "biomassters": ("regression", (32, 32, 1), {"sentinel2_l2a": 12,
                                                            "sentinel1": 2}, 12)}
    for name, (kind, label_shape, channels, steps) in expected.items():
        task = geobench2.get_task(name)
        assert task.kind == kind
        for split in ("train", "valid", "test"):
            ds = geobench2.GeoBench2Dataset(root, name, split)
            assert len(ds) == 1 and ds.sensor == "sentinel2_l2a"
            sample = ds[0]
            assert np.shape(sample.label) == label_shape, (name, split)
            assert {k: v.shape[-1] for k, v in sample.images.items()} == channels
            assert all(v.shape[2] == steps and v.dtype == np.float32
                       for v in sample.images.values())
            assert sample.timestamps.shape == (steps, 3)


def test_benv2_bands_labels_and_date(root):
    ds = geobench2.GeoBench2Dataset(root, "benv2", "valid")
    sample = ds[0]
    inner = ds.table.read(0)
    s2 = _tif(inner, "s2")
    s1 = _tif(inner, "s1")
    stored = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
    order = sensors.SENTINEL2_L2A.bands
    for band in ("B02", "B8A", "B12", "B01"):
        np.testing.assert_allclose(sample.image[:, :, 0, order.index(band)],
                                   _normalised("sentinel2_l2a", band, s2[stored.index(band)]),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sample.extra["sentinel1"][:, :, 0, 1],
                               _normalised("sentinel1", "vh", s1[1]), rtol=1e-5, atol=1e-6)
    names = list(inner.iloc[0]["labels"])
    assert sorted(np.flatnonzero(sample.label)) == sorted(
        geobench2.BENV2_CLASSES.index(n) for n in names)
    when = datetime.datetime.fromtimestamp(float(inner.iloc[0]["stac:time_start"]),
                                           datetime.UTC).date()
    np.testing.assert_array_equal(sample.timestamps, [[when.day, when.month - 1, when.year]])


def _tif(inner, item: str):
    """The stored GeoTIFF `item` of a sample's inner table, as (bands, H, W)."""
    with rasterio.open(inner[inner["tortilla:id"] == item].iloc[0]["internal:subfile"]) as f:
        return f.read()


def _h5(ds, inner, item):
    row = inner[inner["tortilla:id"] == item].iloc[0]
    with open(ds.files[0], "rb") as f:
        f.seek(int(row["tortilla:offset"]))
        data = f.read(int(row["tortilla:length"]))
    with h5py.File(io.BytesIO(data)) as h:
        return np.asarray(h["data"]), [str(d) for d in row["dates"]]


def test_pastis_monthly_composite_void_label_and_imputed_bands(root):
    ds = geobench2.GeoBench2Dataset(root, "pastis", "train")
    sample = ds[0]
    inner = ds.table.read(0)
    s2, dates = _h5(ds, inner, "s2")
    months = [(int(d[:4]), int(d[4:6])) for d in dates]
    last = max(months)
    stamps = [tuple(s) for s in sample.timestamps.tolist()]
    assert stamps[-1] == (1, last[1] - 1, last[0]) and len(stamps) == 12
    order = sensors.SENTINEL2_L2A.bands
    b04 = order.index("B04")
    for t, (_, month, year) in enumerate(stamps):
        hits = [i for i, m in enumerate(months) if m == (year, month + 1)]
        got = sample.image[:, :, t, b04]
        if not hits:
            assert np.all(sample.image[:, :, t] == MISSING)
        else:  # the month's mean of B04 (stored band 2), normalised
            want = _normalised("sentinel2_l2a", "B04", s2[hits, 2].astype(np.float64).mean(0))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    present = [t for t in range(12) if not np.all(sample.image[:, :, t] == MISSING)]
    lo, hi, _ = band_range("sentinel2_l2a")
    b01, b02 = order.index("B01"), order.index("B02")
    raw_b01 = sample.image[:, :, present, b01] * (hi[b01] - lo[b01]) + lo[b01]
    raw_b02 = sample.image[:, :, present, b02] * (hi[b02] - lo[b02]) + lo[b02]
    np.testing.assert_allclose(raw_b01, raw_b02, rtol=1e-4)  # B01 <- B02
    semantic, _ = _h5(ds, inner, "semantic")
    want = semantic[0].astype(np.int32)
    want[want == 19] = -1
    np.testing.assert_array_equal(sample.label, want)
    assert sample.label.max() < 19


def test_treesatai_recovers_the_6x6_sentinel2_patch(root):
    ds = geobench2.GeoBench2Dataset(root, "treesatai", "train")
    sample = ds[0]
    inner = ds.table.read(0)
    s2 = _tif(inner, "s2")
    assert s2.shape == (12, 304, 304) and sample.image.shape == (6, 6, 1, 12)
    starts = np.ceil(np.arange(6) * 304 / 6).astype(int)
    for i in range(6):  # each value is the whole 50-51 pixel block
        block = s2[0, starts[i]:starts[i] + 50, starts[i]:starts[i] + 50]
        assert np.all(block == block[0, 0])
        np.testing.assert_allclose(sample.image[i, i, 0, 0],
                                   _normalised("sentinel2_l2a", "B02", block[0, 0]), rtol=1e-5)
    species = list(inner.iloc[0]["species_labels"])
    assert sorted(np.flatnonzero(sample.label)) == sorted(
        geobench2.TREESATAI_CLASSES.index(n) for n in species)
    aerial = geobench2.GeoBench2Dataset(root, "treesatai", "train", inputs=("aerial",))[0]
    cir = _tif(inner, "aerial")  # NIR, G, B, R
    assert aerial.sensor == "naip" and aerial.image.shape == (304, 304, 1, 4)
    np.testing.assert_allclose(aerial.image[:, :, 0, 0], _normalised("naip", "R", cir[3]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aerial.image[:, :, 0, 3], _normalised("naip", "IR", cir[0]),
                               rtol=1e-5, atol=1e-6)


def test_biomassters_months_missing_steps_nodata_and_target(root):
    ds = geobench2.GeoBench2Dataset(root, "biomassters", "train")
    sample = ds[0]
    inner = ds.table.read(0)
    s2_months = set(inner[inner["modality"] == "S2"]["month"])
    assert len(s2_months) < 12  # this sample lacks some S2 months
    for t, month in enumerate(geobench2.BIOMASSTERS_MONTHS):
        assert sample.timestamps[t, 1] == geobench2.MONTHS.index(month)
        absent = np.all(sample.image[:, :, t] == MISSING)
        assert absent == (month not in s2_months), month
    s1 = sample.extra["sentinel1"]
    assert not np.any(s1 == MISSING) and np.all(np.isfinite(s1))
    row = inner[inner["modality"] == "S1"].iloc[0]
    with rasterio.open(row["internal:subfile"]) as f:
        vv = f.read()[0].astype(np.float64)
    t = geobench2.BIOMASSTERS_MONTHS.index(row["month"])
    want = _normalised("sentinel1", "vv", np.where(vv == -9999, np.nan, vv))
    want = np.where(np.isfinite(want), want, 0.0)  # no-data pixels: 0 after normalisation
    np.testing.assert_allclose(s1[:, :, t, 0], want, rtol=1e-5, atol=1e-6)
    agbm = inner[inner["modality"] == "AGBM"].iloc[0]
    with rasterio.open(agbm["internal:subfile"]) as f:
        target = f.read()[0]
    np.testing.assert_array_equal(sample.label[..., 0], target)


def test_clear_errors(root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no .tortilla files in .*benv2"):
        geobench2.GeoBench2Dataset(tmp_path, "benv2")
    with pytest.raises(ValueError, match="unknown inputs"):
        geobench2.GeoBench2Dataset(root, "benv2", inputs=("s3",))
    with pytest.raises(ValueError, match="feed one sensor twice"):
        geobench2.GeoBench2Dataset(root, "pastis", inputs=("s1_asc", "s1_desc"))
    with pytest.raises(KeyError, match="known"):
        geobench2.get_task("sen1floods11")
    with pytest.raises(ValueError, match="split must be one of"):
        geobench2.GeoBench2Dataset(root, "benv2", "dev")
