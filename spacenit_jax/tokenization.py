"""How images become tokens: groups, token order, position ids and patch resizing.

This module is the contract between the host pipeline (numpy) and the model (jax): the
host cuts patches and computes per-token ids with these functions, and the model's
image-level entry point calls the very same functions (with `xp=jax.numpy`, ids as
trace-time numpy constants), so both entry points agree by construction.

Token order of one sample is the original's (its tokenizer's output order): for each
configured sensor present, in configuration order, one sensor-type token, then its patch
tokens ordered time-major, then spectral group, then patch row, then patch column.

Both runtime patch-size modes of the original are linear maps from a patch at runtime
size P to a patch at the base size P0, so the model only ever sees P0-sized patches:
- "input" (latest revision): the whole group image is resized from (Hp*P, Wp*P) to
  (Hp*P0, Wp*P0) with antialiased bicubic (a = -0.5) and cut into P0 patches;
- "weight" (v1): the original resizes the projection weights with area interpolation;
  applying the adjoint of that resize to the input patch gives the same token.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np

from spacenit_jax import sensors


class TokenState(enum.IntEnum):
    """What a token is for in one view (the original's TokenVisibility values)."""

    VISIBLE = 0  # seen by the online encoder (the decoder's context)
    TARGET_ONLY = 1  # seen only by the target encoder
    PREDICTED = 2  # a decoder query; the loss is computed here
    ABSENT = 3  # no data: in no stream


PatchResize = Literal["input", "weight"]
PositionScale = Literal["sensor_gsd", "patch", "unit"]


@dataclasses.dataclass(frozen=True)
class TokenGroup:
    """One patch-embedding unit: a (sensor, spectral group) pair."""

    index: int  # position in TokenLayout.groups (= the model's patch-embedding order)
    sensor_id: int  # position of the sensor in TokenLayout.sensor_labels
    label: str
    group: int  # index of the group within its sensor
    channels: tuple[int, ...]  # channel indices into the sensor's band order
    key: str  # "<label>__g<i>" when the sensor has several groups, else "<label>"


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Which sensors are tokenized, how they are grouped, and how positions are scaled.

    position_scale decides the RoPE / decoder position multiplier of a token:
      "sensor_gsd": metres covered by one patch of that sensor / reference_gsd (design card);
      "patch": gsd * P / reference_gsd with one scalar gsd (latest original);
      "unit": gsd / reference_gsd (v1 original).
    ground_aligned_patches: a patch of a sensor stored finer than the 10 m grid (naip_10)
    spans as many more pixels, so every sensor's patches cover the same ground (the
    original cuts P stored pixels whatever the sensor; the reference presets keep that).
    """

    sensor_labels: tuple[str, ...]
    base_patch_size: int = 8
    spectral_groups: bool = True  # False: one group per sensor holding all its bands (v1)
    custom_groups: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = ()
    patch_resize: PatchResize = "input"
    position_scale: PositionScale = "patch"
    reference_gsd: float = sensors.REFERENCE_GSD
    ground_aligned_patches: bool = True

    def __post_init__(self):
        if not self.sensor_labels:
            raise ValueError("TokenLayout needs at least one sensor label")
        if len(set(self.sensor_labels)) != len(self.sensor_labels):
            raise ValueError(f"duplicate sensor labels in {self.sensor_labels}")
        for label in self.sensor_labels:
            spec = sensors.get(label)
            if not spec.is_spatial:
                raise ValueError(
                    f"sensor {label!r} is {spec.kind.value}: only sensors with spatial axes "
                    "can be tokenized into patches"
                )
        for label, groups in self.custom_groups:
            spec = sensors.get(label)
            if label not in self.sensor_labels:
                raise ValueError(f"custom groups given for {label!r}, which is not configured")
            for bands in groups:
                unknown = [b for b in bands if b not in spec.bands]
                if unknown or not bands:
                    raise ValueError(
                        f"custom group {list(bands)} of sensor {label!r}: unknown bands "
                        f"{unknown}; known bands: {list(spec.bands)}"
                    )
        if self.base_patch_size < 1:
            raise ValueError(f"base_patch_size must be >= 1, got {self.base_patch_size}")
        if self.patch_resize not in ("input", "weight"):
            raise ValueError(f"patch_resize must be 'input' or 'weight', got {self.patch_resize!r}")
        if self.position_scale not in ("sensor_gsd", "patch", "unit"):
            raise ValueError(f"unknown position_scale {self.position_scale!r}")

    @functools.cached_property
    def groups(self) -> tuple[TokenGroup, ...]:
        custom = dict(self.custom_groups)
        out = []
        for sid, label in enumerate(self.sensor_labels):
            spec = sensors.get(label)
            if label in custom:
                chans = [tuple(spec.bands.index(b) for b in g) for g in custom[label]]
            elif self.spectral_groups:
                chans = list(spec.group_channel_indices)
            else:
                chans = [tuple(range(spec.num_channels))]
            for g, ch in enumerate(chans):
                key = f"{label}__g{g}" if len(chans) > 1 else label
                out.append(TokenGroup(len(out), sid, label, g, ch, key))
        return tuple(out)

    def sensor_groups(self, label: str) -> tuple[TokenGroup, ...]:
        return tuple(g for g in self.groups if g.label == label)

    def sensor_id(self, label: str) -> int:
        try:
            return self.sensor_labels.index(label)
        except ValueError:
            raise KeyError(
                f"sensor {label!r} is not configured; configured sensors: {list(self.sensor_labels)}"
            ) from None

    def patch_dim(self, group: TokenGroup) -> int:
        return len(group.channels) * self.base_patch_size**2

    def patch_pixels(self, label: str, patch_size: int) -> int:
        """Stored pixels per patch side (see ground_aligned_patches)."""
        if not self.ground_aligned_patches:
            return patch_size
        return patch_size * sensors.get(label).pixels_per_base_pixel

    def pos_scale(self, label: str, patch_size: int, gsd: float | None = None) -> float:
        """RoPE / decoder position multiplier for tokens of `label` at runtime patch size."""
        if self.position_scale == "sensor_gsd":
            pitch = sensors.get(label).stored_pixel_pitch if gsd is None else gsd
            return pitch * self.patch_pixels(label, patch_size) / self.reference_gsd
        gsd = self.reference_gsd if gsd is None else gsd
        if self.position_scale == "patch":
            return gsd * patch_size / self.reference_gsd
        return gsd / self.reference_gsd


class SensorGrid(NamedTuple):
    """Patch grid of one sensor in one sample."""

    hp: int
    wp: int
    t: int  # number of timesteps (1 for non-temporal)
    temporal: bool


class SampleTokens(NamedTuple):
    """Per-token ids of one sample in tokenizer order (all int32 arrays of length N)."""

    sensor: np.ndarray
    group: np.ndarray  # TokenLayout group index, -1 for sensor-type tokens
    row: np.ndarray  # -1 for type tokens
    col: np.ndarray
    time: np.ndarray  # -1 for type tokens and non-temporal sensors
    patch: np.ndarray  # index into the group's patches (t*Hp + r)*Wp + c, -1 for type tokens


def sample_tokens(layout: TokenLayout, grids: Mapping[str, SensorGrid]) -> SampleTokens:
    """Ids of every token of one sample, in the original's token order."""
    unknown = [label for label in grids if label not in layout.sensor_labels]
    if unknown:
        raise KeyError(
            f"sensors {unknown} are not configured; configured: {list(layout.sensor_labels)}"
        )
    cols: list[list[np.ndarray]] = [[] for _ in SampleTokens._fields]
    for label in layout.sensor_labels:
        if label not in grids:
            continue
        grid = grids[label]
        sid = layout.sensor_id(label)
        groups = layout.sensor_groups(label)
        n_groups = len(groups)
        t, g, r, c = np.meshgrid(
            np.arange(grid.t), np.arange(n_groups), np.arange(grid.hp), np.arange(grid.wp),
            indexing="ij",
        )
        t, g, r, c = (a.reshape(-1) for a in (t, g, r, c))
        patch = (t * grid.hp + r) * grid.wp + c
        time = t if grid.temporal else np.full_like(t, -1)
        group_index = np.asarray([grp.index for grp in groups])[g]
        parts = (np.full_like(t, sid), group_index, r, c, time, patch)
        for col, part in zip(cols, parts, strict=True):
            col.append(np.concatenate([[sid if col is cols[0] else -1], part]))
    if not cols[0]:
        raise ValueError(
            f"none of the configured sensors {list(layout.sensor_labels)} is in the input"
        )
    return SampleTokens(*(np.concatenate(c).astype(np.int32) for c in cols))


def month_sincos(months, time, xp=np):
    """Per-token (sin, cos) month features; the month embedding is a linear map of these.

    months: (..., T_m) month indices 0..11 (or None: no month signal, zeros).
    time: (N,) token timestep, -1 for type tokens and non-temporal sensors.
    With T_m == 1 every token gets that month; otherwise a token at timestep t gets
    month min(t, T_m - 1) and a token without a timestep gets the mean over timesteps,
    exactly the original's rule (the embedding being linear, mean of features = mean of
    embeddings).
    """
    time = np.asarray(time)
    if months is None:
        return xp.zeros(time.shape + (2,), xp.float32)
    if isinstance(months, np.ndarray) and months.size and (months.min() < 0 or months.max() > 11):
        raise ValueError(f"month indices must be in 0..11, got {months.min()}..{months.max()}")
    angle = 2.0 * math.pi * xp.asarray(months).astype(xp.float32) / 12.0
    raw = xp.stack([xp.sin(angle), xp.cos(angle)], axis=-1)  # (..., T_m, 2)
    t_m = raw.shape[-2]
    if t_m == 1:
        return xp.broadcast_to(raw[..., :1, :], raw.shape[:-2] + (time.shape[0], 2))
    per_token = raw[..., np.clip(time, 0, t_m - 1), :]
    mean = xp.mean(raw, axis=-2, keepdims=True)
    return xp.where((time >= 0)[:, None], per_token, mean)


# --------------------------------------------------------------------------------------
# Resizing a patch from runtime size P to base size P0 (both modes are linear maps)


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=512)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of antialiased bicubic resizing (a = -0.5, PIL/torch antialias)."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = _keys_cubic((j - center + 0.5) * invscale)
        m[i, lo:hi] = w / w.sum()
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=512)
def area_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of area interpolation (adaptive average pooling)."""
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        lo = (i * in_size) // out_size
        hi = -((-(i + 1) * in_size) // out_size)
        m[i, lo:hi] = 1.0 / (hi - lo)
    m.setflags(write=False)
    return m


def patchify(img, k: int, xp=np):
    """(..., H, W, C) -> (..., H//k, W//k, C*k*k), each patch flattened channel-major.

    Rows/columns beyond a multiple of k are dropped; `base_patches` refuses such inputs
    first (`check_divisible`), so no caller reaches this with a remainder.
    """
    *lead, h, w, c = img.shape
    hp, wp = h // k, w // k
    img = img[..., : hp * k, : wp * k, :]
    x = img.reshape(*lead, hp, k, wp, k, c)
    n = len(lead)
    x = xp.transpose(x, (*range(n), n, n + 2, n + 4, n + 1, n + 3))  # (..., hp, wp, c, k, k)
    return x.reshape(*lead, hp, wp, c * k * k)


def check_divisible(h: int, w: int, patch_size: int, what: str = "input") -> None:
    """One rule at every patch size (the base size included): the image must be a whole
    number of patches. The original silently drops the last rows/columns at the base
    patch size only; crop or pad explicitly instead (`spacenit_jax.inference` `edge=`)."""
    if patch_size < 1:
        raise ValueError(f"{what}: patch size must be >= 1, got {patch_size}")
    if h < patch_size or w < patch_size or h % patch_size or w % patch_size:
        raise ValueError(
            f"{what}: spatial size {h}x{w} is not divisible by the patch size {patch_size} "
            f"(crop or pad it to a multiple of {patch_size} first)")


def base_patches(img, patch_size: int, base_patch_size: int, mode: PatchResize,
                 what: str = "input", xp=np):
    """Cut a channel-last group image into patches resized to the base patch size.

    img: (..., H, W, C) with H, W the stored pixels (patch_size is in those pixels).
    Returns (..., H//P, W//P, C*P0*P0), flattened channel-major like the original's
    Linear weight. `what` names the input in error messages. Raises ValueError when H or
    W is not a whole number of patches, at every P.
    """
    p, p0 = patch_size, base_patch_size
    h, w = img.shape[-3], img.shape[-2]
    check_divisible(h, w, p, what)
    if mode == "input" and p == p0:
        return patchify(img, p0, xp)
    hp, wp = h // p, w // p
    dtype = img.dtype
    if mode == "input":
        mh = bicubic_matrix(h, hp * p0).astype(np.float32)
        mw = bicubic_matrix(w, wp * p0).astype(np.float32)
        x = xp.einsum("...hwc,Hh->...Hwc", img.astype(xp.float32), mh)
        x = xp.einsum("...Hwc,Ww->...HWc", x, mw)
        return patchify(x, p0, xp).astype(dtype)
    a = area_matrix(p0, p).astype(np.float32)  # resizes a P0 kernel to P: (P, P0)
    x = patchify(img.astype(xp.float32), p, xp)
    x = x.reshape(*x.shape[:-1], -1, p, p)  # (..., hp, wp, c, p, p)
    x = xp.einsum("...cij,iI,jJ->...cIJ", x, a, a)
    return x.reshape(*x.shape[:-3], -1).astype(dtype)


def sensor_patches(layout: TokenLayout, label: str, img, patch_size: int, temporal: bool,
                   xp=np):
    """All group patches of one sensor image.

    img: channel-last (..., H, W, T, C), C = the sensor's channel count in band order
    (T = 1 for a single image). `temporal` says whether tokens carry timestep ids (the
    original treats a 5-D input as temporal and a 4-D one as not). Returns
    ({group key: (..., T*Hp*Wp, K_g)} with patch index (t*Hp + r)*Wp + c, SensorGrid).
    """
    spec = sensors.get(label)
    if img.shape[-1] != spec.num_channels:
        raise ValueError(
            f"sensor {label!r}: expected {spec.num_channels} channels ({', '.join(spec.bands)}) "
            f"in the last axis, got shape {tuple(img.shape)}"
        )
    x = xp.moveaxis(img, -2, -4)  # (..., T, H, W, C)
    t = x.shape[-4]
    pix = layout.patch_pixels(label, patch_size)
    out = {}
    grid = None
    for grp in layout.sensor_groups(label):
        sub = x[..., list(grp.channels)] if len(grp.channels) != spec.num_channels else x
        pt = base_patches(sub, pix, layout.base_patch_size, layout.patch_resize,
                          what=f"sensor {label!r}", xp=xp)
        hp, wp = pt.shape[-3], pt.shape[-2]
        grid = SensorGrid(hp, wp, t, temporal)
        out[grp.key] = pt.reshape(*pt.shape[:-4], t * hp * wp, pt.shape[-1])
    return out, grid
