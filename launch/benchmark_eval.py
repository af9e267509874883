"""Time and score the evaluation core on this machine; prints one JSON line.

    python -m launch.benchmark_eval [--n 2000 --dim 768 --classes 10 --epochs 50]
    python -m launch.benchmark_eval --probe-recipes

Default: features are n x dim Gaussian clusters (one random mean per class, unit noise), a
structured but not trivially separable problem. Timed, first call (compile + run) and second
call (run only):
- the default linear probe (full-batch L-BFGS, every C of the default grid, vmapped) and the
  original's recipe (AdamW, 8 learning rates, vmapped), on n train rows with n/4 validation
  rows;
- kNN (k=20, tau=0.07) of n/2 queries against the n train rows.

--probe-recipes: test accuracy of every probe recipe on scikit-learn's digits and
breast-cancer sets (standardised features, stratified 60/40 split, random_state 0; the
probes select their hyperparameter on 20% of the training rows), against scikit-learn's
converged L2 LogisticRegression (default C = 1). Needs scikit-learn (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np


def make_features(n: int, dim: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 0.1, (classes, dim))
    y = rng.integers(0, classes, n)
    return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y.astype(np.int32)


def _timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def probe_recipes(seed: int = 0) -> dict:
    """Every recipe's test accuracy on digits and breast-cancer (see the module docstring)."""
    from sklearn import datasets
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from spacenit_jax.eval import linear_probe

    out = {}
    for name in ("digits", "breast_cancer"):
        x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        tx, qx, ty, qy = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
        scaler = StandardScaler().fit(tx)
        tx, qx = scaler.transform(tx).astype(np.float32), scaler.transform(qx).astype(np.float32)
        sk = LogisticRegression(max_iter=10_000).fit(tx, ty).score(qx, qy)
        perm = np.random.default_rng(seed).permutation(len(tx))
        val, train = perm[: len(tx) // 5], perm[len(tx) // 5:]
        row = {"sklearn_logistic_regression_C1": round(float(sk), 4)}
        classes = int(ty.max()) + 1
        for recipe in ("lbfgs", "reference_adamw"):
            config = linear_probe.ProbeConfig(num_classes=classes, recipe=recipe, seed=seed)
            start = time.perf_counter()
            fit = linear_probe.fit_linear_probe(tx[train], ty[train], tx[val], ty[val],
                                                config=config, progress=False)
            acc = fit.evaluate(qx, qy)["accuracy"]
            row[recipe] = {"accuracy": round(acc, 4),
                           "points_below_sklearn": round(100 * (sk - acc), 2),
                           **fit.hyperparameters(),
                           "seconds_with_compile": round(time.perf_counter() - start, 2)}
        out[name] = row
    return out


def main(argv=None) -> int:
    from spacenit_jax.eval import knn, linear_probe

    p = argparse.ArgumentParser(prog="python -m launch.benchmark_eval")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-recipes", action="store_true",
                   help="score every probe recipe on sklearn's digits and breast-cancer sets")
    args = p.parse_args(argv)
    if args.probe_recipes:
        print(json.dumps({"device": str(jax.devices()[0].device_kind),
                          "probe_recipes": probe_recipes(args.seed)}))
        return 0

    x, y = make_features(args.n + args.n // 4 + args.n // 2, args.dim, args.classes, args.seed)
    n_val = args.n // 4
    tx, ty = x[: args.n], y[: args.n]
    vx, vy = x[args.n : args.n + n_val], y[args.n : args.n + n_val]
    qx, qy = x[args.n + n_val :], y[args.n + n_val :]
    result = {
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "n_train": args.n, "n_val": n_val, "n_query": int(qx.shape[0]), "dim": args.dim,
        "classes": args.classes,
    }
    for recipe in ("lbfgs", "reference_adamw"):
        config = linear_probe.ProbeConfig(num_classes=args.classes, epochs=args.epochs,
                                          batch_size=args.batch_size, seed=args.seed,
                                          recipe=recipe)

        def sweep(config=config):
            fit = linear_probe.fit_linear_probe(tx, ty, vx, vy, config=config, progress=False)
            return fit.params, fit

        first, (_, fit) = _timed(sweep)
        second, _ = _timed(sweep)
        result[f"probe_{recipe}"] = {
            "grid": [float(v) for v in fit.grid], **fit.hyperparameters(),
            "seconds_with_compile": round(first, 3), "seconds_without_compile": round(second, 3),
            "val_accuracy": float(fit.val_scores.max()),
            "test_accuracy": fit.evaluate(qx, qy)["accuracy"]}

    def run_knn():
        return knn.knn_class_scores(tx, ty, qx, num_classes=args.classes)

    knn_first, _ = _timed(run_knn)
    knn_second, scores = _timed(run_knn)
    result["knn"] = {"k": knn.DEFAULT_K, "tau": knn.DEFAULT_TAU,
                     "seconds_with_compile": round(knn_first, 3),
                     "seconds_without_compile": round(knn_second, 3),
                     "test_accuracy": float((np.asarray(scores).argmax(-1) == qy).mean())}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
