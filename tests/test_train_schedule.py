"""The learning-rate schedule: the original's CosWithWarmup, step by step, against its
closed form in float64; and why optax.warmup_cosine_decay_schedule does not replace it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spacenit_jax.train.step import OptimizerConfig, cosine_with_warmup

CASES = [(1e-4, 8000, 300_000, 0.1), (1e-3, 2, 20, 0.1), (3e-4, 0, 50, 0.0),
         (1e-3, 5, 5, 0.1), (1e-3, 10, 7, 0.5)]


def closed_form(count: int, peak: float, warmup: int, total: int, floor: float) -> float:
    """lr of update `count` (0-based; the original counts updates from 1): linear warm-up
    to the peak over `warmup` updates, then a half cosine from the peak down to floor x
    peak at update `total`, and floor x peak after it."""
    s = count + 1
    if s < warmup:
        return peak * s / warmup
    if s >= total:
        return floor * peak
    frac = (s - warmup) / max(total - warmup, 1)
    return floor * peak + (1 - floor) * peak * 0.5 * (1 + np.cos(np.pi * frac))


def _counts(warmup, total):
    if total > 1000:  # every phase boundary, and a sample of the rest
        return np.unique(np.r_[0:10, warmup - 3:warmup + 3, total - 3:total + 10,
                               np.linspace(0, total + 10, 2000).astype(int)])
    return np.arange(total + 10)


@pytest.mark.parametrize("peak, warmup, total, floor", CASES)
def test_schedule_equals_the_closed_form_over_the_whole_run(peak, warmup, total, floor):
    schedule = jax.jit(jax.vmap(cosine_with_warmup(
        OptimizerConfig(lr=peak, warmup_steps=warmup, final_lr_fraction=floor), total)))
    counts = _counts(warmup, total)
    got = np.asarray(schedule(jnp.asarray(counts)), np.float64)
    want = np.array([closed_form(int(c), peak, warmup, total, floor) for c in counts])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-7 * peak)  # float32 round-off


def test_optax_warmup_cosine_is_the_same_curve_but_not_equal():
    """optax.warmup_cosine_decay_schedule(0, peak, w, total, floor * peak) at count + 1 draws
    the same curve (within 1.3e-7 x peak, float32 round-off of the cosine, as ours), but
    (1) its linear warm-up is computed as peak - peak * (1 - count / w), which loses relative
    precision on the first warm-up steps (7.6e-6 relative error at the production settings
    against 3.5e-8 for ours), and (2) it refuses runs no longer than the warm-up. So the
    project keeps its own schedule."""
    peak, warmup, total, floor = CASES[0]
    counts = _counts(warmup, total)
    ref = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, floor * peak)
    theirs = np.asarray(jax.vmap(lambda c: ref(c + 1))(jnp.asarray(counts)), np.float64)
    want = np.array([closed_form(int(c), peak, warmup, total, floor) for c in counts])
    np.testing.assert_allclose(theirs, want, atol=2e-7 * peak)  # the same curve...
    ours = np.asarray(jax.vmap(cosine_with_warmup(
        OptimizerConfig(lr=peak, warmup_steps=warmup, final_lr_fraction=floor), total))(
        jnp.asarray(counts)), np.float64)
    first = slice(0, 10)  # ...but imprecise where the lr is small
    assert (np.abs(theirs - want) / want)[first].max() > 1e-6
    assert (np.abs(ours - want) / want)[first].max() < 1e-7
    with pytest.raises(ValueError, match="positive decay_steps"):
        optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 7, 1e-4)
