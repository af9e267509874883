"""Time the full training step (both views, forward, backward, update) on a fixed workload.

    python -m launch.benchmark_train --config configs/reference_head.py:size=nano \
        [--samples 8 --patch_size 4 --crop_patches 4 --timesteps 12 --steps 10] \
        [--config.model.compute_dtype=bfloat16 ...]

The workload is B samples of the config's sensors cropped to H x H patches of size P
with T timesteps (random normalised values, no missing data, the config's masking), packed
with the config's row geometry for that crop (or --row-length). Prints one JSON line:
step_s_median, tokens_per_s (real input tokens of every view, padding excluded),
samples_per_s, mfu (analytic model FLOPs against --peak_flops per device; "measure":
the speed of a 2048^3 matmul in the compute dtype on this device, for CPUs; default: the
config's peak_flops_per_device, else the device's datasheet peak; null when neither is
known),
peak_memory_bytes and compilations (of the train step while timing; must be 0).
"""

from __future__ import annotations

import json
import resource
import statistics
import time

from absl import flags

from spacenit_jax import cli

CONFIG = cli.define_config("config", "configs/reference_head.py:size=nano",
                           "pretraining config file (its model, objective, masking, mesh)")
SAMPLES = flags.DEFINE_integer("samples", 8, "samples in the workload")
PATCH_SIZE = flags.DEFINE_integer("patch_size", 4, "patch size in pixels")
CROP_PATCHES = flags.DEFINE_integer("crop_patches", 4, "crop edge in patches")
TIMESTEPS = flags.DEFINE_integer("timesteps", 12, "timesteps of space-time sensors")
STEPS = flags.DEFINE_integer("steps", 10, "timed steps")
WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps after compiling")
ROW_LENGTH = flags.DEFINE_integer("row_length", 0, "token-stream row length (default: one "
                                  "workload sample, aligned to 8)")
ROW_MULTIPLE = flags.DEFINE_integer("row_multiple", 0, "round the row count up to a multiple "
                                    "of this (default: the mesh's data x fsdp size)")
PEAK_FLOPS = flags.DEFINE_string("peak_flops", None, "peak FLOP/s per device, or 'measure' (a "
                                 "2048^3 matmul here); default: the config's, else the "
                                 "device's datasheet peak")
SEED = flags.DEFINE_integer("seed", 0, "random seed of the workload")


def build_workload(config, model_cfg, objective, args):
    import numpy as np

    from spacenit_jax import sensors
    from spacenit_jax.data import budget as token_budget
    from spacenit_jax.data import masking, packing, tokenize
    from spacenit_jax.data import plan as packing_plan

    layout = model_cfg.layout
    h, t, p = args.crop_patches, args.timesteps, args.patch_size
    per_step = fixed = 0
    for label in layout.sensor_labels:
        g = len(layout.sensor_groups(label))
        if sensors.get(label).kind == sensors.SensorKind.SPACE_TIME:
            per_step += h * h * g
        else:
            fixed += h * h * g
    budget = fixed + per_step * t  # the token budget whose crop has exactly T timesteps
    assert token_budget.timesteps_for_budget(layout, h, budget) == t
    strategy = masking.build_masking(config.data.masking.to_dict() if objective.masked
                                     else "none")
    n = token_budget.hw_shape(layout, budget, h, strategy).tokens
    row_length = args.row_length or packing_plan.align_up(n, 8)
    k = max(row_length // n, 1)
    rows = -(-args.samples // k)
    rows = -(-rows // args.row_multiple) * args.row_multiple
    plan = packing_plan.PackingPlan.build(layout, budget, [h], rows, row_length, strategy)
    rng = np.random.default_rng(args.seed)
    views = {}
    for v in range(objective.num_views):
        prepared = []
        for _ in range(args.samples):
            arrays = {}
            for label in layout.sensor_labels:
                spec = sensors.get(label)
                pix = layout.patch_pixels(label, p) * h
                tt = t if spec.kind == sensors.SensorKind.SPACE_TIME else 1
                arrays[label] = rng.normal(size=(pix, pix, tt, spec.num_channels)).astype(np.float32)
            masks = masking.mask_sample(layout, arrays, p, strategy, rng, 0)
            months = rng.integers(0, 12, size=t)
            prepared.append(tokenize.prepare_sample(layout, arrays, p, months, masks))
        view, _ = packing.pack_view(plan, layout, prepared, h)
        views["view_a" if v == 0 else "view_b"] = view
    return views, plan, n


class _Args:
    """The workload flags as attributes (what build_workload reads)."""

    def __init__(self, row_multiple: int):
        self.samples, self.patch_size = SAMPLES.value, PATCH_SIZE.value
        self.crop_patches, self.timesteps = CROP_PATCHES.value, TIMESTEPS.value
        self.row_length, self.row_multiple, self.seed = ROW_LENGTH.value, row_multiple, SEED.value


def main(argv) -> int:
    del argv
    import jax
    import numpy as np

    from spacenit_jax import sharding, tracing
    from spacenit_jax.train import config as run_config
    from spacenit_jax.train import flops, loop, step
    from spacenit_jax.train import state as state_lib

    config = CONFIG.value
    try:
        model_cfg = run_config.model_config(config)
        objective = run_config.objective_config(config)
        mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    except (ValueError, KeyError) as err:
        raise cli.UsageError(cli.one_line(err)) from None
    args = _Args(ROW_MULTIPLE.value or mesh.shape["data"] * mesh.shape["fsdp"])
    views, plan, n = build_workload(config, model_cfg, objective, args)
    tx, schedule = step.make_optimizer(run_config.optimizer_config(config), config.total_steps)

    def init():
        return state_lib.init_train_state(model_cfg, objective, tx, seed=0)

    shardings = sharding.state_shardings(mesh, jax.eval_shape(init))
    state = jax.jit(init, out_shardings=shardings)()
    graphdef, _ = state_lib.split_model(state_lib.abstract_model(model_cfg, objective.model_kind))
    fn = step.make_train_step(graphdef, model_cfg, objective, tx, schedule, config.microbatches,
                              mesh=mesh)
    batch = loop.global_batch(mesh, views)
    t0 = time.perf_counter()
    compiled = jax.jit(fn, in_shardings=(shardings, jax.tree.map(lambda x: x.sharding, batch)),
                       out_shardings=(shardings, sharding.replicated(mesh)),
                       donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(WARMUP.value):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    before = tracing.trace_count("train_step")
    times = []
    for _ in range(STEPS.value):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    input_tokens = sum(int((v.tokens.segment >= 0).sum()) for v in views.values())
    slots = sum(v.tokens.segment.size for v in views.values())
    model_flops = flops.train_step_flops(model_cfg, views, objective.masked)
    if PEAK_FLOPS.value == "measure":
        peak = flops.measured_matmul_flops(model_cfg.compute_dtype)
    elif PEAK_FLOPS.value:
        peak = float(PEAK_FLOPS.value)
    else:
        peak = config.peak_flops_per_device or flops.peak_flops_per_device(
            jax.devices()[0].device_kind)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        memory, source = int(stats["peak_bytes_in_use"]), "device"
    else:
        memory = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        source = "host max RSS (CPU)"
    out = {
        "config": flags.FLAGS["config"].config_filename,
        "device": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(), "samples": args.samples,
        "patch_size": args.patch_size, "crop_patches": args.crop_patches,
        "timesteps": args.timesteps, "tokens_per_sample": n, "rows": plan.rows,
        "row_length": plan.row_length, "step_s_median": step_s,
        "step_s_min": min(times), "tokens_per_s": input_tokens / step_s,
        "samples_per_s": args.samples / step_s, "padding_fraction": 1 - input_tokens / slots,
        "model_flops_per_step": model_flops, "model_flops_per_s": model_flops / step_s,
        "mfu": model_flops / step_s / (peak * jax.device_count()) if peak else None,
        "peak_flops_per_device": peak, "peak_memory_bytes": memory,
        "peak_memory_source": source, "compile_s": compile_s,
        "compilations": tracing.trace_count("train_step") - before,
        "loss": float(np.asarray(metrics["loss"])),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    cli.run(main)
