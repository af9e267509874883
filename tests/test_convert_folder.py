"""GeoTIFF folder -> H5 training data on the real TerraMind tiles, read by the training
pipeline, and a few pretraining steps on it (launch.pretrain)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import rasterio

from launch import convert as convert_cli
from spacenit_jax import sensors
from spacenit_jax.data import h5
from spacenit_jax.inference import convert
from spacenit_jax.sensors import MISSING_VALUE

LOCS = ("282D_485L_3_3", "38D_378R_2_3")  # sorted: the conversion order
S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
LABELS = ("sentinel2_l2a", "sentinel1", "srtm")


def tif(path):
    with rasterio.open(path) as ds:
        return ds.read().transpose(1, 2, 0), ds.transform, ds.crs


@pytest.fixture(scope="module")
def converted(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("h5")
    return convert.convert_folder(data_dir / "terramind-examples", out, tile_size=32)


def test_layout_and_metadata(converted):
    path = converted.path
    assert path.parts[-3:] == ("h5py_data_w_missing_timesteps_zstd_3_32_x_49",
                               "sentinel1_sentinel2_l2a_srtm", "98")
    assert converted.num_samples == 98 and converted.sources == 2 and not converted.dropped
    info = h5.parse_dataset_dir(path)
    assert info.supported == ("sentinel1", "sentinel2_l2a", "srtm") and info.tile_size == 32
    with open(path / h5.METADATA_CSV) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["sample_index", *LABELS] and len(rows) == 99
    assert all(r[1:] == ["1", "1", "1"] for r in rows[1:])
    assert json.loads((path / h5.COMPRESSION_JSON).read_text()) == {
        "compression": "zstd", "compression_opts": 3, "shuffle": None}
    assert np.load(path / h5.LATLON_NPY).shape == (98, 2)
    notes = " ".join(converted.notes)
    assert "LULC: not used (ESRI 10-class" in notes
    assert "files without a date take 2023-06-10" in notes


def test_samples_hold_the_geotiff_pixels(converted, data_dir):
    root = data_dir / "terramind-examples"
    s2, transform, crs = tif(root / "S2L2A" / f"{LOCS[1]}.tif")
    s1, _, _ = tif(root / "S1RTC" / f"{LOCS[1]}.tif")
    dem, _, _ = tif(root / "DEM" / f"{LOCS[1]}.tif")
    order = [S2_ORDER.index(b) for b in sensors.get("sentinel2_l2a").bands]
    r, c = 3, 5
    i = 49 + r * 7 + c
    with h5py.File(converted.path / f"sample_{i}.h5") as f:
        win = (slice(r * 32, r * 32 + 32), slice(c * 32, c * 32 + 32))
        assert f["sentinel2_l2a"].dtype == np.int16 and f["srtm"].dtype == np.int16
        np.testing.assert_array_equal(f["sentinel2_l2a"][:, :, 0], s2[win][..., order])
        np.testing.assert_array_equal(f["sentinel1"][:, :, 0], s1[win].astype(np.float32))
        np.testing.assert_array_equal(f["srtm"][:, :, 0], dem[win])
        assert f["timestamps"][()].tolist() == [[10, 5, 2023]]
        assert f["missing_timesteps_masks/sentinel2_l2a"][()].tolist() == [True]
        assert f["missing_timesteps_masks/sentinel1"][()].tolist() == [True]
        assert "srtm" not in f["missing_timesteps_masks"]
        latlon = f["latlon"][()]
        assert not any(len(o.attrs) for o in (f, *(f[k] for k in f)))
        assert f["missing_timesteps_masks/sentinel1"].compression is None
        assert f["sentinel2_l2a"].chunks == f["sentinel2_l2a"].shape
    pyproj = pytest.importorskip("pyproj", reason="the latlon cross-check uses the geo extra")
    x = transform.c + transform.a * (c + 0.5) * 32
    y = transform.f + transform.e * (r + 0.5) * 32
    to_wgs84 = pyproj.Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(x, y)
    np.testing.assert_allclose(latlon, [lat, lon], atol=1e-5)


def test_training_reader_reads_it(converted):
    source = h5.H5Source(converted.path, LABELS)
    assert len(source) == 98
    s = source.read(0)
    assert s.arrays["sentinel2_l2a"].shape == (32, 32, 12, 12)  # padded to 12 timesteps
    assert (s.arrays["sentinel2_l2a"][:, :, 1:] == MISSING_VALUE).all()
    assert s.timestamps.shape == (12, 3) and s.timestamps[0].tolist() == [21, 6, 2021]
    assert not s.missing


def test_missing_pixels_files_margins_are_recorded(data_dir, tmp_path):
    src = data_dir / "terramind-examples"
    folder = tmp_path / "in"
    for sub in ("S2L2A", "S1RTC", "DEM"):
        (folder / sub).mkdir(parents=True)
        for loc in LOCS:
            if sub == "S1RTC" and loc == LOCS[0]:
                continue  # no S1 at the first location
            shutil.copy(src / sub / f"{loc}.tif", folder / sub / f"{loc}.tif")
    s2 = folder / "S2L2A" / f"{LOCS[1]}.tif"
    with rasterio.open(s2) as ds:
        profile, data = ds.profile, ds.read()
    data[:, :10, :10] = -9999
    profile.update(nodata=-9999)
    with rasterio.open(s2, "w", **profile) as ds:
        ds.write(data)
    res = convert.convert_folder(folder, tmp_path / "out", tile_size=64, date="2022-03-04")
    assert res.num_samples == 18 and res.path.name == "18"
    assert res.dropped["timesteps of sentinel2_l2a: missing pixels"] == 1
    assert res.dropped["pixels: margins that do not fill a sample"] == 2 * (224**2 - 9 * 64**2)
    with open(res.path / h5.METADATA_CSV) as fh:
        rows = list(csv.reader(fh))[1:]
    assert all(r[2] == "0" for r in rows[:9])  # no S1 at the first location
    assert rows[9][1:] == ["0", "1", "1"]  # S2's only timestep had nodata pixels
    with h5py.File(res.path / "sample_0.h5") as f:
        assert f["timestamps"][()].tolist() == [[4, 2, 2022]]  # --date: S2 has no date
    with h5py.File(res.path / "sample_9.h5") as f:
        assert "sentinel2_l2a" not in f and "sentinel2_l2a" not in f["missing_timesteps_masks"]
    with pytest.raises(ValueError, match="tile_size must divide 256"):
        convert.convert_folder(folder, tmp_path / "x", tile_size=48)


def test_cli_prints_the_dataset_path(data_dir, tmp_path, capsys):
    args = ["folder", "--input-dir", str(data_dir / "terramind-examples"), "--out",
            str(tmp_path), "--tile-size", "64", "--sensors", "sentinel2_l2a", "srtm"]
    assert convert_cli.main(args) == 2  # without S1, no file has a date
    err = capsys.readouterr().err.strip()
    assert err == ("error: location 282D_485L_3_3: no file has a date (a 'datetime' tag or "
                   "YYYY-MM-DD in the file name); pass --date YYYY-MM-DD")
    rc = convert_cli.main([*args, "--date", "2021-07-01"])
    captured = capsys.readouterr()
    assert rc == 0
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["num_samples"] == 18 and summary["path"].endswith("sentinel2_l2a_srtm/18")
    assert "S1RTC: not used (sensor 'sentinel1' is not one of" in captured.err
    rc = convert_cli.main(["folder", "--input-dir", str(tmp_path / "none"), "--out",
                           str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "does not exist" in err
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_pretraining_runs_on_the_converted_terramind_folder(converted, tmp_path):
    """The main job on real imagery: a few pretraining steps on the converted folder."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "launch.pretrain", "--config", "configs/nano.py:smoke",
           "--workdir", str(tmp_path / "run"), f"--config.data.path={converted.path}",
           "--config.model.sensor_labels=('sentinel2_l2a', 'sentinel1', 'srtm')",
           "--config.data.masking.decode_only_sensors=('srtm',)",
           "--config.total_steps=2", "--config.eval.tasks=()", "--config.checkpoint.every=2"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["final_step"] == 2
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["loss"]) and m["loss"] > 0 for m in metrics if "loss" in m)
    import spacenit_jax

    m = spacenit_jax.load(tmp_path / "run")  # and the result is usable for inference
    assert m.step == 2 and m.kind == "latent_predictor"
