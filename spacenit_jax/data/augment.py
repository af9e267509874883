"""Augmentations on channel-last per-sample arrays, from explicit RNGs.

Arrays are those of `h5.Sample`: space+time (H, W, T, C), space-only (H, W, 1, C),
time-only (T, C), constant (C,); H and W are axes 0 and 1 for every spatial sensor.

Differences from the original, on purpose:
- every draw comes from the record's own numpy Generator (the original uses Python's
  global `random` once per batch): the dihedral symmetry is per sample and per view;
- CutMix cuts on the real H/W axes of each spatial sensor (the original reads H and W
  from axes 1 and 2, which are channels and height in its channel-first batches) and
  scales the box by the sensor's stored pixels per base pixel (naip_10);
- SensorDropout marks a dropped sensor fully ABSENT instead of deleting it, so array
  shapes (and hence the packing plan) stay fixed; the masker then marks all its tokens
  ABSENT and it vanishes from every token stream, which is what deletion meant.

A transform is `apply(samples, rngs) -> samples` over a list of samples (one batch),
each sample with its own Generator; only CutMix looks at a neighbour (sample i mixes
with sample i+1, cyclically, as in the original).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.sensors import MISSING_VALUE

Arrays = dict[str, np.ndarray]


def dihedral(x: np.ndarray, sym: int) -> np.ndarray:
    """One of the 8 symmetries on axes (0, 1) = (H, W), numbered as the original does:
    0 identity; 1, 2, 3 rot90 by k = 1, 2, 3; 4 flip W; 5 flip H; 6 rot90 then flip W;
    7 rot90 then flip H."""
    if sym == 0:
        return x
    if sym in (1, 2, 3):
        return np.rot90(x, k=sym, axes=(0, 1))
    if sym == 4:
        return x[:, ::-1]
    if sym == 5:
        return x[::-1]
    if sym == 6:
        return np.rot90(x, k=1, axes=(0, 1))[:, ::-1]
    if sym == 7:
        return np.rot90(x, k=1, axes=(0, 1))[::-1]
    raise ValueError(f"dihedral symmetry must be 0..7, got {sym}")


class Transform:
    def apply(self, samples: list[Arrays], rngs: Sequence[np.random.Generator]
              ) -> list[Arrays]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class NoTransform(Transform):
    def apply(self, samples, rngs):
        return list(samples)


@dataclasses.dataclass(frozen=True)
class Dihedral(Transform):
    """Random D4 symmetry per sample, the same for all its spatial sensors."""

    def apply(self, samples, rngs):
        out = []
        for arrays, rng in zip(samples, rngs, strict=True):
            sym = int(rng.integers(0, 8))
            out.append({lab: np.ascontiguousarray(dihedral(x, sym))
                        if sensors.get(lab).is_spatial else x for lab, x in arrays.items()})
        return out


@dataclasses.dataclass(frozen=True)
class CutMix(Transform):
    """Paste a Beta(alpha, alpha)-sized box of sample i+1 into sample i (no label mixing)."""

    alpha: float = 1.0

    def apply(self, samples, rngs):
        n = len(samples)
        out = []
        for i, (arrays, rng) in enumerate(zip(samples, rngs, strict=True)):
            partner = samples[(i + 1) % n]
            spatial = [lab for lab in arrays if sensors.get(lab).is_spatial]
            if not spatial or n < 2:
                out.append(dict(arrays))
                continue
            lam = rng.beta(self.alpha, self.alpha)
            m0 = sensors.get(spatial[0]).pixels_per_base_pixel
            h, w = arrays[spatial[0]].shape[0] // m0, arrays[spatial[0]].shape[1] // m0
            cut = (1.0 - lam) ** 0.5
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = int(rng.integers(0, h + 1)), int(rng.integers(0, w + 1))
            y0, y1 = max(0, cy - ch // 2), min(h, cy + ch // 2)
            x0, x1 = max(0, cx - cw // 2), min(w, cx + cw // 2)
            new = dict(arrays)
            for lab in spatial:
                m = sensors.get(lab).pixels_per_base_pixel
                if partner[lab].shape != arrays[lab].shape:
                    raise ValueError(
                        f"CutMix: sensor {lab!r} shapes differ within the batch: "
                        f"{arrays[lab].shape} vs {partner[lab].shape}")
                x = arrays[lab].copy()
                x[y0 * m:y1 * m, x0 * m:x1 * m] = partner[lab][y0 * m:y1 * m, x0 * m:x1 * m]
                new[lab] = x
            out.append(new)
        return out


@dataclasses.dataclass(frozen=True)
class SensorDropout(Transform):
    """Drop each present sensor with drop_prob (keeping >= min_sensors): fill ABSENT."""

    drop_prob: float = 0.2
    min_sensors: int = 1

    def apply(self, samples, rngs):
        out = []
        for arrays, rng in zip(samples, rngs, strict=True):
            present = [lab for lab, x in arrays.items() if not np.all(x == MISSING_VALUE)]
            if len(present) <= self.min_sensors:
                out.append(dict(arrays))
                continue
            dropped = [lab for lab in present if rng.random() < self.drop_prob]
            kept = len(present) - len(dropped)
            while kept < self.min_sensors:
                dropped.pop(int(rng.integers(0, len(dropped))))
                kept += 1
            new = dict(arrays)
            for lab in dropped:
                new[lab] = np.full_like(arrays[lab], MISSING_VALUE)
            out.append(new)
        return out


@dataclasses.dataclass(frozen=True)
class Compose(Transform):
    transforms: tuple[Transform, ...] = ()

    def apply(self, samples, rngs):
        for t in self.transforms:
            samples = t.apply(samples, rngs)
        return list(samples)


_TYPES = {"no_transform": NoTransform, "none": NoTransform, "dihedral": Dihedral,
          "cutmix": CutMix, "sensor_dropout": SensorDropout}


def build_transform(config: Any) -> Transform:
    """From a name ("dihedral"), None, or a dict {"type": ..., **kwargs} /
    {"type": "compose", "transforms": [...]}; the original's TransformConfig as a dict is
    also accepted ({"transform_type": ..., "transform_kwargs": {...}})."""
    if config is None:
        return NoTransform()
    if isinstance(config, Transform):
        return config
    if isinstance(config, str):
        config = {"type": config}
    if not isinstance(config, Mapping):
        raise TypeError(f"augmentation config must be a name or a dict, got {config!r}")
    config = dict(config)
    if "transform_type" in config:
        config = {"type": config.pop("transform_type"), **dict(config.pop("transform_kwargs", {}) or {})}
    kind = config.pop("type", None)
    if kind == "compose":
        subs = config.pop("transforms", [])
        if config:
            raise ValueError(f"compose augmentation: unknown fields {sorted(config)}")
        return Compose(tuple(build_transform(s) for s in subs))
    if kind not in _TYPES:
        raise ValueError(f"unknown augmentation type {kind!r}; known: {sorted(_TYPES)} + compose")
    cls = _TYPES[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(config) - fields
    if unknown:
        raise ValueError(f"augmentation {kind!r}: unknown fields {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**config)
