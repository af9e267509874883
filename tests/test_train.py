"""Pretraining: exact resume, SIGTERM, sharding, multi-process, robustness, start-up errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import nano
from spacenit_jax import checkpoint
from spacenit_jax.eval import hook
from spacenit_jax.train import config as run_config
from spacenit_jax.train import loop, objectives, step
from spacenit_jax.train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dataset(smoke_dataset):
    return smoke_dataset


def smoke(dataset, **overrides):
    c = nano.get_config("smoke")
    c.data.path = str(dataset)
    c.eval.tasks = []  # in-loop evaluation is tested on its own below
    c.update_from_flattened_dict(overrides)
    return c


def losses(workdir):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def params_of(trainer):
    return jax.tree.map(np.asarray, state_lib.pure_params(trainer.final_state))


def sigterm_after(workdir, lines: int):
    """SIGTERM this process once the run has logged `lines` steps (like a preemption)."""

    def send():
        metrics = pathlib.Path(workdir) / "metrics.jsonl"
        while not metrics.exists() or len(metrics.read_text().splitlines()) < lines:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send, daemon=True).start()


def test_killed_and_resumed_run_equals_straight_run(tmp_path, dataset):
    """2k steps straight == SIGTERM after about k steps + resume; the loss decreases."""
    total = 16
    straight = loop.Trainer.create(smoke(dataset, total_steps=total), tmp_path / "a")
    summary = straight.train()
    assert summary["status"] == "completed" and summary["step_compilations"] == 1
    a = losses(tmp_path / "a")
    assert sorted(a) == list(range(1, total + 1))
    first, last = np.mean([a[s] for s in range(1, 5)]), np.mean([a[s] for s in range(13, 17)])
    assert last < first, (first, last)

    sigterm_after(tmp_path / "b", 3)
    summary = loop.Trainer.create(smoke(dataset, total_steps=total), tmp_path / "b").train()
    assert summary["status"] == "preempted"
    run_id = (tmp_path / "b" / "wandb_run_id.txt").read_text()
    stopped = summary["final_step"]
    assert 3 <= stopped < total
    assert (tmp_path / "b" / "checkpoints" / str(stopped) / "commit_success.txt").exists()
    resumed = loop.Trainer.create(smoke(dataset, total_steps=total), tmp_path / "b")
    summary = resumed.train()
    assert summary["start_step"] == stopped and summary["final_step"] == total
    b = losses(tmp_path / "b")
    assert [b[s] for s in range(1, total + 1)] == [a[s] for s in range(1, total + 1)]
    assert (tmp_path / "b" / "wandb_run_id.txt").read_text() == run_id  # same W&B run
    pa, pb = params_of(straight), params_of(resumed)
    assert jax.tree.structure(pa) == jax.tree.structure(pb)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(x, y)


def test_hard_kill_then_resume_recomputes_the_lost_steps_exactly(tmp_path, dataset):
    """SIGKILL (no chance to checkpoint; async checkpointing on) after step 7, then the
    same command: steps 6-7 are recomputed bit-identically from the step-5 checkpoint and
    metrics.jsonl holds every step once."""
    cmd = [sys.executable, "-m", "launch.pretrain", "--config", "configs/nano.py:smoke",
           "--workdir", str(tmp_path), f"--config.data.path={dataset}",
           "--config.total_steps=12", "--config.checkpoint.every=5",
           "--config.checkpoint.async_save=True", "--config.eval.tasks=()"]
    metrics = tmp_path / "metrics.jsonl"
    # a standalone launch: not attached to this test process's W&B service
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    log = tmp_path / "first.log"
    with open(log, "wb") as fh:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        # kill once step 7 is logged and the step-5 checkpoint is committed (Orbax renames
        # its temporary folder to "5"; asynchronous, so on a loaded machine that may happen
        # a few steps after step 5)
        while (not metrics.exists() or metrics.read_text().count('"loss"') < 8
               or not (tmp_path / "checkpoints" / "5").is_dir()):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        proc.kill()
        proc.wait()
    text = metrics.read_text()  # a torn last line is possible
    before = {r["step"]: r["loss"] for r in map(json.loads, text[:text.rindex("\n")].splitlines())
              if "loss" in r}
    latest = checkpoint.latest_step(tmp_path)
    assert latest == 5 and max(before) >= 7
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["start_step"] == 5
    assert "could not start" not in out.stderr  # the same W&B run continues
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    after = losses(tmp_path)
    for s in range(6, max(before) + 1):
        assert after[s] == before[s], s


def test_stop_at_step_checkpoints_like_a_preemption(tmp_path, dataset):
    summary = loop.Trainer.create(smoke(dataset, total_steps=16, stop_at_step=2), tmp_path).train()
    assert summary["status"] == "preempted" and summary["final_step"] == 2
    assert checkpoint.latest_step(tmp_path) == 2


def test_sharded_step_matches_single_device(tmp_path, dataset):
    c = smoke(dataset, **{"data.rows": 8, "mesh.data": 4, "mesh.fsdp": 2})
    tr = loop.Trainer.create(c, tmp_path)
    host = next(iter(tr.pipeline.dataset))
    views = {k: v for k, v in host.items() if k.startswith("view_")}
    state = tr.init_state()
    assert len(state.params["encoder"]["norm"]["scale"].get_value().sharding.device_set) == 8
    batch = loop.global_batch(tr.mesh, views)
    new, metrics = tr.compile(state, batch)(state, batch)

    fn = step.make_train_step(tr.graphdef, tr.model_cfg, tr.objective, tr.tx, tr.schedule)
    init = jax.jit(lambda: state_lib.init_train_state(tr.model_cfg, tr.objective, tr.tx,
                                                      seed=c.seed))
    with jax.default_device(jax.devices()[0]):
        ref, ref_metrics = jax.jit(fn)(init(), jax.tree.map(jnp.asarray, views))
    assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=1e-5)
    for x, y in zip(jax.tree.leaves(state_lib.pure_params(new)),
                    jax.tree.leaves(state_lib.pure_params(ref)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5, rtol=1e-4)


def test_two_processes_agree_with_one(tmp_path, dataset):
    """2 processes x 4 devices == 1 process x 8 devices; the launcher prints one summary and
    keeps each process's chatter in its own log file."""
    steps = 3
    # no DropPath: its draws depend on how samples are laid out in rows
    overrides = {"data.rows": 8, "model.overrides.drop_path": 0.0}
    single = loop.Trainer.create(smoke(dataset, total_steps=steps, **overrides),
                                 tmp_path / "one").train()
    assert single["final_step"] == steps
    cmd = [sys.executable, "-m", "launch.local_multiprocess", "--num_processes", "2",
           "--devices_per_process", "4", "--timeout", "900", "--",
           "--config", "configs/nano.py:smoke", "--workdir", str(tmp_path / "two"),
           f"--config.data.path={dataset}", f"--config.total_steps={steps}",
           "--config.data.rows=4", "--config.model.overrides.drop_path=0.0"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    summaries = [json.loads(x) for x in out.stdout.strip().splitlines()]
    assert len(summaries) == 1 and summaries[0]["final_step"] == steps, out.stdout
    assert "gloo" not in out.stderr.lower(), out.stderr[-2000:]
    logs = tmp_path / "two" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["process_0.log", "process_0.out",
                                                     "process_1.log", "process_1.out"]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == list(range(1, steps + 1))
    for s in range(1, steps + 1):
        assert two[s] == pytest.approx(one[s], rel=1e-5, abs=1e-6)


def test_nonfinite_updates_are_skipped_counted_and_stop_the_run(tmp_path, dataset, monkeypatch):
    real = objectives.compute_loss

    def poisoned(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        return loss * jnp.nan, metrics

    monkeypatch.setattr(objectives, "compute_loss", poisoned)
    tr = loop.Trainer.create(smoke(dataset, total_steps=50, max_nonfinite_steps=3), tmp_path)
    init = jax.tree.map(np.asarray, state_lib.pure_params(tr.init_state()))
    with pytest.raises(loop.NonFiniteLossError, match="[45] consecutive steps had a non-finite"):
        tr.train()  # stops within one step of the limit (metrics arrive one step late)
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] >= 4
    restored, _ = checkpoint.restore_params(tmp_path)
    for x, y in zip(jax.tree.leaves(init), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(x, y)  # every update was skipped


def test_startup_errors_are_clear(tmp_path, dataset):
    with pytest.raises(FileNotFoundError, match="does not exist.*config.data.path"):
        loop.Trainer.create(smoke(dataset, **{"data.path": str(tmp_path / "nope")}), tmp_path)
    with pytest.raises(ValueError, match="mesh data=3 fsdp=1 tensor=1 needs 3 devices, 8 are"):
        loop.Trainer.create(smoke(dataset, **{"mesh.data": 3}), tmp_path)
    with pytest.raises(ValueError, match="data=-1 fsdp=3 tensor=1 does not divide the 8"):
        loop.Trainer.create(smoke(dataset, **{"mesh.fsdp": 3}), tmp_path)
    with pytest.raises(ValueError, match="6 rows per step.*data x fsdp = 8"):
        loop.Trainer.create(smoke(dataset, **{"data.rows": 6}), tmp_path)
    with pytest.raises(ValueError, match="hw_p=4 patches a side exceeds the model's max_grid 3"):
        loop.Trainer.create(smoke(dataset, **{"model.overrides.max_grid": 3}), tmp_path)
    with pytest.raises(ValueError, match="timesteps, more than the model's max_timesteps 1"):
        loop.Trainer.create(smoke(dataset, **{"model.overrides.max_timesteps": 1}), tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "launch.pretrain", "--config", "configs/nano.py:smoke",
         "--workdir", str(tmp_path), "--config.total_stepz=3"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "total_stepz" in out.stderr


def test_in_loop_evaluation_runs_inside_a_smoke_run(tmp_path, dataset, monkeypatch):
    monkeypatch.delenv("GEOBENCH_DIR", raising=False)
    c = smoke(dataset, total_steps=4)
    c.eval.tasks = ["configs/eval/synthetic.py:small", "configs/eval/m_eurosat.py"]
    c.eval.every = 2
    trainer = loop.Trainer.create(c, tmp_path)
    hook.attach(trainer)
    summary = trainer.train()
    assert summary["status"] == "completed"
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in records if "eval/synthetic" in r}
    assert sorted(evals) == [2, 4]
    assert 0.0 <= evals[4]["eval/synthetic"] <= 1.0 and evals[4]["eval_time/synthetic"] > 0
    assert not any("eval/m-eurosat" in r or "eval/m_eurosat" in r for r in records)


def test_gradient_accumulation_over_microbatches_matches_one_batch(tmp_path, dataset):
    """With per-sample losses only (no in-batch negatives), 2 microbatches == 1 batch."""
    c = smoke(dataset, **{"objective.contrastive_weight": 0.0, "model.overrides.drop_path": 0.0})
    tr = loop.Trainer.create(c, tmp_path)
    host = next(iter(tr.pipeline.dataset))
    views = jax.tree.map(jnp.asarray, {k: v for k, v in host.items() if k.startswith("view_")})
    init = jax.jit(lambda: state_lib.init_train_state(tr.model_cfg, tr.objective, tr.tx, seed=0))
    results = []
    for m in (1, 2):
        fn = step.make_train_step(tr.graphdef, tr.model_cfg, tr.objective, tr.tx, tr.schedule, m)
        results.append(jax.jit(fn)(init(), views))
    (s1, m1), (s2, m2) = results
    assert float(m2["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)
    assert float(m2["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-4)
    for x, y in zip(jax.tree.leaves(state_lib.pure_params(s1)),
                    jax.tree.leaves(state_lib.pure_params(s2)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=1e-4)


def test_parameters_initialise_from_another_checkpoint(tmp_path, dataset):
    c = smoke(dataset)
    source = loop.Trainer.create(c, tmp_path / "src")
    state = source.init_state()
    pure = jax.tree.map(lambda x: np.asarray(x) + 1.0, state_lib.pure_params(state))
    del pure["target_encoder"]  # an encoder-only import: the target starts as its copy
    checkpoint.write_params_checkpoint(tmp_path / "import", pure, run_config.resolved(c))
    c.init_from = str(tmp_path / "import")
    got = state_lib.pure_params(loop.Trainer.create(c, tmp_path / "run").init_state())
    for name in ("encoder", "decoder", "online_proj"):
        for x, y in zip(jax.tree.leaves(pure[name]), jax.tree.leaves(got[name]), strict=True):
            np.testing.assert_array_equal(x, np.asarray(y))
    for x, y in zip(jax.tree.leaves(pure["encoder"]), jax.tree.leaves(got["target_encoder"]),
                    strict=True):
        np.testing.assert_array_equal(x, np.asarray(y))
