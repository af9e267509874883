"""A tiny sentinel2_l2a model (or one of given sensors) for the evaluation tests, built
without per-op compiles.

Parameters are drawn with numpy into the abstract model (eager initialisation compiles one
small program per parameter shape, which costs seconds on a loaded CPU); the values are
random but of the usual scale, which is all the evaluation tests need.
"""

import functools

import jax
import numpy as np
from flax import nnx

from spacenit_jax.model import models
from spacenit_jax.model.config import config_to_dict, make_config

TINY = dict(embed_dim=32, depth=1, num_heads=2, num_kv_heads=1, decoder_depth=1,
            decoder_num_heads=2, decoder_num_kv_heads=1, drop_path=0.0, projection_dim=16,
            pooling_heads=2)
SENSOR = "sentinel2_l2a"


def tiny_config(sensors=(SENSOR,)):
    return make_config("design_card", "nano", sensor_labels=tuple(sensors), **TINY)


def run_config(kind="latent_predictor", sensors=(SENSOR,)):
    return {"model": {"config": config_to_dict(tiny_config(sensors)), "kind": kind}}


def _fill(path, leaf, rng):
    name = jax.tree_util.keystr(path)
    if leaf.ndim == 1 and "scale" in name:
        return np.ones(leaf.shape, leaf.dtype)
    bound = 1.0 / np.sqrt(leaf.shape[-2]) if leaf.ndim >= 2 else 0.1
    return rng.uniform(-bound, bound, leaf.shape).astype(leaf.dtype)


@functools.cache
def tiny_model(kind="latent_predictor", seed=0, sensors=(SENSOR,)):
    """Shared between tests: do not modify it (nnx.clone it first). sensors: a tuple."""
    abstract = nnx.eval_shape(lambda: models.build_model(tiny_config(sensors), kind))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    state = jax.tree_util.tree_map_with_path(lambda p, x: jax.numpy.asarray(_fill(p, x, rng)),
                                             state)
    return nnx.merge(graphdef, state)


def tiny_workdir(path, step: int, kind="latent_predictor", sensors=(SENSOR,)):
    """A parameters-only checkpoint of tiny_model(kind, sensors=sensors) at `step` in
    `path` (a workdir that launch.evaluate and checkpoint.load_model read)."""
    from spacenit_jax.checkpoint import write_params_checkpoint

    params = nnx.to_pure_dict(nnx.state(tiny_model(kind, sensors=tuple(sensors)), nnx.Param))
    write_params_checkpoint(path, params, run_config(kind, sensors), step=step)
    return path
