"""Pretraining losses on packed token rows, all computed in float32.

Token-level losses work on (R, L, D) rows with a segment id per token (-1 = padding):
every sample contributes its own mean, and the loss is the mean over samples that have
at least one token, whatever their token counts. Sample-level losses work on (S, D)
pooled features with a validity mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spacenit_jax.model.heads import l2_normalize

NEG = -1e30  # masked logit: finite, so fully masked rows keep finite gradients


def _f32(x):
    return x.astype(jnp.float32)


def per_sample_mean(values, segment, num_slots: int):
    """Mean of per-token values (R, L) for each slot -> ((R, K) means, (R, K) counts)."""
    onehot = (segment[..., None] == jnp.arange(num_slots)).astype(jnp.float32)
    total = jnp.einsum("rl,rlk->rk", _f32(values), onehot)
    count = jnp.sum(onehot, axis=1)
    return total / jnp.maximum(count, 1.0), count


def mean_over_samples(sample_values, counts):
    has = counts > 0
    return jnp.sum(jnp.where(has, sample_values, 0.0)) / jnp.maximum(jnp.sum(has), 1)


def patch_discrimination(pred, target, segment, num_slots: int, tau: float = 0.1,
                         pred2unit: bool = False):
    """Token-level InfoNCE within each sample (the official objective).

    For every sample, each predicted token must pick its own target among the targets of
    that sample's predicted tokens; the per-token cross entropy is scaled by 2*tau,
    averaged per sample, then over samples.
    """
    pred, target = _f32(pred), _f32(target)
    valid = segment >= 0
    if pred2unit:
        mean, count = _segment_stats(pred, segment, num_slots)
        centred = pred - _take_slot(mean, segment)
        var, _ = _segment_stats(centred * centred, segment, num_slots)
        var = var * count[..., None] / jnp.maximum(count[..., None] - 1.0, 1.0)
        pred = centred / (jnp.sqrt(_take_slot(var, segment)) + 1e-4)
    p, y = l2_normalize(pred), l2_normalize(target)
    scores = jnp.einsum("rqd,rkd->rqk", p, y) / tau
    same = (segment[:, :, None] == segment[:, None, :]) & valid[:, :, None]
    scores = jnp.where(same, scores, NEG)
    own = jnp.einsum("rqd,rqd->rq", p, y) / tau
    lse = jax.nn.logsumexp(scores, axis=-1)
    ce = jnp.where(valid, lse - own, 0.0) * (2.0 * tau)
    sample, counts = per_sample_mean(ce, segment, num_slots)
    return mean_over_samples(sample, counts)


def _segment_stats(x, segment, num_slots):
    onehot = (segment[..., None] == jnp.arange(num_slots)).astype(jnp.float32)
    count = jnp.sum(onehot, axis=1)
    total = jnp.einsum("rld,rlk->rkd", x, onehot)
    return total / jnp.maximum(count, 1.0)[..., None], count


def _take_slot(per_slot, segment):
    idx = jnp.clip(segment, 0, per_slot.shape[1] - 1)
    return jnp.take_along_axis(per_slot, idx[..., None], axis=1)


def temperature(log_temperature, min_value: float = 0.01, max_value: float = 1.0):
    return jnp.clip(jnp.exp(_f32(log_temperature)), min_value, max_value)


def info_nce(anchors, positives, valid, tau):
    """One-directional InfoNCE over the valid rows: anchor i must pick positive i.

    anchors, positives: (S, D) L2-normalised; valid: (S,) bool; tau: scalar (may be a
    learned parameter, see `temperature`).
    """
    a, q = _f32(anchors), _f32(positives)
    logits = (a @ q.T) / tau
    logits = jnp.where(valid[None, :], logits, NEG)
    own = jnp.sum(a * q, axis=-1) / tau
    ce = jax.nn.logsumexp(logits, axis=-1) - own
    ce = jnp.where(valid, ce, 0.0)
    return jnp.sum(ce) / jnp.maximum(jnp.sum(valid), 1)


def uniformity(z, valid, t: float = 2.0):
    """log mean_{i != j} exp(-t |z_i - z_j|^2) over valid rows (0 with fewer than 2)."""
    z = _f32(z)
    sq = jnp.sum(z * z, axis=-1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    pair = valid[:, None] & valid[None, :] & ~jnp.eye(z.shape[0], dtype=bool)
    n_pairs = jnp.sum(pair)
    kernel = jnp.where(pair, -t * d2, NEG)
    value = jax.nn.logsumexp(kernel) - jnp.log(jnp.maximum(n_pairs, 1).astype(jnp.float32))
    return jnp.where(n_pairs > 0, value, 0.0)


def smooth_l1(d, beta: float = 1.0):
    ad = jnp.abs(d)
    return jnp.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)


def latent_prediction(pred, target, segment, num_slots: int, beta: float = 1.0,
                      normalize: bool = True):
    """Smooth L1 between (normalised) predicted and target latents of PREDICTED tokens."""
    pred, target = _f32(pred), _f32(target)
    if normalize:
        pred, target = l2_normalize(pred), l2_normalize(target)
    per_token = jnp.mean(smooth_l1(pred - target, beta), axis=-1)
    sample, counts = per_sample_mean(jnp.where(segment >= 0, per_token, 0.0), segment, num_slots)
    return mean_over_samples(sample, counts)


def reconstruction(pred, target, mask, segment, num_slots: int, kind: str = "mse",
                   normalize_target: bool = True, beta: float = 1.0):
    """Pixel loss of each token's patch vector over its valid entries (`mask`)."""
    pred, target = _f32(pred), _f32(target)
    m = mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1.0)
    if normalize_target:
        mean = jnp.sum(target * m, axis=-1, keepdims=True) / n
        var = jnp.sum(jnp.square(target - mean) * m, axis=-1, keepdims=True) / n
        target = (target - mean) / (jnp.sqrt(var) + 1e-6)
    d = pred - target
    if kind == "mse":
        err = d * d
    elif kind == "l1":
        err = jnp.abs(d)
    elif kind == "smooth_l1":
        err = smooth_l1(d, beta)
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; use mse, l1 or smooth_l1")
    per_token = jnp.sum(err * m, axis=-1) / n[..., 0]
    sample, counts = per_sample_mean(jnp.where(segment >= 0, per_token, 0.0), segment, num_slots)
    return mean_over_samples(sample, counts)
