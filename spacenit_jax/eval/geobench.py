"""GeoBench v1: one reader for every classification and segmentation task, without geobench.

Layout (the released benchmark): `<root>/classification_v1.0/<task>/` and
`<root>/segmentation_v1.0/<task>/`, each holding one `<sample>.hdf5` per sample,
`task_specs.pkl`, `band_stats.json` and `<partition>_partition.json` files ({"train",
"valid", "test"} -> sample names; "default", "0.01x_train" ... "1.00x_train").

A sample file holds one 2-D dataset per band, keyed by the band name (plus "_YYYY-MM-DD"
for dated bands), and a file attribute "pickle": the repr of a bytes literal of a pickled
dict with per-band metadata (band_info object, date, resolution), usually "bands_order",
and the label (classification). Segmentation samples store the label map as a band named
"label". The pickles (and task_specs.pkl) name geobench classes (module `geobench.*`, or
`ccb.io.*` in pre-release files); they are read with an Unpickler that resolves a short
allow-list of plain data constructors (numpy arrays/scalars/dtypes, datetime, OrderedDict)
and replaces every other global with an inert stand-in that only records its arguments and
state. No other code from a pickle runs, and nothing needs geobench installed.

Tasks (facts from the GeoBench converters, ServiceNow/geo-bench `make_benchmark/`; sizes of
the released v1.0 tasks):

    task            kind        classes  size  stored bands -> model sensor
    m-eurosat       class.      10       64    S2, 13 bands -> sentinel2_l2a (B10 dropped)
    m-bigearthnet   multilabel  43       120   S2, 12 bands (no B10) -> sentinel2_l2a
    m-so2sat        class.      17       32    S1, 8 bands (dropped) + S2 B02-B08A, B11, B12
                                               stored as reflectance / 10,000 (x 10,000);
                                               B01 <- B02, B09 <- B8A imputed
    m-brick-kiln    class.      2        64    S2, 13 bands -> sentinel2_l2a
    m-forestnet     class.      12       332   Landsat-8 B4, B3, B2, B5, B6, B7 (8-bit, 15 m)
                                               -> landsat; B1 <- B2, B9 <- B7, B10 <- B7,
                                               B8 <- B3, B11 <- B10 imputed; dataset norm
    m-pv4ger        class.      2        320   RGB aerial 0.1 m -> naip (IR filled)
    m-pv4ger-seg    seg.        2        320   RGB aerial 0.1 m -> naip (IR filled)
    m-chesapeake    seg.        7        256   RGB + NIR aerial 1 m -> naip; class 6 = no-data
    m-cashew-plant  seg.        7        256   S2, 12 bands (no B10) + cloud probability
                                               (dropped) -> sentinel2_l2a; class 0 = no data
    m-SA-crop-type  seg.        10       256   S2, 12 bands (no B10) + cloud probability
                                               (dropped) -> sentinel2_l2a; class 0 = No Data
    m-nz-cattle     seg.        2        500   RGB aerial 0.1 m -> naip (IR filled)
    m-NeonTree      seg.        2        400   RGB 0.1 m -> naip (IR filled); canopy height
                                               (lidar) and 369 hyperspectral bands dropped

Band mapping is by band name (and band-info class where the names of two sensors coincide:
"02 - Blue" is a Sentinel2 and a Landsat8 name): S2 names "01 - Coastal aerosol" ...
"12 - SWIR" -> B01..B12 of sentinel2_l2a (which has no B10), Landsat-8 names -> B1..B11 of
landsat, aerial "Red", "Green", "Blue", "NearInfrared" -> R, G, B, IR of naip. Bands the
sensor does not take are dropped (cloud probability, Sentinel-1 of so2sat: complex and
Lee-filtered values, not the dB backscatter of `sentinel1`, canopy height, hyperspectral,
S2 B10), and the dataset's `notes` say so. A sensor band that is neither stored nor
imputed is *filled*: it holds the pretraining mean of that band (0.5 after the pretraining
normalisation), i.e. no information, and the notes name it. The aerial tasks map to `naip`;
for a model without `naip`, `sensor="sentinel2_l2a"` is the documented fallback: R, G, B,
NIR go to B04, B03, B02, B08 and the other bands are filled (not a faithful input; every
score from it is marked by the note).

Normalisation ("norm"): "pretrained" (the pretraining statistics of the sensor, the
official setting), a dataset NormMethod over band_stats.json ("norm_no_clip", ...), or
"auto" (default): "pretrained", unless a mapped band holds 8-bit scaled values (its
band_stats max <= 255 while the pretraining mean + 2 std of the band exceeds 1,000, and
either that max is 255 or most mapped bands are so small; m-eurosat's cirrus-like band,
max 90, is raw), then the task's dataset norm ("norm_no_clip", or the one in the registry) with a note;
"pretrained" on such data is refused. m-forestnet defaults to "norm_no_clip_2_std" (the
reference's choice). band_stats.json keys are matched by band name, then by the band's
alternative names from task_specs.pkl, then without a date suffix.

Variants handled: pre-release pickles (`ccb.io.task`), float64 bands, no "bands_order" (the
file's datasets are read by name), pre-release folder names (brick_kiln,
south_africa_crop_type, ...: accepted with a note), several dates per sample (a time axis,
timestamps from the dates). A missing partition file, missing sample files, labels outside
the class range, or a missing needed band are clear errors naming the file.

Segmentation labels: (H, W) int class maps. With `ignore_nodata=True` the task's no-data
class (m-SA-crop-type and m-cashew-plant 0, m-chesapeake 6) becomes -1 (ignored); by
default every class counts, as in GeoBench's own evaluation. `center_crop` crops images
and label maps to a square of that side (m-forestnet's 332 pixels do not divide into
patches of 8; its config crops to 328).

Each sample becomes an `EvalSample`: (H, W, T, C) float32 in the sensor's SpaceNit band
order, timestamps [1, 6, 2020] for undated samples. m-eurosat's files store EuroSAT's band
order (B01..B08, B09, B10, B11, B12, B8A) under the names of the standard order;
`fix_band_labels=True` maps by the bands' true identity (off by default, as the reference).
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
from spacenit_jax.data.normalize import band_range
from spacenit_jax.eval import normalization
from spacenit_jax.eval.samples import DEFAULT_TIMESTAMPS, EvalSample, stack_samples

CLASSIFICATION_DIR = "classification_v1.0"
SEGMENTATION_DIR = "segmentation_v1.0"
BENCHMARK_DIR = CLASSIFICATION_DIR  # kept for callers of the classification-only reader
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


# --------------------------------------------------------------------------- bands

# GeoBench band names -> band ids of the SpaceNit sensors.
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
AERIAL_GEOBENCH_BANDS = (("Red", "R"), ("Green", "G"), ("Blue", "B"), ("NearInfrared", "IR"))
# GeoBench 13-band S2 index of each sentinel2_l2a band, in SpaceNit order (B10 dropped).
GEOBENCH_S2_TO_SENTINEL2_L2A = (1, 2, 3, 7, 4, 5, 6, 8, 11, 12, 0, 9)
assert tuple(S2_GEOBENCH_BANDS[i][1] for i in GEOBENCH_S2_TO_SENTINEL2_L2A) == \
    sensors.SENTINEL2_L2A.bands

# stored band family -> (band-info classes that may carry it, stored name -> family band id)
_FAMILIES = {
    "s2": (("Sentinel2", ""), dict(S2_GEOBENCH_BANDS)),
    "l8": (("Landsat8", ""), dict(L8_GEOBENCH_BANDS)),
    "aerial": (("SpectralBand", ""), dict(AERIAL_GEOBENCH_BANDS)),
}
# model sensor -> {stored family: {family band id -> sensor band id}}
_SENSOR_INPUTS = {
    "sentinel2_l2a": {"s2": {b: b for b in sensors.SENTINEL2_L2A.bands},
                      "aerial": {"R": "B04", "G": "B03", "B": "B02", "IR": "B08"}},
    "landsat": {"l8": {b: b for b in sensors.LANDSAT.bands}},
    "naip": {"aerial": {b: b for b in sensors.NAIP.bands}},
}
_DROP_REASONS = {  # band-info class (or name) -> why the band is not an input
    "CloudProbability": "a cloud probability mask, not a reflectance",
    "Cloud Probability": "a cloud probability mask, not a reflectance",
    "Sentinel1": "so2sat's Sentinel-1 values (complex and Lee-filtered) are not the dB "
                 "backscatter of the sentinel1 sensor",
    "ElevationBand": "canopy height (lidar) has no matching sensor",
    "HyperSpectralBands": "hyperspectral bands have no matching sensor",
    "MultiBand": "a multi-band stack has no matching sensor",
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
PV4GER_CLASSES = ("no solar pv", "solar pv")
CHESAPEAKE_CLASSES = ("water", "tree-canopy-forest", "low-vegetation-field", "barren-land",
                      "impervious-other", "impervious-roads", "no-data")
CASHEW_CLASSES = ("no data", "well-managed plantation", "poorly-managed plantation",
                  "non-plantation", "residential", "background", "uncertain")
SA_CROP_CLASSES = ("No Data", "Lucerne/Medics", "Planted pastures (perennial)", "Fallow",
                   "Wine grapes", "Weeds", "Small grain grazing", "Wheat", "Canola", "Rooibos")


@dataclasses.dataclass(frozen=True)
class GeoBenchTask:
    """What the reader knows about one GeoBench v1 task (see the module docstring).

    kind: "classification" | "multilabel" | "segmentation". sensor: the model sensor its
    bands go to. gsd: metres per pixel. imputes: (source band, missing band) pairs in the
    sensor's band ids, applied in order, each only when the missing band is absent.
    data_scale multiplies the raw data and the dataset stats. default_norm: "auto" or a
    dataset NormMethod. nodata_class: the label value meaning "no data" (ignored with
    ignore_nodata). aliases: pre-release folder names. stored_band_truth: stored name ->
    true band name where the files are known to be mislabelled (fix_band_labels=True).
    """

    name: str
    kind: str
    num_classes: int
    image_size: int
    sensor: str
    gsd: float
    class_names: tuple[str, ...] | None = None
    imputes: tuple[tuple[str, str], ...] = ()
    data_scale: float = 1.0
    default_norm: str = "auto"
    dataset_norm: str = "norm_no_clip"  # what "auto" picks for 8-bit scaled data
    nodata_class: int | None = None
    aliases: tuple[str, ...] = ()
    stored_band_truth: tuple[tuple[str, str], ...] = ()

    @property
    def benchmark(self) -> str:
        return SEGMENTATION_DIR if self.kind == "segmentation" else CLASSIFICATION_DIR

    @property
    def multilabel(self) -> bool:
        return self.kind == "multilabel"

    @property
    def sensors(self) -> tuple[str, ...]:
        return (self.sensor,)


# m-eurosat stores EuroSAT's file band order (B01..B08, B09, B10, B11, B12, B8A) under the
# names of the standard order: band_stats.json means of "08A" (762), "09" (12, cirrus-like),
# "10" (1861), "11" (1139), "12" (2700, NIR-like) match B09, B10, B11, B12, B8A.
EUROSAT_STORED_BAND_TRUTH = (
    ("08A - Vegetation Red Edge", "09 - Water vapour"), ("09 - Water vapour", "10 - SWIR - Cirrus"),
    ("10 - SWIR - Cirrus", "11 - SWIR"), ("11 - SWIR", "12 - SWIR"),
    ("12 - SWIR", "08A - Vegetation Red Edge"),
)  # fmt: skip

TASKS: dict[str, GeoBenchTask] = {t.name: t for t in (
    GeoBenchTask("m-eurosat", "classification", 10, 64, "sentinel2_l2a", 10.0, EUROSAT_CLASSES,
                 aliases=("eurosat",), stored_band_truth=EUROSAT_STORED_BAND_TRUTH),
    GeoBenchTask("m-bigearthnet", "multilabel", 43, 120, "sentinel2_l2a", 10.0,
                 imputes=(("B11", "B10"),), aliases=("bigearthnet",)),
    GeoBenchTask("m-so2sat", "classification", 17, 32, "sentinel2_l2a", 10.0, SO2SAT_CLASSES,
                 imputes=(("B02", "B01"), ("B8A", "B09"), ("B11", "B10")), data_scale=10_000.0,
                 aliases=("so2sat",)),
    GeoBenchTask("m-brick-kiln", "classification", 2, 64, "sentinel2_l2a", 10.0,
                 BRICK_KILN_CLASSES, aliases=("brick_kiln", "brick_kiln_v1.0")),
    # ForestNet ships 8-bit Landsat-8 RGB + NIR/SWIR: the reference imputes the other bands and
    # normalises with the dataset statistics (mean +- 2 std), not the pretraining ones.
    GeoBenchTask("m-forestnet", "classification", 12, 332, "landsat", 15.0, FORESTNET_CLASSES,
                 imputes=(("B2", "B1"), ("B7", "B9"), ("B7", "B10"), ("B3", "B8"),
                          ("B10", "B11")),
                 default_norm="norm_no_clip_2_std", dataset_norm="norm_no_clip_2_std",
                 aliases=("forestnet", "forestnet_v1.0")),
    GeoBenchTask("m-pv4ger", "classification", 2, 320, "naip", 0.1, PV4GER_CLASSES,
                 aliases=("pv4ger", "pv4ger_classification")),
    GeoBenchTask("m-pv4ger-seg", "segmentation", 2, 320, "naip", 0.1, PV4GER_CLASSES,
                 aliases=("pv4ger_segmentation",)),
    GeoBenchTask("m-chesapeake", "segmentation", 7, 256, "naip", 1.0, CHESAPEAKE_CLASSES,
                 nodata_class=6, aliases=("cvpr_chesapeake_landcover",)),
    GeoBenchTask("m-cashew-plant", "segmentation", 7, 256, "sentinel2_l2a", 10.0,
                 CASHEW_CLASSES, imputes=(("B11", "B10"),), nodata_class=0,
                 aliases=("smallholder_cashew", "cashew_plantation")),
    GeoBenchTask("m-SA-crop-type", "segmentation", 10, 256, "sentinel2_l2a", 10.0,
                 SA_CROP_CLASSES, imputes=(("B11", "B10"),), nodata_class=0,
                 aliases=("south_africa_crop_type", "southAfricaCropType")),
    GeoBenchTask("m-nz-cattle", "segmentation", 2, 500, "naip", 0.1, ("no cattle", "cattle"),
                 aliases=("nz_cattle_segmentation",)),
    GeoBenchTask("m-NeonTree", "segmentation", 2, 400, "naip", 0.1, ("no tree", "tree"),
                 aliases=("NeonTree_segmentation",)),
)}
CLASSIFICATION_TASKS = tuple(n for n, t in TASKS.items() if t.kind != "segmentation")
SEGMENTATION_TASKS = tuple(n for n, t in TASKS.items() if t.kind == "segmentation")


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


_LOOKUP = {_key(n): n for n in TASKS} | {_key(a): t.name for t in TASKS.values() for a in t.aliases}


def get_task(name: str) -> GeoBenchTask:
    """A task by name ("m-SA-crop-type"), any case, "_" for "-", or a pre-release name."""
    key = _LOOKUP.get(_key(name))
    if key is None:
        raise KeyError(f"unknown GeoBench task {name!r}; known: {sorted(TASKS)}")
    return TASKS[key]


# --------------------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class BandMeta:
    """A stored band: its name (without date), band-info class, date and alternative names."""

    name: str
    info_class: str = ""
    date: datetime.date | None = None
    alt_names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RawSample:
    """One GeoBench .hdf5 sample as stored: arrays by dataset key, their metadata, the label."""

    name: str
    bands: dict[str, np.ndarray]
    band_classes: dict[str, str]  # dataset key -> band-info class ("Sentinel2", ...)
    label: object
    meta: dict[str, BandMeta] = dataclasses.field(default_factory=dict)

    def band_meta(self, key: str) -> BandMeta:
        return self.meta.get(key) or BandMeta(_DATE_SUFFIX.sub("", key),
                                              self.band_classes.get(key, ""))


_DATE_SUFFIX = re.compile(r"_(\d{4})-(\d{2})-(\d{2})$")


def _as_date(value, key: str) -> datetime.date | None:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    m = _DATE_SUFFIX.search(key)
    return datetime.date(*map(int, m.groups())) if m else None


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
        order = meta.get("bands_order") or list(f.keys())  # pre-release files have none
        bands, classes, infos, label = {}, {}, {}, meta.get("label")
        for key in order:
            if key not in f:
                raise ValueError(f"{path}: band {key!r} listed in bands_order has no dataset")
            band_meta = meta.get(key)
            info = band_meta.get("band_info") if isinstance(band_meta, dict) else None
            is_info = isinstance(info, PickledStandIn)
            name = (info.field("name") if is_info else None) or _DATE_SUFFIX.sub("", key)
            cls = info.pickled_name if is_info else ""
            data = np.asarray(f[key])
            if name == "label" or cls == "SegmentationClasses":
                label = data
                continue
            date = _as_date(band_meta.get("date") if isinstance(band_meta, dict) else None, key)
            alt = tuple(info.field("alt_names") or ()) if is_info else ()
            bands[key], classes[key] = data, cls
            infos[key] = BandMeta(name, cls, date, alt)
    if label is None:
        raise ValueError(f"{path}: no label in the pickled metadata and no 'label' band")
    return RawSample(path.stem, bands, classes, label, infos)


@dataclasses.dataclass(frozen=True)
class TaskSpecs:
    """The fields of GeoBench's TaskSpecifications that the reader uses or checks."""

    dataset_name: str
    patch_size: tuple[int, int]
    n_time_steps: int
    band_names: tuple[str, ...]
    num_classes: int | None
    stored_class_names: tuple[str, ...] | None  # as pickled; see note in `load_task_specs`
    band_classes: tuple[str, ...] = ()
    alt_names: dict = dataclasses.field(default_factory=dict)  # band name -> alternatives
    label_kind: str = ""  # "Classification", "MultiLabelClassification", "SegmentationClasses"
    module: str = ""  # "geobench.task", "ccb.io.task" (pre-release), ...


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
        kind = ""
        if isinstance(label_type, PickledStandIn):
            n_classes = label_type.field("n_classes")
            names = label_type.field("_class_names") or label_type.field("class_names")
            kind = label_type.pickled_name
        infos = list(spec.field("bands_info") or ())
        bands = tuple(b.field("name") if isinstance(b, PickledStandIn) else str(b)
                      for b in infos)
        classes = tuple(b.pickled_name if isinstance(b, PickledStandIn) else "" for b in infos)
        alt = {name: tuple(b.field("alt_names") or ()) for name, b in zip(bands, infos,
                                                                           strict=True)
               if isinstance(b, PickledStandIn)}
        return TaskSpecs(str(spec.field("dataset_name")), tuple(spec.field("patch_size")),
                         int(spec.field("n_time_steps", 1)), bands,
                         None if n_classes is None else int(n_classes),
                         None if names is None else tuple(names), classes, alt, kind,
                         spec.pickled_module)
    except Exception as err:  # noqa: BLE001 - any parse failure falls back to the registry
        warnings.warn(f"{path}: could not parse ({err!r}); using the built-in task registry",
                      stacklevel=2)
        return None


def find_task_dir(root: str | os.PathLike, task: str) -> tuple[pathlib.Path | None, str]:
    """(`<root>/<benchmark>/<task>` or a pre-release alias folder there, note); (None, "")
    when absent."""
    spec = get_task(task)
    base = pathlib.Path(root) / spec.benchmark
    for name in (spec.name, *spec.aliases):
        if (base / name).is_dir():
            note = "" if name == spec.name else (
                f"{spec.name}: read from the pre-release folder {base / name}")
            return base / name, note
    return None, ""


def resolve_task_dir(root: str | os.PathLike | None, task: str) -> pathlib.Path:
    """`<root>/<benchmark>/<task>` ($GEOBENCH_DIR when root is None); aliases accepted."""
    if root is None:
        root = os.environ.get("GEOBENCH_DIR")
        if not root:
            raise FileNotFoundError("GeoBench root not given and $GEOBENCH_DIR is not set")
    path, _ = find_task_dir(root, task)
    if path is None:
        spec = get_task(task)
        where = pathlib.Path(root) / spec.benchmark / spec.name
        raise FileNotFoundError(f"GeoBench task directory {where} does not exist (expected "
                                f"<root>/{spec.benchmark}/<task>/)")
    return path


def load_partition(task_dir: str | os.PathLike, partition: str = "default") -> dict[str, list]:
    """Sample names per split from `<partition>_partition.json` ("default", "0.01x_train", ...)."""
    path = pathlib.Path(task_dir) / f"{partition}_partition.json"
    if not path.exists():
        have = sorted(p.name for p in pathlib.Path(task_dir).glob("*_partition.json"))
        hint = "" if have else ' (write one: {"train": [names], "valid": [...], "test": [...]})'
        raise FileNotFoundError(f"partition file {path} not found; available: {have}{hint}")
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


# --------------------------------------------------------------------------- band mapping


@dataclasses.dataclass(frozen=True)
class BandPlan:
    """How the stored bands of a task become the channels of one sensor.

    source: sensor band id -> stored band name (stored or imputed); imputed: band id ->
    stored name it copies; filled: band ids without data (pretraining mean); dropped:
    stored band name -> reason.
    """

    sensor: str
    source: dict[str, str]
    imputed: dict[str, str]
    filled: tuple[str, ...]
    dropped: dict[str, str]

    def notes(self, task: str) -> list[str]:
        out = []
        if self.dropped:
            out.append(f"{task}: bands not used: " + "; ".join(
                f"{name} ({why})" for name, why in self.dropped.items()))
        if self.imputed:
            out.append(f"{task}: {self.sensor} bands imputed: " + ", ".join(
                f"{b} <- {src}" for b, src in self.imputed.items()))
        if self.filled:
            out.append(f"{task}: {self.sensor} bands without data, filled with the "
                       f"pretraining mean: {', '.join(self.filled)}")
        return out


def _family(name: str, info_class: str, sensor: str) -> tuple[str, str] | None:
    """(family, family band id) of a stored band name for `sensor`, or None."""
    for family in _SENSOR_INPUTS.get(sensor, {}):
        classes, names = _FAMILIES[family]
        if name in names and (info_class in classes or not info_class):
            return family, names[name]
    return None


def plan_bands(stored: list[tuple[str, str]], task: GeoBenchTask, sensor: str | None = None,
               fix_band_labels: bool = False) -> BandPlan:
    """Map stored (band name, band-info class) pairs to `sensor` (default: the task's)."""
    sensor = sensor or task.sensor
    if sensor not in _SENSOR_INPUTS:
        raise ValueError(f"task {task.name}: sensor {sensor!r} cannot take GeoBench bands; "
                         f"choose one of {sorted(_SENSOR_INPUTS)}")
    truth = dict(task.stored_band_truth) if fix_band_labels else {}
    inputs = _SENSOR_INPUTS[sensor]
    source, dropped = {}, {}
    for name, info_class in stored:
        hit = _family(truth.get(name, name), info_class, sensor)
        if hit is not None and hit[1] in inputs[hit[0]]:
            source.setdefault(inputs[hit[0]][hit[1]], name)
        else:
            reason = _DROP_REASONS.get(info_class) or _DROP_REASONS.get(name) or (
                f"not a {sensor} band" if hit is None else f"{sensor} has no band {hit[1]}")
            dropped[name] = reason
    imputed = {}
    needed = sensors.get(sensor).bands
    for src, dst in task.imputes if sensor == task.sensor else ():
        if dst in needed and dst not in source and src in source:  # (no B10 in L2A)
            source[dst], imputed[dst] = source[src], source[src]
    filled = tuple(b for b in needed if b not in source)
    aerial = any((_family(n, c, sensor) or ("",))[0] == "aerial" for n, c in stored)
    if filled and not aerial:  # only aerial inputs (RGB, or RGB into S2) may leave gaps
        raise ValueError(f"task {task.name} needs {sensor} bands {list(filled)} that are "
                         f"neither stored nor imputed (stored: {[n for n, _ in stored]})")
    return BandPlan(sensor, source, imputed, filled, dropped)


def _band_list(raw: RawSample) -> list[tuple[str, str]]:
    seen, out = set(), []
    for key in raw.bands:
        meta = raw.band_meta(key)
        if meta.name not in seen:
            seen.add(meta.name)
            out.append((meta.name, meta.info_class))
    return out


def assemble_image(raw: RawSample, task: GeoBenchTask, fix_band_labels: bool = False,
                   plan: BandPlan | None = None) -> tuple[np.ndarray, list[str | None],
                                                          list[datetime.date | None]]:
    """(H, W, T, C) float64 raw values in the sensor's band order (filled bands hold the
    pretraining mean), each channel's stored band name (None when filled), and the T dates
    (None for an undated sample)."""
    plan = plan or plan_bands(_band_list(raw), task, fix_band_labels=fix_band_labels)
    by_date: dict = collections.defaultdict(dict)
    for key in raw.bands:
        meta = raw.band_meta(key)
        by_date[meta.date][meta.name] = key
    dates = sorted(by_date, key=lambda d: (d is not None, d or datetime.date.min))
    if len(dates) > 1 and None in dates:
        raise ValueError(f"sample {raw.name}: mixes dated and undated bands")
    order = sensors.get(plan.sensor).bands
    names = [plan.source.get(b) for b in order]
    lo, hi, _ = band_range(plan.sensor)
    mid = (lo + hi) / 2
    steps, shape = [], None
    for date in dates:
        keys = by_date[date]
        missing = sorted({n for n in names if n is not None and n not in keys})
        if missing:
            when = f" at {date}" if date else ""
            raise ValueError(f"sample {raw.name}: needed band(s) {missing} missing{when} "
                             f"(stored: {sorted(keys)})")
        arrays = [raw.bands[keys[n]] for n in names if n is not None]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or (shape and shapes != {shape}):
            raise ValueError(f"sample {raw.name}: bands must be 2-D arrays of one size, "
                             f"got {shapes}")
        shape = next(iter(shapes))
        channels = [np.asarray(raw.bands[keys[n]], np.float64) * task.data_scale
                    if n is not None else np.full(shape, mid[c])
                    for c, n in enumerate(names)]
        steps.append(np.stack(channels, axis=-1))
    return np.stack(steps, axis=2), names, dates


def encode_label(label, task: GeoBenchTask, where: str, ignore_nodata: bool = False
                 ) -> int | np.ndarray:
    """Class index, (num_classes,) int32 multi-hot, or (H, W) int32 class map."""
    arr = np.asarray(label.args if isinstance(label, PickledStandIn) else label)
    if task.kind == "segmentation":
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{where}: label map must be a 2-D integer array, got "
                             f"{arr.dtype} {arr.shape}")
        bad = np.unique(arr[(arr < 0) | (arr >= task.num_classes)])
        if bad.size:
            raise ValueError(f"{where}: label map holds values {bad.tolist()[:8]} outside "
                             f"[0, {task.num_classes})")
        out = arr.astype(np.int32)
        if ignore_nodata and task.nodata_class is not None:
            out[out == task.nodata_class] = -1
        return out
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


def _stats_lookup(stats: dict, name: str, alt_names: tuple[str, ...]) -> dict | None:
    """band_stats entry of a band: by name, alternative names, or keys without a date."""
    if name in stats:
        return stats[name]
    for alt in alt_names:
        if alt in stats:
            return stats[alt]
    undated = {_DATE_SUFFIX.sub("", k): v for k, v in stats.items()}
    return undated.get(name)


def _center_crop(a: np.ndarray, size: int, where: str) -> np.ndarray:
    h, w = a.shape[:2]
    if size > min(h, w):
        raise ValueError(f"{where}: center_crop {size} exceeds the image size {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return a[top:top + size, left:left + size]


class GeoBenchDataset:
    """One split of a GeoBench v1 task (classification or segmentation), as `EvalSample`s.

    norm: "auto" (default; see the module docstring), "pretrained" or a dataset NormMethod.
    sensor: the model sensor to map the bands into (default: the task's; "sentinel2_l2a" is
    the fallback for the aerial tasks). ignore_nodata: the task's no-data class -> -1.
    center_crop: crop images and label maps to this square side. `notes` lists what was
    dropped, imputed, filled or chosen, for the results.
    """

    def __init__(self, root: str | os.PathLike | None, task: str, split: str = "train", *,
                 partition: str = "default", norm: str | None = None,
                 sensor: str | None = None, ignore_nodata: bool = False,
                 center_crop: int | None = None, check_files: bool = True,
                 fix_band_labels: bool = False):
        self.task = get_task(task)
        self.fix_band_labels, self.ignore_nodata = fix_band_labels, ignore_nodata
        self.center_crop = center_crop
        if root is None:
            root = os.environ.get("GEOBENCH_DIR")
            if not root:
                raise FileNotFoundError("GeoBench root not given and $GEOBENCH_DIR is not set")
        self.task_dir = resolve_task_dir(root, task)
        _, alias_note = find_task_dir(root, task)
        self.notes: list[str] = [alias_note] if alias_note else []
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
        self.plan = plan_bands(self._stored_bands(), self.task, sensor, fix_band_labels)
        self.sensor = self.plan.sensor
        self.notes += self.plan.notes(self.task.name)
        self.norm = self._choose_norm(norm or self.task.default_norm)

    def _stored_bands(self) -> list[tuple[str, str]]:
        """(name, band-info class) of the stored bands: task_specs, else the first sample."""
        if self.specs is not None and self.specs.band_names:
            return [(n, c) for n, c in zip(self.specs.band_names, self.specs.band_classes
                                           or ("",) * len(self.specs.band_names), strict=True)
                    if c != "SegmentationClasses" and n != "label"]
        files = [self.task_dir / f"{n}.hdf5" for n in self.names]
        files = [f for f in files if f.exists()] or sorted(self.task_dir.glob("*.hdf5"))
        if not files:
            raise FileNotFoundError(f"{self.task_dir}: no task_specs.pkl and no sample files "
                                    "to read the band list from")
        return _band_list(read_sample_hdf5(files[0]))

    def _alt_names(self, name: str) -> tuple[str, ...]:
        return (self.specs.alt_names.get(name, ()) if self.specs else ())

    def _choose_norm(self, norm: str) -> str:
        """Resolve "auto" and refuse "pretrained" on 8-bit scaled data (module docstring)."""
        stats_path = self.task_dir / "band_stats.json"
        stats = load_band_stats(self.task_dir) if stats_path.exists() else None
        self._band_stats = stats
        if norm not in ("auto", "pretrained"):
            self._method = normalization.parse_norm_method(norm)
            if stats is None and self._method.kind != "none":
                raise FileNotFoundError(f"{stats_path} not found; norm {norm!r} needs the "
                                        "dataset's band statistics")
            return norm
        self._method = None
        eight_bit = self._eight_bit_bands(stats)
        if norm == "pretrained" and eight_bit:
            raise ValueError(
                f"{self.task.name}: bands {eight_bit} hold 8-bit scaled values (band_stats max "
                f"<= 255) and cannot be normalised with the {self.sensor} pretraining "
                f"statistics; use dataset.norm={self.task.dataset_norm!r} (or 'auto')")
        if norm == "auto" and eight_bit:
            self._method = normalization.parse_norm_method(self.task.dataset_norm)
            self.notes.append(f"{self.task.name}: bands {eight_bit} hold 8-bit scaled values; "
                              f"normalised with the dataset statistics "
                              f"({self.task.dataset_norm}) instead of the pretraining ones")
            return self.task.dataset_norm
        if stats is None and norm == "auto":
            self.notes.append(f"{self.task.name}: no band_stats.json; assumed raw values "
                              "(pretraining normalisation)")
        return "pretrained"

    def _eight_bit_bands(self, stats) -> list[str]:
        """Mapped bands whose band_stats say 8-bit scaled (module docstring): max <= 255
        where the pretraining mean + 2 std exceeds 1,000, and either the max is exactly 255
        (saturated) or most mapped bands are so (a small raw band, such as cirrus, is not
        8-bit scaling)."""
        if stats is None:
            return []
        _, hi, _ = band_range(self.sensor)
        order = sensors.get(self.sensor).bands
        small, names = {}, set(self.plan.source.values())
        for band, name in self.plan.source.items():
            entry = _stats_lookup(stats, name, self._alt_names(name))
            top = None if entry is None else entry.get("max")
            if top is not None and top * self.task.data_scale <= 255 \
                    and hi[order.index(band)] > 1000:
                small[name] = top * self.task.data_scale
        most = len(small) * 2 > len(names)
        return sorted(n for n, top in small.items() if most or top == 255)

    def __len__(self) -> int:
        return len(self.names)

    def _dataset_stats(self, band_names: list[str | None]) -> dict[str, np.ndarray]:
        lo, hi, _ = band_range(self.sensor)
        out = {k: [] for k in ("mean", "std", "min", "max")}
        for c, name in enumerate(band_names):
            if name is None:  # a filled band: the pretraining statistics
                mean, std = (lo[c] + hi[c]) / 2, (hi[c] - lo[c]) / 4
                for key, value in zip(out, (mean, std, lo[c], hi[c]), strict=True):
                    out[key].append(value / self.task.data_scale)
                continue
            entry = _stats_lookup(self._band_stats, name, self._alt_names(name))
            for key in out:
                if entry is None or key not in entry:
                    raise KeyError(f"{self.task_dir}/band_stats.json: no {key!r} for band "
                                   f"{name!r} (keys: {sorted(self._band_stats)[:20]})")
                out[key].append(entry[key])
        return {k: np.asarray(v, np.float64) * self.task.data_scale for k, v in out.items()}

    def normalize(self, image: np.ndarray, band_names: list[str | None]) -> np.ndarray:
        """Normalise a raw (..., C) image whose channels came from `band_names`."""
        if self._method is None:
            return normalization.normalize_image(image, self.sensor, normalization.PRETRAINED)
        if self._method.kind == "none":
            return np.asarray(image, np.float64)
        return normalization.normalize_image(image, self.sensor, self._method,
                                             self._dataset_stats(band_names))

    def __getitem__(self, index: int) -> EvalSample:
        name = self.names[index]
        path = self.task_dir / f"{name}.hdf5"
        if not path.exists():
            raise FileNotFoundError(f"GeoBench sample file {path} not found")
        raw = read_sample_hdf5(path)
        image, band_names, dates = assemble_image(raw, self.task, self.fix_band_labels,
                                                  self.plan)
        label = encode_label(raw.label, self.task, str(path), self.ignore_nodata)
        if self.task.kind == "segmentation" and np.shape(label) != image.shape[:2]:
            raise ValueError(f"{path}: label map {np.shape(label)} and image "
                             f"{image.shape[:2]} differ in size")
        if self.center_crop:
            image = _center_crop(image, self.center_crop, str(path))
            if self.task.kind == "segmentation":
                label = _center_crop(label, self.center_crop, str(path))
        image = self.normalize(image, band_names).astype(np.float32)
        if dates == [None]:
            stamps = DEFAULT_TIMESTAMPS.copy()
        else:
            stamps = np.asarray([[d.day, d.month - 1, d.year] for d in dates], np.int32)
        return EvalSample(image, label, self.sensor, name, stamps)

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All samples stacked: images (N, H, W, T, C) and labels (N, ...)."""
        return stack_samples(self)


GeoBenchClassification = GeoBenchDataset  # the first reader's name
