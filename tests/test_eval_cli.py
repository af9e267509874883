"""launch.evaluate in precomputed-embeddings mode, end to end."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from launch import evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]
CENTRES = np.random.default_rng(100).normal(size=(3, 12)) * 2


def write_npz(path, n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    np.savez(path, features=(CENTRES[y] + 0.5 * rng.normal(size=(n, 12))).astype(np.float32),
             labels=y)
    return str(path)


@pytest.fixture
def npz(tmp_path):
    return write_npz(tmp_path / "train.npz", 120, 0), write_npz(tmp_path / "test.npz", 60, 1)


def test_knn_mode_as_a_module_subprocess(npz, tmp_path):
    out = tmp_path / "res.json"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.evaluate", "--features", npz[0], "--eval-features", npz[1],
         "--mode", "knn", "--k", "5", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["accuracy"] == 1.0 and result["k"] == 5 and result["tau"] == 0.07
    assert json.loads(out.read_text()) == result


def test_linear_probe_mode_selects_on_a_carved_validation_split(npz, capsys):
    assert evaluate.main(["--features", npz[0], "--eval-features", npz[1], "--mode",
                          "linear_probe", "--recipe", "reference_adamw", "--lrs=1e-3,1e-1",
                          "--epochs", "6", "--batch-size", "16", "--n-bootstrap", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == 1.0 and result["recipe"] == "reference_adamw"
    assert result["lr"] in (pytest.approx(1e-3), pytest.approx(1e-1))
    assert set(result["val_accuracy_per_lr"]) == {"0.001", "0.1"}
    assert "24 train rows held out" in result["validation"]
    assert result["bootstrap_ci_lower"] <= result["accuracy"] <= result["bootstrap_ci_upper"]
    assert evaluate.main(["--features", npz[0], "--eval-features", npz[1], "--mode",
                          "linear_probe", "--cs=0.1,1"]) == 0  # the default recipe
    result = json.loads(capsys.readouterr().out)
    assert result["recipe"] == "lbfgs" and result["C"] in (0.1, 1.0)
    assert result["accuracy"] == 1.0 and result["iterations"] < 1000
    assert set(result["val_accuracy_per_C"]) == {"0.1", "1"}
    assert evaluate.main(["--features", npz[0], "--eval-features", npz[1], "--mode",
                          "linear_probe", "--recipe=lbfgs", "--lrs=0.1"]) == 2
    assert "--lrs does not apply to recipe 'lbfgs'" in capsys.readouterr().err


def test_carved_split_is_deterministic_and_disjoint():
    x = np.arange(50, dtype=np.float32)[:, None]
    y = np.arange(50)
    a = evaluate.carve_validation(x, y, 0.2, seed=3)
    b = evaluate.carve_validation(x, y, 0.2, seed=3)
    np.testing.assert_array_equal(a[3], b[3])
    assert len(a[3]) == 10 and not set(a[1]) & set(a[3])


def test_errors(npz, tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(tmp_path / "none"), "--config",
                          str(REPO / "configs/eval/m_eurosat.py")]) == 2
    assert "none does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, feats=np.zeros((3, 2)))
    assert evaluate.main(["--features", str(bad), "--eval-features", npz[1]]) == 2
    assert "'features'" in capsys.readouterr().err
    assert evaluate.main([]) == 2
    assert "give --features" in capsys.readouterr().err
    assert evaluate.main(["--features", npz[0], "--eval-features", npz[1], "--lrs", "1e-3",
                          "1e-1"]) == 2
    assert "comma-separated" in capsys.readouterr().err
    assert evaluate.main(["--bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "Unknown command line flag 'bogus'" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- --checkpoint


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A parameters-only checkpoint of the tiny test model at step 7."""
    from eval_tiny_model import tiny_workdir

    return tiny_workdir(tmp_path_factory.mktemp("pretrain"), step=7)


SMALL = str(REPO / "configs/eval/synthetic.py:small")


def test_checkpoint_mode_knn_and_linear_probe(workdir, tmp_path, capsys):
    out = tmp_path / "knn.json"
    assert evaluate.main(["--checkpoint", str(workdir), "--config", SMALL, "--out", str(out),
                          "--config.knn.k", "3"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["task", "mode", "split", "metric", "value",
                                             "hyperparameters"]
    assert "synthetic  knn   valid  accuracy *" in table and "k=3" in table
    result = json.loads(out.read_text())
    assert result["step"] == 7 and result["model_kind"] == "latent_predictor"
    assert result["num_samples"] == {"train": 64, "valid": 32, "test": 32}
    assert result["config"]["knn"]["k"] == 3 and result["config"]["patch_size"] == 4
    rows = {(r["split"], r["metric"]): r for r in result["results"]}
    assert set(rows) == {("valid", "accuracy"), ("test", "accuracy")}
    assert rows[("valid", "accuracy")]["primary"] and rows[("test", "accuracy")]["value"] > 0.5
    assert evaluate.main(["--checkpoint", str(workdir), "--config", SMALL, "--step", "7",
                          "--mode", "linear_probe", "--config.run_on_test=false"]) == 0
    table = capsys.readouterr().out
    assert "linear_probe  valid  accuracy *" in table and "test" not in table


def test_checkpoint_mode_finetune_resumes_from_its_directory(workdir, tmp_path, capsys):
    out = tmp_path / "ft.json"
    args = ["--checkpoint", str(workdir), "--config", SMALL, "--mode", "finetune",
            "--config.finetune.checkpoint_dir", str(tmp_path / "ft"), "--out", str(out)]
    assert evaluate.main(args) == 0
    first = json.loads(out.read_text())["results"]
    assert {(r["split"], r["metric"]) for r in first} == {("valid", "accuracy"),
                                                          ("test", "accuracy")}
    assert (tmp_path / "ft").is_dir()
    assert evaluate.main(args) == 0  # a finished fine-tuning is reloaded: same scores
    assert [r["value"] for r in json.loads(out.read_text())["results"]] == [
        r["value"] for r in first]
    capsys.readouterr()


@pytest.mark.parametrize("extra, message", [
    (["--config.patch_sise=8"], "--config.patch_sise: unknown field 'patch_sise' in the "
                                "config; did you mean 'patch_size'?"),
    (["--config.knn.kk=8"], "unknown field 'kk' in knn; did you mean 'knn.k'?"),
    (["--config.knn.k=three"], "--config.knn.k=three: invalid literal for int()"),
    (["--config.pooling=median"], "pooling must be one of"),
    (["--config=configs/eval/synthetic.py:huge"], "unknown arg 'huge'"),
    (["--config=configs/eval/nowhere.py"], "--config: config file configs/eval/nowhere.py "
                                           "does not exist"),
])
def test_checkpoint_mode_config_errors(workdir, capsys, extra, message):
    config = [] if any(a.startswith("--config=") for a in extra) else ["--config", SMALL]
    assert evaluate.main(["--checkpoint", str(workdir), *config, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


SEGMENTATION = str(REPO / "configs/eval/synthetic_segmentation.py:small")


@pytest.mark.parametrize("mode", ["linear_probe", "finetune"])
def test_checkpoint_mode_segmentation(workdir, tmp_path, capsys, mode):
    out = tmp_path / "seg.json"
    assert evaluate.main(["--checkpoint", str(workdir), "--config", SEGMENTATION, "--mode",
                          mode, "--out", str(out), "--config.n_bootstrap=20"]) == 0
    table = capsys.readouterr().out
    assert f"synthetic_segmentation  {mode}" in table and "miou *" in table
    rows = {(r["split"], r["metric"]): r for r in json.loads(out.read_text())["results"]}
    assert rows[("valid", "miou")]["primary"]
    assert {"overall_accuracy", "macro_f1"} <= {m for _, m in rows}
    assert 0 <= rows[("test", "miou")]["value"] <= 1
    ci = [m for s, m in rows if s == "test" and m not in ("miou", "overall_accuracy",
                                                         "macro_accuracy", "macro_f1")]
    assert ci, rows.keys()  # bootstrap rows of the test mIoU


def test_segmentation_task_refuses_knn_and_pooled_features(workdir, capsys):
    assert evaluate.main(["--checkpoint", str(workdir), "--config", SEGMENTATION,
                          "--mode", "knn"]) == 2
    assert "kNN classifies whole images" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", str(workdir), "--config", SEGMENTATION,
                          "--config.pooling=mean"]) == 2
    assert "needs pooling 'spatial'" in capsys.readouterr().err


def test_save_features_writes_what_features_mode_reads(workdir, tmp_path, capsys):
    out = tmp_path / "knn.json"
    saved = tmp_path / "feats"
    assert evaluate.main(["--checkpoint", str(workdir), "--config", "synthetic:small",
                          "--save-features", str(saved), "--out", str(out),
                          "--config.knn.k=3"]) == 0
    capsys.readouterr()
    rows = {(r["split"], r["metric"]): r["value"] for r in json.loads(out.read_text())["results"]}
    assert sorted(p.name for p in (saved / "synthetic").iterdir()) == [
        "test.npz", "train.npz", "valid.npz"]
    with np.load(saved / "synthetic" / "train.npz") as f:
        assert f["features"].shape == (64, 32) and f["labels"].shape == (64,)
    assert evaluate.main(["--features", str(saved / "synthetic/train.npz"), "--eval-features",
                          str(saved / "synthetic/test.npz"), "--k", "3"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["accuracy"] == pytest.approx(rows[("test", "accuracy")])


def test_readme_smoke_command_on_the_shipped_eurosat_sample(workdir, capsys, data_dir):
    """One sample in every split (the smoke partition): k and the batch sizes adapt, with
    notes, instead of failing."""
    assert evaluate.main(["--checkpoint", str(workdir), "--config", "m_eurosat",
                          f"--config.dataset.root={data_dir / 'geobench'}",
                          "--config.dataset.partition=smoke"]) == 0
    out = capsys.readouterr().out
    assert "m-eurosat  knn   valid  accuracy *" in out and "k=1" in out
    assert "note: m-eurosat: knn.k 20 -> 1 (1 training samples)" in out
    assert "note: m-eurosat: bands not used: 10 - SWIR - Cirrus" in out


def test_benchmark_eval_smoke(capsys):
    from launch import benchmark_eval

    assert benchmark_eval.main(["--n", "48", "--dim", "8", "--classes", "3", "--epochs",
                                "2", "--batch-size", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["probe_lbfgs"]["recipe"] == "lbfgs" and "C" in result["probe_lbfgs"]
    assert result["probe_reference_adamw"]["recipe"] == "reference_adamw"
    assert result["knn"]["seconds_without_compile"] >= 0


def test_features_mode_reads_dense_segmentation_and_regression_arrays(tmp_path, capsys):
    """Saved patch tokens (N, T, D) with class maps (segmentation) or float maps (dense
    regression): the linear probe runs on them (L-BFGS, ridge)."""
    rng = np.random.default_rng(3)
    tokens = rng.normal(size=(12, 4, 6)).astype(np.float32)
    classes = rng.integers(0, 2, (12, 8, 8))
    targets = rng.normal(size=(12, 8, 8)).astype(np.float32)
    for name, labels in (("seg", classes), ("reg", targets)):
        np.savez(tmp_path / f"{name}_tr.npz", features=tokens[:8], labels=labels[:8])
        np.savez(tmp_path / f"{name}_te.npz", features=tokens[8:], labels=labels[8:])
    common = ["--mode", "linear_probe", "--val-fraction", "0.25", "--n-bootstrap", "10"]
    assert evaluate.main(["--features", str(tmp_path / "seg_tr.npz"), "--eval-features",
                          str(tmp_path / "seg_te.npz"), "--cs=1", "--max-iter", "10",
                          *common]) == 0
    seg = json.loads(capsys.readouterr().out)
    assert (seg["task"], seg["metric"], seg["recipe"]) == ("segmentation", "miou", "lbfgs")
    assert 0 <= seg["score"] <= 1 and "bootstrap_ci_lower" in seg
    assert evaluate.main(["--features", str(tmp_path / "reg_tr.npz"), "--eval-features",
                          str(tmp_path / "reg_te.npz"), *common]) == 0
    reg = json.loads(capsys.readouterr().out)
    assert (reg["task"], reg["metric"], reg["recipe"]) == ("regression", "rmse", "ridge")
    assert reg["score"] == pytest.approx(reg["rmse"]) and reg["score"] > 0
