"""H5 format: directory naming, on-disk schema, reader semantics, bad input."""

import csv
import json
import pathlib

import h5py
import numpy as np
import pytest

from spacenit_jax import sensors
from spacenit_jax.data import h5, synthetic
from spacenit_jax.sensors import MISSING_VALUE

LABELS = sensors.OFFICIAL_SENSORS


@pytest.fixture(scope="module", params=["gzip", "zstd", "lz4"])
def dataset(request, tmp_path_factory):
    spec = synthetic.SyntheticSpec(6, LABELS, seed=3, tile_size=16, compression=request.param,
                                   compression_opts=None if request.param == "lz4" else 4,
                                   missing_sensor_prob=0.3, missing_timestep_prob=0.8)
    path = synthetic.make_dataset(tmp_path_factory.mktemp(request.param), spec, workers=1)
    return spec, path


def test_directory_layout_and_side_files(dataset):
    spec, path = dataset
    comp = spec.compression
    opts = "" if comp == "lz4" else "_4"
    assert path.name == "6"
    assert path.parent.name == "_".join(sorted(LABELS))
    assert path.parent.parent.name == f"h5py_data_w_missing_timesteps_{comp}{opts}_16_x_256"
    names = sorted(p.name for p in path.iterdir())
    assert [n for n in names if n.endswith(".h5")] == sorted(f"sample_{i}.h5" for i in range(6))
    for f in (h5.METADATA_CSV, h5.LATLON_NPY, h5.COMPRESSION_JSON):
        assert f in names
    settings = json.loads((path / h5.COMPRESSION_JSON).read_text())
    assert settings == {"compression": comp, "compression_opts": None if comp == "lz4" else 4,
                        "shuffle": None}
    rows = list(csv.reader(open(path / h5.METADATA_CSV)))
    assert rows[0] == ["sample_index", *LABELS]
    assert [int(r[0]) for r in rows[1:]] == list(range(6))
    latlon = np.load(path / h5.LATLON_NPY)
    assert latlon.shape == (6, 2)
    for i, r in enumerate(rows[1:]):
        with h5py.File(path / f"sample_{i}.h5", "r") as f:
            present = [lab for lab in LABELS if lab in f]
            assert [lab for lab, v in zip(LABELS, r[1:], strict=True) if v == "1"] == present
            np.testing.assert_array_equal(f["latlon"][()], latlon[i])


def test_sample_schema(dataset):
    spec, path = dataset
    seen_missing_step = False
    for i in range(6):
        with h5py.File(path / f"sample_{i}.h5", "r") as f:
            assert f["latlon"].shape == (2,) and f["latlon"].dtype == np.float32
            ts = f["timestamps"][()]
            assert ts.shape == (12, 3) and np.issubdtype(ts.dtype, np.integer)
            np.testing.assert_array_equal(ts[:, 1], np.arange(12))  # month0
            assert set(f.attrs) == set()
            masks = f[h5.MASKS_GROUP]
            for lab in LABELS:
                if lab not in f:
                    assert lab not in masks
                    continue
                d = f[lab]
                c = sensors.get(lab).num_channels
                if sensors.get(lab).kind == sensors.SensorKind.SPACE_TIME:
                    m = masks[lab][()]
                    assert m.dtype == bool and m.shape == (12,)
                    assert d.shape == (16, 16, int(m.sum()), c)
                    assert masks[lab].compression is None
                    seen_missing_step |= not m.all()
                else:
                    assert d.shape == (16, 16, 1, c)
                expected = {"gzip": "gzip", "zstd": 32015, "lz4": 32004}[spec.compression]
                filters = d._filters
                assert (expected in filters) or (str(expected) in filters), filters
                assert d.chunks == d.shape
            assert f["sentinel2_l2a"].dtype == np.uint16 if "sentinel2_l2a" in f else True
            assert f["sentinel1"].dtype == np.float32 if "sentinel1" in f else True
            assert f["worldcover"].dtype == np.uint8 if "worldcover" in f else True
            assert f["srtm"].dtype == np.int16 if "srtm" in f else True
    assert seen_missing_step


def test_reader_fills_absent_in_mask_positions(dataset):
    _, path = dataset
    src = h5.H5Source(path, LABELS)
    assert len(src) == 6
    for i in range(6):
        s = src.read(i)
        with h5py.File(src.file_path(i), "r") as f:
            masks = {k: f[h5.MASKS_GROUP][k][()] for k in f[h5.MASKS_GROUP]}
            for lab in LABELS:
                x = s.arrays[lab]
                assert x.dtype == np.float32
                if lab not in f:
                    assert lab in s.missing and np.all(x == MISSING_VALUE)
                    continue
                stored = f[lab][()]
                if lab in masks:
                    # trim to the span of any mask (first..last True), then scatter
                    any_m = np.any(np.stack(list(masks.values())), axis=0)
                    first = int(np.argmax(any_m))
                    pos = np.flatnonzero(masks[lab][first:])
                    assert x.shape == (16, 16, 12, stored.shape[-1])
                    np.testing.assert_array_equal(x[:, :, pos], stored.astype(np.float32))
                    others = np.setdiff1d(np.arange(12), pos)
                    assert np.all(x[:, :, others] == MISSING_VALUE)
                else:
                    np.testing.assert_array_equal(x, stored.astype(np.float32))


def _write_custom(root, samples, labels, n=None):
    """Write samples (H5Sample) into a standard directory and return it."""
    settings = h5.CompressionSettings("zstd", 3)
    d = h5.dataset_dir(root, labels, n or len(samples), 8, 1024, settings)
    d.mkdir(parents=True)
    for i, s in enumerate(samples):
        h5.write_sample(d / f"sample_{i}.h5", s, settings)
    h5.write_metadata(d, labels, [tuple(s.arrays) for s in samples],
                      np.zeros((len(samples), 2)), settings)
    return d


def _ts(n=12):
    return np.stack([np.full(n, 15), np.arange(n) % 12, np.full(n, 2020)], 1).astype(np.int64)


def test_temporal_trim_and_timestamp_edge_padding(tmp_path):
    # S1 present at reference steps 2, 3, 5; S2 at 2..8: trim to [2, 8], pad to 12.
    m1 = np.zeros(12, bool)
    m1[[2, 3, 5]] = True
    m2 = np.zeros(12, bool)
    m2[2:9] = True
    s1 = np.arange(8 * 8 * 3 * 2, dtype=np.float32).reshape(8, 8, 3, 2)
    s2 = np.ones((8, 8, 7, 12), np.uint16)
    sample = h5.H5Sample(_ts(), np.zeros(2, np.float32),
                         {"sentinel2_l2a": s2, "sentinel1": s1}, {"sentinel2_l2a": m2, "sentinel1": m1})
    d = _write_custom(tmp_path, [sample], ["sentinel2_l2a", "sentinel1"])
    src = h5.H5Source(d, ["sentinel2_l2a", "sentinel1"])
    out = src.read(0)
    ts = out.timestamps
    assert ts.shape == (12, 3)
    np.testing.assert_array_equal(ts[:7, 1], np.arange(2, 9))
    np.testing.assert_array_equal(ts[7:], np.repeat(ts[6:7], 5, 0))  # "edge" padding
    x = out.arrays["sentinel1"]
    np.testing.assert_array_equal(x[:, :, [0, 1, 3]], s1)
    assert np.all(x[:, :, [2, 4, 5, 6, 7, 8, 9, 10, 11]] == MISSING_VALUE)
    assert np.all(out.arrays["sentinel2_l2a"][:, :, :7] == 1)
    assert np.all(out.arrays["sentinel2_l2a"][:, :, 7:] == MISSING_VALUE)
    f = h5py.File(src.file_path(0), "r")
    header = src.read_header(f, src.file_path(0))
    f.close()
    assert header.current_length == 7


def test_time_only_and_constant_sensors(tmp_path_factory):
    labels = ("sentinel2_l2a", "era5_10", "worldcover")
    spec = synthetic.SyntheticSpec(3, labels, seed=1, tile_size=16, missing_sensor_prob=0.0)
    path = synthetic.make_dataset(tmp_path_factory.mktemp("era"), spec, workers=1)
    assert path.parent.name == "era5_10_sentinel2_l2a_worldcover"
    src = h5.H5Source(path, (*labels, "latlon"))
    s = src.read(0)
    assert s.arrays["era5_10"].shape == (12, 6)
    assert s.arrays["latlon"].shape == (2,)
    with h5py.File(src.file_path(0), "r") as f:
        assert f["era5_10"].shape == (12, 6)
        np.testing.assert_array_equal(s.arrays["latlon"], f["latlon"][()])


def test_split_and_parse_names(tmp_path):
    assert h5.split_labels("sentinel2_sentinel2_l2a") == ("sentinel2", "sentinel2_l2a")
    assert h5.split_labels("naip_10_openstreetmap_raster_wri_canopy_height_map") == (
        "naip_10", "openstreetmap_raster", "wri_canopy_height_map")
    with pytest.raises(h5.H5FormatError, match="not a '_'-joined list of sensor labels"):
        h5.split_labels("sentinel2_l2a_bogus")
    d = tmp_path / "h5py_data_w_missing_timesteps_zstd_3_shuffle_128_x_4" / (
        "landsat_sentinel1_required_sentinel1") / "77"
    d.mkdir(parents=True)
    info = h5.parse_dataset_dir(d)
    assert (info.num_samples, info.supported, info.required, info.tile_size, info.num_subtiles,
            info.compression) == (77, ("landsat", "sentinel1"), ("sentinel1",), 128, 4, "zstd")
    # the SpaceNit README's top directory ("h5py_data") parses too, without a tile size
    d2 = tmp_path / "h5py_data" / "sentinel1_sentinel2_l2a" / "5"
    d2.mkdir(parents=True)
    assert h5.parse_dataset_dir(d2).tile_size is None
    assert h5.top_dir_name(64, 16, h5.CompressionSettings("gzip", 4, False)) == (
        "h5py_data_w_missing_timesteps_gzip_4_shuffle_64_x_16")


def test_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        h5.H5Source(tmp_path / "nope" / "x" / "3", LABELS)
    bad = tmp_path / "a" / "sentinel1" / "notanumber"
    bad.mkdir(parents=True)
    with pytest.raises(h5.H5FormatError, match="must be the sample count"):
        h5.H5Source(bad, ["sentinel1"])
    bad2 = tmp_path / "a" / "sentinel1_foo" / "3"
    bad2.mkdir(parents=True)
    with pytest.raises(h5.H5FormatError, match="sentinel1_foo"):
        h5.H5Source(bad2, ["sentinel1"])
    ok = tmp_path / "a" / "sentinel1" / "3"
    ok.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="sample_metadata.csv"):
        h5.H5Source(ok, ["sentinel1"])
    with pytest.raises(h5.H5FormatError, match="not among the dataset's sensors"):
        h5.H5Source(ok, ["landsat"])


def test_bad_files(tmp_path):
    s2 = np.ones((8, 8, 12, 12), np.uint16)
    good = h5.H5Sample(_ts(), np.zeros(2, np.float32), {"sentinel2_l2a": s2},
                       {"sentinel2_l2a": np.ones(12, bool)})
    d = _write_custom(tmp_path, [good, good, good, good], ["sentinel2_l2a"])
    src = h5.H5Source(d, ["sentinel2_l2a"])
    # 1: garbage bytes
    pathlib.Path(src.file_path(1)).write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(OSError, match="sample_1.h5"):
        src.read(1)
    # 2: wrong band count
    with h5py.File(src.file_path(2), "w") as f:
        f["sentinel2_l2a"] = np.ones((8, 8, 12, 10), np.uint16)
        f["timestamps"] = _ts()
        f["latlon"] = np.zeros(2, np.float32)
    with pytest.raises(h5.H5FormatError, match=r"sample_2.h5.*sentinel2_l2a.*expected 12 channels"):
        src.read(2)
    # 3: missing
    pathlib.Path(src.file_path(3)).unlink()
    with pytest.raises(FileNotFoundError, match="sample_3.h5"):
        src.read(3)
    # writer refuses wrong shapes and masks that disagree with the data
    with pytest.raises(ValueError, match="mask has 11 present entries"):
        m = np.ones(12, bool)
        m[0] = False
        h5.write_sample(tmp_path / "x.h5", h5.H5Sample(_ts(), np.zeros(2), {"sentinel2_l2a": s2},
                                                       {"sentinel2_l2a": m}),
                        h5.CompressionSettings())


def test_prepare_filters_and_percentage(tmp_path):
    s2 = np.ones((8, 8, 12, 12), np.uint16)
    wc = np.ones((8, 8, 1, 1), np.uint8)
    with_s2 = h5.H5Sample(_ts(), np.zeros(2), {"sentinel2_l2a": s2, "worldcover": wc},
                          {"sentinel2_l2a": np.ones(12, bool)})
    without = h5.H5Sample(_ts(), np.zeros(2), {"worldcover": wc})
    d = _write_custom(tmp_path, [with_s2, without, with_s2, with_s2], ["sentinel2_l2a", "worldcover"])
    src = h5.H5Source(d, ["sentinel2_l2a", "worldcover"])
    np.testing.assert_array_equal(src.sample_indices, [0, 2, 3])
    np.save(tmp_path / "allowed.npy", np.array([1, 2, 3]))
    src = h5.H5Source(d, ["sentinel2_l2a", "worldcover"], filter_idx_file=str(tmp_path / "allowed.npy"))
    np.testing.assert_array_equal(src.sample_indices, [2, 3])
    src = h5.H5Source(d, ["sentinel2_l2a", "worldcover"], dataset_percentage=0.7, seed=1)
    assert len(src) == 2
    import pickle

    back = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(back.read(0).arrays["worldcover"], src.read(0).arrays["worldcover"])


@pytest.mark.parametrize("patchwise", [False, True])
def test_cropped_read_equals_full_read_sliced(tmp_path_factory, patchwise):
    from spacenit_jax.data import crop

    labels = ("sentinel2_l2a", "sentinel1", "naip_10", "worldcover")
    spec = synthetic.SyntheticSpec(4, labels, seed=2, tile_size=16, missing_timestep_prob=1.0)
    path = synthetic.make_dataset(tmp_path_factory.mktemp("crop"), spec, workers=1)
    src = h5.H5Source(path, labels)
    for i in range(4):
        full = src.read(i)
        for seed in range(3):
            rng = np.random.default_rng(seed)
            win = {}

            def choose(h, rng=rng, win=win):
                win["w"] = crop.choose_window(h, 3, 4, 5, rng, patchwise)
                return win["w"]

            s = src.read(i, choose)
            w = win["w"]
            t = slice(w.t_start, w.t_start + w.t_len)
            np.testing.assert_array_equal(s.timestamps, full.timestamps[t])
            for lab in labels:
                m = sensors.get(lab).pixels_per_base_pixel
                r = (w.rows[:, None] * m + np.arange(m)).ravel()
                c = (w.cols[:, None] * m + np.arange(m)).ravel()
                want = full.arrays[lab][r][:, c]
                if sensors.get(lab).kind == sensors.SensorKind.SPACE_TIME:
                    want = want[:, :, t]
                assert s.arrays[lab].shape[:2] == (12 * m, 12 * m)
                np.testing.assert_array_equal(s.arrays[lab], want)


def test_sensor_without_mask_is_aligned_after_trim(tmp_path):
    s2 = np.broadcast_to(np.arange(12, dtype=np.uint16)[None, None, :, None], (8, 8, 12, 12)).copy()
    m1 = np.zeros(12, bool)
    m1[3:9] = True
    s1 = np.ones((8, 8, 6, 2), np.float32)
    sample = h5.H5Sample(_ts(), np.zeros(2, np.float32), {"sentinel2_l2a": s2, "sentinel1": s1},
                         {"sentinel1": m1})  # no mask for sentinel2_l2a: all 12 rows present
    d = _write_custom(tmp_path, [sample], ["sentinel2_l2a", "sentinel1"])
    out = h5.H5Source(d, ["sentinel2_l2a", "sentinel1"]).read(0)
    x = out.arrays["sentinel2_l2a"]
    np.testing.assert_array_equal(x[0, 0, :6, 0], np.arange(3, 9))  # rows 3..8 after the trim
    assert np.all(x[:, :, 6:] == MISSING_VALUE)
    np.testing.assert_array_equal(out.timestamps[:6, 1], np.arange(3, 9))
