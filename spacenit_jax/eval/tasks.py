"""Evaluation tasks: the task config, its datasets, and running a mode (CLI and in-loop hook).

A task config is an ml_collections ConfigDict (see `configs/eval/m_eurosat.py`, built on
`base_config()`); its defaults are the reference's DownstreamTaskConfig (spec §9.8):

    name                  task name used in result rows and metric keys
    dataset.kind          "geobench" (GeoBench v1 classification) | "synthetic" (built in)
                          | "synthetic_segmentation" (built in, per-pixel labels)
    dataset.*             geobench: name, root (None: $GEOBENCH_DIR), partition, norm
                          ("pretrained" = the pretraining stats of the sensor, or a dataset
                          NormMethod), fix_band_labels, train/valid/test_split;
                          synthetic: num_classes, image_size, seed, noise, *_size;
                          synthetic_segmentation: the same plus block (tile side)
    mode                  "knn" | "linear_probe" | "finetune" (segmentation: no knn, and
                          pooling "spatial")
    patch_size, representation, pooling, use_months, gsd, embedding_batch_size
    run_on_test           also score the test split
    every_n_steps         in-loop evaluation interval (the hook only)
    knn.{k, tau}; probe.{lrs, epochs, batch_size, eval_interval, seed}; finetune.{...}
    n_bootstrap, bootstrap_seed

Also here: loading a config file (`path.py` or `path.py:arg`) and applying command-line
overrides ("patch_size=8", "knn.k=10"), with unknown fields and ill-typed values as errors.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import time

import numpy as np
from ml_collections import config_dict

from spacenit_jax.eval import bootstrap, geobench, knn, linear_probe, metrics
from spacenit_jax.eval import features as feat
from spacenit_jax.eval.synthetic import SyntheticClassification, SyntheticSegmentation

MODES = ("knn", "linear_probe", "finetune")
SPLITS = ("train", "valid", "test")
DATASET_KINDS = ("geobench", "synthetic", "synthetic_segmentation")
PRIMARY = {"classification": "accuracy", "multilabel": "micro_f1", "segmentation": "miou"}

# --------------------------------------------------------------------------- configs


def geobench_dataset(name: str = "m-eurosat", root: str | None = None) -> config_dict.ConfigDict:
    return config_dict.ConfigDict({
        "kind": "geobench", "name": name,
        "root": config_dict.placeholder(str) if root is None else root,
        "partition": "default", "norm": "pretrained", "fix_band_labels": False,
        "train_split": "train", "valid_split": "valid", "test_split": "test",
    })


def synthetic_dataset(**overrides) -> config_dict.ConfigDict:
    return _synthetic({"kind": "synthetic"}, overrides)


def synthetic_segmentation_dataset(**overrides) -> config_dict.ConfigDict:
    return _synthetic({"kind": "synthetic_segmentation", "num_classes": 4, "block": 8},
                      overrides)


def _synthetic(fields: dict, overrides: dict) -> config_dict.ConfigDict:
    cfg = {"num_classes": 10, "image_size": 32, "seed": 0, "noise": 0.05,
           "train_size": 300, "valid_size": 100, "test_size": 100, **fields}
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown synthetic dataset fields {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides)
    return config_dict.ConfigDict(cfg)


def base_config(name: str, dataset: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """A task with the reference's defaults (spec §9.8); callers lock it when done."""
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
        "probe": {"lrs": tuple(linear_probe.DEFAULT_LRS), "epochs": 50, "batch_size": 32,
                  "eval_interval": config_dict.placeholder(int), "seed": 0},
        "finetune": {"lr": 1e-4, "epochs": 50, "batch_size": 32, "eval_batch_size": 128,
                     "seed": 42, "weight_decay": 0.01, "freeze_fraction": 0.2,
                     "unfreeze_lr_factor": 0.1, "plateau_factor": 0.2, "plateau_patience": 2,
                     "plateau_cooldown": 10, "checkpoint_dir": config_dict.placeholder(str)},
        "n_bootstrap": 0,
        "bootstrap_seed": 42,
    })


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
    if cfg.dataset.kind == "synthetic_segmentation":
        if cfg.mode == "knn":
            raise ValueError(f"task {cfg.name!r}: kNN classifies whole images; a segmentation "
                             "task needs mode 'linear_probe' or 'finetune'")
        if cfg.pooling != "spatial":
            raise ValueError(f"task {cfg.name!r}: a segmentation task needs pooling "
                             f"'spatial' (one feature per patch position), got {cfg.pooling!r}")
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


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse_value(text: str, current, kind, field: str):
    if kind is bool or isinstance(current, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"--config.{field}: expected true/false, got {text!r}")
    if kind is None and current is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    kind = kind or type(current)
    try:
        if kind in (int, float):
            value = ast.literal_eval(text)
            if isinstance(value, bool) or not isinstance(value, int | float) or (
                    kind is int and not isinstance(value, int)):
                raise ValueError
            return kind(value)
        if kind in (tuple, list):
            value = ast.literal_eval(text)
            return kind(value if isinstance(value, tuple | list) else (value,))
    except (ValueError, SyntaxError):
        raise ValueError(f"--config.{field}: expected {kind.__name__}, got {text!r}") from None
    if kind is str:
        return text
    raise ValueError(f"--config.{field}: cannot set a field of type {kind.__name__}")


def apply_overrides(cfg: config_dict.ConfigDict, overrides) -> config_dict.ConfigDict:
    """Apply "a.b=value" overrides; unknown fields and sections are errors (names listed)."""
    for item in overrides:
        field, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"config override {item!r} must look like field=value")
        *parents, leaf = field.split(".")
        node = cfg
        for i, name in enumerate(parents):
            if name not in node or not isinstance(node[name], config_dict.ConfigDict):
                where = ".".join(parents[:i]) or "the config"
                raise ValueError(f"--config.{field}: {where} has no section {name!r}; "
                                 f"known: {sorted(node.keys())}")
            node = node[name]
        if leaf not in node:
            where = ".".join(parents) or "the config"
            raise ValueError(f"--config.{field}: unknown field {leaf!r} in {where}; known: "
                             f"{sorted(node.keys())}")
        if isinstance(node[leaf], config_dict.ConfigDict):
            raise ValueError(f"--config.{field} is a section, set one of its fields "
                             f"{sorted(node[leaf].keys())}")
        kind = node.get_ref(leaf).get_type() if node[leaf] is None else None
        value = _parse_value(text, node[leaf], kind, field)
        node[leaf] = value  # a locked ConfigDict still takes existing fields
    return as_task_config(cfg)


# --------------------------------------------------------------------------- datasets


def task_info(cfg) -> tuple[int, str]:
    """(num_classes, "classification" | "multilabel" | "segmentation") of a task's dataset."""
    ds = cfg.dataset
    if ds.kind == "synthetic":
        return int(ds.num_classes), "classification"
    if ds.kind == "synthetic_segmentation":
        return int(ds.num_classes), "segmentation"
    task = geobench.get_task(ds.name)
    return task.num_classes, "multilabel" if task.multilabel else "classification"


def task_sensor(cfg) -> str:
    """The sensor whose images the task's dataset holds."""
    if cfg.dataset.kind.startswith("synthetic"):
        return SyntheticClassification.sensor
    return geobench.get_task(cfg.dataset.name).sensor


def load_split(cfg, split: str):
    """The task's dataset for split "train" | "valid" | "test" (lazy; EvalSamples).

    Raises FileNotFoundError when a GeoBench dataset is not there ($GEOBENCH_DIR unset or
    wrong, missing partition or sample files).
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
        return geobench.GeoBenchClassification(ds.root, ds.name, ds[f"{split}_split"],
                                               partition=ds.partition, norm=ds.norm,
                                               fix_band_labels=bool(ds.fix_band_labels))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"task {cfg.name!r}, split {split!r}: {err} (set $GEOBENCH_DIR "
                                "or dataset.root to the directory holding "
                                f"{geobench.BENCHMARK_DIR}/)") from err


def eval_splits(cfg) -> tuple[str, ...]:
    return ("valid", "test") if cfg.get("run_on_test", False) else ("valid",)


# --------------------------------------------------------------------------- modes


def _row(cfg, mode, split, metric, value, hyper, primary=False) -> dict:
    return {"task": cfg.name, "mode": mode, "split": split, "metric": metric,
            "value": float(value), "primary": primary, "hyperparameters": hyper}


def _bootstrap_rows(cfg, mode, preds, labels, hyper) -> list[dict]:
    n = int(cfg.get("n_bootstrap", 0))
    if n <= 0:
        return []
    seed = int(cfg.get("bootstrap_seed", 42))
    if labels.ndim == 3:  # segmentation maps: resample per-sample confusion matrices
        cms = metrics.per_sample_confusion(preds, labels, task_info(cfg)[0])
        stats = bootstrap.bootstrap_miou(cms, n, seed).as_dict()
    else:
        fn = bootstrap.bootstrap_micro_f1 if labels.ndim == 2 else bootstrap.bootstrap_accuracy
        stats = fn(preds, labels, n, seed).as_dict()
    return [_row(cfg, mode, "test", k, v, hyper) for k, v in stats.items()
            if np.ndim(v) == 0]


def evaluate_features(cfg, mode: str, feats: dict[str, feat.Features], *,
                      splits: tuple[str, ...] | None = None) -> list[dict]:
    """Score a frozen-feature mode ("knn" | "linear_probe") on the eval splits.

    feats: Features of "train", "valid" and (with run_on_test) "test"; splits: the ones to
    score (default: valid, plus test when cfg.run_on_test). The linear probe selects its
    learning rate on "valid". Returns result rows {task, mode, split, metric, value, primary,
    hyperparameters}.
    """
    num_classes, task = task_info(cfg)
    splits = eval_splits(cfg) if splits is None else tuple(splits)
    missing = [s for s in ("train", *splits) if s not in feats]
    if missing:
        raise ValueError(f"task {cfg.name!r}: features of splits {missing} are missing")
    train = feats["train"]
    rows = []
    rep = {"patch_size": int(cfg.patch_size), "representation": cfg.representation,
           "pooling": cfg.pooling}
    if mode == "knn":
        if task == "segmentation":
            raise ValueError(f"task {cfg.name!r}: kNN does not apply to segmentation")
        k, tau = int(cfg.knn.k), float(cfg.knn.tau)
        hyper = {**rep, "k": k, "tau": tau}
        for split in splits:
            res = knn.knn_evaluate(train.features, train.labels, feats[split].features,
                                   feats[split].labels, num_classes=num_classes, k=k, tau=tau)
            rows.append(_row(cfg, mode, split, PRIMARY[task], res.accuracy, hyper,
                             primary=True))
            if split == "test":
                rows += _bootstrap_rows(cfg, mode, res.predictions, feats[split].labels, hyper)
        return rows
    if mode != "linear_probe":
        raise ValueError(f"evaluate_features: mode must be 'knn' or 'linear_probe', got {mode!r}")
    p = cfg.probe
    config = linear_probe.ProbeConfig(
        task=task, num_classes=num_classes,
        epochs=int(p.epochs), batch_size=int(p.batch_size),
        eval_interval=None if p.eval_interval is None else int(p.eval_interval),
        seed=int(p.seed))
    valid = feats["valid"]
    fit = linear_probe.fit_linear_probe(train.features, train.labels, valid.features,
                                        valid.labels, config=config, lrs=tuple(p.lrs))
    hyper = {**rep, "lr": float(f"{fit.best_lr:.6g}"), "epochs": config.epochs,
             "batch_size": config.batch_size, "lrs": [float(f"{x:.6g}") for x in fit.lrs]}
    primary = PRIMARY[task]
    for split in splits:
        preds = fit.predict(feats[split].features)
        scores = linear_probe.score_predictions(preds, feats[split].labels, config)
        rows += [_row(cfg, mode, split, metric, value, hyper, primary=metric == primary)
                 for metric, value in scores.items() if metric != "primary"]
        if split == "test":
            rows += _bootstrap_rows(cfg, mode, preds, feats[split].labels, hyper)
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


def evaluate_finetune(cfg, model, data: dict, *, checkpoint_dir=None, devices=None
                      ) -> list[dict]:
    """Fine-tune on data["train"], select on data["valid"], score valid (and test)."""
    from spacenit_jax.eval.finetune import finetune
    from spacenit_jax.eval.finetune import score as finetune_score

    config = finetune_config_from(cfg)
    data = {k: v if isinstance(v, feat.ArraySplit) else feat.ArraySplit.from_dataset(v)
            for k, v in data.items()}
    start = time.perf_counter()
    result = finetune(model, data["train"], data["valid"], config=config,
                      checkpoint_dir=checkpoint_dir, devices=devices)
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
             " ".join(f"{k}={v}" for k, v in r["hyperparameters"].items() if k != "lrs"))
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *body)]
    return "\n".join(lines + ["(* = primary metric)"])
