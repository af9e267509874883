"""Read a PyTorch checkpoint directory, our export or the original's, without JAX.

Needs numpy, safetensors (our format) and torch (the original's ``weights.pth`` and the
PyTorch module); nothing here imports JAX or Flax, so a PyTorch user can load an export
with only those installed (README, "Use an export in PyTorch")::

    from torch_bridge.load import load_torch_model
    model = load_torch_model("export/nano")   # strict load, evaluation mode

Two formats, both a directory with ``config.json``:

* ours (``python -m torch_bridge.export``, the default ``--format safetensors``):
  ``model.safetensors`` and ``config.json`` = {"format": SAFETENSORS_FORMAT, "kind",
  "step", "config": the ModelConfig as a dict}; any preset, no pickle anywhere;
* the original SpaceNit's: ``config.json`` with a top-level "model" dict and
  ``weights.pth``, a plain state dict, read with ``torch.load(weights_only=True)`` only:
  a file that needs arbitrary unpickling (custom classes) is refused, never executed.
  The "model" dict of either revision becomes a ModelConfig by the rule in
  ``torch_bridge.reference_config`` (the weights' key names decide the revision).
"""

from __future__ import annotations

import json
import pathlib
import pickle
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from spacenit_jax.model.config import ModelConfig, config_from_dict
from torch_bridge import reference_config as rc

SAFETENSORS_FORMAT = "spacenit_jax.torch_bridge.safetensors/1"
SAFETENSORS_FILE = "model.safetensors"
REFERENCE_WEIGHTS = "weights.pth"
CONFIG_FILE = "config.json"


class Source(NamedTuple):
    cfg: ModelConfig
    kind: str
    state_dict: dict[str, np.ndarray]  # torch keys and layouts, `_step` included
    format: str  # "reference" | "safetensors"
    weights_file: pathlib.Path
    notes: list[str]
    step: int  # `_step` where the model has it, else the step recorded by our export, else 0


def load_reference_weights(path) -> dict[str, np.ndarray]:
    """A plain state dict from a weights.pth, read with torch.load(weights_only=True);
    floating tensors are returned as float32 numpy arrays."""
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
            f"{path}: expected a flat dict of tensors; entries that are not: {bad[:10]} "
            f"(a nested checkpoint? save model.state_dict() itself)")
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
    Raises FileNotFoundError for a missing directory or file, rc.ReferenceFormatError (a
    ValueError) naming the file for anything unreadable.
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
        if kind not in rc.MODEL_CLASSES:
            raise rc.ReferenceFormatError(f"{source / CONFIG_FILE}: unknown kind {kind!r}; "
                                          f"known: {list(rc.MODEL_CLASSES)}")
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


def load_torch_model(source, **overrides):
    """Our PyTorch module (`torch_bridge.torch_model`), loaded strictly from a checkpoint
    directory in either format, in evaluation mode on the CPU. Its `config` attribute is
    the ModelConfig. A state dict that does not fit raises torch's strict-load error
    listing the missing and unexpected keys."""
    import torch

    from torch_bridge import torch_model

    src = read_source(source, **overrides)
    module = torch_model.build_model(src.cfg, src.kind)
    sd = {k: torch.from_numpy(v if v.flags.writeable else v.copy())
          for k, v in src.state_dict.items()}
    module.load_state_dict(sd, strict=True)
    return module.eval()
