"""Run one task, or every task of a benchmark suite found under a data root, on a model.

`run_task(cfg, model)` reads the task's splits, fits tiny splits (`tasks.adapt_to_sizes`),
extracts features (or fine-tunes) and scores; it returns the result rows and the notes of
what the readers dropped, imputed or adapted. `run_suite(model, "geobench" | "geobench2",
data_root)` does that for every task of the suite whose data is present (GeoBench's
released layout `<root>/classification_v1.0/<task>/`, `<root>/segmentation_v1.0/<task>/`;
GEO-Bench-2 `<root>/<task>/*.tortilla`), lists absent tasks as missing and a task that
fails as an error (one line) without stopping the others, and `format_suite_table` prints
one line per task: metric, score, bootstrap interval (2.5 - 97.5 percentiles of
n_bootstrap resamples of the test predictions), the recipe that produced the score.
Settings (configs/eval/suite.py) override every task's own config where set.
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Mapping, Sequence

import numpy as np
from ml_collections import config_dict

from spacenit_jax.eval import features as feat
from spacenit_jax.eval import geobench, geobench2
from spacenit_jax.eval import tasks as tasks_lib

log = logging.getLogger(__name__)

SUITES: dict[str, tuple[str, ...]] = {
    "geobench": tuple(geobench.TASKS),
    "geobench2": tuple(geobench2.TASKS),
}


def config_name(task: str) -> str:
    """configs/eval/<name>.py of a benchmark task ("m-SA-crop-type" -> "m_sa_crop_type")."""
    return task.lower().replace("-", "_")


def task_present(suite: str, task: str, data_root) -> bool:
    if suite == "geobench":
        return geobench.find_task_dir(data_root, task)[0] is not None
    return bool(geobench2.task_files(data_root, task))


def split_suite(suite: str, data_root, only: Sequence[str] | None = None
                ) -> tuple[list[str], list[str]]:
    """(tasks present under data_root, tasks missing) of a suite, optionally restricted."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {sorted(SUITES)}")
    if not pathlib.Path(data_root).is_dir():
        raise FileNotFoundError(f"--data-root {data_root} is not a directory")
    names = list(SUITES[suite])
    if only:
        lookup = {n.lower(): n for n in names}
        unknown = [t for t in only if t.lower() not in lookup]
        if unknown:
            raise ValueError(f"tasks {unknown} are not in suite {suite!r}: {names}")
        names = [lookup[t.lower()] for t in only]
    present = [t for t in names if task_present(suite, t, data_root)]
    return present, [t for t in names if t not in present]


def _leaves(cfg: config_dict.ConfigDict, prefix: str = ""):
    for key in cfg.keys():
        value = cfg[key]
        if isinstance(value, config_dict.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def apply_settings(cfg: config_dict.ConfigDict, settings: config_dict.ConfigDict | None
                   ) -> list[str]:
    """Set every non-None leaf of `settings` that `cfg` has (in place); the paths set."""
    done = []
    for path, value in _leaves(settings) if settings is not None else ():
        if value is None or path == "tasks":
            continue
        *parents, leaf = path.split(".")
        node = cfg
        for p in parents:
            node = node.get(p) if isinstance(node, config_dict.ConfigDict) else None
        if isinstance(node, config_dict.ConfigDict) and leaf in node:
            node[leaf] = value
            done.append(path)
    return done


def run_task(cfg, model, *, model_sensors: Sequence[str] | None = None,
             checkpoint_dir=None, save_features=None, progress: bool | None = None) -> dict:
    """Evaluate one task config on a model (see the module docstring).

    Returns {"rows", "notes", "num_samples", "mode", "seconds"}. save_features: a folder
    to write `<task>/<split>.npz` (features, labels; what `launch.evaluate --features`
    reads). checkpoint_dir: fine-tuning checkpoints (resumable).
    """
    start = time.perf_counter()
    if model_sensors is None:
        model_sensors = feat.model_config_of(model).sensor_labels
    needed = tasks_lib.task_sensors(cfg, model_sensors)
    lacking = [s for s in needed if s not in model_sensors]
    if lacking:
        raise ValueError(f"task {cfg.name!r} needs sensor(s) {lacking}; the model has "
                         f"{list(model_sensors)}")
    splits = ("train", "valid", "test") if cfg.run_on_test else ("train", "valid")
    data = {s: tasks_lib.load_split(cfg, s, model_sensors) for s in splits}
    sizes = {s: len(d) for s, d in data.items()}
    empty = [s for s, n in sizes.items() if n == 0]
    if empty:
        raise ValueError(f"task {cfg.name!r}: splits {empty} have no samples")
    notes = tasks_lib.dataset_notes(*data.values()) + tasks_lib.adapt_to_sizes(cfg, sizes)
    if cfg.mode == "finetune":
        ckpt = checkpoint_dir or cfg.finetune.get("checkpoint_dir")
        rows = tasks_lib.evaluate_finetune(cfg, model, data, checkpoint_dir=ckpt,
                                           progress=progress)
    else:
        extractor = feat.FeatureExtractor(model, feat.feature_config_from(cfg))
        feats = {s: extractor.extract(d, split=s, progress=progress) for s, d in data.items()}
        if save_features is not None:
            save_npz(save_features, cfg.name, feats)
        rows = tasks_lib.evaluate_features(cfg, cfg.mode, feats, progress=progress)
    return {"rows": rows, "notes": notes, "num_samples": sizes, "mode": cfg.mode,
            "seconds": round(time.perf_counter() - start, 3)}


def save_npz(folder, task: str, feats: Mapping[str, feat.Features]) -> list[pathlib.Path]:
    """Write <folder>/<task>/<split>.npz with `features` and `labels` (float32 features)."""
    out = pathlib.Path(folder) / task
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, f in feats.items():
        path = out / f"{split}.npz"
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, features=np.asarray(f.features, np.float32), labels=np.asarray(f.labels))
        tmp.replace(path)  # no half-written file under the final name
        paths.append(path)
    return paths


def load_task(suite: str, task: str, data_root, settings=None, mode: str | None = None):
    """The task's config (configs/eval/<task>.py) for a suite run: data root, settings and
    mode applied; None with a reason when the mode does not apply to the task."""
    cfg = tasks_lib.load_config_file(config_name(task))
    cfg.dataset.root = str(data_root)
    apply_settings(cfg, settings)
    if mode:
        _, kind = tasks_lib.task_info(cfg)
        if mode == "knn" and kind in tasks_lib.DENSE:
            return None, f"kNN does not apply to a {kind} task"
        if mode == "finetune" and kind == "regression":
            return None, "fine-tuning has no regression head"
        cfg.mode = mode
    return tasks_lib.as_task_config(cfg), None


def primary_result(rows: list[dict], run_on_test: bool) -> dict:
    """{split, metric, score, ci_lower, ci_upper, recipe} of a task's headline number."""
    split = "test" if run_on_test else "valid"
    main = next((r for r in rows if r["primary"] and r["split"] == split), None)
    if main is None:
        return {}
    ci = {r["metric"]: r["value"] for r in rows if r["split"] == "test"
          and r["metric"].startswith("bootstrap_")}
    hyper = main["hyperparameters"]
    recipe = hyper.get("recipe") or main["mode"]
    return {"split": split, "metric": main["metric"], "score": main["value"],
            "ci_lower": ci.get("bootstrap_ci_lower") if split == "test" else None,
            "ci_upper": ci.get("bootstrap_ci_upper") if split == "test" else None,
            "recipe": recipe}


def run_suite(model, suite: str, data_root, *, settings=None, mode: str | None = None,
              save_features=None, checkpoint_dir=None, progress: bool | None = None,
              echo=None) -> dict:
    """Every task of `suite` present under `data_root` (module docstring). echo: called with
    a line per task as it finishes (e.g. print)."""
    only = settings.get("tasks") if settings is not None else None
    present, missing = split_suite(suite, data_root, only)
    sensors = feat.model_config_of(model).sensor_labels
    results = []
    for task in present:
        entry = {"task": task}
        try:
            cfg, skip = load_task(suite, task, data_root, settings, mode)
            if skip:
                entry.update(status="skipped", error=skip)
            else:
                ft_dir = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir) / task
                run = run_task(cfg, model, model_sensors=sensors, checkpoint_dir=ft_dir,
                               save_features=save_features, progress=progress)
                entry.update(status="ok", kind=tasks_lib.task_info(cfg)[1], **run,
                             **primary_result(run["rows"], bool(cfg.run_on_test)))
        except (FileNotFoundError, KeyError, ValueError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            entry.update(status="error", error=msg)
            log.warning("suite %s: task %s failed: %s", suite, task, msg)
        results.append(entry)
        if echo is not None:
            echo(_task_line(entry))
    return {"suite": suite, "data_root": str(data_root), "tasks": results,
            "missing": missing}


def _fmt(x, digits=4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _task_line(entry: dict) -> str:
    if entry["status"] != "ok":
        return f"{entry['task']}: {entry['status']}: {entry.get('error', '')}"
    return (f"{entry['task']}: {entry['metric']} {_fmt(entry['score'])} "
            f"[{_fmt(entry['ci_lower'])}, {_fmt(entry['ci_upper'])}] ({entry['recipe']}, "
            f"{entry['seconds']:.1f} s)")


def format_suite_table(result: dict) -> str:
    """One line per task (task, kind, mode, split, metric, score, 95% interval, samples,
    recipe), then the missing tasks, the errors and every note."""
    header = ("task", "kind", "mode", "split", "metric", "score", "95% interval",
              "train/valid/test", "recipe")
    body = []
    for e in result["tasks"]:
        if e["status"] != "ok":
            continue
        n = e["num_samples"]
        interval = ("" if e.get("ci_lower") is None
                    else f"[{_fmt(e['ci_lower'])}, {_fmt(e['ci_upper'])}]")
        body.append((e["task"], e["kind"], e["mode"], e.get("split", ""), e.get("metric", ""),
                     _fmt(e.get("score")), interval,
                     "/".join(str(n.get(s, "-")) for s in ("train", "valid", "test")),
                     e.get("recipe", "")))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = [f"suite {result['suite']} on {result['data_root']}"]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
              for row in (header, *body)]
    if result["missing"]:
        lines.append(f"missing ({len(result['missing'])}): {', '.join(result['missing'])}")
    for e in result["tasks"]:
        if e["status"] in ("error", "skipped"):
            lines.append(f"{e['status']}: {e['task']}: {e['error']}")
    notes = [n for e in result["tasks"] for n in e.get("notes", ())]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
