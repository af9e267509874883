"""GEO-Bench-2 tasks through its published reader library, `tacoreader` (the .tortilla format).

Layout: `<root>/<task>/` holds the task's `.tortilla` file(s) (the release names them
`geobench_<task>.tortilla` or `geobench_<task>.NNNN.part.tortilla`; every `*.tortilla` in
the folder is read, in name order). `tacoreader.v1.load` reads each file's metadata table
(one row per sample, with its split in `tortilla:data_split`: train / validation / test);
`.read(i)` returns a sample's inner table, one row per stored item (a GeoTIFF, read with
rasterio through its GDAL /vsisubfile path, or an HDF5 file, read from its byte range).

Tasks (facts from The-AI-Alliance/GEO-Bench-2 `geobench_v2/datasets/*.py` and the files):

- benv2 (BigEarthNet v2): multilabel, 19 classes (names in `BENV2_CLASSES`, the label is the
  list of class names in the "labels" column), 120 x 120 pixels at 10 m, one date
  (stac:time_start). Items "s1": float32 (2, H, W) VV, VH in dB -> sentinel1 (vv, vh);
  "s2": uint16 (12, H, W) B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B11, B12 (L2A,
  reflectance x 10,000; no B10) -> sentinel2_l2a.
- pastis (PASTIS-R): semantic segmentation of crop types, time series. Items "s2": int16
  (T, 10, H, W) B02, B03, B04, B05, B06, B07, B08, B8A, B11, B12 -> sentinel2_l2a (B01 <- B02,
  B09 <- B8A imputed, the reference's rule for S2 sets without them); "s1a" / "s1d" (ascending
  / descending orbit): float16 (T, 3, H, W) VV, VH, VV/VH in dB -> sentinel1 (vv, vh; the
  ratio is dropped); "semantic": uint8 (3, H, W) whose first channel is the class map (0
  background, 1-18 crops, 19 void); each item's acquisition dates (YYYYMMDD) are in its
  "dates" column. 19 classes; the void label 19 is ignored (-1), the PASTIS convention.
- treesatai: multilabel, 15 tree genera (`TREESATAI_CLASSES`, label = the "species_labels"
  list), year in "year". Items "aerial": uint8 (4, 304, 304) colour-infrared NIR, G, B, R
  at 0.2 m -> naip (R, G, B, IR); "s2": uint16 (12, 304, 304) in sentinel2_l2a order, a
  6 x 6 patch at 10 m stored upsampled by pixel repetition to 304 x 304: the reader takes
  the 6 x 6 values back (checking that each block is constant) -> sentinel2_l2a at 10 m;
  "s1": uint16 values that are not dB backscatter (65534, ...): not used.
- biomassters: dense regression of above-ground biomass (Mg/ha; "AGBM" item, float32
  (1, 32, 32)), 12 monthly items per sensor named by month (September ... August, the
  BioMassters year), no geolocation or year. "S1": float32 (4, 32, 32) VV, VH ascending,
  VV, VH descending in dB, -9999 = no data -> sentinel1 (ascending by default); "S2": uint16
  (11, 32, 32) B02, B03, B04, B05, B06, B07, B08, B8A, B11, B12 and cloud probability
  (dropped) -> sentinel2_l2a (B01 <- B02, B09 <- B8A imputed); S2 months may be missing.
  Scores are RMSE in Mg/ha.

Inputs and timeline. A task's `inputs` (config `dataset.inputs`, default the task's
`default_inputs`) choose which items become model sensors; sensors that share a sample share
one timeline, the model's: benv2 and treesatai have one timestep; biomassters the 12 months
September -> August; pastis monthly composites over the last `timesteps` (default 12)
calendar months ending with the sample's latest acquisition, each month the mean of that
item's acquisitions in it. A month without an acquisition holds `sensors.MISSING_VALUE`
(ABSENT tokens); a whole-image no-data timestep too; scattered no-data pixels become NaN,
i.e. 0 after normalisation (the data pipeline's rule for non-finite values). Timestamps are
[day, month index, year], year 2020 where the data give none. Normalisation: the pretraining
statistics of each sensor (the stored units match them: S2 DN, S1 dB, 8-bit aerial).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import pathlib
import warnings

import h5py
import numpy as np

from spacenit_jax import sensors
from spacenit_jax.eval import normalization
from spacenit_jax.eval.samples import EvalSample, stack_samples

SPLITS = ("train", "valid", "test")
_TACO_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
BIOMASSTERS_MONTHS = MONTHS[8:] + MONTHS[:8]  # the BioMassters year: September -> August
DEFAULT_YEAR = 2020

BENV2_CLASSES = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops",
    "Pastures", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation", "Transitional woodland, shrub",
    "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands", "Inland waters",
    "Marine waters",
)  # fmt: skip
TREESATAI_CLASSES = ("Abies", "Acer", "Alnus", "Betula", "Cleared", "Fagus", "Fraxinus",
                     "Larix", "Picea", "Pinus", "Populus", "Prunus", "Pseudotsuga", "Quercus",
                     "Tilia")
PASTIS_CLASSES = (
    "Background", "Meadow", "Soft winter wheat", "Corn", "Winter barley", "Winter rapeseed",
    "Spring barley", "Sunflower", "Grapevine", "Beet", "Winter triticale", "Winter durum wheat",
    "Fruits, vegetables, flowers", "Potatoes", "Leguminous fodder", "Soybeans", "Orchard",
    "Mixed cereal", "Sorghum",
)  # fmt: skip (label 19 = void, ignored)

_S2_PASTIS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
_S2_IMPUTES = (("B02", "B01"), ("B8A", "B09"))


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One stored item type and the model sensor it feeds.

    channels: the sensor band id of each stored channel, None where the channel is dropped
    (`dropped` says why); imputes: (source band, missing band) copies; nodata: the stored
    no-data value; gsd: metres per pixel.
    """

    sensor: str
    channels: tuple[str | None, ...]
    gsd: float
    imputes: tuple[tuple[str, str], ...] = ()
    dropped: str = ""
    nodata: float | None = None

    def __post_init__(self):
        spec = sensors.get(self.sensor)
        have = {c for c in self.channels if c} | {dst for _, dst in self.imputes}
        if set(spec.bands) - have:
            raise ValueError(f"input for {self.sensor} leaves bands "
                             f"{sorted(set(spec.bands) - have)} without data")


@dataclasses.dataclass(frozen=True)
class GeoBench2Task:
    """A GEO-Bench-2 task: kind, classes (or regression outputs), inputs (module docstring)."""

    name: str
    kind: str  # "multilabel" | "segmentation" | "regression"
    num_classes: int
    inputs: dict[str, InputSpec]
    default_inputs: tuple[str, ...]
    class_names: tuple[str, ...] | None = None
    ignore_label: int | None = None
    timesteps: int = 1
    units: str = ""

    @property
    def multilabel(self) -> bool:
        return self.kind == "multilabel"

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(self.inputs[i].sensor for i in self.default_inputs)


TASKS: dict[str, GeoBench2Task] = {t.name: t for t in (
    GeoBench2Task("benv2", "multilabel", 19, {
        "s2": InputSpec("sentinel2_l2a", ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                                          "B8A", "B09", "B11", "B12"), 10.0),
        "s1": InputSpec("sentinel1", ("vv", "vh"), 10.0),
    }, ("s2", "s1"), BENV2_CLASSES),
    GeoBench2Task("pastis", "segmentation", 19, {
        "s2": InputSpec("sentinel2_l2a", _S2_PASTIS, 10.0, _S2_IMPUTES),
        "s1_asc": InputSpec("sentinel1", ("vv", "vh", None), 10.0,
                            dropped="the VV/VH ratio channel"),
        "s1_desc": InputSpec("sentinel1", ("vv", "vh", None), 10.0,
                             dropped="the VV/VH ratio channel"),
    }, ("s2", "s1_asc"), PASTIS_CLASSES, ignore_label=19, timesteps=12),
    GeoBench2Task("treesatai", "multilabel", 15, {
        "s2": InputSpec("sentinel2_l2a", sensors.SENTINEL2_L2A.bands, 10.0),
        "aerial": InputSpec("naip", ("IR", "G", "B", "R"), 0.2),
    }, ("s2",), TREESATAI_CLASSES),
    GeoBench2Task("biomassters", "regression", 1, {
        "s1_asc": InputSpec("sentinel1", ("vv", "vh", None, None), 10.0, nodata=-9999.0,
                            dropped="the descending-orbit channels"),
        "s1_desc": InputSpec("sentinel1", (None, None, "vv", "vh"), 10.0, nodata=-9999.0,
                             dropped="the ascending-orbit channels"),
        "s2": InputSpec("sentinel2_l2a", _S2_PASTIS + (None,), 10.0, _S2_IMPUTES,
                        dropped="the cloud probability channel"),
    }, ("s2", "s1_asc"), ("above-ground biomass",), timesteps=12, units="Mg/ha"),
)}


def get_task(name: str) -> GeoBench2Task:
    key = name.lower().replace("-", "_")
    if key not in TASKS:
        raise KeyError(f"unknown GEO-Bench-2 task {name!r}; known: {sorted(TASKS)}")
    return TASKS[key]


def task_files(root: str | os.PathLike, task: str) -> list[pathlib.Path]:
    """The task's .tortilla files under `<root>/<task>/` ([] when the folder is absent)."""
    folder = pathlib.Path(root) / get_task(task).name
    return sorted(folder.glob("*.tortilla")) if folder.is_dir() else []


# --------------------------------------------------------------------------- item readers


def _read_bytes(row) -> bytes:
    """The bytes of an inner item from its offset and length in the tortilla file."""
    path = str(row["internal:subfile"]).split(",", 1)[1]
    with open(path, "rb") as f:
        f.seek(int(row["tortilla:offset"]))
        return f.read(int(row["tortilla:length"]))


def _read_tiff(row) -> np.ndarray:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # biomassters has no CRS
        with rasterio.open(row["internal:subfile"]) as src:
            return src.read()


def _read_hdf5(row) -> np.ndarray:
    with h5py.File(io.BytesIO(_read_bytes(row)), "r") as f:
        if "data" not in f:
            raise ValueError(f"HDF5 item {row['tortilla:id']!r} has no 'data' dataset "
                             f"(has {list(f)})")
        return np.asarray(f["data"])


def _date(value: int) -> datetime.date:
    text = str(int(value))
    return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def _by_id(inner, item: str):
    hits = inner[inner["tortilla:id"] == item]
    if len(hits) != 1:
        raise ValueError(f"sample has {len(hits)} items {item!r} (items: "
                         f"{list(inner['tortilla:id'])})")
    return hits.iloc[0]


def _unblock(a: np.ndarray, cells: int, where: str) -> np.ndarray:
    """(C, N, N) stored by repeating each of cells x cells values -> (C, cells, cells)."""
    n = a.shape[-1]
    centres = ((np.arange(cells) + 0.5) * n / cells).astype(int)
    small = a[:, centres][:, :, centres]
    starts = np.ceil(np.arange(cells) * n / cells).astype(int)
    expanded = np.repeat(np.repeat(small, np.diff(np.append(starts, n)), axis=1),
                         np.diff(np.append(starts, n)), axis=2)
    if not np.array_equal(expanded, a):
        raise ValueError(f"{where}: expected a {cells}x{cells} grid stored upsampled by pixel "
                         "repetition, but the blocks are not constant")
    return small


# Each reader returns ({input: (stored (T, C, H, W), [date or month index per step])}, label).


def _benv2(inner, task, inputs):
    first = inner.iloc[0]
    when = datetime.datetime.fromtimestamp(float(first["stac:time_start"]),
                                           datetime.UTC).date()
    data = {i: (_read_tiff(_by_id(inner, i))[None], [when]) for i in inputs}
    names = list(first["labels"])
    unknown = sorted(set(names) - set(task.class_names))
    if unknown:
        raise ValueError(f"labels {unknown} are not BigEarthNet v2 classes")
    hot = np.zeros(task.num_classes, np.int32)
    hot[[task.class_names.index(n) for n in names]] = 1
    return data, hot


def _treesatai(inner, task, inputs):
    first = inner.iloc[0]
    when = datetime.date(int(first["year"]), 7, 1)
    data = {}
    for i in inputs:
        a = _read_tiff(_by_id(inner, i))
        if i == "s2":
            a = _unblock(a, 6, "treesatai s2")
        data[i] = (a[None], [when])
    unknown = sorted(set(first["species_labels"]) - set(task.class_names))
    if unknown:
        raise ValueError(f"species {unknown} are not TreeSatAI classes")
    hot = np.zeros(task.num_classes, np.int32)
    hot[[task.class_names.index(n) for n in first["species_labels"]]] = 1
    return data, hot


_PASTIS_ITEMS = {"s2": "s2", "s1_asc": "s1a", "s1_desc": "s1d"}


def _pastis(inner, task, inputs):
    data = {}
    for i in inputs:
        row = _by_id(inner, _PASTIS_ITEMS[i])
        a = _read_hdf5(row)
        dates = [_date(d) for d in row["dates"]]
        if a.ndim != 4 or a.shape[0] != len(dates):
            raise ValueError(f"pastis {i}: expected (T={len(dates)}, C, H, W), got {a.shape}")
        data[i] = (a, dates)
    semantic = _read_hdf5(_by_id(inner, "semantic"))
    label = semantic[0].astype(np.int32)
    bad = np.unique(label[(label < 0) | (label > task.num_classes)])
    if bad.size:
        raise ValueError(f"pastis: class map holds {bad.tolist()} outside [0, "
                         f"{task.num_classes}]")
    label[label == task.ignore_label] = -1
    return data, label


_BIOMASSTERS_MODALITY = {"s1_asc": "S1", "s1_desc": "S1", "s2": "S2"}


def _biomassters(inner, task, inputs):
    data = {}
    for i in inputs:
        rows = inner[inner["modality"] == _BIOMASSTERS_MODALITY[i]]
        steps, months = [], []
        for _, row in rows.iterrows():
            if row["month"] not in BIOMASSTERS_MONTHS:
                raise ValueError(f"biomassters {i}: unknown month {row['month']!r}")
            steps.append(_read_tiff(row))
            months.append(BIOMASSTERS_MONTHS.index(row["month"]))
        if not steps:
            raise ValueError(f"biomassters: no {_BIOMASSTERS_MODALITY[i]} items")
        data[i] = (np.stack(steps), months)
    target = _read_tiff(_by_id(inner, inner[inner["modality"] == "AGBM"].iloc[0]["tortilla:id"]))
    return data, np.transpose(target, (1, 2, 0)).astype(np.float32)  # (H, W, 1)


_READERS = {"benv2": _benv2, "pastis": _pastis, "treesatai": _treesatai,
            "biomassters": _biomassters}


# --------------------------------------------------------------------------- assembly


def _to_sensor(stored: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(T, C_stored, H, W) -> (H, W, T, C) float64 in the sensor's band order; no-data -> NaN,
    whole no-data timesteps -> MISSING_VALUE."""
    a = stored.astype(np.float64)
    if a.shape[1] != len(spec.channels):
        raise ValueError(f"{spec.sensor} input: expected {len(spec.channels)} stored channels, "
                         f"got {a.shape[1]}")
    if spec.nodata is not None:
        a[a == spec.nodata] = np.nan
    by_band = {b: a[:, c] for c, b in enumerate(spec.channels) if b is not None}
    for src, dst in spec.imputes:
        by_band.setdefault(dst, by_band[src])
    out = np.stack([by_band[b] for b in sensors.get(spec.sensor).bands], axis=-1)  # T,H,W,C
    empty = np.all(np.isnan(out), axis=(1, 2, 3))
    out[empty] = sensors.MISSING_VALUE
    return np.transpose(out, (1, 2, 0, 3))


def _month_index(d: datetime.date) -> int:
    return d.year * 12 + d.month - 1


def _monthly_timeline(dated: dict[str, list[datetime.date]], timesteps: int) -> list[int]:
    """The last `timesteps` calendar months (as year*12 + month index) ending with the
    latest acquisition of any input."""
    last = max(_month_index(d) for dates in dated.values() for d in dates)
    return list(range(last - timesteps + 1, last + 1))


class GeoBench2Dataset:
    """One split of a GEO-Bench-2 task as `EvalSample`s (see the module docstring).

    inputs: item types to use (default the task's `default_inputs`); timesteps: months of a
    time-series task's timeline (default the task's). `notes` lists what was dropped,
    imputed or composited.
    """

    def __init__(self, root: str | os.PathLike | None, task: str, split: str = "train", *,
                 inputs=None, timesteps: int | None = None):
        try:
            import tacoreader.v1 as tacoreader
        except ImportError as err:
            raise ImportError(f"GEO-Bench-2 tasks read .tortilla files with tacoreader ({err}); "
                              "install the benchmarks extra: pip install "
                              "'spacenit-jax[benchmarks]'") from err
        self.task = get_task(task)
        if root is None:
            root = os.environ.get("GEOBENCH2_DIR")
            if not root:
                raise FileNotFoundError("GEO-Bench-2 root not given and $GEOBENCH2_DIR is not "
                                        "set")
        split = {"val": "valid", "validation": "valid"}.get(split, split)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} (or 'val'), got {split!r}")
        self.split = split
        self.files = task_files(root, self.task.name)
        if not self.files:
            raise FileNotFoundError(f"no .tortilla files in {pathlib.Path(root) / self.task.name}"
                                    f" (expected <root>/{self.task.name}/*.tortilla)")
        self.inputs = tuple(inputs or self.task.default_inputs)
        unknown = [i for i in self.inputs if i not in self.task.inputs]
        if unknown or not self.inputs:
            raise ValueError(f"{self.task.name}: unknown inputs {unknown or list(self.inputs)}; "
                             f"known: {sorted(self.task.inputs)}")
        used = [self.task.inputs[i].sensor for i in self.inputs]
        if len(set(used)) != len(used):
            raise ValueError(f"{self.task.name}: inputs {list(self.inputs)} feed one sensor "
                             f"twice ({used}); choose one of them")
        self.timesteps = int(timesteps or self.task.timesteps)
        table = tacoreader.load([str(f) for f in self.files])
        splits = set(table["tortilla:data_split"])
        self.table = table[table["tortilla:data_split"] == _TACO_SPLITS[split]].reset_index(
            drop=True)
        if len(self.table) == 0:
            raise ValueError(f"{self.task.name}: no {_TACO_SPLITS[split]!r} samples in "
                             f"{[f.name for f in self.files]} (splits there: {sorted(splits)})")
        self.names = list(self.table["tortilla:id"])
        self.sensor = self.task.inputs[self.inputs[0]].sensor
        self.notes = self._notes()

    def _notes(self) -> list[str]:
        out = []
        for i in self.inputs:
            spec = self.task.inputs[i]
            if spec.dropped:
                out.append(f"{self.task.name}: {i} -> {spec.sensor}; not used: {spec.dropped}")
            if spec.imputes:
                out.append(f"{self.task.name}: {spec.sensor} bands imputed: " + ", ".join(
                    f"{dst} <- {src}" for src, dst in spec.imputes))
        if self.task.name == "pastis":
            out.append(f"pastis: monthly means over the last {self.timesteps} months of each "
                       "sample; months without an acquisition are absent")
        return out

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> EvalSample:
        name = self.names[index]
        where = f"{self.task.name} sample {name} ({self.files[0].parent})"
        try:
            stored, label = _READERS[self.task.name](self.table.read(index), self.task,
                                                     self.inputs)
            images, stamps = self._timeline(stored)
        except (ValueError, KeyError, OSError) as err:
            raise type(err)(f"{where}: {err}") from err
        primary, *rest = self.inputs
        sensor = self.task.inputs[primary].sensor
        extra = {self.task.inputs[i].sensor: images[i] for i in rest}
        return EvalSample(images[primary], label, sensor, name, stamps, extra)

    def _timeline(self, stored: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every input on the task's common timeline, normalised; and the timestamps."""
        images = {}
        if self.task.name == "biomassters":
            steps = list(range(12))
            stamps = np.asarray([[1, MONTHS.index(m), DEFAULT_YEAR] for m in BIOMASSTERS_MONTHS],
                                np.int32)
            for i, (a, months) in stored.items():
                images[i] = self._place(a, months, steps, self.task.inputs[i])
            return images, stamps
        if self.task.timesteps == 1:
            for i, (a, _) in stored.items():
                images[i] = self._finish(_to_sensor(a, self.task.inputs[i]),
                                         self.task.inputs[i])
            d = next(iter(stored.values()))[1][0]
            return images, np.asarray([[d.day, d.month - 1, d.year]], np.int32)
        months = _monthly_timeline({i: d for i, (_, d) in stored.items()}, self.timesteps)
        for i, (a, dates) in stored.items():
            keys = [_month_index(d) for d in dates]
            images[i] = self._place(a, keys, months, self.task.inputs[i], composite=True)
        stamps = np.asarray([[1, m % 12, m // 12] for m in months], np.int32)
        return images, stamps

    def _place(self, a, keys, steps, spec: InputSpec, composite: bool = False) -> np.ndarray:
        """Stored steps (with timeline keys) -> (H, W, len(steps), C); steps without data
        are MISSING_VALUE; several stored steps on one key are averaged (composite)."""
        full = _to_sensor(a, spec)  # H, W, T_stored, C
        h, w, _, c = full.shape
        out = np.full((h, w, len(steps), c), float(sensors.MISSING_VALUE))
        for t, key in enumerate(steps):
            hits = [s for s, k in enumerate(keys) if k == key]
            if len(hits) > 1 and not composite:
                raise ValueError(f"{spec.sensor}: {len(hits)} items for one timestep")
            present = [s for s in hits if not np.all(full[:, :, s] == sensors.MISSING_VALUE)]
            if present:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
                    out[:, :, t] = np.nanmean(full[:, :, present], axis=2)
        return self._finish(out, spec)

    @staticmethod
    def _finish(image: np.ndarray, spec: InputSpec) -> np.ndarray:
        """Pretraining normalisation (MISSING_VALUE kept, NaN -> 0), float32."""
        return normalization.normalize_image(image, spec.sensor,
                                             normalization.PRETRAINED).astype(np.float32)

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return stack_samples(self)
