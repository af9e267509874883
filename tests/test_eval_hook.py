"""In-loop evaluation: schedule, metric keys, a missing dataset reported once and skipped."""

import dataclasses
import logging
import pathlib

import pytest
from eval_tiny_model import tiny_model

from spacenit_jax.eval import hook, tasks

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "eval"


def small_task(name="synthetic", mode="knn", every=2, **extra):
    """configs/eval/synthetic.py:small (feature batches of 8, 4 classes, 16x16 images)."""
    overrides = {"mode": mode, "every_n_steps": every, **extra}
    task = hook.load_tasks([f"{CONFIGS}/synthetic.py:small"], overrides)[0]
    task.name = name
    return task


def test_runs_on_schedule_with_the_reference_metric_keys():
    knn_task = small_task(every=2)
    probe_task = small_task("probe", mode="linear_probe", every=4)
    evaluator = hook.InLoopEvaluator([knn_task, probe_task], run_on_test=True)
    model = tiny_model()
    assert evaluator.due(0) == [] and evaluator.due(2) == ["synthetic"]
    assert evaluator.due(4) == ["synthetic", "probe"]
    assert evaluator.maybe_evaluate(1, model) == {}
    first = evaluator.maybe_evaluate(2, model)
    assert set(first) == {"eval/synthetic/accuracy", "eval/synthetic",
                          "eval/test/synthetic/accuracy", "eval_time/synthetic"}
    assert first["eval/synthetic"] == first["eval/synthetic/accuracy"] > 0.5  # 4 classes
    assert evaluator.maybe_evaluate(3, model) == {}
    both = evaluator.maybe_evaluate(4, model)
    assert both["eval/synthetic"] == first["eval/synthetic"]  # same model, same score
    assert both["eval/probe"] == both["eval/probe/accuracy"]
    assert {"eval_time/probe", "eval/test/probe/accuracy"} <= set(both)
    assert all(isinstance(v, float) for v in both.values())


def test_missing_dataset_is_reported_once_and_skipped(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("GEOBENCH_DIR", raising=False)
    eurosat = tasks.load_config_file(f"{CONFIGS}/m_eurosat.py")
    elsewhere = tasks.override(tasks.load_config_file(f"{CONFIGS}/m_eurosat.py"),
                               {"dataset.root": str(tmp_path)})
    elsewhere.name = "m-eurosat-elsewhere"
    for task in (eurosat, elsewhere):
        task.every_n_steps = 1
    evaluator = hook.InLoopEvaluator([eurosat, elsewhere, small_task(every=3)])
    model = tiny_model()
    with caplog.at_level(logging.WARNING, logger="spacenit_jax.eval.hook"):
        assert evaluator.maybe_evaluate(1, model) == {}
        assert evaluator.maybe_evaluate(2, model) == {}
        out = evaluator.maybe_evaluate(3, model)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "GEOBENCH_DIR" in warnings[0] and str(tmp_path) in warnings[1]
    assert evaluator.skipped == {"m-eurosat", "m-eurosat-elsewhere"}
    assert evaluator.due(3) == ["synthetic"] and "eval/synthetic" in out


def test_from_run_config_eval_section():
    from eval_tiny_model import tiny_config
    from ml_collections import ConfigDict

    section = ConfigDict({"every": 5, "tasks": ["synthetic:small", f"{CONFIGS}/m_eurosat.py"],
                          "overrides": {"knn": {"k": 3}}})
    evaluator = hook.InLoopEvaluator.from_config(section, tiny_config())
    assert [t.name for t in evaluator.tasks] == ["synthetic", "m-eurosat"]
    assert all(t.every_n_steps == 5 and t.knn.k == 3 for t in evaluator.tasks)
    assert evaluator.due(10) == ["synthetic", "m-eurosat"] and evaluator.due(11) == []
    s1 = tiny_config().replace(layout=dataclasses.replace(tiny_config().layout,
                                                          sensor_labels=("sentinel1",)))
    with pytest.raises(ValueError, match=r"needs sensors \['sentinel2_l2a'\]"):
        hook.InLoopEvaluator.from_config(section, s1)


def test_bad_task_lists_are_refused():
    with pytest.raises(ValueError, match="fine-tuning runs offline"):
        hook.InLoopEvaluator([small_task(mode="finetune")])
    with pytest.raises(ValueError, match="unique"):
        hook.InLoopEvaluator([small_task(), small_task()])
    with pytest.raises(ValueError, match="unknown config field.*every_n_step"):
        hook.load_tasks([f"{CONFIGS}/synthetic.py"], {"every_n_step": 5})
    with pytest.raises(ValueError, match="knn.k|int"):
        hook.load_tasks([f"{CONFIGS}/synthetic.py"], {"knn.k": "three"})


def test_segmentation_task_in_the_loop():
    task = hook.load_tasks([f"{CONFIGS}/synthetic_segmentation.py:small"],
                           {"every_n_steps": 1})[0]
    out = hook.InLoopEvaluator([task]).maybe_evaluate(1, tiny_model())
    assert out["eval/synthetic_segmentation"] == out["eval/synthetic_segmentation/miou"]
    assert 0 <= out["eval/synthetic_segmentation"] <= 1
    assert "eval/synthetic_segmentation/macro_f1" in out
