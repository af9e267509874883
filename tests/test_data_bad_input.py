"""Bad input to the data pipeline: unreadable, corrupt or out-of-range samples, pixel dtypes
that cannot hold the data, and clean shutdown of worker processes."""

import json
import pathlib
import shutil

import h5py
import numpy as np
import pytest

from spacenit_jax.data import h5, masking, pipeline, synthetic, tokenize, value_ranges
from spacenit_jax.model.config import make_config
from spacenit_jax.sensors import MISSING_VALUE

NANO = make_config("design_card", "nano").layout


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    spec = synthetic.SyntheticSpec(8, seed=11, tile_size=16, missing_sensor_prob=0.0)
    return synthetic.make_dataset(tmp_path_factory.mktemp("bad"), spec, workers=1)


def _copy(data_dir, tmp_path) -> pathlib.Path:
    dst = tmp_path / data_dir.parent.parent.name / data_dir.parent.name / data_dir.name
    shutil.copytree(data_dir, dst)
    return dst


def _cfg(path, **kw):
    base = dict(path=str(path), rows=1, seed=3, process_index=0, process_count=1)
    base.update(kw)
    return pipeline.PipelineConfig(**base)


def _truncate(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_first_sample_is_skipped_at_start_up(base_dir, tmp_path):
    d = _copy(base_dir, tmp_path)
    _truncate(d / "sample_0.h5")
    # "raise": start-up stops with the file named
    with pytest.raises(pipeline.BadSampleError, match=r"sample_0\.h5.*truncated"):
        pipeline.make_pipeline(_cfg(d), NANO)
    # "skip": the tile size is probed on the next readable sample, and the batches that
    # draw the truncated sample count it as skipped
    pl = pipeline.make_pipeline(_cfg(d, bad_sample_policy="skip"), NANO)
    assert pl.allowed[8] == (1, 2)  # 16-pixel tiles
    item = int(np.flatnonzero(pl.source.sample_indices == 0)[0])
    skipped = 0
    for b in range(12):
        e = pl.batch(b)
        skipped += int(e["metrics"]["skipped"])
        assert int(e["num_samples"]) == pl.plan.k[int(e["hw_p"])]
    assert skipped >= 1 and item == 0


def test_no_readable_sample_at_start_up(base_dir, tmp_path):
    d = _copy(base_dir, tmp_path)
    for f in d.glob("sample_*.h5"):
        _truncate(f)
    with pytest.raises(pipeline.BadSampleError, match=r"first 3 dataset items are all "
                       r"unreadable.*max_skip_tries=2(.|\n)*sample_0\.h5(.|\n)*sample_2\.h5"):
        pipeline.make_pipeline(_cfg(d, bad_sample_policy="skip", max_skip_tries=2), NANO)


def _record0_item(path, **kw) -> tuple[int, pathlib.Path]:
    """The dataset item read first by batch 0, and its file."""
    pl = pipeline.make_pipeline(_cfg(path, **kw), NANO)
    item = int(pl.builder.permutation(0)[0])
    return item, pathlib.Path(pl.source.file_path(item))


WHOLE_TILE = dict(patch_sizes=(4,), hw_p_list=(4,))  # 16-pixel crops of 16-pixel tiles, 12 steps


def test_synthetic_data_is_plausible(tmp_path):
    labels = (*NANO.sensor_labels, "era5_10", "naip_10", "worldpop", "gse")
    spec = synthetic.SyntheticSpec(6, labels, seed=4, tile_size=16, missing_sensor_prob=0.2)
    src = h5.H5Source(synthetic.make_dataset(tmp_path, spec, workers=1), (*labels, "latlon"))
    ranges = value_ranges.resolve_ranges(src.sensor_labels)
    assert set(ranges) == set(src.sensor_labels) - {"openstreetmap_raster", "gse"}
    for i in range(len(src)):
        value_ranges.check_sample(src.read(i).arrays, ranges, src.file_path(i))


def test_corrupt_zstd_chunk_is_a_bad_sample(base_dir, tmp_path):
    d = _copy(base_dir, tmp_path)
    item, path = _record0_item(d, **WHOLE_TILE)
    with h5py.File(path, "r") as f:
        ds = f["sentinel2_l2a"]
        assert "32015" in str(ds._filters)  # the zstd filter (hdf5plugin)
        good = ds[()]
        chunk = ds.id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    start = chunk.byte_offset + 100
    raw[start:start + 2000] = bytes(2000)  # 2,000 zeroed bytes inside the chunk
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f:  # the format has no checksum: garbage, no error
        bad = f["sentinel2_l2a"][()]
    assert (bad != good).sum() > 1000 and bad.max() > 30000 >= good.max()
    # "raise": the batch stops, naming the file, sensor, band and value
    with pytest.raises(pipeline.BadSampleError,
                       match=rf"{path.name}: sensor 'sentinel2_l2a' band 'B\w+': value \d+ at "
                             r"index .* outside the plausible range \[0, 25000\]"):
        pipeline.make_pipeline(_cfg(d, **WHOLE_TILE), NANO).batch(0)
    # "skip": counted as a bad sample and replaced
    pl = pipeline.make_pipeline(_cfg(d, bad_sample_policy="skip", **WHOLE_TILE), NANO)
    e = pl.batch(0)
    assert int(e["metrics"]["skipped"]) == 1 and int(e["num_samples"]) == pl.plan.k[4]
    # without the check the garbage would train silently; a widened range lets it through
    quiet = dict(WHOLE_TILE, value_ranges={"sentinel2_l2a": [0, 65535]})
    assert int(pipeline.make_pipeline(_cfg(d, **quiet), NANO).batch(0)["metrics"]["skipped"]) == 0
    off = dict(WHOLE_TILE, check_value_ranges=False)
    assert int(pipeline.make_pipeline(_cfg(d, **off), NANO).batch(0)["metrics"]["skipped"]) == 0


def test_value_range_config_errors():
    with pytest.raises(ValueError, match=r"value_ranges\['srtm'\] must be"):
        value_ranges.resolve_ranges(["srtm"], {"srtm": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"sensor 'era5_10': lo must be one number or 6"):
        value_ranges.resolve_ranges(["era5_10"], {"era5_10": [[0, 1], 5]})
    with pytest.raises(ValueError, match=r"sensor 'srtm': lo 10.0 > hi 0.0"):
        value_ranges.resolve_ranges(["srtm"], {"srtm": {"lo": 10, "hi": 0}})
    with pytest.raises(KeyError, match="unknown sensor 'dem'"):
        value_ranges.resolve_ranges(["srtm"], {"dem": [0, 1]})
    r = value_ranges.resolve_ranges(["srtm", "cdl"], {"cdl": None, "srtm": {"lo": 0, "hi": 10,
                                                                            "nodata": [-1]}})
    assert list(r) == ["srtm"] and r["srtm"][2].tolist() == [-1.0]
    value_ranges.check_sample({"srtm": np.array([[0.0], [-1.0], [-99999.0]])}, r)
    with pytest.raises(value_ranges.ImplausibleValueError, match=r"x\.h5: sensor 'srtm' band "
                       r"'srtm': value nan at index \(1, 0\).*\(1 of 3 values"):
        value_ranges.check_sample({"srtm": np.array([[0.0], [np.nan], [3.0]])}, r, "x.h5")


def test_float16_cannot_hold_raw_values(base_dir, tmp_path):
    # known at configuration time: raw S2 values reach 65535 (saturated), float16 65504
    with pytest.raises(ValueError, match=r"data.dtype='float16' cannot hold sensor "
                       r"'sentinel2_l2a' band 'B02': its plausible raw .* reach 65535"):
        pipeline.make_pipeline(_cfg(base_dir, dtype="float16", normalize=False), NANO)
    # normalised values fit, and every packed pixel is finite
    e = pipeline.make_pipeline(_cfg(base_dir, dtype="float16", **WHOLE_TILE), NANO).batch(0)
    for p in e["view_a"].patches.values():
        assert p.dtype == np.float16 and np.isfinite(p).all()
    # with S2 and Landsat unchecked the configuration passes, and the sample holding 65535
    # stops the batch, named, instead of becoming +inf
    d = _copy(base_dir, tmp_path)
    item, path = _record0_item(d, **WHOLE_TILE)
    with h5py.File(path, "r+") as f:
        f["sentinel2_l2a"][...] = 65535
    unchecked = dict(WHOLE_TILE, dtype="float16", normalize=False,
                     value_ranges={"sentinel2_l2a": None, "landsat": None})
    with pytest.raises(tokenize.PixelDtypeError, match=rf"{path.name}: sensor 'sentinel2_l2a' "
                       r"\(group sentinel2_l2a__g0\): pixel value 65535 does not fit the pixel "
                       r"dtype float16"):
        pipeline.make_pipeline(_cfg(d, **unchecked), NANO).batch(0)


def test_float16_partly_missing_patch():
    layout = make_config("design_card", "nano", sensor_labels=("sentinel1",)).layout
    x = np.zeros((4, 4, 1, 2), np.float32)
    x[:2, :2] = MISSING_VALUE  # a quarter of the one 4x4 patch is missing
    ms = masking.mask_sample(layout, {"sentinel1": x}, 4, masking.NoMasking(),
                             np.random.default_rng(0))
    with pytest.raises(tokenize.PixelDtypeError, match=r"s\.h5: sensor 'sentinel1' .*value "
                       r"-\d+ \(from the missing-value fill -99999 of a partly missing patch\)"):
        tokenize.prepare_sample(layout, {"sentinel1": x}, 4, None, ms, np.float16, "s.h5")
    x[:] = MISSING_VALUE  # entirely missing: ABSENT, never packed, no error
    ms = masking.mask_sample(layout, {"sentinel1": x}, 4, masking.NoMasking(),
                             np.random.default_rng(0))
    tokenize.prepare_sample(layout, {"sentinel1": x}, 4, None, ms, np.float16, "s.h5")


def test_synthetic_dataset_of_an_older_generator_is_regenerated(tmp_path):
    spec = synthetic.SyntheticSpec(2, ("sentinel2_l2a", "srtm"), seed=0, tile_size=16)
    d = synthetic.make_dataset(tmp_path, spec, workers=1)
    settings = d / synthetic.SETTINGS_JSON
    written = json.loads(settings.read_text())
    assert written.pop("generator_version") == synthetic.GENERATOR_VERSION
    settings.write_text(json.dumps(written))  # as version 1 wrote it
    (d / "sample_0.h5").write_bytes(b"old")
    assert synthetic.make_dataset(tmp_path, spec, workers=1) == d
    assert json.loads(settings.read_text())["generator_version"] == synthetic.GENERATOR_VERSION
    assert len(h5.H5Source(d, ["sentinel2_l2a", "srtm"]).read(0).arrays) == 2
    settings.write_text(json.dumps({**written, "seed": 1}))  # someone else's settings
    with pytest.raises(FileExistsError, match="not written by make_dataset with these settings"):
        synthetic.make_dataset(tmp_path, spec, workers=1)


_WORKERS_SCRIPT = """
import sys
import numpy as np
from spacenit_jax.data import pipeline
from spacenit_jax.model.config import make_config

if __name__ == "__main__":
    cfg = pipeline.PipelineConfig(path=sys.argv[1], rows=1, seed=3, num_workers=2,
                                  process_index=0, process_count=1)
    pl = pipeline.make_pipeline(cfg, make_config("design_card", "nano").layout)
    it = iter(pl.dataset)  # as the training loop does; never closed
    for b in range(3):
        last = next(it)
        want = pl.batch(b)
        for k in last["view_a"].patches:  # released shared memory still holds the data
            np.testing.assert_array_equal(last["view_a"].patches[k], want["view_a"].patches[k])
    print("ok", flush=True)
    # exits holding `it` and `last` at module level: the worst case for clean-up
"""


def test_two_worker_run_leaks_no_shared_memory(base_dir, tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "two_workers.py"
    script.write_text(_WORKERS_SCRIPT)
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(script), str(base_dir)], capture_output=True,
                         text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
    assert "leaked shared_memory" not in out.stderr, out.stderr[-3000:]
    assert "Exception ignored" not in out.stderr, out.stderr[-3000:]
