"""The pretraining loop: config -> mesh, data, sharded state, one compiled step, checkpoints.

Start-up validates everything that can be checked before spending compute (config
fields, mesh vs devices, rows vs mesh and microbatches, dataset presence) and fails with
a clear message. The step is compiled once, ahead of time, for the run's fixed batch
shapes; calling it with other shapes is an error, so a run can never silently
recompile. Metrics of step t are fetched while step t+1 runs (no host-device sync in
the step). A checkpoint holds parameters, optimizer state, step, rng and every
process's data-iterator state, so a restarted run continues exactly; SIGTERM writes one
before exiting.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import signal
import time

import jax
from flax import nnx
from ml_collections import ConfigDict

from spacenit_jax import checkpoint, sharding, tracing
from spacenit_jax.model.config import ModelConfig, config_to_dict, make_config
from spacenit_jax.train import flops, multihost, objectives, step, tracking

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


def check_position_limits(model_cfg: ModelConfig, plan) -> None:
    """The original's position tables stop at max_grid / max_timesteps (it raises beyond);
    our RoPE is analytic and would silently go past them, so refuse such data plans."""
    for s in plan.shapes:
        if s.hw_p > model_cfg.max_grid:
            raise ValueError(f"data crop size hw_p={s.hw_p} patches a side exceeds the model's "
                             f"max_grid {model_cfg.max_grid} (config.data.hw_p_list)")
        if s.t_out > model_cfg.max_timesteps:
            raise ValueError(f"data crop size hw_p={s.hw_p} keeps {s.t_out} timesteps, more than "
                             f"the model's max_timesteps {model_cfg.max_timesteps}")


def model_config(config: ConfigDict) -> ModelConfig:
    m = config.model
    overrides = {k: v for k, v in m.overrides.items() if v is not None}
    extra = {k: m[k] for k in ("compute_dtype", "scan_layers", "remat", "attention_impl")
             if m[k] is not None}
    return make_config(m.preset, m.size, tuple(m.sensor_labels), **overrides, **extra)


def objective_config(config: ConfigDict) -> objectives.ObjectiveConfig:
    return objectives.ObjectiveConfig(**config.objective.to_dict())


def resolve_dataset(config: ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
    """The configured dataset, or the synthetic default generated into the workdir."""
    from spacenit_jax.data import synthetic

    if config.data.path:
        path = pathlib.Path(config.data.path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"dataset directory {path} does not exist (config.data.path); point it at the "
                "<num_samples> directory of an H5 dataset, or leave it empty to generate the "
                "synthetic default")
        return path
    root = workdir / "data"
    spec = synthetic.SyntheticSpec(config.data.synthetic_samples,
                                   tuple(config.model.sensor_labels), config.seed,
                                   config.data.synthetic_tile_size)
    if multihost.is_main():
        path = synthetic.make_dataset(root, spec)
    multihost.barrier("synthetic-dataset")
    return spec.directory(root) if not multihost.is_main() else path


def pipeline_config(config: ConfigDict, path, objective: objectives.ObjectiveConfig):
    from spacenit_jax.data.pipeline import PipelineConfig

    d = config.data.to_dict()
    for key in ("path", "synthetic_samples", "synthetic_tile_size"):
        d.pop(key)
    if not objective.masked:
        d["masking"] = "none"
    return PipelineConfig.from_config_dict(
        {**d, "path": str(path), "num_views": objective.num_views, "seed": config.seed})


def check_layout(config: ConfigDict, mesh) -> None:
    rows = config.data.rows * jax.process_count()
    parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % parallel:
        raise ValueError(f"{rows} rows per step ({config.data.rows} per process x "
                         f"{jax.process_count()} processes) cannot be split over the "
                         f"data x fsdp = {parallel} devices of the mesh")
    per_device = rows // parallel
    if per_device % config.microbatches:
        raise ValueError(f"{per_device} rows per device cannot be split into "
                         f"{config.microbatches} microbatches")


def state_shardings(mesh, abstract_state: step.TrainState):
    """Parameters by their logical axes; the EMA target and optimizer moments follow the
    parameters they mirror; scalars replicated."""
    return sharding.state_shardings(mesh, abstract_state)


def global_batch(mesh, views: dict):
    def put(x):
        return jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, x.ndim), x)

    return jax.tree.map(put, views)


def full_params(state: step.TrainState) -> dict:
    """All model parameters (online and EMA target) as one nested dict."""
    out = nnx.to_pure_dict(state.params["model"])
    out.update(nnx.to_pure_dict(state.target))
    return out


def _fill(template, pure: dict):
    state = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(state, pure)
    return state


def with_params(state: step.TrainState, pure: dict, *, strict: bool = True) -> step.TrainState:
    """Put a full-parameter dict (e.g. restored or imported) into a train state."""
    online_keys = set(nnx.to_pure_dict(state.params["model"]))
    target_keys = set(nnx.to_pure_dict(state.target))
    given = set(pure)
    extra = given - online_keys - target_keys
    if extra:
        raise ValueError(f"parameters for modules the model does not have: {sorted(extra)}")
    missing = (online_keys | target_keys) - given
    pure = dict(pure)
    if missing and "target_encoder" in missing and "encoder" in given:
        pure["target_encoder"] = pure["encoder"]  # the target starts as a copy
        missing.discard("target_encoder")
    if strict and missing:
        raise ValueError(f"the checkpoint has no parameters for {sorted(missing)}")
    online = dict(nnx.to_pure_dict(state.params["model"]))
    online.update({k: v for k, v in pure.items() if k in online_keys})
    target = dict(nnx.to_pure_dict(state.target))
    target.update({k: v for k, v in pure.items() if k in target_keys})
    params = dict(state.params, model=_fill(state.params["model"], online))
    return state._replace(params=params, target=_fill(state.target, target))


def _train_item(state: step.TrainState) -> dict:
    return {"opt_state": state.opt_state, "loss": state.params["loss"], "step": state.step,
            "rng": state.rng, "nonfinite": state.nonfinite}


def run_config(config: ConfigDict, model_cfg: ModelConfig, kind: str) -> dict:
    out = json.loads(config.to_json_best_effort())
    out["model"] = {"config": config_to_dict(model_cfg), "kind": kind, "run": out["model"]}
    return out


class _Preemption:
    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: checkpointing after the current step")
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


@dataclasses.dataclass
class Trainer:
    """Everything a run needs, built from a config; `train()` runs the loop."""

    config: ConfigDict
    workdir: pathlib.Path
    model_cfg: ModelConfig
    objective: objectives.ObjectiveConfig
    mesh: object
    pipeline: object
    tx: object
    schedule: object
    graphdef: object
    state_sharding: object
    abstract_state: object

    @classmethod
    def create(cls, config: ConfigDict, workdir) -> Trainer:
        multihost.maybe_initialize()
        workdir = pathlib.Path(workdir).absolute()
        model_cfg = model_config(config)
        objective = objective_config(config)
        mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
        check_layout(config, mesh)
        from spacenit_jax.data.pipeline import make_pipeline

        data_path = resolve_dataset(config, workdir)
        pipeline = make_pipeline(pipeline_config(config, data_path, objective), model_cfg.layout)
        check_position_limits(model_cfg, pipeline.plan)
        tx, schedule = step.make_optimizer(step.OptimizerConfig(**config.optimizer.to_dict()),
                                           config.total_steps)
        init = functools.partial(step.init_train_state, model_cfg, objective, tx,
                                 seed=config.seed)
        abstract_state = jax.eval_shape(init)
        graphdef, _, _ = step.split_model(step.abstract_model(model_cfg, objective.model_kind))
        return cls(config, workdir, model_cfg, objective, mesh, pipeline, tx, schedule, graphdef,
                   state_shardings(mesh, abstract_state), abstract_state)

    def init_state(self) -> step.TrainState:
        init = functools.partial(step.init_train_state, self.model_cfg, self.objective, self.tx,
                                 seed=self.config.seed)
        state = jax.jit(init, out_shardings=self.state_sharding)()
        if self.config.init_from:
            pure, src_step = checkpoint.restore_params(self.config.init_from)
            state = with_params(state, pure, strict=False)
            state = jax.device_put(state, self.state_sharding)
            log.info("initialised parameters from %s (step %d)", self.config.init_from, src_step)
        return state

    def abstract_with_shardings(self):
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            self.abstract_state, self.state_sharding)

    def restore(self, mngr, step_number: int, iterator):
        import orbax.checkpoint as ocp

        abstract = self.abstract_with_shardings()
        params_abstract = full_params(abstract)
        args = {"params": ocp.args.StandardRestore(params_abstract),
                "train": ocp.args.StandardRestore(_train_item(abstract))}
        if iterator is not None:
            import grain

            args["data"] = grain.checkpoint.CheckpointRestore(iterator)
        out = mngr.restore(step_number, args=ocp.args.Composite(**args))
        train = out["train"]
        state = abstract._replace(opt_state=train["opt_state"], step=train["step"],
                                  rng=train["rng"], nonfinite=train["nonfinite"],
                                  params=dict(abstract.params, loss=train["loss"]))
        return with_params(state, out["params"])

    def compile(self, state, views):
        fn = step.make_train_step(self.graphdef, self.model_cfg, self.objective, self.tx,
                                  self.schedule, self.config.microbatches, mesh=self.mesh)
        batch_sharding = jax.tree.map(lambda x: x.sharding, views)
        jitted = jax.jit(fn, in_shardings=(self.state_sharding, batch_sharding),
                         out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
                         donate_argnums=0)
        return jitted.lower(state, views).compile()

    def train(self) -> dict:
        """Run (or resume) until total_steps; returns a small summary."""
        c = self.config
        main = multihost.is_main()
        self.workdir.mkdir(parents=True, exist_ok=True)
        resolved = run_config(c, self.model_cfg, self.objective.model_kind)
        if main:
            (self.workdir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
        mngr = checkpoint.manager(self.workdir, keep=c.checkpoint.keep,
                                  keep_every=c.checkpoint.keep_every,
                                  async_save=c.checkpoint.async_save)
        iterator = iter(self.pipeline.dataset)
        multihost.barrier("start")  # processes may be far apart after start-up and compiles
        latest = mngr.latest_step()
        if latest is not None:
            state = self.restore(mngr, latest, iterator)
            log.info("resumed from step %d", latest)
        else:
            state = self.init_state()
        start = int(jax.device_get(state.step))
        tracker = tracking.Tracker(self.workdir, total_steps=c.total_steps, config=resolved,
                                   enabled=main, wandb_mode=c.wandb.mode,
                                   wandb_project=c.wandb.project, wandb_entity=c.wandb.entity,
                                   start_step=start)
        evaluator = self._evaluator()
        preempt = _Preemption()
        compiled = None
        pending = None
        consecutive_skips = 0
        last_time = time.perf_counter()
        summary = {"start_step": start, "status": "completed"}
        peak = c.peak_flops_per_device * jax.device_count()
        try:
            for s in range(start, c.total_steps):
                t0 = time.perf_counter()
                host = next(iterator)
                data_wait = time.perf_counter() - t0
                views = {k: v for k, v in host.items() if k.startswith("view_")}
                batch = global_batch(self.mesh, views)
                if compiled is None:
                    before = tracing.trace_count("train_step")
                    compiled = self.compile(state, batch)
                    multihost.barrier("step-compiled")  # enter the first collective together
                state, metrics = compiled(state, batch)
                info = self._host_info(host, views)
                if pending is not None:
                    consecutive_skips = self._log(tracker, pending, consecutive_skips, peak)
                now = time.perf_counter()
                pending = (s + 1, metrics, info, data_wait, now - last_time)
                last_time = now
                if consecutive_skips > c.max_nonfinite_steps:
                    summary["status"] = "nonfinite"
                    break
                stop = preempt.requested or s + 1 == c.stop_at_step
                if jax.process_count() > 1 and (s + 1) % 10 == 0:
                    stop = multihost.any_process(stop)
                if (s + 1) % c.checkpoint.every == 0 or stop or s + 1 == c.total_steps:
                    checkpoint.save(mngr, s + 1, params=full_params(state),
                                    train=_train_item(state), data_iterator=iterator,
                                    config=resolved, force=True)
                if evaluator is not None:
                    eval_metrics = evaluator.maybe_evaluate(
                        s + 1, nnx.merge(self.graphdef, state.params["model"], state.target))
                    if eval_metrics:
                        tracker.log(s + 1, eval_metrics)
                if stop:
                    summary["status"] = "preempted"
                    break
            if pending is not None:
                consecutive_skips = self._log(tracker, pending, consecutive_skips, peak)
            if summary["status"] == "nonfinite" or consecutive_skips > c.max_nonfinite_steps:
                step_now = int(jax.device_get(state.step))
                checkpoint.save(mngr, step_now, params=full_params(state),
                                train=_train_item(state), data_iterator=iterator,
                                config=resolved, force=True)
                mngr.wait_until_finished()
                raise NonFiniteLossError(
                    f"{consecutive_skips} consecutive steps had a non-finite loss or gradient "
                    f"(limit max_nonfinite_steps={c.max_nonfinite_steps}); checkpoint saved at "
                    f"step {step_now} in {checkpoint.checkpoint_dir(self.workdir)}")
        finally:
            mngr.wait_until_finished()
            mngr.close()
            tracker.close()
            preempt.restore()
        compilations = tracing.trace_count("train_step") - before if compiled is not None else 0
        if compilations > 1:
            raise RuntimeError(f"the train step was compiled {compilations} times in one run")
        summary.update(final_step=int(jax.device_get(state.step)),
                       step_compilations=compilations,
                       nonfinite=int(jax.device_get(state.nonfinite)))
        self.final_state = state
        return summary

    def _host_info(self, host: dict, views: dict) -> dict:
        real = sum(int((v.tokens.segment >= 0).sum()) for v in views.values())
        return {"patch_size": int(host["patch_size"]), "hw_p": int(host["hw_p"]),
                "samples": int(host["num_samples"]) * jax.process_count(),
                "input_tokens": real * jax.process_count(),
                "flops": flops.train_step_flops(self.model_cfg, views, self.objective.masked)
                * jax.process_count()}

    def _log(self, tracker, pending, consecutive_skips: int, peak: float) -> int:
        step_number, metrics, info, data_wait, step_s = pending
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        consecutive_skips = consecutive_skips + 1 if m["skipped"] > 0 else 0
        if step_number % self.config.log_every == 0 or step_number == self.config.total_steps:
            m.update({"data/patch_size": info["patch_size"], "data/hw_p": info["hw_p"],
                      "time/step_s": step_s, "time/data_wait_s": data_wait,
                      "throughput/samples_per_s": info["samples"] / step_s,
                      "throughput/tokens_per_s": info["input_tokens"] / step_s,
                      "throughput/mfu": info["flops"] / step_s / peak,
                      "nonfinite/consecutive": consecutive_skips})
            tracker.log(step_number, m)
        return consecutive_skips

    def _evaluator(self):
        if not self.config.eval.tasks:
            return None
        from spacenit_jax.eval.hook import InLoopEvaluator

        return InLoopEvaluator.from_config(self.config.eval, self.model_cfg, mesh=self.mesh)


def train(config: ConfigDict, workdir) -> dict:
    return Trainer.create(config, workdir).train()
