"""Per-band normalisation with the original's statistics.

Two strategies, tried in this order per sensor (the original's dataset policy):
  COMPUTED   (norm_stats/computed.json, mean/std): y = (x - (mean - 2 std)) / (4 std),
             i.e. [mean - 2 std, mean + 2 std] -> [0, 1], no clipping;
  PREDEFINED (norm_stats/predefined.json, min/max): y = (x - min) / (max - min),
used when the sensor label is not in computed.json. A band missing from the sensor's
entry is an error (no fallback), as in the original.

ABSENT (-99999) cells are preserved exactly (the masker must still see them), a fully
ABSENT sensor is not touched, and NaN/+-Inf become 0 after standardisation. The
arithmetic is float64 (NumPy promotion with Python-float statistics in the original)
and the result is cast to the pipeline dtype.

The JSON files hold the original's norm_configs (computed.json, predefined.json). Where
the sample count of a band is not known (worldcover, srtm, era5_10, naip, naip_10)
"count" and "var" are null; only mean/std are used. "var" is the original's accumulated
sum of squared deviations (std**2 * count), not a variance.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Mapping

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.sensors import MISSING_VALUE

STD_MULTIPLIER = 2.0


@functools.cache
def load_stats(name: str) -> dict:
    """The packaged statistics file `name` ("computed" or "predefined")."""
    if name not in ("computed", "predefined"):
        raise ValueError(f"unknown statistics file {name!r}; known: computed, predefined")
    text = (importlib.resources.files("spacenit_jax.data") / "norm_stats" / f"{name}.json"
            ).read_text()
    return json.loads(text)


def std_bounds(mean, std, num_std: float = STD_MULTIPLIER) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) = (mean - num_std * std, mean + num_std * std), float64, per band.

    With num_std = 2 these are the bounds of the COMPUTED strategy; evaluation's
    dataset-statistics methods ("norm_no_clip_2_std"...) use the same bounds with the
    benchmark's own statistics.
    """
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return mean - num_std * std, mean + num_std * std


def scale_to_unit(x, lo, hi) -> np.ndarray:
    """y = (x - lo) / (hi - lo) in float64 (per band, broadcast along the last axis).

    The one normalisation formula of both strategies (and of evaluation's bounds-based
    dataset normalisation): [lo, hi] -> [0, 1], no clipping.
    """
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return (np.asarray(x, np.float64) - lo) / (hi - lo)


@functools.cache
def band_range(label: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(lo, hi, strategy) per band in the sensor's band order: y = (x - lo) / (hi - lo)."""
    bands = sensors.get(label).bands
    computed = load_stats("computed")
    if label in computed:
        entry, strategy = computed[label], "computed"
    else:
        predefined = load_stats("predefined")
        if label not in predefined:
            raise KeyError(
                f"no normalisation statistics for sensor {label!r} in computed.json or "
                "predefined.json")
        entry, strategy = predefined[label], "predefined"
    lo, hi = [], []
    for band in bands:
        if band not in entry:
            raise KeyError(
                f"{strategy}.json: sensor {label!r} has no statistics for band {band!r} "
                f"(has {list(entry)})")
        st = entry[band]
        if strategy == "computed":
            lo.append(float(st["mean"]))  # turned into bounds below
            hi.append(float(st["std"]))
        else:
            lo.append(float(st["min"]))
            hi.append(float(st["max"]))
    lo_a, hi_a = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if strategy == "computed":
        lo_a, hi_a = std_bounds(lo_a, hi_a)
    if np.any(hi_a <= lo_a):
        raise ValueError(f"{strategy}.json: sensor {label!r} has a band with max <= min")
    lo_a.setflags(write=False)
    hi_a.setflags(write=False)
    return lo_a, hi_a, strategy


def _finite(y: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(y)
    if bad.any():
        y = np.where(bad, 0, y)
    return y


def normalize_array(label: str, x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Normalise one sensor array (channel-last, band order of the registry)."""
    spec = sensors.get(label)
    if x.shape[-1] != spec.num_channels:
        raise ValueError(
            f"sensor {label!r}: expected {spec.num_channels} channels in the last axis for "
            f"normalisation, got shape {x.shape}")
    absent = x == MISSING_VALUE
    if absent.all():  # a fully missing sensor is left untouched
        return x.astype(dtype, copy=False)
    lo, hi, _ = band_range(label)
    y = scale_to_unit(x, lo, hi)
    if absent.any():
        y[absent] = MISSING_VALUE
    return _finite(y).astype(dtype)


def clean_array(x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Cast and replace NaN/+-Inf by 0 (missing values -99999 kept): what the original
    does to every array, normalised or not."""
    return _finite(np.asarray(x)).astype(dtype, copy=False)


def normalize_sample(arrays: Mapping[str, np.ndarray], dtype=np.float32,
                     enabled: bool = True) -> dict[str, np.ndarray]:
    """Normalise (if enabled) and clean every sensor array of a sample."""
    out = {}
    for label, x in arrays.items():
        out[label] = normalize_array(label, x, dtype) if enabled else clean_array(x, dtype)
    return out
