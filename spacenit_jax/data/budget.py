"""Token arithmetic: the token grid of a sensor, the token budget, per-crop-size counts.

A crop is hw_p x hw_p patches; a sensor's token grid (`Geometry`) is then T x G x hw_p x
hw_p patch tokens (T timesteps for a space+time sensor, 1 for a space-only one; G its
spectral groups in the layout), plus one sensor-type token per sensor.

Token budget -> number of timesteps (the original's rule): with
    per_step = sum over space+time sensors of G * hw_p^2,
    fixed    = sum over space-only sensors of G * hw_p^2,
T_out = min(floor((budget - fixed) / per_step), 12), and a crop size whose single
timestep does not fit (budget - fixed < per_step) is not allowed. Type tokens are not
counted by the budget. T_out depends only on hw_p and the sensor set, so every sample of
a batch drawn at one hw_p has the same token count when nothing is missing; with the
nano sensor set and budget 2250, hw_p = 1..12 gives T_out 12, 12, 12, 12, 12, 9, 6, 4,
3, 2, 2, 1 and 87, 321, 711, 1257, 1959, 2169, 2067, 1929, 1953, 1809, 2187, 1737
tokens (type tokens included).

`hw_shape` adds the masking strategy's upper bounds on VISIBLE and PREDICTED tokens: the
packing plan sizes its streams with them (missing data only ever lowers the counts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.sensors import MAX_TEMPORAL_DEPTH, SensorKind
from spacenit_jax.tokenization import TokenLayout


class Geometry(NamedTuple):
    """Token grid of one sensor in one sample: N = t * g * hp * wp patch tokens."""

    t: int  # timesteps (1 for a space-only sensor)
    g: int  # spectral groups
    hp: int  # patch rows
    wp: int  # patch columns

    @property
    def n(self) -> int:
        return self.t * self.g * self.hp * self.wp


def geometry(layout: TokenLayout, label: str, hp: int, wp: int, t: int) -> Geometry:
    """Geometry of sensor `label` on an hp x wp patch grid with t timesteps available."""
    spec = sensors.get(label)
    if spec.kind not in (SensorKind.SPACE_TIME, SensorKind.SPACE):
        raise ValueError(f"sensor {label!r} ({spec.kind.value}) has no patch tokens")
    return Geometry(t if spec.kind == SensorKind.SPACE_TIME else 1,
                    len(layout.sensor_groups(label)), hp, wp)


def sensor_geometry(layout: TokenLayout, label: str, x: np.ndarray, patch_size: int
                    ) -> Geometry:
    """Geometry of a channel-last (H, W, T, C) sensor array at a patch size.

    H and W must be multiples of the sensor's patch side in stored pixels
    (`layout.patch_pixels`); raises ValueError naming the sensor otherwise.
    """
    pp = layout.patch_pixels(label, patch_size)
    if x.ndim != 4:
        raise ValueError(f"sensor {label!r}: expected (H, W, T, C), got shape {x.shape}")
    h, w, t = x.shape[:3]
    if h % pp or w % pp:
        raise ValueError(
            f"sensor {label!r}: {h}x{w} pixels are not a multiple of its {pp}-pixel patches")
    return geometry(layout, label, h // pp, w // pp, t)


def hw_geometries(layout: TokenLayout, hw: int, t_out: int) -> dict[str, Geometry]:
    """Geometry of every configured sensor for an hw x hw-patch crop of t_out timesteps."""
    return {label: geometry(layout, label, hw, hw, t_out) for label in layout.sensor_labels}


def _per_step_fixed(layout: TokenLayout, hw_p: int) -> tuple[int, int]:
    """(patch tokens per timestep, patch tokens independent of time) at crop size hw_p."""
    per_step = fixed = 0
    for label, geo in hw_geometries(layout, hw_p, 1).items():
        if sensors.get(label).kind == SensorKind.SPACE_TIME:
            per_step += geo.n
        else:
            fixed += geo.n
    return per_step, fixed


def timesteps_for_budget(layout: TokenLayout, hw_p: int, budget: int,
                         temporal_length: int = MAX_TEMPORAL_DEPTH) -> int:
    """T_out for crop size hw_p under a token budget (see the module docstring)."""
    if hw_p < 1:
        raise ValueError(f"hw_p must be >= 1, got {hw_p}")
    per_step, fixed = _per_step_fixed(layout, hw_p)
    if per_step == 0:
        return 1
    t_star = (budget - fixed) / per_step
    if t_star < 1:
        raise ValueError(
            f"token budget {budget} cannot hold one timestep of a {hw_p}x{hw_p}-patch crop of "
            f"{list(layout.sensor_labels)} ({fixed} fixed + {per_step} per timestep tokens)")
    return min(int(np.floor(t_star)), temporal_length)


def max_hw_for_budget(layout: TokenLayout, budget: int, limit: int = 4096) -> int:
    """Largest hw_p whose crop fits one timestep in the budget."""
    best = 0
    for hw in range(1, limit + 1):
        per_step, fixed = _per_step_fixed(layout, hw)
        if per_step and budget - fixed < per_step or not per_step and fixed > budget:
            break
        best = hw
    return best


def token_count(layout: TokenLayout, hw_p: int, budget: int, type_tokens: bool = True) -> int:
    """Tokens of one sample without missing data: patch tokens (+ one type token per sensor)."""
    t_out = timesteps_for_budget(layout, hw_p, budget)
    n = sum(geo.n for geo in hw_geometries(layout, hw_p, t_out).values())
    return n + (len(layout.sensor_labels) if type_tokens else 0)


def token_table(layout: TokenLayout, budget: int, hw_list: Sequence[int]
                ) -> Mapping[int, tuple[int, int, int]]:
    """{hw_p: (T_out, patch tokens, patch + type tokens)}."""
    out = {}
    for hw in hw_list:
        t = timesteps_for_budget(layout, hw, budget)
        n = token_count(layout, hw, budget, type_tokens=False)
        out[hw] = (t, n, n + len(layout.sensor_labels))
    return out


class Bounded(Protocol):
    """What the arithmetic needs of a masking strategy (`masking.Strategy`)."""

    is_none: bool

    def bounds(self, label: str, geo: Geometry) -> tuple[int, int]: ...


def sample_bounds(strategy: Bounded, geometries: Mapping[str, Geometry]) -> tuple[int, int]:
    """Upper bounds on VISIBLE and PREDICTED tokens of a whole sample, type tokens (always
    VISIBLE unless the sensor is entirely missing) included."""
    v = p = 0
    for label, geo in geometries.items():
        bv, bp = strategy.bounds(label, geo)
        v += bv + 1
        p += bp
    return v, p


@dataclasses.dataclass(frozen=True)
class HwShape:
    """Token counts of one sample at crop size hw_p, without missing data."""

    hw_p: int
    t_out: int
    tokens: int  # patch + type tokens
    group_tokens: tuple[tuple[str, int], ...]  # (group key, patch tokens)
    max_visible: int  # incl. type tokens
    max_predicted: int


def hw_shape(layout: TokenLayout, budget: int, hw: int, strategy: Bounded) -> HwShape:
    """Counts of one sample at crop size hw under `strategy`."""
    t_out = timesteps_for_budget(layout, hw, budget)
    geos = hw_geometries(layout, hw, t_out)
    groups = tuple((grp.key, geos[grp.label].t * hw * hw) for grp in layout.groups)
    n = sum(c for _, c in groups) + len(layout.sensor_labels)
    v, d = (n, 0) if strategy.is_none else sample_bounds(strategy, geos)
    return HwShape(hw, t_out, n, groups, v, d)
