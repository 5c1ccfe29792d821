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
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator


class Collector:
    """When to freeze and when to collect in full (one per daemon)."""

    def __init__(self, full_every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._full_every = full_every
        self._clock = clock
        self._last_full = clock()
        self.full_collections = 0
        self._pauses = 0

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
