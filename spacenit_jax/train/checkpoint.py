"""The checkpoint layout of a pretraining workdir, shared by pretraining, export and eval.

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

import json
import pathlib
from typing import Any

import orbax.checkpoint as ocp

from spacenit_jax.model.config import ModelConfig, config_from_dict

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
