"""GeoBench v1 reader: the real m-eurosat sample, safe unpickling, imputation, normalisation,
and the pre-release brick kiln and South-Africa crop type samples (tests/data/geobench)."""

import dataclasses
import datetime
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
EUROSAT = "geobench/classification_v1.0/m-eurosat"


@pytest.fixture
def eurosat_root(data_dir, tmp_path):
    """<tmp>/classification_v1.0/m-eurosat/ with the sample files linked in."""
    src = data_dir / EUROSAT
    task_dir = tmp_path / "classification_v1.0" / "m-eurosat"
    task_dir.mkdir(parents=True)
    for f in src.iterdir():
        if not f.name.endswith("_partition.json"):
            os.symlink(f, task_dir / f.name)
    os.symlink(src / "0.01x_train_partition.json", task_dir / "0.01x_train_partition.json")
    (task_dir / "default_partition.json").write_text(
        json.dumps({"train": [SAMPLE], "valid": [], "test": []}))
    return tmp_path


def test_reads_the_real_sample(data_dir):
    raw = geobench.read_sample_hdf5(data_dir / EUROSAT / "id_1905.hdf5")
    assert list(raw.bands) == [name for name, _ in geobench.S2_GEOBENCH_BANDS]
    assert all(b.shape == (64, 64) and b.dtype == np.int16 for b in raw.bands.values())
    assert set(raw.band_classes.values()) == {"Sentinel2"}
    assert raw.label == 1  # Forest


def test_task_specs_are_parsed_without_geobench(data_dir):
    specs = geobench.load_task_specs(data_dir / EUROSAT)
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
    raw = geobench.read_sample_hdf5(data_dir / EUROSAT / "id_1905.hdf5")
    stored = np.stack(list(raw.bands.values()), axis=-1).astype(np.float64)  # 13 GeoBench bands
    assert geobench.GEOBENCH_S2_TO_SENTINEL2_L2A == (1, 2, 3, 7, 4, 5, 6, 8, 11, 12, 0, 9)
    reordered = stored[..., list(geobench.GEOBENCH_S2_TO_SENTINEL2_L2A)]
    # COMPUTED normalisation (mean - 2 std, scaled by 4 std) with the stored statistics of
    # B02 (first channel) and B09 (last)
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
    stats = json.loads((data_dir / EUROSAT / "band_stats.json").read_text())
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
    """Write a sample as GeoBench does, with band-info objects of fake geobench classes.

    bands: {dataset key: (band-info class, data)}; a key "<band>_YYYY-MM-DD" is a dated
    band. A 2-D label is written as the "label" band (segmentation)."""
    fake = types.ModuleType("geobench.dataset")
    for cls in ("Sentinel1", "Sentinel2", "SpectralBand", "CloudProbability",
                "SegmentationClasses"):
        setattr(fake, cls, type(cls, (), {"__module__": "geobench.dataset"}))
    sys.modules["geobench"], sys.modules["geobench.dataset"] = types.ModuleType("geobench"), fake
    try:
        meta = {"bands_order": []}
        if np.ndim(label) == 2:
            bands = {**bands, "label": ("SegmentationClasses", np.asarray(label))}
        else:
            meta["label"] = label
        with h5py.File(task_dir / f"{name}.hdf5", "w") as f:
            for key, (cls, data) in bands.items():
                band_name, _, date = key.partition("_")
                info = getattr(fake, cls)()
                info.__dict__.update(name=band_name, alt_names=())
                f.create_dataset(key, data=data)
                when = datetime.date.fromisoformat(date) if date else None
                meta[key] = {"band_info": info, "date": when, "spatial_resolution": 10}
                meta["bands_order"].append(key)
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
    meta = {**raw.meta, "08 - NIR": dataclasses.replace(raw.meta["08 - NIR"],
                                                        info_class="Sentinel1")}
    with pytest.raises(ValueError, match=r"\['B08'\]"):
        geobench.assemble_image(dataclasses.replace(raw, meta=meta), ds.task)
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


# --------------------------------------------------------------------------- pre-release samples

PRE = "geobench/classification_v1.0/brick_kiln"
SA = "geobench/segmentation_v1.0/south_africa_crop_type"


def test_prerelease_brick_kiln_reads_with_its_variants(data_dir):
    """ccb.io.task pickle, float64 bands, no bands_order, 8-bit scaled B11/B12 (dataset
    normalisation chosen by norm "auto", pretraining one refused), B10 dropped."""
    root = data_dir / "geobench"
    specs = geobench.load_task_specs(data_dir / PRE)
    assert specs.module == "ccb.io.task" and specs.num_classes == 2
    assert specs.band_names == tuple(name for name, _ in geobench.S2_GEOBENCH_BANDS)
    raw = geobench.read_sample_hdf5(data_dir / PRE / "examples_0_12.hdf5")
    assert all(b.dtype == np.float64 for b in raw.bands.values()) and raw.label == 0
    ds = geobench.GeoBenchDataset(root, "m-brick-kiln", "train")
    assert ds.task_dir.name == "brick_kiln" and len(ds) == 5 and ds.sensor == "sentinel2_l2a"
    assert ds.norm == "norm_no_clip"
    text = " | ".join(ds.notes)
    assert "pre-release folder" in text and "10 - SWIR - Cirrus" in text
    assert "['11 - SWIR', '12 - SWIR'] hold 8-bit scaled values" in text
    sample = ds[ds.names.index("examples_0_12")]
    assert sample.image.shape == (64, 64, 1, 12) and sample.label == 0
    stats = json.loads((data_dir / PRE / "band_stats.json").read_text())
    order = sensors.SENTINEL2_L2A.bands
    for band, name in (("B02", "02 - Blue"), ("B12", "12 - SWIR"), ("B09", "09 - Water vapour")):
        m, sd = stats[name]["mean"], stats[name]["std"]
        np.testing.assert_allclose(sample.image[:, :, 0, order.index(band)],
                                   (raw.bands[name] - (m - sd)) / (2 * sd), rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(ValueError, match=r"8-bit scaled.*dataset.norm='norm_no_clip'"):
        geobench.GeoBenchDataset(root, "m-brick-kiln", "train", norm="pretrained")


def test_prerelease_south_africa_crop_type_segmentation(data_dir):
    root = data_dir / "geobench"
    ds = geobench.GeoBenchDataset(root, "m-SA-crop-type", "train", partition="smoke")
    assert ds.task.kind == "segmentation" and ds.task.benchmark == "segmentation_v1.0"
    assert ds.norm == "norm_no_clip" and len(ds) == 1
    assert any("Cloud Probability" in n and "not a reflectance" in n for n in ds.notes)
    sample = ds[0]
    assert sample.image.shape == (256, 256, 1, 12) and sample.sensor == "sentinel2_l2a"
    raw = geobench.read_sample_hdf5(ds.task_dir / f"{ds.names[0]}.hdf5")
    assert np.asarray(raw.label).shape == (256, 256) and "Cloud Probability" in raw.bands
    np.testing.assert_array_equal(sample.label, raw.label)
    assert sample.label.dtype == np.int32 and 0 <= sample.label.min()
    assert sample.label.max() < 10
    ignored = geobench.GeoBenchDataset(root, "m-SA-crop-type", "train", partition="smoke",
                                       ignore_nodata=True)[0].label
    np.testing.assert_array_equal(ignored == -1, raw.label == 0)
    with pytest.raises(FileNotFoundError, match=r"default_partition.json not found"):
        geobench.GeoBenchDataset(root, "m-SA-crop-type", "train")
    cropped = geobench.GeoBenchDataset(root, "m-SA-crop-type", "train", partition="smoke",
                                       center_crop=200)[0]
    assert cropped.image.shape[:2] == cropped.label.shape == (200, 200)
    np.testing.assert_array_equal(cropped.label, raw.label[28:228, 28:228])


def test_aerial_rgb_maps_to_naip_with_a_filled_band_and_a_sentinel2_fallback(tmp_path):
    task_dir = tmp_path / "segmentation_v1.0" / "m-pv4ger-seg"
    task_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rgb = {n: rng.integers(0, 256, (16, 16)).astype(np.uint8) for n in ("Red", "Green", "Blue")}
    label = rng.integers(0, 2, (16, 16))
    _write_geobench_like(task_dir, "s0", {n: ("SpectralBand", d) for n, d in rgb.items()}, label)
    (task_dir / "default_partition.json").write_text(
        json.dumps({"train": ["s0"], "valid": ["s0"], "test": ["s0"]}))
    ds = geobench.GeoBenchDataset(tmp_path, "m-pv4ger-seg")
    assert ds.sensor == "naip" and ds.plan.filled == ("IR",)
    assert any("filled with the pretraining mean: IR" in n for n in ds.notes)
    sample = ds[0]
    lo, hi, _ = band_range("naip")
    np.testing.assert_allclose(sample.image[:, :, 0, 0], (rgb["Red"] - lo[0]) / (hi[0] - lo[0]),
                               rtol=1e-5)
    np.testing.assert_allclose(sample.image[:, :, 0, 3], 0.5)  # IR: no information
    np.testing.assert_array_equal(sample.label, label)
    fallback = geobench.GeoBenchDataset(tmp_path, "m-pv4ger-seg", sensor="sentinel2_l2a")
    image = fallback[0].image
    order = sensors.SENTINEL2_L2A.bands
    lo, hi, _ = band_range("sentinel2_l2a")
    b04 = order.index("B04")
    np.testing.assert_allclose(image[:, :, 0, b04], (rgb["Red"] - lo[b04]) / (hi[b04] - lo[b04]),
                               rtol=1e-5)
    np.testing.assert_allclose(image[:, :, 0, order.index("B11")], 0.5)
    assert set(fallback.plan.filled) == set(order) - {"B02", "B03", "B04"}


def test_dated_bands_make_a_time_axis_and_bad_labels_are_named(tmp_path):
    task_dir = tmp_path / "segmentation_v1.0" / "m-cashew-plant"
    task_dir.mkdir(parents=True)
    s2 = [n for n, b in geobench.S2_GEOBENCH_BANDS if b != "B10"]
    dates = ("2020-03-05", "2020-01-20")
    bands = {f"{n}_{d}": ("Sentinel2", np.full((8, 8), 100.0 * (t + 1)))
             for t, d in enumerate(dates) for n in s2}
    bands["Cloud Probability_2020-03-05"] = ("CloudProbability", np.zeros((8, 8)))
    _write_geobench_like(task_dir, "ok", bands, np.zeros((8, 8), np.int64))
    _write_geobench_like(task_dir, "bad", bands, np.full((8, 8), 9))
    (task_dir / "default_partition.json").write_text(
        json.dumps({"train": ["ok"], "valid": ["bad"], "test": []}))
    sample = geobench.GeoBenchDataset(tmp_path, "m-cashew-plant", norm="no_norm")[0]
    assert sample.image.shape == (8, 8, 2, 12)
    np.testing.assert_array_equal(sample.timestamps, [[20, 0, 2020], [5, 2, 2020]])
    np.testing.assert_allclose(sample.image[0, 0, :, 0], [200.0, 100.0])  # sorted by date
    with pytest.raises(ValueError, match=r"bad.hdf5: label map holds values \[9\]"):
        geobench.GeoBenchDataset(tmp_path, "m-cashew-plant", "valid", norm="no_norm")[0]


def test_every_task_is_registered_with_its_layout():
    assert len(geobench.CLASSIFICATION_TASKS) == 6 and len(geobench.SEGMENTATION_TASKS) == 6
    for name in ("m-SA-crop-type", "m-chesapeake", "m-cashew-plant", "m-NeonTree",
                 "m-nz-cattle", "m-pv4ger-seg"):
        assert geobench.get_task(name).benchmark == "segmentation_v1.0"
    assert geobench.get_task("m_sa_crop_type").name == "m-SA-crop-type"
    assert geobench.get_task("south_africa_crop_type").name == "m-SA-crop-type"
    assert geobench.get_task("m-forestnet").sensor == "landsat"
    assert {geobench.get_task(n).sensor for n in ("m-pv4ger", "m-chesapeake", "m-NeonTree",
                                                  "m-nz-cattle")} == {"naip"}


def test_band_stats_keys_match_by_name_alternative_name_or_without_date():
    entry = {"mean": 1.0}
    assert geobench._stats_lookup({"02 - Blue": entry}, "02 - Blue", ()) is entry
    assert geobench._stats_lookup({"blue": entry}, "02 - Blue", ("2", "02", "blue")) is entry
    assert geobench._stats_lookup({"02 - Blue_2020-01-05": entry}, "02 - Blue", ()) is entry
    assert geobench._stats_lookup({"B02": entry}, "02 - Blue", ("2",)) is None


def test_missing_band_statistics_name_the_band_and_file(tmp_path):
    task_dir = tmp_path / "classification_v1.0" / "m-brick-kiln"
    task_dir.mkdir(parents=True)
    s2 = [n for n, _ in geobench.S2_GEOBENCH_BANDS]
    _write_geobench_like(task_dir, "a", {n: ("Sentinel2", np.ones((4, 4))) for n in s2}, 1)
    (task_dir / "default_partition.json").write_text(
        json.dumps({"train": ["a"], "valid": ["a"], "test": ["a"]}))
    (task_dir / "band_stats.json").write_text(json.dumps(
        {n: {"mean": 1.0, "std": 1.0, "min": 0.0, "max": 5000.0} for n in s2[1:]}))
    ds = geobench.GeoBenchDataset(tmp_path, "m-brick-kiln", norm="norm_no_clip")
    with pytest.raises(KeyError, match=r"band_stats.json: no 'mean' for band '01 - Coastal"):
        ds[0]
    assert geobench.GeoBenchDataset(tmp_path, "m-brick-kiln").norm == "pretrained"
