"""Execution switches change how the step runs, not what it computes: remat policies and
scanned layers give the same losses as the plain float32 step over a few steps, and
bfloat16 matmuls (float32 parameters, residual stream, norms and losses) stay close."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spacenit_jax.model import models
from spacenit_jax.model.config import make_config
from spacenit_jax.train import objectives, step
from spacenit_jax.train import state as state_lib

SMALL = dict(embed_dim=64, depth=2, num_heads=4, num_kv_heads=2, decoder_depth=1,
             decoder_num_heads=4, decoder_num_kv_heads=2, drop_path=0.0)
LABELS = ("sentinel2_l2a", "sentinel1")


def batch(cfg, seed):
    rng = np.random.default_rng(seed)
    images = {"sentinel2_l2a": rng.normal(size=(4, 16, 16, 2, 12)).astype(np.float32),
              "sentinel1": rng.normal(size=(4, 16, 16, 2, 2)).astype(np.float32)}
    view = models.view_from_images(cfg, images, patch_size=4)
    n = view.tokens.segment.shape[1]
    vis = rng.choice([0, 2], size=(4, n), p=[0.5, 0.5]).astype(np.int32)
    return {"view_a": models.view_from_images(cfg, images, patch_size=4, visibility=vis)}


def losses(cfg, steps=3):
    objective = objectives.ObjectiveConfig(name="latent")
    tx, schedule = step.make_optimizer(step.OptimizerConfig(lr=1e-3, warmup_steps=1), 10)
    graphdef, _ = state_lib.split_model(state_lib.abstract_model(cfg, objective.model_kind))
    state = jax.jit(lambda: state_lib.init_train_state(cfg, objective, tx, seed=0))()
    fn = jax.jit(step.make_train_step(graphdef, cfg, objective, tx, schedule))
    out = []
    for s in range(steps):
        state, metrics = fn(state, batch(cfg, s))
        out.append(float(metrics["loss"]))
    return np.asarray(out), state


@pytest.fixture(scope="module")
def reference():
    cfg = make_config("design_card", "nano", sensor_labels=LABELS, **SMALL)
    return cfg, losses(cfg)


@pytest.mark.parametrize("switches", [
    {"remat": "dots_saveable"},
    {"remat": "nothing_saveable", "scan_layers": True},
], ids=["dots_saveable", "nothing_saveable+scan"])
def test_remat_and_scan_give_the_same_losses(reference, switches):
    cfg, (ref, _) = reference
    got, _ = losses(cfg.replace(**switches))
    np.testing.assert_allclose(got, ref, rtol=2e-5)
    assert ref[-1] < ref[0]  # it trains


def test_bfloat16_compute_keeps_float32_weights_and_losses(reference):
    cfg, (ref, _) = reference
    got, state = losses(cfg.replace(compute_dtype="bfloat16"))
    np.testing.assert_allclose(got, ref, rtol=2e-2)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state)
               if jnp.issubdtype(x.dtype, jnp.floating))


def test_spatiotemporal_encoder_follows_the_compute_dtype():
    """The axial blocks take the model's compute dtype (they used to ignore it)."""
    cfg = make_config("design_card", "nano", sensor_labels=LABELS, axial_depth=1,
                      **SMALL).replace(compute_dtype="bfloat16")
    model = models.build_model(cfg, "spatiotemporal", seed=1)
    blocks = [b for a in model.axial_layers for b in (a.h_block, a.w_block, a.t_block)]
    assert all(b.ffn.gate.dtype == jnp.bfloat16 and b.attn.q.dtype == jnp.bfloat16
               for b in blocks)
    assert model.encoder.blocks.layers[0].ffn.gate.dtype == jnp.bfloat16
    images = batch(cfg, 0)["view_a"]
    low = jax.jit(lambda v: model(v)["projected"])(images)
    ref = models.build_model(cfg.replace(compute_dtype="float32"), "spatiotemporal", seed=1)
    high = jax.jit(lambda v: ref(v)["projected"])(images)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(low), np.asarray(high), atol=5e-2)
    assert np.abs(np.asarray(low) - np.asarray(high)).max() > 0  # bfloat16 did run
