"""Token visibility masks in the tokenizer's token order.

States (`tokenization.TokenState`, the original's values): 0 VISIBLE (online encoder),
1 TARGET_ONLY (target encoder only), 2 PREDICTED (decoder queries / loss), 3 ABSENT (no
data: in no stream).

Token order is the tokenizer's (`tokenization.sample_tokens`): per configured sensor a
type token, then its patch tokens time-major, then spectral group, then patch row, then
column. Every strategy and the ABSENT detection work on a (T, G, Hp, Wp) view of a
sensor's tokens and flatten it C-order, so they agree with the tokenizer by
construction. The original's ABSENT marking (group-major, time-fastest) and its
spatial / spectral structured masks assume other orders than its own tokenizer
(time-major), so for T > 1 they hit the wrong tokens; here they cannot. Here a spatial block is one patch position across all groups
and timesteps, a temporal block one timestep across all groups and positions, a
spectral block one group across all timesteps and positions.

Strategies (`build_masking({"type": ..., **fields})`, the original's names and
defaults): none, random, spatial, temporal, spectral, cross_sensor(_random), range,
scheduled, composite, plus union / intersection / cascade composition of
sub-strategies. A strategy is called per sensor per sample with that record's own
numpy Generator (the original: torch's global RNG), and "scheduled" reads the global
batch index as its step (the original: a per-worker batch counter that is not
checkpointed), so masks are reproducible and resume exactly.

Every strategy also gives upper bounds on its VISIBLE and PREDICTED counts for a sensor
with a given token geometry; the packing plan sizes the online / decoder streams with
them. ABSENT detection only ever lowers these counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.data.budget import Geometry, sensor_geometry
from spacenit_jax.sensors import MISSING_VALUE
from spacenit_jax.tokenization import TokenLayout, TokenState

VISIBLE, TARGET_ONLY, PREDICTED, ABSENT = TokenState  # short names for the module
STATE_DTYPE = np.int8
STRUCTURES = ("random", "spatial", "temporal", "spectral")


def absent_tokens(layout: TokenLayout, label: str, x: np.ndarray, patch_size: int
                  ) -> np.ndarray:
    """(N,) bool in tokenizer order: every value of the token's patch is ABSENT.

    A patch token (t, g, r, c) is ABSENT iff all channels of the sensor (not only its
    group's) over its P*m x P*m pixels at timestep t equal -99999, checked on the
    un-resized input (the original's rule), then broadcast to all groups.
    """
    geo = sensor_geometry(layout, label, x, patch_size)
    pp = layout.patch_pixels(label, patch_size)
    a = (x == MISSING_VALUE).reshape(geo.hp, pp, geo.wp, pp, x.shape[2], x.shape[3])
    per = a.all(axis=(1, 3, 5))  # (hp, wp, T)
    per = np.moveaxis(per, 2, 0)  # (T, hp, wp)
    return np.broadcast_to(per[:, None], (geo.t, geo.g, geo.hp, geo.wp)).reshape(-1)


# --------------------------------------------------------------------------------------
# The primitive


def _counts(units: int, enc: float, dec: float, at_least_one: bool) -> tuple[int, int]:
    n_enc = int(units * enc)
    if at_least_one and enc > 0 and units > 0:
        n_enc = max(n_enc, 1)
    n_enc = min(n_enc, units)
    n_dec = min(int(units * dec), units - n_enc)
    return n_enc, n_dec


def _block_axis(structure: str, geo: Geometry) -> tuple[int, ...]:
    """Shape of the per-block state array broadcast over (T, G, Hp, Wp)."""
    if structure == "spatial":
        return (1, 1, geo.hp, geo.wp)
    if structure == "temporal":
        return (geo.t, 1, 1, 1)
    if structure == "spectral":
        return (1, geo.g, 1, 1)
    raise ValueError(f"unknown mask structure {structure!r}; known: {STRUCTURES}")


def create_mask(geo: Geometry, enc: float, dec: float, structure: str,
                rng: np.random.Generator) -> np.ndarray:
    """All TARGET_ONLY, then n_enc random units VISIBLE and n_dec PREDICTED.

    n_enc = int(units * enc) (at least 1 for "random" when enc > 0), n_dec =
    int(units * dec) clipped to units - n_enc; a unit is a token ("random"), a patch
    position ("spatial"), a timestep ("temporal") or a spectral group ("spectral").
    """
    if structure == "random":
        n = geo.n
        n_enc, n_dec = _counts(n, enc, dec, True)
        out = np.full(n, TARGET_ONLY, STATE_DTYPE)
        perm = rng.permutation(n)
        out[perm[:n_enc]] = VISIBLE
        out[perm[n_enc:n_enc + n_dec]] = PREDICTED
        return out
    shape = _block_axis(structure, geo)
    units = int(np.prod(shape))
    n_enc, n_dec = _counts(units, enc, dec, False)
    blocks = np.full(units, TARGET_ONLY, STATE_DTYPE)
    perm = rng.permutation(units)
    blocks[perm[:n_enc]] = VISIBLE
    blocks[perm[n_enc:n_enc + n_dec]] = PREDICTED
    return np.broadcast_to(blocks.reshape(shape), tuple(geo)).reshape(-1).copy()


def create_mask_bounds(geo: Geometry, enc: float, dec: float, structure: str
                       ) -> tuple[int, int]:
    """Exact VISIBLE / PREDICTED counts of create_mask (they do not depend on the RNG)."""
    if structure == "random":
        return _counts(geo.n, enc, dec, True)
    shape = _block_axis(structure, geo)
    units = int(np.prod(shape))
    per = geo.n // units
    n_enc, n_dec = _counts(units, enc, dec, False)
    return n_enc * per, n_dec * per


# --------------------------------------------------------------------------------------
# Strategies


class Strategy:
    """mask(...) -> (N,) int8 states without ABSENT; bounds(...) -> (max VISIBLE, max PREDICTED)."""

    def mask(self, label: str, geo: Geometry, rng: np.random.Generator, step: int
             ) -> np.ndarray:
        raise NotImplementedError

    def bounds(self, label: str, geo: Geometry) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def is_none(self) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class NoMasking(Strategy):
    """Every token VISIBLE (objectives without masking)."""

    def mask(self, label, geo, rng, step):
        return np.zeros(geo.n, STATE_DTYPE)

    def bounds(self, label, geo):
        return geo.n, 0

    @property
    def is_none(self) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class _Fixed(Strategy):
    encode_ratio: float = 0.25
    decode_ratio: float = 0.0
    structure = "random"

    def mask(self, label, geo, rng, step):
        return create_mask(geo, self.encode_ratio, self.decode_ratio, self.structure, rng)

    def bounds(self, label, geo):
        return create_mask_bounds(geo, self.encode_ratio, self.decode_ratio, self.structure)


@dataclasses.dataclass(frozen=True)
class RandomMasking(_Fixed):
    structure = "random"


@dataclasses.dataclass(frozen=True)
class SpatialMasking(_Fixed):
    structure = "spatial"


@dataclasses.dataclass(frozen=True)
class TemporalMasking(_Fixed):
    encode_ratio: float = 0.5
    structure = "temporal"


@dataclasses.dataclass(frozen=True)
class SpectralMasking(_Fixed):
    encode_ratio: float = 0.5
    structure = "spectral"


def _check_structure(s: str) -> None:
    if s not in STRUCTURES:
        raise ValueError(f"unknown mask structure {s!r}; known: {STRUCTURES}")


@dataclasses.dataclass(frozen=True)
class CrossSensorMasking(Strategy):
    """Base mask clamped to [min_encoded, max_encoded] visible; decode-only sensors
    are PREDICTED except max(1, int(0.05 N)) VISIBLE tokens (kept so that the sensor's
    embedding still gets gradients)."""

    base_strategy: str = "random"
    base_encode_ratio: float = 0.25
    base_decode_ratio: float = 0.0
    min_encoded: float = 0.1
    max_encoded: float = 0.9
    decode_only_sensors: tuple[str, ...] = ()
    decode_only_visible: float = 0.05

    def __post_init__(self):
        _check_structure(self.base_strategy)
        object.__setattr__(self, "decode_only_sensors", tuple(self.decode_only_sensors))
        for lab in self.decode_only_sensors:
            sensors.get(lab)

    def _decode_only_vis(self, n: int) -> int:
        return max(1, int(self.decode_only_visible * n)) if n else 0

    def mask(self, label, geo, rng, step):
        n = geo.n
        if label in self.decode_only_sensors:
            out = np.full(n, PREDICTED, STATE_DTYPE)
            out[rng.permutation(n)[:self._decode_only_vis(n)]] = VISIBLE
            return out
        out = create_mask(geo, self.base_encode_ratio, self.base_decode_ratio,
                          self.base_strategy, rng)
        if n == 0:
            return out
        vis = out == VISIBLE
        r = vis.sum() / n  # no ABSENT yet: every token counts
        if r < self.min_encoded:
            target = int(self.min_encoded * n)
            cand = np.flatnonzero(~vis)
            extra = max(0, target - int(vis.sum()))
            out[cand[rng.permutation(cand.size)[:extra]]] = VISIBLE
        elif r > self.max_encoded:
            target = int(self.max_encoded * n)
            cand = np.flatnonzero(vis)
            out[cand[rng.permutation(cand.size)[:cand.size - target]]] = PREDICTED
        return out

    def bounds(self, label, geo):
        n = geo.n
        if label in self.decode_only_sensors:
            v = self._decode_only_vis(n)
            return v, n - v
        v, p = create_mask_bounds(geo, self.base_encode_ratio, self.base_decode_ratio,
                                  self.base_strategy)
        hi = int(self.max_encoded * n)
        v_out = max(int(self.min_encoded * n), min(v, hi))
        return v_out, min(n, p + max(0, v - hi))


@dataclasses.dataclass(frozen=True)
class RangeMasking(Strategy):
    """encode ratio ~ U(min_encode, max_encode) per sensor per sample."""

    min_encode: float = 0.1
    max_encode: float = 0.9
    decode_ratio: float = 0.0
    structure: str = "random"

    def __post_init__(self):
        _check_structure(self.structure)
        if self.min_encode > self.max_encode:
            raise ValueError(f"range masking: min_encode {self.min_encode} > max_encode {self.max_encode}")

    def mask(self, label, geo, rng, step):
        enc = rng.uniform(self.min_encode, self.max_encode)
        return create_mask(geo, enc, self.decode_ratio, self.structure, rng)

    def bounds(self, label, geo):
        v = create_mask_bounds(geo, self.max_encode, self.decode_ratio, self.structure)[0]
        p = create_mask_bounds(geo, self.min_encode, self.decode_ratio, self.structure)[1]
        return v, p


@dataclasses.dataclass(frozen=True)
class ScheduledMasking(Strategy):
    """encode ratio ramps from initial to final over warmup_steps (step = batch index)."""

    initial_encode_ratio: float = 0.1
    final_encode_ratio: float = 0.5
    warmup_steps: int = 10000
    decode_ratio: float = 0.0
    structure: str = "random"

    def __post_init__(self):
        _check_structure(self.structure)

    def ratio(self, step: int) -> float:
        a, b = self.initial_encode_ratio, self.final_encode_ratio
        return a + (b - a) * min(step / max(self.warmup_steps, 1), 1.0)

    def mask(self, label, geo, rng, step):
        return create_mask(geo, self.ratio(step), self.decode_ratio, self.structure, rng)

    def bounds(self, label, geo):
        lo = min(self.initial_encode_ratio, self.final_encode_ratio)
        hi = max(self.initial_encode_ratio, self.final_encode_ratio)
        v = create_mask_bounds(geo, hi, self.decode_ratio, self.structure)[0]
        p = create_mask_bounds(geo, lo, self.decode_ratio, self.structure)[1]
        return v, p


@dataclasses.dataclass(frozen=True)
class CompositeMasking(Strategy):
    """One sub-strategy drawn per sensor per sample (weights default uniform)."""

    strategies: tuple[Strategy, ...] = ()
    weights: tuple[float, ...] = ()

    def __post_init__(self):
        if not self.strategies:
            raise ValueError("composite masking needs at least one sub-strategy")
        w = tuple(self.weights) or (1.0,) * len(self.strategies)
        if len(w) != len(self.strategies) or min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"composite masking: bad weights {self.weights} for "
                             f"{len(self.strategies)} strategies")
        object.__setattr__(self, "weights", w)

    def mask(self, label, geo, rng, step):
        p = np.asarray(self.weights, np.float64)
        i = int(rng.choice(len(self.strategies), p=p / p.sum()))
        return self.strategies[i].mask(label, geo, rng, step)

    def bounds(self, label, geo):
        b = [s.bounds(label, geo) for s, w in zip(self.strategies, self.weights, strict=True) if w > 0]
        return max(x[0] for x in b), max(x[1] for x in b)


def compose_masks(masks: Sequence[np.ndarray], rule: str) -> np.ndarray:
    """Combine masks: union = elementwise min (the more visible state), intersection =
    max, cascade = sequential max keeping ABSENT; ABSENT anywhere stays ABSENT."""
    if not masks:
        raise ValueError("compose_masks needs at least one mask")
    if len(masks) == 1:
        return masks[0]
    stack = np.stack(masks)
    if rule == "union":
        out = stack.min(axis=0)
        out[(stack == ABSENT).any(axis=0)] = ABSENT
        return out
    if rule == "intersection":
        return stack.max(axis=0)
    if rule == "cascade":
        out = masks[0].copy()
        for m in masks[1:]:
            absent = out == ABSENT
            out = np.maximum(out, m)
            out[absent] = ABSENT
        return out
    raise ValueError(f"unknown mask composition rule {rule!r}; known: union, intersection, cascade")


@dataclasses.dataclass(frozen=True)
class ComposedMasking(Strategy):
    """Every sub-strategy applied, then combined by `rule` (union / intersection / cascade)."""

    rule: str = "union"
    strategies: tuple[Strategy, ...] = ()

    def __post_init__(self):
        if not self.strategies:
            raise ValueError(f"{self.rule} masking needs at least one sub-strategy")
        if self.rule not in ("union", "intersection", "cascade"):
            raise ValueError(f"unknown composition rule {self.rule!r}")

    def mask(self, label, geo, rng, step):
        return compose_masks([s.mask(label, geo, rng, step) for s in self.strategies], self.rule)

    def bounds(self, label, geo):
        b = [s.bounds(label, geo) for s in self.strategies]
        n = geo.n
        vs, ps = [x[0] for x in b], [x[1] for x in b]
        if self.rule == "union":  # VISIBLE if any is; PREDICTED only if all are
            return min(n, sum(vs)), min(ps)
        return min(vs), min(n, sum(ps))  # max-combination: VISIBLE only if all are


_FIXED = {"random": RandomMasking, "spatial": SpatialMasking, "temporal": TemporalMasking,
          "spectral": SpectralMasking}


def build_masking(config: Any) -> Strategy:
    """From the original's build_masking dicts ({"type": ..., **fields}), a Strategy, a
    name, or None / "none" (no masking)."""
    if config is None:
        return NoMasking()
    if isinstance(config, Strategy):
        return config
    if isinstance(config, str):
        config = {"type": config}
    if not isinstance(config, Mapping):
        raise TypeError(f"masking config must be a dict with a 'type', got {config!r}")
    cfg = dict(config)
    kind = cfg.pop("type", None)
    if kind in ("none", "no_mask", None):
        cls: type = NoMasking
    elif kind in _FIXED:
        cls = _FIXED[kind]
    elif kind in ("cross_sensor", "cross_sensor_random"):
        cls = CrossSensorMasking
        if "decode_only_sensors" in cfg:
            cfg["decode_only_sensors"] = tuple(cfg["decode_only_sensors"])
    elif kind == "range":
        cls = RangeMasking
    elif kind == "scheduled":
        cls = ScheduledMasking
    elif kind == "composite":
        cls = CompositeMasking
        cfg["strategies"] = tuple(build_masking(s) for s in cfg.get("strategies", ()))
        cfg["weights"] = tuple(cfg.get("weights", ()) or ())
    elif kind in ("union", "intersection", "cascade", "compose"):
        cls = ComposedMasking
        if kind != "compose":
            cfg["rule"] = kind
        cfg["strategies"] = tuple(build_masking(s) for s in cfg.get("strategies", ()))
    else:
        raise ValueError(
            f"unknown masking type {kind!r}; known: none, random, spatial, temporal, spectral, "
            "cross_sensor(_random), range, scheduled, composite, union, intersection, cascade")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(cfg) - fields
    if unknown:
        raise ValueError(f"masking {kind!r}: unknown fields {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**cfg)


# --------------------------------------------------------------------------------------
# Per sample


class SensorMask(NamedTuple):
    label: str
    geometry: Geometry
    states: np.ndarray  # (N,) patch-token states in tokenizer order (ABSENT applied)
    type_state: int


def mask_sample(layout: TokenLayout, arrays: Mapping[str, np.ndarray], patch_size: int,
                strategy: Strategy, rng: np.random.Generator, step: int = 0
                ) -> list[SensorMask]:
    """Mask every configured sensor of one sample; ABSENT overrides the strategy."""
    out = []
    for label in layout.sensor_labels:
        if label not in arrays:
            continue
        x = arrays[label]
        geo = sensor_geometry(layout, label, x, patch_size)
        states = strategy.mask(label, geo, rng, step)
        absent = absent_tokens(layout, label, x, patch_size)
        if absent.any():
            states = np.where(absent, ABSENT, states).astype(STATE_DTYPE)
        type_state = ABSENT if absent.all() else VISIBLE
        out.append(SensorMask(label, geo, states, type_state))
    return out


def visibility_vector(masks: Sequence[SensorMask]) -> np.ndarray:
    """(N_total,) states in tokenizer order: per sensor its type token (VISIBLE, or
    ABSENT when all its tokens are), then its patch tokens."""
    parts = []
    for m in masks:
        parts.append(np.asarray([m.type_state], STATE_DTYPE))
        parts.append(m.states)
    return np.concatenate(parts) if parts else np.zeros(0, STATE_DTYPE)
