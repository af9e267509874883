"""Pretraining objectives: which model, how many views, and the loss on its outputs.

  mim            the latest original's official recipe: two masked views; patch
                 discrimination between decoder predictions and target-encoder tokens
                 (tau 0.1) + 0.1 x InfoNCE between the views' pooled online encodings.
  contrastive    the v1 recipe: online encoder and EMA target on the same unmasked view,
                 InfoNCE between their pooled projections (+ uniformity).
  latent         Smooth-L1 latent prediction of PREDICTED tokens (+ optional InfoNCE
                 between each sample's pooled predicted and target projections).
  reconstruction AutoEncoder: pixel loss of PREDICTED tokens through the pixel head.
  dual_branch    latent prediction + 0.5 x reconstruction + 0.1 x InfoNCE.

Every InfoNCE can use a learned temperature (`learn_temperature`): its log is a trained
parameter (the original declares it learnable but never optimises it: its temperature
parameter is owned by the training runner, outside the optimised model, so it stays at its
initial value).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from spacenit_jax.model.heads import l2_normalize, segment_mean
from spacenit_jax.train import losses

MODEL_KIND = {"mim": "latent_predictor", "contrastive": "latent_predictor",
              "latent": "latent_predictor", "reconstruction": "autoencoder",
              "dual_branch": "dual_branch"}


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "mim"
    patch_disc_tau: float = 0.1
    patch_disc_pred2unit: bool = False
    patch_disc_weight: float = 1.0
    contrastive_temperature: float = 0.1
    contrastive_weight: float = 0.1
    learn_temperature: bool = False
    uniformity_weight: float = 0.0
    smooth_l1_beta: float = 1.0
    latent_weight: float = 1.0
    reconstruction_loss: str = "mse"
    reconstruction_weight: float = 0.5
    normalize_target: bool = True
    target_train_mode: bool = False  # DropPath in the target encoder (the original: on)

    def __post_init__(self):
        if self.name not in MODEL_KIND:
            raise ValueError(f"unknown objective {self.name!r}; known: {sorted(MODEL_KIND)}")
        if self.reconstruction_loss not in ("mse", "l1", "smooth_l1"):
            raise ValueError(f"reconstruction_loss must be mse, l1 or smooth_l1, "
                             f"got {self.reconstruction_loss!r}")

    @property
    def model_kind(self) -> str:
        return MODEL_KIND[self.name]

    @property
    def num_views(self) -> int:
        return 2 if self.name == "mim" else 1

    @property
    def masked(self) -> bool:
        return self.name != "contrastive"


def init_loss_params(cfg: ObjectiveConfig) -> dict:
    """Trainable parameters owned by the loss (the InfoNCE log-temperature)."""
    if not cfg.learn_temperature:
        return {}
    return {"log_temperature": jnp.asarray(math.log(cfg.contrastive_temperature), jnp.float32)}


def _tau(cfg: ObjectiveConfig, loss_params):
    if cfg.learn_temperature:
        return losses.temperature(loss_params["log_temperature"])
    return cfg.contrastive_temperature


def _flat(x):
    return x.reshape(-1, x.shape[-1])


def _sample_valid(view, *counts):
    valid = view.sample_valid
    for c in counts:
        valid = valid & (c > 0)
    return valid.reshape(-1)


def _interleave_rows(a, b):
    """Two views of the same shapes as one batch, rows interleaved (a0, b0, a1, b1, ...).

    The model then runs once over both views: one program to compile instead of two (the
    step compiles in about half the time) and, because each device's rows of both views
    stay on that device, no data moves. Rows never interact inside the model, so this
    equals two separate passes (DropPath draws from one key for both views instead of one
    key each)."""
    return jax.tree.map(lambda x, y: jnp.stack([x, y], axis=1).reshape(-1, *x.shape[1:]), a, b)


def _split_rows(out):
    """Inverse of _interleave_rows on the model's per-row outputs."""
    def part(i):
        return jax.tree.map(lambda x: x.reshape(-1, 2, *x.shape[1:])[:, i], out)

    return part(0), part(1)


def _stream_stats(view, prefix: str) -> dict:
    real = jnp.sum(view.tokens.segment >= 0)
    online = jnp.sum(view.online.segment >= 0)
    decoder = jnp.sum(view.decoder.segment >= 0)
    total = real.astype(jnp.float32)
    return {f"{prefix}visible_ratio": online / jnp.maximum(total, 1.0),
            f"{prefix}predicted_ratio": decoder / jnp.maximum(total, 1.0)}


def compute_loss(cfg: ObjectiveConfig, model, loss_params, batch, *, rng=None,
                 train: bool = True):
    """(scalar float32 loss, dict of float32 metrics) for one (micro)batch."""
    det = not train
    tdet = not (train and cfg.target_train_mode)
    keys = (None, None) if rng is None else tuple(jax.random.split(rng, 2))
    view_a = batch["view_a"]
    slots = view_a.sample_valid.shape[1]
    metrics = _stream_stats(view_a, "mask/")
    if cfg.name == "mim":
        both = model(_interleave_rows(view_a, batch["view_b"]), deterministic=det,
                     rng=keys[0], target_deterministic=tdet)
        out_a, out_b = _split_rows(both)
        pd = 0.5 * sum(losses.patch_discrimination(
            o["predictions"], o["targets"], o["decoder_segment"], slots, cfg.patch_disc_tau,
            cfg.patch_disc_pred2unit) for o in (out_a, out_b))
        loss = cfg.patch_disc_weight * pd
        metrics["patch_disc_loss"] = pd
        valid = _sample_valid(view_a, out_a["pooled_count"], out_b["pooled_count"])
        if cfg.contrastive_weight > 0:
            z_a = _flat(l2_normalize(model.online_proj(out_a["encoder_pooled"])))
            z_b = _flat(l2_normalize(model.online_proj(out_b["encoder_pooled"])))
            c = losses.info_nce(z_a, z_b, valid, _tau(cfg, loss_params))
            loss = loss + cfg.contrastive_weight * c
            metrics["global_contrastive_loss"] = c
        if cfg.uniformity_weight > 0:
            u = losses.uniformity(_flat(l2_normalize(out_a["encoder_pooled"])), valid)
            loss = loss + cfg.uniformity_weight * u
            metrics["uniformity_loss"] = u
    elif cfg.name == "contrastive":
        out = model.contrastive(view_a, deterministic=det, rng=keys[0], target_deterministic=tdet)
        valid = _sample_valid(view_a, out["pooled_count"])
        z_on, z_t = _flat(out["online_proj"]), _flat(out["target_proj"])
        c = losses.info_nce(z_on, z_t, valid, _tau(cfg, loss_params))
        loss = c
        metrics["contrastive_loss"] = c
        if cfg.uniformity_weight > 0:
            u = losses.uniformity(z_on, valid)
            loss = loss + cfg.uniformity_weight * u
            metrics["uniformity_loss"] = u
    elif cfg.name in ("latent", "dual_branch"):
        out = model(view_a, deterministic=det, rng=keys[0], target_deterministic=tdet)
        pred = out["predictions"] if cfg.name == "latent" else out["latent_predictions"]
        seg = out["decoder_segment"]
        lat = losses.latent_prediction(pred, out["targets"], seg, slots, cfg.smooth_l1_beta)
        loss = cfg.latent_weight * lat
        metrics["latent_loss"] = lat
        if cfg.name == "dual_branch":
            rec = losses.reconstruction(out["reconstructed"], out["pixels"], out["pixel_mask"],
                                        seg, slots, cfg.reconstruction_loss, cfg.normalize_target)
            loss = loss + cfg.reconstruction_weight * rec
            metrics["reconstruction_loss"] = rec
        if cfg.contrastive_weight > 0:
            on, count = segment_mean(out["online_proj"], seg, seg >= 0, slots)
            tg, _ = segment_mean(out["target_proj"], seg, seg >= 0, slots)
            valid = _sample_valid(view_a, count)
            c = losses.info_nce(_flat(l2_normalize(on)), _flat(l2_normalize(tg)), valid,
                                _tau(cfg, loss_params))
            loss = loss + cfg.contrastive_weight * c
            metrics["contrastive_loss"] = c
    else:  # reconstruction
        out = model(view_a, deterministic=det, rng=keys[0])
        rec = losses.reconstruction(out["reconstructed"], out["pixels"], out["pixel_mask"],
                                    out["decoder_segment"], slots, cfg.reconstruction_loss,
                                    cfg.normalize_target)
        loss = rec
        metrics["reconstruction_loss"] = rec
    if cfg.learn_temperature:
        metrics["temperature"] = _tau(cfg, loss_params)
    metrics["loss"] = loss
    return loss.astype(jnp.float32), metrics
