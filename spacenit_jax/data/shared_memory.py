"""Shared memory of Grain's worker processes, released deterministically.

With `mp_prefetch`, each worker puts the numpy arrays of an element in POSIX shared-memory
blocks, and the consuming process maps them without a copy (Grain's SharedMemoryArray; a
packed batch is ~70 arrays, ~60 MB at 8 rows). Grain unlinks a block when its array is
garbage-collected, from a background thread. Blocks whose arrays are still alive when the
interpreter shuts down (the batch the caller holds, the elements buffered inside Grain's
prefetch) or whose deletion is still queued are never unlinked: the run ends with
"resource_tracker: There appear to be N leaked shared_memory objects" and the blocks
linger until the tracker removes them.

`ReleasingIterDataset` wraps the prefetching dataset so that
1. every block is unlinked as soon as its element is received: the name is gone, the
   mapping stays valid until the array is freed (POSIX semantics), so a delivered batch
   cannot leak whoever holds it, and freeing it later only unmaps (no Python-level
   cleanup left to fail during interpreter shutdown);
2. closing the iterator (explicitly, when it is garbage-collected, or at interpreter exit
   while modules are still intact) closes Grain's iterator and then waits until Grain's
   queued block deletions are done.
Iterator state (get_state / set_state) is Grain's own, unchanged.
"""

from __future__ import annotations

import atexit
import functools
import mmap
import weakref
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from grain.multiprocessing import SharedMemoryArray


class _ReceivedArray(SharedMemoryArray):
    """A received array whose block name is already unlinked: freeing it only unmaps."""

    _mmap_type = mmap.mmap  # held by the class: module globals may be gone at shutdown

    def __del__(self) -> None:
        try:
            if isinstance(self.base, self._mmap_type):  # the owner, not a view
                self.shm.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown: the OS unmaps at exit)
            pass


def _arrays(x):
    if isinstance(x, np.ndarray):
        yield x
    elif isinstance(x, Mapping):
        for v in x.values():
            yield from _arrays(v)
    elif isinstance(x, tuple | list):
        for v in x:
            yield from _arrays(v)


def release_received(element: Any) -> Any:
    """Unlink the shared-memory block of every array of a received element (in place)."""
    for a in _arrays(element):
        if type(a) is SharedMemoryArray and isinstance(a.base, mmap.mmap):
            a.shm.unlink()  # also unregisters it from the resource tracker
            a.__class__ = _ReceivedArray
    return element


def _wait_for_queued_deletions() -> None:
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        pool.apply(int)  # one thread, FIFO: returns once every earlier deletion has run


class ReleasingIterator(grain.DatasetIterator):
    """Grain's iterator, releasing shared memory as described in the module docstring."""

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)  # `self._parent` is Grain's property for the one parent
        self._at_exit = functools.partial(_close_if_alive, weakref.ref(self))
        atexit.register(self._at_exit)

    def __next__(self):
        self._assert_not_closed()
        return release_received(next(self._parent))

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state) -> None:
        self._parent.set_state(state)

    def close(self) -> None:
        if self._closed:
            return
        super().close()  # closes Grain's iterator: its buffered elements are dropped
        # Free Grain's iterators now, while the interpreter is intact: some of them close
        # again when collected, which fails if that happens during interpreter shutdown.
        self._parents = ()
        _wait_for_queued_deletions()
        atexit.unregister(self._at_exit)

    def __str__(self) -> str:
        return "ReleasingIterator"


def _close_if_alive(ref: weakref.ReferenceType) -> None:
    it = ref()
    if it is not None:
        it.close()


class ReleasingIterDataset(grain.IterDataset):
    """`parent` (an mp_prefetch dataset) whose iterators release shared memory."""

    def __init__(self, parent: grain.IterDataset):
        super().__init__(parent)

    def __iter__(self) -> ReleasingIterator:
        return ReleasingIterator(self._parent.__iter__())

    def __str__(self) -> str:
        return "ReleasingIterDataset"
