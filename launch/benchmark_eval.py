"""Time the evaluation core on this machine; prints one JSON line.

    python -m launch.benchmark_eval [--n 2000 --dim 768 --classes 10 --epochs 50]

Features: n x dim Gaussian clusters (one random mean per class, unit noise), a structured but
not trivially separable problem. Timed:
- the full linear-probe sweep (8 learning rates, vmapped, one compiled program) on n train
  rows with n/4 validation rows; first call (compile + run) and a second call (run only);
- kNN (k=20, tau=0.07) of n/2 queries against the n train rows; same two timings.
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


def main(argv=None) -> int:
    from spacenit_jax.eval import knn, linear_probe

    p = argparse.ArgumentParser(prog="python -m launch.benchmark_eval")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    x, y = make_features(args.n + args.n // 4 + args.n // 2, args.dim, args.classes, args.seed)
    n_val = args.n // 4
    tx, ty = x[: args.n], y[: args.n]
    vx, vy = x[args.n : args.n + n_val], y[args.n : args.n + n_val]
    qx, qy = x[args.n + n_val :], y[args.n + n_val :]
    config = linear_probe.ProbeConfig(num_classes=args.classes, epochs=args.epochs,
                                      batch_size=args.batch_size, seed=args.seed)

    def sweep():
        fit = linear_probe.fit_linear_probe(tx, ty, vx, vy, config=config)
        return fit.params, fit

    probe_first, (_, fit) = _timed(sweep)
    probe_second, _ = _timed(sweep)

    def run_knn():
        return knn.knn_class_scores(tx, ty, qx, num_classes=args.classes)

    knn_first, _ = _timed(run_knn)
    knn_second, scores = _timed(run_knn)
    result = {
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "n_train": args.n, "n_val": n_val, "n_query": int(qx.shape[0]), "dim": args.dim,
        "classes": args.classes,
        "probe_sweep": {"n_lrs": len(linear_probe.DEFAULT_LRS), "epochs": args.epochs,
                        "batch_size": args.batch_size,
                        "steps_per_lr": args.epochs * -(-args.n // args.batch_size),
                        "seconds_with_compile": round(probe_first, 3),
                        "seconds_without_compile": round(probe_second, 3),
                        "best_lr": float(f"{fit.best_lr:.6g}"), "val_accuracy": float(fit.val_scores.max()),
                        "test_accuracy": fit.evaluate(qx, qy)["accuracy"]},
        "knn": {"k": knn.DEFAULT_K, "tau": knn.DEFAULT_TAU,
                "seconds_with_compile": round(knn_first, 3),
                "seconds_without_compile": round(knn_second, 3),
                "test_accuracy": float((np.asarray(scores).argmax(-1) == qy).mean())},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
