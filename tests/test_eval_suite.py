"""Suite runs on the real samples (tests/data/geobench, tests/data/geobench2) with a tiny
random model: every shipped task reads, maps its bands to the documented sensors, and a kNN,
a linear probe, a segmentation probe and a regression probe run end to end; one table;
absent tasks listed as missing; a failing task is one line and does not stop the others."""

import json

import numpy as np
import pytest
from eval_tiny_model import tiny_model

from launch import evaluate
from spacenit_jax.eval import suite, tasks

S2_S1 = ("sentinel2_l2a", "sentinel1")


def quick_settings(**fields):
    """configs/eval/suite.py with a one-value probe grid and few iterations (CPU tests)."""
    settings = tasks.get_config_from_file(tasks.resolve_config_path("suite"))
    settings.probe.cs, settings.probe.max_iter, settings.n_bootstrap = (1.0,), 25, 50
    for key, value in fields.items():
        settings[key] = value
    return settings


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A parameters-only checkpoint of the tiny sentinel2_l2a model."""
    from eval_tiny_model import tiny_workdir

    return tiny_workdir(tmp_path_factory.mktemp("pretrain"), step=3)


def test_geobench_suite_from_the_command_line(workdir, data_dir, tmp_path, capsys):
    out = tmp_path / "geobench.json"
    rc = evaluate.main(["--checkpoint", str(workdir), "--suite", "geobench", "--data-root",
                        str(data_dir / "geobench"), "--config.dataset.partition=smoke",
                        "--config.patch_size=8", "--config.probe.cs=(1.0,)",
                        "--config.probe.max_iter=25", "--config.n_bootstrap=50",
                        "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    table = captured.out.splitlines()
    assert table[1].split()[:6] == ["task", "kind", "mode", "split", "metric", "score"]
    rows = {line.split()[0]: line.split() for line in table[2:5]}
    assert rows["m-eurosat"][1:5] == ["classification", "knn", "test", "accuracy"]
    assert rows["m-brick-kiln"][1:5] == ["classification", "knn", "test", "accuracy"]
    assert rows["m-SA-crop-type"][1:5] == ["segmentation", "linear_probe", "test", "miou"]
    missing = [line for line in table if line.startswith("missing (9):")]
    assert missing and "m-bigearthnet" in missing[0] and "m-NeonTree" in missing[0]
    assert any("read from the pre-release folder" in line for line in table)
    assert any("8-bit scaled" in line for line in table)
    result = json.loads(out.read_text())
    assert {t["task"]: t["status"] for t in result["tasks"]} == {
        "m-eurosat": "ok", "m-brick-kiln": "ok", "m-SA-crop-type": "ok"}
    assert len(result["missing"]) == 9 and result["step"] == 3
    for t in result["tasks"]:
        assert t["ci_lower"] - 1e-6 <= t["score"] <= t["ci_upper"] + 1e-6, t["task"]
        assert t["recipe"] in ("knn", "lbfgs")
    seg = next(t for t in result["tasks"] if t["task"] == "m-SA-crop-type")
    assert seg["rows"][0]["hyperparameters"]["patch_size"] == 8


def test_geobench2_suite_runs_every_probe_kind(data_dir):
    """benv2 and treesatai: kNN (multilabel); pastis: segmentation probe on a 12-month time
    series of two sensors; biomassters: the ridge regression probe, RMSE in Mg/ha."""
    model = tiny_model(sensors=S2_S1)
    result = suite.run_suite(model, "geobench2", data_dir / "geobench2",
                             settings=quick_settings())
    tasks_ = {t["task"]: t for t in result["tasks"]}
    assert result["missing"] == [] and set(tasks_) == {"benv2", "pastis", "treesatai",
                                                       "biomassters"}
    assert all(t["status"] == "ok" for t in tasks_.values()), tasks_
    assert (tasks_["benv2"]["metric"], tasks_["benv2"]["recipe"]) == ("micro_f1", "knn")
    assert (tasks_["treesatai"]["metric"], tasks_["treesatai"]["kind"]) == ("micro_f1",
                                                                            "multilabel")
    assert (tasks_["pastis"]["metric"], tasks_["pastis"]["recipe"]) == ("miou", "lbfgs")
    bio = tasks_["biomassters"]
    assert (bio["metric"], bio["recipe"], bio["kind"]) == ("rmse", "ridge", "regression")
    tol = 1e-5 * bio["score"]  # one test sample: every resample is the score itself
    assert 0 < bio["ci_lower"] - tol <= bio["score"] <= bio["ci_upper"] + tol
    assert any("not used: the cloud probability channel" in n for n in bio["notes"])
    line = next(x for x in suite.format_suite_table(result).splitlines()
                if x.startswith("biomassters"))
    assert line.split()[1:5] == ["regression", "linear_probe", "test", "rmse"]


def test_linear_probe_mode_on_the_samples_and_errors_stay_per_task(data_dir):
    """--mode linear_probe: the converged probe on classification samples; a model without
    sentinel1 fails pastis with one line, the other tasks still run; a kNN mode on a dense
    task is skipped, not an error."""
    model = tiny_model()  # sentinel2_l2a only
    result = suite.run_suite(model, "geobench2", data_dir / "geobench2", mode="linear_probe",
                             settings=quick_settings(tasks=("treesatai", "pastis")))
    tasks_ = {t["task"]: t for t in result["tasks"]}
    assert tasks_["treesatai"]["status"] == "ok" and tasks_["treesatai"]["recipe"] == "lbfgs"
    assert tasks_["pastis"]["status"] == "error"
    assert tasks_["pastis"]["error"] == ("task 'pastis' needs sensor(s) ['sentinel1']; the "
                                         "model has ['sentinel2_l2a']")
    knn = suite.run_suite(model, "geobench", data_dir / "geobench", mode="knn",
                          settings=quick_settings(tasks=("m-SA-crop-type",)))
    assert knn["tasks"][0]["status"] == "skipped"
    assert "kNN does not apply" in suite.format_suite_table(knn)
    probe = suite.run_suite(model, "geobench", data_dir / "geobench", mode="linear_probe",
                            settings=quick_settings(tasks=("m-brick-kiln",)))
    entry = probe["tasks"][0]
    assert entry["status"] == "ok" and entry["recipe"] == "lbfgs"
    assert entry["num_samples"] == {"train": 5, "valid": 5, "test": 5}


def test_missing_tasks_are_listed_not_errors(workdir, tmp_path, capsys):
    (tmp_path / "classification_v1.0").mkdir()
    assert evaluate.main(["--checkpoint", str(workdir), "--suite", "geobench2",
                          "--data-root", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "missing (4): benv2, pastis, treesatai, biomassters" in out
    assert json.loads((tmp_path / "r.json").read_text())["tasks"] == []
    assert evaluate.main(["--checkpoint", str(workdir), "--suite", "geobench",
                          "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_every_task_has_a_config_that_loads():
    for name, members in suite.SUITES.items():
        for task in members:
            cfg = tasks.load_config_file(suite.config_name(task))
            assert cfg.dataset.name == task and cfg.dataset.kind == name
            kind = tasks.task_info(cfg)[1]
            assert (cfg.mode == "linear_probe") == (kind in tasks.DENSE), task
    assert np.all([tasks.load_config_file("treesatai:aerial").patch_size == 8])
