"""Has the run been asked to stop (SIGTERM from a scheduler, a preempted VM)?

Several processes (jax.distributed): JAX's preemption service, which Orbax's
`CheckpointManager.reached_preemption(step)` reads. JAX installs its SIGTERM handler when
jax.distributed starts; a SIGTERM on any host is propagated to all hosts, which agree on
one step to stop at (the largest step any host has reached, plus one). Every host then
checkpoints that same step, with no collective of ours in the loop.

One process: that service does not exist (jax.distributed is not started, and
`multihost_utils.reached_preemption_sync_point` returns False whenever the distributed
client is None), so a plain SIGTERM would end the process. Here our own handler records
the signal and the loop stops after the current step.

`reached(step)` must be called after every step on every process (the service's
protocol), starting from the same step.
"""

from __future__ import annotations

import logging
import signal

import jax

log = logging.getLogger(__name__)


def _jax_service_running() -> bool:
    from jax._src import distributed

    return (distributed.global_state.client is not None
            and distributed.global_state.preemption_sync_manager is not None)


class PreemptionWatch:
    def __init__(self, manager=None):
        """manager: an Orbax CheckpointManager (for reached_preemption) of a multi-process
        run; ignored in a single process."""
        self.requested = False
        self._manager = manager
        self._old = None
        self.shared = jax.process_count() > 1 and _jax_service_running()
        if not self.shared:
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: checkpointing after the current step")
        self.requested = True

    def reached(self, step: int) -> bool:
        """True once every process should stop after `step` (then checkpoint it)."""
        if self.shared:
            if self._manager is not None:
                return bool(self._manager.reached_preemption(step))
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.requested

    def close(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None
