"""Trainer hooks run at their intervals; preemption on one of several processes stops all
of them at the same step (JAX's preemption service, as Orbax reads it)."""

import os
import pathlib
import subprocess
import sys

from spacenit_jax.train.hooks import Hooks, StepInfo

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_hooks_run_at_their_intervals_and_at_a_stop():
    hooks, calls = Hooks(), []
    hooks.add("every3", 3, lambda info: calls.append(("every3", info.step)) or {"x": 1.0})
    hooks.add("stop", 0, lambda info: calls.append(("stop", info.step)), at_stop=True)
    hooks.add_metrics("log", 2, lambda step, m: calls.append(("log", step, m["loss"])))
    out = {s: hooks.run(StepInfo(s, None, None, final=s == 7)) for s in range(1, 8)}
    for s in range(1, 8):
        hooks.run_metrics(s, {"loss": float(s)}, final=s == 7)
    assert out[3] == out[6] == {"x": 1.0} and out[1] == {}
    assert calls == [("every3", 3), ("every3", 6), ("stop", 7), ("log", 2, 2.0),
                     ("log", 4, 4.0), ("log", 6, 6.0), ("log", 7, 7.0)]
    hooks.add("every3", 5, lambda info: {"y": 2.0})  # same name: replaced
    assert hooks.run(StepInfo(5, None, None, final=False)) == {"y": 2.0}


WORKER = """
import os, signal, sys, time
from spacenit_jax.train import multihost
from spacenit_jax.train.preemption import PreemptionWatch
multihost.maybe_initialize()
watch = PreemptionWatch()
assert watch.shared, "several processes use JAX's preemption service"
me = int(os.environ["SPACENIT_PROCESS_ID"])
for step in range(1, 200):
    if me == 1 and step == 3:
        os.kill(os.getpid(), signal.SIGTERM)  # only this process is told to stop
    time.sleep(0.05 if me == 0 else 0.1)  # the processes run at different speeds
    if watch.reached(step):
        print("stop", step, flush=True)
        break
watch.close()
multihost.finalize()
"""


def test_sigterm_on_one_process_stops_every_process_at_the_same_step(tmp_path):
    from launch.local_multiprocess import free_port

    port = free_port()
    procs = []
    for i in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", SPACENIT_COORDINATOR=f"127.0.0.1:{port}",
                   SPACENIT_NUM_PROCESSES="2", SPACENIT_PROCESS_ID=str(i),
                   PYTHONPATH=str(REPO), XLA_FLAGS="--xla_force_host_platform_device_count=1")
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    stops = [[line for line in out.splitlines() if line.startswith("stop")] for out, _ in outs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops
    assert int(stops[0][0].split()[1]) >= 3
