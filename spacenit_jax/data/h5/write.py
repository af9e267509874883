"""Writing H5 samples and the side files of a sample directory (public API).

Any converter (the synthetic generator, a GeoTIFF -> H5 converter) writes a dataset with

    d = dataset_dir(root, supported, num_samples, tile_size, num_subtiles, settings)
    d.mkdir(parents=True)
    for i, sample in enumerate(samples):
        write_sample(d / f"sample_{i}.h5", sample, settings)
    write_metadata(d, supported, [tuple(s.arrays) for s in samples], latlons, settings)

and `read.H5Source(d, labels)` reads it back. The format is described in `layout`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
from collections.abc import Iterable, Sequence

import h5py
import numpy as np

from spacenit_jax.data.h5.layout import (
    COMPRESSION_JSON,
    LATLON_NPY,
    MASKS_GROUP,
    METADATA_CSV,
    CompressionSettings,
    stored_shape_error,
)


@dataclasses.dataclass
class H5Sample:
    """One sample as stored: arrays in their on-disk axis order and native dtype.

    timestamps: (T_ref, 3) integer rows [day, month0 (0-11), year].
    latlon: (2,) [lat, lon] in degrees.
    arrays: sensor label -> stored array, present sensors only: space+time (H, W, T_s, C)
        holding only the timesteps that exist, space-only (H, W, 1, C), time-only (T_s, C).
        H, W are stored pixels (a sensor stored finer than 10 m, naip_10, has 4x as many).
    masks: space+time label -> (T_ref,) bool, True where that reference timestep is
        stored. A space+time sensor without a mask must store all T_ref timesteps.
    """

    timestamps: np.ndarray
    latlon: np.ndarray
    arrays: dict[str, np.ndarray]
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def write_sample(path, sample: H5Sample, settings: CompressionSettings) -> None:
    """Write one `sample_{i}.h5` exactly as the original's converter does.

    Sensor arrays are compressed with `settings` and keep their dtype; `latlon` is written
    as float32; missing-timestep masks are written uncompressed. Raises ValueError naming
    the file and sensor when an array's shape is not its stored shape, or a mask does not
    match the timestamps or the stored timestep count.
    """
    ts = np.asarray(sample.timestamps)
    if ts.ndim != 2 or ts.shape[1] != 3:
        raise ValueError(f"{path}: timestamps must be (T, 3) [day, month0, year], got {ts.shape}")
    for label, arr in sample.arrays.items():  # validate before creating the file
        why = stored_shape_error(label, np.shape(arr), sample.masks.get(label))
        if why:
            raise ValueError(f"{path}: sensor {label!r}: {why}")
    for label, m in sample.masks.items():
        if np.shape(m) != (ts.shape[0],):
            raise ValueError(
                f"{path}: missing-timestep mask of {label!r} must be ({ts.shape[0]},) like "
                f"the timestamps, got {np.shape(m)}")
    with h5py.File(path, "w") as f:
        for label, arr in sample.arrays.items():
            f.create_dataset(label, data=arr, **settings.dataset_kwargs(np.shape(arr)))
        f.create_dataset("latlon", data=np.asarray(sample.latlon, np.float32))
        f.create_dataset("timestamps", data=ts)
        if sample.masks:
            g = f.create_group(MASKS_GROUP)
            for label, m in sample.masks.items():
                g.create_dataset(label, data=np.asarray(m, bool))


def write_metadata(directory, supported: Sequence[str], present: Sequence[Iterable[str]],
                   latlons: np.ndarray, settings: CompressionSettings) -> None:
    """Write sample_metadata.csv, latlon_distribution.npy and compression_settings.json.

    present[i]: the sensor labels stored in sample i; latlons: (N, 2) [lat, lon].
    """
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
