"""Progress bars of long evaluation loops (feature extraction, fine-tuning): tqdm on stderr.

`enabled`: True shows the bar, False hides it, None (the library default) shows it when
stderr is a terminal (tqdm's rule) and not when TQDM_DISABLE is set in the environment.
Command-line tools pass True (with a switch to turn it off); the in-loop evaluation of
pretraining passes False.

The bars advance when device work has finished, not when it was dispatched, without
waiting for it: `DeviceProgress` polls `jax.Array.is_ready()` on the results it was given,
so a loop that enqueues work ahead of the device gets a true rate and ETA and no extra
host-device synchronisation.
"""

from __future__ import annotations

import collections
import os
import sys

from tqdm import tqdm


def bar(total: int, desc: str, *, unit: str = "it", initial: int = 0,
        enabled: bool | None = None) -> tqdm:
    """A tqdm bar on stderr (see the module docstring for `enabled`)."""
    if enabled is None:
        disable = True if os.environ.get("TQDM_DISABLE") else None
    else:
        disable = not enabled
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr,
                disable=disable, dynamic_ncols=True, mininterval=0.5)


class DeviceProgress:
    """Advance `bar` by n for each dispatched result once it is ready (never blocking)."""

    def __init__(self, progress_bar: tqdm):
        self.bar = progress_bar
        self._pending: collections.deque = collections.deque()

    def dispatched(self, result, n: int = 1) -> None:
        self._pending.append((result, n))
        self.poll()

    def poll(self) -> None:
        while self._pending and _ready(self._pending[0][0]):
            self.bar.update(self._pending.popleft()[1])

    def finish(self) -> None:
        """Count everything still pending (call after the results have been fetched)."""
        while self._pending:
            self.bar.update(self._pending.popleft()[1])


def _ready(x) -> bool:
    is_ready = getattr(x, "is_ready", None)
    return True if is_ready is None else bool(is_ready())
