"""Trace counts of jitted functions, the project's one recompilation detector.

Every compilation of a jitted function starts with a Python trace of its body, so a
function wrapped with `counted(name)` (inside `jax.jit`) counts its compilations; a count
that stays put after warm-up proves that nothing recompiled.
"""

from __future__ import annotations

import collections
import functools

_COUNTS: collections.Counter = collections.Counter()


def counted(name: str):
    """Decorator: count each trace of the wrapped function under `name`."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            _COUNTS[name] += 1  # runs once per trace, never on the device
            return fn(*args, **kwargs)

        return inner

    return wrap


def trace_count(name: str) -> int:
    """How often the function counted under `name` has been traced in this process."""
    return _COUNTS[name]
