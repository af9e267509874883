"""Multi-process start-up: jax.distributed when the environment asks for it.

Initialises when running under SLURM with several tasks, on a multi-host Cloud TPU VM,
or when an explicit coordinator is given (SPACENIT_COORDINATOR / SPACENIT_NUM_PROCESSES /
SPACENIT_PROCESS_ID, used by launch/local_multiprocess.py to test several CPU processes
on one machine). A single process needs nothing and starts nothing.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def maybe_initialize() -> None:
    env = os.environ
    if env.get("SPACENIT_COORDINATOR"):
        if env.get("JAX_PLATFORMS", "").startswith("cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=env["SPACENIT_COORDINATOR"],
            num_processes=int(env["SPACENIT_NUM_PROCESSES"]),
            process_id=int(env["SPACENIT_PROCESS_ID"]))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 or env.get("TPU_WORKER_HOSTNAMES", "").count(","):
        jax.distributed.initialize()  # jax reads the cluster from the environment
    else:
        return
    log.info("jax.distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())


def is_main() -> bool:
    return jax.process_index() == 0


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Wait until every process reaches `name`.

    Uses the coordination service (not a device collective): processes can be minutes
    apart (one compiling, one reading a compilation cache), and the CPU collectives
    give up after 30 s when setting up their first context.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is not None and hasattr(client, "wait_at_barrier"):
        client.wait_at_barrier(f"spacenit:{name}", int(timeout_s * 1000))
    else:  # pragma: no cover - older jax
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def finalize() -> None:
    """Leave jax.distributed together: every process first reaches the same point (e.g.
    process 0 may still be closing its W&B run), then all shut down at once. Without
    this, an early process's exit can time out the others' shutdown barrier."""
    if jax.process_count() > 1:
        barrier("spacenit-finalize")
        jax.distributed.shutdown()
