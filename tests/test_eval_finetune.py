"""Fine-tuning: learns a separable task, freezes then unfreezes, resumes exactly."""

import math
import re

import jax
import numpy as np
import pytest
from eval_tiny_model import tiny_model
from flax import nnx

from spacenit_jax.eval import features as feat
from spacenit_jax.eval import finetune as ft
from spacenit_jax.eval.synthetic import SyntheticClassification, SyntheticSegmentation
from spacenit_jax.eval.validation import EvalInputError

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
    with pytest.raises(EvalInputError, match=r"train split: labels must be \(N, H, W\) class maps "
                                             r"for segmentation, got shape \(64,\)"):
        ft.finetune(tiny_model(), data[0], data[1], config=config)


def test_matches_torch_adamw_with_a_frozen_then_unfrozen_backbone():
    """Per-epoch losses and the best state equal a run of torch.optim.AdamW (the reference's
    optimizer) fed the same gradients: the backbone gets no gradient, hence no Adam state,
    while frozen, and the learning rate drops to lr * 0.1 at the unfreeze."""
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp

    from spacenit_jax.eval.linear_probe import init_probe_params

    def split(name, n):
        return feat.ArraySplit.from_dataset(SyntheticClassification(
            name, num_samples=n, num_classes=4, image_size=16))

    train, valid = split("train", 12), split("valid", 8)
    config = ft.FinetuneConfig(num_classes=4, lr=5e-3, epochs=3, batch_size=8,
                               eval_batch_size=8, seed=3)
    model = tiny_model()
    result = ft.finetune(model, train, valid, config=config)

    # the oracle: JAX gradients of an independently written loss, torch AdamW steps
    graphdef, backbone, rest = nnx.split(model.encoder, nnx.Param, ...)
    opts = feat.EncodeOptions(model.cfg, config.patch_size, "mean")

    @jax.jit
    def loss_and_grads(params, images, labels, mask, rng):
        def loss(params):
            encoder = nnx.merge(graphdef, params["backbone"], rest)
            x = feat.encode_and_pool(feat.FeatureParts(encoder), {train.sensor: images}, None,
                                     opts, deterministic=False, rng=rng)
            logp = jax.nn.log_softmax(x @ params["head"]["w"] + params["head"]["b"])
            nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
            return jnp.sum(nll * mask) / jnp.sum(mask)

        return jax.value_and_grad(loss)(params)

    params = {"backbone": nnx.to_pure_dict(backbone),
              "head": init_probe_params(config.seed, model.cfg.embed_dim, 4)}
    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.tensor(np.array(x), requires_grad=True) for x in leaves]
    n_backbone = len(jax.tree.leaves(params["backbone"]))
    opt = torch.optim.AdamW(tensors, lr=config.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01)
    n, bs = len(train), config.batch_size
    losses, states = [], []
    for epoch in range(config.epochs):
        if epoch == config.freeze_epochs:
            for group in opt.param_groups:
                group["lr"] = config.lr * 0.1
        order = np.random.default_rng([config.seed, epoch]).permutation(n)
        order = np.concatenate([order, np.full(-n % bs, order[-1])])
        epoch_losses = []
        for i in range(len(order) // bs):
            idx = order[i * bs:(i + 1) * bs]
            mask = (np.arange(i * bs, (i + 1) * bs) < n).astype(np.float32)
            rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), epoch), i)
            current = jax.tree.unflatten(treedef, [jnp.asarray(t.detach().numpy())
                                                   for t in tensors])
            loss, grads = loss_and_grads(current, train.images[idx], train.labels[idx], mask,
                                         rng)
            for j, (t, g) in enumerate(zip(tensors, jax.tree.leaves(grads), strict=True)):
                frozen = j < n_backbone and epoch < config.freeze_epochs
                t.grad = None if frozen else torch.tensor(np.array(g))
            opt.step()
            epoch_losses.append(float(loss))
        losses.append(np.mean(epoch_losses))
        states.append([t.detach().numpy().copy() for t in tensors])

    assert [h["backbone_trained"] for h in result.history] == [False, True, True]
    np.testing.assert_allclose([h["train_loss"] for h in result.history], losses, rtol=1e-5)
    best = jax.tree.unflatten(treedef, states[result.best_epoch])
    got = {"backbone": result.best_state["backbone"],
           "head": result.best_state["trainable"]["head"]}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, best)


# a validation score over 40 epochs: rises, exact ties (accuracies repeat), a rise below the
# relative threshold (0.60001 < 0.6 * 1.0001), drops and long plateaus (several reductions)
PLATEAU_METRICS = (0.5, 0.6, 0.6, 0.60001, 0.6, 0.59, 0.6, 0.7, 0.7, 0.7, 0.7, 0.69, 0.7, 0.71,
                   0.71, 0.71, 0.71, 0.71, 0.71, 0.71, 0.71, 0.71, 0.71, 0.71, 0.71, 0.71, 0.8,
                   0.79, 0.78, 0.77, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8)


def torch_plateau_lrs(metrics, config):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=config.plateau_factor, patience=config.plateau_patience,
        threshold=config.plateau_threshold, threshold_mode="rel",
        cooldown=config.plateau_cooldown, min_lr=config.min_lr)
    lrs = []
    for m in metrics:
        sched.step(m)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def our_plateau_lrs(metrics, config):
    state, lr, lrs = ft.Plateau(), 1.0, []
    for m in metrics:
        state, lr = ft.plateau_step(state, m, lr, config)
        lrs.append(lr)
    return lrs


def optax_plateau_lrs(metrics, config, patience):
    import optax

    tx = optax.contrib.reduce_on_plateau(factor=config.plateau_factor, patience=patience,
                                         rtol=config.plateau_threshold,
                                         cooldown=config.plateau_cooldown,
                                         min_scale=config.min_lr)
    state, lrs = tx.init(np.zeros(1, np.float32)), []
    for m in metrics:  # optax minimises: fed the negated score
        _, state = tx.update(np.zeros(1, np.float32), state, value=-m)
        lrs.append(float(state.scale))
    return lrs


@pytest.mark.parametrize("cooldown", [10, 1])
def test_plateau_equals_torch_reduce_lr_on_plateau(cooldown):
    """The reference's ReduceLROnPlateau(mode max, factor 0.2, patience 2, min_lr 0,
    cooldown 10), stepped once per epoch, against torch's own scheduler."""
    config = ft.FinetuneConfig(plateau_cooldown=cooldown)
    want = torch_plateau_lrs(PLATEAU_METRICS, config)
    assert our_plateau_lrs(PLATEAU_METRICS, config) == want
    assert len(set(want)) >= 3  # the sequence reduces at least twice


def test_optax_reduce_on_plateau_differs_from_the_reference():
    """Why fine-tuning keeps its own `plateau_step` (see its docstring)."""
    config = ft.FinetuneConfig()
    torch_lrs = torch_plateau_lrs(PLATEAU_METRICS, config)
    # optax counts `patience` bad epochs, torch more than `patience`: patience + 1 aligns them
    assert optax_plateau_lrs(PLATEAU_METRICS, config, config.plateau_patience + 1) != torch_lrs
    # (1) negated, its relative test is "metric > best * (1 - rtol)": a flat score improves
    flat = (0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6)
    assert torch_plateau_lrs(flat, config)[-1] == pytest.approx(0.2)
    assert optax_plateau_lrs(flat, config, config.plateau_patience + 1) == [1.0] * len(flat)
    # (2) with the same patience it reduces one epoch earlier than torch
    falling = (0.9, 0.8, 0.7, 0.6, 0.5)
    assert torch_plateau_lrs(falling, config) == pytest.approx([1, 1, 1, 0.2, 0.2])
    assert optax_plateau_lrs(falling, config, config.plateau_patience) == pytest.approx(
        [1, 1, 0.2, 0.2, 0.2])


def test_optimizer_state_starts_at_zero_like_optax_init():
    """The host-built initial state equals the optax chain's own init (zeros), and the
    learning rate lives in it."""
    params = {"backbone": {"w": np.ones((3, 2), np.float32)},
              "trainable": {"head": {"w": np.ones((2, 4), np.float32),
                                     "b": np.ones(4, np.float32)}, "pool": {}}}
    tx = ft.optimizer((0.9, 0.999, 1e-8, 0.01))
    shapes = jax.eval_shape(tx.init, params)
    zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
    assert jax.tree.structure(zeros) == jax.tree.structure(tx.init(params))
    jax.tree.map(np.testing.assert_array_equal, zeros, tx.init(params))
    state = ft.set_learning_rate({"params": params, "opt": zeros}, 2e-3)
    assert ft.learning_rate(state) == pytest.approx(2e-3)
    # frozen: no backbone update and no backbone Adam step; the head moves
    grads = jax.tree.map(np.ones_like, params)
    updates, opt = tx.update(grads, state["opt"], params, train_backbone=False)
    assert not np.any(updates["backbone"]["w"]) and np.all(updates["trainable"]["head"]["w"])
    backbone_adam = opt.inner_state.inner_states["backbone"].inner_state.inner_state[0]
    assert int(backbone_adam.count) == 0
    _, opt = tx.update(grads, opt, params, train_backbone=True)
    backbone_adam = opt.inner_state.inner_states["backbone"].inner_state.inner_state[0]
    assert int(backbone_adam.count) == 1


def test_progress_shows_steps_eta_and_each_epochs_scores(capsys):
    def split(name, n):
        return feat.ArraySplit.from_dataset(SyntheticClassification(
            name, num_samples=n, num_classes=4, image_size=16))

    train, valid = split("train", 16), split("valid", 8)
    config = ft.FinetuneConfig(num_classes=4, lr=5e-3, epochs=2, batch_size=8,
                               eval_batch_size=8)
    ft.finetune(tiny_model(), train, valid, config=config, progress=True)
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert re.match(r"finetune epoch 2/2: 100%\|.*\| 4/4 \[\d\d:\d\d<00:00, .*(step/s|s/step), "
                    r"loss=\d\.\d{4}, val=\d\.\d{4}, lr=0\.0005\]", last), last
    assert re.search(r"finetune epoch 1/2: +50%.*<\d\d:\d\d", err.replace("\r", "\n"))
    ft.finetune(tiny_model(), train, valid, config=config, progress=False)
    assert capsys.readouterr().err == ""
