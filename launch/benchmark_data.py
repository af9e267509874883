"""Throughput and padding of the host data pipeline; prints ONE JSON line.

    python -m launch.benchmark_data --data PATH [--workers N] [--batches N]
        [--rows R] [--row-length L_t] [--preset design_card] [--size nano]

Runs the full pipeline (Grain, `--workers` spawned processes) for the nano sensor set
(the design-card nano layout) with patch sizes 1-8 and crops of 1-12 patches a side, the
official masking and two views, and reports:

  samples_per_s        samples per second (each sample yields two packed views)
  tokens_per_s         real (non-padding) tokens-stream tokens per second, both views
  padding_fraction     token slots that are padding, all three streams of both views
  padding_tokens / padding_online / padding_decoder   the same per stream
  plan                 L_t, L_o, L_d, K, and the plan's expected padding at the bounds
  main_cpu_ms_per_sample   CPU time of the consuming process per sample

The first `--warmup` batches (worker start-up) are not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="H5 sample directory (…/<num_samples>)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--row-length", type=int, default=None, help="L_t (default: plan's)")
    p.add_argument("--preset", default="design_card")
    p.add_argument("--size", default="nano")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)

    import numpy as np

    from spacenit_jax.data import pipeline
    from spacenit_jax.model.config import make_config

    layout = make_config(args.preset, args.size).layout
    cfg = pipeline.PipelineConfig(
        path=args.data, rows=args.rows, row_length=args.row_length, seed=args.seed,
        num_workers=args.workers, process_index=0, process_count=1, dtype=args.dtype,
        patch_sizes=tuple(range(1, 9)), hw_p_list=tuple(range(1, 13)))
    pl = pipeline.make_pipeline(cfg, layout)
    it = iter(pl)
    for _ in range(args.warmup):
        next(it)
    n_samples = 0
    real = {"tokens": 0, "online": 0, "decoder": 0}
    slots = {"tokens": 0, "online": 0, "decoder": 0}
    plan = pl.plan
    lengths = {"tokens": plan.row_length, "online": plan.online_length,
               "decoder": plan.decoder_length}
    views = ["view_a", "view_b"][: cfg.num_views]
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.batches):
        e = next(it)
        n_samples += int(e["num_samples"])
        m = e["metrics"]
        for v in views:
            for s in real:
                real[s] += int(m[f"{v}/real_{s}"])
                slots[s] += plan.rows * lengths[s]
        del e
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if hasattr(it, "close"):
        it.close()
    exp = plan.report()["expected"]
    out = {
        "samples_per_s": round(n_samples / dt, 2),
        "tokens_per_s": round(real["tokens"] / dt, 1),
        "padding_fraction": round(1 - sum(real.values()) / sum(slots.values()), 4),
        "padding_tokens": round(1 - real["tokens"] / slots["tokens"], 4),
        "padding_online": round(1 - real["online"] / slots["online"], 4),
        "padding_decoder": round(1 - real["decoder"] / slots["decoder"], 4),
        "batches": args.batches, "samples": n_samples, "seconds": round(dt, 2),
        "workers": args.workers, "rows": plan.rows,
        # CPU seconds of this process per sample (workers=0: the whole pipeline's cost;
        # robust to other load on a shared machine, unlike the wall-clock rates)
        "main_cpu_ms_per_sample": round(1e3 * cpu / max(n_samples, 1), 2),
        "plan": {"L_t": plan.row_length, "L_o": plan.online_length,
                 "L_d": plan.decoder_length, "K": plan.max_samples_per_row,
                 "expected_padding": exp},
        "mean_samples_per_batch": round(float(np.float64(n_samples) / args.batches), 2),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
