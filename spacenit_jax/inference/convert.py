"""GeoTIFF -> the original's H5 training format (written with `spacenit_jax.data.h5`).

Two inputs:

`convert_tiles` — the original's raw tile dataset (the OlmoEarth release layout):
  manifests `<root>/<pitch>_<label>[_monthly].csv` (columns crs, col, row, tile_time,
  start_time, end_time, image_idx; a row repeating an image_idx of its tile is skipped)
  and rasters `<root>/<pitch>_<label>[_monthly]/<crs>_<col>_<row>_<group pitch>.tif`, one
  per spectral group, timesteps stacked time-major on the band axis. The converter's
  behaviour, reproduced:
  - samples: every 10 m grid cell of an annual ("_monthly") manifest of a space+time
    sensor; a sensor is attached when its own manifest (annual for temporal sensors,
    snapshot for the others) has that cell (every manifest sensor of the registry is on
    the 10 m cell grid, except naip, whose 160 m tiles are not supported: use naip_10);
  - each group raster is resampled to the sensor's stored edge (256 x its multiplier, or
    256 // |multiplier|) by strided subsampling [::k, ::k] or pixel repetition, groups are
    concatenated in group order and stored (H, W, T, C); era5_10 becomes (T, C);
  - quality filters: a sensor is dropped if it has any NaN, era5_10 / openstreetmap_raster
    if all zero, sentinel1 if any value is -32768 (on linear values); the sample is
    dropped if it has a sensor outside `supported`, lacks a `required` sensor, has no
    space+time sensor, or its longest space+time time series has fewer than 12 images;
  - sentinel1 is stored in dB, 10 log10(max(x, 1e-10)); other values as read;
  - timestamps: [day, month0, year] of each image's start_time; the reference is the
    space+time sensor with the most images; each space+time sensor gets a mask of the
    reference rows it has (exact date match); its images outside the reference are not
    stored (counted); era5_10 is kept only when its dates are the reference's;
  - latlon: the cell centre ((col + 1/2) * 2560 m, -(row + 1/2) * 2560 m in the cell's
    CRS) in EPSG:4326, the same for every subtile;
  - sub-tiling: `tile_size` t divides 256, each sample becomes (256/t)^2 subtiles in
    row-major order (sample-major file indices).
  Samples are processed in sorted (crs, col, row) order.

`convert_folder` — the simple case: a folder with one subfolder per sensor (like
  TerraMind's examples: S2L2A, S1RTC, DEM; see `geotiff` for names, band order, units,
  dates and reprojection), one file per location and timestep. Each location is cut into
  disjoint t x t samples (t divides 256; the right / bottom margins that do not fill a
  sample are reported, not stored). In each sample, a timestep of a space+time sensor
  with any missing pixel is recorded as missing (mask False, not stored), a space-only
  sensor with any missing pixel as absent; a sample left without any space+time data is
  not written. latlon is the sample's own centre. Files without a date take `date`, or,
  when a location's dated files all fall in one month, that date (announced).

Both write into a temporary sibling directory renamed into place at the end, and return
a `ConversionResult` (the `<num_samples>` directory that `--config.data.path` takes, and
counts of everything dropped, by reason).
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import datetime as dt
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np
import rasterio
from rasterio.warp import transform as warp_transform

from spacenit_jax import sensors
from spacenit_jax.data import h5
from spacenit_jax.inference import geotiff, prepare
from spacenit_jax.sensors import MAX_TEMPORAL_DEPTH, SAR_NODATA, SensorKind

log = logging.getLogger(__name__)
SAMPLE_SCALE = 16  # the 10 m grid the samples are defined on
MANIFEST_COLUMNS = ("crs", "col", "row", "tile_time", "start_time", "end_time", "image_idx")
ANNUAL, SNAPSHOT = "_monthly", ""


@dataclasses.dataclass
class ConversionResult:
    path: pathlib.Path  # the <num_samples> directory
    num_samples: int
    sources: int  # source samples (cells / locations) considered
    converted: int  # source samples that produced H5 samples
    dropped: dict[str, int]  # reason -> count (samples, sensors or timesteps, as named)
    notes: list[str]

    def summary(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def _settings(compression, compression_opts, shuffle, chunks) -> h5.CompressionSettings:
    comp = None if compression in (None, "none") else compression
    opts = compression_opts if comp in ("gzip", "zstd") else None
    return h5.CompressionSettings(comp, opts, shuffle, chunks)


def _check_tile_size(tile_size: int) -> None:
    if tile_size < 1 or sensors.TILE_EDGE_PIXELS % tile_size:
        raise ValueError(f"tile_size must divide {sensors.TILE_EDGE_PIXELS}, got {tile_size}")


def _finalize(tmp: pathlib.Path, root, supported, required, tile_size, num_subtiles,
              settings, present, latlons, overwrite) -> pathlib.Path:
    n = len(present)
    if n == 0:
        raise ValueError("no sample survived the conversion (see the drop counts above)")
    h5.write_metadata(tmp, supported, present, np.asarray(latlons, np.float32), settings)
    final = h5.dataset_dir(root, supported, n, tile_size, num_subtiles, settings, required)
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} exists; pass overwrite=True (--overwrite)")
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return final


def _latlon(crs, x: float, y: float) -> np.ndarray:
    lon, lat = warp_transform(crs, "EPSG:4326", [x], [y])
    return np.asarray([lat[0], lon[0]], np.float32)


# =========================================================================== raw tiles


def pitch_name(metres: float) -> str:
    """0.625 * scale as written in file names: an int when whole ("10", "2.5")."""
    return str(int(metres)) if float(metres).is_integer() else f"{metres:g}"


def manifest_path(root, label: str, cadence: str) -> pathlib.Path:
    spec = sensors.get(label)
    return pathlib.Path(root) / f"{pitch_name(spec.coverage_pitch)}_{label}{cadence}.csv"


def raster_path(root, label: str, cadence: str, key: tuple, group: sensors.SpectralGroup):
    spec = sensors.get(label)
    crs, col, row = key
    return (pathlib.Path(root) / f"{pitch_name(spec.coverage_pitch)}_{label}{cadence}"
            / f"{crs}_{col}_{row}_{pitch_name(group.pixel_pitch)}.tif")


def read_manifest(path) -> tuple[dict[tuple, list[dt.datetime]], int]:
    """{(crs, col, row): start times in image_idx order}, rows skipped as repeats."""
    tiles: dict[tuple, dict[int, dt.datetime]] = {}
    skipped = 0
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: manifest lacks columns {missing} (has "
                             f"{reader.fieldnames})")
        for line, r in enumerate(reader, start=2):
            try:
                key = (r["crs"], int(r["col"]), int(r["row"]))
                idx = int(r["image_idx"])
                start = dt.datetime.fromisoformat(r["start_time"])
            except ValueError as err:
                raise ValueError(f"{path}:{line}: bad manifest row ({err})") from None
            images = tiles.setdefault(key, {})
            if idx in images:
                skipped += 1
                continue
            images[idx] = start
    out = {k: [v[i] for i in sorted(v)] for k, v in tiles.items()}
    return out, skipped


def _resample_to_edge(a: np.ndarray, edge: int, what: str) -> np.ndarray:
    """(..., h, w) -> (..., edge, edge) by [::k, ::k] or pixel repetition."""
    h, w = a.shape[-2:]
    if h != w:
        raise ValueError(f"{what}: raster is {h}x{w}, expected a square tile")
    if h == edge:
        return a
    if h > edge:
        if h % edge:
            raise ValueError(f"{what}: {h} px cannot be subsampled to {edge} by a whole step")
        k = h // edge
        return a[..., ::k, ::k]
    if edge % h:
        raise ValueError(f"{what}: {h} px cannot be repeated to {edge} by a whole factor")
    k = edge // h
    return np.repeat(np.repeat(a, k, axis=-2), k, axis=-1)


@dataclasses.dataclass(frozen=True)
class _TileJob:
    root: str
    key: tuple
    attached: dict  # label -> cadence
    times: dict  # label -> list of datetimes (temporal sensors)
    supported: tuple
    required: tuple
    tile_size: int
    settings: h5.CompressionSettings
    out_dir: str
    index: int


def _load_sensor(job: _TileJob, label: str) -> np.ndarray:
    """The sensor's stored array ((H, W, T, C), or (T, C) for time-only), as read."""
    spec = sensors.get(label)
    cadence = job.attached[label]
    edge = spec.stored_tile_edge
    parts = []
    n_times = len(job.times[label]) if spec.temporal else 1
    for grp in spec.groups:
        path = raster_path(job.root, label, cadence, job.key, grp)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: raster of sensor {label!r} group "
                                    f"{list(grp.bands)} is missing")
        with rasterio.open(path) as ds:
            data = ds.read()
        c = len(grp.bands)
        if data.shape[0] != n_times * c:
            raise ValueError(f"{path}: {data.shape[0]} bands, expected {n_times} images x {c} "
                             "bands")
        data = data.reshape(n_times, c, *data.shape[1:])
        parts.append(_resample_to_edge(data, edge, str(path)))
    arr = np.concatenate(parts, axis=1)  # (T, C, H, W)
    if spec.kind == SensorKind.TIME:
        return arr.reshape(arr.shape[0], arr.shape[1], -1)[:, :, 0]
    return np.transpose(arr, (2, 3, 0, 1))  # (H, W, T, C)


def _quality(label: str, a: np.ndarray) -> str:
    if np.issubdtype(a.dtype, np.floating) and np.isnan(a).any():
        return "NaN"
    if label in ("era5_10", "openstreetmap_raster") and not np.any(a):
        return "all zero"
    if label == "sentinel1" and np.any(a == SAR_NODATA):
        return "nodata -32768"
    return ""


def _convert_cell(job: _TileJob):
    """Load, filter and write one cell's subtiles as part_<index>_<j>.h5 files.
    Returns (written subtiles, present labels, latlon, drop reasons)."""
    drops: collections.Counter = collections.Counter()
    unsupported = sorted(set(job.attached) - set(job.supported))
    if unsupported:
        drops[f"sample: has sensors outside the supported list ({', '.join(unsupported)})"] += 1
        return 0, (), None, drops
    arrays, times = {}, {}
    for label in job.attached:
        a = _load_sensor(job, label)
        why = _quality(label, a)
        if why:
            drops[f"sensor {label}: {why}"] += 1
            continue
        if label == "sentinel1":
            a = prepare.linear_to_db(a.astype(np.float64)).astype(np.float32)
        arrays[label] = a
        if sensors.get(label).temporal:
            times[label] = [(t.day, t.month - 1, t.year) for t in job.times[label]]
    st = [lab for lab in arrays if sensors.get(lab).kind == SensorKind.SPACE_TIME]
    lacking = [lab for lab in job.required if lab not in arrays]
    if lacking:
        drops[f"sample: lacks required sensors ({', '.join(lacking)})"] += 1
        return 0, (), None, drops
    if not st:
        drops["sample: no space+time sensor"] += 1
        return 0, (), None, drops
    ref = max(st, key=lambda lab: len(times[lab]))  # first of the longest
    reference = times[ref]
    if len(reference) < MAX_TEMPORAL_DEPTH:
        drops[f"sample: fewer than {MAX_TEMPORAL_DEPTH} images"] += 1
        return 0, (), None, drops
    masks = {}
    for label in list(arrays):
        kind = sensors.get(label).kind
        if kind == SensorKind.SPACE_TIME:
            own = times[label]
            keep = [j for j, t in enumerate(own) if t in reference]
            if len(keep) < len(own):
                drops[f"timesteps of {label}: date not in the reference series"] += \
                    len(own) - len(keep)
            masks[label] = np.asarray([t in own for t in reference], bool)
            arrays[label] = arrays[label][:, :, keep]
        elif kind == SensorKind.TIME and times[label] != reference:
            drops[f"sensor {label}: dates differ from the reference series"] += 1
            del arrays[label]
    crs, col, row = job.key
    pitch = sensors.REFERENCE_GSD * sensors.TILE_EDGE_PIXELS
    latlon = _latlon(crs, (col + 0.5) * pitch, -(row + 0.5) * pitch)
    ts = np.asarray(reference, np.int64)
    n = sensors.TILE_EDGE_PIXELS // job.tile_size
    for j in range(n * n):
        sub = {}
        for label, a in arrays.items():
            spec = sensors.get(label)
            if spec.is_spatial:
                e = spec.stored_tile_edge // n
                r0, c0 = (j // n) * e, (j % n) * e
                sub[label] = np.ascontiguousarray(a[r0:r0 + e, c0:c0 + e])
            else:
                sub[label] = a
        h5.write_sample(os.path.join(job.out_dir, f"part_{job.index}_{j}.h5"),
                        h5.H5Sample(ts, latlon, sub, {k: masks[k] for k in sub if k in masks}),
                        job.settings)
    return n * n, tuple(arrays), latlon, drops


def convert_tiles(root, out_root, *, supported: Sequence[str], required: Sequence[str] = (),
                  tile_size: int = 256, compression: str | None = "zstd",
                  compression_opts: int | None = 3, shuffle: bool | None = None,
                  chunks=None, workers: int = 1, overwrite: bool = False
                  ) -> ConversionResult:
    """Convert the original's raw tile dataset at `root` (module docstring)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"tile dataset {root} does not exist")
    _check_tile_size(tile_size)
    supported = tuple(dict.fromkeys(supported))
    for label in (*supported, *required):
        spec = sensors.get(label)
        if spec.skip_csv_parsing:
            raise ValueError(f"sensor {label!r} is never read from manifests by the converter")
        if spec.coverage_scale != SAMPLE_SCALE:
            raise ValueError(f"sensor {label!r}: tiles of {spec.coverage_pitch * 256:g} m cells "
                             "are not supported (samples are 2560 m cells of the 10 m grid); "
                             "use naip_10")
    missing_req = [lab for lab in required if lab not in supported]
    if missing_req:
        raise ValueError(f"required sensors {missing_req} are not in the supported list")
    settings = _settings(compression, compression_opts, shuffle, chunks)
    notes: list[str] = []
    drops: collections.Counter = collections.Counter()
    manifests: dict[str, tuple[str, dict]] = {}
    for label in sensors.all_labels():
        spec = sensors.get(label)
        cadence = ANNUAL if spec.temporal else SNAPSHOT
        path = manifest_path(root, label, cadence)
        if spec.skip_csv_parsing:
            continue
        if spec.coverage_scale != SAMPLE_SCALE:
            if path.is_file():
                notes.append(f"{path}: not read ({spec.coverage_pitch * 256:g} m tiles are "
                             "not supported)")
            continue
        if path.is_file():
            tiles, skipped = read_manifest(path)
            manifests[label] = (cadence, tiles)
            if skipped:
                drops[f"manifest rows of {label}: repeated image_idx"] += skipped
    if not manifests:
        raise FileNotFoundError(f"{root}: no manifest <pitch>_<sensor>[_monthly].csv found")
    cells = sorted({k for lab, (_, tiles) in manifests.items()
                    if sensors.get(lab).kind == SensorKind.SPACE_TIME for k in tiles},
                   key=lambda k: (k[0], k[1], k[2]))
    if not cells:
        raise ValueError(f"{root}: no annual manifest of a space+time sensor (the samples)")
    tmp = _tmp_dir(out_root)
    try:
        jobs = []
        for i, key in enumerate(cells):
            attached, times = {}, {}
            for label, (cadence, tiles) in manifests.items():
                if key in tiles:
                    attached[label] = cadence
                    times[label] = tiles[key]
            jobs.append(_TileJob(str(root), key, attached, times, supported, tuple(required),
                                 tile_size, settings, str(tmp), i))
        results = _map(_convert_cell, jobs, workers)
        present, latlons, counts = [], [], []
        for n_sub, labels, latlon, d in results:
            drops.update(d)
            counts.append(n_sub)
            present.extend([labels] * n_sub)
            latlons.extend([latlon] * n_sub)
        _number(tmp, counts)
        n_sub = (sensors.TILE_EDGE_PIXELS // tile_size) ** 2
        final = _finalize(tmp, out_root, supported, required, tile_size, n_sub, settings,
                          present, latlons, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    converted = sum(1 for c in counts if c)
    return ConversionResult(final, len(present), len(cells), converted, dict(drops), notes)


def _tmp_dir(out_root) -> pathlib.Path:
    out_root = pathlib.Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix=".convert.tmp", dir=out_root))


def _map(fn, jobs, workers: int):
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as ex:
        return list(ex.map(fn, jobs))


def _number(tmp: pathlib.Path, counts: Sequence[int]) -> None:
    """part_<source>_<j>.h5 -> sample_<i>.h5, sample-major."""
    i = 0
    for src, n in enumerate(counts):
        for j in range(n):
            os.replace(tmp / f"part_{src}_{j}.h5", tmp / f"sample_{i}.h5")
            i += 1


# =========================================================================== a folder


def _native(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values read as float32 back in the file's dtype (exact for the integer types the
    files hold), float32 for float files."""
    if np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    return x.astype(np.float32)


def _undated_default(paths: dict[str, list[pathlib.Path]], date: dt.date | None, notes,
                     key: str) -> dt.date | None:
    if date is not None:
        return date
    dates = []
    for label, ps in paths.items():
        if not sensors.get(label).temporal:
            continue
        for p in ps:
            with rasterio.open(p) as ds:
                d = geotiff.file_date(p, ds.tags())
            if d is not None:
                dates.append(d)
    months = {(d.year, d.month) for d in dates}
    if len(months) == 1:
        d = min(dates)
        notes.append(f"location {key}: files without a date take {d.isoformat()}, the date of "
                     "its dated files (pass --date to set it)")
        return d
    return None


def convert_folder(root, out_root, *, tile_size: int = 64, sensor_labels: Sequence[str] |
                   None = None, bands=None, s1_units: str | None = None,
                   date: dt.date | str | None = None, compression: str | None = "zstd",
                   compression_opts: int | None = 3, shuffle: bool | None = None,
                   chunks=None, check: bool = True, overwrite: bool = False
                   ) -> ConversionResult:
    """Convert a folder of co-registered per-sensor GeoTIFFs (module docstring).

    sensor_labels: the dataset's sensors (default: every sensor found); a listed sensor
    without files is recorded as absent in every sample. bands: {sensor: band names} for
    files without names (TerraMind's folders have a known order). date: for undated files.
    """
    _check_tile_size(tile_size)
    if isinstance(date, str):
        date = dt.date.fromisoformat(date)
    folder = geotiff.discover_folder(root, only=sensor_labels)
    notes = list(folder.notes)
    supported = tuple(sensor_labels) if sensor_labels else tuple(
        lab for lab in sensors.all_labels() if lab in folder.folders)
    for label in supported:
        spec = sensors.get(label)
        if spec.skip_csv_parsing or not spec.is_spatial:
            raise ValueError(f"sensor {label!r} cannot be converted from a raster folder")
    if not any(sensors.get(lab).kind == SensorKind.SPACE_TIME for lab in supported):
        raise ValueError(f"sensors {list(supported)} include no space+time sensor; the "
                         "training pipeline needs one")
    band_names = dict(folder_bands(folder))
    band_names.update(bands or {})
    settings = _settings(compression, compression_opts, shuffle, chunks)
    drops: collections.Counter = collections.Counter()
    present, latlons, per_location = [], [], []
    tmp = _tmp_dir(out_root)
    index = 0
    try:
        for key in sorted(folder.locations):
            paths = folder.locations[key]
            undated = _undated_default(paths, date, notes, key)
            try:
                scene = geotiff.open_scene(
                    paths, bands={k: v for k, v in band_names.items() if k in paths},
                    s1_units=s1_units, check=check, notes=[], undated=undated)
            except geotiff.InputError as err:
                raise geotiff.InputError(f"location {key}: {err}") from None
            with scene:
                notes.extend(f"location {key}: {n}" for n in scene.notes)
                n_written = _convert_location(scene, key, tile_size, supported, settings, tmp,
                                              index, present, latlons, drops, notes)
            index += n_written
            per_location.append(n_written)
        subtiles = max(per_location) if per_location else 0
        if len(set(per_location)) > 1:
            notes.append(f"locations give {sorted(set(per_location))} samples each; the "
                         f"directory name records the largest, {subtiles}")
        final = _finalize(tmp, out_root, supported, (), tile_size, max(subtiles, 1), settings,
                          present, latlons, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ConversionResult(final, len(present), len(per_location),
                            sum(1 for n in per_location if n), dict(drops), notes)


def folder_bands(folder: geotiff.Folder) -> dict[str, tuple[str, ...]]:
    """Band orders the folder names imply (TerraMind's S2 order; VV, VH for S1)."""
    out = {}
    for label, name in folder.folders.items():
        if name in ("S2L2A", "S2L1C"):
            out[label] = prepare.default_file_bands(label)  # TerraMind's order = ascending
        elif name in ("S1RTC", "S1GRD"):
            out[label] = ("vv", "vh")
    return out


def _convert_location(scene: geotiff.Scene, key: str, t: int, supported, settings, tmp,
                      index: int, present, latlons, drops, notes) -> int:
    h, w = scene.grid.height, scene.grid.width
    nr, nc = h // t, w // t
    if nr == 0 or nc == 0:
        notes.append(f"location {key}: {h}x{w} px is smaller than one {t}-px sample; skipped")
        drops["locations: smaller than one sample"] += 1
        return 0
    if h % t or w % t:
        notes.append(f"location {key}: {h}x{w} px; the last {h % t} rows and {w % t} columns "
                     f"do not fill a {t}-px sample and are not stored")
        drops["pixels: margins that do not fill a sample"] += h * w - nr * nc * t * t
    ts = scene.timestamps()
    if ts is None:
        raise geotiff.InputError(
            f"location {key}: no file has a date (a 'datetime' tag or YYYY-MM-DD in the file "
            "name); pass --date YYYY-MM-DD")
    dtypes = {label: next(f for f in fs if f is not None)._src.dtypes[0]
              for label, fs in scene.files.items()}
    written = 0
    for r in range(nr):
        for c in range(nc):
            raw = scene.read(r * t, c * t, t, t)
            arrays, masks = {}, {}
            for label, x in raw.items():
                spec = sensors.get(label)
                dtype = np.float32 if label == "sentinel1" else np.dtype(dtypes[label])
                ok = ~np.isnan(x).any(axis=(0, 1, 3))  # (T,) timestep complete
                has_file = np.asarray([f is not None for f in scene.files[label]])
                if spec.kind == SensorKind.SPACE_TIME:
                    if (has_file & ~ok).any():
                        drops[f"timesteps of {label}: missing pixels"] += int((has_file & ~ok).sum())
                    if ok.any():
                        arrays[label] = _native(x[:, :, ok], dtype)
                        masks[label] = ok
                elif ok.all():
                    arrays[label] = _native(x, dtype)
                else:
                    drops[f"sensor {label}: missing pixels"] += 1
            if not any(sensors.get(lab).kind == SensorKind.SPACE_TIME for lab in arrays):
                drops["samples: no space+time data"] += 1
                continue
            cx, cy = rasterio.transform.xy(scene.grid.transform, (r + 0.5) * t, (c + 0.5) * t,
                                           offset="ul")
            latlon = _latlon(scene.grid.crs, cx, cy)
            h5.write_sample(tmp / f"sample_{index + written}.h5",
                            h5.H5Sample(ts, latlon, arrays, masks), settings)
            present.append(tuple(arrays))
            latlons.append(latlon)
            written += 1
    return written


def parse_date(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--date must be YYYY-MM-DD, got {text!r}") from None


