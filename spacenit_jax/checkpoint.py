"""Checkpoints: the layout of a pretraining workdir, saving, restoring, and "load a model
from anything". Pretraining, evaluation, fine-tuning, export and inference all use this
module.

    <workdir>/checkpoints/<step>/
        params/   every model parameter (online and EMA target) as a nested dict: the tree
                  of nnx.split(model, nnx.Param) (see spacenit_jax.train.state)
        train/    optimizer state, loss parameters, step, rng, counters and the global
                  index of the next batch to read
        config/   the resolved run config (JSON; its keys are the --config.* override paths)
    <workdir>/config.json   the same resolved config, for humans and tools

Orbax writes each step atomically (a temporary directory renamed on commit) and, by
default, asynchronously. Parameters are kept apart from the optimizer state, so export,
evaluation and parameter-only initialisation read just what they need. The data position
is one integer (`next_batch`): every batch is a pure function of its global index, so a
run resumes with any number of data workers. Checkpoints written before it was stored
(with a per-process Grain iterator item `data/`) read one batch per step, and still restore.

`CheckpointStore` opens one Orbax CheckpointManager for all the work on a directory (open
it once per use: `with CheckpointStore(workdir) as store: ...`). `item_manager()` builds a
bare manager for other layouts (e.g. fine-tuning's). A damaged checkpoint (a file missing, an
empty step directory) is never deleted: `restore_latest` falls back to the newest one that
restores and names the damaged ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import orbax.checkpoint as ocp

from spacenit_jax.model.config import ModelConfig, config_from_dict, config_to_dict

log = logging.getLogger(__name__)

DAMAGED_DIR = "checkpoints_damaged"  # where damaged steps are moved to (beside checkpoints/)


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
    """When a run saves and what it keeps."""

    every: int = 1000  # save every N steps (and at the end, at a stop, on preemption)
    keep: int = 3  # keep the latest N checkpoints...
    keep_every: int | None = None  # ...plus every keep_every-th step
    async_save: bool = True  # write in the background while training continues


def checkpoint_dir(workdir) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / "checkpoints"


def item_manager(directory, item_names, *, keep: int | None = 1,
                 keep_every: int | None = None, async_save: bool = False,
                 read_only: bool = False, handlers: Mapping[str, Any] | None = None
                 ) -> ocp.CheckpointManager:
    """An Orbax CheckpointManager of named items in `directory` (created when missing unless
    read_only), keeping the latest `keep` steps (None: all) plus every `keep_every`-th,
    synchronous unless async_save: the checkpoints of tools other than pretraining, such as
    fine-tuning's per-epoch state, and the CheckpointStore's own. Save and restore with
    `ocp.args.Composite` of the items (e.g. StandardSave / JsonSave), which tells Orbax each
    item's handler; `handlers` (name -> CheckpointHandler) names them up front instead.
    Each step is written atomically."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every, enable_async_checkpointing=async_save,
        create=not read_only, read_only=read_only)
    names = tuple(dict.fromkeys([*item_names, *(handlers or {})]))
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), item_names=names,
                                 item_handlers=dict(handlers) if handlers else None,
                                 options=options)


def _store_handlers() -> dict[str, Any]:
    import grain

    return {"params": ocp.StandardCheckpointHandler(),
            "train": ocp.StandardCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
            # checkpoints written before the next-batch index: each process's Grain
            # iterator state; never written again, known so that Orbax does not warn
            "data": grain.checkpoint.CheckpointHandler()}


class DamagedCheckpointError(RuntimeError):
    """No checkpoint of a directory could be restored."""


class CheckpointStore:
    """The checkpoints of one workdir, through one Orbax manager (see module docstring)."""

    def __init__(self, workdir, policy: CheckpointPolicy | None = None, *,
                 read_only: bool = False):
        self.workdir = pathlib.Path(workdir).absolute()
        self.directory = checkpoint_dir(self.workdir)
        self.policy = policy or CheckpointPolicy()
        self.read_only = read_only
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(f"no checkpoint directory {self.directory}")
        self.manager = item_manager(self.directory, ("params", "train", "config"),
                                    keep=self.policy.keep, keep_every=self.policy.keep_every,
                                    async_save=self.policy.async_save, read_only=read_only,
                                    handlers=_store_handlers())

    # -- context -------------------------------------------------------------------------
    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # -- steps ---------------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def resolve_step(self, step: int | None = None) -> int:
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                    f"available steps: {steps}")
        return step

    # -- save / restore ------------------------------------------------------------------
    def save(self, step: int, *, params, config: dict, train=None, force: bool = False
             ) -> bool:
        args = {"params": ocp.args.StandardSave(params), "config": ocp.args.JsonSave(config)}
        if train is not None:
            args["train"] = ocp.args.StandardSave(train)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, step: int, **items) -> dict:
        """Restore the named items of `step`: params= / train= an abstract tree
        (ShapeDtypeStructs, maybe sharded) or None (as saved, numpy), config=True."""
        args = {}
        for name, target in items.items():
            if name == "config":
                args[name] = ocp.args.JsonRestore()
            elif target is None:
                args[name] = ocp.args.StandardRestore()
            else:
                args[name] = ocp.args.StandardRestore(target)
        return dict(self.manager.restore(step, args=ocp.args.Composite(**args)))

    def item_keys(self, step: int, item: str) -> set[str]:
        """Top-level keys of a stored pytree item (from its metadata, no arrays read)."""
        meta = self.manager.item_metadata(step)[item]
        tree = getattr(meta, "tree", meta)
        return set(tree.keys()) if tree is not None else set()

    def read_config(self, step: int | None = None) -> dict:
        return self.restore(self.resolve_step(step), config=True)["config"]

    def restore_params(self, step: int | None = None, abstract=None) -> tuple[Any, int]:
        """(params nested dict, step). `abstract` (ShapeDtypeStructs, maybe sharded) places
        them; without it they come back as saved (list indices as int keys)."""
        step = self.resolve_step(step)
        params = self.restore(step, params=abstract)["params"]
        return (params if abstract is not None else _int_keys(params)), step

    def restore_latest(self, restore: Callable[[int], Any], *, move_damaged: bool = True
                       ) -> tuple[int, Any] | None:
        """(step, restore(step)) for the newest step that restores; None without any step.

        A step whose restore raises is damaged: a one-line warning names it and the next
        older step is tried. Damaged steps newer than the restored one are moved (never
        deleted) to <workdir>/checkpoints_damaged/<step> when `move_damaged` (so the run
        can save those steps again); the caller must make every process wait for that
        (only process 0 should pass move_damaged=True). If no step restores, raises
        DamagedCheckpointError naming each step and its error.
        """
        errors = []
        for step in reversed(self.steps()):
            try:
                out = restore(step)
            except Exception as err:  # any way a checkpoint can be broken
                from spacenit_jax.cli import one_line

                errors.append((step, f"{type(err).__name__}: {one_line(err)}"))
                log.warning("checkpoint step %d in %s is damaged and is not used (%s)", step,
                            self.directory, errors[-1][1][:300])
                continue
            if errors and move_damaged and not self.read_only:
                for bad, _ in errors:
                    self._move_aside(bad)
            if errors:
                self.manager.reload()
                log.warning("resuming from checkpoint step %d (newest intact); damaged: %s",
                            step, ", ".join(str(b) for b, _ in errors))
            return step, out
        if errors:
            raise DamagedCheckpointError(
                f"no checkpoint in {self.directory} can be restored: "
                + "; ".join(f"step {s}: {e[:200]}" for s, e in errors))
        return None

    def _move_aside(self, step: int) -> None:
        src = self.directory / str(step)
        if not src.exists():
            return
        root = self.workdir / DAMAGED_DIR
        root.mkdir(exist_ok=True)
        dst, n = root / str(step), 1
        while dst.exists():
            dst, n = root / f"{step}.{n}", n + 1
        src.rename(dst)
        log.warning("moved damaged checkpoint step %d to %s", step, dst)


def open_store(workdir) -> CheckpointStore:
    """A read-only store of a workdir (FileNotFoundError naming it when it has none)."""
    return CheckpointStore(workdir, read_only=True)


def latest_step(workdir) -> int | None:
    if not checkpoint_dir(workdir).is_dir():
        return None
    with open_store(workdir) as store:
        return store.latest_step()


def read_config(workdir, step: int | None = None) -> dict:
    with open_store(workdir) as store:
        return store.read_config(step)


def restore_params(workdir, step: int | None = None, abstract=None) -> tuple[Any, int]:
    """(params nested dict, step) of a workdir's checkpoint (the latest unless `step`)."""
    with open_store(workdir) as store:
        return store.restore_params(step, abstract)


def model_config(config: dict) -> tuple[ModelConfig, str]:
    """(ModelConfig, model kind) from a checkpoint's config: a pretraining run config
    (model section with preset / size / overrides) or a model description
    {"model": {"config": ..., "kind": ...}} (imports, parameter-only checkpoints, and runs
    written before run configs kept their override keys)."""
    model = config.get("model")
    if not isinstance(model, Mapping):
        raise ValueError(f"run config has no model section; keys: {sorted(config)}")
    if "config" in model:
        try:
            return config_from_dict(model["config"]), model["kind"]
        except KeyError as err:
            raise ValueError(f"model description lacks {err}; keys: {sorted(model)}") from None
    from spacenit_jax.train import config as run_config

    try:
        return run_config.model_config(config), run_config.model_kind(config)
    except KeyError as err:
        raise ValueError(f"run config lacks {err} (model / objective sections)") from None


def model_description(cfg: ModelConfig, kind: str, **extra) -> dict:
    """The config a parameter-only checkpoint stores: {"model": {"config", "kind"}, ...}."""
    return {"model": {"config": config_to_dict(cfg), "kind": kind}, **extra}


def _int_keys(tree):
    """Orbax stores dict keys as strings; list indices of the module tree are ints."""
    if isinstance(tree, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v)
                for k, v in tree.items()}
    return tree


def write_params_checkpoint(workdir, params, config: dict, step: int = 0) -> pathlib.Path:
    """A parameters-only checkpoint (e.g. an imported model) that pretraining can
    initialise from and evaluation can read. config: a model description
    (`model_description`) or a run config."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with CheckpointStore(workdir, CheckpointPolicy(async_save=False)) as store:
        store.save(step, params=params, config=config, force=True)
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
        run_config = model_description(cfg, kind, imported_from={"source": str(where),
                                                                 "format": src.format})
    else:
        if path_step is not None:
            if step is not None and step != path_step:
                raise ValueError(f"{path} is the checkpoint of step {path_step}, not {step}")
            step = path_step
        with open_store(where) as store:
            step = store.resolve_step(step)
            run_config = store.read_config(step)
            cfg, kind = model_config(run_config)
            params, step = store.restore_params(step)
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
