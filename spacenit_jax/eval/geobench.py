"""Reader of GeoBench v1 classification tasks, without the geobench package (spec §9.6, §9.7).

Layout: `<root>/classification_v1.0/<task>/` holds one `<sample>.hdf5` per sample (one 2-D
dataset per band, keyed by band name plus a date suffix for dated bands; a file attribute
"pickle" holding the repr of a bytes literal of a pickled dict with "bands_order", per-band
metadata and "label"), `band_stats.json`, `<partition>_partition.json` ({"train", "valid",
"test"} -> sample names) and `task_specs.pkl`.

The pickles name geobench classes (and affine/rasterio ones) that are not installed here. They
are read with an Unpickler that resolves a short allow-list of plain data constructors (numpy
arrays/scalars/dtypes, datetime, OrderedDict) and replaces every other global with an inert
stand-in class that only records its constructor arguments and state. No other code from the
pickle runs, and nothing needs geobench installed.

Each sample becomes an `EvalSample`: bands identified by their GeoBench band name, scaled
(so2sat ships reflectances / 10,000), missing bands imputed from a neighbour band as the
reference does, reordered into the SpaceNit band order of the task's sensor, normalised, and
given a time axis: (H, W, 1, C) float32. For m-eurosat this is GeoBench band indices
[1, 2, 3, 7, 4, 5, 6, 8, 11, 12, 0, 9] (B10 dropped).
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import datetime
import io
import json
import os
import pathlib
import pickle
import re
import warnings

import h5py
import numpy as np
import numpy._core.multiarray as _np_multiarray  # numpy >= 2 module paths
import numpy._core.numeric as _np_numeric

from spacenit_jax import sensors
from spacenit_jax.data.normalize import normalize_array
from spacenit_jax.eval import normalization
from spacenit_jax.eval.samples import DEFAULT_TIMESTAMPS, EvalSample, stack_samples

BENCHMARK_DIR = "classification_v1.0"
SPLITS = ("train", "valid", "test")

# --------------------------------------------------------------------------- safe unpickling


class PickledStandIn:
    """Inert replacement for a class the pickle names but we do not import.

    Keeps the constructor arguments (`args`) and the state given to BUILD (`state`, usually the
    instance __dict__); `pickled_module`/`pickled_name` say which class it stood in for.
    """

    pickled_module = ""
    pickled_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args, **kwargs):  # REDUCE calls cls(*args): nothing to run
        pass

    def __setstate__(self, state):
        self.state = state

    def field(self, name: str, default=None):
        """Attribute `name` from the pickled instance state (dict, or (dict, slots) pair)."""
        state = self.state
        if isinstance(state, tuple):
            state = {k: v for part in state if isinstance(part, dict) for k, v in part.items()}
        return state.get(name, default) if isinstance(state, dict) else default

    def __repr__(self):
        return f"<stand-in {self.pickled_module}.{self.pickled_name}>"


_SAFE_GLOBALS = {  # plain data constructors a GeoBench pickle may need
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("datetime", "date"): datetime.date,
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
for _prefix in ("numpy.core", "numpy._core"):  # pickles from numpy 1.x name numpy.core
    _SAFE_GLOBALS[(f"{_prefix}.multiarray", "scalar")] = _np_multiarray.scalar
    _SAFE_GLOBALS[(f"{_prefix}.multiarray", "_reconstruct")] = _np_multiarray._reconstruct
    _SAFE_GLOBALS[(f"{_prefix}.numeric", "_frombuffer")] = _np_numeric._frombuffer

_STAND_INS: dict[tuple[str, str], type] = {}


class _GeoBenchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        safe = _SAFE_GLOBALS.get((module, name))
        if safe is not None:
            return safe
        key = (module, name)
        if key not in _STAND_INS:
            _STAND_INS[key] = type(name, (PickledStandIn,),
                                   {"pickled_module": module, "pickled_name": name})
        return _STAND_INS[key]


def unpickle_geobench(data: bytes):
    """Unpickle GeoBench metadata with stand-ins for every non-allow-listed class."""
    return _GeoBenchUnpickler(io.BytesIO(data)).load()


# --------------------------------------------------------------------------- bands and tasks

# GeoBench band names -> band ids of the SpaceNit sensor (spec §9.6).
S2_GEOBENCH_BANDS = (
    ("01 - Coastal aerosol", "B01"), ("02 - Blue", "B02"), ("03 - Green", "B03"),
    ("04 - Red", "B04"), ("05 - Vegetation Red Edge", "B05"), ("06 - Vegetation Red Edge", "B06"),
    ("07 - Vegetation Red Edge", "B07"), ("08 - NIR", "B08"), ("08A - Vegetation Red Edge", "B8A"),
    ("09 - Water vapour", "B09"), ("10 - SWIR - Cirrus", "B10"), ("11 - SWIR", "B11"),
    ("12 - SWIR", "B12"),
)  # fmt: skip
L8_GEOBENCH_BANDS = (
    ("01 - Coastal aerosol", "B1"), ("02 - Blue", "B2"), ("03 - Green", "B3"), ("04 - Red", "B4"),
    ("05 - NIR", "B5"), ("06 - SWIR1", "B6"), ("07 - SWIR2", "B7"), ("09 - Cirrus", "B9"),
    ("10 - Tirs1", "B10"),
)  # fmt: skip
# GeoBench 13-band S2 index of each sentinel2_l2a band, in SpaceNit order (B10 dropped).
GEOBENCH_S2_TO_SENTINEL2_L2A = (1, 2, 3, 7, 4, 5, 6, 8, 11, 12, 0, 9)
assert tuple(S2_GEOBENCH_BANDS[i][1] for i in GEOBENCH_S2_TO_SENTINEL2_L2A) == \
    sensors.SENTINEL2_L2A.bands

_SENSOR_BANDS = {  # sensor -> (GeoBench band-info class, GeoBench name -> band id)
    "sentinel2_l2a": ("Sentinel2", dict(S2_GEOBENCH_BANDS)),
    "landsat": ("Landsat8", dict(L8_GEOBENCH_BANDS)),
}

EUROSAT_CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake")
SO2SAT_CLASSES = (
    "Compact high rise", "Compact mid rise", "Compact low rise", "Open high rise",
    "Open mid rise", "Open low rise", "Lightweight low rise", "Large low rise", "Sparsely built",
    "Heavy industry", "Dense trees", "Scattered trees", "Bush, scrub", "Low plants",
    "Bare rock or paved", "Bare soil or sand", "Water",
)  # fmt: skip
FORESTNET_CLASSES = (
    "Oil palm plantation", "Timber plantation", "Other large-scale plantations",
    "Grassland shrubland", "Small-scale agriculture", "Small-scale mixed plantation",
    "Small-scale oil palm plantation", "Mining", "Fish pond", "Logging", "Secondary forest",
    "Other",
)  # fmt: skip
BRICK_KILN_CLASSES = ("not brick kiln", "brick kiln")


@dataclasses.dataclass(frozen=True)
class GeoBenchTask:
    """What the reader needs to know about one GeoBench classification task (spec §9.6).

    imputes: (source band, missing band) pairs in SpaceNit band ids, applied in order, each only
    when the missing band is absent. data_scale multiplies the raw data and the dataset stats.
    default_norm: "pretrained" (COMPUTED stats of the sensor) or a dataset NormMethod name.
    class_names may be None where the order of the label index is not documented.
    stored_band_truth: stored GeoBench band name -> the band its data really is, where the
    files are known to be mislabelled; applied only when the reader is asked to
    (`fix_band_labels=True`), since the reference maps by the stored names.
    """

    name: str
    sensor: str
    num_classes: int
    image_size: int
    class_names: tuple[str, ...] | None = None
    multilabel: bool = False
    imputes: tuple[tuple[str, str], ...] = ()
    data_scale: float = 1.0
    default_norm: str = "pretrained"
    stored_band_truth: tuple[tuple[str, str], ...] = ()


# m-eurosat stores EuroSAT's file band order (B01..B08, B09, B10, B11, B12, B8A) under the
# names of the standard order: band_stats.json means of "08A" (762), "09" (12, cirrus-like),
# "10" (1861), "11" (1139), "12" (2700, NIR-like) match B09, B10, B11, B12, B8A.
EUROSAT_STORED_BAND_TRUTH = (
    ("08A - Vegetation Red Edge", "09 - Water vapour"), ("09 - Water vapour", "10 - SWIR - Cirrus"),
    ("10 - SWIR - Cirrus", "11 - SWIR"), ("11 - SWIR", "12 - SWIR"),
    ("12 - SWIR", "08A - Vegetation Red Edge"),
)  # fmt: skip

TASKS: dict[str, GeoBenchTask] = {t.name: t for t in (
    GeoBenchTask("m-eurosat", "sentinel2_l2a", 10, 64, EUROSAT_CLASSES,
                 stored_band_truth=EUROSAT_STORED_BAND_TRUTH),
    GeoBenchTask("m-bigearthnet", "sentinel2_l2a", 43, 120, None, multilabel=True,
                 imputes=(("B11", "B10"),)),
    GeoBenchTask("m-so2sat", "sentinel2_l2a", 17, 32, SO2SAT_CLASSES,
                 imputes=(("B02", "B01"), ("B8A", "B09"), ("B11", "B10")), data_scale=10_000.0),
    GeoBenchTask("m-brick-kiln", "sentinel2_l2a", 2, 64, BRICK_KILN_CLASSES),
    # ForestNet ships 8-bit Landsat-8 RGB + NIR/SWIR: the reference imputes the other bands and
    # normalises with the dataset statistics (mean +- 2 std), not the pretraining ones.
    GeoBenchTask("m-forestnet", "landsat", 12, 332, FORESTNET_CLASSES,
                 imputes=(("B2", "B1"), ("B7", "B9"), ("B7", "B10"), ("B3", "B8"),
                          ("B10", "B11")),
                 default_norm="norm_no_clip_2_std"),
)}


def get_task(name: str) -> GeoBenchTask:
    key = name.replace("_", "-")
    if key not in TASKS:
        raise KeyError(f"unknown GeoBench classification task {name!r}; known: {sorted(TASKS)}")
    return TASKS[key]


# --------------------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class RawSample:
    """One GeoBench .hdf5 sample as stored: band arrays by GeoBench band name, and the label."""

    name: str
    bands: dict[str, np.ndarray]
    band_classes: dict[str, str]  # band name -> geobench band-info class ("Sentinel2", ...)
    label: object


_DATE_SUFFIX = re.compile(r"_\d{4}-\d{2}-\d{2}$")


def read_sample_hdf5(path: str | os.PathLike) -> RawSample:
    """Read one GeoBench v1 sample file (band datasets + pickled metadata attribute)."""
    path = pathlib.Path(path)
    with h5py.File(path, "r") as f:
        if "pickle" not in f.attrs:
            raise ValueError(f"{path}: no 'pickle' attribute; not a GeoBench v1 sample file")
        raw = f.attrs["pickle"]
        if isinstance(raw, bytes | np.bytes_):
            raw = raw.decode()
        try:
            meta = unpickle_geobench(ast.literal_eval(raw))
        except (ValueError, SyntaxError, pickle.UnpicklingError, EOFError) as err:
            raise ValueError(f"{path}: cannot decode the 'pickle' attribute "
                             f"(expected the repr of a pickled bytes literal): {err}") from err
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: 'pickle' attribute holds {type(meta).__name__}, "
                             "expected a dict")
        order = meta.get("bands_order", list(f.keys()))
        bands, classes, label = {}, {}, meta.get("label")
        for key in order:
            if key not in f:
                raise ValueError(f"{path}: band {key!r} listed in bands_order has no dataset")
            data = np.asarray(f[key])
            band_meta = meta.get(key)
            info = band_meta.get("band_info") if isinstance(band_meta, dict) else None
            name = info.field("name") if isinstance(info, PickledStandIn) else None
            name = name or _DATE_SUFFIX.sub("", key)
            if name.startswith("label"):
                label = data
                continue
            if name in bands:
                raise ValueError(f"{path}: band {name!r} appears twice (multi-date samples are "
                                 "not supported by this reader)")
            bands[name] = data
            classes[name] = info.pickled_name if isinstance(info, PickledStandIn) else ""
    if label is None:
        raise ValueError(f"{path}: no label in the pickled metadata")
    return RawSample(path.stem, bands, classes, label)


@dataclasses.dataclass(frozen=True)
class TaskSpecs:
    """The fields of GeoBench's TaskSpecifications that the reader uses or checks."""

    dataset_name: str
    patch_size: tuple[int, int]
    n_time_steps: int
    band_names: tuple[str, ...]
    num_classes: int | None
    stored_class_names: tuple[str, ...] | None  # as pickled; see note in `load_task_specs`


def load_task_specs(task_dir: str | os.PathLike) -> TaskSpecs | None:
    """Parse task_specs.pkl; None (with a warning) if it is absent or cannot be read.

    Note: the m-eurosat task_specs.pkl lists its class names in an order that is not the label
    order (labels follow the sorted EuroSAT folder names); the registry's names are the ones to
    use, the stored list is kept for information only.
    """
    path = pathlib.Path(task_dir) / "task_specs.pkl"
    if not path.exists():
        return None
    try:
        spec = unpickle_geobench(path.read_bytes())
        label_type = spec.field("label_type")
        n_classes = names = None
        if isinstance(label_type, PickledStandIn):
            n_classes = label_type.field("n_classes")
            names = label_type.field("_class_names") or label_type.field("class_names")
        bands = tuple(b.field("name") if isinstance(b, PickledStandIn) else str(b)
                      for b in spec.field("bands_info") or ())
        return TaskSpecs(str(spec.field("dataset_name")), tuple(spec.field("patch_size")),
                         int(spec.field("n_time_steps", 1)), bands,
                         None if n_classes is None else int(n_classes),
                         None if names is None else tuple(names))
    except Exception as err:  # noqa: BLE001 - any parse failure falls back to the registry
        warnings.warn(f"{path}: could not parse ({err!r}); using the built-in task registry",
                      stacklevel=2)
        return None


def resolve_task_dir(root: str | os.PathLike | None, task: str) -> pathlib.Path:
    """`<root>/classification_v1.0/<task>` ($GEOBENCH_DIR when root is None)."""
    if root is None:
        root = os.environ.get("GEOBENCH_DIR")
        if not root:
            raise FileNotFoundError("GeoBench root not given and $GEOBENCH_DIR is not set")
    task_dir = pathlib.Path(root) / BENCHMARK_DIR / get_task(task).name
    if not task_dir.is_dir():
        raise FileNotFoundError(f"GeoBench task directory {task_dir} does not exist (expected "
                                f"<root>/{BENCHMARK_DIR}/<task>/)")
    return task_dir


def load_partition(task_dir: str | os.PathLike, partition: str = "default") -> dict[str, list]:
    """Sample names per split from `<partition>_partition.json` ("default", "0.01x_train", ...)."""
    path = pathlib.Path(task_dir) / f"{partition}_partition.json"
    if not path.exists():
        have = sorted(p.name for p in pathlib.Path(task_dir).glob("*_partition.json"))
        raise FileNotFoundError(f"partition file {path} not found; available: {have}")
    with open(path) as f:
        parts = json.load(f)
    missing = [s for s in SPLITS if s not in parts]
    if missing or not all(isinstance(parts[s], list) for s in SPLITS):
        raise ValueError(f"{path}: expected lists under {list(SPLITS)}, missing {missing}")
    return {s: list(parts[s]) for s in SPLITS}


def load_band_stats(task_dir: str | os.PathLike) -> dict[str, dict[str, float]]:
    path = pathlib.Path(task_dir) / "band_stats.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; dataset-statistics normalisation needs it")
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- sample assembly


def _select_bands(raw: RawSample, task: GeoBenchTask, fix_band_labels: bool) -> dict[str, str]:
    """SpaceNit band id -> stored GeoBench band name, for the bands this task's sensor takes."""
    info_class, names = _SENSOR_BANDS[task.sensor]
    truth = dict(task.stored_band_truth) if fix_band_labels else {}
    chosen = {}
    for name in raw.bands:
        true_name = truth.get(name, name)
        if true_name in names and raw.band_classes.get(name, "") in ("", info_class):
            chosen[names[true_name]] = name
    return chosen


def _impute(source_of: dict[str, str], task: GeoBenchTask, where: str) -> dict[str, str]:
    """Extend band id -> GeoBench name with the task's imputations; check completeness."""
    source_of = dict(source_of)
    for src, dst in task.imputes:
        if dst not in source_of and src in source_of:
            source_of[dst] = source_of[src]
    needed = sensors.get(task.sensor).bands
    missing = [b for b in needed if b not in source_of]
    if missing:
        raise ValueError(f"{where}: task {task.name} needs {task.sensor} bands {missing} that "
                         f"are neither stored nor imputed (stored: {sorted(source_of)})")
    return source_of


def assemble_image(raw: RawSample, task: GeoBenchTask,
                   fix_band_labels: bool = False) -> tuple[np.ndarray, list[str]]:
    """(H, W, C) float64 raw values in SpaceNit band order, and each channel's stored band."""
    source_of = _impute(_select_bands(raw, task, fix_band_labels), task, f"sample {raw.name}")
    names = [source_of[b] for b in sensors.get(task.sensor).bands]
    shapes = {raw.bands[n].shape for n in names}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"sample {raw.name}: bands must be 2-D arrays of one size, got {shapes}")
    image = np.stack([raw.bands[n] for n in names], axis=-1).astype(np.float64)
    return image * task.data_scale, names


def encode_label(label, task: GeoBenchTask, where: str) -> int | np.ndarray:
    """Class index (single-label) or (num_classes,) int32 multi-hot (multilabel)."""
    arr = np.asarray(label.args if isinstance(label, PickledStandIn) else label)
    if task.multilabel:
        if arr.shape == (task.num_classes,):
            return (arr > 0).astype(np.int32)
        if arr.ndim <= 1 and np.issubdtype(arr.dtype, np.integer):  # list of class indices
            hot = np.zeros(task.num_classes, np.int32)
            hot[arr.reshape(-1)] = 1
            return hot
        raise ValueError(f"{where}: multilabel label of shape {arr.shape}, expected "
                         f"({task.num_classes},) multi-hot or a list of class indices")
    if arr.ndim != 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{where}: label {label!r} is not an integer class index")
    value = int(arr)
    if not 0 <= value < task.num_classes:
        raise ValueError(f"{where}: label {value} outside [0, {task.num_classes})")
    return value


class GeoBenchClassification:
    """One split of a GeoBench v1 classification task, as `EvalSample`s (lazy, per index).

    norm: "pretrained" (COMPUTED stats of the sensor, the official setting), a dataset-stats
    NormMethod name (e.g. "norm_no_clip", "norm_no_clip_2_std"), or None = the task's default.
    fix_band_labels: use the task's `stored_band_truth` (m-eurosat) instead of the stored band
    names; off by default to match the reference.
    """

    def __init__(self, root: str | os.PathLike | None, task: str, split: str = "train", *,
                 partition: str = "default", norm: str | None = None,
                 check_files: bool = True, fix_band_labels: bool = False):
        self.fix_band_labels = fix_band_labels
        self.task = get_task(task)
        self.task_dir = resolve_task_dir(root, task)
        split = {"val": "valid", "validation": "valid"}.get(split, split)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} (or 'val'), got {split!r}")
        self.split, self.partition = split, partition
        self.names = load_partition(self.task_dir, partition)[split]
        self.specs = load_task_specs(self.task_dir)
        if self.specs is not None and self.specs.num_classes not in (None, self.task.num_classes):
            raise ValueError(f"{self.task_dir}/task_specs.pkl says {self.specs.num_classes} "
                             f"classes, the registry for {self.task.name} says "
                             f"{self.task.num_classes}")
        if check_files:
            missing = [n for n in self.names if not (self.task_dir / f"{n}.hdf5").exists()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} of {len(self.names)} samples of split {split!r} "
                    f"(partition {partition!r}) are missing in {self.task_dir}, e.g. "
                    f"{missing[0]}.hdf5")
        self.norm = norm or self.task.default_norm
        self._method = None
        if self.norm != "pretrained":
            self._method = normalization.parse_norm_method(self.norm)
            self._band_stats = load_band_stats(self.task_dir)

    def __len__(self) -> int:
        return len(self.names)

    def _dataset_stats(self, band_names: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for key in ("mean", "std", "min", "max"):
            values = []
            for name in band_names:
                stats = self._band_stats.get(name)
                if stats is None or key not in stats:
                    raise KeyError(f"{self.task_dir}/band_stats.json: no {key!r} for band {name!r}")
                values.append(stats[key])
            out[key] = np.asarray(values, np.float64) * self.task.data_scale
        return out

    def normalize(self, image: np.ndarray, band_names: list[str]) -> np.ndarray:
        """Normalise a raw (H, W, C) image whose channels came from `band_names`.

        "pretrained": the pretraining standardiser of the sensor (COMPUTED mean +- 2 std ->
        [0, 1], spec §3), shared with the data pipeline.
        """
        if self._method is None:
            return normalize_array(self.task.sensor, image, np.float64)
        s = self._dataset_stats(band_names)
        return normalization.apply_dataset_norm(image, self._method, s["mean"], s["std"],
                                                s["min"], s["max"])

    def __getitem__(self, index: int) -> EvalSample:
        name = self.names[index]
        path = self.task_dir / f"{name}.hdf5"
        if not path.exists():
            raise FileNotFoundError(f"GeoBench sample file {path} not found")
        raw = read_sample_hdf5(path)
        image, band_names = assemble_image(raw, self.task, self.fix_band_labels)
        image = self.normalize(image, band_names).astype(np.float32)[:, :, None, :]
        label = encode_label(raw.label, self.task, str(path))
        return EvalSample(image, label, self.task.sensor, name, DEFAULT_TIMESTAMPS.copy())

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All samples stacked: images (N, H, W, 1, C) and labels (N,) or (N, C)."""
        return stack_samples(self)
