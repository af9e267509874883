"""GeoBench v1 reader: the real m-eurosat sample, safe unpickling, imputation, normalisation."""

import dataclasses
import json
import os
import pathlib
import pickle
import sys
import types

import h5py
import numpy as np
import pytest

from spacenit_jax import sensors
from spacenit_jax.data.normalize import band_range
from spacenit_jax.eval import geobench, normalization

SAMPLE = "id_1905"


@pytest.fixture
def eurosat_root(data_dir, tmp_path):
    """<tmp>/classification_v1.0/m-eurosat/ with the sample files linked in."""
    src = data_dir / "geobench-m-eurosat-sample"
    task_dir = tmp_path / "classification_v1.0" / "m-eurosat"
    task_dir.mkdir(parents=True)
    for f in src.iterdir():
        os.symlink(f, task_dir / f.name)
    (task_dir / "default_partition.json").write_text(
        json.dumps({"train": [SAMPLE], "valid": [], "test": []}))
    return tmp_path


def test_reads_the_real_sample(data_dir):
    raw = geobench.read_sample_hdf5(data_dir / "geobench-m-eurosat-sample/id_1905.hdf5")
    assert list(raw.bands) == [name for name, _ in geobench.S2_GEOBENCH_BANDS]
    assert all(b.shape == (64, 64) and b.dtype == np.int16 for b in raw.bands.values())
    assert set(raw.band_classes.values()) == {"Sentinel2"}
    assert raw.label == 1  # Forest


def test_task_specs_are_parsed_without_geobench(data_dir):
    specs = geobench.load_task_specs(data_dir / "geobench-m-eurosat-sample")
    assert specs.dataset_name == "m-eurosat" and specs.patch_size == (64, 64)
    assert specs.num_classes == 10 and specs.n_time_steps == 1
    assert specs.band_names == tuple(name for name, _ in geobench.S2_GEOBENCH_BANDS)
    assert "geobench" not in sys.modules


def test_sample_maps_bands_to_sentinel2_l2a_order_and_normalises(eurosat_root, data_dir):
    ds = geobench.GeoBenchClassification(eurosat_root, "m-eurosat", "train")
    assert len(ds) == 1
    sample = ds[0]
    assert sample.image.shape == (64, 64, 1, 12) and sample.image.dtype == np.float32
    assert sample.label == 1 and sample.sensor == "sentinel2_l2a" and sample.name == SAMPLE
    np.testing.assert_array_equal(sample.timestamps, [[1, 6, 2020]])
    raw = geobench.read_sample_hdf5(data_dir / "geobench-m-eurosat-sample/id_1905.hdf5")
    stored = np.stack(list(raw.bands.values()), axis=-1).astype(np.float64)  # 13 GeoBench bands
    assert geobench.GEOBENCH_S2_TO_SENTINEL2_L2A == (1, 2, 3, 7, 4, 5, 6, 8, 11, 12, 0, 9)
    reordered = stored[..., list(geobench.GEOBENCH_S2_TO_SENTINEL2_L2A)]
    # COMPUTED normalisation, spec §3 numbers for B02 (first channel) and B09 (last)
    b02 = (reordered[..., 0] - (1188.9412572078477 - 2 * 1859.1923971769581)) / (
        4 * 1859.1923971769581)
    np.testing.assert_allclose(sample.image[:, :, 0, 0], b02, rtol=1e-6)
    b09 = (reordered[..., 11] - (3269.812554170875 - 2 * 2651.088425085525)) / (
        4 * 2651.088425085525)
    np.testing.assert_allclose(sample.image[:, :, 0, 11], b09, rtol=1e-6)
    lo, hi, strategy = band_range("sentinel2_l2a")
    assert strategy == "computed"
    np.testing.assert_allclose(sample.image[:, :, 0, :], (reordered - lo) / (hi - lo),
                               rtol=1e-5, atol=1e-6)
    images, labels = ds.load_arrays()
    assert images.shape == (1, 64, 64, 1, 12) and labels.tolist() == [1]


def test_dataset_stats_normalisation_and_band_fix(eurosat_root, data_dir):
    stats = json.loads((data_dir / "geobench-m-eurosat-sample/band_stats.json").read_text())
    ds = geobench.GeoBenchClassification(eurosat_root, "m_eurosat", "train", norm="norm_no_clip")
    raw = geobench.read_sample_hdf5(ds.task_dir / f"{SAMPLE}.hdf5")
    blue = raw.bands["02 - Blue"].astype(np.float64)
    m, s = stats["02 - Blue"]["mean"], stats["02 - Blue"]["std"]
    np.testing.assert_allclose(ds[0].image[:, :, 0, 0], (blue - (m - s)) / (2 * s), rtol=1e-5)
    # Reference order takes "08A" for B8A; the corrected order takes the stored "12 - SWIR".
    b8a = sensors.SENTINEL2_L2A.bands.index("B8A")
    fixed = geobench.GeoBenchClassification(eurosat_root, "m-eurosat", "train",
                                            norm="no_norm", fix_band_labels=True)[0]
    plain = geobench.GeoBenchClassification(eurosat_root, "m-eurosat", "train", norm="no_norm")[0]
    np.testing.assert_array_equal(fixed.image[:, :, 0, b8a], raw.bands["12 - SWIR"])
    np.testing.assert_array_equal(plain.image[:, :, 0, b8a], raw.bands["08A - Vegetation Red Edge"])


def test_partition_choice_and_missing_files(eurosat_root):
    task_dir = eurosat_root / "classification_v1.0" / "m-eurosat"
    parts = geobench.load_partition(task_dir, "0.01x_train")
    assert {k: len(v) for k, v in parts.items()} == {"train": 20, "valid": 1000, "test": 1000}
    assert SAMPLE in parts["train"]
    ds = geobench.GeoBenchClassification(eurosat_root, "m-eurosat", "train",
                                         partition="0.01x_train", check_files=False)
    assert len(ds) == 20 and ds[ds.names.index(SAMPLE)].label == 1
    with pytest.raises(FileNotFoundError, match="19 of 20 samples"):
        geobench.GeoBenchClassification(eurosat_root, "m-eurosat", "train", partition="0.01x_train")
    with pytest.raises(FileNotFoundError, match="0.05x_train_partition.json"):
        geobench.GeoBenchClassification(eurosat_root, "m-eurosat", partition="0.05x_train")
    with pytest.raises(FileNotFoundError, match="classification_v1.0"):
        geobench.GeoBenchClassification(eurosat_root, "m-so2sat")


def test_unpickler_never_runs_foreign_code(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    obj = geobench.unpickle_geobench(pickle.dumps({"x": Evil(), "d": np.arange(3)}))
    assert not marker.exists()
    assert isinstance(obj["x"], geobench.PickledStandIn)
    assert obj["x"].pickled_name == "system" and obj["x"].args == (f"touch {marker}",)
    np.testing.assert_array_equal(obj["d"], [0, 1, 2])


def _write_geobench_like(task_dir: pathlib.Path, name: str, bands: dict, label) -> None:
    """Write a sample as GeoBench does, with band-info objects of fake geobench classes."""
    fake = types.ModuleType("geobench.dataset")
    for cls in ("Sentinel1", "Sentinel2"):
        setattr(fake, cls, type(cls, (), {"__module__": "geobench.dataset"}))
    sys.modules["geobench"], sys.modules["geobench.dataset"] = types.ModuleType("geobench"), fake
    try:
        meta = {"label": label, "bands_order": []}
        with h5py.File(task_dir / f"{name}.hdf5", "w") as f:
            for band_name, (cls, data) in bands.items():
                info = getattr(fake, cls)()
                info.__dict__.update(name=band_name, alt_names=())
                f.create_dataset(band_name, data=data)
                meta[band_name] = {"band_info": info, "date": None, "spatial_resolution": 10}
                meta["bands_order"].append(band_name)
            f.attrs["pickle"] = str(pickle.dumps(meta))
    finally:
        del sys.modules["geobench"], sys.modules["geobench.dataset"]


def test_so2sat_imputation_scaling_and_sentinel1_bands_ignored(tmp_path):
    task_dir = tmp_path / "classification_v1.0" / "m-so2sat"
    task_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    s2 = [geobench.S2_GEOBENCH_BANDS[i][0] for i in (1, 2, 3, 4, 5, 6, 7, 8, 11, 12)]
    bands = {f"0{i} - VH.Real": ("Sentinel1", rng.normal(size=(32, 32))) for i in range(1, 9)}
    bands.update({n: ("Sentinel2", rng.random((32, 32)).astype(np.float32)) for n in s2})
    _write_geobench_like(task_dir, "id_0001", bands, 3)
    (task_dir / "default_partition.json").write_text(
        json.dumps({"train": [], "valid": [], "test": ["id_0001"]}))
    (task_dir / "band_stats.json").write_text(json.dumps(
        {n: {"mean": 0.1, "std": 0.05, "min": 0.0, "max": 1.0} for n in s2}))
    ds = geobench.GeoBenchClassification(tmp_path, "m-so2sat", "test", norm="no_norm")
    sample = ds[0]
    assert sample.image.shape == (32, 32, 1, 12) and sample.label == 3
    order = sensors.SENTINEL2_L2A.bands
    data = {n: d for n, (_, d) in bands.items()}
    np.testing.assert_allclose(sample.image[:, :, 0, order.index("B01")],
                               data["02 - Blue"] * 10_000, rtol=1e-6)  # B02 -> B01
    np.testing.assert_allclose(sample.image[:, :, 0, order.index("B09")],
                               data["08A - Vegetation Red Edge"] * 10_000, rtol=1e-6)  # B8A -> B09
    np.testing.assert_allclose(sample.image[:, :, 0, order.index("B08")],
                               data["08 - NIR"] * 10_000, rtol=1e-6)
    # a band whose band-info class belongs to another sensor is not taken, whatever its name
    raw = geobench.read_sample_hdf5(task_dir / "id_0001.hdf5")
    assert raw.band_classes["01 - VH.Real"] == "Sentinel1"
    foreign = dataclasses.replace(raw, band_classes={**raw.band_classes, "08 - NIR": "Sentinel1"})
    with pytest.raises(ValueError, match=r"\['B08'\]"):
        geobench.assemble_image(foreign, ds.task)
    std = geobench.GeoBenchClassification(tmp_path, "m-so2sat", "test", norm="standardize")[0]
    np.testing.assert_allclose(std.image[:, :, 0, order.index("B01")],
                               (data["02 - Blue"] * 10_000 - 1000) / 500, rtol=1e-5, atol=1e-5)


def test_multilabel_labels_and_missing_band_errors(tmp_path):
    task = geobench.get_task("m-bigearthnet")
    hot = np.zeros(43, np.int64)
    hot[[2, 40]] = 1
    np.testing.assert_array_equal(geobench.encode_label(hot, task, "x"), hot)
    np.testing.assert_array_equal(geobench.encode_label([2, 40], task, "x"), hot)
    with pytest.raises(ValueError, match="outside"):
        geobench.encode_label(10, geobench.get_task("m-eurosat"), "x")
    raw = geobench.RawSample("s", {"02 - Blue": np.zeros((4, 4))}, {}, 0)
    with pytest.raises(ValueError, match="neither stored nor imputed"):
        geobench.assemble_image(raw, task)
    with pytest.raises(KeyError, match="known"):
        geobench.get_task("m-unknown")


def test_dataset_norm_methods():
    x = np.array([[0.0, 5.0, 10.0, 20.0]]).T  # one band
    mean, std = np.array([10.0]), np.array([5.0])
    apply = lambda name, **kw: normalization.apply_dataset_norm(
        x, normalization.parse_norm_method(name), mean, std, **kw)[:, 0]
    np.testing.assert_allclose(apply("norm_no_clip"), [-0.5, 0.0, 0.5, 1.5])
    np.testing.assert_allclose(apply("norm_yes_clip"), [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(apply("norm_no_clip_2_std"), [0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(apply("norm_yes_clip_3_std_int"),
                               np.floor(np.clip((x[:, 0] + 5) / 30, 0, 1) * 255) / 255)
    np.testing.assert_allclose(apply("norm_yes_clip_min_max_int", minimum=[0.0], maximum=[20.0]),
                               np.floor(x[:, 0] / 20 * 255) / 255)
    np.testing.assert_allclose(apply("standardize"), [-2.0, -1.0, 0.0, 2.0])
    np.testing.assert_allclose(apply("no_norm"), x[:, 0])
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalization.parse_norm_method("norm_sometimes")
