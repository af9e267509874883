"""Synthetic multi-sensor datasets written as REAL H5 files in the original's layout.

This is the built-in default dataset of pretraining and of the tests: same directory
naming, same datasets, dtypes and axis orders as a converted OlmoEarth/SpaceNit tile
set, so the reader cannot tell the difference.

Content is cheap but plausible: one smooth random field per sample (low-resolution
noise upsampled bilinearly) shared by all sensors (they are co-registered), plus a
smooth per-timestep field for temporal sensors, mapped to each sensor's value range
and dtype: S2/Landsat uint16 reflectances around the real band means, S1 float32 dB,
categorical uint8 maps for WorldCover / CDL (real class codes), WorldCereal 0/100
masks, int16 SRTM elevation, sparse binary OSM rasters, canopy height in metres, ERA5
near its climatology. Some samples lack whole sensors (never every space+time one)
and space+time sensors other than the sample's reference lose random timesteps
(compact arrays + missing_timesteps_masks, as the converter writes them).

Generation is parallel over processes and deterministic in (seed, sample index).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.data import h5
from spacenit_jax.data.normalize import load_stats
from spacenit_jax.sensors import SensorKind

SETTINGS_JSON = "synthetic_settings.json"
# Bumped when the generated content changes; a dataset written by an older generator is
# regenerated in place (2: SRTM elevations clipped to value_ranges' plausible range).
GENERATOR_VERSION = 2
WORLDCOVER_CLASSES = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100], np.uint8)
BLOCK = 4  # content cell size in base pixels
CDL_CLASSES = np.array([1, 5, 24, 36, 37, 61, 111, 121, 141, 176, 190, 195], np.uint8)


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    num_samples: int
    sensor_labels: tuple[str, ...] = sensors.OFFICIAL_SENSORS
    seed: int = 0
    tile_size: int = 64
    compression: str | None = "zstd"
    compression_opts: int | None = 3
    num_timesteps: int = 12
    missing_sensor_prob: float = 0.1
    missing_timestep_prob: float = 0.3  # per (sample, non-reference space+time sensor)

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.tile_size < 1 or sensors.TILE_EDGE_PIXELS % self.tile_size:
            raise ValueError(f"tile_size must divide {sensors.TILE_EDGE_PIXELS}, got {self.tile_size}")
        if self.num_timesteps < sensors.MAX_TEMPORAL_DEPTH:
            raise ValueError(
                f"num_timesteps must be >= {sensors.MAX_TEMPORAL_DEPTH} (the converter drops "
                f"shorter samples), got {self.num_timesteps}")
        for label in self.sensor_labels:
            spec = sensors.get(label)
            if spec.skip_csv_parsing:
                raise ValueError(
                    f"sensor {label!r} is never stored in H5 files by the original converter "
                    "(skip_csv_parsing); latlon is always written as its own dataset")
        if not any(sensors.get(lab).kind == SensorKind.SPACE_TIME for lab in self.sensor_labels):
            raise ValueError(
                f"sensors {list(self.sensor_labels)} include no space+time sensor; the converter "
                "drops such samples")
        if len(set(self.sensor_labels)) != len(self.sensor_labels):
            raise ValueError(f"duplicate sensors in {self.sensor_labels}")

    @property
    def settings(self) -> h5.CompressionSettings:
        opts = self.compression_opts if self.compression in ("gzip", "zstd") else None
        return h5.CompressionSettings(self.compression, opts, None)

    @property
    def num_subtiles(self) -> int:
        return (sensors.TILE_EDGE_PIXELS // self.tile_size) ** 2

    def directory(self, root) -> pathlib.Path:
        return h5.dataset_dir(root, self.sensor_labels, self.num_samples, self.tile_size,
                              self.num_subtiles, self.settings)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["sensor_labels"] = list(self.sensor_labels)
        return d


@functools.lru_cache(maxsize=64)
def _bilinear(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation matrix (align corners)."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _smooth(rng: np.random.Generator, size: int, extra: tuple[int, ...] = (), lo: int = 6
            ) -> np.ndarray:
    """(size, size, *extra) smooth field with unit-ish variance."""
    lo = min(lo, max(size, 2))
    x = rng.standard_normal((lo, lo, *extra), dtype=np.float32)
    m = _bilinear(lo, size)
    y = (m @ x.reshape(lo, -1)).reshape(size, lo, -1)  # rows
    y = np.matmul(m[None], y)  # (size, size, prod(extra)): columns
    return y.reshape(size, size, *extra) * 1.6


def _stats(label: str) -> tuple[np.ndarray, np.ndarray]:
    comp = load_stats("computed")[label]
    bands = sensors.get(label).bands
    return (np.array([comp[b]["mean"] for b in bands], np.float32),
            np.array([comp[b]["std"] for b in bands], np.float32))


def _upsample(x: np.ndarray, k: int) -> np.ndarray:
    return x if k == 1 else np.repeat(np.repeat(x, k, axis=0), k, axis=1)


def _space_time(label: str, field: np.ndarray, tfield: np.ndarray, months: np.ndarray,
                rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """(H, W, T, C) values for a space+time sensor at its present timesteps."""
    spec = sensors.get(label)
    tfield = tfield[:, :, mask]
    c = spec.num_channels
    season = np.cos(2 * np.pi * (months - 6) / 12.0).astype(np.float32)  # summer peak
    if label in ("sentinel2_l2a", "sentinel2", "landsat"):
        mean, std = _stats("sentinel2_l2a" if label == "sentinel2" else label)
        if label == "sentinel2":
            mean, std = np.append(mean, 1500.0), np.append(std, 800.0)  # B10
        gain = rng.uniform(0.8, 1.2, c).astype(np.float32)
        x = (mean * gain + 0.35 * std * (field[..., None, None] + 0.5 * tfield[..., None])
             + 0.1 * std * season[:, None])
        return np.clip(x, 0, 65535).astype(np.uint16)
    if label == "sentinel1":
        mean = np.array([-11.6, -17.7], np.float32)
        x = mean + 2.5 * field[..., None, None] + 1.5 * tfield[..., None] + season[:, None]
        return x.astype(np.float32)
    if label == "era5":
        mean, std = _stats("era5_10")
        x = mean + 0.5 * std * (0.3 * field[..., None, None] + season[:, None])
        return x.astype(np.float32)
    raise ValueError(f"no synthetic generator for space+time sensor {label!r}")


def _space(label: str, field: np.ndarray, rng: np.random.Generator, m: int) -> np.ndarray:
    """(H*m, W*m, 1, C) values for a space-only sensor."""
    if m > 1:
        field = np.repeat(np.repeat(field, m, 0), m, 1)
    size = field.shape[0]
    c = sensors.get(label).num_channels
    if label == "worldcover":
        q = np.clip(((field + 2.5) / 5 * len(WORLDCOVER_CLASSES)).astype(int), 0, 10)
        return WORLDCOVER_CLASSES[q][..., None, None]
    if label == "cdl":
        q = np.clip(((field + 2.5) / 5 * len(CDL_CLASSES)).astype(int), 0, len(CDL_CLASSES) - 1)
        return CDL_CLASSES[q][..., None, None]
    if label == "worldcereal":
        thr = rng.uniform(-0.5, 2.5, c).astype(np.float32)
        return np.where(field[..., None] > thr, 100, 0).astype(np.uint8)[:, :, None]
    if label == "srtm":
        base = rng.uniform(0, 2500)
        # within value_ranges' plausible elevations (the lowest land is ~-430 m)
        return np.clip(base + 250 * field, -400, 8800).astype(np.int16)[..., None, None]
    if label == "openstreetmap_raster":
        out = np.zeros((size, size, 1, c), np.uint8)
        for k in rng.choice(c, 4, replace=False):  # a few classes present per sample
            out[..., 0, k] = field > rng.uniform(0.8, 2.0)
        return out
    if label == "wri_canopy_height_map":
        return np.clip(12 + 8 * field, 0, 60).astype(np.uint8)[..., None, None]
    if label == "worldpop":
        return np.maximum(0, 150 * np.exp(field)).astype(np.float32)[..., None, None]
    if label == "gse":
        w = rng.standard_normal(c).astype(np.float32)
        return np.clip(8192 + 3000 * field[..., None] * w, 0, 65535).astype(np.uint16)[:, :, None]
    if label in ("naip", "naip_10"):
        mean = np.array([102, 109, 94, 128], np.float32)
        return np.clip(mean + 40 * field[..., None], 0, 255).astype(np.uint8)[:, :, None]
    raise ValueError(f"no synthetic generator for space-only sensor {label!r}")


def make_sample(spec: SyntheticSpec, index: int) -> h5.H5Sample:
    """Sample `index` of the synthetic dataset (deterministic in (seed, index))."""
    rng = np.random.default_rng([spec.seed, index])
    t_ref = spec.num_timesteps
    year = int(rng.integers(2017, 2024))
    months = np.arange(t_ref) % 12
    years = year + np.arange(t_ref) // 12
    timestamps = np.stack([rng.integers(1, 29, t_ref), months, years], axis=1).astype(np.int32)
    latlon = np.array([rng.uniform(-60, 70), rng.uniform(-180, 180)], np.float32)
    labels = spec.sensor_labels
    st = [lab for lab in labels if sensors.get(lab).kind == SensorKind.SPACE_TIME]
    present = [lab for lab in labels if rng.random() >= spec.missing_sensor_prob]
    if not any(lab in present for lab in st):  # keep at least one space+time sensor
        present.append(st[int(rng.integers(len(st)))])
    present = [lab for lab in labels if lab in present]
    reference = next(lab for lab in present if lab in st)
    # Content is computed on a grid BLOCK times coarser (40 m cells) and repeated: that
    # is what makes thousands of samples per minute and small compressed files possible.
    block = BLOCK if spec.tile_size % BLOCK == 0 else 1
    size = spec.tile_size // block
    field = _smooth(rng, size)
    tfield = _smooth(rng, size, (t_ref,), lo=4) if st else None
    arrays, masks = {}, {}
    for label in present:
        sp = sensors.get(label)
        if sp.kind == SensorKind.SPACE_TIME:
            mask = np.ones(t_ref, bool)
            if label != reference and rng.random() < spec.missing_timestep_prob:
                drop = rng.choice(t_ref, int(rng.integers(1, 5)), replace=False)
                mask[drop] = False
            arrays[label] = _upsample(_space_time(label, field, tfield, months[mask], rng,
                                                  mask), block)
            masks[label] = mask
        elif sp.kind == SensorKind.SPACE:
            arrays[label] = _upsample(_space(label, field, rng, 1), block * sp.pixels_per_base_pixel)
        elif sp.kind == SensorKind.TIME:  # era5_10: (T, C), all reference timesteps
            mean, std = _stats("era5_10")
            season = np.cos(2 * np.pi * (months - 6) / 12.0)[:, None]
            arrays[label] = (mean + 0.5 * std * season).astype(np.float32)
        else:
            raise ValueError(f"no synthetic generator for constant sensor {label!r}")
    return h5.H5Sample(timestamps, latlon, arrays, masks)


def _write_range(spec: SyntheticSpec, directory: str, start: int, stop: int):
    settings = spec.settings
    present, latlons = [], []
    for i in range(start, stop):
        s = make_sample(spec, i)
        h5.write_sample(os.path.join(directory, f"sample_{i}.h5"), s, settings)
        present.append(tuple(s.arrays))
        latlons.append(s.latlon)
    return start, present, latlons


def _existing(path: pathlib.Path, spec: SyntheticSpec) -> str:
    """"current" (complete, these settings), "stale" (these settings, an older generator)
    or "" (not written by make_dataset with these settings)."""
    try:
        with open(path / SETTINGS_JSON) as fh:
            written = json.load(fh)
    except (OSError, ValueError):
        return ""
    version = written.pop("generator_version", 1) if isinstance(written, dict) else None
    if written != spec.to_json():
        return ""
    if version != GENERATOR_VERSION:
        return "stale"
    side = (h5.METADATA_CSV, h5.LATLON_NPY, h5.COMPRESSION_JSON)
    return "current" if all((path / f).is_file() for f in side) else ""


def make_dataset(root, spec: SyntheticSpec, workers: int | None = None,
                 overwrite: bool = False) -> pathlib.Path:
    """Write the dataset under `root`; returns the `<num_samples>` directory.

    An existing complete dataset with identical settings is reused unless `overwrite`; one
    written by an older version of this generator is regenerated. Files are written into
    a temporary sibling and renamed into place at the end, so a crashed run never leaves
    a directory that looks complete.
    """
    final = spec.directory(root)
    if final.exists():
        state = _existing(final, spec)
        if state == "current" and not overwrite:
            return final
        if state != "stale" and not overwrite:
            raise FileExistsError(
                f"{final} exists but was not written by make_dataset with these settings; "
                "pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=final.parent))
    try:
        n = spec.num_samples
        workers = max(1, min(workers or os.cpu_count() or 1, n))
        chunk = max(1, min(256, -(-n // (workers * 4))))
        ranges = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        present: list = [None] * n
        latlons = np.zeros((n, 2), np.float32)
        if workers == 1:
            results = (_write_range(spec, str(tmp), a, b) for a, b in ranges)
            _collect(results, present, latlons)
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
                futs = [ex.submit(_write_range, spec, str(tmp), a, b) for a, b in ranges]
                _collect((f.result() for f in futs), present, latlons)
        h5.write_metadata(tmp, spec.sensor_labels, present, latlons, spec.settings)
        with open(tmp / SETTINGS_JSON, "w") as fh:
            json.dump({**spec.to_json(), "generator_version": GENERATOR_VERSION}, fh)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _collect(results, present, latlons):
    for start, pres, lls in results:
        for j, (p, ll) in enumerate(zip(pres, lls, strict=True)):
            present[start + j] = p
            latlons[start + j] = ll
