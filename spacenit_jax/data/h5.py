"""The original's H5 training-data format: directory naming, writer and reader.

Layout (spec data §2.3-2.4), byte-compatible with OlmoEarth / SpaceNit conversions:

    <root>/h5py_data_w_missing_timesteps{_<compression>}{_<opts>}{_shuffle}_<tile>_x_<subtiles>/
        <sorted labels joined by "_">{_required_<sorted required labels>}/<num_samples>/
            sample_{i}.h5                one sample (subtile)
            sample_metadata.csv          sample_index + one 0/1 column per supported sensor
            latlon_distribution.npy      (N, 2) [lat, lon]
            compression_settings.json    {"compression", "compression_opts", "shuffle"}

`sample_{i}.h5` holds one dataset per present sensor in its stored axis order
((H, W, T_s, C) space+time with only the present timesteps, (H, W, 1, C) space-only,
(T_s, C) time-only), `latlon` (2,), `timestamps` (T_ref, 3) rows [day, month0, year],
and a group `missing_timesteps_masks/` with one bool (T_ref,) dataset per space+time
sensor. ABSENT (-99999) is never on disk: the reader materialises it.

The reader (`H5Source`) is a random-access source that pickles with paths and index
arrays only; every read opens its file afresh (h5py handles must not cross `spawn`ed
Grain workers, and opening per read keeps workers stateless). Reading is two-phase so
that a crop reads only the pixels it needs: `read_header` loads timestamps, masks and
shapes; a caller-chosen `CropWindow` then selects the hyperslab that `read` decodes.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd / lz4 HDF5 filters on import)
import numpy as np

from spacenit_jax import sensors
from spacenit_jax.sensors import MAX_TEMPORAL_DEPTH, MISSING_VALUE, SensorKind

TOP_PREFIX = "h5py_data_w_missing_timesteps"
MASKS_GROUP = "missing_timesteps_masks"
METADATA_CSV = "sample_metadata.csv"
LATLON_NPY = "latlon_distribution.npy"
COMPRESSION_JSON = "compression_settings.json"
COMPRESSIONS = ("gzip", "zstd", "lz4")
META_KEYS = ("timestamps", "latlon")
FINGERPRINT_VERSION = "v0.1"

_TOP_RE = re.compile(
    rf"^{TOP_PREFIX}(?:_(?P<comp>gzip|zstd|lz4))?(?:_(?P<opts>\d+))?(?P<shuffle>_shuffle)?"
    r"_(?P<tile>\d+)_x_(?P<subtiles>\d+)$"
)


class H5FormatError(ValueError):
    """A file or directory does not follow the original's H5 format."""


# --------------------------------------------------------------------------------------
# Directory naming


@dataclasses.dataclass(frozen=True)
class CompressionSettings:
    compression: str | None = None  # None, "gzip", "zstd" or "lz4"
    compression_opts: int | None = None  # gzip level / zstd clevel
    shuffle: bool | None = None
    chunks: bool | tuple[int, ...] | None = None  # True: h5py auto; tuple: leading dims

    def __post_init__(self):
        if self.compression not in (None, *COMPRESSIONS):
            raise ValueError(
                f"compression must be one of None, {COMPRESSIONS}, got {self.compression!r}"
            )

    def to_json(self) -> dict:
        return {"compression": self.compression, "compression_opts": self.compression_opts,
                "shuffle": self.shuffle}

    def dataset_kwargs(self, shape: tuple[int, ...]) -> dict:
        """h5py create_dataset kwargs (spec §2.4 "Compression")."""
        if self.compression is None:
            return {}
        if self.chunks is True:
            chunks: bool | tuple[int, ...] = True
        elif isinstance(self.chunks, tuple):
            lead = tuple(min(c, s) for c, s in zip(self.chunks, shape, strict=False))
            chunks = lead + tuple(shape[len(lead):])
        else:
            chunks = tuple(shape)
        kw: dict = {"chunks": chunks if all(shape) else None}
        if self.compression == "gzip":
            kw.update(compression="gzip", compression_opts=self.compression_opts)
            if self.shuffle:
                kw["shuffle"] = True
        elif self.compression == "zstd":
            clevel = 3 if self.compression_opts is None else self.compression_opts
            kw.update(hdf5plugin.Zstd(clevel=clevel))
        else:
            kw.update(hdf5plugin.LZ4(nbytes=0))
        return kw


def top_dir_name(tile_size: int, num_subtiles: int, settings: CompressionSettings) -> str:
    name = TOP_PREFIX
    if settings.compression is not None:
        name += f"_{settings.compression}"
    if settings.compression_opts is not None:
        name += f"_{settings.compression_opts}"
    if settings.shuffle is not None:  # the original appends it even for shuffle=False
        name += "_shuffle"
    return f"{name}_{tile_size}_x_{num_subtiles}"


def sensor_dir_name(supported: Iterable[str], required: Iterable[str] = ()) -> str:
    name = "_".join(sorted(supported))
    required = sorted(required)
    if required:
        name += "_required_" + "_".join(required)
    return name


def dataset_dir(root, supported: Sequence[str], num_samples: int, tile_size: int,
                num_subtiles: int, settings: CompressionSettings,
                required: Sequence[str] = ()) -> pathlib.Path:
    return (pathlib.Path(root) / top_dir_name(tile_size, num_subtiles, settings)
            / sensor_dir_name(supported, required) / str(num_samples))


def split_labels(joined: str, what: str = "directory name") -> tuple[str, ...]:
    """Split "a_b_c" into registered sensor labels (labels contain underscores).

    Longest label first with backtracking, so "sentinel2_l2a" is one label, not
    "sentinel2" + "l2a".
    """
    parts = joined.split("_")
    known = set(sensors.all_labels())

    def solve(i: int) -> list[str] | None:
        if i == len(parts):
            return []
        for j in range(len(parts), i, -1):
            cand = "_".join(parts[i:j])
            if cand in known:
                rest = solve(j)
                if rest is not None:
                    return [cand, *rest]
        return None

    out = solve(0) if joined else None
    if out is None:
        raise H5FormatError(
            f"{what} {joined!r} is not a '_'-joined list of sensor labels; known labels: "
            f"{', '.join(sorted(known))}"
        )
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class DirInfo:
    """What the path of an H5 sample directory says about its content."""

    path: pathlib.Path
    num_samples: int
    supported: tuple[str, ...]
    required: tuple[str, ...]
    tile_size: int | None  # None when the top directory is not in the standard form
    num_subtiles: int | None
    compression: str | None


def parse_dataset_dir(path) -> DirInfo:
    """Parse `<top>/<labels>/<num_samples>`; raises H5FormatError naming the bad part."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"H5 dataset directory {str(path)!r} does not exist")
    if not path.name.isdigit():
        raise H5FormatError(
            f"H5 dataset directory {str(path)!r}: the last path component must be the sample "
            f"count (an integer), got {path.name!r}; expected "
            f".../{TOP_PREFIX}..._<tile>_x_<subtiles>/<labels>/<num_samples>"
        )
    sensor_part = path.parent.name
    if "_required_" in sensor_part:
        sup, req = sensor_part.split("_required_", 1)
        required = split_labels(req, f"required-sensor part of {str(path.parent)!r}")
    else:
        sup, required = sensor_part, ()
    supported = split_labels(sup, f"sensor directory {str(path.parent)!r}")
    m = _TOP_RE.match(path.parent.parent.name)
    tile = int(m["tile"]) if m else None
    subtiles = int(m["subtiles"]) if m else None
    comp = m["comp"] if m else None
    return DirInfo(path, int(path.name), supported, required, tile, subtiles, comp)


def fingerprint(info: DirInfo, dtype: str, filter_idx_file: str | None = None) -> str:
    """The original's dataset fingerprint (SHA-256; checkpoint compatibility check)."""
    mods = sorted({*info.supported, "latlon"})
    s = (f"tile_path={info.path.parent.parent.parent},supported_modalities={mods},"
         f"sample_size={info.num_samples},dtype={dtype}")
    if filter_idx_file is not None:
        s += f",filter_idx_file={filter_idx_file}"
    return hashlib.sha256(s.encode()).hexdigest()


# --------------------------------------------------------------------------------------
# Writer


@dataclasses.dataclass
class H5Sample:
    """One sample as stored: arrays in their on-disk axis order and native dtype."""

    timestamps: np.ndarray  # (T_ref, 3) int [day, month0, year]
    latlon: np.ndarray  # (2,) [lat, lon]
    arrays: dict[str, np.ndarray]  # label -> stored array (present sensors only)
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # (T_ref,) bool


def stored_shape_error(label: str, shape: tuple[int, ...], mask: np.ndarray | None) -> str:
    """'' if `shape` is a valid stored shape for `label`, else the reason."""
    spec = sensors.get(label)
    c = spec.num_channels
    kind = spec.kind
    shape = tuple(shape)
    if not shape or shape[-1] != c:
        return f"expected {c} channels ({', '.join(spec.bands)}) in the last axis, got shape {shape}"
    if kind == SensorKind.SPACE_TIME:
        if len(shape) != 4:
            return f"expected (H, W, T, C) for a space+time sensor, got shape {shape}"
        if mask is not None and int(np.sum(mask)) != shape[2]:
            return (f"{shape[2]} stored timesteps but its missing-timestep mask has "
                    f"{int(np.sum(mask))} present entries")
    elif kind == SensorKind.SPACE:
        if len(shape) != 4 or shape[2] != 1:
            return f"expected (H, W, 1, C) for a space-only sensor, got shape {shape}"
    elif kind == SensorKind.TIME:
        if len(shape) != 2:
            return f"expected (T, C) for a time-only sensor, got shape {shape}"
    elif len(shape) != 1:
        return f"expected (C,) for a constant sensor, got shape {shape}"
    return ""


def write_sample(path, sample: H5Sample, settings: CompressionSettings) -> None:
    """Write one `sample_{i}.h5` exactly as the original's converter does."""
    ts = np.asarray(sample.timestamps)
    if ts.ndim != 2 or ts.shape[1] != 3:
        raise ValueError(f"{path}: timestamps must be (T, 3) [day, month0, year], got {ts.shape}")
    with h5py.File(path, "w") as f:
        for label, arr in sample.arrays.items():
            why = stored_shape_error(label, arr.shape, sample.masks.get(label))
            if why:
                raise ValueError(f"{path}: sensor {label!r}: {why}")
            f.create_dataset(label, data=arr, **settings.dataset_kwargs(arr.shape))
        f.create_dataset("latlon", data=np.asarray(sample.latlon, np.float32))
        f.create_dataset("timestamps", data=ts)
        if sample.masks:
            g = f.create_group(MASKS_GROUP)
            for label, m in sample.masks.items():
                m = np.asarray(m, bool)
                if m.shape != (ts.shape[0],):
                    raise ValueError(
                        f"{path}: missing-timestep mask of {label!r} must be ({ts.shape[0]},), "
                        f"got {m.shape}")
                g.create_dataset(label, data=m)  # masks are written uncompressed


def write_metadata(directory, supported: Sequence[str], present: Sequence[Iterable[str]],
                   latlons: np.ndarray, settings: CompressionSettings) -> None:
    """sample_metadata.csv, latlon_distribution.npy and compression_settings.json."""
    directory = pathlib.Path(directory)
    with open(directory / METADATA_CSV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_index", *supported])
        for i, labels in enumerate(present):
            labels = set(labels)
            w.writerow([i, *(int(lab in labels) for lab in supported)])
    np.save(directory / LATLON_NPY, np.asarray(latlons, np.float32).reshape(-1, 2))
    with open(directory / COMPRESSION_JSON, "w") as fh:
        json.dump(settings.to_json(), fh)


# --------------------------------------------------------------------------------------
# Reader


@dataclasses.dataclass(frozen=True)
class SampleHeader:
    """Everything about one sample except its pixels (cheap to read)."""

    path: str
    timestamps: np.ndarray  # (L, 3), trimmed and edge-padded to >= 12 rows
    current_length: int  # trimmed length before padding
    positions: dict[str, np.ndarray]  # space+time/time-only label -> filled index of each stored step (may be < 0 or >= length: trimmed away)
    shapes: dict[str, tuple[int, ...]]  # present training sensors -> stored shape
    height: int  # base-grid (10 m) size of the sample
    width: int
    has_masks: bool

    @property
    def length(self) -> int:
        return int(self.timestamps.shape[0])

    def mask(self, label: str) -> np.ndarray | None:
        """(L,) bool: filled timesteps that hold data for a space+time sensor."""
        if label not in self.positions:
            return None
        m = np.zeros(self.length, bool)
        pos = self.positions[label]
        m[pos[(pos >= 0) & (pos < self.current_length)]] = True
        return m


@dataclasses.dataclass(frozen=True)
class CropWindow:
    """Which timesteps and base-grid pixels to read.

    rows / cols are base-grid (10 m) pixel indices (a rectangle is an arange; the
    patchwise crop gathers blocks); sensors stored finer (naip_10) read m*m pixels per
    base pixel.
    """

    t_start: int
    t_len: int
    rows: np.ndarray
    cols: np.ndarray


def full_window(header: SampleHeader) -> CropWindow:
    return CropWindow(0, header.length, np.arange(header.height), np.arange(header.width))


@dataclasses.dataclass
class Sample:
    """A read sample: channel-last float arrays, ABSENT-filled, plus timestamps."""

    arrays: dict[str, np.ndarray]  # space+time (h,w,T,C); space (h,w,1,C); time (T,C); const (C,)
    timestamps: np.ndarray  # (T, 3)
    missing: frozenset[str]  # sensors absent from the file (fully ABSENT)
    path: str = ""
    index: int = -1


def _first_last(mask: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(mask)
    return (int(idx[0]), int(idx[-1])) if idx.size else None


def _stored_index(idx: np.ndarray, m: int) -> np.ndarray:
    """Base-grid pixel indices -> stored pixel indices for m stored pixels per base pixel."""
    if m == 1:
        return idx
    return (idx[:, None] * m + np.arange(m)[None, :]).reshape(-1)


def _read_slab(ds, rows: np.ndarray, cols: np.ndarray, tsel: slice | None):
    """Read rows x cols (x tsel) of a stored array.

    A dataset stored as one chunk (the converter's default when compressed) is decoded
    whole whatever the selection, so it is read through h5py's fast full read and cut in
    numpy; otherwise only the bounding box is read (a hyperslab), then gathered.
    """
    if ds.chunks is not None and tuple(ds.chunks) == tuple(ds.shape):
        full = ds[()]
        r0 = c0 = 0
    else:
        r0, r1 = int(rows.min()), int(rows.max()) + 1
        c0, c1 = int(cols.min()), int(cols.max()) + 1
        full = ds[(slice(r0, r1), slice(c0, c1)) + ((tsel,) if tsel is not None else ())]
        tsel = None
    if tsel is not None:
        full = full[:, :, tsel]
    n_r, n_c = full.shape[0], full.shape[1]
    if rows.size == n_r and rows[0] == r0 and not np.any(np.diff(rows) != 1):
        out = full
    elif rows.size and not np.any(np.diff(rows) != 1):
        out = full[rows[0] - r0:rows[0] - r0 + rows.size]
    else:
        out = full[rows - r0]
    if cols.size == n_c and cols[0] == c0 and not np.any(np.diff(cols) != 1):
        return out
    if cols.size and not np.any(np.diff(cols) != 1):
        return out[:, cols[0] - c0:cols[0] - c0 + cols.size]
    return out[:, cols - c0]


class H5Source:
    """Random-access reader of an H5 sample directory (the original's GeoTileDataset).

    `prepare()` filtering happens at construction (main process): samples whose
    metadata row has 0 for every space+time training sensor are removed, then the
    optional filter_idx_file intersection and dataset_percentage subsampling (PCG64(seed)).
    Item i reads `sample_{sample_indices[i]}.h5`. Pickles with paths and arrays only.
    """

    def __init__(self, path, sensor_labels: Sequence[str], dtype: str = "float32",
                 filter_idx_file: str | None = None, dataset_percentage: float = 1.0,
                 seed: int = 0):
        self.info = parse_dataset_dir(path)
        self.path = str(self.info.path)
        self.sensor_labels = tuple(sensor_labels)
        for label in self.sensor_labels:
            sensors.get(label)
        unsupported = [lab for lab in self.sensor_labels
                       if lab not in self.info.supported and lab != "latlon"]
        if unsupported:
            raise H5FormatError(
                f"{self.path}: training sensors {unsupported} are not among the dataset's "
                f"sensors {list(self.info.supported)} (from its directory name)"
            )
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            # float16 cannot hold ABSENT (-99999 overflows to -inf); the original allows it.
            raise ValueError(f"reader dtype must be float32 or float64, got {dtype!r}")
        self.filter_idx_file = filter_idx_file
        self.sample_indices = self._prepare(filter_idx_file, dataset_percentage, seed)
        self.fingerprint = fingerprint(self.info, str(self.dtype), filter_idx_file)

    # -- prepare --------------------------------------------------------------------
    def _read_metadata(self) -> tuple[list[str], np.ndarray]:
        csv_path = pathlib.Path(self.path) / METADATA_CSV
        if not csv_path.is_file():
            raise FileNotFoundError(f"{self.path}: {METADATA_CSV} is missing")
        with open(csv_path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows or rows[0][:1] != ["sample_index"]:
            raise H5FormatError(f"{csv_path}: first column must be 'sample_index', got {rows[:1]}")
        header = rows[0]
        body = [r for r in rows[1:] if r]
        if any(len(r) != len(header) for r in body):
            raise H5FormatError(f"{csv_path}: rows do not all have {len(header)} columns")
        try:
            table = np.asarray(body, dtype=np.float64).reshape(-1, len(header))
        except ValueError as e:
            raise H5FormatError(f"{csv_path}: non-numeric entry ({e})") from None
        return header, table.astype(np.int64)

    def _prepare(self, filter_idx_file, pct, seed) -> np.ndarray:
        n = self.info.num_samples
        header, table = self._read_metadata()
        if table.shape[0] != n:
            raise H5FormatError(
                f"{self.path}: {METADATA_CSV} has {table.shape[0]} rows but the directory name "
                f"says {n} samples")
        order = np.argsort(table[:, 0])
        table = table[order]
        if not np.array_equal(table[:, 0], np.arange(n)):
            raise H5FormatError(f"{self.path}: {METADATA_CSV} sample_index is not 0..{n - 1}")
        st = [lab for lab in self.sensor_labels if sensors.get(lab).kind == SensorKind.SPACE_TIME]
        keep = np.ones(n, bool)
        if st:
            missing_cols = [lab for lab in st if lab not in header]
            if missing_cols:
                raise H5FormatError(f"{self.path}: {METADATA_CSV} has no column for {missing_cols}")
            cols = [header.index(lab) for lab in st]
            keep = table[:, cols].any(axis=1)
        idx = np.flatnonzero(keep)
        if filter_idx_file is not None:
            allowed = np.load(filter_idx_file)
            idx = np.intersect1d(idx, allowed)
        if not 0 < pct <= 1:
            raise ValueError(f"dataset_percentage must be in (0, 1], got {pct}")
        if pct < 1:
            rng = np.random.Generator(np.random.PCG64(seed))
            idx = np.sort(rng.choice(idx, int(len(idx) * pct), replace=False))
        if idx.size == 0:
            raise H5FormatError(
                f"{self.path}: no sample has any of the space+time training sensors {st}")
        return idx.astype(np.int64)

    def __len__(self) -> int:
        return int(self.sample_indices.size)

    def file_path(self, i: int) -> str:
        return os.path.join(self.path, f"sample_{int(self.sample_indices[i])}.h5")

    # -- per item ---------------------------------------------------------------------
    def read_header(self, f: h5py.File, path: str, datasets: dict | None = None
                    ) -> SampleHeader:
        """Spec §2.5 steps 1-3: which sensors, temporal trim, timestamps padded to 12.

        `datasets`, if given, receives the opened sensor datasets (reused by the read).
        """
        datasets = {} if datasets is None else datasets
        names = set(f.keys())
        if "timestamps" not in names:
            raise H5FormatError(f"{path}: no 'timestamps' dataset")
        ts = np.asarray(f["timestamps"][()])
        if ts.ndim != 2 or ts.shape[1] != 3 or ts.shape[0] < 1:
            raise H5FormatError(f"{path}: 'timestamps' must be (T, 3) [day, month0, year], got {ts.shape}")
        t_ref = ts.shape[0]
        shapes: dict[str, tuple[int, ...]] = {}
        for label in self.sensor_labels:
            if label in names:
                datasets[label] = f[label]
                shapes[label] = tuple(datasets[label].shape)
        masks: dict[str, np.ndarray] = {}
        grp = f[MASKS_GROUP] if MASKS_GROUP in names else None
        mask_names = set(grp.keys()) if grp is not None else set()
        for label in self.sensor_labels:
            if label in mask_names:
                m = np.asarray(grp[label][()]).astype(bool)
                if m.shape != (t_ref,):
                    raise H5FormatError(
                        f"{path}: missing_timesteps_masks/{label} has shape {m.shape}, expected "
                        f"({t_ref},) like 'timestamps'")
                masks[label] = m
        # Present space+time sensors without a mask hold every reference timestep.
        for label, shape in shapes.items():
            spec = sensors.get(label)
            why = stored_shape_error(label, shape, masks.get(label))
            if why:
                raise H5FormatError(f"{path}: sensor {label!r}: {why}")
            if spec.kind in (SensorKind.SPACE_TIME, SensorKind.TIME) and label not in masks:
                t_s = shape[2] if spec.kind == SensorKind.SPACE_TIME else shape[0]
                if t_s != t_ref:
                    raise H5FormatError(
                        f"{path}: sensor {label!r} has {t_s} timesteps, no missing-timestep mask, "
                        f"and 'timestamps' has {t_ref} rows: cannot tell which steps are present")
        # Step 2: temporal trim to the span covered by any mask.
        spans = [s for s in (_first_last(m) for m in masks.values()) if s is not None]
        if masks and not spans:
            raise H5FormatError(f"{path}: every missing-timestep mask is all False")
        first, last = (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else (0, t_ref - 1)
        cur = last - first + 1
        ts = ts[first:last + 1]
        if cur < MAX_TEMPORAL_DEPTH:  # step 3: edge padding
            ts = np.concatenate([ts, np.repeat(ts[-1:], MAX_TEMPORAL_DEPTH - cur, axis=0)])
        positions: dict[str, np.ndarray] = {}
        for label in shapes:
            kind = sensors.get(label).kind
            if kind not in (SensorKind.SPACE_TIME, SensorKind.TIME):
                continue
            # Stored step j goes to the j-th present reference row, shifted by the trim
            # (a sensor without a mask stores every reference row; rows trimmed away get
            # positions outside [0, cur) and are never inside a crop window).
            rows = np.flatnonzero(masks[label]) if label in masks else np.arange(t_ref)
            positions[label] = rows - first
        height = width = None
        for label, shape in shapes.items():
            spec = sensors.get(label)
            if spec.is_spatial:
                m = spec.pixels_per_base_pixel
                if shape[0] % m or shape[1] % m:
                    raise H5FormatError(
                        f"{path}: sensor {label!r} shape {shape} is not a multiple of its "
                        f"{m} stored pixels per 10 m pixel")
                hw = (shape[0] // m, shape[1] // m)
                if height is None:
                    height, width = hw
                elif hw != (height, width):
                    raise H5FormatError(
                        f"{path}: sensor {label!r} covers {hw[0]}x{hw[1]} base pixels, other "
                        f"sensors {height}x{width}")
        if height is None:
            if self.info.tile_size is None:
                raise H5FormatError(
                    f"{path}: no spatial training sensor is present and the directory name gives "
                    "no tile size: cannot infer the sample's spatial size")
            height = width = self.info.tile_size
        return SampleHeader(path, ts, cur, positions, shapes, height, width, bool(masks))

    def read(self, i: int, choose_window: Callable[[SampleHeader], CropWindow] | None = None
             ) -> Sample:
        """Read item i (spec §2.5 steps 1-5): ABSENT-filled channel-last float arrays.

        choose_window(header) picks the crop; None reads the whole sample (timesteps
        padded to >= 12). Raises H5FormatError / OSError naming the file on bad input.
        """
        path = self.file_path(i)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"H5 sample file {path} (item {i}) does not exist")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise OSError(f"cannot open H5 sample file {path}: {e}") from None
        with f:
            try:
                dsets: dict = {}
                header = self.read_header(f, path, dsets)
                win = choose_window(header) if choose_window is not None else full_window(header)
                arrays, missing = self._read_arrays(dsets, header, win)
            except (OSError, KeyError, RuntimeError) as e:  # h5py's errors on corrupt files
                raise OSError(f"cannot read H5 sample file {path}: {e}") from None
        t = win.t_start
        return Sample(arrays, header.timestamps[t:t + win.t_len], frozenset(missing), path, i)

    def _read_arrays(self, dsets, header: SampleHeader, win: CropWindow):
        arrays: dict[str, np.ndarray] = {}
        missing = []
        h, w = win.rows.size, win.cols.size
        t0, tl = win.t_start, win.t_len
        for label in self.sensor_labels:
            spec = sensors.get(label)
            c = spec.num_channels
            m = spec.pixels_per_base_pixel
            kind = spec.kind
            rows, cols = _stored_index(win.rows, m), _stored_index(win.cols, m)
            if label not in header.shapes:
                missing.append(label)
                shape = {SensorKind.SPACE_TIME: (h * m, w * m, tl, c),
                         SensorKind.SPACE: (h * m, w * m, 1, c),
                         SensorKind.TIME: (tl, c), SensorKind.CONSTANT: (c,)}[kind]
                arrays[label] = np.full(shape, MISSING_VALUE, self.dtype)
                continue
            ds = dsets[label]
            if kind == SensorKind.SPACE:
                arrays[label] = _read_slab(ds, rows, cols, None).astype(self.dtype)
            elif kind == SensorKind.CONSTANT:
                arrays[label] = np.asarray(ds[()], self.dtype)
            else:
                pos = header.positions[label]
                lo, hi = max(t0, 0), min(t0 + tl, header.current_length)  # trimmed span only
                sel = np.flatnonzero((pos >= lo) & (pos < hi))
                if kind == SensorKind.SPACE_TIME:
                    out = np.full((h * m, w * m, tl, c), MISSING_VALUE, self.dtype)
                    if sel.size:
                        j0, j1 = int(sel[0]), int(sel[-1]) + 1  # sel is contiguous
                        data = _read_slab(ds, rows, cols, slice(j0, j1))
                        out[:, :, pos[sel] - t0] = data
                else:
                    out = np.full((tl, c), MISSING_VALUE, self.dtype)
                    if sel.size:
                        out[pos[sel] - t0] = ds[int(sel[0]):int(sel[-1]) + 1]
                arrays[label] = out
        return arrays, missing

    def __getitem__(self, i: int) -> Sample:
        return self.read(i)

    def __repr__(self) -> str:
        return f"H5Source({self.path!r}, {len(self)} samples, sensors={list(self.sensor_labels)})"


def read_all_present(source: H5Source, indices: Iterable[int]) -> Mapping[int, frozenset]:
    """Which training sensors each item's file holds (for tests and tooling)."""
    out = {}
    for i in indices:
        with h5py.File(source.file_path(i), "r") as f:
            out[i] = frozenset(lab for lab in source.sensor_labels if lab in f)
    return out
