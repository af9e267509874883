"""The pretraining loop: config -> mesh, data, sharded state, one compiled step, hooks.

Start-up validates everything that can be checked before spending compute (config
fields, mesh vs devices, rows vs mesh and microbatches, dataset presence) and fails with
a clear message. The step is compiled once, ahead of time, for the run's fixed batch
shapes; calling it with other shapes is an error, so a run can never silently
recompile. Metrics of step t are fetched while step t+1 runs (no host-device sync in
the step). Checkpointing, logging and evaluation are hooks (train.hooks) at their own
intervals; launch.pretrain adds the in-loop evaluator.

A checkpoint holds the parameters, optimizer state, step, rng and the global index of
the next batch, so a restarted run continues exactly, with any number of data workers;
a damaged newest checkpoint is skipped (named, never deleted) for the newest intact one.
A preemption (SIGTERM) or stop_at_step writes one before stopping. Steps whose loss or
gradient is not finite, or whose batch has no real token, are skipped and counted; too
many in a row stop the run with a checkpoint and a `TrainingHalted` error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import pathlib
import time

import jax
from ml_collections import ConfigDict

from spacenit_jax import checkpoint, sharding, tracing
from spacenit_jax.model.config import ModelConfig
from spacenit_jax.train import config as run_config
from spacenit_jax.train import flops, multihost, objectives, step, tracking
from spacenit_jax.train import state as state_lib
from spacenit_jax.train.hooks import Hooks, StepInfo
from spacenit_jax.train.preemption import PreemptionWatch

log = logging.getLogger(__name__)


class TrainingHalted(RuntimeError):
    """The run stopped on a fault (after saving a checkpoint); the message says which."""


class NonFiniteLossError(TrainingHalted):
    pass


class TokenlessDataError(TrainingHalted):
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


def global_batch(mesh, views: dict):
    def put(x):
        return jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, x.ndim), x)

    return jax.tree.map(put, views)


@dataclasses.dataclass
class _Counters:
    nonfinite: int = 0  # consecutive steps with a non-finite loss or gradient
    tokenless: int = 0  # consecutive steps whose global batch had no real token
    tokenless_total: int = 0
    last_loss: float = math.nan
    last_mfu: float | None = None


@dataclasses.dataclass
class Trainer:
    """Everything a run needs, built from a config; `train()` runs the loop."""

    config: ConfigDict
    workdir: pathlib.Path
    model_cfg: ModelConfig
    objective: objectives.ObjectiveConfig
    mesh: object
    pipeline_config: object
    pipeline: object
    tx: object
    schedule: object
    graphdef: object
    state_sharding: object
    abstract_state: object
    hooks: Hooks = dataclasses.field(default_factory=Hooks)

    @classmethod
    def create(cls, config: ConfigDict, workdir) -> Trainer:
        multihost.maybe_initialize()
        workdir = pathlib.Path(workdir).absolute()
        model_cfg = run_config.model_config(config)
        objective = run_config.objective_config(config)
        mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
        check_layout(config, mesh)
        from spacenit_jax.data.pipeline import make_pipeline

        data_path = resolve_dataset(config, workdir)
        pipeline_cfg = run_config.pipeline_config(config, data_path, objective)
        pipeline = make_pipeline(pipeline_cfg, model_cfg.layout)
        check_position_limits(model_cfg, pipeline.plan)
        tx, schedule = step.make_optimizer(run_config.optimizer_config(config),
                                           config.total_steps)
        init = functools.partial(state_lib.init_train_state, model_cfg, objective, tx,
                                 seed=config.seed)
        abstract_state = jax.eval_shape(init)
        graphdef, _ = state_lib.split_model(
            state_lib.abstract_model(model_cfg, objective.model_kind))
        return cls(config, workdir, model_cfg, objective, mesh, pipeline_cfg, pipeline, tx,
                   schedule, graphdef, sharding.state_shardings(mesh, abstract_state),
                   abstract_state)

    # -- state ---------------------------------------------------------------------------
    def init_state(self) -> state_lib.TrainState:
        init = functools.partial(state_lib.init_train_state, self.model_cfg, self.objective,
                                 self.tx, seed=self.config.seed)
        state = jax.jit(init, out_shardings=self.state_sharding)()
        if self.config.init_from:
            pure, src_step = checkpoint.restore_params(self.config.init_from)
            state = state_lib.with_params(state, pure, strict=False)
            state = jax.device_put(state, self.state_sharding)
            log.info("initialised parameters from %s (step %d)", self.config.init_from, src_step)
        return state

    def abstract_with_shardings(self):
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            self.abstract_state, self.state_sharding)

    def restore(self, store: checkpoint.CheckpointStore, step_number: int):
        """(TrainState, next batch index, the checkpoint's run config) of one step."""
        abstract = self.abstract_with_shardings()
        with_next = "next_batch" in store.item_keys(step_number, "train")
        out = store.restore(step_number, params=state_lib.pure_params(abstract),
                            train=state_lib.train_item_template(abstract, with_next),
                            config=True)
        state, next_batch = state_lib.from_checkpoint(abstract, out["params"], out["train"])
        return state, next_batch, out["config"]

    def model(self, state: state_lib.TrainState):
        return state_lib.model(self.graphdef, state)

    def compile(self, state, views):
        fn = step.make_train_step(self.graphdef, self.model_cfg, self.objective, self.tx,
                                  self.schedule, self.config.microbatches, mesh=self.mesh)
        batch_sharding = jax.tree.map(lambda x: x.sharding, views)
        jitted = jax.jit(fn, in_shardings=(self.state_sharding, batch_sharding),
                         out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
                         donate_argnums=0)
        return jitted.lower(state, views).compile()

    # -- the loop ------------------------------------------------------------------------
    def train(self) -> dict:
        """Run (or resume) until total_steps; returns a small summary."""
        c = self.config
        wall_start = time.perf_counter()
        main = multihost.is_main()
        self.workdir.mkdir(parents=True, exist_ok=True)
        resolved = run_config.resolved(c, self.model_cfg)
        if main:
            (self.workdir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
        store = checkpoint.CheckpointStore(self.workdir, run_config.checkpoint_policy(c))
        multihost.barrier("start")  # processes may be far apart after start-up and compiles
        found = store.restore_latest(lambda s: self.restore(store, s), move_damaged=main)
        multihost.barrier("checkpoint-restored")
        store.manager.reload()  # damaged steps process 0 moved aside
        if found is not None:
            latest, (state, next_batch, saved_config) = found
            log.info("resumed from step %d", latest)
            self._check_schedule(saved_config, int(jax.device_get(state.step)))
        else:
            state, next_batch = self.init_state(), 0
        if next_batch:
            from spacenit_jax.data.pipeline import make_pipeline

            self.pipeline = make_pipeline(self.pipeline_config, self.model_cfg.layout,
                                          start_batch=next_batch)
        start = int(jax.device_get(state.step))
        tracker = tracking.Tracker(self.workdir, total_steps=c.total_steps, config=resolved,
                                   enabled=main, wandb=run_config.wandb_config(c),
                                   start_step=start)
        peak = c.peak_flops_per_device or flops.peak_flops_per_device(
            jax.devices()[0].device_kind)
        self.hooks.add("checkpoint", store.policy.every,
                       lambda info: self._save(store, info.state, next_batch_of(info),
                                               resolved), at_stop=True)
        self.hooks.add_metrics("log", c.log_every, tracker.log)
        base_step, base_batch = start, next_batch

        def next_batch_of(info: StepInfo) -> int:
            return base_batch + info.step - base_step

        preempt = PreemptionWatch(store.manager)
        iterator = iter(self.pipeline.dataset)
        counters = _Counters()
        compiled = pending = None
        compilations = 0
        summary = {"workdir": str(self.workdir), "start_step": start, "status": "completed"}
        try:
            last_time = time.perf_counter()
            for s in range(start, c.total_steps):
                t0 = time.perf_counter()
                host = next(iterator)
                data_wait = time.perf_counter() - t0
                expected = base_batch + s - start
                if int(host["batch_index"]) != expected:
                    raise RuntimeError(f"the data pipeline gave batch {int(host['batch_index'])}"
                                       f" where batch {expected} was due")
                views = {k: v for k, v in host.items() if k.startswith("view_")}
                batch = global_batch(self.mesh, views)
                compile_s = 0.0
                if compiled is None:
                    before = tracing.trace_count("train_step")
                    t1 = time.perf_counter()
                    compiled = self.compile(state, batch)
                    compilations = tracing.trace_count("train_step") - before
                    multihost.barrier("step-compiled")  # enter the first collective together
                    compile_s = time.perf_counter() - t1
                state, metrics = compiled(state, batch)
                info = self._host_info(host, views)
                if pending is not None:
                    self._finish(pending, counters, peak, final=False)
                now = time.perf_counter()
                pending = (s + 1, metrics, info, data_wait, now - last_time - compile_s,
                           compile_s)
                last_time = now
                halted = self._halted(counters)
                stop = (preempt.reached(s + 1) or s + 1 == c.stop_at_step
                        or s + 1 == c.total_steps or halted is not None)
                extra = self.hooks.run(StepInfo(s + 1, state, self.graphdef, final=stop))
                if extra:
                    tracker.log(s + 1, extra)
                if halted is not None:
                    summary["status"] = halted
                    break
                if stop:
                    if s + 1 < c.total_steps:
                        summary["status"] = "preempted"
                    break
            if pending is not None:
                self._finish(pending, counters, peak, final=True)
            halted = self._halted(counters) if summary["status"] == "completed" else None
            if halted is not None or summary["status"] in ("nonfinite", "tokenless"):
                store.wait()
                step_now = int(jax.device_get(state.step))
                if step_now not in store.steps():
                    self._save(store, state, base_batch + step_now - start, resolved)
                    store.wait()
                raise self._halt_error(halted or summary["status"], counters, step_now)
        finally:
            store.close()
            tracker.close()
            preempt.close()
        if compilations > 1:
            raise RuntimeError(f"the train step was compiled {compilations} times in one run")
        summary.update(final_step=int(jax.device_get(state.step)),
                       # None (JSON null) when no step ran, e.g. resuming a finished run
                       final_loss=(counters.last_loss if math.isfinite(counters.last_loss)
                                   else None),
                       step_compilations=compilations,
                       nonfinite=int(jax.device_get(state.nonfinite)),
                       tokenless_batches=counters.tokenless_total,
                       mfu=(counters.last_mfu if peak else
                            f"n/a (no known peak FLOP/s for {jax.devices()[0].device_kind}; "
                            "set config.peak_flops_per_device)"),
                       wall_time_s=round(time.perf_counter() - wall_start, 3))
        self.final_state = state
        return summary

    # -- pieces of the loop --------------------------------------------------------------
    def _save(self, store, state, next_batch: int, resolved: dict) -> None:
        items = state_lib.checkpoint_items(state, next_batch)
        store.save(int(jax.device_get(state.step)), params=items["params"],
                   train=items["train"], config=resolved, force=True)

    def _host_info(self, host: dict, views: dict) -> dict:
        real = sum(int((v.tokens.segment >= 0).sum()) for v in views.values())
        return {"patch_size": int(host["patch_size"]), "hw_p": int(host["hw_p"]),
                "samples": int(host["num_samples"]) * jax.process_count(),
                "input_tokens": real * jax.process_count(),
                "flops": flops.train_step_flops(self.model_cfg, views, self.objective.masked)
                * jax.process_count()}

    def _finish(self, pending, counters: _Counters, peak: float | None, final: bool) -> None:
        """Host-side work on a step's fetched metrics: fault counters, then the metrics
        hooks (logging)."""
        step_number, metrics, info, data_wait, step_s, compile_s = pending
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        counters.last_loss = m["loss"]
        counters.nonfinite = counters.nonfinite + 1 if m["nonfinite"] > 0 else 0
        if m["tokenless"] > 0:
            counters.tokenless += 1
            counters.tokenless_total += 1
            log.warning("step %d: the batch has no real token (samples without sensor data?); "
                        "update skipped, %d in a row (limit max_tokenless_steps=%d)",
                        step_number, counters.tokenless, self.config.max_tokenless_steps)
        else:
            counters.tokenless = 0
        m.update({"data/patch_size": info["patch_size"], "data/hw_p": info["hw_p"],
                  "data/tokenless_batches": counters.tokenless_total,
                  "time/step_s": step_s, "time/data_wait_s": data_wait,
                  "throughput/samples_per_s": info["samples"] / step_s,
                  "throughput/tokens_per_s": info["input_tokens"] / step_s,
                  "nonfinite/consecutive": counters.nonfinite})
        if peak:
            m["throughput/mfu"] = info["flops"] / step_s / (peak * jax.device_count())
            counters.last_mfu = m["throughput/mfu"]
        if compile_s:
            m["time/compile_s"] = compile_s
        final = final or step_number == self.config.total_steps
        self.hooks.run_metrics(step_number, m, final)

    def _halted(self, counters: _Counters) -> str | None:
        if counters.nonfinite > self.config.max_nonfinite_steps:
            return "nonfinite"
        if counters.tokenless > self.config.max_tokenless_steps:
            return "tokenless"
        return None

    def _halt_error(self, status: str, counters: _Counters, step_now: int) -> TrainingHalted:
        where = (f"checkpoint saved at step {step_now} in "
                 f"{checkpoint.checkpoint_dir(self.workdir)}")
        if status == "nonfinite":
            return NonFiniteLossError(
                f"{counters.nonfinite} consecutive steps had a non-finite loss or gradient "
                f"(limit max_nonfinite_steps={self.config.max_nonfinite_steps}); {where}")
        return TokenlessDataError(
            f"{counters.tokenless} consecutive batches had no real token, so nothing was "
            f"learned (limit max_tokenless_steps={self.config.max_tokenless_steps}): the "
            f"samples of {self.pipeline_config.path} hold no sensor data for the sensors "
            f"{list(self.model_cfg.sensor_labels)} (every value missing or absent); {where}")

    def _check_schedule(self, saved: dict, at_step: int) -> None:
        """Warn when the resumed run's learning-rate schedule differs from the saved one."""
        old_total = saved.get("total_steps")
        opt = dict(saved.get("optimizer", {}))
        if old_total is None or old_total == self.config.total_steps:
            return
        new_cfg = run_config.optimizer_config(self.config)
        if new_cfg.schedule_steps is not None:
            return  # the schedule's length is pinned explicitly
        try:
            old_cfg = run_config.build(type(new_cfg), opt)
        except (TypeError, ValueError):
            old_cfg = new_cfg
        _, old = step.make_optimizer(old_cfg, old_total)
        lr_old, lr_new = float(old(at_step)), float(self.schedule(at_step))
        log.warning(
            "total_steps changed from %d (checkpoint) to %d: the learning-rate schedule "
            "stretches with it (next step's lr %.3g -> %.3g). To keep the old schedule, "
            "resume with --config.optimizer.schedule_steps=%d (the lr then stays at its "
            "floor after step %d)", old_total, self.config.total_steps, lr_old, lr_new,
            old_total, old_total)


def train(config: ConfigDict, workdir) -> dict:
    return Trainer.create(config, workdir).train()
