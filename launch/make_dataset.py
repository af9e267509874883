"""Write a synthetic multi-sensor H5 dataset in the original's layout; print its path.

    python -m launch.make_dataset --out DIR --num-samples N [--sensors LABEL ...]
        [--seed S] [--tile-size 64] [--compression zstd] [--workers W] [--overwrite]

The printed path is the `<num_samples>` directory that the pipeline's `path` takes.
An existing dataset with identical settings is reused (only its path is printed).
"""

from __future__ import annotations

import argparse
import sys
import time

from spacenit_jax import sensors
from spacenit_jax.data import synthetic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="root directory (created if needed)")
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--sensors", nargs="+", default=list(sensors.OFFICIAL_SENSORS),
                   help="sensor labels (default: the official 9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile-size", type=int, default=64, help="pixels a side (divides 256)")
    p.add_argument("--compression", default="zstd", choices=["zstd", "gzip", "lz4", "none"])
    p.add_argument("--compression-opts", type=int, default=3,
                   help="zstd clevel / gzip level (ignored for lz4 and none)")
    p.add_argument("--missing-sensor-prob", type=float, default=0.1)
    p.add_argument("--missing-timestep-prob", type=float, default=0.3)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    comp = None if args.compression == "none" else args.compression
    try:
        spec = synthetic.SyntheticSpec(
            num_samples=args.num_samples, sensor_labels=tuple(args.sensors), seed=args.seed,
            tile_size=args.tile_size, compression=comp, compression_opts=args.compression_opts,
            missing_sensor_prob=args.missing_sensor_prob,
            missing_timestep_prob=args.missing_timestep_prob)
    except (ValueError, KeyError) as e:
        p.error(str(e))
    t0 = time.perf_counter()
    path = synthetic.make_dataset(args.out, spec, workers=args.workers, overwrite=args.overwrite)
    print(f"wrote {args.num_samples} samples in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
