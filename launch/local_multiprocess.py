"""Run N pretraining processes on this machine's CPU, as a multi-host run would.

    python -m launch.local_multiprocess --num-processes 2 --devices-per-process 4 -- \
        --config configs/nano.py:smoke --workdir DIR

Each process gets its own virtual CPU devices and joins the others through
jax.distributed (gloo collectives); together they see num_processes x devices global
devices, exactly like hosts of a pod. Used by the tests to check multi-host runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=4)
    p.add_argument("--module", default="launch.pretrain")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments after -- go to the module")
    a = p.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    port = free_port()
    procs = []
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={a.devices_per_process}")
    # Processes compile at different speeds (one may hit the compilation cache, a busy
    # machine slows another); the first collective must wait for the slowest rather
    # than abort after XLA's default CPU collective timeout.
    flags += [f"--xla_cpu_collective_timeout_seconds={int(a.timeout)}",
              f"--xla_cpu_collective_call_terminate_timeout_seconds={int(a.timeout)}"]
    for i in range(a.num_processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", SPACENIT_COORDINATOR=f"127.0.0.1:{port}",
                   SPACENIT_NUM_PROCESSES=str(a.num_processes), SPACENIT_PROCESS_ID=str(i),
                   XLA_FLAGS=" ".join(flags))
        procs.append(subprocess.Popen([sys.executable, "-m", a.module, *args], env=env))
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=a.timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            print(f"timed out after {a.timeout} s", file=sys.stderr)
            return 124
    bad = [(i, c) for i, c in enumerate(codes) if c]
    if bad:
        print(f"processes failed (index, exit code): {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
