"""Export a JAX checkpoint (a pretraining workdir, or parameters in memory) to PyTorch.

Two formats:

* ``reference``: ``config.json`` ({"model": <the original's config dict>}) and
  ``weights.pth`` (a plain ``torch.save``d dict of tensors), the directory layout the
  original SpaceNit's ``load_from_directory`` reads with a strict ``load_state_dict``.
  Every key is written (target encoder, decoders, projection
  heads, and ``_step`` first where the original module has it) and nothing else. Only the
  reference presets have a counterpart there; anything else is refused with the reason.
* ``safetensors`` (default): ``model.safetensors`` and ``config.json`` (our ModelConfig and
  model kind) for our own PyTorch module ``torch_bridge.torch_model``; any preset, and no
  pickle anywhere. ``torch_bridge.load.load_torch_model(dir)`` loads it without JAX.

The key set written is checked against the PyTorch module built on the meta device
before anything is written, so an export that the target cannot load strictly fails here.

Command line::

    python -m torch_bridge.export --checkpoint WORKDIR --out DIR
        [--format reference|safetensors] [--step N] [--encoder-only]
        [--inputs FILE.npz --outputs FILE.npz]

``--inputs``/``--outputs`` run the checkpoint's online encoder (evaluation mode, no mask)
on arrays in the original's layout (one array per sensor label, channel-first with time
last, plus optional ``patch_size``, ``month_indices`` and ``gsd``) and save its ``tokens``
(B, N, D) in the original's token order, so any PyTorch implementation can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Mapping

import numpy as np
from flax import nnx, traverse_util

from spacenit_jax import checkpoint as ckpt
from spacenit_jax.model import models
from spacenit_jax.model import state_dict as sdm
from spacenit_jax.model.config import ModelConfig, config_to_dict
from torch_bridge import reference_config as rc
from torch_bridge.load import (
    CONFIG_FILE,
    REFERENCE_WEIGHTS,
    SAFETENSORS_FILE,
    SAFETENSORS_FORMAT,
)

FORMATS = ("safetensors", "reference")
# Arrays of an --inputs npz that are not sensor images.
INPUT_EXTRAS = ("patch_size", "month_indices", "gsd")


# ======================================================================================
# Parameters: any tree -> flat {path: numpy array}


def flatten_params(params) -> dict[tuple, np.ndarray]:
    """Flat {path tuple: numpy array} of an nnx Module/State, a nested dict (as
    nnx.to_pure_dict / checkpoint.restore_params give) or an already flat dict."""
    if isinstance(params, nnx.Module | nnx.State):
        flat = sdm.flat_params(params)
    elif isinstance(params, Mapping) and params and all(isinstance(k, tuple) for k in params):
        flat = dict(params)
    elif isinstance(params, Mapping):
        flat = traverse_util.flatten_dict(dict(params))
    else:
        raise TypeError(f"expected an nnx Module/State or a dict of parameters, got "
                        f"{type(params).__name__}")
    return {path: np.asarray(v) for path, v in flat.items()}


def encoder_params(flat: Mapping[tuple, np.ndarray], kind: str) -> dict[tuple, np.ndarray]:
    """The online encoder's parameters (paths without the 'encoder' prefix)."""
    if kind == "encoder":
        return dict(flat)
    out = {p[1:]: v for p, v in flat.items() if p and p[0] == "encoder"}
    if not out:
        raise ValueError(f"the {kind} parameters have no 'encoder' subtree")
    return out


def _model_kind_of(module) -> str:
    for kind, cls in models.MODELS.items():
        if type(module) is cls:
            return kind
    raise TypeError(f"unknown model class {type(module).__name__}")


# ======================================================================================
# torch state dicts


def torch_key_shapes(cfg: ModelConfig, kind: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of our PyTorch module (meta device: nothing allocated), in its
    state-dict order. For the reference presets these are the original's."""
    from torch_bridge import torch_model

    module = torch_model.build_model(cfg, kind, device="meta")
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _as_float32(key: str, value: np.ndarray) -> np.ndarray:
    if value.dtype == np.float32:
        return value
    if value.dtype.kind not in "fV" and value.dtype.name != "bfloat16":
        raise TypeError(f"parameter {key!r} has dtype {value.dtype}, expected a float")
    return value.astype(np.float32)


def torch_state_dict(cfg: ModelConfig, kind: str, params, *, step: int = 0,
                     encoder_only: bool = False) -> tuple[dict[str, np.ndarray], str]:
    """({torch key: numpy array} in the module's key order, kind written).

    `_step` (int64 scalar) is included where the module has it. Raises a ValueError that
    lists missing, unexpected and mis-shaped keys if the parameters do not fit the module.
    """
    flat = flatten_params(params)
    if encoder_only:
        flat, kind = encoder_params(flat, kind), "encoder"
    sd = sdm.to_state_dict(cfg, flat)
    expected = torch_key_shapes(cfg, kind)
    sdm.check_keys({k: v.shape for k, v in sd.items()},
                   {k: v for k, v in expected.items() if k != "_step"},
                   f"the {cfg.preset} {kind} parameters do not match the PyTorch module")
    out = {}
    for key in expected:
        if key == "_step":
            out[key] = np.asarray(int(step), np.int64)
        else:
            out[key] = np.ascontiguousarray(_as_float32(key, sd[key]))
    return out, kind


# ======================================================================================
# Writing


def _atomic_write(path: pathlib.Path, write) -> None:
    """write(tmp_path) then rename, so a reader never sees a half-written file."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: pathlib.Path, obj) -> None:
    def write(tmp):
        pathlib.Path(tmp).write_text(json.dumps(obj, indent=2) + "\n")

    _atomic_write(path, write)


def _to_torch(sd: Mapping[str, np.ndarray]):
    import torch

    # torch.from_numpy shares memory; read-only arrays (e.g. restored ones) are copied.
    return {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in sd.items()}


def export_params(params, out, *, cfg: ModelConfig | None = None, kind: str | None = None,
                  format: str = "safetensors", step: int = 0,
                  encoder_only: bool = False) -> pathlib.Path:
    """Write parameters held in memory (a model, its State, or a nested/flat dict).

    cfg and kind are taken from the model when `params` is an nnx Module.
    """
    if isinstance(params, nnx.Module):
        cfg = cfg or params.cfg
        kind = kind or _model_kind_of(params)
    if cfg is None or kind is None:
        raise ValueError("cfg and kind are needed unless params is a model")
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; known: {FORMATS}")
    write_kind = "encoder" if encoder_only else kind
    model_json = rc.model_dict(cfg, write_kind) if format == "reference" else None
    sd, kind = torch_state_dict(cfg, kind, params, step=step, encoder_only=encoder_only)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if format == "reference":
        import torch

        tensors = _to_torch(sd)
        _atomic_write(out / REFERENCE_WEIGHTS, lambda tmp: torch.save(tensors, tmp))
        _write_json(out / CONFIG_FILE, {"model": model_json})
    else:
        from safetensors.numpy import save_file

        meta = {"format": "pt", "spacenit_kind": kind, "spacenit_step": str(int(step))}
        _atomic_write(out / SAFETENSORS_FILE, lambda tmp: save_file(sd, tmp, metadata=meta))
        _write_json(out / CONFIG_FILE, {
            "format": SAFETENSORS_FORMAT, "kind": kind, "step": int(step),
            "config": config_to_dict(cfg),
            "module": "torch_bridge.torch_model.build_model(config, kind)"})
    return out


def load_checkpoint(workdir, step: int | None = None):
    """(ModelConfig, kind, nested params, step) of a pretraining workdir's checkpoint
    (the latest unless `step`)."""
    cfg, kind = ckpt.model_config(ckpt.read_config(workdir, step))
    params, step = ckpt.restore_params(workdir, step)
    return cfg, kind, params, step


def export_checkpoint(workdir, out, *, format: str = "safetensors", step: int | None = None,
                      encoder_only: bool = False) -> pathlib.Path:
    """Export the checkpoint of a pretraining workdir (the latest unless `step`)."""
    cfg, kind, params, step = load_checkpoint(workdir, step)
    return export_params(params, out, cfg=cfg, kind=kind, format=format, step=step,
                         encoder_only=encoder_only)


# ======================================================================================
# Running the online encoder on npz inputs (original layout)


def jax_encoder(cfg: ModelConfig, kind: str, params):
    """Our JAX Encoder holding the online encoder's parameters (built abstractly)."""
    model = nnx.eval_shape(lambda: models.build_model(cfg, "encoder"))
    sdm.load_flat(model, encoder_params(flatten_params(params), kind))
    return model


def images_from_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sensor arrays of the original's layout ((B,C,H,W,T) / (B,C,H,W)) -> channel last."""
    images = {}
    for label, arr in inputs.items():
        if label in INPUT_EXTRAS:
            continue
        arr = np.asarray(arr)
        if arr.ndim not in (4, 5):
            raise ValueError(f"input {label!r}: expected (B,C,H,W,T) or (B,C,H,W) channel-first "
                             f"arrays (the original's layout), got shape {arr.shape}")
        images[label] = np.moveaxis(arr, 1, -1).astype(np.float32)
    if not images:
        raise ValueError(f"no sensor arrays in the inputs (keys: {sorted(inputs)})")
    return images


def encode_inputs(cfg: ModelConfig, kind: str, params, inputs: Mapping[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """{"tokens": (B, N, D), "sensor_ids": (B, N)} of the online encoder, evaluation mode."""
    images = images_from_inputs(inputs)
    p = int(np.asarray(inputs["patch_size"])) if "patch_size" in inputs else None
    months = np.asarray(inputs["month_indices"]) if "month_indices" in inputs else None
    gsd = float(np.asarray(inputs["gsd"])) if "gsd" in inputs else None
    model = jax_encoder(cfg, kind, params)
    encode = nnx.jit(lambda m, imgs: m.encode_images(imgs, patch_size=p, months=months,
                                                     gsd=gsd, deterministic=True))
    tokens, stream = encode(model, images)
    return {"tokens": np.asarray(tokens, np.float32),
            "sensor_ids": np.asarray(stream.sensor, np.int64)}


# ======================================================================================
# Command line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m torch_bridge.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="pretraining workdir")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--format", choices=FORMATS, default="safetensors")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--encoder-only", action="store_true",
                    help="write a bare encoder (keys without the 'encoder.' prefix)")
    ap.add_argument("--inputs", help="npz of sensor arrays in the original's layout")
    ap.add_argument("--outputs", help="npz to write the online encoder's tokens to")
    args = ap.parse_args(argv)
    if (args.inputs is None) != (args.outputs is None):
        ap.error("--inputs and --outputs go together")
    try:
        cfg, kind, params, step = load_checkpoint(args.checkpoint, args.step)
        out = export_params(params, args.out, cfg=cfg, kind=kind, format=args.format,
                            step=step, encoder_only=args.encoder_only)
        summary = {"out": str(out), "format": args.format, "preset": cfg.preset,
                   "kind": "encoder" if args.encoder_only else kind, "step": step}
        if args.inputs:
            with np.load(args.inputs) as data:
                inputs = {k: data[k] for k in data.files}
            result = encode_inputs(cfg, kind, params, inputs)
            np.savez(args.outputs, **result)
            summary["outputs"] = args.outputs
            summary["tokens_shape"] = list(result["tokens"].shape)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
