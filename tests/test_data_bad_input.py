"""Bad input to the data pipeline: unreadable, corrupt or out-of-range samples, pixel dtypes
that cannot hold the data, and clean shutdown of worker processes."""

import pathlib
import shutil

import h5py
import numpy as np
import pytest

from spacenit_jax.data import h5, pipeline, synthetic
from spacenit_jax.model.config import make_config

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
