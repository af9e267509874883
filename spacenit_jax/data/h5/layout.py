"""Names and schema of the original's H5 training-data format (no file I/O here).

Directory layout, byte-compatible with the OlmoEarth / SpaceNit H5 conversions:

    <root>/h5py_data_w_missing_timesteps{_<compression>}{_<opts>}{_shuffle}_<tile>_x_<subtiles>/
        <sorted labels joined by "_">{_required_<sorted required labels>}/<num_samples>/
            sample_{i}.h5                one sample (subtile)
            sample_metadata.csv          sample_index + one 0/1 column per supported sensor
            latlon_distribution.npy      (N, 2) float32 [lat, lon]
            compression_settings.json    {"compression", "compression_opts", "shuffle"}

`_shuffle` is appended whenever shuffle is not None (even False), as the original does.
The SpaceNit README's production run uses a top directory named just "h5py_data"; such
paths parse too, without a tile size.

`sample_{i}.h5` holds one dataset per present sensor in its stored axis order
((H, W, T_s, C) space+time with only the present timesteps, (H, W, 1, C) space-only,
(T_s, C) time-only), `latlon` (2,) float32, `timestamps` (T_ref, 3) integer rows
[day, month0 (0-11), year], and a group `missing_timesteps_masks/` with one bool (T_ref,)
dataset per space+time sensor (True = that reference timestep is stored). Sensor arrays
keep their native dtype (uint16 reflectances, float32 dB, uint8 class maps, int16
elevation...). The missing-value fill (-99999) is never on disk: an absent sensor is not
a dataset, an absent timestep is not stored; the reader materialises the fill. No HDF5
attributes are written.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Iterable, Sequence

import hdf5plugin
import numpy as np

from spacenit_jax import sensors
from spacenit_jax.sensors import SensorKind

TOP_PREFIX = "h5py_data_w_missing_timesteps"
MASKS_GROUP = "missing_timesteps_masks"
METADATA_CSV = "sample_metadata.csv"
LATLON_NPY = "latlon_distribution.npy"
COMPRESSION_JSON = "compression_settings.json"
COMPRESSIONS = ("gzip", "zstd", "lz4")

_TOP_RE = re.compile(
    rf"^{TOP_PREFIX}(?:_(?P<comp>gzip|zstd|lz4))?(?:_(?P<opts>\d+))?(?P<shuffle>_shuffle)?"
    r"_(?P<tile>\d+)_x_(?P<subtiles>\d+)$"
)


class H5FormatError(ValueError):
    """A file or directory does not follow the original's H5 format."""


@dataclasses.dataclass(frozen=True)
class CompressionSettings:
    """How sensor arrays are compressed (None: uncompressed and unchunked).

    compression: None, "gzip" (compression_opts = level, optional shuffle filter), "zstd"
    (hdf5plugin Zstd, compression_opts = clevel, default 3) or "lz4" (hdf5plugin LZ4).
    chunks: None = one chunk holding the whole array (the original converter's default),
    True = h5py's automatic chunking, a tuple = chunk sizes of the leading axes with the
    full extent of the others.
    """

    compression: str | None = None
    compression_opts: int | None = None
    shuffle: bool | None = None
    chunks: bool | tuple[int, ...] | None = None

    def __post_init__(self):
        if self.compression not in (None, *COMPRESSIONS):
            raise ValueError(
                f"compression must be one of None, {COMPRESSIONS}, got {self.compression!r}"
            )

    def to_json(self) -> dict:
        return {"compression": self.compression, "compression_opts": self.compression_opts,
                "shuffle": self.shuffle}

    def dataset_kwargs(self, shape: tuple[int, ...]) -> dict:
        """h5py `create_dataset` keyword arguments for an array of `shape`."""
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
    """`<root>/<top>/<labels>/<num_samples>`: where a dataset with these settings lives."""
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


def stored_shape_error(label: str, shape: tuple[int, ...], mask: np.ndarray | None) -> str:
    """'' if `shape` is a valid stored shape for sensor `label`, else the reason.

    `mask` is the sensor's missing-timestep mask if it has one: a space+time array stores
    exactly as many timesteps as the mask has True entries.
    """
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
