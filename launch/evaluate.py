"""Evaluate a checkpoint on a task, or precomputed embeddings, with kNN / probe / fine-tuning.

Model-based mode: load a pretraining workdir's checkpoint (its model config comes from the
checkpoint's run config), extract features of the task's train/valid/test splits, run the
mode, print a results table and optionally write JSON:

    python -m launch.evaluate --checkpoint WORKDIR --config configs/eval/m_eurosat.py \
        [--mode knn|linear_probe|finetune] [--step N] [--out results.json] \
        [--config.patch_size=8 --config.dataset.root=/data/geobench ...]

--mode defaults to the config's `mode`; `--config.<field>=<value>` overrides a config field
(unknown fields and ill-typed values are errors); "path.py:arg" passes an arg to
get_config (e.g. configs/eval/m_eurosat.py:synthetic). Fine-tuning checkpoints each epoch
under `finetune.checkpoint_dir` (default WORKDIR/eval/<task>/finetune_lr<lr>) and resumes
from there. The flags below other than --mode/--out/--step belong to the embeddings mode.

Precomputed-embeddings mode (prints one JSON object):

    python -m launch.evaluate --features TRAIN.npz --eval-features TEST.npz --mode knn
    python -m launch.evaluate --features TRAIN.npz --eval-features TEST.npz \
        --mode linear_probe [--val-features VAL.npz] [--lrs 1e-3 1e-2] [--epochs 50]

Each .npz holds `features` (N, D) and `labels`: (N,) integer classes, or (N, C) multi-hot for
a multilabel task. kNN uses the train features as its database and scores the eval features.
The linear probe selects its learning rate (and its best chunk) on validation data: the
--val-features file when given, otherwise a validation split of --val-fraction of the train
rows, drawn with numpy's default_rng(--seed) and not trained on. The reported `accuracy` is the
primary score on --eval-features (micro-F1 for multilabel, as in the reference).

Modes are chosen by which inputs are given (`main` dispatches): --features is the
precomputed-embeddings mode; --checkpoint (with --config) is the model-based mode.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("inputs")
    src.add_argument("--features", help="train embeddings .npz (features, labels)")
    src.add_argument("--eval-features", help="embeddings .npz to score (features, labels)")
    src.add_argument("--val-features", help="validation .npz for probe selection (optional)")
    src.add_argument("--checkpoint", help="pretraining workdir with checkpoints (model-based "
                     "mode)")
    src.add_argument("--config", help="eval task config file (path.py or path.py:arg) for the "
                     "model-based mode; override fields with --config.<field>=<value>")
    src.add_argument("--step", type=int, default=None,
                     help="checkpoint step (default: the latest)")
    p.add_argument("--mode", choices=("knn", "linear_probe", "finetune"), default=None,
                   help="default: knn, or the config's mode with --checkpoint")
    p.add_argument("--num-classes", type=int, default=None,
                   help="default: 1 + the largest label seen (or C of multi-hot labels)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--tau", type=float, default=0.07)
    p.add_argument("--lrs", type=float, nargs="+", default=None,
                   help="probe learning rates (default: the reference's 8-value sweep)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-interval", type=int, default=None,
                   help="probe epochs per chunk (fresh AdamW, val check); default = epochs")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-bootstrap", type=int, default=0)
    p.add_argument("--bootstrap-seed", type=int, default=42)
    p.add_argument("--out", help="also write the JSON result to this file")
    return p


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
    if x.ndim != 2:
        raise ValueError(f"{file}: 'features' must be (N, D), got shape {x.shape}")
    if y.shape[:1] != x.shape[:1] or y.ndim not in (1, 2):
        raise ValueError(f"{file}: 'labels' must be (N,) or (N, C) with N={x.shape[0]}, got "
                         f"{y.shape}")
    if y.ndim == 1 and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{file}: 'labels' must be integers, got {y.dtype}")
    return x.astype(np.float32), y


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


def _bootstrap(preds, labels, args) -> dict:
    from spacenit_jax.eval import bootstrap

    if args.n_bootstrap <= 0:
        return {}
    fn = bootstrap.bootstrap_micro_f1 if labels.ndim == 2 else bootstrap.bootstrap_accuracy
    return fn(preds, labels, args.n_bootstrap, args.bootstrap_seed).as_dict()


def run_features_mode(args) -> dict:
    from spacenit_jax.eval import knn, linear_probe, validation

    args.mode = args.mode or "knn"
    if args.mode == "finetune":
        raise ValueError("--mode finetune needs a model: use --checkpoint WORKDIR --config ...")
    if not args.eval_features:
        raise ValueError("--features needs --eval-features (the embeddings to score)")
    train_x, train_y = load_npz(args.features, "--features")
    eval_x, eval_y = load_npz(args.eval_features, "--eval-features")
    multilabel = train_y.ndim == 2
    task = "multilabel" if multilabel else "classification"
    validation.check_eval_inputs({"train": (train_x, train_y), "eval": (eval_x, eval_y)},
                                 task=task, num_classes=args.num_classes,
                                 sources={"train": args.features, "eval": args.eval_features})
    if eval_y.ndim != train_y.ndim:
        raise ValueError("train and eval labels disagree: one is multi-hot, the other is not")
    num_classes = args.num_classes or (train_y.shape[1] if multilabel else
                                       int(max(train_y.max(), eval_y.max())) + 1)
    result = {"mode": args.mode, "num_train": int(train_x.shape[0]),
              "num_eval": int(eval_x.shape[0]), "num_classes": num_classes,
              "multilabel": multilabel}
    start = time.perf_counter()
    if args.mode == "knn":
        res = knn.knn_evaluate(train_x, train_y, eval_x, eval_y, num_classes=num_classes,
                               k=args.k, tau=args.tau)
        result.update(accuracy=res.accuracy, k=args.k, tau=args.tau)
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
        config = linear_probe.ProbeConfig(
            task="multilabel" if multilabel else "classification", num_classes=num_classes,
            epochs=args.epochs, batch_size=args.batch_size, eval_interval=args.eval_interval,
            seed=args.seed)
        lrs = args.lrs or linear_probe.DEFAULT_LRS
        fit = linear_probe.fit_linear_probe(train_x, train_y, val_x, val_y, config=config,
                                            lrs=lrs)
        preds = fit.predict(eval_x)
        scores = linear_probe.score_predictions(preds, eval_y, config)
        result.update(
            accuracy=scores["primary"], lr=float(f"{fit.best_lr:.6g}"),
            val_accuracy=float(fit.val_scores[fit.best_index]),
            val_accuracy_per_lr={f"{lr:g}": float(s)
                                 for lr, s in zip(fit.lrs, fit.val_scores, strict=True)},
            epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
            validation=val_source)
        if multilabel:
            result["exact_match"] = scores["exact_match"]
    result["seconds"] = round(time.perf_counter() - start, 3)
    result.update(_bootstrap(preds, eval_y, args))
    return result


def split_config_overrides(extra: list[str]) -> tuple[list[str], list[str]]:
    """(["field=value", ...], unrecognised args) from --config.field=value / --config.field v."""
    overrides, rest, i = [], [], 0
    while i < len(extra):
        arg = extra[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(extra):
                    raise ValueError(f"{arg} needs a value (--config.field=value)")
                body, i = f"{body}={extra[i + 1]}", i + 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def run_checkpoint_mode(args, overrides: list[str]) -> dict:
    """Load checkpoint + task config, extract features, run the mode; returns the result."""
    from spacenit_jax import checkpoint
    from spacenit_jax.eval import features, tasks

    if not args.config:
        raise ValueError("--checkpoint needs --config (an eval task config such as "
                         "configs/eval/m_eurosat.py)")
    if args.mode:  # checked with the rest of the config (e.g. no kNN for segmentation)
        overrides = [*overrides, f"mode={args.mode}"]
    cfg = tasks.apply_overrides(tasks.load_config_file(args.config), overrides)
    mode = cfg.mode
    start = time.perf_counter()
    loaded = checkpoint.load_model(args.checkpoint, args.step)
    splits = ("train", "valid", "test") if cfg.run_on_test else ("train", "valid")
    data = {s: tasks.load_split(cfg, s) for s in splits}
    if mode == "finetune":
        ckpt_dir = cfg.finetune.checkpoint_dir or str(
            pathlib.Path(args.checkpoint) / "eval" / cfg.name / f"finetune_lr{cfg.finetune.lr:g}")
        rows = tasks.evaluate_finetune(cfg, loaded.model, data, checkpoint_dir=ckpt_dir)
    else:
        extractor = features.FeatureExtractor(loaded.model, features.feature_config_from(cfg))
        feats = {s: extractor.extract(ds) for s, ds in data.items()}
        rows = tasks.evaluate_features(cfg, mode, feats)
    return {"task": cfg.name, "mode": mode, "checkpoint": str(args.checkpoint),
            "step": loaded.step, "model_kind": loaded.kind,
            "num_samples": {s: len(ds) for s, ds in data.items()},
            "results": rows, "seconds": round(time.perf_counter() - start, 3),
            "config": json.loads(cfg.to_json())}


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides, unknown = split_config_overrides(extra)
    except ValueError as err:
        parser.error(str(err))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides and not args.checkpoint:
        parser.error("--config.<field> overrides need --checkpoint and --config")
    if args.checkpoint:
        from spacenit_jax.eval import tasks

        try:
            result = run_checkpoint_mode(args, overrides)
        except (FileNotFoundError, KeyError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(tasks.format_table(result["results"]))
        if args.out:
            pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    if not args.features:
        parser.error("give --features TRAIN.npz --eval-features TEST.npz (precomputed "
                     "embeddings) or --checkpoint CKPT --config CONFIG")
    try:
        result = run_features_mode(args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
