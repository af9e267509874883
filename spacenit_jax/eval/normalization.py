"""Benchmark image normalisation: the one place that decides how benchmark pixels are scaled.

`normalize_image(image, sensor, method, stats)` with `method`:

- "pretrained" (the official setting): the pretraining standardiser of the target sensor,
  `spacenit_jax.data.normalize.normalize_array` itself (packaged COMPUTED statistics:
  [mean - 2 std, mean + 2 std] -> [0, 1], no clipping; missing-pixel fill values kept;
  NaN/Inf -> 0), so benchmark and pretraining inputs cannot drift apart;
- a dataset-statistics method (`NormMethod`, names as in the reference), computed from the
  benchmark's own per-band statistics: bounds mean +- k std (k = 1, 2 or 3 from the name),
  y = (x - lo) / (hi - lo); "yes_clip" clips to [0, 1]; "_int" quantises to 8 bit (x255,
  clip, uint8, /255); "min_max" uses the dataset min/max as bounds; "standardize" =
  (x - mean) / std; "no_norm" = identity. Arithmetic in float64. "norm_no_clip_2_std" with
  the pretraining mean/std is the pretraining standardiser's formula
  (tests/test_eval_normalization.py checks that they agree).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from spacenit_jax.data.normalize import normalize_array

PRETRAINED = "pretrained"


@dataclasses.dataclass(frozen=True)
class NormMethod:
    """A parsed normalisation method (names as in the reference)."""

    name: str
    kind: str  # "pretrained" | "bounds" | "standardize" | "none"
    num_std: float = 1.0
    clip: bool = False
    quantize: bool = False
    min_max: bool = False


_NORM_RE = re.compile(r"^norm_(yes|no)_clip(?:_(min_max)|_(\d)_std)?(_int)?$")


def parse_norm_method(name: str) -> NormMethod:
    """"pretrained", "norm_no_clip", "norm_yes_clip_2_std_int", "norm_yes_clip_min_max_int",
    "standardize", "no_norm"..."""
    key = name.lower()
    if key == PRETRAINED:
        return NormMethod(key, "pretrained")
    if key == "standardize":
        return NormMethod(key, "standardize")
    if key == "no_norm":
        return NormMethod(key, "none")
    m = _NORM_RE.match(key)
    if not m:
        raise ValueError(f"unknown normalisation method {name!r}; expected 'pretrained', "
                         "'standardize', 'no_norm' or norm_{yes|no}_clip[_2_std|_3_std|_min_max]"
                         "[_int]")
    clip, min_max, k, quant = m.groups()
    return NormMethod(key, "bounds", float(k or 1), clip == "yes", quant is not None,
                      min_max is not None)


def normalize_image(image: np.ndarray, sensor: str, method: NormMethod | str,
                    stats: dict | None = None) -> np.ndarray:
    """Normalise a channel-last image of `sensor` (bands in the sensor's order), float64.

    stats: the dataset's per-band "mean" and "std" (and "min"/"max" for min_max methods),
    each (C,); not used by "pretrained".
    """
    method = parse_norm_method(method) if isinstance(method, str) else method
    if method.kind == "pretrained":
        return normalize_array(sensor, image, np.float64)
    if stats is None:
        raise ValueError(f"normalisation {method.name!r} needs the dataset's band statistics")
    return apply_dataset_norm(image, method, stats["mean"], stats["std"], stats.get("min"),
                              stats.get("max"))


def apply_dataset_norm(x: np.ndarray, method: NormMethod, mean, std, minimum=None,
                       maximum=None) -> np.ndarray:
    """Normalise channel-last x with per-band dataset statistics (float64)."""
    if method.kind == "pretrained":
        raise ValueError("'pretrained' normalisation uses the pretraining statistics; call "
                         "normalize_image(image, sensor, 'pretrained')")
    x = np.asarray(x, np.float64)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if method.kind == "none":
        return x
    if method.kind == "standardize":
        return (x - mean) / std
    if method.min_max:
        if minimum is None or maximum is None:
            raise ValueError(f"{method.name} needs per-band min and max statistics")
        lo, hi = np.asarray(minimum, np.float64), np.asarray(maximum, np.float64)
    else:
        lo, hi = mean - method.num_std * std, mean + method.num_std * std
    y = (x - lo) / (hi - lo)
    if method.clip:
        y = np.clip(y, 0.0, 1.0)
    if method.quantize:
        y = np.clip(y * 255.0, 0, 255).astype(np.uint8).astype(np.float64) / 255.0
    return y
