"""Time export and import of a full-size checkpoint and report the file sizes.

For each model (default: the latest-revision reference LatentPredictor and the design-card
LatentPredictor at size base) a parameters-only JAX checkpoint of random values is written
(setup, not timed), then for each format that the preset allows:
export (restore + convert + write) and import (read + check + write a JAX checkpoint) are
timed (one-time start-up costs of the process are paid before). One JSON line per model::

    python -m torch_bridge.benchmark [--size base] [--presets reference_head design_card]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile
import time

import numpy as np
from flax import traverse_util

from spacenit_jax import checkpoint as ckpt
from spacenit_jax.model.config import config_to_dict, make_config
from torch_bridge import export as ex
from torch_bridge import import_checkpoint as im
from torch_bridge import reference_config as rc


def _size(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def random_params(cfg, kind: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {path: rng.standard_normal(leaf.shape, dtype=np.float32)
            for path, leaf in im.param_shapes(cfg, kind).items()}


def bench_model(preset: str, size: str, root: pathlib.Path, kind: str = "latent_predictor"
                ) -> dict:
    cfg = make_config(preset, size)
    t0 = time.perf_counter()
    flat = random_params(cfg, kind)
    workdir = root / f"{preset}_jax"
    ckpt.write_params_checkpoint(workdir, traverse_util.unflatten_dict(flat), {
        "model": {"config": config_to_dict(cfg), "kind": kind}}, step=1000)
    result = {"model": f"{preset} {size} {kind}", "params": int(sum(v.size for v in flat.values())),
              "setup_s": round(time.perf_counter() - t0, 2),
              "jax_checkpoint_bytes": _size(ckpt.checkpoint_dir(workdir))}
    del flat
    formats = [f for f in ex.FORMATS if f != "reference" or not rc.unsupported_reasons(cfg, kind)]
    for fmt in formats:
        out = root / f"{preset}_{fmt}"
        t = time.perf_counter()
        ex.export_checkpoint(workdir, out, format=fmt)
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        im.import_checkpoint(out, root / f"{preset}_{fmt}_back")
        import_s = time.perf_counter() - t
        result[fmt] = {"export_s": round(export_s, 2), "import_s": round(import_s, 2),
                       "files": {p.name: _size(p) for p in sorted(out.iterdir())}}
        shutil.rmtree(out)
        shutil.rmtree(root / f"{preset}_{fmt}_back")
    shutil.rmtree(workdir)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m torch_bridge.benchmark", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="base", choices=("nano", "tiny", "base", "large"))
    ap.add_argument("--presets", nargs="+", default=["reference_head", "design_card"])
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    root = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="torch_bridge_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    # One-time costs of a fresh process (torch's meta-device machinery, jax tracing) are
    # paid here, not inside the timings.
    ex.torch_key_shapes(make_config("reference_head", "nano", sensor_labels=("srtm",)),
                        "latent_predictor")
    try:
        for preset in args.presets:
            print(json.dumps(bench_model(preset, args.size, root)), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
