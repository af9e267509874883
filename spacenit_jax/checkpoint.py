"""Checkpoints: the layout of a pretraining workdir, restore, and "load a model from
anything". Pretraining, evaluation, fine-tuning, export and inference all use this module.

    <workdir>/checkpoints/<step>/
        params/   the model's parameters (online and EMA target) as a nested dict
        train/    optimizer state, step, rng and run counters
        data/     each process's data-iterator state (one JSON per process)
        config/   the fully resolved run config (JSON), with the model config under "model"
    <workdir>/config.json   the same resolved config, for humans and tools

Orbax CheckpointManager writes each step atomically (a temporary directory renamed on
commit) and, by default, asynchronously. Parameters are kept separate from the optimizer
state so that export, evaluation and parameter-only initialisation read just what they
need.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import orbax.checkpoint as ocp

from spacenit_jax.model.config import ModelConfig, config_from_dict, config_to_dict

ITEMS = ("params", "train", "data", "config")


def checkpoint_dir(workdir) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / "checkpoints"


def manager(workdir, *, keep: int = 3, keep_every: int | None = None, async_save: bool = True,
            read_only: bool = False) -> ocp.CheckpointManager:
    """Keep the latest `keep` checkpoints plus every `keep_every`-th step."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every, enable_async_checkpointing=async_save,
        create=not read_only)
    handlers = {"params": ocp.StandardCheckpointHandler(),
                "train": ocp.StandardCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    try:
        import grain

        handlers["data"] = grain.checkpoint.CheckpointHandler()
    except ImportError:  # pragma: no cover - grain is a dependency
        pass
    return ocp.CheckpointManager(checkpoint_dir(workdir), item_names=ITEMS,
                                 item_handlers=handlers, options=options)


def item_manager(directory, item_names, *, keep: int = 1) -> ocp.CheckpointManager:
    """A synchronous manager of named items in `directory` (created when missing), keeping
    the latest `keep` steps: the checkpoints of tools other than pretraining, such as
    fine-tuning's per-epoch state. Save and restore with `ocp.args.Composite` of the items
    (e.g. StandardSave / JsonSave); each step is written atomically."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                           create=True)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), item_names=tuple(item_names),
                                 options=options)


def save(mngr: ocp.CheckpointManager, step: int, *, params, train=None, data_iterator=None,
         config: dict, force: bool = False) -> bool:
    args = {"params": ocp.args.StandardSave(params), "config": ocp.args.JsonSave(config)}
    if train is not None:
        args["train"] = ocp.args.StandardSave(train)
    if data_iterator is not None:
        import grain

        args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def latest_step(workdir) -> int | None:
    path = checkpoint_dir(workdir)
    if not path.exists():
        return None
    return manager(workdir, read_only=True).latest_step()


def _resolve_step(workdir, step: int | None) -> int:
    if not checkpoint_dir(workdir).is_dir():
        raise FileNotFoundError(f"no checkpoint directory {checkpoint_dir(workdir)}")
    mngr = manager(workdir, read_only=True)
    steps = mngr.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    if step is None:
        return max(steps)
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {checkpoint_dir(workdir)}; "
                                f"available steps: {sorted(steps)}")
    return step


def read_config(workdir, step: int | None = None) -> dict:
    step = _resolve_step(workdir, step)
    mngr = manager(workdir, read_only=True)
    return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def model_config(config: dict) -> tuple[ModelConfig, str]:
    """(ModelConfig, model kind) from a resolved run config."""
    try:
        return config_from_dict(config["model"]["config"]), config["model"]["kind"]
    except KeyError as err:
        raise ValueError(f"run config has no model section ({err}); keys: {sorted(config)}") from None


def restore_params(workdir, step: int | None = None, abstract=None) -> tuple[Any, int]:
    """(params nested dict, step). `abstract` (ShapeDtypeStructs, maybe sharded) places them."""
    step = _resolve_step(workdir, step)
    mngr = manager(workdir, read_only=True)
    arg = ocp.args.StandardRestore(abstract) if abstract is not None else ocp.args.StandardRestore()
    out = mngr.restore(step, args=ocp.args.Composite(params=arg))
    params = out["params"] if abstract is not None else _int_keys(out["params"])
    return params, step


def _int_keys(tree):
    """Orbax stores dict keys as strings; list indices of the module tree are ints."""
    if isinstance(tree, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v)
                for k, v in tree.items()}
    return tree


def write_params_checkpoint(workdir, params, config: dict, step: int = 0) -> pathlib.Path:
    """A parameters-only checkpoint (e.g. an imported model) that pretraining can
    initialise from and evaluation can read."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mngr = manager(workdir, async_save=False)
    save(mngr, step, params=params, config=config, force=True)
    mngr.wait_until_finished()
    mngr.close()
    (workdir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return checkpoint_dir(workdir) / str(step)


# --------------------------------------------------------------------------- any model


@dataclasses.dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint: `model` (an nnx.Module of `kind`), its config,
    the step it was saved at, the resolved run config (where there is one) and where it
    came from ("workdir" or "export")."""

    model: Any
    cfg: ModelConfig
    kind: str
    step: int
    run_config: dict
    source: str = "workdir"


EXPORT_FILES = ("model.safetensors", "weights.pth")  # torch_bridge's two formats


def describe_path(path) -> tuple[str, pathlib.Path, int | None]:
    """What a path holds: ("workdir", workdir, step) for a pretraining workdir, its
    `checkpoints/` folder or one `checkpoints/<step>/` folder; ("export", dir, None) for a
    torch_bridge export (config.json + model.safetensors or weights.pth).

    Raises FileNotFoundError naming what was expected when it is none of these.
    """
    path = pathlib.Path(path).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        if (path / "checkpoints").is_dir():
            return "workdir", path, None
        if path.name == "checkpoints":
            return "workdir", path.parent, None
        if path.parent.name == "checkpoints" and path.name.isdigit():
            return "workdir", path.parent.parent, int(path.name)
        if (path / "config.json").is_file() and any((path / f).is_file() for f in EXPORT_FILES):
            return "export", path, None
    raise FileNotFoundError(
        f"{path} is not a checkpoint: expected a pretraining workdir (with checkpoints/), a "
        f"checkpoint step directory (checkpoints/<step>/) or a torch_bridge export (config.json "
        f"with {' or '.join(EXPORT_FILES)})")


def load_model(path, step: int | None = None) -> LoadedModel:
    """The model stored at `path`, whatever it is (see `describe_path`); the latest step of
    a workdir unless `step` is given. Parameters are placed into an abstract model, so
    nothing is initialised twice."""
    import jax
    import jax.numpy as jnp
    from flax import nnx, traverse_util

    from spacenit_jax.model import models

    what, where, path_step = describe_path(path)
    if what == "export":
        if step is not None:
            raise ValueError(f"{where} is an export of one step; --step does not apply")
        from torch_bridge import import_checkpoint as im

        src = im.read_source(where)
        flat = im.state_dict_to_params(src.cfg, src.kind, src.state_dict,
                                       where=str(src.weights_file))
        cfg, kind, params, step = src.cfg, src.kind, traverse_util.unflatten_dict(flat), src.step
        run_config = {"model": {"config": config_to_dict(cfg), "kind": kind},
                      "imported_from": {"source": str(where), "format": src.format}}
    else:
        if path_step is not None:
            if step is not None and step != path_step:
                raise ValueError(f"{path} is the checkpoint of step {path_step}, not {step}")
            step = path_step
        run_config = read_config(where, step)
        cfg, kind = model_config(run_config)
        params, step = restore_params(where, step)
    abstract = nnx.eval_shape(lambda: models.build_model(cfg, kind))
    graphdef, state, rest = nnx.split(abstract, nnx.Param, ...)
    try:
        nnx.replace_by_pure_dict(state, params)
    except (KeyError, ValueError) as err:
        raise ValueError(f"checkpoint {where} (step {step}): parameters do not fit a {kind} "
                         f"built from its own config: {err}") from None
    missing = [jax.tree_util.keystr(p) for p, leaf in jax.tree_util.tree_leaves_with_path(state)
               if isinstance(leaf, jax.ShapeDtypeStruct)]
    if missing:
        raise ValueError(f"checkpoint {where} (step {step}) lacks parameters {missing[:5]} "
                         f"({len(missing)} in all) of a {kind}")
    state = jax.tree.map(jnp.asarray, state)
    return LoadedModel(nnx.merge(graphdef, state, rest), cfg, kind, int(step), run_config, what)
