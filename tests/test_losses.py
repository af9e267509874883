"""Losses against direct numpy formulas (spec data section 7), on packed rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spacenit_jax.model import models
from spacenit_jax.model.config import make_config
from spacenit_jax.train import losses, objectives

RNG = np.random.default_rng(0)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def logsumexp(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def patch_disc_reference(pred, target, tau):
    p, y = unit(pred), unit(target)
    s = p @ y.T / tau
    ce = logsumexp(s) - np.diag(s)
    return ce.mean() * 2 * tau


def test_patch_discrimination_packed_equals_per_sample():
    tau = 0.1
    sizes = [(5, 0), (3, 0), (4, 1)]  # (tokens, row) of three samples; row 0 has two
    d = 6
    samples = [(RNG.normal(size=(n, d)), RNG.normal(size=(n, d))) for n, _ in sizes]
    length = 10
    pred = np.zeros((2, length, d))
    tgt = np.zeros((2, length, d))
    seg = -np.ones((2, length), np.int32)
    pos = [0, 0]
    for i, ((n, row), (p, y)) in enumerate(zip(sizes, samples, strict=True)):
        pred[row, pos[row]:pos[row] + n] = p
        tgt[row, pos[row]:pos[row] + n] = y
        seg[row, pos[row]:pos[row] + n] = i if row == 0 else 0
        pos[row] += n
    pred[seg < 0] = 99.0  # padding must not matter
    got = losses.patch_discrimination(jnp.asarray(pred), jnp.asarray(tgt), jnp.asarray(seg), 3, tau)
    expected = np.mean([patch_disc_reference(p, y, tau) for p, y in samples])
    assert float(got) == pytest.approx(expected, rel=1e-5)
    grads = jax.grad(lambda x: losses.patch_discrimination(x, jnp.asarray(tgt), jnp.asarray(seg),
                                                           3, tau))(jnp.asarray(pred))
    assert np.all(np.isfinite(grads)) and not np.any(np.asarray(grads)[seg < 0])


def test_info_nce_uniformity_smooth_l1():
    a, q = unit(RNG.normal(size=(6, 8))), unit(RNG.normal(size=(6, 8)))
    valid = np.array([1, 1, 1, 1, 0, 1], bool)
    tau = 0.1
    logits = a[valid] @ q[valid].T / tau
    expected = np.mean(logsumexp(logits) - np.diag(logits))
    got = losses.info_nce(jnp.asarray(a), jnp.asarray(q), jnp.asarray(valid), tau)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    z = a[valid]
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    off = ~np.eye(len(z), dtype=bool)
    expected_u = np.log(np.exp(-2.0 * d2[off]).mean())
    assert float(losses.uniformity(jnp.asarray(a), jnp.asarray(valid))) == pytest.approx(
        expected_u, rel=1e-4)
    assert float(losses.uniformity(jnp.asarray(a), jnp.asarray(valid & False))) == 0.0
    d = np.array([-2.0, -0.5, 0.0, 0.3, 1.5])
    np.testing.assert_allclose(losses.smooth_l1(jnp.asarray(d)),
                               np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5))


def test_reconstruction_masks_padding_and_channels():
    pred = RNG.normal(size=(1, 3, 4))
    tgt = RNG.normal(size=(1, 3, 4))
    mask = np.array([[[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]], bool)
    seg = np.array([[0, 0, -1]])
    got = losses.reconstruction(jnp.asarray(pred), jnp.asarray(tgt), jnp.asarray(mask),
                                jnp.asarray(seg), 1, "l1", normalize_target=False)
    per_token = [np.abs(pred[0, 0, :2] - tgt[0, 0, :2]).mean(), np.abs(pred[0, 1] - tgt[0, 1]).mean()]
    assert float(got) == pytest.approx(np.mean(per_token), rel=1e-5)
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        losses.reconstruction(jnp.asarray(pred), jnp.asarray(tgt), jnp.asarray(mask),
                              jnp.asarray(seg), 1, "huber")


LABELS = ("sentinel2_l2a", "sentinel1", "srtm")
SMALL = dict(embed_dim=32, depth=1, num_heads=4, decoder_depth=1, decoder_num_heads=4)


def views(cfg, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    images = {"sentinel2_l2a": jax.random.normal(k[0], (3, 8, 8, 2, 12)),
              "sentinel1": jax.random.normal(k[1], (3, 8, 8, 2, 2)),
              "srtm": jax.random.normal(k[2], (3, 8, 8, 1))}
    view = models.view_from_images(cfg, images, patch_size=4)
    tokens = view.tokens.sensor.shape[1]
    vis = np.where(np.random.default_rng(seed).random((3, tokens)) < 0.5, 0, 2)
    vis[:, 0] = 0
    return models.view_from_images(cfg, images, visibility=vis, patch_size=4)


@pytest.mark.parametrize("name,preset", [("mim", "reference_head"), ("contrastive", "reference_v1"),
                                         ("latent", "design_card"),
                                         ("reconstruction", "design_card"),
                                         ("dual_branch", "reference_head")])
def test_every_objective_gives_finite_loss_and_gradients(name, preset):
    cfg = make_config(preset, "nano", sensor_labels=LABELS, **SMALL,
                      **({} if preset == "reference_v1" else {"drop_path": 0.1}))
    obj = objectives.ObjectiveConfig(name=name, learn_temperature=True, uniformity_weight=0.1)
    model = models.build_model(cfg, obj.model_kind)
    graphdef, params = nnx.split(model, nnx.Param)
    loss_params = objectives.init_loss_params(obj)
    batch = {"view_a": views(cfg, 0), "view_b": views(cfg, 1)}

    def f(params, loss_params):
        m = nnx.merge(graphdef, params)
        return objectives.compute_loss(obj, m, loss_params, batch, rng=jax.random.key(0))

    (loss, metrics), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
        params, loss_params)
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx(float(metrics["loss"]))
    leaves = jax.tree.leaves(grads[0])
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    if name in ("mim", "contrastive", "latent", "dual_branch"):
        # the learned temperature really gets a gradient (the original never trains it)
        assert abs(float(grads[1]["log_temperature"])) > 0
