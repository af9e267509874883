r"""Evaluate a checkpoint on one task or a whole benchmark suite, or score saved embeddings.

One task (a checkpoint, a task config; prints a results table, --out writes JSON):

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_eurosat.py \
        [--mode knn|linear_probe|finetune] [--step N] [--out results.json] \
        [--save-features DIR] [--config.dataset.root=/data/geobench --config.knn.k=10 ...]

A suite (every task of GeoBench v1 or GEO-Bench-2 present under --data-root; one line per
task: metric, score, bootstrap interval; absent tasks listed as missing; JSON to --out, by
default <workdir>/eval/<suite>.json):

    python -m launch.evaluate --checkpoint WORKDIR --suite geobench --data-root DIR \
        [--mode knn|linear_probe|finetune] [--config.dataset.partition=0.10x_train ...]

Saved embeddings (prints one JSON object):

    python -m launch.evaluate --features TRAIN.npz --eval-features TEST.npz --mode knn
    python -m launch.evaluate --features TRAIN.npz --eval-features TEST.npz \
        --mode linear_probe [--val-features VAL.npz] [--recipe lbfgs|ridge|reference_adamw]

Configs are ml-collections files: `--config` takes "path.py", "path.py:arg" or a bare name
of configs/eval/ ("m_eurosat", "synthetic:small"); `--config.<field>=<value>` overrides a
field (unknown fields and ill-typed values are errors). In suite mode `--config` defaults to
configs/eval/suite.py, whose fields (unset = each task's own) apply to every task. --mode
overrides the config's mode. Fine-tuning checkpoints each epoch under
`finetune.checkpoint_dir` (default WORKDIR/eval/<task>/finetune_lr<lr>) and resumes there.

--save-features DIR writes DIR/<task>/<split>.npz (`features`, `labels`), the format that
--features reads. Each .npz holds `features` (N, D), or (N, T, D) patch tokens of a dense
task, and `labels`: (N,) integer classes, (N, C) multi-hot (multilabel), (N, H, W) integer
maps (segmentation, -1 = ignore) or float targets (regression: (N, K), (N, H, W[, K])).
The inputs are checked first (eval/validation.py: finite values, consistent shapes, labels
in range; one error line naming the file, split and rows). kNN uses the train features as
its database and scores the eval features. The linear probe selects its hyperparameter
(C, alpha or lr by recipe: --cs, --alphas, --lrs; default the recipe's grid; without
--recipe, a grid flag chooses its recipe) on validation data: the --val-features file when
given, otherwise --val-fraction of the train rows, drawn with numpy's default_rng(--seed)
and not trained on. `accuracy` (classification, multilabel: micro-F1) or `score` is the
primary score on --eval-features. Feature extraction, probes and fine-tuning show progress
bars with ETA on stderr when it is a terminal (--progress / --noprogress force them).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from types import SimpleNamespace

import numpy as np

SUITES = ("geobench", "geobench2")


# --------------------------------------------------------------------------- flags


def _resolve_config_arg(argv: list[str], suite: bool) -> list[str]:
    """Resolve the --config value (bare names, paths relative to the repository) in argv;
    in suite mode without --config, use configs/eval/suite.py."""
    from spacenit_jax import cli
    from spacenit_jax.eval import tasks

    out, found = [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
        if value is None:
            out.append(arg)
        else:
            path, sep, extra = value.partition(":")
            try:
                resolved = tasks.resolve_config_path(path)
            except FileNotFoundError as err:
                raise cli.UsageError(f"--config: {err}") from None
            out.append(f"--config={resolved}{sep}{extra}")
            found = True
        i += 1
    if suite and not found:
        out.insert(0, f"--config={tasks.resolve_config_path('suite')}")
    return out


def parse_flags(argv: list[str]):
    """absl flags into a private FlagValues (so main() can run many times in one process),
    parsed by `spacenit_jax.cli.parse`: every mistake is one UsageError line."""
    from absl import flags
    from ml_collections import config_flags

    from spacenit_jax import cli
    from spacenit_jax.eval import tasks

    suite = any(a == "--suite" or a.startswith("--suite=") for a in argv)
    given = any(a == "--config" or a.startswith("--config=") for a in argv)
    argv = ["evaluate", *_resolve_config_arg(list(argv), suite)]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "task config (path.py[:arg] or a bare "
                                    "name of configs/eval); --config.<field>=<value> "
                                    "overrides a field", flag_values=fv, lock_config=True)
    d = {"flag_values": fv}
    flags.DEFINE_string("checkpoint", None, "pretraining workdir, checkpoint or export", **d)
    flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", **d)
    flags.DEFINE_enum("suite", None, SUITES, "run every task of this suite found under "
                      "--data-root", **d)
    flags.DEFINE_string("data-root", None, "benchmark root for --suite", **d)
    flags.DEFINE_enum("mode", None, ("knn", "linear_probe", "finetune"),
                      "default: the config's mode (knn with --features)", **d)
    flags.DEFINE_string("out", None, "also write the JSON result to this file", **d)
    flags.DEFINE_string("save-features", None, "write <dir>/<task>/<split>.npz", **d)
    flags.DEFINE_string("features", None, "train embeddings .npz (features, labels)", **d)
    flags.DEFINE_string("eval-features", None, "embeddings .npz to score", **d)
    flags.DEFINE_string("val-features", None, "validation .npz for probe selection", **d)
    flags.DEFINE_integer("num-classes", None, "default: from the labels", **d)
    flags.DEFINE_integer("k", 20, "kNN neighbours", **d)
    flags.DEFINE_float("tau", 0.07, "kNN temperature", **d)
    flags.DEFINE_enum("recipe", None, ("lbfgs", "ridge", "reference_adamw"),
                      "probe recipe (default: lbfgs, ridge for regression)", **d)
    flags.DEFINE_list("cs", None, "lbfgs inverse L2 strengths, comma-separated", **d)
    flags.DEFINE_list("alphas", None, "ridge L2 strengths, comma-separated", **d)
    flags.DEFINE_list("lrs", None, "reference_adamw learning rates, comma-separated", **d)
    flags.DEFINE_integer("max-iter", 1000, "lbfgs iterations at most", **d)
    flags.DEFINE_integer("epochs", 50, "reference_adamw epochs", **d)
    flags.DEFINE_integer("batch-size", 32, "reference_adamw batch size", **d)
    flags.DEFINE_integer("eval-interval", None, "reference_adamw epochs per chunk", **d)
    flags.DEFINE_float("val-fraction", 0.2, "train rows held out for validation", **d)
    flags.DEFINE_integer("seed", 0, "probe seed and validation draw", **d)
    flags.DEFINE_integer("n-bootstrap", 0, "bootstrap resamples of the test predictions", **d)
    flags.DEFINE_integer("bootstrap-seed", 42, "bootstrap seed", **d)
    flags.DEFINE_boolean("progress", None, "progress bars with ETA on stderr (feature "
                         "extraction, probes, fine-tuning); default: when stderr is a "
                         "terminal; --progress / --noprogress force them on / off", **d)
    # the suite settings double as the (unused) config of the other modes when none is given
    rest = cli.parse(argv, fv, configs={"config": str(tasks.resolve_config_path("suite"))})
    if len(rest) > 1:
        raise cli.UsageError(f"unexpected arguments {rest[1:]} (list flags take "
                             "comma-separated values, e.g. --lrs=1e-3,1e-2)")
    names = [f for f in fv if not f.startswith("config")] + ["config"]
    args = SimpleNamespace(**{n.replace("-", "_"): fv[n].value for n in names})
    args.config_given = given
    args.config_overrides = config_flags.get_override_values(fv["config"])
    return args


# --------------------------------------------------------------------------- features mode


def load_npz(path: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    file = pathlib.Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{what} file {file} does not exist")
    with np.load(file) as data:
        missing = [k for k in ("features", "labels") if k not in data.files]
        if missing:
            raise KeyError(f"{file}: missing array(s) {missing}; expected 'features' (N, D) and "
                           f"'labels' (N,) (found {data.files})")
        x, y = np.asarray(data["features"]), np.asarray(data["labels"])
    if x.ndim not in (2, 3):
        raise ValueError(f"{file}: 'features' must be (N, D) or (N, T, D) patch tokens, got "
                         f"shape {x.shape}")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(f"{file}: 'labels' must have N={x.shape[0]} rows, got {y.shape}")
    if x.ndim == 2 and y.ndim not in (1, 2):
        raise ValueError(f"{file}: 'labels' must be (N,) or (N, C) with N={x.shape[0]}, got "
                         f"{y.shape}")
    if x.ndim == 2 and y.ndim == 1 and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{file}: 'labels' must be integers, got {y.dtype} (regression "
                         "targets are (N, K) floats)")
    return x.astype(np.float32), y


def infer_task(x: np.ndarray, y: np.ndarray) -> str:
    """"classification" | "multilabel" | "segmentation" | "regression" from the arrays."""
    if np.issubdtype(y.dtype, np.floating):
        if x.ndim == 2 and y.ndim == 2 and np.all(np.isin(y, (0.0, 1.0))):
            return "multilabel"
        return "regression"
    if x.ndim == 3:
        return "segmentation"
    return "multilabel" if y.ndim == 2 else "classification"


def carve_validation(x, y, fraction: float, seed: int):
    """Deterministic split of the train rows: (train_x, train_y, val_x, val_y)."""
    n = x.shape[0]
    n_val = int(round(fraction * n))
    if not 0 < n_val < n:
        raise ValueError(f"--val-fraction {fraction} leaves no train or no validation rows "
                         f"out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


def _bootstrap(preds, labels, task: str, num_classes: int, args) -> dict:
    from spacenit_jax.eval import bootstrap, metrics

    if args.n_bootstrap <= 0:
        return {}
    n, seed = args.n_bootstrap, args.bootstrap_seed
    if task == "regression":
        return bootstrap.bootstrap_rmse(preds, labels.reshape(preds.shape), n, seed).as_dict()
    if task == "segmentation":
        cms = metrics.per_sample_confusion(preds, labels, num_classes)
        return bootstrap.bootstrap_miou(cms, n, seed).as_dict()
    fn = bootstrap.bootstrap_micro_f1 if task == "multilabel" else bootstrap.bootstrap_accuracy
    return fn(preds, labels, n, seed).as_dict()


def _floats(values, flag: str):
    if values is None:
        return None
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"--{flag}: expected comma-separated numbers, got "
                         f"{','.join(values)!r}") from None


def run_features_mode(args) -> dict:
    from spacenit_jax.eval import knn, linear_probe, validation

    args.mode = args.mode or "knn"
    if args.mode == "finetune":
        raise ValueError("--mode finetune needs a model: use --checkpoint WORKDIR --config ...")
    if not args.eval_features:
        raise ValueError("--features needs --eval-features (the embeddings to score)")
    train_x, train_y = load_npz(args.features, "--features")
    eval_x, eval_y = load_npz(args.eval_features, "--eval-features")
    task = infer_task(train_x, train_y)
    if infer_task(eval_x, eval_y) != task or eval_x.ndim != train_x.ndim:
        raise ValueError(f"train ({train_x.shape}, {train_y.dtype} {train_y.shape}) and eval "
                         f"({eval_x.shape}, {eval_y.dtype} {eval_y.shape}) arrays describe "
                         "different tasks")
    dense = task == "regression" and train_x.ndim == 3
    validation.check_eval_inputs({"train": (train_x, train_y), "eval": (eval_x, eval_y)},
                                 task=task, num_classes=args.num_classes,
                                 sources={"train": args.features, "eval": args.eval_features},
                                 dense=dense)
    if task == "regression":
        num_classes = args.num_classes or (train_y.shape[-1] if train_y.ndim in (2, 4) else 1)
    elif task == "multilabel":
        num_classes = args.num_classes or train_y.shape[1]
    else:
        num_classes = args.num_classes or int(max(train_y.max(), eval_y.max())) + 1
    result = {"mode": args.mode, "task": task, "num_train": int(train_x.shape[0]),
              "num_eval": int(eval_x.shape[0]), "num_classes": num_classes,
              "multilabel": task == "multilabel"}
    start = time.perf_counter()
    if args.mode == "knn":
        if task not in ("classification", "multilabel") or train_x.ndim != 2:
            raise ValueError(f"kNN scores pooled (N, D) features of a classification task; "
                             f"these are {task} arrays (use --mode linear_probe)")
        res = knn.knn_evaluate(train_x, train_y, eval_x, eval_y, num_classes=num_classes,
                               k=args.k, tau=args.tau)
        result.update(accuracy=res.accuracy, metric="accuracy" if task == "classification"
                      else "micro_f1", score=res.accuracy, k=args.k, tau=args.tau)
        preds = res.predictions
    else:
        if args.val_features:
            val_x, val_y = load_npz(args.val_features, "--val-features")
            validation.check_eval_inputs(
                {"train": (train_x, train_y), "valid": (val_x, val_y)}, task=task,
                num_classes=args.num_classes,
                sources={"train": args.features, "valid": args.val_features})
            val_source = f"file {args.val_features}"
        else:
            train_x, train_y, val_x, val_y = carve_validation(train_x, train_y,
                                                              args.val_fraction, args.seed)
            val_source = (f"{val_x.shape[0]} train rows held out (fraction "
                          f"{args.val_fraction}, seed {args.seed})")
        grids = {"cs": _floats(args.cs, "cs"), "alphas": _floats(args.alphas, "alphas"),
                 "lrs": _floats(args.lrs, "lrs")}
        given = [k for k, v in grids.items() if v is not None]
        recipe = args.recipe
        if recipe is None and len(given) == 1:  # a grid flag names its recipe
            recipe = {"cs": "lbfgs", "alphas": "ridge", "lrs": "reference_adamw"}[given[0]]
        config = linear_probe.ProbeConfig(
            task=task, num_classes=num_classes, recipe=recipe,
            **{k: v for k, v in grids.items() if v is not None},
            max_iter=args.max_iter, epochs=args.epochs, batch_size=args.batch_size,
            eval_interval=args.eval_interval, seed=args.seed)
        wrong = [k for k in given if k != {"C": "cs", "alpha": "alphas", "lr": "lrs"}[
            config.grid_name]]
        if wrong:
            raise ValueError(f"--{wrong[0]} does not apply to recipe {config.recipe!r}, which "
                             f"sweeps {config.grid_name} (set --recipe)")
        fit = linear_probe.fit_linear_probe(train_x, train_y, val_x, val_y, config=config,
                                            progress=args.progress)
        preds = fit.predict(eval_x)
        scores = linear_probe.score_predictions(preds, eval_y, config)
        name = config.grid_name
        sign = -1.0 if task == "regression" else 1.0
        result.update(
            metric=config.primary, score=scores["primary"], recipe=config.recipe,
            **{name: float(f"{fit.best_value:.6g}"),
               f"val_{config.primary}": sign * float(fit.val_scores[fit.best_index]),
               f"val_{config.primary}_per_{name}": {
                   f"{v:g}": sign * float(s) for v, s in zip(fit.grid, fit.val_scores,
                                                             strict=True)}},
            validation=val_source,
            **{k: v for k, v in scores.items() if k != "primary"})
        if task in ("classification", "multilabel"):
            result["accuracy"] = scores["primary"]
        if config.recipe == "reference_adamw":
            result.update(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
        if config.recipe == "lbfgs":
            result["iterations"] = int(fit.iterations[fit.best_index])
    result["seconds"] = round(time.perf_counter() - start, 3)
    result.update(_bootstrap(preds, eval_y, task, num_classes, args))
    return result


# --------------------------------------------------------------------------- model modes


def _eval_dir(checkpoint: str) -> pathlib.Path:
    path = pathlib.Path(checkpoint)
    return (path if path.is_dir() else path.parent) / "eval"


def run_checkpoint_mode(args) -> dict:
    """Load checkpoint + task config, evaluate the task; returns the result."""
    from spacenit_jax import checkpoint
    from spacenit_jax.eval import suite, tasks

    if not args.config_given:
        raise ValueError("--checkpoint needs --config (an eval task config such as "
                         "configs/eval/m_eurosat.py) or --suite")
    cfg = tasks.as_task_config(args.config)
    if args.mode:  # checked with the rest of the config (e.g. no kNN for segmentation)
        cfg.mode = args.mode
        cfg = tasks.as_task_config(cfg)
    start = time.perf_counter()
    loaded = checkpoint.load_model(args.checkpoint, args.step)
    ckpt_dir = cfg.finetune.checkpoint_dir or str(
        _eval_dir(args.checkpoint) / cfg.name / f"finetune_lr{cfg.finetune.lr:g}")
    run = suite.run_task(cfg, loaded.model, checkpoint_dir=ckpt_dir,
                         save_features=args.save_features, progress=args.progress)
    return {"task": cfg.name, "mode": cfg.mode, "checkpoint": str(args.checkpoint),
            "step": loaded.step, "model_kind": loaded.kind,
            "num_samples": run["num_samples"], "results": run["rows"], "notes": run["notes"],
            "seconds": round(time.perf_counter() - start, 3),
            "config": json.loads(cfg.to_json())}


def run_suite_mode(args) -> dict:
    from spacenit_jax import checkpoint
    from spacenit_jax.eval import suite

    if not args.data_root:
        raise ValueError("--suite needs --data-root (the folder holding the benchmark)")
    start = time.perf_counter()
    loaded = checkpoint.load_model(args.checkpoint, args.step)
    result = suite.run_suite(
        loaded.model, args.suite, args.data_root, settings=args.config, mode=args.mode,
        save_features=args.save_features,
        checkpoint_dir=_eval_dir(args.checkpoint) / f"{args.suite}_finetune",
        progress=args.progress, echo=lambda line: print(line, file=sys.stderr))
    result.update(checkpoint=str(args.checkpoint), step=loaded.step, model_kind=loaded.kind,
                  seconds=round(time.perf_counter() - start, 3),
                  settings=json.loads(args.config.to_json()))
    return result


def _write(path, text: str) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    """The command line; every mistake is one `error:` line on stderr and exit code 2."""
    from spacenit_jax import cli

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(__doc__)
        return 0
    try:
        args = parse_flags(argv)
        if args.features:
            if args.checkpoint or args.suite or args.config_given or args.config_overrides:
                raise ValueError("--features scores saved embeddings; --checkpoint, --suite "
                                 "and --config belong to the model-based modes")
            result = run_features_mode(args)
            text = json.dumps(result)
            print(text)
            if args.out:
                _write(args.out, text + "\n")
            return 0
        if not args.checkpoint:
            raise ValueError("give --features TRAIN.npz --eval-features TEST.npz (saved "
                             "embeddings), --checkpoint CKPT --config CONFIG, or --checkpoint "
                             "CKPT --suite geobench|geobench2 --data-root DIR")
        if args.suite:
            from spacenit_jax.eval import suite

            result = run_suite_mode(args)
            print(suite.format_suite_table(result))
            out = args.out or _eval_dir(args.checkpoint) / f"{args.suite}.json"
            _write(out, json.dumps(result, indent=1, default=str) + "\n")
            print(f"results written to {out}", file=sys.stderr)
            return 1 if any(t["status"] == "error" for t in result["tasks"]) else 0
        from spacenit_jax.eval import tasks

        result = run_checkpoint_mode(args)
        print(tasks.format_table(result["results"]))
        for note in result["notes"]:
            print(f"note: {note}")
        if args.out:
            _write(args.out, json.dumps(result, indent=1) + "\n")
        return 0
    except (cli.UsageError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {cli.one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
