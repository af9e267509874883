"""launch.aot_compile: the real train step compiled for TPU and GPU targets on this CPU
host (libtpu's and the CUDA plugin's compile-only devices), its JSON report, the kernels
in the compiled program, and its errors."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import nano
from launch import aot_compile
from spacenit_jax.data import pipeline
from spacenit_jax.train import config as run_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_tpu = pytest.mark.skipif(not installed("libtpu"), reason=(
    "the [tpu] extra is not installed (libtpu compiles for TPU targets): "
    "pip install -e '.[tpu]'"))
needs_gpu = pytest.mark.skipif(
    not (installed("jax_plugins.xla_cuda12") and installed("nvidia.cudnn")), reason=(
        "the [gpu] extra is not installed (the CUDA plugin and cuDNN compile for GPU "
        "targets): pip install -e '.[gpu]'"))


def run(*args, timeout=1500):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)  # the target's devices, not 8 virtual CPUs
    return subprocess.run([sys.executable, "-m", "launch.aot_compile", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def check_report(out: dict, target: str, config) -> None:
    t = aot_compile.get_target(target)
    assert out["target"] == target and out["devices"] == t.devices
    mem = out["memory"]
    assert mem["hbm_bytes"] == t.hbm_bytes
    assert mem["total_bytes"] == (mem["arguments_bytes"] + mem["outputs_bytes"]
                                  - mem["aliased_bytes"] + mem["temporaries_bytes"]
                                  + mem["generated_code_bytes"]) > 0
    assert out["fits"] and 0 < mem["headroom"] < 1
    # global_samples: the plan's mean samples per row x the global rows, computed here
    # from the data plan independently of the report
    model_cfg = run_config.model_config(config)
    plan, _, _ = pipeline.make_plan(
        run_config.pipeline_config(config, "x", run_config.objective_config(config)), model_cfg.layout,
        config.data.synthetic_tile_size)
    w = dict(plan.hw_weights)
    rows = config.data.rows * t.hosts
    assert out["batch"]["rows"] == rows
    assert out["batch"]["global_samples"] == pytest.approx(
        rows * sum(w[h] * k for h, k in plan.samples_per_row), abs=0.05)
    assert out["batch"]["tokens"] == rows * plan.row_length
    flops = out["flops_per_device"]
    assert flops["analytic_padded"] >= flops["analytic"] > 0
    est = out["step_time_estimate"]
    assert est["seconds"] == max(est["compute_bound_s"], est["memory_bound_s"]) > 0
    assert out["compile_s"] > 0


@needs_tpu
def test_compiles_nano_for_a_tpu_slice_with_splash_attention():
    proc = run("--config", "configs/nano.py:smoke", "--target", "v5p-8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    out = json.loads(lines[0])
    check_report(out, "v5p-8", nano.get_config("smoke"))
    assert out["model"]["attention_impl"] == "splash"  # the target's kernel, not the host's
    assert out["custom_calls"].get("tpu_custom_call", 0) > 0  # the Pallas splash kernel
    assert out["flops_per_device"]["compiled"] > 0
    # quiet on a CPU host: no CUDA driver probe lines, no TPU metadata-server errors
    assert "cudart_stub" not in proc.stderr and "TPU_WORKER_HOSTNAMES" not in proc.stderr


@needs_gpu
def test_compiles_nano_for_h100_nodes_with_cudnn_packed_attention(tmp_path):
    hlo = tmp_path / "step.hlo"
    proc = run("--config", "configs/nano.py:smoke", "--target", "h100x8",
               "--config.model.compute_dtype=bfloat16", "--hlo_out", str(hlo))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    check_report(out, "h100x8", nano.get_config("smoke"))
    assert out["model"]["attention_impl"] == "cudnn"
    calls = out["custom_calls"]
    assert calls.get("__cudnn$fmhaSoftmax", 0) > 0 and calls.get("__cudnn$fmhaSoftmaxBackward", 0) > 0
    # packed (ragged) layout: sequence lengths and offsets per segment slot, no bias
    fmha = [x for x in hlo.read_text().splitlines()
            if 'custom_call_target="__cudnn$fmhaSoftmax"' in x]
    assert fmha and all(x.count("s32[") >= 4 for x in fmha)
    assert "cudart_stub" not in proc.stderr


@needs_tpu
def test_a_program_that_does_not_fit_fails_with_the_compilers_message():
    proc = run("--config", "configs/nano.py:smoke", "--target", "v5e-8",
               "--config.data.rows=32768")
    assert proc.returncode == 1
    # the compiler's own out-of-memory error, or (when the compile-only compiler does not
    # check) the memory analysis against the device's HBM
    assert ("RESOURCE_EXHAUSTED" in proc.stderr
            or "error: the step does not fit: it needs" in proc.stderr), proc.stderr[-2000:]


def test_targets_and_clear_errors():
    assert aot_compile.get_target("v5p-128").hosts == 16
    assert aot_compile.get_target("v5p-128").devices == 64
    assert aot_compile.get_target("v5e-8").hosts == 1
    assert aot_compile.get_target("v5e-256").hosts == 64
    assert aot_compile.get_target("v4-32").devices == 16
    two = aot_compile.get_target("h100x8x2")
    assert (two.devices, two.hosts, two.platform) == (16, 2, "gpu")
    with pytest.raises(ValueError, match="unknown target 'v9-8'; known: .*v5p-8"):
        aot_compile.get_target("v9-8")
    c = nano.get_config("smoke")
    c.data.rows = 6
    with pytest.raises(ValueError, match="6 rows per step .* data x fsdp = 8 devices"):
        aot_compile.build(c, aot_compile.get_target("cpu"))
    c = nano.get_config("smoke")
    c.data.path = "/nowhere/not_a_standard_name"
    with pytest.raises(ValueError, match="pass --tile_size"):
        aot_compile.tile_size_for(c, None)
    assert aot_compile.tile_size_for(c, 128) == 128
    c.data.path = "/data/h5py_data_w_missing_timesteps_zstd_3_128_x_4/s2_s1/1138828"
    assert aot_compile.tile_size_for(c, None) == 128  # from the name; nothing is read


def test_command_line_errors_are_one_line():
    proc = run("--config", "configs/nano.py:smoke", "--target", "v9-8")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown target 'v9-8'")


@needs_tpu
def test_meshes_that_split_the_torus_axes():
    """fsdp=8 x data=8 on v5p-128's 4x4x4 torus: no subset of the physical axes has size 8,
    so the mesh splits physical axes instead of failing."""
    from spacenit_jax import sharding

    devices = aot_compile.target_devices(aot_compile.get_target("v5p-128"))
    for fsdp in (8, 16, 32, 64):
        mesh = sharding.make_mesh(data=-1, fsdp=fsdp, devices=devices)
        assert dict(mesh.shape) == {"data": 64 // fsdp, "fsdp": fsdp, "tensor": 1}
        assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)


def test_unrolled_flops_of_a_scanned_config_match_the_analytic_count():
    """--unrolled_flops recompiles a scanned config without loops (its own parameter
    layout) so that XLA's cost analysis sees the whole step; the analytic count of the
    padded program (matmuls only) is within a few percent of it plus the elementwise work."""
    proc = run("--config", "configs/nano.py:smoke", "--target", "cpu", "--unrolled_flops",
               "--config.model.scan_layers=True", "--config.objective.name=latent")
    assert proc.returncode == 0, proc.stderr[-3000:]
    flops = json.loads(proc.stdout.strip().splitlines()[-1])["flops_per_device"]
    assert flops["compiled_unrolled"] > flops["compiled"]  # the scanned count sees one layer
    assert 1.0 <= flops["compiled_unrolled"] / flops["analytic_padded"] < 1.15, flops
