"""Reading H5 sample directories: `H5Source`, a random-access source of samples.

`H5Source` pickles with paths and index arrays only; every read opens its file afresh
(h5py handles must not cross `spawn`ed Grain workers, and opening per read keeps workers
stateless). Reading is two-phase so that a crop reads only the pixels it needs:
`read_header` loads timestamps, masks and shapes; a caller-chosen `CropWindow` then
selects the hyperslab that `read` decodes.

What a read returns (the original GeoTileDataset's semantics):
1. only the training sensors and `timestamps` are read (latlon only if it is a training
   sensor), with the missing-timestep masks of the training sensors;
2. temporal trim: when masks exist, timestamps are cut to [first, last], the first and
   last reference timestep stored by any sensor;
3. timestamps shorter than 12 rows are padded by repeating the last row; the length
   before padding is the header's `current_length`;
4. a training sensor absent from the file, or an absent timestep of a present one, is
   filled with the missing value -99999 (sensors.MISSING_VALUE), in the reader's float
   dtype; stored timesteps go to their mask positions.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd / lz4 HDF5 filters on import)
import numpy as np

from spacenit_jax import sensors
from spacenit_jax.data.h5.layout import (
    MASKS_GROUP,
    METADATA_CSV,
    H5FormatError,
    parse_dataset_dir,
    stored_shape_error,
)
from spacenit_jax.sensors import MAX_TEMPORAL_DEPTH, MISSING_VALUE, SensorKind


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
    """A read sample: channel-last float arrays (missing data = -99999), plus timestamps."""

    arrays: dict[str, np.ndarray]  # space+time (h,w,T,C); space (h,w,1,C); time (T,C); const (C,)
    timestamps: np.ndarray  # (T, 3)
    missing: frozenset[str]  # sensors absent from the file (all -99999)
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
            # float16 cannot hold the missing value -99999 (it overflows to -inf).
            raise ValueError(f"reader dtype must be float32 or float64, got {dtype!r}")
        self.filter_idx_file = filter_idx_file
        self.sample_indices = self._prepare(filter_idx_file, dataset_percentage, seed)

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
        """Header of an open file: present sensors, temporal trim, timestamps padded to 12.

        `datasets`, if given, receives the opened sensor datasets (reused by the read).
        Raises H5FormatError naming `path` when the file does not follow the format.
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
        """Read item i: channel-last float arrays, missing data filled with -99999.

        choose_window(header) picks the crop; None reads the whole sample (timesteps
        padded to >= 12). Raises H5FormatError / OSError naming the file on bad input.
        """
        path = self.file_path(i)
        with self._open(i) as f:
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

    def _open(self, i: int) -> h5py.File:
        path = self.file_path(i)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"H5 sample file {path} (item {i}) does not exist")
        try:
            return h5py.File(path, "r")
        except OSError as e:
            raise OSError(f"cannot open H5 sample file {path}: {e}") from None

    def header(self, i: int) -> SampleHeader:
        """The header of item i alone (no pixels decoded); errors as `read`'s."""
        path = self.file_path(i)
        with self._open(i) as f:
            try:
                return self.read_header(f, path)
            except (OSError, KeyError, RuntimeError) as e:  # h5py's errors on corrupt files
                raise OSError(f"cannot read H5 sample file {path}: {e}") from None

    def __repr__(self) -> str:
        return f"H5Source({self.path!r}, {len(self)} samples, sensors={list(self.sensor_labels)})"
