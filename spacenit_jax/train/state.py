"""The train state, with one parameter layout from initialisation to evaluation.

`TrainState.params` holds every parameter of the model, online modules and EMA targets
together, as one nnx.State: exactly the tree `nnx.split(model, nnx.Param)` gives. The same
tree is what a checkpoint stores (its "params" item, as the nested dict of
`nnx.to_pure_dict`), what `checkpoint.load_model`, the torch export and `init_from` read,
and what evaluation merges into the model (`nnx.merge(graphdef, state.params)`). Only the
train step looks inside it: it differentiates the online part and moves each EMA target
towards its online module. Which module is the EMA target of which is
`models.EMA_PAIRS`, the one place that names them.

The optimizer state mirrors the trainable parameters {"model": online part, "loss": loss
parameters}.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spacenit_jax.model import models
from spacenit_jax.model.config import ModelConfig
from spacenit_jax.train import objectives

EMA_TARGETS = tuple(dst for _, dst in models.EMA_PAIRS)
_TARGET = nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(name) for name in EMA_TARGETS)))


class TrainState(NamedTuple):
    params: Any  # nnx.State of every model parameter (online and EMA targets)
    loss: Any  # dict of loss parameters (the learned InfoNCE log-temperature)
    opt_state: Any  # optimizer state of trainable(state)
    step: jax.Array  # int32, optimizer steps done
    rng: jax.Array  # uint32[2] raw key (checkpointable)
    nonfinite: jax.Array  # int32, updates skipped because of a non-finite loss/gradient


def split_model(model) -> tuple[Any, Any]:
    """(graphdef, params State) of a model (every variable of our models is a Param)."""
    return nnx.split(model, nnx.Param)


def split_params(params) -> tuple[Any, Any]:
    """(online, EMA target) parts of a params State (the target part may be empty)."""
    target, online = nnx.split_state(params, _TARGET, nnx.Param)
    return online, target


def merge_params(online, target):
    return nnx.merge_state(online, target)


def trainable(params, loss) -> dict:
    """What the optimizer updates: the online parameters and the loss parameters."""
    return {"model": split_params(params)[0], "loss": loss}


def ema_update(target, online, momentum):
    """target <- m * target + (1 - m) * online for each (online, target) module pair."""
    out = jax.tree.map(lambda x: x, target)  # same State structure, new containers
    for src, dst in models.EMA_PAIRS:
        if dst in target:
            out[dst] = jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o,
                                    target[dst], online[src])
    return out


def init_train_state(model_cfg: ModelConfig, objective: objectives.ObjectiveConfig, tx, *,
                     seed: int) -> TrainState:
    """A fresh TrainState (call under jax.jit with out_shardings to create it sharded)."""
    model = models.build_model(model_cfg, objective.model_kind, seed=seed)
    _, params = split_model(model)
    loss = objectives.init_loss_params(objective)
    return TrainState(params=params, loss=loss, opt_state=tx.init(trainable(params, loss)),
                      step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed + 1),
                      nonfinite=jnp.zeros((), jnp.int32))


def abstract_model(model_cfg: ModelConfig, kind: str):
    return nnx.eval_shape(lambda: models.build_model(model_cfg, kind))


def model(graphdef, state: TrainState):
    """The model at this state (shares the state's arrays; nothing is copied)."""
    return nnx.merge(graphdef, state.params)


def pure_params(state: TrainState) -> dict:
    """Every model parameter as the nested dict a checkpoint stores."""
    return nnx.to_pure_dict(state.params)


def with_params(state: TrainState, pure: dict, *, strict: bool = True) -> TrainState:
    """`state` with its parameters replaced by a nested dict (restored or imported).

    A missing EMA target whose online module is given starts as a copy of it (what the
    EMA target is at step 0), e.g. for an encoder-only import. strict=False keeps the
    state's own values for other missing modules; modules the model does not have are
    errors either way.
    """
    have = set(nnx.to_pure_dict(state.params))
    extra = set(pure) - have
    if extra:
        raise ValueError(f"parameters for modules the model does not have: {sorted(extra)}")
    pure = dict(pure)
    for src, dst in models.EMA_PAIRS:
        if dst in have and dst not in pure and src in pure:
            pure[dst] = pure[src]
    missing = have - set(pure)
    if strict and missing:
        raise ValueError(f"the checkpoint has no parameters for {sorted(missing)}")
    full = nnx.to_pure_dict(state.params)
    full.update(pure)
    params = jax.tree.map(lambda x: x, state.params)
    nnx.replace_by_pure_dict(params, full)
    return state._replace(params=params)


# ------------------------------------------------------------------------ checkpoint items


def checkpoint_items(state: TrainState, next_batch: int) -> dict:
    """The "params" and "train" items of a checkpoint. next_batch: the global index of the
    batch the run reads next (batches are pure functions of it, whatever the worker count)."""
    return {"params": pure_params(state),
            "train": {"opt_state": state.opt_state, "loss": state.loss, "step": state.step,
                      "rng": state.rng, "nonfinite": state.nonfinite,
                      "next_batch": np.int64(next_batch)}}


def train_item_template(abstract: TrainState, with_next_batch: bool = True) -> dict:
    item = checkpoint_items(abstract, 0)["train"]
    if with_next_batch:
        item["next_batch"] = jax.ShapeDtypeStruct((), np.int64)
    else:  # checkpoints written before next_batch was stored
        del item["next_batch"]
    return item


def from_checkpoint(abstract: TrainState, params: dict, train: dict) -> tuple[TrainState, int]:
    """(TrainState, next batch index) from restored items; a checkpoint without
    next_batch read one batch per step."""
    state = abstract._replace(opt_state=train["opt_state"], loss=train["loss"],
                              step=train["step"], rng=train["rng"],
                              nonfinite=train["nonfinite"])
    state = with_params(state, params)
    next_batch = train.get("next_batch")
    next_batch = int(jax.device_get(state.step if next_batch is None else next_batch))
    return state, next_batch
