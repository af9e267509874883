"""The optimizer, its learning-rate schedule and the pure, jitted train step.

The model is split once into a static graph definition and its parameters (train.state);
the step is a pure function of pytrees (functional NNX): it merges the model inside,
takes gradients of the online parameters with jax.value_and_grad, accumulates them over
microbatches inside the step (lax.scan), applies AdamW, updates the EMA targets, and skips
the whole update (counting it) when the loss or the gradient norm is not finite.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from spacenit_jax import tracing
from spacenit_jax.model import models
from spacenit_jax.model.config import ModelConfig
from spacenit_jax.train import objectives
from spacenit_jax.train.state import TrainState, ema_update, merge_params, split_params, trainable


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.02
    warmup_steps: int = 8000
    final_lr_fraction: float = 0.1  # cosine decays to this fraction of the peak
    max_grad_norm: float | None = 1.0
    decay_norms_and_biases: bool = True  # the original decays every parameter
    # Length of the warm-up + cosine schedule; None: the run's total_steps. Set it to keep
    # a schedule when extending total_steps on resume (the lr then stays at its floor).
    schedule_steps: int | None = None


def cosine_with_warmup(cfg: OptimizerConfig, total_steps: int):
    """The original's CosWithWarmup: linear warm-up, cosine to final_lr_fraction * lr."""
    peak, w, s_max, floor = cfg.lr, cfg.warmup_steps, total_steps, cfg.final_lr_fraction

    def schedule(count):
        s = jnp.asarray(count, jnp.float32) + 1.0  # the first update is step 1
        warm = peak * jnp.minimum(s, w) / max(w, 1)
        frac = jnp.clip((s - w) / max(s_max - w, 1), 0.0, 1.0)
        cos = floor * peak + (1 - floor) * peak * 0.5 * (1 + jnp.cos(jnp.pi * frac))
        return jnp.where(s < w, warm, jnp.where(s >= s_max, floor * peak, cos))

    return schedule


def make_optimizer(cfg: OptimizerConfig, total_steps: int):
    """(AdamW with global-norm clipping, its learning-rate schedule)."""
    schedule = cosine_with_warmup(cfg, cfg.schedule_steps or total_steps)

    mask = None if cfg.decay_norms_and_biases else (
        lambda params: jax.tree.map(lambda x: x.ndim > 1, params))
    parts = []
    if cfg.max_grad_norm:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=mask))
    return optax.chain(*parts), schedule


def microbatches(tree, num: int):
    """(R, ...) leaves -> (num, R // num, ...); microbatch m holds rows m, m+num, ...

    Strided rows keep every microbatch spread over all devices that hold batch rows.
    """
    def split(x):
        r = x.shape[0]
        if r % num:
            raise ValueError(f"{r} rows per batch cannot be split into {num} microbatches")
        return jnp.moveaxis(x.reshape(r // num, num, *x.shape[1:]), 1, 0)

    return jax.tree.map(split, tree)


def make_train_step(graphdef, model_cfg: ModelConfig, objective: objectives.ObjectiveConfig,
                    tx, schedule, num_microbatches: int = 1, mesh=None):
    """The pure train step (state, batch) -> (state, float32 metrics); jit it with the
    run's shardings and donate the state.

    mesh: the mesh the step is compiled for. The model traces under it (as an abstract
    mesh), so its activation sharding constraints and the attention kernel's choice
    (splash on TPU, cuDNN on GPU) follow the mesh's devices, not the host's.
    """
    def loss_fn(train_params, target, batch, key):
        model = nnx.merge(graphdef, train_params["model"], target)
        return objectives.compute_loss(objective, model, train_params["loss"], batch, rng=key)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @tracing.counted("train_step")
    def train_step(state: TrainState, batch):
        if mesh is None:
            return _train_step(state, batch)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return _train_step(state, batch)

    def _train_step(state: TrainState, batch):
        rng, key = jax.random.split(state.rng)
        views = {k: v for k, v in batch.items() if k.startswith("view_")}
        train_params = trainable(state.params, state.loss)
        _, target = split_params(state.params)
        if num_microbatches == 1:
            (loss, metrics), grads = grad_fn(train_params, target, views, key)
        else:
            keys = jax.random.split(key, num_microbatches)
            mbs = microbatches(views, num_microbatches)

            def body(carry, inputs):
                (loss, metrics), grads = grad_fn(train_params, target, *inputs)
                return jax.tree.map(jnp.add, carry, (grads, loss, metrics)), None

            first = jax.tree.map(lambda x: x[0], mbs)
            (loss_s, metrics_s), grads_s = jax.eval_shape(
                grad_fn, train_params, target, first, keys[0])
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                (grads_s, loss_s, metrics_s))
            (grads, loss, metrics), _ = jax.lax.scan(body, zero, (mbs, keys))
            scale = 1.0 / num_microbatches
            grads, loss, metrics = jax.tree.map(lambda x: x * scale, (grads, loss, metrics))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        tokens = token_metrics(views)
        has_tokens = tokens["tokens/real"] > 0  # a batch without any real token teaches nothing
        ok = finite & has_tokens
        updates, opt_state = tx.update(grads, state.opt_state, train_params)
        new = optax.apply_updates(train_params, updates)
        momentum = models.ema_momentum(model_cfg, state.step)
        params = merge_params(new["model"], ema_update(target, new["model"], momentum))

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

        new_state = TrainState(
            params=keep(params, state.params), loss=keep(new["loss"], state.loss),
            opt_state=keep(opt_state, state.opt_state), step=state.step + 1, rng=rng,
            nonfinite=state.nonfinite + (~finite).astype(jnp.int32))
        metrics = dict(metrics)
        metrics.update(loss=loss, grad_norm=grad_norm, lr=schedule(state.step),
                       ema_momentum=momentum, skipped=~ok, nonfinite=~finite,
                       tokenless=~has_tokens)
        metrics.update(tokens)
        return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

    return train_step


def token_metrics(views) -> dict:
    """Real tokens and padding over all token slots of all streams of all views."""
    real, slots = 0, 0
    for view in views.values():
        for seg in (view.tokens.segment, view.online.segment, view.decoder.segment):
            real = real + jnp.sum(seg >= 0)
            slots = slots + seg.size
    samples = jnp.sum(views["view_a"].sample_valid)
    return {"tokens/real": real, "tokens/padding_fraction": 1.0 - real / slots,
            "samples": samples}
