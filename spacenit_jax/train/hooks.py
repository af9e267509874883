"""Trainer hooks: work that runs at its own interval of optimizer steps.

    trainer.hooks.add("eval", 1000, lambda info: evaluator.evaluate(info.model()))
    trainer.hooks.add("checkpoint", 500, save, at_stop=True)
    trainer.hooks.add_metrics("log", 10, lambda step, metrics: tracker.log(step, metrics))

A state hook gets a `StepInfo` after step `info.step` (optimizer steps done) when
step % every == 0, and also at the run's last step and at a stop (stop_at_step,
preemption, a fault) when added with at_stop=True. Whatever dict it returns is logged at
that step. A metrics hook gets (step, metrics) with the step's metrics as host floats:
they are fetched one step late, while the next step runs, so reading them never stalls
the device; at the end of a run the last step's metrics are delivered before the run
returns (or raises).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from spacenit_jax.train import state as state_lib


@dataclasses.dataclass
class StepInfo:
    step: int  # optimizer steps done
    state: state_lib.TrainState
    graphdef: Any
    final: bool  # the run stops after this step

    def model(self):
        """The model at this step (shares the state's arrays; nothing is copied)."""
        return state_lib.model(self.graphdef, self.state)


@dataclasses.dataclass
class _Hook:
    name: str
    every: int
    fn: Callable
    at_stop: bool = False

    def due(self, step: int, final: bool) -> bool:
        return (self.every > 0 and step % self.every == 0) or (final and self.at_stop)


class Hooks:
    def __init__(self):
        self.state_hooks: list[_Hook] = []
        self.metrics_hooks: list[_Hook] = []

    def add(self, name: str, every: int, fn: Callable[[StepInfo], dict | None], *,
            at_stop: bool = False) -> None:
        """Run fn(StepInfo) every `every` steps (every <= 0: only at a stop, if at_stop).
        A hook of the same name is replaced."""
        self.remove(name)
        self.state_hooks.append(_Hook(name, int(every), fn, at_stop))

    def add_metrics(self, name: str, every: int, fn: Callable[[int, dict], None], *,
                    at_stop: bool = True) -> None:
        """Run fn(step, metrics) every `every` steps and (at_stop) for the last step.
        A hook of the same name is replaced."""
        self.remove(name)
        self.metrics_hooks.append(_Hook(name, int(every), fn, at_stop))

    def remove(self, name: str) -> None:
        self.state_hooks = [h for h in self.state_hooks if h.name != name]
        self.metrics_hooks = [h for h in self.metrics_hooks if h.name != name]

    def run(self, info: StepInfo) -> dict:
        out: dict = {}
        for hook in self.state_hooks:
            if hook.due(info.step, info.final):
                out.update(hook.fn(info) or {})
        return out

    def run_metrics(self, step: int, metrics: dict, final: bool) -> None:
        for hook in self.metrics_hooks:
            if hook.due(step, final):
                hook.fn(step, metrics)
