"""The original's raw tile dataset (manifests + per-group rasters) -> H5: resampling to
the sensor grid, quality filters, dB, timestamps and masks, sub-tiles, metadata, and the
format facts the original's reader relies on. The tile dataset is generated here with
rasterio (small, random, deterministic)."""

from __future__ import annotations

import csv
import datetime as dt
import json

import h5py
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from launch import convert as convert_cli
from spacenit_jax import sensors
from spacenit_jax.data import h5
from spacenit_jax.inference import convert
from spacenit_jax.sensors import MISSING_VALUE

CRS = "EPSG:32610"
SUPPORTED = ("sentinel2_l2a", "sentinel1", "srtm", "worldcover", "openstreetmap_raster",
             "era5_10")
MONTHS = [dt.datetime(2022, m, 1 + m) for m in range(1, 13)]


def write_tif(path, data, key, pitch, dtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    _, col, row = key
    size = data.shape[-1]
    transform = from_origin(col * 2560, -row * 2560, 2560 / size, 2560 / size)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=data.shape[0],
                       dtype=dtype, crs=CRS, transform=transform, compress="deflate") as ds:
        ds.write(data.astype(dtype))


class RawTiles:
    """Writes the original's layout and remembers what it wrote."""

    def __init__(self, root):
        self.root = root
        self.rows: dict[str, list] = {}
        self.data: dict = {}
        self.rng = np.random.default_rng(0)

    def add(self, label, key, times=None, *, dtype="uint16", hook=None):
        spec = sensors.get(label)
        cadence = "_monthly" if spec.temporal else ""
        n_t = len(times) if spec.temporal else 1
        groups = []
        for grp in spec.groups:
            size = int(2560 / grp.pixel_pitch)
            if label == "sentinel1":
                a = self.rng.uniform(0.001, 0.5, (n_t * len(grp.bands), size, size))
            elif label == "srtm":
                a = self.rng.uniform(0, 900, (1, size, size))
            elif label == "era5_10":
                a = self.rng.uniform(1, 300, (n_t * len(grp.bands), size, size))
            elif label == "worldcover":
                a = self.rng.choice([10, 20, 30, 40, 80], (1, size, size))
            elif label == "openstreetmap_raster":
                a = self.rng.integers(0, 2, (len(grp.bands), size, size), dtype=np.uint8)
            else:
                a = self.rng.integers(0, 3000, (n_t * len(grp.bands), size, size),
                                      dtype=np.uint16)
            if hook is not None:
                a = hook(a)
            a = a.astype(dtype)
            crs, col, row = key
            name = f"{crs}_{col}_{row}_{convert.pitch_name(grp.pixel_pitch)}.tif"
            write_tif(self.root / f"10_{label}{cadence}" / name, a, key, grp.pixel_pitch, dtype)
            groups.append(a)
        self.data[(label, key)] = groups
        manifest = self.rows.setdefault(f"10_{label}{cadence}.csv", [])
        for i, t in enumerate(times or [dt.datetime(2022, 1, 1)]):
            manifest.append([key[0], key[1], key[2], "2022-01-01T00:00:00", t.isoformat(),
                             (t + dt.timedelta(days=1)).isoformat(), i])

    def finish(self):
        for name, rows in self.rows.items():
            with open(self.root / name, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["crs", "col", "row", "tile_time", "start_time", "end_time",
                            "image_idx"])
                w.writerows(rows)


A, B, C, D, E = ((CRS, 150 + i, -2089) for i in range(5))


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    raw = RawTiles(tmp_path_factory.mktemp("tiles"))
    raw.add("sentinel2_l2a", A, MONTHS)
    s1_times = [t for i, t in enumerate(MONTHS) if i not in (3, 7)]  # 10 of the 12 months
    raw.add("sentinel1", A, s1_times, dtype="float32")
    raw.add("srtm", A, dtype="int16")
    raw.add("worldcover", A, dtype="uint8")
    raw.add("openstreetmap_raster", A, dtype="uint8")
    raw.add("era5_10", A, MONTHS, dtype="float32")
    raw.add("sentinel2_l2a", B, MONTHS[:11])  # too short: dropped
    raw.add("sentinel2_l2a", C, MONTHS)

    def sar_nodata(a):
        a[0, 0, 0] = sensors.SAR_NODATA
        return a

    def nan(a):
        a[0, 5, 5] = np.nan
        return a

    raw.add("sentinel1", C, MONTHS, dtype="float32", hook=sar_nodata)  # sensor dropped
    raw.add("srtm", C, dtype="float32", hook=nan)  # sensor dropped
    raw.add("era5_10", C, MONTHS, dtype="float32", hook=lambda a: a * 0)  # all zero: dropped
    raw.add("sentinel2_l2a", D, MONTHS)
    raw.add("worldcereal", D, dtype="uint8")  # not supported: sample dropped
    raw.add("sentinel1", E, MONTHS, dtype="float32")  # lacks required S2: dropped
    raw.rows["10_sentinel2_l2a_monthly.csv"].append(
        list(raw.rows["10_sentinel2_l2a_monthly.csv"][2]))  # a repeated image_idx row
    raw.finish()
    return raw


@pytest.fixture(scope="module")
def result(tiles, tmp_path_factory):
    return convert.convert_tiles(tiles.root, tmp_path_factory.mktemp("out"), supported=SUPPORTED,
                                 required=("sentinel2_l2a",), tile_size=128)


def test_directory_metadata_and_drops(result):
    assert result.path.parts[-3:] == (
        "h5py_data_w_missing_timesteps_zstd_3_128_x_4",
        "era5_10_openstreetmap_raster_sentinel1_sentinel2_l2a_srtm_worldcover_required_"
        "sentinel2_l2a",
        "8")
    assert (result.sources, result.converted, result.num_samples) == (5, 2, 8)
    assert result.dropped == {
        "manifest rows of sentinel2_l2a: repeated image_idx": 1,
        "sample: fewer than 12 images": 1,
        "sensor sentinel1: nodata -32768": 1,
        "sensor srtm: NaN": 1,
        "sensor era5_10: all zero": 1,
        "sample: has sensors outside the supported list (worldcereal)": 1,
        "sample: lacks required sensors (sentinel2_l2a)": 1,
    }
    with open(result.path / h5.METADATA_CSV) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["sample_index", *SUPPORTED]
    assert rows[1:5] == [[str(i), "1", "1", "1", "1", "1", "1"] for i in range(4)]
    assert rows[5:] == [[str(i), "1", "0", "0", "0", "0", "0"] for i in range(4, 8)]
    latlon = np.load(result.path / h5.LATLON_NPY)
    assert latlon.shape == (8, 2) and (latlon[:4] == latlon[0]).all()  # the parent centre
    assert json.loads((result.path / h5.COMPRESSION_JSON).read_text()) == {
        "compression": "zstd", "compression_opts": 3, "shuffle": None}


def test_arrays_are_resampled_concatenated_and_subtiled(tiles, result):
    g10, g20, g40 = tiles.data[("sentinel2_l2a", A)]
    s2 = np.concatenate([g10.reshape(12, 4, 256, 256),
                         np.repeat(np.repeat(g20.reshape(12, 6, 128, 128), 2, 2), 2, 3),
                         np.repeat(np.repeat(g40.reshape(12, 2, 64, 64), 4, 2), 4, 3)], axis=1)
    s2 = s2.transpose(2, 3, 0, 1)  # (H, W, T, C)
    (s1,) = tiles.data[("sentinel1", A)]
    s1 = (10 * np.log10(np.maximum(s1.astype(np.float64), 1e-10))).reshape(10, 2, 256, 256)
    s1 = s1.transpose(2, 3, 0, 1).astype(np.float32)
    (osm,) = tiles.data[("openstreetmap_raster", A)]
    osm = osm[:, ::4, ::4].transpose(1, 2, 0)[:, :, None]
    (dem,) = tiles.data[("srtm", A)]
    (era5,) = tiles.data[("era5_10", A)]
    stamps = [[t.day, t.month - 1, t.year] for t in MONTHS]
    for j in range(4):
        r0, c0 = (j // 2) * 128, (j % 2) * 128
        win = (slice(r0, r0 + 128), slice(c0, c0 + 128))
        with h5py.File(result.path / f"sample_{j}.h5") as f:
            np.testing.assert_array_equal(f["sentinel2_l2a"][()], s2[win])
            assert f["sentinel2_l2a"].dtype == np.uint16
            np.testing.assert_allclose(f["sentinel1"][()], s1[win], rtol=1e-6)
            np.testing.assert_array_equal(f["openstreetmap_raster"][()], osm[win])
            np.testing.assert_array_equal(f["srtm"][:, :, 0, 0], dem[0][win])
            np.testing.assert_array_equal(f["era5_10"][()], era5.reshape(12, 6))  # (T, C)
            assert f["timestamps"][()].tolist() == stamps
            mask = f["missing_timesteps_masks/sentinel1"][()]
            assert mask.dtype == bool and mask.tolist() == [i not in (3, 7) for i in range(12)]
            assert f["missing_timesteps_masks/sentinel2_l2a"][()].all()
            assert set(f["missing_timesteps_masks"]) == {"sentinel1", "sentinel2_l2a"}
            # facts the original's reader relies on: no attributes, masks uncompressed,
            # sensor arrays one zstd chunk each
            assert not any(len(o.attrs) for o in (f, *(f[k] for k in f)))
            assert f["missing_timesteps_masks/sentinel1"].compression is None
            ds = f["sentinel2_l2a"]
            assert ds.chunks == ds.shape and "32015" in ds._filters  # hdf5plugin Zstd
            assert f["latlon"].dtype == np.float32 and f["latlon"].shape == (2,)


def test_the_training_reader_reads_the_conversion(result):
    source = h5.H5Source(result.path, ("sentinel2_l2a", "sentinel1", "srtm", "worldcover"))
    s = source.read(1)
    assert s.arrays["sentinel1"].shape == (128, 128, 12, 2)
    assert (s.arrays["sentinel1"][:, :, [3, 7]] == MISSING_VALUE).all()
    assert (s.arrays["sentinel1"][:, :, [0, 1, 2, 4]] != MISSING_VALUE).all()
    later = source.read(5)  # cell C: no S1, no SRTM
    assert later.missing == frozenset({"sentinel1", "srtm", "worldcover"})


def test_bad_arguments_are_one_line_errors(tiles, tmp_path, capsys):
    with pytest.raises(ValueError, match="required sensors \\['landsat'\\] are not in"):
        convert.convert_tiles(tiles.root, tmp_path, supported=SUPPORTED, required=("landsat",))
    with pytest.raises(ValueError, match="'naip': tiles of 160 m cells are not supported"):
        convert.convert_tiles(tiles.root, tmp_path, supported=("naip", "sentinel2_l2a"))
    with pytest.raises(ValueError, match="never read from manifests"):
        convert.convert_tiles(tiles.root, tmp_path, supported=("era5", "sentinel2_l2a"))
    rc = convert_cli.main(["tiles", "--tile-path", str(tmp_path / "nowhere"), "--out",
                           str(tmp_path), "--sensors", "sentinel2_l2a"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: tile dataset {tmp_path / 'nowhere'} does not exist"


def test_latlon_is_the_cell_centre(result):
    pyproj = pytest.importorskip("pyproj", reason="the cross-check uses the geo extra")
    lon, lat = pyproj.Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(
        150.5 * 2560, 2088.5 * 2560)
    latlon = np.load(result.path / h5.LATLON_NPY)
    np.testing.assert_allclose(latlon[:4], [[lat, lon]] * 4, atol=1e-4)
    with h5py.File(result.path / "sample_3.h5") as f:
        np.testing.assert_array_equal(f["latlon"][()], latlon[3])


def test_the_training_pipeline_builds_batches_from_it(result):
    from spacenit_jax.data.pipeline import PipelineConfig, make_pipeline
    from spacenit_jax.tokenization import TokenLayout

    layout = TokenLayout(("sentinel2_l2a", "sentinel1", "worldcover", "srtm"))
    cfg = PipelineConfig(str(result.path), token_budget=400, patch_sizes=(8,),
                         hw_p_list=(2, 4), rows=2, num_batches=2,
                         masking={"type": "random", "encode_ratio": 0.5, "decode_ratio": 0.5})
    batch = make_pipeline(cfg, layout).batch(1)
    assert batch["num_samples"] > 0 and batch["metrics"]["view_a/real_tokens"] > 0
