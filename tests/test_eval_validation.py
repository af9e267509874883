"""Invalid evaluation inputs: one clear error naming the file, split and rows, in every mode.

Issue #12 fault 3: one NaN row among 30 train rows dropped kNN and the linear probe from
1.0 to 0.333 (every vote NaN, every prediction class 0) without a word, and so did features
computed from a checkpoint. Each kind of invalid input is reproduced here; the right
behaviour is an EvalInputError (a ValueError) whose message says where and what.
"""

import json
import logging
import pathlib
import re

import jax
import numpy as np
import pytest
from eval_tiny_model import SENSOR, tiny_model
from flax import nnx

from launch import evaluate
from spacenit_jax.eval import features as feat
from spacenit_jax.eval import finetune as ft
from spacenit_jax.eval import hook, knn, linear_probe, validation
from spacenit_jax.eval.synthetic import SyntheticClassification, SyntheticSegmentation
from spacenit_jax.eval.validation import EvalInputError

REPO = pathlib.Path(__file__).resolve().parents[1]
CENTRES = np.random.default_rng(100).normal(size=(3, 12)) * 2


def clusters(n, seed):
    """n rows of 3 well separated classes: every mode scores 1.0 on them."""
    y = np.arange(n) % 3
    x = CENTRES[y] + 0.3 * np.random.default_rng(seed).normal(size=(n, 12))
    return x.astype(np.float32), y


def check(splits, **kw):
    kw.setdefault("task", "classification")
    validation.check_eval_inputs(splits, **kw)


def rows(message_rows):
    return re.escape(message_rows)


# --------------------------------------------------------------------------- every kind

X, Y = clusters(10, 0)
NAN_ROW = X.copy()
NAN_ROW[2, 5] = np.nan
INF_ROWS = X.copy()
INF_ROWS[[1, 3], 0] = np.inf
MANY = X.copy()
MANY[[0, 1, 2, 3, 4, 6, 9]] = np.nan
SEG_X = np.zeros((4, 16, 8), np.float32)  # (N, T = 4x4 tokens, D)
SEG_Y = np.zeros((4, 8, 8), np.int32)


@pytest.mark.parametrize("splits, kw, message", [
    ({"train": (NAN_ROW, Y)}, {},
     "train split: features have non-finite values (NaN or Inf) in rows [2] (1 of 10)"),
    ({"train": (X, Y), "valid": (INF_ROWS, Y)}, {},
     "valid split: features have non-finite values (NaN or Inf) in rows [1, 3] (2 of 10)"),
    ({"train": (MANY, Y)}, {}, "in rows [0, 1, 2, 3, 4, ...] (7 of 10)"),
    ({"train": (X, Y[:9])}, {}, "train split: 9 labels for 10 feature rows"),
    ({"train": (X[:, None], Y)}, {}, "train split: features must be (N, D), got shape "
                                     "(10, 1, 12)"),
    ({"train": (X, Y), "query": (X[:, :5], Y)}, {},
     "query split: feature shape (5,) per row differs from the train split's (12,)"),
    ({"train": (X[:0], Y[:0])}, {}, "train split: no rows (empty split)"),
    ({"train": (X, np.where(np.arange(10) == 4, 3, Y))}, {"num_classes": 3},
     "train split: class labels [3] outside [0, num_classes=3) in rows [4] (1 of 10)"),
    ({"train": (X, np.where(np.arange(10) % 5 == 0, -2, Y))}, {},
     "train split: class labels [-2] outside >= 0 in rows [0, 5] (2 of 10)"),
    ({"train": (X, Y + np.where(np.arange(10) == 7, 0.5, 0.0))}, {},
     "train split: class labels must be integers, got dtype float64; not whole numbers in "
     "rows [7] (1 of 10)"),
    ({"train": (X.astype(object), Y)}, {}, "train split: features must be numbers, got dtype "
                                           "object"),
    ({"train": (X, np.eye(4)[Y])}, {"task": "multilabel", "num_classes": 5},
     "train split: multi-hot labels have 4 columns, expected num_classes=5"),
    ({"train": (X, np.eye(4)[Y]), "valid": (X, np.eye(5)[Y])}, {"task": "multilabel"},
     "valid split: labels of shape (5,) per row differ from the train split's (4,)"),
    ({"train": (X, np.eye(4)[Y] * np.where(np.arange(10) == 6, 2, 1)[:, None])},
     {"task": "multilabel"},
     "train split: multi-hot labels must be 0 or 1; values [2.0] in rows [6] (1 of 10)"),
    ({"train": (X, Y)}, {"task": "multilabel"},
     "train split: labels must be (N, C) multi-hot 0/1 for multilabel, got shape (10,)"),
    ({"train": (SEG_X, SEG_Y), "valid": (SEG_X, SEG_Y[:, :4])}, {"task": "segmentation"},
     "valid split: segmentation maps of shape (4, 8) per row differ from the train split's "
     "(8, 8)"),
    ({"train": (SEG_X, np.where(np.arange(4)[:, None, None] == 1, 7, SEG_Y))},
     {"task": "segmentation", "num_classes": 3},
     "train split: class labels [7] outside [0, num_classes=3) or the ignore value -1 in "
     "rows [1] (1 of 4)"),
    ({"train": (SEG_X[:, 0], SEG_Y)}, {"task": "segmentation"},
     "train split: features must be (N, T, D) patch tokens, got shape (4, 8)"),
    ({"train": (X, np.where(np.arange(10) == 8, np.nan, 1.0))}, {"task": "regression"},
     "train split: regression targets have non-finite values (NaN or Inf) in rows [8] "
     "(1 of 10)"),
    ({"train": (NAN_ROW, Y)}, {"sources": {"train": "tr.npz"}},
     "tr.npz (train split): features have non-finite values"),
])
def test_each_kind_of_invalid_input_is_one_clear_line(splits, kw, message):
    with pytest.raises(EvalInputError, match=rows(message)) as err:
        check(splits, **kw)
    assert "\n" not in str(err.value)


def test_valid_inputs_pass_and_ignore_and_fill_values_are_allowed():
    check({"train": (X, Y), "valid": (X[:4], Y[:4])}, num_classes=3)
    seg_y = SEG_Y.copy()
    seg_y[0, 0] = -1  # ignored pixels
    check({"train": (SEG_X, seg_y)}, task="segmentation", num_classes=3)
    images = np.zeros((2, 8, 8, 1, 12), np.float32)
    images[0, :4] = -99999  # the missing-pixel fill value is finite and allowed
    check({"train": (images, np.array([0, 1]))}, inputs="images")
    with pytest.raises(EvalInputError, match=rows("valid split: image shape (4, 8, 1, 12) "
                                                  "per row differs from the train split's "
                                                  "(8, 8, 1, 12)")):
        check({"train": (images, np.array([0, 1])), "valid": (images[:, :4], np.array([0, 1]))},
              inputs="images")


def test_a_class_missing_from_train_is_a_warning_naming_it(caplog):
    with caplog.at_level(logging.WARNING, logger="spacenit_jax.eval.validation"):
        check({"train": (X[Y < 2], Y[Y < 2]), "valid": (X, Y)})
    assert "valid split: classes [2] never occur in the train split, so their rows [2, 5, 8] " \
           "(3 of 10) can never be predicted right" in caplog.text


# --------------------------------------------------------------------------- every mode


def test_issue_reproduction_one_nan_row_in_train_npz_is_an_error_in_knn_and_probe(tmp_path,
                                                                                  capsys):
    """launch.evaluate --features tr.npz --eval-features te.npz with one NaN row among 30."""
    tr, te = tmp_path / "tr.npz", tmp_path / "te.npz"
    x, y = clusters(30, 0)
    np.savez(te, features=clusters(30, 1)[0], labels=y)
    np.savez(tr, features=x, labels=y)
    probe = ["--mode", "linear_probe", "--lrs", "1e-2", "--epochs", "5"]
    for mode in (["--mode", "knn"], probe):
        assert evaluate.main(["--features", str(tr), "--eval-features", str(te), *mode]) == 0
        assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0
    x[17, 3] = np.nan
    np.savez(tr, features=x, labels=y)
    for mode in (["--mode", "knn"], probe):
        assert evaluate.main(["--features", str(tr), "--eval-features", str(te), *mode]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (f"error: {tr} (train split): features have non-finite values "
                                "(NaN or Inf) in rows [17] (1 of 30)\n")
    np.savez(tr, features=clusters(30, 0)[0], labels=y)
    np.savez(te, features=clusters(30, 1)[0], labels=np.where(np.arange(30) == 4, -1, y))
    assert evaluate.main(["--features", str(tr), "--eval-features", str(te)]) == 2
    assert f"{te} (eval split): class labels [-1] outside >= 0 in rows [4] (1 of 30)" in \
        capsys.readouterr().err


def test_every_mode_refuses_the_same_nan_row_with_the_same_message():
    x, y = clusters(24, 0)
    bad = x.copy()
    bad[5, 0] = np.nan
    message = rows("features have non-finite values (NaN or Inf) in rows [5] (1 of 24)")
    config = linear_probe.ProbeConfig(num_classes=3, epochs=2, batch_size=8,
                                      recipe="reference_adamw")
    fit = linear_probe.fit_linear_probe(x, y, x, y, config=config, lrs=(1e-2,))
    calls = {
        "knn": lambda: knn.knn_evaluate(bad, y, x, y, k=3),
        "knn query": lambda: knn.knn_evaluate(x, y, bad, y, k=3),
        "probe fit": lambda: linear_probe.fit_linear_probe(bad, y, x, y, config=config,
                                                           lrs=(1e-2,)),
        "probe select": lambda: linear_probe.fit_linear_probe(x, y, bad, y, config=config,
                                                              lrs=(1e-2,)),
        "probe predict": lambda: fit.predict(bad),
        "probe score": lambda: fit.evaluate(bad, y),
    }
    for name, call in calls.items():
        with pytest.raises(EvalInputError, match=message):
            print(name)  # shown if this call does not raise
            call()
    seg = np.random.default_rng(0).normal(size=(6, 4, 8)).astype(np.float32)
    seg_y = np.random.default_rng(1).integers(0, 3, (6, 4, 4))
    seg_bad = seg.copy()
    seg_bad[4, 2, 1] = np.inf
    with pytest.raises(EvalInputError, match=rows("train split: features have non-finite "
                                                  "values (NaN or Inf) in rows [4] (1 of 6)")):
        linear_probe.fit_linear_probe(seg_bad, seg_y, config=linear_probe.ProbeConfig(
            task="segmentation", num_classes=3, epochs=1, batch_size=2,
            recipe="reference_adamw"), lrs=(1e-2,))


@pytest.fixture(scope="module")
def image_splits():
    def split(name, n):
        return feat.ArraySplit.from_dataset(SyntheticClassification(
            name, num_samples=n, num_classes=4, image_size=16))

    return split("train", 16), split("valid", 8)


def test_finetuning_refuses_invalid_images_and_labels(image_splits):
    train, valid = image_splits
    config = ft.FinetuneConfig(num_classes=4, epochs=1, batch_size=8, eval_batch_size=8)
    model = tiny_model()
    bad = feat.ArraySplit(train.images.copy(), train.labels, SENSOR)
    bad.images[[3, 11], 2, 2, 0, 5] = np.nan
    with pytest.raises(EvalInputError, match=rows("train split: images have non-finite values "
                                                  "(NaN or Inf) in rows [3, 11] (2 of 16)")):
        ft.finetune(model, bad, valid, config=config)
    labels = np.where(np.arange(8) == 6, 4, valid.labels)
    with pytest.raises(EvalInputError, match=rows("valid split: class labels [4] outside "
                                                  "[0, num_classes=4) in rows [6] (1 of 8)")):
        ft.finetune(model, train, feat.ArraySplit(valid.images, labels, SENSOR), config=config)
    with pytest.raises(EvalInputError, match=rows("valid split: image shape (8, 8, 1, 12) per "
                                                  "row differs from the train split's "
                                                  "(16, 16, 1, 12)")):
        ft.finetune(model, train, feat.ArraySplit(valid.images[:, :8, :8], valid.labels,
                                                  SENSOR), config=config)
    result = ft.finetune(model, train, valid, config=config, progress=False)
    with pytest.raises(EvalInputError, match=rows("test split: images have non-finite values "
                                                  "(NaN or Inf) in rows [3, 11] (2 of 16)")):
        result.predict(bad, split="test")


def test_segmentation_finetuning_refuses_label_maps_outside_the_classes():
    def split(name, n):
        return feat.ArraySplit.from_dataset(SyntheticSegmentation(
            name, num_samples=n, num_classes=3, image_size=16, block=8))

    train, valid = split("train", 8), split("valid", 8)
    train.labels[2, 0, 0] = 9
    config = ft.FinetuneConfig(task="segmentation", num_classes=3, epochs=1, batch_size=8,
                               eval_batch_size=8)
    with pytest.raises(EvalInputError, match=rows(
            "train split: class labels [9] outside [0, num_classes=3) or the ignore value -1 "
            "in rows [2] (1 of 8)")):
        ft.finetune(tiny_model(), train, valid, config=config)
    train.labels[2, 0, 0] = 0
    with pytest.raises(EvalInputError, match=rows("valid split: segmentation maps of shape "
                                                  "(16, 8) per row differ")):
        ft.finetune(tiny_model(), train, feat.ArraySplit(valid.images, valid.labels[:, :, :8],
                                                         valid.sensor), config=config)


def nan_model():
    """The tiny model with one NaN in its last encoder norm: every feature row turns NaN."""
    model = nnx.clone(tiny_model())
    state = nnx.state(model.encoder, nnx.Param)
    path, leaf = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(state)][-1]
    nnx.update(model.encoder, jax.tree_util.tree_map_with_path(
        lambda p, x: x.at[(0,) * x.ndim].set(np.nan) if p == path else x, state))
    return model


def test_features_from_a_model_are_checked_after_extraction(image_splits):
    train, _ = image_splits
    config = feat.FeatureConfig(batch_size=8)
    images = train.images.copy()
    images[9, 0, 0, 0, 0] = np.nan
    with pytest.raises(EvalInputError, match=rows(
            "train split: features of rows [9] (1 of 16) are not finite; their input images "
            "have non-finite pixels (NaN or Inf) in rows [9] (1 of 16)")):
        feat.FeatureExtractor(tiny_model(), config).extract(
            feat.ArraySplit(images, train.labels, SENSOR), split="train")
    with pytest.raises(EvalInputError, match=rows(
            "valid split: the model produced non-finite features (NaN or Inf) in rows "
            "[0, 1, 2, 3, 4, ...] (16 of 16) although their images are finite")):
        feat.FeatureExtractor(nan_model(), config).extract(train, split="valid")
    # the split's own name when none is given (a dataset's `split` attribute)
    with pytest.raises(EvalInputError, match="^test split: the model produced"):
        feat.FeatureExtractor(nan_model(), config).extract(
            SyntheticClassification("test", num_samples=8, num_classes=4, image_size=16))


def test_checkpoint_with_nan_parameters_is_an_error_in_launch_evaluate(tmp_path, capsys):
    from eval_tiny_model import run_config

    from spacenit_jax.checkpoint import write_params_checkpoint

    write_params_checkpoint(tmp_path, nnx.to_pure_dict(nnx.state(nan_model(), nnx.Param)),
                            run_config(), step=1)
    assert evaluate.main(["--checkpoint", str(tmp_path), "--config",
                          str(REPO / "configs/eval/synthetic.py:small")]) == 2
    assert capsys.readouterr().err == (
        "error: train split: the model produced non-finite features (NaN or Inf) in rows "
        "[0, 1, 2, 3, 4, ...] (64 of 64) although their images are finite: the model's "
        "parameters, or its computation in its dtype, overflow\n")


def test_in_loop_evaluation_reports_invalid_features_and_skips_the_task(caplog):
    task = hook.load_tasks(["synthetic:small"], {"every_n_steps": 1})[0]
    evaluator = hook.InLoopEvaluator([task])
    with caplog.at_level(logging.ERROR, logger="spacenit_jax.eval.hook"):
        assert evaluator.maybe_evaluate(1, nan_model()) == {}
    assert evaluator.skipped == {"synthetic"}
    assert "in-loop eval task 'synthetic' skipped for the rest of the run: train split: the " \
           "model produced non-finite features" in caplog.text
    assert evaluator.maybe_evaluate(2, tiny_model()) == {}


def test_a_single_class_train_split_is_a_warning(caplog):
    """A tiny partition (the shipped smoke samples) may hold one class: warned, not refused."""
    with caplog.at_level(logging.WARNING, logger="spacenit_jax.eval.validation"):
        validation.check_eval_inputs({"train": (X, np.zeros(10, int))},
                                     task="classification")
    assert "train split: every one of the 10 labels is class 0" in caplog.text
