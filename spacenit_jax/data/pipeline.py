"""The Grain pipeline: global batch index -> this host's packed batch (numpy).

    ds = MapDataset.range(num_batches).map(BatchBuilder)   # element b = host batch b
       .to_iter_dataset(ReadOptions)                        # a prefetch thread
       .mp_prefetch(MultiprocessingOptions(num_workers))    # spawned worker processes

Determinism, with no state but the batch index:
- batch b draws (patch_size, hw_p) from a counter-based hash (splitmix64) of
  (seed, b): patch size uniform over `patch_sizes`, then hw_p uniform over the crop
  sizes that fit the stored tile at that patch size (crop.allowed_hw). Every host
  computes the same draw (the original draws per rank and per local batch, so ranks
  may use different patch sizes in one step);
- the global batch b holds B(hw) = k(hw) * R * num_processes consecutive positions of an
  endless record stream starting at offset(b) = sum of B over earlier batches
  (prefix sums cached in chunks, vectorised);
- this process takes positions offset(b) + process_index + j * num_processes,
  j = 0..k*R-1 (strided like the original's DP ranks); host sample j goes to row j // k,
  segment j % k;
- record position p is item perm_e[p % N] of epoch e = p // N, perm_e a permutation
  from numpy PCG64((seed, e)); epochs are seamless (a batch may straddle two) and no
  record is dropped;
- each record's crop uses PCG64((seed, p, 0)); view v's augmentation and then its mask
  use PCG64((seed, p, 1 + v)); "scheduled" masking reads b as its step.
So a batch depends only on (config, b): worker count and restarts do not change the
data, and Grain's iterator state (the next batch index) restores exactly.

Bad samples: "raise" (default) stops with the file and reason; "skip" replaces the
unreadable item by the next items of the same epoch permutation (perm_e[(p + j) % N],
j = 1, 2, ...; that item then appears twice in the epoch), keeping the record's own RNG,
and counts it in metrics["skipped"]. A sample is bad when it cannot be read or when a
stored value lies outside its sensor's plausible range (`value_ranges`: a corrupt
compressed chunk decodes without error into garbage). The start-up probe of the tile
size follows the same policy (the first readable item is used). A pixel dtype that
cannot hold the data (float16 and raw values above 65504) is refused by make_pipeline,
and a value that still overflows it raises, whatever the policy.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.data import (
    augment,
    budget,
    crop,
    masking,
    normalize,
    packing,
    tokenize,
    value_ranges,
)
from spacenit_jax.data.h5 import H5FormatError, H5Source, Sample
from spacenit_jax.data.plan import STREAM_COSTS, PackingPlan, align_up
from spacenit_jax.tokenization import TokenLayout

log = logging.getLogger(__name__)
INFINITE_BATCHES = 2**40
OFFICIAL_MASKING = {
    "type": "cross_sensor_random", "base_encode_ratio": 0.5, "base_decode_ratio": 0.5,
    "decode_only_sensors": list(sensors.OFFICIAL_DECODE_ONLY),
}
BAD_SAMPLE_POLICIES = ("raise", "skip")
PIXEL_DTYPES = ("float32", "bfloat16", "float16")


class BadSampleError(RuntimeError):
    """A record could not be read (bad_sample_policy="raise")."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    path: str
    sensor_labels: tuple[str, ...] | None = None  # None: the layout's; must equal them
    token_budget: int = 2250
    patch_sizes: tuple[int, ...] = tuple(range(1, 9))
    hw_p_list: tuple[int, ...] = tuple(range(1, 13))
    rows: int = 16  # R: rows per host batch (divisible by 1, 2, 4, 8 or 16 local devices)
    row_length: int | None = None  # L_t; None: smallest multiple of `align` >= max n(hw)
    online_length: int | None = None  # L_o; None: chosen by the plan
    decoder_length: int | None = None  # L_d; None: chosen by the plan
    stream_costs: tuple[float, float, float] = STREAM_COSTS
    align: int = 8
    num_views: int = 2
    masking: Any = dataclasses.field(default_factory=lambda: dict(OFFICIAL_MASKING))
    augmentation: Any = "dihedral"
    normalize: bool = True
    patchwise_crop: bool = False  # the original's apply_cutmix crop variant
    seed: int = 0
    num_workers: int = 0
    worker_buffer_size: int = 1
    read_threads: int = 1  # prefetch thread(s) in the consuming process / each worker
    prefetch: int = 2
    bad_sample_policy: str = "raise"
    max_skip_tries: int = 16
    # Stored values outside their sensor's plausible range (value_ranges.PLAUSIBLE_RANGES)
    # make a sample bad (likely corruption); value_ranges overrides them per sensor:
    # {label: [lo, hi] | {"lo", "hi", "nodata"} | None (not checked)}.
    check_value_ranges: bool = True
    value_ranges: Any = dataclasses.field(default_factory=dict)
    dtype: str = "float32"  # pixel buffers: float32 | bfloat16 | float16
    num_batches: int | None = None  # None: endless
    process_index: int | None = None  # None: jax.process_index()
    process_count: int | None = None  # None: jax.process_count()
    dataset_percentage: float = 1.0
    filter_idx_file: str | None = None

    def __post_init__(self):
        if self.bad_sample_policy not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"bad_sample_policy must be one of {BAD_SAMPLE_POLICIES}, "
                             f"got {self.bad_sample_policy!r}")
        if self.num_views not in (1, 2):
            raise ValueError(f"num_views must be 1 or 2, got {self.num_views}")
        if self.dtype not in PIXEL_DTYPES:
            raise ValueError(f"dtype must be one of {PIXEL_DTYPES}, got {self.dtype!r}")
        if not self.patch_sizes or min(self.patch_sizes) < 1:
            raise ValueError(f"patch_sizes must be positive, got {self.patch_sizes}")
        if self.rows < 1 or self.num_workers < 0:
            raise ValueError(f"rows must be >= 1 and num_workers >= 0 ({self.rows}, {self.num_workers})")
        for name in ("sensor_labels", "patch_sizes", "hw_p_list", "stream_costs"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))
        if self.masking is not None and not isinstance(self.masking, str | masking.Strategy):
            object.__setattr__(self, "masking", _plain(self.masking))
        if isinstance(self.augmentation, Mapping):
            object.__setattr__(self, "augmentation", _plain(self.augmentation))
        object.__setattr__(self, "value_ranges", _plain(self.value_ranges or {}))

    @classmethod
    def from_config_dict(cls, cd) -> PipelineConfig:
        """From an ml_collections.ConfigDict (or any mapping); unknown keys are errors."""
        d = cd.to_dict() if hasattr(cd, "to_dict") else dict(cd)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown data config keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)

    def replace(self, **kw) -> PipelineConfig:
        return dataclasses.replace(self, **kw)


def _plain(x):
    """ConfigDict / tuples -> plain dicts and lists (picklable, comparable)."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def pixel_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# --------------------------------------------------------------------------------------
# Counter-based draws and the batch schedule

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) floats, a pure function of (seed, index, stream)."""
    with np.errstate(over="ignore"):
        key = _splitmix(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], np.uint64)
                        + _GOLDEN * np.uint64(stream + 1))
        h = _splitmix(np.asarray(index, np.uint64) * _GOLDEN + key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class BatchSchedule:
    """(patch_size, hw_p) and the first record position of every global batch."""

    CHUNK = 8192

    def __init__(self, seed: int, allowed: Mapping[int, Sequence[int]],
                 global_batch: Mapping[int, int]):
        self.seed = int(seed)
        self.patch_sizes = np.array(sorted(allowed), np.int64)
        width = max(len(v) for v in allowed.values())
        self.table = np.zeros((len(self.patch_sizes), width), np.int64)
        self.count = np.zeros(len(self.patch_sizes), np.int64)
        for i, p in enumerate(self.patch_sizes):
            hws = list(allowed[int(p)])
            if not hws:
                raise ValueError(f"patch size {p} has no allowed crop size")
            self.table[i, :len(hws)] = hws
            self.count[i] = len(hws)
        self.size_of = np.zeros(int(self.table.max()) + 1, np.int64)
        for hw, n in global_batch.items():
            self.size_of[hw] = n
        self._prefix = [0]
        self._lock = threading.Lock()

    def __getstate__(self):
        d = dict(self.__dict__)
        del d["_lock"]
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def draw(self, b) -> tuple[np.ndarray, np.ndarray]:
        b = np.atleast_1d(np.asarray(b, np.int64))
        pi = np.minimum((hash_uniform(self.seed, b, 0) * len(self.patch_sizes)).astype(np.int64),
                        len(self.patch_sizes) - 1)
        hi = np.minimum((hash_uniform(self.seed, b, 1) * self.count[pi]).astype(np.int64),
                        self.count[pi] - 1)
        return self.patch_sizes[pi], self.table[pi, hi]

    def sizes(self, start: int, stop: int) -> np.ndarray:
        return self.size_of[self.draw(np.arange(start, stop))[1]]

    def offset(self, b: int) -> int:
        c = b // self.CHUNK
        with self._lock:  # prefetch threads may call concurrently
            while len(self._prefix) <= c:
                j = len(self._prefix) - 1
                total = int(self.sizes(j * self.CHUNK, (j + 1) * self.CHUNK).sum())
                self._prefix.append(self._prefix[-1] + total)
            base = self._prefix[c]
        start = c * self.CHUNK
        return base + (int(self.sizes(start, b).sum()) if b > start else 0)


def record_rng(seed: int, position: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([int(seed), int(position), int(stream)]))


# --------------------------------------------------------------------------------------
# The per-batch work (runs in Grain workers; picklable: paths, arrays, dataclasses)


class BatchBuilder:
    """Global batch index -> this host's element (see module docstring)."""

    def __init__(self, cfg: PipelineConfig, layout: TokenLayout, source: H5Source,
                 plan: PackingPlan, strategy: masking.Strategy, schedule: BatchSchedule,
                 process_index: int, process_count: int, ranges: value_ranges.Resolved):
        self.cfg = cfg
        self.layout = layout
        self.source = source
        self.plan = plan
        self.strategy = strategy  # the one the plan's stream lengths were sized for
        self.schedule = schedule
        self.process_index = process_index
        self.process_count = process_count
        self.ranges = ranges  # plausible values per checked sensor ({}: no check)
        self.transform = augment.build_transform(cfg.augmentation)
        self.pixel_dtype = pixel_dtype(cfg.dtype)
        self._perm: tuple[int, np.ndarray] | None = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_perm"] = None
        return d

    # -- record positions ------------------------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.Generator(np.random.PCG64([self.cfg.seed, epoch]))
            self._perm = (epoch, rng.permutation(len(self.source)))
        return self._perm[1]

    def positions(self, b: int) -> tuple[int, int, np.ndarray]:
        p, hw = (int(x[0]) for x in self.schedule.draw(b))
        n_local = self.plan.samples_per_batch(hw)
        start = self.schedule.offset(b)
        return p, hw, start + self.process_index + self.process_count * np.arange(n_local)

    # -- one record ------------------------------------------------------------------
    def load(self, position: int, patch_size: int, hw: int) -> tuple[Sample, int]:
        """Read, crop and normalise one record; returns (sample, skipped count)."""
        n = len(self.source)
        epoch, r = divmod(int(position), n)
        perm = self.permutation(epoch)
        t_out = self.plan.shape(hw).t_out
        tries = 1 + (self.cfg.max_skip_tries if self.cfg.bad_sample_policy == "skip" else 0)
        errors = []
        for j in range(min(tries, n)):
            item = int(perm[(r + j) % n])
            rng = record_rng(self.cfg.seed, position, 0)
            try:
                s = self.source.read(item, lambda h, rng=rng: crop.choose_window(
                    h, hw, patch_size, t_out, rng, self.cfg.patchwise_crop))
                value_ranges.check_sample(s.arrays, self.ranges, s.path)
            except (OSError, H5FormatError, value_ranges.ImplausibleValueError) as e:
                if self.cfg.bad_sample_policy == "raise":
                    raise BadSampleError(
                        f"record position {position} (dataset item {item}, file "
                        f"{self.source.file_path(item)}): {e}") from e
                path = self.source.file_path(item)
                errors.append(str(e) if path in str(e) else f"{path}: {e}")
                log.warning("skipping bad sample (record position %d): %s", position,
                            errors[-1])
                continue
            s.arrays = normalize.normalize_sample(s.arrays, self.source.dtype, self.cfg.normalize)
            return s, j
        raise BadSampleError(
            f"record position {position}: {len(errors)} consecutive bad samples "
            f"(bad_sample_policy='skip', max_skip_tries={self.cfg.max_skip_tries}):\n"
            + "\n".join(errors))

    # -- one batch -------------------------------------------------------------------
    def __call__(self, b: int) -> dict:
        b = int(b)
        patch_size, hw, positions = self.positions(b)
        loaded = [self.load(int(q), patch_size, hw) for q in positions]
        samples = [s for s, _ in loaded]
        skipped = sum(j for _, j in loaded)
        out: dict[str, Any] = {}
        metrics: dict[str, np.ndarray] = {"skipped": np.int32(skipped)}
        for v in range(self.cfg.num_views):
            rngs = [record_rng(self.cfg.seed, q, 1 + v) for q in positions]
            arrays = self.transform.apply([s.arrays for s in samples], rngs)
            prepared = []
            for s, a, rng in zip(samples, arrays, rngs, strict=True):
                masks = masking.mask_sample(self.layout, a, patch_size, self.strategy, rng, b)
                months = np.clip(s.timestamps[:, 1], 0, 11)
                prepared.append(tokenize.prepare_sample(self.layout, a, patch_size, months,
                                                        masks, self.pixel_dtype, s.path))
            view, st = packing.pack_view(self.plan, self.layout, prepared, hw, self.pixel_dtype)
            name = "view_a" if v == 0 else "view_b"
            out[name] = view
            for key in ("real_tokens", "real_online", "real_decoder"):
                metrics[f"{name}/{key}"] = np.int32(getattr(st, key))
            for key in ("pad_tokens", "pad_online", "pad_decoder", "pad_overall"):
                metrics[f"{name}/{key}"] = np.float32(getattr(st, key))
        out.update(patch_size=np.int32(patch_size), hw_p=np.int32(hw),
                   num_samples=np.int32(len(samples)), batch_index=np.int64(b),
                   metrics={k: np.asarray(x) for k, x in metrics.items()})
        for k in ("patch_size", "hw_p", "num_samples", "batch_index"):
            out[k] = np.asarray(out[k])
        return out


# --------------------------------------------------------------------------------------
# Assembly


def _process(cfg: PipelineConfig) -> tuple[int, int]:
    if cfg.process_index is not None and cfg.process_count is not None:
        i, n = int(cfg.process_index), int(cfg.process_count)
    else:
        import jax

        i = jax.process_index() if cfg.process_index is None else int(cfg.process_index)
        n = jax.process_count() if cfg.process_count is None else int(cfg.process_count)
    if not 0 <= i < n:
        raise ValueError(f"process_index {i} not in [0, {n})")
    return i, n


def stored_tile_size(source: H5Source, bad_sample_policy: str = "raise",
                     max_skip_tries: int = 16) -> int:
    """Base-grid tile edge of the data, from the header of the first readable item.

    Under bad_sample_policy "skip" unreadable items are passed over, as a batch would
    (up to max_skip_tries of them); "raise", or no readable item, raises BadSampleError
    naming each file and its error.
    """
    tries = 1 + (max_skip_tries if bad_sample_policy == "skip" else 0)
    errors = []
    for i in range(min(tries, len(source))):
        try:
            h = source.header(i)
        except (OSError, H5FormatError) as e:
            if bad_sample_policy == "raise":
                raise BadSampleError(f"probing the tile size of {source.path} (dataset item "
                                     f"{i}): {e}") from e
            errors.append(str(e))
            log.warning("skipping unreadable sample while probing the tile size: %s", e)
            continue
        if h.height != h.width:
            raise H5FormatError(f"{h.path}: samples must be square, got {h.height}x{h.width}")
        if source.info.tile_size is not None and source.info.tile_size != h.height:
            raise H5FormatError(
                f"{h.path}: the directory name says tile size {source.info.tile_size}, the "
                f"sample is {h.height} pixels")
        return h.height
    raise BadSampleError(
        f"probing the tile size of {source.path}: the first {len(errors)} dataset items are "
        f"all unreadable (bad_sample_policy='skip', max_skip_tries={max_skip_tries}):\n"
        + "\n".join(errors))


@dataclasses.dataclass
class Pipeline:
    config: PipelineConfig
    layout: TokenLayout
    plan: PackingPlan
    builder: BatchBuilder
    allowed: dict[int, tuple[int, ...]]  # patch size -> crop sizes drawn with it
    dataset: Any  # grain.IterDataset

    def __iter__(self):
        return iter(self.dataset)

    def batch(self, b: int) -> dict:
        """Element b computed directly (no Grain): identical to the iterator's."""
        return self.builder(b)

    @property
    def source(self) -> H5Source:
        return self.builder.source

    def samples_per_global_batch(self, hw: int) -> int:
        return self.plan.samples_per_batch(hw) * self.builder.process_count


def _ensure_flags_parsed() -> None:
    """Grain 0.2.18's mp_prefetch reads an absl flag when it starts its workers
    (grain_enable_multiprocess_worker_profiling, in grain/_src/core/profiler.py); outside
    absl.app.run (library use, notebooks, tests) the flags are unparsed and that read
    raises UnparsedFlagAccessError. The launchers parse flags through absl; for everyone
    else, mark them parsed (their defaults)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def hw_distribution(allowed: Mapping[int, Sequence[int]]) -> dict[int, float]:
    """P(hw_p): patch size uniform, then hw_p uniform among the allowed sizes."""
    w: dict[int, float] = {}
    for hws in allowed.values():
        for h in hws:
            w[h] = w.get(h, 0.0) + 1.0 / len(allowed) / len(hws)
    return w


def make_plan(cfg: PipelineConfig, layout: TokenLayout, tile_size: int):
    """The run's row geometry, its masking strategy and the crop sizes drawn with each
    patch size, from the config and the stored tile edge alone (no data is read: the
    same plan is built ahead of time by launch.aot_compile).

    Returns (PackingPlan, masking strategy, {patch size: allowed crop sizes in patches}).
    Raises ValueError when no crop size fits a patch size's token budget.
    """
    allowed = {}
    for p in cfg.patch_sizes:
        hws = crop.allowed_hw(cfg.hw_p_list, p, tile_size, layout, cfg.token_budget)
        if not hws:
            raise ValueError(
                f"patch size {p}: none of the crop sizes {list(cfg.hw_p_list)} fits the "
                f"{tile_size}-pixel tiles of {cfg.path} within the token budget "
                f"{cfg.token_budget}")
        allowed[int(p)] = hws
    strategy = masking.build_masking(cfg.masking)
    all_hw = sorted({h for v in allowed.values() for h in v})
    row_length = cfg.row_length
    if row_length is None:
        row_length = align_up(max(budget.token_count(layout, h, cfg.token_budget)
                                  for h in all_hw), cfg.align)
    plan = PackingPlan.build(
        layout, cfg.token_budget, all_hw, cfg.rows, row_length, strategy,
        hw_distribution(allowed), cfg.stream_costs, cfg.align, cfg.online_length,
        cfg.decoder_length)
    return plan, strategy, allowed


def make_pipeline(cfg: PipelineConfig, layout: TokenLayout, start_batch: int = 0) -> Pipeline:
    """Build the plan, the schedule and the Grain dataset for this process.

    Resume with Grain's iterator state (get_state / set_state; it depends on the worker
    count), or, e.g. after changing num_workers, with start_batch = the next global
    batch index (elements carry "batch_index"): batches are pure functions of it.
    """
    import grain

    labels = cfg.sensor_labels if cfg.sensor_labels is not None else layout.sensor_labels
    if tuple(labels) != tuple(layout.sensor_labels):
        raise ValueError(f"data sensor_labels {list(labels)} differ from the model layout's "
                         f"{list(layout.sensor_labels)}")
    ranges = value_ranges.resolve_ranges(layout.sensor_labels, cfg.value_ranges)
    why = value_ranges.dtype_range_error(layout.sensor_labels, ranges, cfg.normalize,
                                         pixel_dtype(cfg.dtype))
    if why:
        raise ValueError(why)
    path = pathlib.Path(cfg.path)
    source = H5Source(path, layout.sensor_labels, "float32", cfg.filter_idx_file,
                      cfg.dataset_percentage, cfg.seed)
    tile = stored_tile_size(source, cfg.bad_sample_policy, cfg.max_skip_tries)
    plan, strategy, allowed = make_plan(cfg, layout, tile)
    all_hw = sorted({h for v in allowed.values() for h in v})
    pi, pn = _process(cfg)
    schedule = BatchSchedule(cfg.seed, allowed, {h: plan.samples_per_batch(h) * pn for h in all_hw})
    builder = BatchBuilder(cfg, layout, source, plan, strategy, schedule, pi, pn,
                           ranges if cfg.check_value_ranges else {})
    n = INFINITE_BATCHES if cfg.num_batches is None else int(cfg.num_batches)
    if not 0 <= start_batch < n:
        raise ValueError(f"start_batch {start_batch} not in [0, {n})")
    ds = grain.MapDataset.range(start_batch, n).map(builder)
    ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                               prefetch_buffer_size=cfg.prefetch))
    if cfg.num_workers > 0:
        _ensure_flags_parsed()
        from spacenit_jax.data.shared_memory import ReleasingIterDataset

        ids = ReleasingIterDataset(ids.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size)))
    return Pipeline(cfg, layout, plan, builder, allowed, ids)
