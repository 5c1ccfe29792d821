"""The daemon's garbage collector: its long-lived state kept out of every scan.

A daemon holding thousands of hosts keeps millions of objects alive for as long as it
runs (connections, the desired state, what each file holds), and Python's cyclic
collector walks all of them at every full collection. At 3,000 simulated hosts full
collections took 10.7 s of a 70 s run, up to 0.54 s each, all on the event loop that
pushes revocations. Reference counting frees nearly everything a round discards; the
cyclic collector is only needed for the few cycles (an exception and its frames, a
closed connection's objects).

So after each round the daemon *freezes* what survived it (``gc.freeze``: later
collections skip those objects), and once per ``full_every`` seconds (checked at its
heartbeat, never while a round syncs) it unfreezes, collects everything once and freezes
again, so cycles that became garbage after being frozen are freed within that time.

A push also needs a lot of memory for a moment: every host's request and its copies on the
way through SSH are in flight at once (about 50 KB per host). Freed, that memory stays in
the C library's heap: at 10,000 simulated hosts the daemon sat at 1.8 GB after three
revocation rounds, of which ``malloc_trim`` gave 450 MB back. So after rounds, at most once
per ``trim_every`` seconds and never while a round syncs, the heap's free memory is given
back to the system (glibc; elsewhere nothing is done).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def give_back_heap() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim(0)``); a C
    library without it is left alone."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim(0)


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux), for the log; None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * PAGE_BYTES / 2**20, 1)


@dataclass(frozen=True)
class Trimmed:
    """One giving back of the heap: how long it took, resident memory before and after."""

    seconds: float
    resident_mb_before: float | None
    resident_mb: float | None


class Collector:
    """When to freeze and when to collect in full (one per daemon)."""

    def __init__(
        self,
        full_every: float,
        clock: Callable[[], float] = time.monotonic,
        trim_every: float = 30.0,
        give_back: Callable[[], None] = give_back_heap,
    ) -> None:
        self._full_every = full_every
        self._clock = clock
        self._last_full = clock()
        self.full_collections = 0
        self._pauses = 0
        self._trim_every = trim_every
        self._give_back = give_back
        self._last_trim = clock()
        self._rounds_since_trim = 0

    @contextlib.contextmanager
    def pausing(self) -> Iterator[None]:
        """No cyclic collection while any round is inside (rounds overlap on the event
        loop); when the last leaves, what survived is frozen and collection resumes."""
        if self._pauses == 0:
            self._was_enabled = gc.isenabled()
            gc.disable()
        self._pauses += 1
        try:
            yield
        finally:
            self._pauses -= 1
            if self._pauses == 0:
                self.settle()
                if self._was_enabled:
                    gc.enable()

    def settle(self) -> None:
        """After a round: what it left alive is state, not garbage; stop scanning it."""
        gc.freeze()
        self._rounds_since_trim += 1

    def trim(self) -> Trimmed | None:
        """Give the heap's free memory back if rounds ran since the last time, that was
        ``trim_every`` ago, and no round is syncing; what it did, or None."""
        now = self._clock()
        if not self._rounds_since_trim or self._pauses or now - self._last_trim < self._trim_every:
            return None
        before = resident_mb()
        started = time.monotonic()
        self._give_back()
        took = time.monotonic() - started
        self._last_trim = now
        self._rounds_since_trim = 0
        return Trimmed(took, before, resident_mb())

    def maintain(self) -> float | None:
        """A full collection if the last was ``full_every`` ago and no round is syncing;
        its duration, or None."""
        now = self._clock()
        if now - self._last_full < self._full_every or self._pauses:
            return None
        started = time.monotonic()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._last_full = now
        self.full_collections += 1
        return time.monotonic() - started
