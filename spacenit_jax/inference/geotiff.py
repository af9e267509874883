"""GeoTIFF inputs: per-sensor files, band names, units, dates, co-registration, windows.

All raster I/O, reprojection and resampling is rasterio's (GDAL's); nothing here parses
TIFF or does CRS arithmetic.

- Inputs: one or more GeoTIFFs per sensor (several dated files form the time axis), or a
  folder with one subfolder per sensor (`discover_folder`): a subfolder named like a
  sensor label, or one of TerraMind's names (`FOLDER_SENSORS`: S2L2A -> sentinel2_l2a,
  S1RTC / S1GRD -> sentinel1, DEM -> srtm). TerraMind's LULC folder is not used: it holds
  ESRI's 10-class land use / land cover (0 no data, 1 water, 2 trees, 3 flooded
  vegetation, 4 crops, 5 built area, 6 bare ground, 7 snow/ice, 8 clouds, 9 rangeland),
  not ESA WorldCover's class codes that the model's `worldcover` sensor was trained on,
  and no exact crosswalk exists (rangeland merges grassland and shrubland; WorldCover has
  no cloud class). Files of several locations in one folder are told apart by their
  location key: the file name without a date.
- Band order of a file: its band descriptions when they are band names of the sensor;
  else the names given by the caller (`--bands`); else `prepare.default_file_bands`
  (ascending band number for Sentinel-2 / Landsat), announced with a warning. Descriptions
  that name bands and disagree with the caller's names are an error.
- Sentinel-1 units: "db", "linear" or "auto" (per file: negative values mean dB, else
  linear power), announced.
- Dates: the file's `datetime` / `TIFFTAG_DATETIME` / `ACQUISITION_DATE` tag, else a
  YYYY-MM-DD, YYYY_MM_DD or YYYYMMDD date in the file name. Timesteps are calendar
  months (like the monthly composites the model was trained on): the time axis is the
  sorted set of months of every temporal sensor's files, each sensor filling the months
  it has (ABSENT elsewhere). Without dates, sensors with the same number of files are
  aligned by position; two files of one sensor in one month are an error.
- Co-registration: the first sensor's first file defines the grid (CRS, transform,
  size). A file on another grid is reprojected onto it with a rasterio WarpedVRT
  (nearest for class maps, bilinear otherwise; an alpha band marks where it has data),
  and the scene says so in its notes.
- Nodata: the file's nodata value (or the caller's), NaN, an alpha of 0 and pixels
  outside the file all read as NaN.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from spacenit_jax import sensors
from spacenit_jax.inference import prepare
from spacenit_jax.sensors import SensorKind

log = logging.getLogger(__name__)

FOLDER_SENSORS = {"S2L2A": "sentinel2_l2a", "S2L1C": "sentinel2", "S1RTC": "sentinel1",
                  "S1GRD": "sentinel1", "DEM": "srtm"}
IGNORED_FOLDERS = {
    "LULC": "ESRI 10-class land use / land cover, not ESA WorldCover's class scheme "
            "(see spacenit_jax.inference.geotiff)",
    "NDVI": "no NDVI sensor in the model", "RGB": "no RGB sensor in the model",
}
CATEGORICAL = ("worldcover", "cdl", "worldcereal", "openstreetmap_raster", "openstreetmap")
DATE_TAGS = ("datetime", "DATETIME", "TIFFTAG_DATETIME", "ACQUISITION_DATE",
             "acquisition_date", "date", "DATE")
TIF_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")
_DATE_RE = re.compile(r"(?<!\d)((?:19|20)\d{2})[-_]?(0[1-9]|1[0-2])[-_]?(0[1-9]|[12]\d|3[01])(?!\d)")


class InputError(ValueError):
    """A GeoTIFF input that cannot be used as given (one line, naming the file)."""


# --------------------------------------------------------------------------- discovery


def location_key(path) -> str:
    """The file name without its date and suffix ("s2_2021-07-01.tif" -> "s2")."""
    stem = pathlib.Path(path).name
    for suf in TIF_SUFFIXES:
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
    return _DATE_RE.sub("", stem).strip("_-. ") or stem


def folder_sensor(name: str) -> str | None:
    if name in FOLDER_SENSORS:
        return FOLDER_SENSORS[name]
    return name if name in sensors.all_labels() else None


@dataclasses.dataclass
class Folder:
    """Files found in a folder of per-sensor subfolders: {location key: {label: [paths]}}."""

    locations: dict[str, dict[str, list[pathlib.Path]]]
    folders: dict[str, str]  # sensor label -> subfolder name
    notes: list[str]


def discover_folder(root, only: Sequence[str] | None = None) -> Folder:
    """Scan `root`/<subfolder>/*.tif (see the module docstring)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise InputError(f"input folder {root} does not exist")
    locations: dict[str, dict[str, list[pathlib.Path]]] = {}
    folders, notes = {}, []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = folder_sensor(sub.name)
        if label is None:
            why = IGNORED_FOLDERS.get(sub.name, "not a sensor label nor a known folder name "
                                      f"({', '.join(FOLDER_SENSORS)})")
            notes.append(f"{sub}: not used ({why})")
            continue
        if only is not None and label not in only:
            notes.append(f"{sub}: not used (sensor {label!r} is not one of {list(only)})")
            continue
        if label in folders:
            raise InputError(f"{sub}: sensor {label!r} already comes from "
                             f"{root / folders[label]}")
        folders[label] = sub.name
        for f in sorted(sub.iterdir()):
            if f.suffix in TIF_SUFFIXES and f.is_file():
                locations.setdefault(location_key(f), {}).setdefault(label, []).append(f)
    if not folders:
        raise InputError(f"{root}: no subfolder holds a sensor (expected sensor labels or "
                         f"{', '.join(FOLDER_SENSORS)})")
    return Folder(locations, folders, notes)


def file_date(path, tags: Mapping[str, str]) -> dt.date | None:
    for key in DATE_TAGS:
        if key in tags and tags[key]:
            text = str(tags[key]).strip()
            m = re.match(r"(\d{4})[-:/](\d{2})[-:/](\d{2})", text)
            if m:
                try:
                    return dt.date(int(m[1]), int(m[2]), int(m[3]))
                except ValueError:
                    pass
    m = _DATE_RE.search(pathlib.Path(path).name)
    if m:
        try:
            return dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------------- one file


@dataclasses.dataclass
class Grid:
    crs: object
    transform: object
    width: int
    height: int

    @classmethod
    def of(cls, ds) -> Grid:
        return cls(ds.crs, ds.transform, ds.width, ds.height)

    def same(self, other: Grid) -> bool:
        return (self.width == other.width and self.height == other.height
                and self.crs == other.crs
                and self.transform.almost_equals(other.transform, precision=1e-6))

    @property
    def pixel_size(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)


class RasterFile:
    """One input GeoTIFF of one sensor, on the scene grid (warped if needed)."""

    def __init__(self, path, label: str, grid: Grid | None, *, bands=None, units=None,
                 nodata=None, notes: list[str] | None = None, undated: dt.date | None = None):
        self.path = pathlib.Path(path)
        self.label = label
        notes = notes if notes is not None else []
        try:
            self._src = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as err:
            raise InputError(f"{self.path}: cannot open as a raster ({err})") from None
        try:
            self._setup(grid, bands, units, nodata, notes, undated)
        except BaseException:
            self._src.close()
            raise

    def _setup(self, grid, bands, units, nodata, notes, undated):
        src, label = self._src, self.label
        self.date = file_date(self.path, src.tags())
        if self.date is None and undated is not None:
            self.date = undated
            notes.append(f"{self.path}: no date in the file; using {undated.isoformat()}")
        self.count = src.count
        self.nodata = src.nodata if nodata is None else float(nodata)
        self.bands, self.band_source = self._band_names(bands, notes)
        self.order = prepare.band_order(label, self.bands, str(self.path))
        self.warped = grid is not None and not grid.same(Grid.of(src))
        self.grid = grid if grid is not None else Grid.of(src)
        if self.warped:
            resampling = Resampling.nearest if label in CATEGORICAL else Resampling.bilinear
            self._ds = WarpedVRT(src, crs=grid.crs, transform=grid.transform,
                                 width=grid.width, height=grid.height, resampling=resampling,
                                 add_alpha=True)
            notes.append(f"{self.path}: grid differs from the scene grid (CRS {src.crs}, "
                         f"{src.width}x{src.height} px at {abs(src.transform.a):g}); "
                         f"reprojected onto it with rasterio WarpedVRT ({resampling.name})")
            log.warning(notes[-1])
        else:
            self._ds = src
        self.units = self._units(units, notes) if label == "sentinel1" else None

    def _band_names(self, given, notes) -> tuple[tuple[str, ...], str]:
        spec = sensors.get(self.label)
        desc = [d for d in self._src.descriptions if d]
        named = None
        if len(desc) == self.count:
            try:
                prepare.band_order(self.label, desc, str(self.path))
                named = tuple(desc)
            except ValueError:
                named = None
        if given is not None:
            given = tuple(given)
            if len(given) != self.count:
                raise InputError(f"{self.path}: {len(given)} band names given for sensor "
                                 f"{self.label!r} but the file has {self.count} bands")
            if named is not None and [prepare.canonical_band(b) for b in named] != \
                    [prepare.canonical_band(b) for b in given]:
                raise InputError(f"{self.path}: the file's band descriptions {list(named)} "
                                 f"disagree with the band names given {list(given)}")
            return given, "given"
        if named is not None:
            return named, "descriptions"
        if spec.num_channels == 1 and self.count == 1:
            return spec.bands, "single band"
        default = prepare.default_file_bands(self.label)
        if self.count != len(default):
            raise InputError(f"{self.path}: {self.count} bands and no band names (descriptions "
                             f"{list(self._src.descriptions)}); sensor {self.label!r} has "
                             f"{spec.num_channels} ({', '.join(spec.bands)}): name them "
                             f"(--bands {self.label}=...)")
        notes.append(f"{self.path}: no band names in the file; ASSUMING the default order "
                     f"{', '.join(default)} for {self.label} (name them with --bands "
                     f"{self.label}=... if this is wrong)")
        log.warning(notes[-1])
        return default, "default"

    def _units(self, units, notes) -> str:
        units = "auto" if units is None else str(units).lower()
        if units not in ("auto", *prepare.S1_UNITS):
            raise InputError(f"{self.path}: Sentinel-1 units must be auto, db or linear, got "
                             f"{units!r}")
        if units != "auto":
            return units
        sample = self.overview()
        valid = sample[np.isfinite(sample)]
        units = "db" if valid.size and valid.min() < 0 else "linear"
        notes.append(f"{self.path}: Sentinel-1 values read as {units} "
                     f"({'negative values present' if units == 'db' else 'no negative values'}"
                     f"; force with --s1-units)")
        log.info(notes[-1])
        return units

    # -- reading ------------------------------------------------------------------------
    def _finish(self, data: np.ndarray) -> np.ndarray:
        """(bands [+ alpha], h, w) as read -> (h, w, C) float32, NaN at missing pixels."""
        if self.warped:
            alpha, data = data[-1], data[:-1]
        else:
            alpha = None
        miss = prepare.missing_pixels(self.label, np.moveaxis(data, 0, -1), self.nodata)
        if alpha is not None:
            miss |= alpha == 0
        out = np.moveaxis(data, 0, -1).astype(np.float32)
        out[miss] = np.nan
        return out

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Pixels [row, row + height) x [col, col + width) of the scene grid, in the file's
        band order, NaN where missing or outside the scene: (height, width, C) float32."""
        out = np.full((height, width, self.count), np.nan, np.float32)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, self.grid.height), min(col + width, self.grid.width)
        if r1 <= r0 or c1 <= c0:
            return out
        data = self._ds.read(window=Window(c0, r0, c1 - c0, r1 - r0))
        out[r0 - row:r1 - row, c0 - col:c1 - col] = self._finish(data)
        return out

    def overview(self, max_side: int = 512) -> np.ndarray:
        """A decimated read of the whole file (nearest), for checks: (h', w', C)."""
        k = max(1, math.ceil(max(self._ds.height, self._ds.width) / max_side))
        shape = (self._ds.count, max(1, self._ds.height // k), max(1, self._ds.width // k))
        data = self._ds.read(out_shape=shape, resampling=Resampling.nearest)
        return self._finish(data)

    def check(self, normalized: bool = False) -> None:
        """The documented plausibility check (`prepare`) on a decimated read."""
        x = self.overview()[..., self.order]
        miss = np.isnan(x).any(axis=-1)
        try:
            prepare.check_plausible(self.label, x[~miss], normalized=normalized,
                                    units=self.units or "db", what=str(self.path))
        except ValueError as err:
            raise InputError(str(err)) from None

    def close(self) -> None:
        if self._ds is not self._src:
            self._ds.close()
        self._src.close()


# --------------------------------------------------------------------------- a scene


@dataclasses.dataclass
class Scene:
    """Co-registered inputs: {label: [RasterFile or None per timestep]} on one grid."""

    grid: Grid
    files: dict[str, list[RasterFile | None]]
    months: list[int] | None  # month index 0..11 per timestep, None when undated
    dates: list[str]  # "YYYY-MM" per timestep ("" when undated)
    notes: list[str]

    @property
    def timesteps(self) -> int:
        return len(self.dates)

    @property
    def reference(self) -> RasterFile:
        return next(f for fs in self.files.values() for f in fs if f is not None)

    def timestamps(self) -> np.ndarray | None:
        """(T, 3) rows [day, month0, year] of the time axis (the earliest file of each
        month gives the day), None when the files are undated."""
        if self.months is None:
            return None
        rows = []
        for t in range(self.timesteps):
            days = [fs[t].date for label, fs in self.files.items()
                    if sensors.get(label).temporal and fs[t] is not None]
            d = min(days)
            rows.append((d.day, d.month - 1, d.year))
        return np.asarray(rows, np.int32)

    def read(self, row: int, col: int, height: int, width: int) -> dict[str, np.ndarray]:
        """Raw values of every sensor in the window: {label: (h, w, T, C_model)} for
        space+time sensors, (h, w, 1, C_model) space-only; model band order; NaN missing;
        Sentinel-1 in dB (linear files converted with `prepare.linear_to_db`)."""
        out = {}
        for label, files in self.files.items():
            c = sensors.get(label).num_channels
            stack = np.full((height, width, len(files), c), np.nan, np.float32)
            for t, f in enumerate(files):
                if f is not None:
                    x = f.read(row, col, height, width)[..., f.order]
                    if f.units == "linear":  # missing pixels were found on linear values
                        x = prepare.linear_to_db(x).astype(np.float32)
                    stack[:, :, t] = x
            out[label] = stack
        return out

    def close(self) -> None:
        for fs in self.files.values():
            for f in fs:
                if f is not None:
                    f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_scene(inputs: Mapping[str, Sequence], *, bands: Mapping[str, Sequence[str]] | None
               = None, s1_units: str | None = None, nodata: float | None = None,
               check: bool = True, max_timesteps: int | None = None,
               notes: list[str] | None = None, undated: dt.date | None = None) -> Scene:
    """Open {sensor label: [GeoTIFF paths]} as one co-registered scene (module docstring).
    undated: the date of files that carry none (announced in the notes)."""
    notes = list(notes or [])
    bands = dict(bands or {})
    for label in bands:
        if label not in inputs:
            raise InputError(f"--bands given for sensor {label!r}, which has no input "
                             f"({', '.join(inputs)})")
    grid = None
    opened: dict[str, list[RasterFile]] = {}
    try:
        for label, paths in inputs.items():
            spec = sensors.get(label)
            if not spec.is_spatial:
                raise InputError(f"sensor {label!r} has no spatial axes; scene inputs must be "
                                 "rasters of spatial sensors")
            if spec.pixels_per_base_pixel != 1:
                raise InputError(f"sensor {label!r} is stored {spec.pixels_per_base_pixel}x "
                                 "finer than the 10 m grid; scene inference supports sensors "
                                 "on the 10 m grid only")
            if not paths:
                raise InputError(f"sensor {label!r}: no input file")
            if spec.kind == SensorKind.SPACE and len(paths) > 1:
                raise InputError(f"sensor {label!r} has no time axis but {len(paths)} files "
                                 f"were given: {', '.join(map(str, paths))}")
            files = []
            for path in paths:
                if not pathlib.Path(path).is_file():
                    raise InputError(f"{path}: no such file (input of sensor {label!r})")
                f = RasterFile(path, label, grid, bands=bands.get(label),
                               units=s1_units if label == "sentinel1" else None,
                               nodata=nodata, notes=notes,
                               undated=undated if spec.temporal else None)
                files.append(f)
                if grid is None:
                    grid = f.grid
            opened[label] = files
        if check:
            for files in opened.values():
                for f in files:
                    f.check()
        files, months, dates = _time_axis(opened, notes)
    except BaseException:
        for fs in opened.values():
            for f in fs:
                f.close()
        raise
    if max_timesteps is not None and len(dates) > max_timesteps:
        raise InputError(f"{len(dates)} timesteps; the model takes at most {max_timesteps}")
    px = grid.pixel_size
    if grid.crs is not None and grid.crs.is_projected and abs(px[0] - sensors.REFERENCE_GSD) > 0.1:
        notes.append(f"scene pixels are {px[0]:g} x {px[1]:g} CRS units, the model was trained "
                     f"on {sensors.REFERENCE_GSD:g} m pixels")
        log.warning(notes[-1])
    return Scene(grid, files, months, dates, notes)


def _time_axis(opened: Mapping[str, list[RasterFile]], notes):
    temporal = {k: v for k, v in opened.items()
                if sensors.get(k).kind == SensorKind.SPACE_TIME}
    files: dict[str, list[RasterFile | None]] = {k: list(v) for k, v in opened.items()
                                                 if k not in temporal}
    if not temporal:
        return files, None, [""]  # a scene of space-only sensors has one (undated) step
    dated = all(f.date is not None for fs in temporal.values() for f in fs)
    if dated:
        keys = sorted({(f.date.year, f.date.month) for fs in temporal.values() for f in fs})
        for label, fs in temporal.items():
            row: list[RasterFile | None] = [None] * len(keys)
            for f in sorted(fs, key=lambda f: f.date):
                t = keys.index((f.date.year, f.date.month))
                if row[t] is not None:
                    raise InputError(f"sensor {label!r}: {row[t].path} ({row[t].date}) and "
                                     f"{f.path} ({f.date}) fall in the same month; timesteps "
                                     "are months: give one file per month")
                row[t] = f
            files[label] = row
        files = {k: files[k] for k in opened}  # the caller's sensor order
        months = [m - 1 for _, m in keys]
        dates = [f"{y:04d}-{m:02d}" for y, m in keys]
        if len(keys) > 1 or len(temporal) > 1:
            notes.append(f"time axis: months {', '.join(dates)}")
        return files, months, dates
    counts = {k: len(v) for k, v in temporal.items()}
    if len(set(counts.values())) > 1:
        undated = [str(f.path) for fs in temporal.values() for f in fs if f.date is None][:3]
        raise InputError(f"cannot align timesteps: {counts} files per sensor and no date in "
                         f"{', '.join(undated)} (a 'datetime' tag or YYYY-MM-DD in the name)")
    n = next(iter(counts.values()))
    for label, fs in temporal.items():
        files[label] = list(fs)
    files = {k: files[k] for k in opened}  # the caller's sensor order
    if n > 1:
        notes.append(f"no dates: the {n} files of each sensor are aligned by position and "
                     "no month signal is given to the model")
    return files, None, [""] * n
