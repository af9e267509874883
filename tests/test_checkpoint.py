"""The checkpoint store: one Orbax manager, and resume past a damaged newest checkpoint."""

import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spacenit_jax import checkpoint


def _params(step):
    return {"w": np.full((4, 4), float(step), np.float32), "b": np.arange(3, dtype=np.float32)}


def _abstract():
    return {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32),
            "b": jax.ShapeDtypeStruct((3,), jnp.float32)}


def _write(workdir, steps=(10, 20)):
    policy = checkpoint.CheckpointPolicy(async_save=False)
    with checkpoint.CheckpointStore(workdir, policy) as store:
        for s in steps:
            store.save(s, params=_params(s), train={"step": np.int32(s)},
                       config={"total_steps": 30}, force=True)


def _delete_a_params_file(d: pathlib.Path):
    # the array data of the merged OCDBT store (not the per-process copies)
    files = sorted(p for p in (d / "20" / "params" / "d").iterdir() if p.is_file())
    files[0].unlink()


DAMAGE = {
    "a params file deleted": _delete_a_params_file,
    "train/_METADATA deleted": lambda d: (d / "20" / "train" / "_METADATA").unlink(),
    "an empty newer step directory": lambda d: (d / "30").mkdir(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path, caplog, damage):
    _write(tmp_path)
    d = checkpoint.checkpoint_dir(tmp_path)
    DAMAGE[damage](d)
    bad = 30 if damage.startswith("an empty") else 20
    good = 20 if bad == 30 else 10
    store = checkpoint.CheckpointStore(tmp_path, checkpoint.CheckpointPolicy(async_save=False))

    def restore(step):
        out = store.restore(step, params=_abstract(), train=None, config=True)
        np.testing.assert_array_equal(out["params"]["w"], _params(step)["w"])
        return out

    with caplog.at_level(logging.WARNING):
        step, out = store.restore_latest(restore)
    assert step == good and int(out["train"]["step"]) == good
    assert f"checkpoint step {bad} in {d} is damaged and is not used" in caplog.text
    assert f"resuming from checkpoint step {good} (newest intact); damaged: {bad}" in caplog.text
    # never deleted: moved beside the checkpoints, where Orbax does not list it
    moved = tmp_path / checkpoint.DAMAGED_DIR / str(bad)
    assert moved.is_dir() and not (d / str(bad)).exists()
    assert store.steps() == sorted({10, 20} - {bad})
    # the run can write that step again
    store.save(bad, params=_params(bad), train={"step": np.int32(bad)}, config={}, force=True)
    store.close()
    assert checkpoint.latest_step(tmp_path) == bad


def test_no_restorable_checkpoint_is_a_clear_error(tmp_path):
    _write(tmp_path, steps=(10,))
    (checkpoint.checkpoint_dir(tmp_path) / "10" / "params" / "_METADATA").unlink()
    with checkpoint.CheckpointStore(tmp_path) as store:
        with pytest.raises(checkpoint.DamagedCheckpointError,
                           match="no checkpoint in .* can be restored: step 10: "
                                 "FileNotFoundError"):
            store.restore_latest(lambda s: store.restore(s, params=_abstract()))
    assert (checkpoint.checkpoint_dir(tmp_path) / "10").is_dir()  # left in place
    with checkpoint.CheckpointStore(tmp_path / "fresh") as store:
        assert store.restore_latest(lambda s: 1 / 0) is None  # nothing to restore


def test_store_reads_through_one_manager(tmp_path, monkeypatch):
    _write(tmp_path)
    opened = []
    real = checkpoint.item_manager
    monkeypatch.setattr(checkpoint, "item_manager",
                        lambda *a, **k: opened.append(a) or real(*a, **k))
    params, step = checkpoint.restore_params(tmp_path)
    assert step == 20 and len(opened) == 1
    np.testing.assert_array_equal(params["w"], _params(20)["w"])
    assert checkpoint.read_config(tmp_path, 10) == {"total_steps": 30} and len(opened) == 2
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 5 .* available steps: "
                                                r"\[10, 20\]"):
        checkpoint.read_config(tmp_path, 5)
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        checkpoint.read_config(tmp_path / "nothing")


def test_manager_for_other_layouts(tmp_path):
    """The bare manager other modules (fine-tuning) use: named pytree / json items."""
    import orbax.checkpoint as ocp

    mngr = checkpoint.item_manager(tmp_path / "ft", ("state", "meta"), keep=1)
    for epoch in (1, 2):
        mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(_params(epoch)),
                                                 meta=ocp.args.JsonSave({"epoch": epoch})))
    mngr.wait_until_finished()
    assert mngr.all_steps() == [2]
    out = mngr.restore(2, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    assert out["meta"] == {"epoch": 2}
    mngr.close()
