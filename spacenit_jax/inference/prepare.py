"""Raw per-sensor arrays -> the model's input: sensor names, band order, units, nodata,
plausibility and normalisation.

Normalisation is `spacenit_jax.data.normalize.normalize_array`, the very function the
training pipeline applies to every sample it reads (after casting the stored values to
float32, as the H5 reader does), so the same pixels give the same model input.

Missing data: a pixel is missing when any of its bands is NaN, equals the declared
nodata value, or (Sentinel-1) equals -32768, the SAR nodata marker the original's
converter filters on. Missing pixels become `sensors.MISSING_VALUE` in every band; the
encoder turns a patch with any missing pixel into an ABSENT token (see `api`), so the
model never sees a fill value and nothing is guessed.

Plausibility check (per sensor; raises a one-line ValueError naming the sensor). Values
are summarised by the 1st and 99th percentiles of the valid pixels (at most 10^6 of them,
taken with a fixed stride):

  declared raw (normalized=False):
    sentinel2_l2a, sentinel2  surface / top-of-atmosphere reflectance x 10,000: refused
                              when p99 of |x| <= 20 (values already normalised, or
                              reflectance in 0-1: multiply by 10,000)
    landsat                   Collection-2 scaled integers: refused when p99 of |x| <= 20
    naip, naip_10             8-bit digital numbers: refused when p99 of |x| <= 3
    sentinel1 (units="db")    backscatter in dB: refused when every value is >= 0 and
                              p99 <= 2 (looks like linear power: pass units "linear", or
                              already normalised)
    sentinel1 (units="linear") linear power: refused when any value is negative (looks
                              like dB already)
    worldcover                ESA WorldCover class codes {0, 10, 20, ..., 100, 95}: refused
                              when any other value occurs
    srtm and all others       not checked in this direction (e.g. elevations of 0-3 m are
                              real on coastal flats, so "looks normalised" is not obvious)
  declared normalised (normalized=True), every sensor:
    refused when p1 < -5 or p99 > 8 (the statistics map mean +- 2 std to [0, 1], so
    normalised data of real scenes stays well inside; raw reflectance, raw dB, class
    codes and elevations in metres fall outside). Sentinel-1 linear power passed as
    normalised cannot be told apart and is not refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.data import normalize
from spacenit_jax.sensors import MISSING_VALUE, SAR_NODATA

S1_UNITS = ("db", "linear")
LINEAR_FLOOR = 1e-10  # linear power floor before 10*log10 (the original converter's)
MAX_CHECK_VALUES = 1_000_000
NORMALISED_P1_MIN, NORMALISED_P99_MAX = -5.0, 8.0
WORLDCOVER_CODES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)

# The band order of a file that does not name its bands: the order data providers write
# (ascending band number for Sentinel-2 and Landsat), NOT the model's spectral-group order.
_S2_FILE = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
DEFAULT_FILE_BANDS: dict[str, tuple[str, ...]] = {
    "sentinel2_l2a": _S2_FILE,
    "sentinel2": _S2_FILE[:10] + ("B10",) + _S2_FILE[10:],
    "landsat": tuple(f"B{i}" for i in range(1, 12)),
}


def default_file_bands(label: str) -> tuple[str, ...]:
    """Band order assumed for a file of `label` without band names (see DEFAULT_FILE_BANDS;
    every other sensor: its registry order)."""
    return DEFAULT_FILE_BANDS.get(label, sensors.get(label).bands)


# --------------------------------------------------------------------------- names


def resolve_sensor(label: str, configured: Sequence[str]) -> str:
    """`label` if the model has it, else a ValueError that suggests the closest name."""
    if label in configured:
        return label
    known = sensors.all_labels()
    close = difflib.get_close_matches(label, list(configured), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    what = ("is not one of this model's sensors" if label in known
            else "is not a known sensor")
    raise ValueError(f"sensor {label!r} {what} (the model takes {', '.join(configured)}){hint}")


def canonical_band(name: str) -> str:
    """Case-insensitive band key; "B2" and "B02" are the same band."""
    key = str(name).strip().upper()
    m = re.fullmatch(r"B0*(\d+)(A?)", key)
    return f"B{int(m[1]):02d}{m[2]}" if m else key


def band_order(label: str, names: Sequence[str], what: str = "input") -> np.ndarray:
    """Indices into an axis holding bands `names` that give the model's band order.

    Raises ValueError naming the sensor for a wrong count, duplicate, unknown (with the
    closest known band) or missing band.
    """
    spec = sensors.get(label)
    want = spec.bands
    names = [str(n) for n in names]
    keys = [canonical_band(n) for n in names]
    dup = sorted({n for n, k in zip(names, keys, strict=True) if keys.count(k) > 1})
    if dup:
        raise ValueError(f"sensor {label!r} ({what}): band names {dup} appear more than once")
    lookup = {canonical_band(b): b for b in want}
    unknown = [n for n, k in zip(names, keys, strict=True) if k not in lookup]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(want), n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"sensor {label!r} ({what}): unknown band names {unknown}{hint}; the "
                         f"sensor's bands are {', '.join(want)}")
    missing = [b for b in want if canonical_band(b) not in keys]
    if missing:
        raise ValueError(f"sensor {label!r} ({what}): bands {missing} are missing; the model "
                         f"needs all of {', '.join(want)} (got {', '.join(names)})")
    return np.asarray([keys.index(canonical_band(b)) for b in want], np.int64)


# --------------------------------------------------------------------------- values


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One sensor's model input: float32, channel-last, model band order, normalised,
    MISSING_VALUE at missing pixels (all bands)."""

    array: np.ndarray
    missing_pixels: int


def _sample(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    if flat.size > MAX_CHECK_VALUES:
        flat = flat[:: -(-flat.size // MAX_CHECK_VALUES)]
    return flat


def check_plausible(label: str, valid: np.ndarray, *, normalized: bool, units: str = "db",
                    what: str = "input") -> None:
    """The documented per-sensor plausibility check (module docstring) on valid values."""
    v = _sample(np.asarray(valid, np.float64))
    if v.size == 0:
        return
    p1, p99 = np.percentile(v, [1, 99])
    head = f"sensor {label!r} ({what})"
    if normalized:
        if p1 < NORMALISED_P1_MIN or p99 > NORMALISED_P99_MAX:
            raise ValueError(
                f"{head}: values look raw, not normalised (1st-99th percentile {p1:.4g} to "
                f"{p99:.4g}; normalised data lies near 0-1): pass normalized=False")
        return
    absmax99 = np.percentile(np.abs(v), 99)
    if label in ("sentinel2_l2a", "sentinel2", "landsat") and absmax99 <= 20:
        unit = ("reflectance x 10,000 (typically 0-10,000)" if label != "landsat"
                else "Collection-2 scaled integers (typically 7,000-65,535)")
        raise ValueError(
            f"{head}: values look already normalised or scaled to 0-1 (99th percentile of "
            f"|x| is {absmax99:.4g}); expected {unit}: pass normalized=True, or rescale")
    if label in ("naip", "naip_10") and absmax99 <= 3:
        raise ValueError(f"{head}: values look already normalised or scaled to 0-1 (99th "
                         f"percentile {absmax99:.4g}); expected 8-bit digital numbers 0-255")
    if label == "sentinel1":
        if units == "db" and v.min() >= 0 and p99 <= 2:
            raise ValueError(
                f"{head}: values look like linear power or normalised data (all >= 0, 99th "
                f"percentile {p99:.4g}); expected backscatter in dB (typically -30 to +5): "
                f"pass units 'linear' to convert with 10*log10, or normalized=True")
        if units == "linear" and v.min() < 0:
            raise ValueError(
                f"{head}: units 'linear' declared but values are negative (min {v.min():.4g}"
                f"): the data look like dB already; declare units 'db'")
    if label == "worldcover":
        bad = np.setdiff1d(np.unique(v), WORLDCOVER_CODES)
        if bad.size:
            raise ValueError(
                f"{head}: values {bad[:8].tolist()} are not ESA WorldCover class codes "
                f"{list(WORLDCOVER_CODES)} (already normalised, or another land-cover scheme)")


def linear_to_db(x: np.ndarray) -> np.ndarray:
    """Linear backscatter power -> dB: 10*log10(max(x, 1e-10)) (the original converter's)."""
    return 10.0 * np.log10(np.maximum(x, LINEAR_FLOOR))


def missing_pixels(label: str, x: np.ndarray, nodata: float | None) -> np.ndarray:
    """(...,) bool over pixels: any band not finite (NaN, +-Inf), == nodata, or
    Sentinel-1's -32768."""
    bad = ~np.isfinite(x) if np.issubdtype(x.dtype, np.floating) else np.zeros(x.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        bad |= x == nodata
    if label == "sentinel1":
        bad |= x == SAR_NODATA
    bad |= x == MISSING_VALUE
    return bad.any(axis=-1)


def prepare_sensor(label: str, x, *, bands: Sequence[str] | None = None,
                   normalized: bool = False, apply_normalization: bool | None = None,
                   units: str | None = None, nodata: float | None = None,
                   check: bool = True, what: str = "input") -> Prepared:
    """Raw (or normalised) channel-last values of one sensor -> model input.

    x: (..., C) array in the order of `bands` (default: the model's band order,
    `sensors.get(label).bands`). normalized: the values are already normalised (checked
    as such, not normalised again). apply_normalization: default `not normalized`; False
    for a model trained without normalisation (the pipeline then only casts and zeroes
    NaN/Inf). units: Sentinel-1 only, "db" (default) or "linear" (converted with
    `linear_to_db`). Returns float32 in the model's band order.
    """
    if apply_normalization is None:
        apply_normalization = not normalized
    spec = sensors.get(label)
    x = np.asarray(x)
    if x.ndim < 1 or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"sensor {label!r} ({what}): expected a numeric array, got "
                         f"{x.dtype} {x.shape}")
    if units is not None and label != "sentinel1":
        raise ValueError(f"sensor {label!r} ({what}): units apply to sentinel1 only")
    units = "db" if units is None else str(units).lower()
    if units not in S1_UNITS:
        raise ValueError(f"sensor {label!r} ({what}): units must be one of {S1_UNITS}, "
                         f"got {units!r}")
    if bands is not None:
        if len(bands) != x.shape[-1]:
            raise ValueError(f"sensor {label!r} ({what}): {len(bands)} band names given for "
                             f"{x.shape[-1]} bands in the last axis (shape {x.shape})")
        x = x[..., band_order(label, bands, what)]
    elif x.shape[-1] != spec.num_channels:
        raise ValueError(
            f"sensor {label!r} ({what}): expected {spec.num_channels} bands in the last axis "
            f"({', '.join(spec.bands)}), got shape {x.shape}; pass bands=... to name yours")
    # float32 first, as the H5 reader casts stored values before normalising.
    miss = missing_pixels(label, x, nodata)
    x = x.astype(np.float32)
    n_missing = int(miss.sum())
    if check:
        check_plausible(label, x[~miss], normalized=normalized, units=units, what=what)
    if label == "sentinel1" and units == "linear" and not normalized:
        x = linear_to_db(x).astype(np.float32)
    if n_missing:
        x = np.where(miss[..., None], np.float32(MISSING_VALUE), x)
    if apply_normalization:
        y = normalize.normalize_array(label, x, np.float32)
    else:
        y = normalize.clean_array(x, np.float32)
    return Prepared(np.ascontiguousarray(y), n_missing)


def per_sensor(option, label: str, default=None):
    """An option given once for all sensors or as a dict label -> value."""
    if isinstance(option, Mapping):
        return option.get(label, default)
    return default if option is None else option
