"""Import a PyTorch checkpoint directory into a JAX parameter checkpoint.

Sources: a directory in our safetensors format or the original SpaceNit's
(``config.json`` + ``weights.pth``), read by `torch_bridge.load.read_source` (see there).
The state dict must match the model exactly, as the original's strict
``load_state_dict`` requires: the error lists missing, unexpected and mis-shaped keys.
The result is written with ``checkpoint.write_params_checkpoint`` at the step stored in
``_step`` (for models without one: the step our safetensors export recorded, else 0; or
``--step``): pretraining can initialise or resume its parameters from it and evaluation
can read it. Execution switches that the PyTorch side does not record (``scan_layers``)
can be set on import.

Command line::

    python -m torch_bridge.import_checkpoint --source DIR --out CKPT [--step N] [--scan-layers]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx, traverse_util

from spacenit_jax import checkpoint as ckpt
from spacenit_jax.model import models
from spacenit_jax.model import state_dict as sdm
from spacenit_jax.model.config import ModelConfig, config_to_dict
from torch_bridge import reference_config as rc
from torch_bridge.load import read_source

# ======================================================================================
# State dict -> parameters


def param_shapes(cfg: ModelConfig, kind: str) -> dict[tuple, jax.ShapeDtypeStruct]:
    """Abstract (shape-only) per-layer parameters of our JAX model (unscanned layout)."""
    return dict(_param_shapes(cfg.replace(scan_layers=False, remat="none"), kind))


@functools.lru_cache(maxsize=16)
def _param_shapes(cfg: ModelConfig, kind: str):
    model = nnx.eval_shape(lambda: models.build_model(cfg, kind))
    return tuple(sdm.flat_params(model).items())


def _buffers(kind: str) -> dict[str, tuple]:
    """Non-parameter state-dict entries of the original's module of `kind`."""
    return {"_step": ()} if kind in rc.KINDS_WITH_STEP else {}


def expected_state_dict_shapes(cfg: ModelConfig, kind: str) -> dict[str, tuple[int, ...]]:
    """{torch key: torch shape} our JAX model of `kind` maps to, `_step` included where
    the original module has it. Computed from shapes only (nothing is allocated)."""
    return {**_buffers(kind), **sdm.torch_shapes(cfg.replace(scan_layers=False),
                                                  param_shapes(cfg, kind))}


def state_dict_to_params(cfg: ModelConfig, kind: str, sd: Mapping[str, np.ndarray],
                         where: str = "state dict") -> dict[tuple, np.ndarray]:
    """Flat JAX parameters (stacked if cfg.scan_layers) from a torch-layout state dict
    that must match exactly (sdm.StateDictMismatch otherwise, naming `where`)."""
    flat = sdm.from_state_dict(cfg.replace(scan_layers=False), sd, param_shapes(cfg, kind),
                               what=f"{where} ({cfg.preset} {kind})", buffers=_buffers(kind))
    return sdm.stack_layers(flat, cfg)


def import_checkpoint(source, out, *, step: int | None = None, **overrides) -> pathlib.Path:
    """Write a JAX params-only checkpoint from a PyTorch checkpoint directory.

    Returns the checkpoint directory (<out>/checkpoints/<step>).
    """
    src = read_source(source, **overrides)
    flat = state_dict_to_params(src.cfg, src.kind, src.state_dict, where=str(src.weights_file))
    step = src.step if step is None else int(step)
    config = {"model": {"config": config_to_dict(src.cfg), "kind": src.kind},
              "imported_from": {"source": str(pathlib.Path(source).absolute()),
                                "format": src.format, "notes": src.notes}}
    return ckpt.write_params_checkpoint(out, traverse_util.unflatten_dict(flat), config,
                                        step=step)


# ======================================================================================
# Command line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m torch_bridge.import_checkpoint",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True,
                    help="directory with config.json and weights.pth or model.safetensors")
    ap.add_argument("--out", required=True, help="JAX checkpoint workdir to write")
    ap.add_argument("--step", type=int, default=None,
                    help="step to save under (default: the state dict's _step, else 0)")
    ap.add_argument("--scan-layers", action="store_true",
                    help="store the transformer layers stacked (scan_layers=True)")
    args = ap.parse_args(argv)
    overrides = {"scan_layers": True} if args.scan_layers else {}
    try:
        src_notes = []
        path = import_checkpoint(args.source, args.out, step=args.step, **overrides)
        config = ckpt.read_config(args.out, int(path.name))
        src_notes = config.get("imported_from", {}).get("notes", [])
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in src_notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({"checkpoint": str(path), "step": int(path.name),
                      "preset": config["model"]["config"]["preset"],
                      "kind": config["model"]["kind"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
