"""Tiny random models saved as checkpoints, for the inference, embed and convert tests."""

from __future__ import annotations

import pathlib

from flax import nnx

from spacenit_jax.checkpoint import write_params_checkpoint
from spacenit_jax.model import models
from spacenit_jax.model.config import config_to_dict, make_config

SENSORS = ("sentinel2_l2a", "sentinel1", "srtm")


def tiny_config(sensor_labels=SENSORS, **kw):
    base = dict(embed_dim=32, depth=1, num_heads=4, num_kv_heads=2, decoder_depth=1,
                decoder_num_heads=4, decoder_num_kv_heads=2, drop_path=0.0)
    base.update(kw)
    return make_config("design_card", "nano", sensor_labels=tuple(sensor_labels), **base)


def save_tiny(path, *, kind: str = "encoder", seed: int = 0, normalize: bool = True,
              sensor_labels=SENSORS, **kw) -> pathlib.Path:
    """A parameters-only checkpoint of a tiny random model (a workdir)."""
    cfg = tiny_config(sensor_labels, **kw)
    model = models.build_model(cfg, kind, seed=seed)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    run_config = {"model": {"config": config_to_dict(cfg), "kind": kind},
                  "data": {"normalize": normalize}}
    write_params_checkpoint(path, params, run_config, step=1)
    return pathlib.Path(path)
