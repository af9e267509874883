"""Run N pretraining processes on this machine's CPU, as a multi-host run would.

    python -m launch.local_multiprocess --num_processes 2 --devices_per_process 4 -- \\
        --config configs/nano.py:smoke --workdir DIR

Each process gets its own virtual CPU devices and joins the others through
jax.distributed (gloo collectives); together they see num_processes x devices global
devices, exactly like hosts of a pod. Used by the tests to check multi-host runs.

Output: each process's output (progress, logs, the collectives' own chatter) goes to
<logs>/process_<i>.log and its stdout to <logs>/process_<i>.out (default --logs:
<workdir>/logs when the module gets a --workdir, else a new temporary folder). When all
processes are done, process 0's stdout (the run's summary) is printed, less the gloo
collectives' connection lines, so the command prints ONE summary. When a process fails, the
tail of its log is printed. SIGTERM / SIGINT sent to this launcher are forwarded to every
process.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl import flags

from spacenit_jax import cli

NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "processes (hosts) to start")
DEVICES = flags.DEFINE_integer("devices_per_process", 4, "virtual CPU devices per process")
MODULE = flags.DEFINE_string("module", "launch.pretrain", "module every process runs")
TIMEOUT = flags.DEFINE_float("timeout", 1800, "seconds before all processes are killed")
LOG_DIR = flags.DEFINE_string("logs", None, "folder of the per-process logs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workdir(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
        if arg == "--workdir" and i + 1 < len(args):
            return args[i + 1]
    return None


def start(num_processes: int, devices_per_process: int, module: str, args: list[str],
          log_dir: pathlib.Path, timeout: float) -> list[subprocess.Popen]:
    """Start the processes, their output going to files in log_dir (see module docstring)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    xla = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
    xla.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    # Processes compile at different speeds (one may hit the compilation cache, a busy
    # machine slows another); the first collective must wait for the slowest rather
    # than abort after XLA's default CPU collective timeout.
    xla += [f"--xla_cpu_collective_timeout_seconds={int(timeout)}",
            f"--xla_cpu_collective_call_terminate_timeout_seconds={int(timeout)}"]
    procs = []
    for i in range(num_processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", SPACENIT_COORDINATOR=f"127.0.0.1:{port}",
                   SPACENIT_NUM_PROCESSES=str(num_processes), SPACENIT_PROCESS_ID=str(i),
                   XLA_FLAGS=" ".join(xla))
        with (open(log_dir / f"process_{i}.log", "wb") as err,
              open(log_dir / f"process_{i}.out", "wb") as out):
            procs.append(subprocess.Popen([sys.executable, "-m", module, *args], env=env,
                                          stdout=out, stderr=err))
    return procs


# The gloo collectives print "[Gloo] Rank R is connected to N peer ranks. Expected number
# of connected peer ranks is : N" to stdout from several threads at once, so the pieces of
# these messages can interleave into lines of their own; a line made only of such pieces
# (and numbers) is theirs.
_GLOO_PIECES = re.compile(r"\[Gloo\] Rank|Expected number of connected peer ranks is :|"
                          r"is connected to|peer ranks\.|\d+|\s+")


def _is_gloo_chatter(line: str) -> bool:
    return not _GLOO_PIECES.sub("", line)


def _tail(path: pathlib.Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


def main(argv) -> int:
    args = list(argv[1:])
    if args[:1] == ["--"]:
        args = args[1:]
    workdir = _workdir(args)
    log_dir = pathlib.Path(LOG_DIR.value or (pathlib.Path(workdir) / "logs" if workdir
                                             else tempfile.mkdtemp(prefix="local_mp_")))
    procs = start(NUM_PROCESSES.value, DEVICES.value, MODULE.value, args, log_dir,
                  TIMEOUT.value)
    print(f"{len(procs)} processes; logs in {log_dir}/process_<i>.log", file=sys.stderr,
          flush=True)

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    deadline = time.monotonic() + TIMEOUT.value
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            print(f"timed out after {TIMEOUT.value} s; logs in {log_dir}", file=sys.stderr)
            return 124
    bad = [(i, c) for i, c in enumerate(codes) if c]
    if bad:
        for i, _ in bad:
            print(f"--- process {i} (last lines of {log_dir}/process_{i}.log)\n"
                  f"{_tail(log_dir / f'process_{i}.log')}", file=sys.stderr)
        print(f"processes failed (index, exit code): {bad}", file=sys.stderr)
        return 1
    out = (log_dir / "process_0.out").read_text(errors="replace").splitlines()
    for line in out:
        if line.strip() and not _is_gloo_chatter(line):
            print(line)
    return 0


if __name__ == "__main__":
    cli.run(main)
