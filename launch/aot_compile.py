"""Check a pod run before booking it: compile the real train step for a TPU slice or GPU
nodes on this (CPU-only) host and report its memory, FLOPs and an estimated step time.

    python -m launch.aot_compile --config configs/base.py --target v5p-8 \
        [--config.field=value ...] [--tile_size 128] [--fit] [--unrolled_flops]

Targets: TPU slices `v5e-8`, `v5e-256`, `v5p-8`, `v5p-128`, `v4-32` (and the other sizes
in TPU_SLICES), compiled through libtpu's compile-only devices (the `[tpu]` extra); GPU
nodes of 8 x H100 SXM `h100x8` (one node) or `h100x8xN` (N nodes), compiled through the
CUDA plugin with the target description in launch/gpu_targets/h100_sxm.txtpb (the `[gpu]`
extra); `cpu` (this host's devices).

What is compiled is exactly what `launch.pretrain` runs: the same step function
(train/step.py), state shardings (logical-axis rules over `config.mesh`), batch shardings
and packed batch shapes, built from the config's data plan and the stored tile edge
(`--tile_size`; default: the dataset directory name's, or the synthetic default's when
`config.data.path` is empty). No data is read. `config.data.rows` is per process, as in
`launch.pretrain`: one process per host of the target (8 GPUs or 4/8 TPU chips each).

Prints one JSON line: target, mesh, global batch (rows, token slots, mean samples
`global_samples`), per-device memory from XLA's memory analysis against the device's HBM,
FLOPs per device (XLA's cost analysis beside the analytic count of train/flops.py), an
estimated step time (roofline: FLOPs at the device's peak, bytes at its HBM bandwidth;
an estimate, not a measurement) and the compile time. Exits 1 with the compiler's message
when the program does not fit.
"""

from __future__ import annotations

import os

# Compile-only devices need no accelerator: keep JAX on the CPU, and give libtpu the
# environment a TPU VM would (else it queries cloud metadata and logs errors). There is
# no TPU to share, so several compiles may load libtpu at once (it otherwise takes
# /tmp/libtpu_lockfile and refuses a second process).
os.environ["JAX_PLATFORMS"] = "cpu"
for _key, _value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_ID", "0"),
                     ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_ACCELERATOR_TYPE", "v5p-8"),
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
    os.environ.setdefault(_key, _value)

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

GIB = 2**30
GPU_TARGET_DIR = pathlib.Path(__file__).resolve().parent / "gpu_targets"
HEADROOM = 0.15  # the share of HBM left free that counts as "fits comfortably"


@dataclasses.dataclass(frozen=True)
class Target:
    """A named accelerator system. Per-device figures are the vendors' public specs."""

    name: str
    platform: str  # "tpu" | "gpu" | "cpu"
    devices: int
    hosts: int
    device_name: str
    hbm_bytes: int
    hbm_bandwidth: float  # bytes/s
    peak_flops: dict  # compute dtype -> dense matmul FLOP/s per device
    topology: dict = dataclasses.field(default_factory=dict)


# TPU generations: (topology prefix, chip config, chips per host, HBM, HBM bandwidth,
# bf16 peak). A float32 matmul at JAX's default precision runs as one bf16 pass on the
# MXU, so its peak is the bf16 peak.
_TPU = {
    "v5e": ("v5e", "default", (2, 2, 1), 16 * GIB, 819e9, 197e12, "TPU v5e"),
    "v5p": ("v5", "megacore", (2, 2, 1), 95 * GIB, 2765e9, 459e12, "TPU v5p"),
    "v4": ("v4", "megacore", (2, 2, 1), 32 * GIB, 1200e9, 275e12, "TPU v4"),
}
# Slice name -> (chip grid, wrap-around links). v5e-8 is one host of 8 chips.
TPU_SLICES = {
    "v5e-8": ("2x4", (False, False, False)), "v5e-16": ("4x4", (False, False, False)),
    "v5e-32": ("4x8", (False, False, False)), "v5e-64": ("8x8", (False, False, False)),
    "v5e-128": ("8x16", (False, True, False)), "v5e-256": ("16x16", (True, True, False)),
    "v5p-8": ("2x2x1", (False, False, False)), "v5p-16": ("2x2x2", (False, False, False)),
    "v5p-32": ("2x2x4", (False, False, False)), "v5p-64": ("2x4x4", (False, False, False)),
    "v5p-128": ("4x4x4", (True, True, True)), "v5p-256": ("4x4x8", (True, True, True)),
    "v5p-512": ("4x8x8", (True, True, True)),
    "v4-8": ("2x2x1", (False, False, False)), "v4-16": ("2x2x2", (False, False, False)),
    "v4-32": ("2x2x4", (False, False, False)), "v4-64": ("2x4x4", (False, False, False)),
    "v4-128": ("4x4x4", (True, True, True)),
}
# H100 SXM5 80GB: dense bf16 989.4 TFLOP/s, TF32 494.7 (XLA runs float32 matmuls as TF32
# at JAX's default precision), 3.35 TB/s HBM3; memory as the driver reports it.
H100 = dict(device_name="NVIDIA H100 80GB HBM3", hbm_bytes=85520809984,
            hbm_bandwidth=3.35e12, peak_flops={"bfloat16": 989.4e12, "float32": 494.7e12})


def get_target(name: str) -> Target:
    """A Target from its name: a TPU slice of TPU_SLICES, h100x8[xN], or cpu."""
    if name in TPU_SLICES:
        gen = name.split("-")[0]
        prefix, chip_config, per_host, hbm, bw, peak, label = _TPU[gen]
        grid, wrap = TPU_SLICES[name]
        chips = int(_prod(int(x) for x in grid.split("x")))
        if name == "v5e-8":
            per_host = (2, 4, 1)  # a single-host v5e slice
        hosts = max(chips // int(_prod(per_host)), 1)
        return Target(name, "tpu", chips, hosts, label, hbm, bw,
                      {"bfloat16": peak, "float32": peak},
                      dict(topology_name=f"{prefix}:{grid}", chip_config_name=chip_config,
                           chips_per_host_bounds=per_host, num_slices=1, wrap=wrap))
    m = re.fullmatch(r"h100x8(?:x(\d+))?", name)
    if m:
        nodes = int(m.group(1) or 1)
        if nodes < 1:
            raise ValueError(f"target {name!r}: the node count must be >= 1")
        return Target(name, "gpu", 8 * nodes, nodes, **H100,
                      topology=dict(topology=f"1x{nodes}x8",
                                    target_config_file=str(GPU_TARGET_DIR / "h100_sxm.txtpb")))
    if name == "cpu":
        import jax

        n = len(jax.devices("cpu"))
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return Target("cpu", "cpu", n, 1, "cpu", ram // n, 20e9, {"bfloat16": 1e11, "float32": 1e11})
    known = sorted(TPU_SLICES) + ["h100x8", "h100x8xN", "cpu"]
    raise ValueError(f"unknown target {name!r}; known: {', '.join(known)}")


def _prod(xs):
    out = 1
    for x in xs:
        out *= x
    return out


class MissingExtra(RuntimeError):
    """The package that compiles for this platform is not installed."""


def target_devices(target: Target) -> list:
    """Compile-only devices of the target (the host's own devices for `cpu`)."""
    import jax

    if target.platform == "cpu":
        return list(jax.devices("cpu"))
    from jax.experimental import topologies

    if target.platform == "tpu":
        try:
            import libtpu  # noqa: F401
        except ImportError:
            raise MissingExtra("compiling for TPU needs libtpu: pip install -e '.[tpu]'") from None
        return list(topologies.get_topology_desc(platform="tpu", **target.topology).devices)
    try:
        import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError:
        raise MissingExtra("compiling for GPU needs the CUDA plugin: pip install -e '.[gpu]'"
                           ) from None
    text = pathlib.Path(target.topology["target_config_file"]).read_text()
    with _quiet_native_stderr():
        desc = topologies.get_topology_desc(platform="cuda", target_config=text,
                                            topology=target.topology["topology"])
    return list(desc.devices)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Drop the CUDA stub's "no driver" lines that native code writes straight to file
    descriptor 2 on a GPU-less host; any other output is passed through."""
    benign = (b"cudart_stub.cc", b"All log messages before absl::InitializeLog()")
    sys.stderr.flush()
    saved = os.dup(2)
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().splitlines(keepends=True):
                if not any(b in line for b in benign):
                    sys.stderr.buffer.write(line)
            sys.stderr.flush()


@contextlib.contextmanager
def _target_compute_capability(target: Target):
    """JAX's cuDNN attention checks the compute capability of the host's default device
    (here a CPU, which has none) before lowering; answer for the target's GPU (9.0)
    while the step is lowered for it. On a real H100 the check passes by itself."""
    if target.platform != "gpu":
        yield
        return
    from jax._src.cudnn import fused_attention_stablehlo as fa

    cap = (9, 0)
    saved = fa.check_compute_capability, fa.is_cuda_compute_capability_equal
    fa.check_compute_capability = lambda c: cap >= tuple(int(x) for x in c.split("."))
    fa.is_cuda_compute_capability_equal = lambda c: cap == tuple(int(x) for x in c.split("."))
    try:
        yield
    finally:
        fa.check_compute_capability, fa.is_cuda_compute_capability_equal = saved


def tile_size_for(config, tile_size: int | None) -> int:
    """The stored tile edge the data plan is built for, without reading data."""
    if tile_size:
        return int(tile_size)
    if not config.data.path:
        return int(config.data.synthetic_tile_size)
    # The dataset need not be reachable from here: read the tile edge from the standard
    # directory name <name>_<tile>_x_<subtiles>/<sensors>/<num_samples>.
    for part in reversed(pathlib.PurePath(config.data.path).parts):
        m = re.fullmatch(r".*_(\d+)_x_\d+", part)
        if m:
            return int(m.group(1))
    raise ValueError(f"cannot tell the tile size from the dataset path {config.data.path} "
                     "(not the standard <name>_<tile>_x_<n>/<sensors>/<num_samples> layout); "
                     "pass --tile_size")


@dataclasses.dataclass
class Setup:
    """Everything the compile needs, built as launch.pretrain builds it."""

    config: object
    target: Target
    mesh: object
    model_cfg: object
    objective: object
    plan: object
    hosts: int
    tx: object
    schedule: object
    graphdef: object
    state_sharding: object
    abstract_state: object
    batch: dict
    compile_cpu_s: float = 0.0  # CPU time of the last compile (all threads)
    lower_s: float = 0.0  # of which tracing and lowering to StableHLO (wall)
    tile_size: int | None = None  # the stored tile edge the plan was built for


def build(config, target: Target, tile_size: int | None = None, devices=None) -> Setup:
    import jax

    from spacenit_jax import sharding
    from spacenit_jax.data import packing, pipeline
    from spacenit_jax.model import attention
    from spacenit_jax.train import config as run_config
    from spacenit_jax.train import loop, step
    from spacenit_jax.train import state as state_lib

    devices = target_devices(target) if devices is None else devices
    hosts = len({d.process_index for d in devices})
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                              devices=devices)
    model_cfg = run_config.model_config(config)
    model_cfg = model_cfg.replace(attention_impl=attention.resolve_impl(
        model_cfg.attention_impl, target.platform, model_cfg.compute_dtype))
    objective = run_config.objective_config(config)
    rows = config.data.rows * hosts
    parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % parallel:
        raise ValueError(f"{rows} rows per step ({config.data.rows} per process x {hosts} "
                         f"hosts) cannot be split over the data x fsdp = {parallel} devices")
    if (rows // parallel) % config.microbatches:
        raise ValueError(f"{rows // parallel} rows per device cannot be split into "
                         f"{config.microbatches} microbatches")
    pcfg = run_config.pipeline_config(config, config.data.path or "<synthetic>", objective)
    tile_size = tile_size_for(config, tile_size)
    plan, _, _ = pipeline.make_plan(pcfg, model_cfg.layout, tile_size)
    loop.check_position_limits(model_cfg, plan)
    tx, schedule = step.make_optimizer(run_config.optimizer_config(config), config.total_steps)
    init = functools.partial(state_lib.init_train_state, model_cfg, objective, tx, seed=config.seed)
    abstract_state = jax.eval_shape(init)
    state_sharding = sharding.state_shardings(mesh, abstract_state)
    graphdef, _ = state_lib.split_model(state_lib.abstract_model(model_cfg, objective.model_kind))
    view = packing.empty_view(plan, model_cfg.layout, pipeline.pixel_dtype(pcfg.dtype))

    def global_leaf(x):
        return jax.ShapeDtypeStruct((x.shape[0] * hosts, *x.shape[1:]), x.dtype,
                                    sharding=sharding.batch_sharding(mesh, x.ndim))

    names = ["view_a", "view_b"][:objective.num_views]
    batch = {name: jax.tree.map(global_leaf, view) for name in names}
    return Setup(config, target, mesh, model_cfg, objective, plan, hosts, tx, schedule,
                 graphdef, state_sharding, abstract_state, batch, tile_size=tile_size)


def compile_step(s: Setup, microbatches: int | None = None):
    """Lower and compile the train step; returns (compiled, seconds)."""
    import jax

    from spacenit_jax import sharding
    from spacenit_jax.train import step

    micro = s.config.microbatches if microbatches is None else microbatches
    fn = step.make_train_step(s.graphdef, s.model_cfg, s.objective, s.tx, s.schedule, micro,
                              mesh=s.mesh)
    state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                         s.abstract_state, s.state_sharding)
    batch_sharding = jax.tree.map(lambda x: x.sharding, s.batch)
    jitted = jax.jit(fn, in_shardings=(s.state_sharding, batch_sharding),
                     out_shardings=(s.state_sharding, sharding.replicated(s.mesh)),
                     donate_argnums=0)
    t0, c0 = time.perf_counter(), time.process_time()
    with _target_compute_capability(s.target):
        lowered = jitted.lower(state, s.batch)
    s.lower_s = time.perf_counter() - t0
    compiled = lowered.compile()
    s.compile_cpu_s = time.process_time() - c0
    return compiled, time.perf_counter() - t0


def memory_report(compiled, hbm_bytes: int) -> dict:
    m = compiled.memory_analysis()
    out = {
        "arguments_bytes": int(m.argument_size_in_bytes),
        "outputs_bytes": int(m.output_size_in_bytes),
        "aliased_bytes": int(m.alias_size_in_bytes),
        "temporaries_bytes": int(m.temp_size_in_bytes),
        "generated_code_bytes": int(m.generated_code_size_in_bytes),
    }
    # Donated state: outputs that reuse argument buffers are counted once.
    total = (out["arguments_bytes"] + out["outputs_bytes"] - out["aliased_bytes"]
             + out["temporaries_bytes"] + out["generated_code_bytes"])
    out.update(total_bytes=int(total), hbm_bytes=int(hbm_bytes),
               total_gib=round(total / GIB, 2), hbm_gib=round(hbm_bytes / GIB, 2),
               headroom=round(1.0 - total / hbm_bytes, 4))
    return out


def custom_calls(hlo_text: str) -> dict:
    """custom-call targets of the compiled program and how often each appears."""
    out: dict[str, int] = {}
    for name in re.findall(r'custom_call_target="([^"]+)"', hlo_text):
        out[name] = out.get(name, 0) + 1
    return out


def count_parameters(abstract_state) -> int:
    import jax

    from spacenit_jax.train import state as state_lib

    online, _ = state_lib.split_params(abstract_state.params)  # not the EMA copies
    return int(sum(x.size for x in jax.tree.leaves(online)))


def report(s: Setup, compiled, compile_s: float, unrolled_flops: float | None = None,
           spec: str = "") -> dict:
    from spacenit_jax.train import flops

    t = s.target
    n = t.devices
    plan = s.plan
    rows = plan.rows * s.hosts
    weights = dict(plan.hw_weights)
    mean_k = sum(weights[h] * k for h, k in plan.samples_per_row)
    mean_tokens = sum(weights[sh.hw_p] * plan.k[sh.hw_p] * sh.tokens for sh in plan.shapes)
    masked, kind, views = s.objective.masked, s.objective.model_kind, s.objective.num_views
    real = flops.plan_step_flops(s.model_cfg, plan, views, masked, kind) * s.hosts / n
    padded = flops.plan_step_flops(s.model_cfg, plan, views, masked, kind, padded=True) * s.hosts / n
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    compiled_flops = float(cost["flops"]) if cost and "flops" in cost else None
    bytes_accessed = float(cost["bytes accessed"]) if cost and "bytes accessed" in cost else None
    loops = (s.model_cfg.scan_layers or s.config.microbatches > 1
             or s.model_cfg.attention_impl in ("rowwise", "splash"))
    mem = memory_report(compiled, t.hbm_bytes)
    peak = t.peak_flops[s.model_cfg.compute_dtype]
    # Roofline: FLOPs at the peak, bytes at the HBM bandwidth. FLOPs: the unrolled
    # compile's count when asked for, else the analytic padded count (XLA's count of a
    # program with loops sees each loop body once). Bytes: XLA's count (TPU); for GPU,
    # where XLA gives no cost analysis, a floor of every buffer written and read once.
    step_flops = unrolled_flops if unrolled_flops is not None else padded
    if bytes_accessed is not None and not loops:
        bytes_est, bytes_source = bytes_accessed, "cost_analysis"
    else:
        bytes_est = (mem["arguments_bytes"] + mem["outputs_bytes"]
                     + 2 * mem["temporaries_bytes"])
        bytes_source = "memory_analysis floor: arguments + outputs + 2 x temporaries"
    compute_s, memory_s = step_flops / peak, bytes_est / t.hbm_bandwidth
    hlo = compiled.as_text()
    return {
        "target": t.name, "platform": t.platform, "device": t.device_name, "devices": n,
        "hosts": s.hosts, "config": spec,
        "model": {"preset": s.model_cfg.preset, "embed_dim": s.model_cfg.embed_dim,
                  "depth": s.model_cfg.depth, "parameters": count_parameters(s.abstract_state),
                  "compute_dtype": s.model_cfg.compute_dtype,
                  "scan_layers": s.model_cfg.scan_layers, "remat": s.model_cfg.remat,
                  "attention_impl": s.model_cfg.attention_impl},
        "mesh": dict(s.mesh.shape),
        "batch": {"rows": rows, "rows_per_device": rows // (s.mesh.shape["data"] * s.mesh.shape["fsdp"]),
                  "microbatches": s.config.microbatches, "row_length": plan.row_length,
                  "online_length": plan.online_length, "decoder_length": plan.decoder_length,
                  "tokens": rows * plan.row_length,
                  "mean_real_tokens": round(mean_tokens * rows, 1),
                  "global_samples": round(mean_k * rows, 1), "views": views},
        "memory": mem, "fits": mem["total_bytes"] <= t.hbm_bytes,
        "fits_with_headroom": mem["headroom"] >= HEADROOM,
        "flops_per_device": {
            "analytic": real, "analytic_padded": padded, "compiled": compiled_flops,
            "compiled_unrolled": unrolled_flops,
            "compiled_note": ("XLA counts each loop body once (scanned layers, microbatches, "
                              "per-row attention loops); see compiled_unrolled" if loops
                              else "no loops: the whole step")
            if compiled_flops is not None else "no cost analysis for this platform"},
        "step_time_estimate": {
            "seconds": max(compute_s, memory_s), "compute_bound_s": compute_s,
            "memory_bound_s": memory_s, "peak_flops": peak, "hbm_bandwidth": t.hbm_bandwidth,
            "flops_source": "compiled_unrolled" if unrolled_flops is not None else "analytic_padded",
            "bytes_source": bytes_source,
            "note": "roofline estimate (no overlap loss, no collectives), not a measurement"},
        "compile_s": round(compile_s, 1), "compile_cpu_s": round(s.compile_cpu_s, 1),
        "lower_s": round(s.lower_s, 1),
        "custom_calls": custom_calls(hlo),
        "host_load_1m": round(os.getloadavg()[0], 2),
    }


def unrolled_flops(s: Setup) -> float | None:
    """FLOPs per device from a compile without loops (unrolled layers, one microbatch,
    dense XLA attention), whose cost analysis sees the whole step. None for GPU targets
    (XLA gives no cost analysis there)."""
    if s.target.platform == "gpu":
        return None
    # a fresh setup: unrolled layers have another parameter layout than scanned ones
    config = s.config.copy_and_resolve_references()
    config.unlock()
    config.model.scan_layers, config.model.attention_impl = False, "xla"
    config.microbatches = 1
    unrolled = build(config, s.target, s.tile_size, devices=list(s.mesh.devices.flat))
    compiled, _ = compile_step(unrolled)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def fit_microbatches(s: Setup, headroom: float = HEADROOM):
    """The fewest microbatches (doubling from the config's) whose step fits the device
    memory with `headroom` left; returns (microbatches, compiled, compile seconds)."""
    per_device = s.plan.rows * s.hosts // (s.mesh.shape["data"] * s.mesh.shape["fsdp"])
    m = s.config.microbatches
    while True:
        try:
            compiled, secs = compile_step(s, microbatches=m)
            mem = memory_report(compiled, s.target.hbm_bytes)
            if mem["headroom"] >= headroom:
                return m, compiled, secs
        except Exception as err:  # noqa: BLE001 - the compiler's out-of-memory error
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
        nxt = m * 2
        while nxt <= per_device and per_device % nxt:
            nxt += m
        if nxt > per_device:
            raise RuntimeError(f"no microbatch count up to {per_device} rows per device fits "
                               f"{s.target.name} with {headroom:.0%} HBM headroom")
        m = nxt


def main(argv) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    config = _CONFIG[0].value
    try:
        target = get_target(FLAGS.target)
        with _quiet_native_stderr():
            s = build(config, target, FLAGS.tile_size)
        if FLAGS.fit:
            m, compiled, secs = fit_microbatches(s)
            config.unlock()
            config.microbatches = m
            config.lock()
        else:
            compiled, secs = compile_step(s)
        extra = unrolled_flops(s) if FLAGS.unrolled_flops else None  # its own Setup
    except MissingExtra as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the compiler's own message, e.g. out of memory
        msg = str(err).strip().splitlines()
        print(f"error: compiling for {FLAGS.target} failed: {msg[0] if msg else err}",
              file=sys.stderr)
        for line in msg[1:6]:
            print(f"  {line}", file=sys.stderr)
        return 1
    out = report(s, compiled, secs, extra, spec=" ".join(sys.argv[1:]))
    print(json.dumps(out))
    if FLAGS.hlo_out:
        pathlib.Path(FLAGS.hlo_out).write_text(compiled.as_text())
    if not out["fits"]:
        print(f"error: the step does not fit: it needs {out['memory']['total_gib']} GiB per "
              f"device, {target.name} has {out['memory']['hbm_gib']} GiB (more microbatches: "
              "--fit; or remat, fsdp, fewer rows)", file=sys.stderr)
        return 1
    return 0


_CONFIG: list = []  # the config flag's holder, once define_flags has run


def define_flags():
    from absl import flags

    from spacenit_jax import cli

    _CONFIG.append(cli.define_config("config", None, "pretraining config file (the run to "
                                     "check), e.g. configs/base.py"))
    flags.DEFINE_string("target", None, "v5e-8 | v5e-256 | v5p-8 | v5p-128 | v4-32 | "
                        "h100x8[xN] | cpu (see TPU_SLICES)", required=True)
    flags.DEFINE_integer("tile_size", None, "stored tile edge in base pixels (default: the "
                         "dataset directory's, or the synthetic default)")
    flags.DEFINE_bool("fit", False, "double the microbatches until the step fits with "
                      f"{HEADROOM:.0%} HBM headroom")
    flags.DEFINE_bool("unrolled_flops", False, "also compile without loops (unrolled "
                      "layers, one microbatch, XLA attention) to count the step's FLOPs")
    flags.DEFINE_string("hlo_out", None, "write the compiled program's HLO text here")


if __name__ == "__main__":
    with _quiet_native_stderr():
        # the first import and backend start-up (config files import jax): where the CUDA
        # plugin probes for a driver
        import jax

        jax.devices()
    from spacenit_jax import cli

    define_flags()
    cli.run(lambda argv: sys.exit(main(argv)))
