"""Host-side tokenization of one masked sample: patches, token ids, month features.

`prepare_sample` turns the (cropped, normalised, augmented) arrays of one sample and its
masks (`masking.mask_sample`) into `PreparedSample`: per spectral group the patches
resized to the base patch size, and per token (tokenizer order, type tokens included)
its ids, state, month features and position scale. It uses the very functions of
`spacenit_jax.tokenization` that the model's image-level entry point uses, so both
entry points agree by construction.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.data.masking import ABSENT, SensorMask, visibility_vector
from spacenit_jax.sensors import SensorKind
from spacenit_jax.tokenization import (
    SampleTokens,
    SensorGrid,
    TokenLayout,
    month_sincos,
    sample_tokens,
    sensor_patches,
)


class _MatmulNumpy:
    """numpy as the `xp` of tokenization.sensor_patches, with its resize einsums run as
    BLAS matmuls (numpy's einsum with "..." does not use BLAS: ~20x slower here).
    Same math; float32 round-off may differ in the last bits."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def einsum(spec, *ops):
        if spec == "...hwc,Hh->...Hwc":
            x, m = ops
            *lead, h, w, c = x.shape
            y = np.matmul(m, x.reshape(*lead, h, w * c))
            return y.reshape(*lead, m.shape[0], w, c)
        if spec == "...Hwc,Ww->...HWc":
            x, m = ops
            return np.matmul(m, x)
        if spec == "...cij,iI,jJ->...cIJ":  # weight mode: a^T x a per patch and channel
            x, a, b = ops
            *lead, p, q = x.shape
            y = (x.reshape(-1, q) @ b).reshape(-1, p, b.shape[1])  # (B, i, J)
            z = np.swapaxes(y, 1, 2).reshape(-1, p) @ a  # (B*J, I)
            z = np.swapaxes(z.reshape(-1, b.shape[1], a.shape[1]), 1, 2)  # (B, I, J)
            return z.reshape(*lead, a.shape[1], b.shape[1])
        return np.einsum(spec, *ops, optimize=True)


FAST_NP = _MatmulNumpy()


@functools.lru_cache(maxsize=256)
def _tokens(layout: TokenLayout, grids: tuple) -> SampleTokens:
    """sample_tokens, cached: every sample of a batch has the same grids."""
    ids = sample_tokens(layout, dict(grids))
    for a in ids:
        a.setflags(write=False)
    return ids


class PixelDtypeError(ValueError):
    """A pixel value does not fit the pipeline's pixel dtype (it would become +-inf)."""


@functools.cache
def _dtype_limit(dtype) -> float | None:
    """Largest finite value of a float dtype narrower than float32, else None."""
    import ml_dtypes

    limit = float(ml_dtypes.finfo(dtype).max)
    return limit if limit < float(np.finfo(np.float32).max) else None


class PreparedSample(NamedTuple):
    """One masked sample as tokens in tokenizer order (type tokens included)."""

    patches: dict[str, np.ndarray]  # group key -> (T*Hp*Wp, C_g*P0*P0); absent sensors omitted
    ids: SampleTokens
    states: np.ndarray  # (N,) int8
    month: np.ndarray  # (N, 2) float32
    pos_scale: np.ndarray  # (N,) float32


def prepare_sample(layout: TokenLayout, arrays: Mapping[str, np.ndarray], patch_size: int,
                   months: np.ndarray | None, masks: Sequence[SensorMask],
                   dtype=np.float32, source: str = "") -> PreparedSample:
    """Cut patches (resized to P0), compute ids, month features and position scales.

    arrays: channel-last sensor arrays of one sample (H, W, T, C) at `patch_size`.
    months: (T,) month indices 0..11 of its timesteps, or None.
    masks: `masking.mask_sample(layout, arrays, patch_size, ...)` for these arrays: each
        sensor's token grid (computed there, once) and token states. The patches of a
        sensor whose tokens are all ABSENT are not computed (none of them is packed).
    dtype: dtype of the returned patches. When it is narrower than float32 (float16), a
        packed token whose pixels overflow it raises PixelDtypeError naming `source`
        (the sample's file), the sensor and the value.
    """
    grids, patches = {}, {}
    by_label = {m.label: m for m in masks}
    for label in layout.sensor_labels:
        if label not in by_label:
            raise ValueError(f"sample has no mask for configured sensor {label!r}")
        m = by_label[label]
        temporal = sensors.get(label).kind == SensorKind.SPACE_TIME
        geo = m.geometry
        grids[label] = SensorGrid(geo.hp, geo.wp, geo.t, temporal)
        if m.type_state == ABSENT:
            continue
        # masking.sensor_geometry has checked that the pixels are whole patches, so the
        # cut yields exactly the geometry's grid.
        pt, _ = sensor_patches(layout, label, arrays[label], patch_size, temporal, xp=FAST_NP)
        for gi, (key, p) in enumerate(pt.items()):
            if _dtype_limit(dtype) is None:
                patches[key] = p.astype(dtype, copy=False)
                continue
            with np.errstate(over="ignore"):  # checked just below
                patches[key] = p.astype(dtype, copy=False)
            _check_overflow(label, key, gi, m, p, patches[key], dtype, source,
                            bool(np.any(arrays[label] == sensors.MISSING_VALUE)))
    ids = _tokens(layout, tuple(grids.items()))
    states = visibility_vector(masks)
    month = np.asarray(month_sincos(months, ids.time), np.float32)
    scales = np.array([layout.pos_scale(lab, patch_size) for lab in layout.sensor_labels],
                      np.float32)
    return PreparedSample(patches, ids, states, month, scales[ids.sensor])


def _check_overflow(label: str, key: str, gi: int, m: SensorMask, p: np.ndarray,
                    q: np.ndarray, dtype, source: str, has_fill: bool) -> None:
    """Raise if a patch of a packed (non-ABSENT) token became non-finite in `dtype`."""
    finite = np.isfinite(q).all(axis=-1)
    if finite.all():
        return
    geo = m.geometry
    # token states of this group, in patch order (t * Hp + r) * Wp + c
    st = m.states.reshape(geo.t, geo.g, geo.hp * geo.wp)[:, gi].reshape(-1)
    bad = ~finite & (st != ABSENT)
    if not bad.any():
        return  # only tokens that are never packed
    row = p[np.flatnonzero(bad)[0]]
    value = float(row[np.argmax(np.abs(row))])
    limit = _dtype_limit(dtype)
    why = (f" (from the missing-value fill {sensors.MISSING_VALUE} of a partly missing "
           "patch)" if has_fill and value <= sensors.MISSING_VALUE / 2 else "")
    raise PixelDtypeError(
        f"{source + ': ' if source else ''}sensor {label!r} (group {key}): pixel value "
        f"{value:g}{why} does not fit the pixel dtype {np.dtype(dtype).name} (|x| <= "
        f"{limit:g}); use float32 or bfloat16")
