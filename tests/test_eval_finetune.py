"""Fine-tuning: learns a separable task, freezes then unfreezes, resumes exactly."""

import math

import jax
import numpy as np
import pytest
from eval_tiny_model import tiny_model
from flax import nnx

from spacenit_jax.eval import features as feat
from spacenit_jax.eval import finetune as ft
from spacenit_jax.eval.synthetic import SyntheticClassification, SyntheticSegmentation

CONFIG = ft.FinetuneConfig(num_classes=4, lr=5e-3, epochs=4, batch_size=16, eval_batch_size=8)


@pytest.fixture(scope="module")
def data():
    def split(name, n):
        return feat.ArraySplit.from_dataset(SyntheticClassification(
            name, num_samples=n, num_classes=4, image_size=16))

    return split("train", 64), split("valid", 32), split("test", 32)


def same(a, b):
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def test_learns_freezes_and_resumes_exactly(data, tmp_path):
    train, valid, test = data
    model = tiny_model()
    initial = nnx.to_pure_dict(nnx.state(model.encoder, nnx.Param))
    straight = ft.finetune(model, train, valid, config=CONFIG, checkpoint_dir=tmp_path / "a")
    assert straight.completed and len(straight.history) == 4
    assert [h["backbone_trained"] for h in straight.history] == [False, True, True, True]
    assert straight.history[0]["lr"] == 5e-3
    assert [h["lr"] for h in straight.history[1:]] == [pytest.approx(5e-4)] * 3
    assert straight.best_val["accuracy"] >= 0.75
    assert straight.evaluate(test)["accuracy"] >= 0.75
    assert straight.history[-1]["train_loss"] < straight.history[0]["train_loss"]
    assert same(nnx.to_pure_dict(nnx.state(model.encoder, nnx.Param)), initial)  # untouched

    # the backbone does not move in the frozen first epoch
    one = ft.finetune(model, train, valid, config=CONFIG, stop_after=1)
    assert not one.completed and same(one.best_state["backbone"], initial)
    assert not same(straight.best_state["backbone"], initial)

    # two epochs, "crash", resume to four: the same run
    part = ft.finetune(model, train, valid, config=CONFIG, checkpoint_dir=tmp_path / "b",
                       stop_after=2)
    assert not part.completed and len(part.history) == 2
    resumed = ft.finetune(model, train, valid, config=CONFIG, checkpoint_dir=tmp_path / "b")
    assert resumed.completed and resumed.history == straight.history
    assert resumed.best_epoch == straight.best_epoch
    assert same(resumed.best_state, straight.best_state)
    np.testing.assert_array_equal(resumed.predict(test), straight.predict(test))
    # a finished run is reloaded, not retrained; another config is refused
    again = ft.finetune(model, train, valid, config=CONFIG, checkpoint_dir=tmp_path / "b")
    assert again.history == straight.history
    with pytest.raises(ValueError, match="another config"):
        ft.finetune(model, train, valid, config=ft.FinetuneConfig(
            num_classes=4, lr=1e-3, epochs=4, batch_size=16, eval_batch_size=8),
            checkpoint_dir=tmp_path / "b")


def test_plateau_follows_torch_reduce_lr_on_plateau():
    config = ft.FinetuneConfig(plateau_patience=2, plateau_cooldown=1, plateau_factor=0.2)
    state, lr, lrs = ft.Plateau(), 1.0, []
    for metric in (0.5, 0.6, 0.6, 0.60001, 0.6, 0.6, 0.6, 0.6, 0.7):
        state, lr = ft.plateau_step(state, metric, lr, config)
        lrs.append(lr)
    # 0.60001 is not better by the relative threshold 1e-4; the 3rd bad epoch reduces, then
    # one cooldown epoch where bad epochs are not counted, then 3 more bad epochs
    assert lrs == pytest.approx([1, 1, 1, 1, 0.2, 0.2, 0.2, 0.2, 0.2])
    state, lr = ft.plateau_step(state, 0.7, lr, config)
    assert state.best == 0.7 and state.num_bad_epochs == 1


def test_config_checks():
    assert ft.FinetuneConfig(epochs=50).freeze_epochs == math.ceil(0.2 * 50) == 10
    assert ft.FinetuneConfig(epochs=4).freeze_epochs == 1
    assert ft.FinetuneConfig(task="segmentation").pooling == "spatial"
    assert ft.FinetuneConfig().pooling == "mean"
    with pytest.raises(ValueError, match="pooling must be one of \\('spatial',\\) for segmentation"):
        ft.FinetuneConfig(task="segmentation", pooling="mean")
    with pytest.raises(ValueError, match="pooling"):
        ft.FinetuneConfig(pooling="tokens")
    with pytest.raises(ValueError, match="backbone"):
        ft.FinetuneConfig(representation="projection")
    multi = np.array([[1, 0], [1, 1]])
    assert ft.score(np.array([[1, 0], [1, 0]]), multi, "multilabel") == pytest.approx(
        {"primary": 0.5, "exact_match": 0.5, "micro_f1": 0.8})


def test_segmentation_learns_per_pixel_classes(data):
    def split(name, n):
        return feat.ArraySplit.from_dataset(SyntheticSegmentation(
            name, num_samples=n, num_classes=3, image_size=16, block=8))

    train, valid = split("train", 48), split("valid", 16)
    assert train.labels.shape == (48, 16, 16)
    train.labels[0, :2] = -1  # ignored pixels
    config = ft.FinetuneConfig(task="segmentation", num_classes=3, lr=2e-2, epochs=4,
                               freeze_fraction=0.5, batch_size=8, eval_batch_size=8)
    result = ft.finetune(tiny_model(), train, valid, config=config)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    preds = result.predict(valid)
    assert preds.shape == valid.labels.shape and set(np.unique(preds)) <= {0, 1, 2}
    # one class everywhere scores mIoU ~1/9, random maps ~1/5
    assert result.best_val["miou"] > 0.8, result.history
    assert result.evaluate(valid) == pytest.approx(result.best_val)
    with pytest.raises(ValueError, match=r"needs \(N, H, W\) label maps"):
        ft.finetune(tiny_model(), data[0], data[1], config=config)
