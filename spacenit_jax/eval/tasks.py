"""Evaluation tasks: the task config, its datasets, and running a mode (CLI, suite, in-loop).

A task config is an ml_collections ConfigDict (see `configs/eval/*.py`, built on
`base_config()` or, for benchmark tasks, `benchmark_config()`); its defaults are the
reference's DownstreamTaskConfig:

    name                  task name used in result rows and metric keys
    dataset.kind          "geobench" (GeoBench v1, any task) | "geobench2" (GEO-Bench-2) |
                          "synthetic" (built in) | "synthetic_segmentation" (built in)
    dataset.*             geobench: name, root (None: $GEOBENCH_DIR), partition, norm ("auto",
                          "pretrained" or a dataset NormMethod), sensor (None: the task's),
                          ignore_nodata, center_crop, fix_band_labels, train/valid/test_split;
                          geobench2: name, root (None: $GEOBENCH2_DIR), inputs (None: the
                          task's), timesteps (None: the task's);
                          synthetic: num_classes, image_size, seed, noise, *_size;
                          synthetic_segmentation: the same plus block (tile side)
    mode                  "knn" | "linear_probe" | "finetune" (dense tasks, i.e. segmentation
                          and regression maps: no knn, pooling "spatial"; regression: no
                          finetune)
    patch_size, representation, pooling, use_months, gsd, embedding_batch_size
    run_on_test           also score the test split
    every_n_steps         in-loop evaluation interval (the hook only)
    knn.{k, tau}
    probe.{recipe, cs, alphas, max_iter, lrs, epochs, batch_size, eval_interval, seed}
                          recipe None: "lbfgs" (classification tasks) / "ridge" (regression);
                          "reference_adamw" is the original's (see eval/linear_probe.py)
    finetune.{...}
    n_bootstrap, bootstrap_seed

Tiny splits: `adapt_to_sizes` lowers k to the train size and the probe, fine-tuning and
embedding batch sizes to the split sizes, and says so in notes, instead of failing.
Also here: loading a config file (`path.py` or `path.py:arg`, or a bare name such as
"m_eurosat") and overriding fields from a mapping (`override`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from ml_collections import config_dict

from spacenit_jax.eval import bootstrap, geobench, geobench2, knn, linear_probe, metrics
from spacenit_jax.eval import features as feat
from spacenit_jax.eval.synthetic import SyntheticClassification, SyntheticSegmentation

MODES = ("knn", "linear_probe", "finetune")
SPLITS = ("train", "valid", "test")
DATASET_KINDS = ("geobench", "geobench2", "synthetic", "synthetic_segmentation")
PRIMARY = {"classification": "accuracy", "multilabel": "micro_f1", "segmentation": "miou",
           "regression": "rmse"}
DENSE = ("segmentation", "regression")  # one prediction per pixel

# --------------------------------------------------------------------------- configs


def geobench_dataset(name: str = "m-eurosat", root: str | None = None,
                     **fields) -> config_dict.ConfigDict:
    task = geobench.get_task(name)
    cfg = {"kind": "geobench", "name": task.name,
           "root": config_dict.placeholder(str) if root is None else root,
           "partition": "default", "norm": task.default_norm,
           "sensor": config_dict.placeholder(str), "ignore_nodata": False,
           "center_crop": config_dict.placeholder(int), "fix_band_labels": False,
           "train_split": "train", "valid_split": "valid", "test_split": "test"}
    return _with_fields(cfg, fields, "geobench dataset")


def geobench2_dataset(name: str, root: str | None = None, **fields) -> config_dict.ConfigDict:
    task = geobench2.get_task(name)
    cfg = {"kind": "geobench2", "name": task.name,
           "root": config_dict.placeholder(str) if root is None else root,
           "inputs": config_dict.placeholder(tuple), "timesteps": config_dict.placeholder(int),
           "train_split": "train", "valid_split": "valid", "test_split": "test"}
    return _with_fields(cfg, fields, "geobench2 dataset")


def synthetic_dataset(**overrides) -> config_dict.ConfigDict:
    return _synthetic({"kind": "synthetic"}, overrides)


def synthetic_segmentation_dataset(**overrides) -> config_dict.ConfigDict:
    return _synthetic({"kind": "synthetic_segmentation", "num_classes": 4, "block": 8},
                      overrides)


def _synthetic(fields: dict, overrides: dict) -> config_dict.ConfigDict:
    cfg = {"num_classes": 10, "image_size": 32, "seed": 0, "noise": 0.05,
           "train_size": 300, "valid_size": 100, "test_size": 100, **fields}
    return _with_fields(cfg, overrides, "synthetic dataset")


def _with_fields(cfg: dict, fields: dict, what: str) -> config_dict.ConfigDict:
    unknown = sorted(set(fields) - set(cfg))
    if unknown:
        raise ValueError(f"unknown {what} fields {unknown}; known: {sorted(cfg)}")
    out = config_dict.ConfigDict(cfg)
    for key, value in fields.items():
        out[key] = value
    return out


def base_config(name: str, dataset: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """A task with the reference's defaults; callers lock it when done."""
    return config_dict.ConfigDict({
        "name": name,
        "dataset": dataset,
        "mode": "knn",
        "patch_size": 4,
        "representation": "encoder",
        "pooling": "mean",
        "use_months": False,  # the reference's eval passes no month indices
        "gsd": config_dict.placeholder(float),
        "embedding_batch_size": 128,
        "run_on_test": True,
        "every_n_steps": 4000,
        "knn": {"k": knn.DEFAULT_K, "tau": knn.DEFAULT_TAU},
        "probe": {"recipe": config_dict.placeholder(str), "cs": linear_probe.DEFAULT_CS,
                  "alphas": linear_probe.DEFAULT_ALPHAS, "max_iter": 1000,
                  "lrs": tuple(linear_probe.DEFAULT_LRS), "epochs": 50, "batch_size": 32,
                  "eval_interval": config_dict.placeholder(int), "seed": 0},
        "finetune": {"lr": 1e-4, "epochs": 50, "batch_size": 32, "eval_batch_size": 128,
                     "seed": 42, "weight_decay": 0.01, "freeze_fraction": 0.2,
                     "unfreeze_lr_factor": 0.1, "plateau_factor": 0.2, "plateau_patience": 2,
                     "plateau_cooldown": 10, "checkpoint_dir": config_dict.placeholder(str)},
        "n_bootstrap": 0,
        "bootstrap_seed": 42,
    })


# Patch size per image side so that the token grid stays within the model's 64 x 64
# position limit and divides the image (m-forestnet is cropped to 328 = 41 x 8).
_BENCHMARK_PATCH = {64: 4, 120: 4, 32: 4, 256: 4, 320: 8, 328: 8, 400: 8, 500: 10}


def benchmark_config(name: str, suite: str = "geobench", **fields) -> config_dict.ConfigDict:
    """The standard config of a GeoBench v1 or GEO-Bench-2 task (unlocked).

    Classification tasks: kNN on mean-pooled online-encoder tokens (the reference's default),
    dense tasks: a linear probe on per-patch features ("spatial" pooling). Patch size by image
    size (`_BENCHMARK_PATCH`), gsd = the task's metres per pixel for non-10 m sensors.
    fields: top-level config fields to set (e.g. embedding_batch_size=64).
    """
    if suite == "geobench":
        task = geobench.get_task(name)
        dataset = geobench_dataset(task.name)
        side, kind = task.image_size, task.kind
        if task.name == "m-forestnet":
            dataset.center_crop, side = 328, 328
        cfg = base_config(task.name, dataset)
        cfg.patch_size = _BENCHMARK_PATCH[side]
        if task.gsd != 10.0 and task.sensor == "naip":
            cfg.gsd = task.gsd
    elif suite == "geobench2":
        task = geobench2.get_task(name)
        cfg = base_config(task.name, geobench2_dataset(task.name))
        kind = task.kind
        cfg.patch_size = 2 if task.name == "treesatai" else 4
    else:
        raise ValueError(f"unknown benchmark suite {suite!r}; known: geobench, geobench2")
    if kind in DENSE:
        cfg.mode, cfg.pooling = "linear_probe", "spatial"
        cfg.embedding_batch_size = 32
    for key, value in fields.items():
        cfg[key] = value
    return cfg


def config_file(name: str, suite: str = "geobench", *, inputs: Sequence[str] = (),
                **fields) -> Callable[[str | None], config_dict.ConfigDict]:
    """The `get_config(arg)` of a benchmark task's config file (configs/eval/<task>.py):
    the task's `benchmark_config(name, suite, **fields)`, locked. `inputs` are the args the
    file accepts, each restricting `dataset.inputs` to that one input (e.g. "s2"); no arg:
    the task's default inputs. Any other arg is a ValueError naming the accepted ones."""
    def get_config(arg: str | None = None) -> config_dict.ConfigDict:
        if arg not in (None, "", *inputs):
            accepted = ", ".join(["no arg", *(repr(i) for i in inputs)])
            raise ValueError(f"task {name}: unknown config arg {arg!r}; use {accepted}")
        cfg = benchmark_config(name, suite, **fields)
        if arg:
            cfg.dataset.inputs = (arg,)
        cfg.lock()
        return cfg

    return get_config


def as_task_config(task) -> config_dict.ConfigDict:
    """A ConfigDict from a ConfigDict or a plain dict with the same fields; checked."""
    cfg = task if isinstance(task, config_dict.ConfigDict) else config_dict.ConfigDict(task)
    for field in ("name", "dataset", "mode", "patch_size", "representation", "pooling",
                  "embedding_batch_size"):
        if field not in cfg:
            raise ValueError(f"eval task config {cfg.get('name', '?')!r} has no field "
                             f"{field!r}; build it with spacenit_jax.eval.tasks.base_config")
    if cfg.mode not in MODES:
        raise ValueError(f"task {cfg.name!r}: mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.pooling not in feat.POOLINGS:
        raise ValueError(f"task {cfg.name!r}: pooling must be one of {feat.POOLINGS}, got "
                         f"{cfg.pooling!r}")
    feat.canonical_representation(cfg.representation)
    if cfg.dataset.get("kind") not in DATASET_KINDS:
        raise ValueError(f"task {cfg.name!r}: dataset.kind must be one of {DATASET_KINDS}, "
                         f"got {cfg.dataset.get('kind')!r}")
    _, kind = task_info(cfg)
    if kind in DENSE:
        if cfg.mode == "knn":
            raise ValueError(f"task {cfg.name!r}: kNN classifies whole images; a {kind} task "
                             "needs mode 'linear_probe' or 'finetune'")
        if cfg.pooling != "spatial":
            raise ValueError(f"task {cfg.name!r}: a {kind} task needs pooling 'spatial' (one "
                             f"feature per patch position), got {cfg.pooling!r}")
    if kind == "regression" and cfg.mode == "finetune":
        raise ValueError(f"task {cfg.name!r}: fine-tuning has no regression head; use mode "
                         "'linear_probe'")
    return cfg


REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def resolve_config_path(path: str) -> pathlib.Path:
    """A config file path: as given, else relative to the repository root; a bare name
    ("synthetic", "m_eurosat") means configs/eval/<name>.py."""
    if not path.endswith(".py") and "/" not in path:
        path = f"configs/eval/{path}.py"
    file = pathlib.Path(path)
    if not file.is_file() and not file.is_absolute() and (REPO_ROOT / file).is_file():
        file = REPO_ROOT / file
    if not file.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (also looked in "
                                f"{REPO_ROOT})")
    return file


def load_config_file(spec: str) -> config_dict.ConfigDict:
    """`get_config(arg)` of a config file given as "path.py" or "path.py:arg" (or a bare
    task name such as "synthetic:small", see `resolve_config_path`)."""
    path, _, arg = spec.partition(":")
    return as_task_config(get_config_from_file(resolve_config_path(path), arg or None))


def get_config_from_file(file, arg=None) -> config_dict.ConfigDict:
    """`get_config(arg)` of any ml-collections config file (pretraining or evaluation)."""
    file = pathlib.Path(file)
    module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {file} has no get_config(arg=None) function")
    cfg = module.get_config(arg)
    if not isinstance(cfg, config_dict.ConfigDict):
        raise ValueError(f"{file}: get_config returned {type(cfg).__name__}, expected a "
                         "ml_collections ConfigDict")
    return cfg


def _flatten(values: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, Mapping | config_dict.ConfigDict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def override(cfg: config_dict.ConfigDict, values: Mapping) -> config_dict.ConfigDict:
    """Set fields from a mapping, dotted ({"knn.k": 5}) or nested ({"knn": {"k": 5}}), with
    typed values; unknown fields and values of the wrong type are errors (ConfigDict's own
    checks). Returns the checked config."""
    flat = _flatten(values)
    try:
        cfg.update_from_flattened_dict(flat)
    except (AttributeError, KeyError) as err:
        raise ValueError(f"task {cfg.get('name', '?')!r}: unknown config field in "
                         f"{sorted(flat)}: {err}") from None
    except TypeError as err:
        raise ValueError(f"task {cfg.get('name', '?')!r}: {err}") from None
    return as_task_config(cfg)


# --------------------------------------------------------------------------- datasets


def task_info(cfg) -> tuple[int, str]:
    """(num_classes or regression outputs, kind): kind is "classification" | "multilabel" |
    "segmentation" | "regression"."""
    ds = cfg.dataset
    if ds.kind == "synthetic":
        return int(ds.num_classes), "classification"
    if ds.kind == "synthetic_segmentation":
        return int(ds.num_classes), "segmentation"
    if ds.kind == "geobench2":
        task = geobench2.get_task(ds.name)
        return task.num_classes, task.kind
    task = geobench.get_task(ds.name)
    return task.num_classes, task.kind


def task_sensors(cfg, model_sensors: Sequence[str] | None = None) -> tuple[str, ...]:
    """The model sensors the task's dataset feeds (after the aerial fallback, when the model's
    sensors are given)."""
    ds = cfg.dataset
    if ds.kind.startswith("synthetic"):
        return (SyntheticClassification.sensor,)
    if ds.kind == "geobench2":
        task = geobench2.get_task(ds.name)
        return tuple(task.inputs[i].sensor for i in (ds.get("inputs") or task.default_inputs))
    return (_geobench_sensor(cfg, model_sensors)[0],)


def task_sensor(cfg) -> str:
    """The primary sensor of the task's dataset."""
    return task_sensors(cfg)[0]


def _geobench_sensor(cfg, model_sensors) -> tuple[str, str | None]:
    """(sensor, note): the configured or the task's sensor; for the aerial tasks, the
    sentinel2_l2a fallback when the model has no naip."""
    task = geobench.get_task(cfg.dataset.name)
    sensor = cfg.dataset.get("sensor") or task.sensor
    if (model_sensors is not None and sensor == "naip" and "naip" not in model_sensors
            and "sentinel2_l2a" in model_sensors and not cfg.dataset.get("sensor")):
        return "sentinel2_l2a", (f"{task.name}: the model has no naip sensor; aerial R, G, B, "
                                 "NIR fed to sentinel2_l2a B04, B03, B02, B08 (fallback, not a "
                                 "faithful input)")
    return sensor, None


def load_split(cfg, split: str, model_sensors: Sequence[str] | None = None):
    """The task's dataset for split "train" | "valid" | "test" (lazy; EvalSamples, with
    `notes` for benchmark datasets).

    Raises FileNotFoundError when a benchmark dataset is not there ($GEOBENCH_DIR /
    $GEOBENCH2_DIR unset or wrong, missing partition or sample files).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ds = cfg.dataset
    if ds.kind.startswith("synthetic"):
        kw = dict(num_samples=int(ds[f"{split}_size"]), num_classes=int(ds.num_classes),
                  image_size=int(ds.image_size), seed=int(ds.seed), noise=float(ds.noise))
        if ds.kind == "synthetic_segmentation":
            return SyntheticSegmentation(split, block=int(ds.block), **kw)
        return SyntheticClassification(split, **kw)
    try:
        if ds.kind == "geobench2":
            return geobench2.GeoBench2Dataset(ds.root, ds.name, ds[f"{split}_split"],
                                              inputs=ds.get("inputs"),
                                              timesteps=ds.get("timesteps"))
        sensor, note = _geobench_sensor(cfg, model_sensors)
        data = geobench.GeoBenchDataset(
            ds.root, ds.name, ds[f"{split}_split"], partition=ds.partition, norm=ds.norm,
            sensor=sensor, ignore_nodata=bool(ds.ignore_nodata),
            center_crop=ds.get("center_crop"), fix_band_labels=bool(ds.fix_band_labels))
        if note:
            data.notes.append(note)
        return data
    except FileNotFoundError as err:
        env = "$GEOBENCH2_DIR" if ds.kind == "geobench2" else "$GEOBENCH_DIR"
        raise FileNotFoundError(f"task {cfg.name!r}, split {split!r}: {err} (set {env} or "
                                "dataset.root)") from err


def dataset_notes(*datasets) -> list[str]:
    """The notes of benchmark datasets, each once, in order."""
    out = []
    for data in datasets:
        for note in getattr(data, "notes", ()):
            if note not in out:
                out.append(note)
    return out


def eval_splits(cfg) -> tuple[str, ...]:
    return ("valid", "test") if cfg.get("run_on_test", False) else ("valid",)


def adapt_to_sizes(cfg, sizes: Mapping[str, int]) -> list[str]:
    """Lower what the task's mode uses to fit tiny splits (in place): k, the reference probe's
    and fine-tuning's batch sizes to the train size, the embedding and evaluation batch sizes
    to the largest split. Returns notes of what changed."""
    notes = []
    n_train, n_max = int(sizes["train"]), max(int(v) for v in sizes.values())

    def lower(path: str, limit: int, why: str):
        *parents, leaf = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        if node[leaf] is not None and node[leaf] > limit:
            notes.append(f"{cfg.name}: {path} {node[leaf]} -> {limit} ({why})")
            node[leaf] = limit

    train_why, max_why = f"{n_train} training samples", f"largest split {n_max}"
    if cfg.mode == "finetune":
        lower("finetune.batch_size", n_train, train_why)
        lower("finetune.eval_batch_size", n_max, max_why)
        return notes
    lower("embedding_batch_size", n_max, max_why)
    if cfg.mode == "knn":
        lower("knn.k", n_train, train_why)
    elif cfg.probe.get("recipe") == "reference_adamw":
        lower("probe.batch_size", n_train, train_why)
    return notes


# --------------------------------------------------------------------------- modes


def _row(cfg, mode, split, metric, value, hyper, primary=False) -> dict:
    return {"task": cfg.name, "mode": mode, "split": split, "metric": metric,
            "value": float(value), "primary": primary, "hyperparameters": hyper}


def _bootstrap_rows(cfg, mode, preds, labels, hyper) -> list[dict]:
    n = int(cfg.get("n_bootstrap", 0))
    if n <= 0:
        return []
    seed = int(cfg.get("bootstrap_seed", 42))
    num_classes, kind = task_info(cfg)
    if kind == "regression":
        stats = bootstrap.bootstrap_rmse(preds, np.asarray(labels, np.float32).reshape(
            np.shape(preds)), n, seed).as_dict()
    elif kind == "segmentation":  # resample per-sample confusion matrices
        cms = metrics.per_sample_confusion(preds, labels, num_classes)
        stats = bootstrap.bootstrap_miou(cms, n, seed).as_dict()
    else:
        fn = bootstrap.bootstrap_micro_f1 if labels.ndim == 2 else bootstrap.bootstrap_accuracy
        stats = fn(preds, labels, n, seed).as_dict()
    return [_row(cfg, mode, "test", k, v, hyper) for k, v in stats.items()
            if np.ndim(v) == 0]


def probe_config_from(cfg, num_classes: int, kind: str) -> linear_probe.ProbeConfig:
    p = cfg.probe
    return linear_probe.ProbeConfig(
        task=kind, num_classes=num_classes, recipe=p.get("recipe"),
        cs=tuple(p.get("cs", linear_probe.DEFAULT_CS)),
        alphas=tuple(p.get("alphas", linear_probe.DEFAULT_ALPHAS)),
        max_iter=int(p.get("max_iter", 1000)), lrs=tuple(p.lrs),
        epochs=int(p.epochs), batch_size=int(p.batch_size),
        eval_interval=None if p.eval_interval is None else int(p.eval_interval),
        seed=int(p.seed))


def evaluate_features(cfg, mode: str, feats: dict[str, feat.Features], *,
                      splits: tuple[str, ...] | None = None, progress=None) -> list[dict]:
    """Score a frozen-feature mode ("knn" | "linear_probe") on the eval splits.

    feats: Features of "train", "valid" and (with run_on_test) "test"; splits: the ones to
    score (default: valid, plus test when cfg.run_on_test). The linear probe selects its
    hyperparameter on "valid". k and the probe batch size are lowered to the train size if
    needed (the row's hyperparameters say so). Returns result rows {task, mode, split,
    metric, value, primary, hyperparameters}.
    """
    num_classes, kind = task_info(cfg)
    splits = eval_splits(cfg) if splits is None else tuple(splits)
    missing = [s for s in ("train", *splits) if s not in feats]
    if missing:
        raise ValueError(f"task {cfg.name!r}: features of splits {missing} are missing")
    train = feats["train"]
    n_train = len(train.features)
    rows = []
    rep = {"patch_size": int(cfg.patch_size), "representation": cfg.representation,
           "pooling": cfg.pooling}
    if mode == "knn":
        if kind in DENSE:
            raise ValueError(f"task {cfg.name!r}: kNN does not apply to {kind}")
        k, tau = min(int(cfg.knn.k), n_train), float(cfg.knn.tau)
        hyper = {**rep, "k": k, "tau": tau}
        if k < int(cfg.knn.k):
            hyper["note"] = f"k lowered from {int(cfg.knn.k)} to the {n_train} train samples"
        for split in splits:
            res = knn.knn_evaluate(train.features, train.labels, feats[split].features,
                                   feats[split].labels, num_classes=num_classes, k=k, tau=tau)
            rows.append(_row(cfg, mode, split, PRIMARY[kind], res.accuracy, hyper,
                             primary=True))
            if split == "test":
                rows += _bootstrap_rows(cfg, mode, res.predictions, feats[split].labels, hyper)
        return rows
    if mode != "linear_probe":
        raise ValueError(f"evaluate_features: mode must be 'knn' or 'linear_probe', got {mode!r}")
    config = probe_config_from(cfg, num_classes, kind)
    note = None
    if config.recipe == "reference_adamw" and config.batch_size > n_train:
        note = f"probe batch size lowered from {config.batch_size} to {n_train}"
        config = dataclasses.replace(config, batch_size=n_train)
    valid = feats["valid"]
    fit = linear_probe.fit_linear_probe(train.features, train.labels, valid.features,
                                        valid.labels, config=config, progress=progress)
    hyper = {**rep, **fit.hyperparameters(),
             config.grid_name + "s": [float(f"{x:.6g}") for x in fit.grid]}
    if note:
        hyper["note"] = note
    primary = config.primary
    for split in splits:
        preds = fit.predict(feats[split].features)
        labels = feats[split].labels
        scores = linear_probe.score_predictions(preds, labels, config)
        rows += [_row(cfg, mode, split, metric, value, hyper, primary=metric == primary)
                 for metric, value in scores.items() if metric != "primary"]
        if split == "test":
            rows += _bootstrap_rows(cfg, mode, preds, labels, hyper)
    return rows


def finetune_config_from(cfg):
    from spacenit_jax.eval.finetune import FinetuneConfig

    num_classes, task = task_info(cfg)
    f = cfg.finetune
    return FinetuneConfig(
        task=task, num_classes=num_classes,
        lr=float(f.lr), epochs=int(f.epochs), batch_size=int(f.batch_size),
        eval_batch_size=int(f.eval_batch_size), weight_decay=float(f.weight_decay),
        freeze_fraction=float(f.freeze_fraction),
        unfreeze_lr_factor=float(f.unfreeze_lr_factor), plateau_factor=float(f.plateau_factor),
        plateau_patience=int(f.plateau_patience), plateau_cooldown=int(f.plateau_cooldown),
        seed=int(f.seed), representation=cfg.representation, pooling=cfg.pooling,
        patch_size=int(cfg.patch_size), use_months=bool(cfg.use_months), gsd=cfg.get("gsd"))


def evaluate_finetune(cfg, model, data: dict, *, checkpoint_dir=None, devices=None,
                      progress: bool | None = None) -> list[dict]:
    """Fine-tune on data["train"], select on data["valid"], score valid (and test)."""
    from spacenit_jax.eval.finetune import finetune
    from spacenit_jax.eval.finetune import score as finetune_score

    config = finetune_config_from(cfg)
    data = {k: v if isinstance(v, feat.ArraySplit) else feat.ArraySplit.from_dataset(v)
            for k, v in data.items()}
    if data["train"].extra:
        raise ValueError(f"task {cfg.name!r}: fine-tuning takes one sensor, the dataset feeds "
                         f"{[data['train'].sensor, *data['train'].extra]}; set "
                         "dataset.inputs to one input")
    start = time.perf_counter()
    result = finetune(model, data["train"], data["valid"], config=config,
                      checkpoint_dir=checkpoint_dir, devices=devices, progress=progress)
    hyper = {"patch_size": config.patch_size, "representation": config.representation,
             "pooling": config.pooling, "lr": config.lr, "epochs": config.epochs,
             "batch_size": config.batch_size, "best_epoch": result.best_epoch,
             "seconds": round(time.perf_counter() - start, 3)}
    primary = "exact_match" if config.task == "multilabel" else PRIMARY[config.task]
    rows = []
    for split in eval_splits(cfg):
        if split == "valid":
            scores = result.best_val
        else:
            preds = result.predict(data[split])
            scores = finetune_score(preds, data[split].labels, config.task,
                                    config.num_classes)
        rows += [_row(cfg, "finetune", split, metric, value, hyper, primary=metric == primary)
                 for metric, value in scores.items() if metric != "primary"]
        if split == "test":
            rows += _bootstrap_rows(cfg, "finetune", preds, data[split].labels, hyper)
    return rows


def format_table(rows: list[dict]) -> str:
    """Aligned text table: task, mode, split, metric, value, hyperparameters."""
    header = ("task", "mode", "split", "metric", "value", "hyperparameters")
    body = [(r["task"], r["mode"], r["split"], r["metric"] + (" *" if r.get("primary") else ""),
             f"{r['value']:.4f}",
             " ".join(f"{k}={v}" for k, v in r["hyperparameters"].items()
                      if k not in ("lrs", "Cs", "alphas", "note")))
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *body)]
    notes = sorted({r["hyperparameters"]["note"] for r in rows
                    if r["hyperparameters"].get("note")})
    return "\n".join(lines + ["(* = primary metric)"] + [f"note: {n}" for n in notes])
