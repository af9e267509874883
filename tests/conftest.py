"""Test-wide setup: 8 virtual CPU devices (must be set before jax is imported)."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 virtual devices for sharding tests; unoptimised XLA code and a persistent compilation
# cache (shared by xdist workers and subprocesses) keep compile time, which dominates the
# CPU suite, low. Tests compare runs made under the same flags.
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "spacenit_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pathlib  # noqa: E402

import pytest  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parent / "data"  # everything the tests read


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    return DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices in the PyTorch tests: a second thread only waits on busy cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory) -> pathlib.Path:
    """The synthetic H5 dataset of configs/nano.py:smoke (its sensors, sample count and tile
    size), written once per session for the pretraining tests."""
    from configs import nano
    from spacenit_jax.data import synthetic

    c = nano.get_config("smoke")
    spec = synthetic.SyntheticSpec(c.data.synthetic_samples, tuple(c.model.sensor_labels), 0,
                                   c.data.synthetic_tile_size)
    return synthetic.make_dataset(tmp_path_factory.mktemp("data"), spec, workers=1)
