"""Replay protection: every nonce a signed request used, remembered while it could be reused.

A signed request is only accepted within ``MAX_SKEW`` of its timestamp, so a nonce need
only be remembered for twice that: after it, the timestamp alone refuses the replay.
The store is in memory and so per process: one ``keyward server`` process is the
supported deployment (docs/server.md); several processes behind one address would
each keep their own store and a replay sent to another one would pass.

Only requests whose signature verified are recorded, so a stranger cannot fill the
store; ``max_entries`` bounds it anyway, refusing new nonces (not forgetting old ones,
which would re-open replays) when full.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timedelta

from keyward.auth.signing import MAX_SKEW, AuthError

DEFAULT_MAX_ENTRIES = 1_000_000


class NonceStore:
    """Nonces seen, each until ``ttl`` after it was first used; safe across threads."""

    def __init__(
        self, ttl: timedelta = 2 * MAX_SKEW, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen: OrderedDict[str, datetime] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, key: str, nonce: str, now: datetime) -> None:
        """Record ``nonce`` for the key ``key``; ``AuthError`` if it was already used."""
        entry = f"{key} {nonce}"
        with self._lock:
            self._expire(now)
            if entry in self._seen:
                raise AuthError("replayed request (this nonce was already used)")
            if len(self._seen) >= self.max_entries:
                raise AuthError("too many recent requests; try again shortly")
            self._seen[entry] = now + self.ttl

    def _expire(self, now: datetime) -> None:
        # Entries are in insertion order and share one ttl, so the oldest expire first
        # (a clock that steps back only keeps entries a little longer).
        while self._seen:
            entry, until = next(iter(self._seen.items()))
            if until > now:
                break
            del self._seen[entry]
