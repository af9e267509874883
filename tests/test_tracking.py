"""metrics.jsonl after a crash, and a W&B failure that must not stop training."""

import json
import logging

from spacenit_jax.train import tracking


def steps(workdir):
    return [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_resume_drops_repeated_steps_and_torn_lines(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 8)]
    lines.insert(5, json.dumps({"step": 5, "eval/acc": 0.5}))
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 8, "lo')
    t = tracking.Tracker(tmp_path, total_steps=10, wandb=tracking.WandbConfig(mode="disabled"), progress=False,
                         start_step=5)
    t.log(6, {"loss": 0.1})
    t.close()
    assert steps(tmp_path) == [1, 2, 3, 4, 5, 5, 6]
    # a fresh start (no checkpoint yet) keeps nothing of an earlier attempt
    tracking.Tracker(tmp_path, total_steps=10, wandb=tracking.WandbConfig(mode="disabled"), progress=False).close()
    assert steps(tmp_path) == []


def test_wandb_failure_warns_and_keeps_logging(tmp_path, monkeypatch, caplog):
    import wandb

    def broken(**kwargs):
        raise RuntimeError("run ID abc is in use")

    monkeypatch.setattr(wandb, "init", broken)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with caplog.at_level(logging.WARNING):
        t = tracking.Tracker(tmp_path, total_steps=3, wandb=tracking.WandbConfig(mode="offline"), progress=False)
    assert "could not start (RuntimeError: run ID abc is in use)" in caplog.text
    t.log(1, {"loss": 2.0})
    t.close()
    assert steps(tmp_path) == [1]
