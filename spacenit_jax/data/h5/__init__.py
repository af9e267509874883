"""The original's H5 training-data format: `layout` (names and schema), `write` (the
writer, public for converters) and `read` (`H5Source`, the random-access reader).

Everything public is re-exported here, so `from spacenit_jax.data import h5` then
`h5.write_sample(...)` / `h5.H5Source(...)` is the usual way in.
"""

from spacenit_jax.data.h5.layout import (
    COMPRESSION_JSON,
    COMPRESSIONS,
    LATLON_NPY,
    MASKS_GROUP,
    METADATA_CSV,
    TOP_PREFIX,
    CompressionSettings,
    DirInfo,
    H5FormatError,
    dataset_dir,
    parse_dataset_dir,
    sensor_dir_name,
    split_labels,
    stored_shape_error,
    top_dir_name,
)
from spacenit_jax.data.h5.read import (
    CropWindow,
    H5Source,
    Sample,
    SampleHeader,
    full_window,
)
from spacenit_jax.data.h5.write import H5Sample, write_metadata, write_sample

__all__ = [
    "COMPRESSIONS", "COMPRESSION_JSON", "LATLON_NPY", "MASKS_GROUP", "METADATA_CSV",
    "TOP_PREFIX", "CompressionSettings", "CropWindow", "DirInfo", "H5FormatError", "H5Sample",
    "H5Source", "Sample", "SampleHeader", "dataset_dir", "full_window", "parse_dataset_dir",
    "sensor_dir_name", "split_labels", "stored_shape_error", "top_dir_name", "write_metadata",
    "write_sample",
]
