"""Pretraining faults: data without tokens, a damaged newest checkpoint, other worker
counts on resume, a longer run on resume; and what a run reports."""

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from test_train import REPO, losses, smoke

from spacenit_jax import checkpoint, sensors
from spacenit_jax.data import h5, synthetic
from spacenit_jax.train import loop


def _records(workdir):
    return [json.loads(x) for x in (pathlib.Path(workdir) / "metrics.jsonl").read_text()
            .splitlines()]


def test_data_without_any_token_stops_the_run_with_a_clear_error(tmp_path):
    """Samples whose only sensor holds no data (every value missing) give batches without
    a single real token: counted, warned about, and the run stops (rc 1, one line)."""
    spec = synthetic.SyntheticSpec(8, ("sentinel1",), 0, 32)
    directory = spec.directory(tmp_path / "data")
    directory.mkdir(parents=True)
    latlons = []
    for i in range(spec.num_samples):
        s = synthetic.make_sample(spec, i)
        arrays = {k: np.full_like(v, sensors.MISSING_VALUE) for k, v in s.arrays.items()}
        h5.write_sample(directory / f"sample_{i}.h5", h5.H5Sample(s.timestamps, s.latlon,
                                                                  arrays, s.masks),
                        spec.settings)
        latlons.append(s.latlon)
    h5.write_metadata(directory, spec.sensor_labels, [["sentinel1"]] * spec.num_samples,
                      np.array(latlons), spec.settings)
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.pretrain", "--config", "configs/nano.py:smoke",
           "--workdir", str(workdir), f"--config.data.path={directory}",
           "--config.model.sensor_labels=('sentinel1',)",
           "--config.data.masking.decode_only_sensors=()", "--config.total_steps=20",
           "--config.max_tokenless_steps=2", "--config.eval.tasks=()"]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 1, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "consecutive batches had no real token" in errors[0]
    assert "limit max_tokenless_steps=2" in errors[0] and str(directory) in errors[0]
    assert "the batch has no real token" in out.stderr  # the per-step warning
    assert out.stdout.strip() == ""  # no "completed" summary
    records = [r for r in _records(workdir) if "loss" in r]
    assert records and all(r["tokens/real"] == 0 and r["skipped"] == 1 for r in records)
    assert [r["data/tokenless_batches"] for r in records] == list(range(1, len(records) + 1))
    assert checkpoint.latest_step(workdir) is not None  # stopped with a checkpoint


def test_resume_with_another_worker_count_continues_the_batch_sequence(tmp_path, smoke_dataset):
    """Checkpointed with 0 data workers and resumed with 2, and the other way round: the
    same batches, so the same losses as an uninterrupted run."""
    dataset, total = smoke_dataset, 4
    straight = loop.Trainer.create(smoke(dataset, total_steps=total), tmp_path / "a").train()
    assert straight["status"] == "completed"
    a = losses(tmp_path / "a")
    for before, after in ((0, 2), (2, 0)):
        workdir = tmp_path / f"{before}-{after}"
        first = loop.Trainer.create(smoke(dataset, total_steps=total, stop_at_step=2,
                                          **{"data.num_workers": before}), workdir).train()
        assert first["status"] == "preempted" and first["final_step"] == 2
        resumed = loop.Trainer.create(smoke(dataset, total_steps=total,
                                            **{"data.num_workers": after}), workdir).train()
        assert resumed["start_step"] == 2 and resumed["final_step"] == total
        assert resumed["step_compilations"] == 1  # the README's figure, also on resume
        b = losses(workdir)
        assert [b[s] for s in range(1, total + 1)] == [a[s] for s in range(1, total + 1)]


def test_resume_past_a_damaged_checkpoint_with_a_longer_run(tmp_path, smoke_dataset, caplog):
    dataset = smoke_dataset
    """The newest checkpoint lost its train/_METADATA: the run resumes from the one before
    (named, moved aside, never deleted), warns that the longer run stretches the learning-rate
    schedule, and ends with a summary naming the workdir, the final loss and the wall time."""
    c = smoke(dataset, total_steps=4, **{"checkpoint.every": 2})
    first = loop.Trainer.create(c, tmp_path).train()
    assert checkpoint.latest_step(tmp_path) == 4
    lr_before = {r["step"]: r["lr"] for r in _records(tmp_path) if "lr" in r}
    (checkpoint.checkpoint_dir(tmp_path) / "4" / "train" / "_METADATA").unlink()
    with caplog.at_level(logging.WARNING):
        summary = loop.Trainer.create(smoke(dataset, total_steps=6, **{"checkpoint.every": 2}),
                                      tmp_path).train()
    assert summary["start_step"] == 2 and summary["final_step"] == 6
    assert "checkpoint step 4 in" in caplog.text and "is damaged and is not used" in caplog.text
    assert (tmp_path / checkpoint.DAMAGED_DIR / "4" / "params").is_dir()
    assert "total_steps changed from 4 (checkpoint) to 6" in caplog.text
    assert "--config.optimizer.schedule_steps=4" in caplog.text
    lr_after = {r["step"]: r["lr"] for r in _records(tmp_path) if "lr" in r}
    assert lr_after[3] != lr_before[3]  # what the warning is about
    assert lr_after[2] == lr_before[2]  # steps before the resume are kept as they were
    assert summary["workdir"] == str(tmp_path) and summary["wall_time_s"] > 0
    assert np.isfinite(summary["final_loss"]) and summary["final_loss"] == losses(tmp_path)[6]
    assert summary["mfu"].startswith("n/a (no known peak FLOP/s for cpu")  # never an H100's
    assert first["step_compilations"] == summary["step_compilations"] == 1
    assert not any("throughput/mfu" in r for r in _records(tmp_path))
    # step 1's ETA: its time excludes the compilation, reported on its own
    step1 = next(r for r in _records(tmp_path) if r["step"] == 1 and "loss" in r)
    assert step1["time/compile_s"] > step1["time/step_s"]


def test_schedule_steps_keeps_the_schedule_of_a_shorter_run(tmp_path, smoke_dataset):
    dataset = smoke_dataset
    from spacenit_jax.train import config as run_config
    from spacenit_jax.train import step

    short = smoke(dataset, total_steps=4)
    longer = smoke(dataset, total_steps=8, **{"optimizer.schedule_steps": 4})
    _, s4 = step.make_optimizer(run_config.optimizer_config(short), 4)
    _, s8 = step.make_optimizer(run_config.optimizer_config(longer), 8)
    assert [float(s4(i)) for i in range(8)] == [float(s8(i)) for i in range(8)]
    shutil.rmtree(tmp_path, ignore_errors=True)
