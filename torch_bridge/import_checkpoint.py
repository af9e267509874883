"""Import a PyTorch checkpoint directory into a JAX parameter checkpoint.

Sources (a directory with ``config.json``):

* the original SpaceNit's format: ``config.json`` with a top-level "model" dict and
  ``weights.pth``, a plain state dict. The file is read with
  ``torch.load(weights_only=True)`` only: a file that needs arbitrary unpickling (custom
  classes) is refused, never executed. The "model" dict of either revision becomes a
  ModelConfig by the rule in ``torch_bridge.reference_config`` (the weights' key names
  decide the revision);
* our safetensors export (``model.safetensors`` + our ``config.json``).

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
import pickle
import sys
from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from spacenit_jax import checkpoint as ckpt
from spacenit_jax.model import models
from spacenit_jax.model import state_dict as sdm
from spacenit_jax.model.config import ModelConfig, config_from_dict, config_to_dict
from torch_bridge import reference_config as rc
from torch_bridge.export import (
    CONFIG_FILE,
    REFERENCE_WEIGHTS,
    SAFETENSORS_FILE,
    SAFETENSORS_FORMAT,
)


class Source(NamedTuple):
    cfg: ModelConfig
    kind: str
    state_dict: dict[str, np.ndarray]  # torch keys and layouts, `_step` included
    format: str  # "reference" | "safetensors"
    weights_file: pathlib.Path
    notes: list[str]
    step: int  # `_step` where the model has it, else the step recorded by our export, else 0


# ======================================================================================
# Reading files


def load_reference_weights(path) -> dict[str, np.ndarray]:
    """A plain state dict from a weights.pth, read with torch.load(weights_only=True)."""
    import torch

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # legacy (non-zip) serialisation cannot be mmapped
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = [line.strip() for line in str(err).splitlines()
                  if "WeightsUnpickler error" in line or "Unsupported" in line]
        raise rc.ReferenceFormatError(
            f"{path}: refused: torch.load(weights_only=True) rejects this file because it "
            f"holds pickled Python objects other than tensors, and unpickling those could "
            f"run arbitrary code. Re-save it as a plain dict of tensors "
            f"(torch.save(model.state_dict(), ...))."
            + (f" ({detail[0]})" if detail else "")) from None
    if not isinstance(obj, Mapping):
        raise rc.ReferenceFormatError(
            f"{path}: holds a {type(obj).__name__}, expected a plain state dict "
            f"(dict of parameter name -> tensor)")
    sd = {}
    bad = []
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            bad.append(f"{key!r}: {type(value).__name__}")
            continue
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype != torch.float32:
            value = value.float()
        sd[key] = value.numpy()
    if bad:
        raise rc.ReferenceFormatError(
            f"{path}: expected a flat dict of tensors; entries that are not: {bad[:10]}"
            + (" (a nested checkpoint? save model.state_dict() itself)" if bad else ""))
    return sd


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in {path.parent}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise rc.ReferenceFormatError(f"{path}: not valid JSON ({err})") from None


def read_source(source, **overrides) -> Source:
    """Config, kind and state dict of a checkpoint directory in either format.

    overrides: ModelConfig fields to set (execution switches such as scan_layers=True).
    """
    source = pathlib.Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"checkpoint directory {source} does not exist")
    meta = _read_json(source / CONFIG_FILE)
    if not isinstance(meta, dict):
        raise rc.ReferenceFormatError(f"{source / CONFIG_FILE}: expected a JSON object")
    if "format" in meta:
        if meta["format"] != SAFETENSORS_FORMAT:
            raise rc.ReferenceFormatError(
                f"{source / CONFIG_FILE}: format {meta['format']!r}, this reader knows "
                f"{SAFETENSORS_FORMAT!r}")
        from safetensors.numpy import load_file

        weights = source / SAFETENSORS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"no {SAFETENSORS_FILE} in {source}")
        try:
            cfg = config_from_dict(meta["config"])
            kind = meta["kind"]
        except (KeyError, TypeError, ValueError) as err:
            raise rc.ReferenceFormatError(
                f"{source / CONFIG_FILE}: bad model config ({err})") from None
        if kind not in models.MODELS:
            raise rc.ReferenceFormatError(f"{source / CONFIG_FILE}: unknown kind {kind!r}")
        if overrides:
            cfg = cfg.replace(**overrides)
        sd = load_file(weights)
        step = int(sd["_step"]) if "_step" in sd else int(meta.get("step", 0))
        return Source(cfg, kind, sd, "safetensors", weights, [], step)
    if "model" not in meta:
        raise rc.ReferenceFormatError(
            f"{source / CONFIG_FILE}: neither a top-level \"model\" entry (the original's "
            f"format) nor our \"format\" tag; keys: {sorted(meta)}")
    weights = source / REFERENCE_WEIGHTS
    sd = load_reference_weights(weights)
    cfg, kind, notes = rc.parse_model_dict(meta["model"], sd.keys(), **overrides)
    step = int(sd["_step"]) if "_step" in sd and np.ndim(sd["_step"]) == 0 else 0
    return Source(cfg, kind, sd, "reference", weights, notes, step)


# ======================================================================================
# State dict -> parameters


def param_shapes(cfg: ModelConfig, kind: str) -> dict[tuple, jax.ShapeDtypeStruct]:
    """Abstract (shape-only) per-layer parameters of our JAX model (unscanned layout)."""
    return dict(_param_shapes(cfg.replace(scan_layers=False, remat="none"), kind))


@functools.lru_cache(maxsize=16)
def _param_shapes(cfg: ModelConfig, kind: str):
    model = nnx.eval_shape(lambda: models.build_model(cfg, kind))
    return tuple(sdm.flat_params(model).items())


def expected_state_dict_shapes(cfg: ModelConfig, kind: str) -> dict[str, tuple[int, ...]]:
    """{torch key: torch shape} our JAX model of `kind` maps to, `_step` included where
    the original module has it. Computed from shapes only (nothing is allocated)."""
    out = {"_step": ()} if kind in rc.KINDS_WITH_STEP else {}
    for path, leaf in param_shapes(cfg, kind).items():
        key, transform = sdm.torch_name(cfg, path)
        shape = tuple(leaf.shape)
        if transform == "T":
            shape = shape[::-1]
        elif transform == "token":
            shape = (1, 1, *shape)
        out[key] = shape
    return out


def state_dict_to_params(cfg: ModelConfig, kind: str, sd: Mapping[str, np.ndarray],
                         where: str = "state dict") -> dict[tuple, np.ndarray]:
    """Flat JAX parameters from a torch-layout state dict that must match exactly."""
    expected = expected_state_dict_shapes(cfg, kind)
    missing = [k for k in expected if k not in sd]
    extra = sorted(set(sd) - set(expected))
    wrong = [f"{k}: {tuple(np.shape(sd[k]))}, expected {expected[k]}" for k in expected
             if k in sd and tuple(np.shape(sd[k])) != expected[k]]
    if missing or extra or wrong:
        raise rc.ReferenceFormatError(
            f"{where} does not match the {cfg.preset} {kind} model"
            + (f"\n  missing keys ({len(missing)}): {missing}" if missing else "")
            + (f"\n  unexpected keys ({len(extra)}): {extra}" if extra else "")
            + (f"\n  mis-shaped keys ({len(wrong)}): {wrong}" if wrong else ""))
    flat_cfg = cfg.replace(scan_layers=False)
    params = {k: v for k, v in sd.items() if k != "_step"}
    flat = sdm.from_state_dict(flat_cfg, params, param_shapes(cfg, kind))
    return sdm.stack_layers(flat, cfg)


def nest(flat: Mapping[tuple, np.ndarray]) -> dict:
    """Flat {path: array} -> the nested dict of nnx.to_pure_dict (what checkpoints hold)."""
    root: dict = {}
    for path, value in flat.items():
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = np.ascontiguousarray(value)
    return root


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
    return ckpt.write_params_checkpoint(out, nest(flat), config, step=step)


def load_torch_model(source, **overrides):
    """Our PyTorch module (evaluation mode) loaded strictly from a directory in either
    format: the way to use an export, or the original's checkpoint, in PyTorch here."""
    import torch

    from torch_bridge import torch_model

    src = read_source(source, **overrides)
    module = torch_model.build_model(src.cfg, src.kind)
    sd = {k: torch.from_numpy(v if v.flags.writeable else v.copy())
          for k, v in src.state_dict.items()}
    module.load_state_dict(sd, strict=True)
    return module.eval()


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
