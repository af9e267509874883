"""The Grain pipeline: determinism, resume, fixed shapes, sharding, bad samples."""

import pathlib
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from spacenit_jax.batch import PackedView
from spacenit_jax.data import pipeline, synthetic
from spacenit_jax.model.config import make_config

NANO = make_config("design_card", "nano").layout


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    spec = synthetic.SyntheticSpec(24, seed=5, tile_size=32, missing_sensor_prob=0.15)
    return synthetic.make_dataset(tmp_path_factory.mktemp("pipe"), spec, workers=1)


def _cfg(path, **kw):
    base = dict(path=str(path), rows=2, seed=7, process_index=0, process_count=1)
    base.update(kw)
    return pipeline.PipelineConfig(**base)


def _equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_element_contents(data_dir):
    pl = pipeline.make_pipeline(_cfg(data_dir), NANO)
    assert pl.allowed[8] == (1, 2, 3, 4) and pl.allowed[1] == tuple(range(1, 13))
    e = pl.batch(0)
    assert isinstance(e["view_a"], PackedView) and isinstance(e["view_b"], PackedView)
    for k in ("patch_size", "hw_p", "num_samples"):
        assert e[k].shape == () and e[k].dtype == np.int32
    hw = int(e["hw_p"])
    assert int(e["num_samples"]) == pl.plan.k[hw] * 2
    assert int(e["view_a"].sample_valid.sum()) == int(e["num_samples"])
    assert not _equal(e["view_a"], e["view_b"])  # independent augmentation and masks
    m = e["metrics"]
    assert int(m["skipped"]) == 0 and 0 <= float(m["view_a/pad_tokens"]) < 1
    one = pipeline.make_pipeline(_cfg(data_dir, num_views=1, masking="none"), NANO).batch(0)
    assert "view_b" not in one and one["view_a"].decoder.src.shape == (2, 1)
    # other crop / augmentation / dtype paths keep the same shapes
    other = pipeline.make_pipeline(_cfg(data_dir, patchwise_crop=True, dtype="bfloat16", augmentation={
        "type": "compose", "transforms": ["dihedral", "cutmix", {"type": "sensor_dropout"}]}), NANO)
    o = other.batch(0)
    assert jax.tree_util.tree_map(np.shape, o["view_a"]) == jax.tree_util.tree_map(np.shape, e["view_a"])
    assert o["view_a"].patches["sentinel1"].dtype.name == "bfloat16"


def test_same_seed_same_batches_and_fixed_shapes(data_dir):
    a = pipeline.make_pipeline(_cfg(data_dir, rows=1), NANO)
    b = pipeline.make_pipeline(_cfg(data_dir, rows=1), NANO)
    c = pipeline.make_pipeline(_cfg(data_dir, rows=1, seed=8), NANO)
    seen = set()
    ref = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), a.batch(0))
    for i in range(24):
        x = a.batch(i)
        seen.add((int(x["patch_size"]), int(x["hw_p"])))
        assert jax.tree_util.tree_map(lambda y: (y.shape, y.dtype), x) == ref
        if i < 3:
            assert _equal(x, b.batch(i))
    assert len(seen) >= 12 and len({hw for _, hw in seen}) >= 6
    assert not _equal(a.batch(0)["view_a"], c.batch(0)["view_a"])
    # the iterator yields exactly the directly computed batches
    it = iter(a)
    for i, x in enumerate(_take(it, 2)):
        assert _equal(x, a.batch(i))


def test_resume_mid_epoch_no_workers(data_dir):
    pl = pipeline.make_pipeline(_cfg(data_dir), NANO)
    it = iter(pl)
    _take(it, 2)
    state = it.get_state()
    after = _take(it, 2)
    it2 = iter(pipeline.make_pipeline(_cfg(data_dir), NANO))
    it2.set_state(state)
    assert all(_equal(x, y) for x, y in zip(after, _take(it2, 2), strict=True))
    # resuming from the batch index alone gives the same batches
    it3 = iter(pipeline.make_pipeline(_cfg(data_dir), NANO, start_batch=int(after[0]["batch_index"])))
    assert all(_equal(x, y) for x, y in zip(after, _take(it3, 2), strict=True))


def test_multiprocess_workers_and_resume(data_dir):
    cfg = _cfg(data_dir, num_workers=1, rows=1)
    pl = pipeline.make_pipeline(cfg, NANO)
    it = iter(pl)
    first = _take(it, 2)
    state = it.get_state()
    nxt = _take(it, 1)[0]
    it.close()
    assert _equal(first[1], pl.batch(1)) and _equal(nxt, pl.batch(2))
    it2 = iter(pipeline.make_pipeline(cfg, NANO))
    it2.set_state(state)
    again = next(it2)
    it2.close()
    assert _equal(again, nxt)
    del first, nxt, again


def test_sharding_and_epochs(data_dir):
    pls = [pipeline.make_pipeline(_cfg(data_dir, process_index=i, process_count=2), NANO)
           for i in range(2)]
    n = len(pls[0].source)
    for b in range(6):
        p0, hw0, pos0 = pls[0].builder.positions(b)
        p1, hw1, pos1 = pls[1].builder.positions(b)
        assert (p0, hw0) == (p1, hw1)
        start = pls[0].builder.schedule.offset(b)
        both = np.sort(np.concatenate([pos0, pos1]))
        np.testing.assert_array_equal(both, start + np.arange(pls[0].samples_per_global_batch(hw0)))
        if b:
            assert start == pls[0].builder.schedule.offset(b - 1) + pls[0].samples_per_global_batch(
                int(pls[0].builder.schedule.draw(b - 1)[1][0]))
    bld = pls[0].builder
    e0, e1 = bld.permutation(0).copy(), bld.permutation(1).copy()
    assert sorted(e0) == list(range(n)) and sorted(e1) == list(range(n)) and not np.array_equal(e0, e1)


def _corrupt_copy(data_dir, tmp_path, seed=7):
    dst = tmp_path / data_dir.parent.parent.name / data_dir.parent.name / data_dir.name
    shutil.copytree(data_dir, dst)
    pl = pipeline.make_pipeline(_cfg(dst, seed=seed), NANO)
    bad = int(pl.builder.permutation(0)[0])  # the item at record position 0
    path = pathlib.Path(pl.source.file_path(bad))
    path.write_bytes(b"\x89HDF garbage" * 50)
    return dst, path


def test_bad_sample_policies(data_dir, tmp_path):
    dst, path = _corrupt_copy(data_dir, tmp_path)
    with pytest.raises(pipeline.BadSampleError, match=rf"record position 0 .*{path.name}"):
        pipeline.make_pipeline(_cfg(dst), NANO).batch(0)
    pl = pipeline.make_pipeline(_cfg(dst, bad_sample_policy="skip"), NANO)
    e = pl.batch(0)
    assert int(e["metrics"]["skipped"]) == 1
    assert int(e["num_samples"]) == pl.plan.k[int(e["hw_p"])] * 2
    assert _equal(e, pl.batch(0))  # the replacement is deterministic
    assert int(pl.batch(1)["metrics"]["skipped"]) == 0


def test_config_dict_and_errors(data_dir):
    cd = ml_collections.ConfigDict({"path": str(data_dir), "rows": 3, "seed": 1,
                                    "masking": {"type": "random", "encode_ratio": 0.5},
                                    "process_index": 0, "process_count": 1})
    cfg = pipeline.PipelineConfig.from_config_dict(cd)
    assert cfg.rows == 3 and cfg.masking == {"type": "random", "encode_ratio": 0.5}
    assert pipeline.make_pipeline(cfg, NANO).plan.rows == 3
    with pytest.raises(ValueError, match="unknown data config keys"):
        pipeline.PipelineConfig.from_config_dict({"path": "x", "batch_size": 3})
    with pytest.raises(ValueError, match="bad_sample_policy"):
        pipeline.PipelineConfig("x", bad_sample_policy="ignore")
    other = make_config("design_card", "nano", sensor_labels=("sentinel2_l2a",)).layout
    with pytest.raises(ValueError, match="differ from the model layout"):
        pipeline.make_pipeline(_cfg(data_dir, sensor_labels=("sentinel1",)), other)
    with pytest.raises(ValueError, match="none of the crop sizes"):
        pipeline.make_pipeline(_cfg(data_dir, patch_sizes=(40,)), NANO)
