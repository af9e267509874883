"""Plausible stored values per sensor: catching corrupt samples and pixel dtypes too small.

The H5 format has no checksum: a damaged compressed chunk can decode without any error
into garbage (2,000 zeroed bytes inside a zstd-compressed Sentinel-2 chunk decode into
values up to ~64,000 where the real ones stay below ~6,000). What is read is therefore
checked against the physical range of each sensor's stored values (the converter's units,
before normalisation):

  sensor                 stored as                          plausible         also accepted
  sentinel2_l2a          surface reflectance x 10,000       [0, 25000]        65535 (saturated)
  sentinel2 (L1C)        top-of-atmosphere refl. x 10,000   [0, 25000]        65535 (saturated)
  sentinel1              backscatter in dB, 10 log10(max(x, 1e-10))  [-100, 50]
  landsat                16-bit digital numbers             [0, 65535]
  naip, naip_10          8-bit digital numbers              [0, 255]
  worldcover             ESA WorldCover class codes         [0, 100]          (0 = no data)
  srtm                   elevation in metres                [-500, 9000]      -32768 (void)
  cdl                    USDA Cropland Data Layer codes     [0, 255]
  worldcereal            WorldCereal product values         [0, 255]
  wri_canopy_height_map  canopy height in metres            [0, 255]
  worldpop               people per pixel                   [0, 1e6]
  era5, era5_10          2 m temperature K [170, 350], 2 m dewpoint K [150, 340], surface
                         pressure Pa [30000, 110000], 10 m u / v wind m/s [-150, 150],
                         total precipitation m [-0.001, 1] (ERA5 stores tiny negatives)
  latlon                 degrees                            lat [-90, 90], lon [-180, 180]
  openstreetmap_raster, gse: value convention not fixed by the format: not checked.

NaN and +-Inf are implausible everywhere checked (the original converter drops any sensor
array holding a NaN). The missing-value fill -99999 is the reader's, never on disk, and
is not checked. Ranges are configurable (`PipelineConfig.value_ranges`, see
`resolve_ranges`) and the whole check can be switched off (`check_value_ranges`).

The same ranges tell, at configuration time, whether a pixel dtype can hold the values
the pipeline will put in it (`dtype_range_error`): float16 holds |x| <= 65504, so raw
(un-normalised) Landsat, ERA5 pressure or saturated Sentinel-2 values overflow to inf.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.sensors import MISSING_VALUE


class ImplausibleValueError(ValueError):
    """A sample holds a value outside its sensor's plausible range (likely corruption)."""


@dataclasses.dataclass(frozen=True)
class ValueRange:
    """Plausible stored values of one sensor: lo <= x <= hi per band, or one of `nodata`.

    lo / hi: one number for every band, or one per band in the sensor's band order.
    """

    lo: float | tuple[float, ...]
    hi: float | tuple[float, ...]
    nodata: tuple[float, ...] = ()
    units: str = ""

    def arrays(self, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lo, hi) as (C,) float64 arrays and nodata as a float64 array; validated."""
        c = sensors.get(label).num_channels
        out = []
        for name, v in (("lo", self.lo), ("hi", self.hi)):
            a = np.broadcast_to(np.asarray(v, np.float64), (c,)) if np.ndim(v) == 0 else \
                np.asarray(v, np.float64)
            if a.shape != (c,):
                raise ValueError(f"value range of sensor {label!r}: {name} must be one number or "
                                 f"{c} numbers (one per band), got {v!r}")
            out.append(a)
        lo, hi = out
        if np.any(~(lo <= hi)):
            raise ValueError(f"value range of sensor {label!r}: lo {self.lo!r} > hi {self.hi!r}")
        return lo, hi, np.asarray(self.nodata, np.float64).reshape(-1)


_ERA5 = ValueRange((170.0, 150.0, 30000.0, -150.0, -150.0, -0.001),
                   (350.0, 340.0, 110000.0, 150.0, 150.0, 1.0), (),
                   "K, K, Pa, m/s, m/s, m")
_S2 = ValueRange(0.0, 25000.0, (65535.0,), "reflectance x 10,000")

PLAUSIBLE_RANGES: dict[str, ValueRange | None] = {
    "sentinel2_l2a": _S2,
    "sentinel2": _S2,
    "sentinel1": ValueRange(-100.0, 50.0, (), "dB"),
    "landsat": ValueRange(0.0, 65535.0, (), "digital number"),
    "naip": ValueRange(0.0, 255.0, (), "digital number"),
    "naip_10": ValueRange(0.0, 255.0, (), "digital number"),
    "worldcover": ValueRange(0.0, 100.0, (), "class code"),
    "srtm": ValueRange(-500.0, 9000.0, (-32768.0,), "m"),
    "cdl": ValueRange(0.0, 255.0, (), "class code"),
    "worldcereal": ValueRange(0.0, 255.0, (), "product value"),
    "wri_canopy_height_map": ValueRange(0.0, 255.0, (), "m"),
    "worldpop": ValueRange(0.0, 1e6, (), "people per pixel"),
    "era5": _ERA5,
    "era5_10": _ERA5,
    "latlon": ValueRange((-90.0, -180.0), (90.0, 180.0), (), "degrees"),
    "openstreetmap_raster": None,
    "gse": None,
}

Resolved = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def _from_config(label: str, v) -> ValueRange | None:
    if v is None or isinstance(v, ValueRange):
        return v
    if isinstance(v, Mapping):
        unknown = set(v) - {"lo", "hi", "nodata"}
        if unknown or not {"lo", "hi"} <= set(v):
            raise ValueError(f"value_ranges[{label!r}] must have keys lo, hi (and optionally "
                             f"nodata), got {sorted(v)}")
        lo, hi = v["lo"], v["hi"]
        nodata = tuple(float(x) for x in (v.get("nodata") or ()))
    elif isinstance(v, Sequence) and len(v) == 2:
        (lo, hi), nodata = v, ()
    else:
        raise ValueError(f"value_ranges[{label!r}] must be [lo, hi], {{'lo', 'hi', 'nodata'}} "
                         f"or None (not checked), got {v!r}")
    as_t = lambda x: tuple(float(y) for y in x) if isinstance(x, Sequence) else float(x)  # noqa: E731
    return ValueRange(as_t(lo), as_t(hi), nodata)


def resolve_ranges(labels: Sequence[str], overrides: Mapping | None = None) -> Resolved:
    """Per-band (lo, hi, nodata) of each checked sensor among `labels`.

    overrides: label -> [lo, hi] (numbers, or lists with one number per band), a dict
    {"lo", "hi", "nodata"}, or None to leave that sensor unchecked; other sensors keep
    PLAUSIBLE_RANGES. Raises ValueError naming the sensor on a malformed entry.
    """
    overrides = dict(overrides or {})
    for label in overrides:
        sensors.get(label)
    out: Resolved = {}
    for label in labels:
        vr = _from_config(label, overrides[label]) if label in overrides else \
            PLAUSIBLE_RANGES.get(label)
        if vr is not None:
            out[label] = vr.arrays(label)
    return out


def check_sample(arrays: Mapping[str, np.ndarray], ranges: Resolved, path: str = "") -> None:
    """Raise ImplausibleValueError if any checked sensor array (channel-last, stored units)
    holds a value outside its range that is neither a nodata value nor the missing fill.

    The one-line message names the file, sensor, band, the first offending value and how
    many values of the array are implausible.
    """
    for label, x in arrays.items():
        if label not in ranges:
            continue
        lo, hi, nodata = ranges[label]
        x = np.asarray(x)
        lead = tuple(range(x.ndim - 1))
        with np.errstate(invalid="ignore"):
            if np.all(x.min(axis=lead) >= lo) and np.all(x.max(axis=lead) <= hi):
                continue  # the common case: one pass, no masks (NaN fails the test)
            bad = ~((x >= lo) & (x <= hi)) & (x != MISSING_VALUE)
        if nodata.size and bad.any():
            bad &= ~np.isin(x, nodata)
        if not bad.any():
            continue
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), x.shape)
        band = sensors.get(label).bands[idx[-1]]
        value = x[idx]
        extra = f" or {', '.join(f'{v:g}' for v in nodata)}" if nodata.size else ""
        raise ImplausibleValueError(
            f"{path}: sensor {label!r} band {band!r}: value {value:g} at index {tuple(map(int, idx))} "
            f"is outside the plausible range [{lo[idx[-1]]:g}, {hi[idx[-1]]:g}]{extra} "
            f"({int(bad.sum())} of {x.size} values; a corrupt file? widen "
            f"data.value_ranges[{label!r}] or set data.check_value_ranges=False if the data "
            "are right)")


def dtype_range_error(labels: Sequence[str], ranges: Resolved, normalized: bool, dtype
                      ) -> str:
    """'' if `dtype` holds every plausible pixel value of `labels`, else why not.

    normalized: the pipeline normalises (values are (x - lo_b) / (hi_b - lo_b) with the
    sensor's statistics) or passes raw stored values. Sensors without a range are not
    judged here (the per-sample check in `tokenize.prepare_sample` covers them).
    """
    import ml_dtypes

    limit = float(ml_dtypes.finfo(dtype).max)
    name = np.dtype(dtype).name
    for label in labels:
        if label not in ranges:
            continue
        lo, hi, nodata = ranges[label]
        values = np.concatenate([lo[None], hi[None],
                                 np.broadcast_to(nodata[:, None], (nodata.size, lo.size))])
        if normalized:
            from spacenit_jax.data.normalize import band_range, scale_to_unit

            a, b, _ = band_range(label)
            values = scale_to_unit(values, a, b)
        big = np.abs(values).max(axis=0)
        if np.any(big > limit):
            band = int(np.argmax(big))
            how = "normalised" if normalized else "raw (data.normalize=False)"
            return (f"data.dtype={name!r} cannot hold sensor {label!r} band "
                    f"{sensors.get(label).bands[band]!r}: its plausible {how} values reach "
                    f"{big[band]:g}, {name} holds |x| <= {limit:g}; use float32 or bfloat16"
                    + ("" if normalized else ", or normalize=True"))
    return ""
