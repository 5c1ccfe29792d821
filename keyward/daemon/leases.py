"""At most one writer per host: shard leases with fencing tokens, checked at write time.

A daemon writes a host only while it holds the lease of the host's shard
(``shard_lease``: holder, expiry, token). Every time and comparison is the database's
(``clock_timestamp()``); a lease is taken only when it is free or expired, and then its
token grows by one, so a holder that lost its lease and got it back never mistakes the
new lease for the old one.

Holding a lease when the round started is not enough: a daemon can be paused (SIGSTOP,
a stalled VM, a long garbage collection) or cut off from the database for longer than
its lease, while another takes over. So :class:`Fence` is asked immediately before each
file write. It confirms in the database, with one conditional ``UPDATE`` (``holder = me
AND token = T``, which also extends the lease to :data:`LEASE_TTL` seconds from the
database's now), that nobody took the lease since this daemon got it, and lets writes
start for at most :data:`MAX_TRUST` seconds (by the monotonic clock, which also runs
while the process is stopped) after it sent that question. Concurrent writers share
one confirmation.

The window that remains: a write that passed the check and is then delayed (the process
paused, or the bytes stuck in the network) for longer than the lease's remaining time
minus :data:`MAX_TRUST` (at least ``LEASE_TTL - MAX_TRUST`` = 9 s by default) can land
after another daemon took the host over. The host's compare-and-swap (the write carries
the digest of the file as read) refuses it if the new holder has written the file since;
if not, the new holder's first full sync of the host, which follows every takeover,
reads and corrects it.

When the database cannot be reached at all, a write that only removes lines (an expiry,
a revocation already known) is let through on the last lease this daemon held, so that
expiries are enforced through a registry outage. Two writers are then possible, but a
removal never grants access: at worst a daemon cut off from the registry removes a key
that a newer state (which it cannot read) grants again, and the holder puts it back at
its next sync. A write that adds anything waits for the database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import BigInteger, Integer

from keyward.daemon.failures import REGISTRY_FAILURES, first_line

LEASE_TTL = 10.0  # seconds a lease lasts after it was taken, renewed or confirmed
MAX_TRUST = 1.0  # seconds after a confirmation was asked during which writes may start
FENCED = "not written:"  # how every refusal by the fence starts
NOT_HELD = f"{FENCED} this daemon no longer holds the host's lease"

_SHARDS = bindparam("shards", type_=ARRAY(Integer))
_TOKENS = bindparam("tokens", type_=ARRAY(BigInteger))

_ACQUIRE = text(
    "INSERT INTO shard_lease (shard, holder, token, acquired_at, expires_at) "
    "SELECT s, :me, 1, clock_timestamp(), clock_timestamp() + make_interval(secs => :ttl) "
    "FROM unnest(:shards) AS s "
    "ON CONFLICT (shard) DO UPDATE SET holder = EXCLUDED.holder, "
    "token = shard_lease.token + 1, acquired_at = EXCLUDED.acquired_at, "
    "expires_at = EXCLUDED.expires_at "
    # Free (expired), or ours already (a reply we never got): a new token either way.
    "WHERE shard_lease.expires_at <= clock_timestamp() OR shard_lease.holder = EXCLUDED.holder "
    "RETURNING shard, token"
).bindparams(_SHARDS)
_RENEW = text(
    "UPDATE shard_lease SET expires_at = clock_timestamp() + make_interval(secs => :ttl) "
    "WHERE holder = :me AND (shard, token) IN (SELECT * FROM unnest(:shards, :tokens)) "
    "RETURNING shard, token"
).bindparams(_SHARDS, _TOKENS)
# Confirming also renews. A lease that ran out but still names this daemon with the same
# token was taken by nobody in between (taking it changes holder and token, and the row
# lock orders the two statements), so it is renewed too: after a registry outage longer
# than the lease, the daemons keep their hosts instead of reshuffling the whole fleet.
_CONFIRM = text(
    "UPDATE shard_lease SET expires_at = clock_timestamp() + make_interval(secs => :ttl) "
    "WHERE holder = :me AND (shard, token) IN (SELECT * FROM unnest(:shards, :tokens)) "
    "RETURNING shard"
).bindparams(_SHARDS, _TOKENS)
_RELEASE = text(
    "UPDATE shard_lease SET expires_at = clock_timestamp() "
    "WHERE holder = :me AND (shard, token) IN (SELECT * FROM unnest(:shards, :tokens))"
).bindparams(_SHARDS, _TOKENS)


def _pairs(held: Mapping[int, int]) -> dict[str, list[int]]:
    shards = sorted(held)
    return {"shards": shards, "tokens": [held[s] for s in shards]}


class LeaseStore:
    """This daemon's leases in ``shard_lease``; every call is one short transaction."""

    def __init__(self, engine: Any, member_id: str, ttl: float = LEASE_TTL) -> None:
        self.engine = engine
        self.me = member_id
        self.ttl = ttl

    def acquire(self, shards: Iterable[int]) -> dict[int, int]:
        """Take the free ones among ``shards``: shard -> new token."""
        wanted = sorted(set(shards))
        if not wanted:
            return {}
        with self.engine.begin() as conn:
            rows = conn.execute(_ACQUIRE, {"me": self.me, "ttl": self.ttl, "shards": wanted})
            return {int(s): int(t) for s, t in rows}

    def renew(self, held: Mapping[int, int]) -> dict[int, int]:
        """Extend the leases still ours with the same token; the others are lost."""
        if not held:
            return {}
        with self.engine.begin() as conn:
            rows = conn.execute(_RENEW, {"me": self.me, "ttl": self.ttl, **_pairs(held)})
            return {int(s): int(t) for s, t in rows}

    def confirm(self, held: Mapping[int, int]) -> set[int]:
        """The shards whose lease is still ours with that token (and renewed for ``ttl``)."""
        if not held:
            return set()
        with self.engine.begin() as conn:
            rows = conn.execute(_CONFIRM, {"me": self.me, "ttl": self.ttl, **_pairs(held)})
            return {int(s) for (s,) in rows}

    def release(self, held: Mapping[int, int]) -> None:
        """Let the leases run out now, so the next holder need not wait."""
        if not held:
            return
        with self.engine.begin() as conn:
            conn.execute(_RELEASE, {"me": self.me, **_pairs(held)})


class Fence:
    """Asked before every write: does this daemon still hold the host's lease?

    ``held`` (shard -> token) is set by the coordinator as leases are taken and let go;
    ``confirm`` is :meth:`LeaseStore.confirm`; ``on_lost(shard, token)`` is told about a
    lease the database no longer confirms; ``run(confirm, held)`` runs the confirmation
    off the event loop (default ``asyncio.to_thread``; the coordinator's own threads).
    """

    def __init__(
        self,
        confirm: Callable[[Mapping[int, int]], set[int]],
        shard_of: Callable[[str], int],
        on_lost: Callable[[int, int], None],
        log: Any,
        monotonic: Callable[[], float] = time.monotonic,
        max_trust: float = MAX_TRUST,
        run: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self._confirm = confirm
        self._shard_of = shard_of
        self._on_lost = on_lost
        self._log = log
        self._monotonic = monotonic
        self._max_trust = max_trust
        self._run = run or asyncio.to_thread  # how ``confirm`` is run off the event loop
        self.held: dict[int, int] = {}
        self._valid_until: dict[int, float] = {}
        self._lock = asyncio.Lock()
        self.refused = 0  # writes not made for want of a lease (a metric)

    def hold(self, held: Mapping[int, int]) -> None:
        """The leases now held; a shard whose token changed must be confirmed afresh."""
        for shard in list(self._valid_until):
            if held.get(shard) != self.held.get(shard):
                del self._valid_until[shard]
        self.held = dict(held)

    def drop(self, shards: Iterable[int]) -> None:
        """Stop writing these shards at once (before their leases are let go)."""
        for shard in shards:
            self.held.pop(shard, None)
            self._valid_until.pop(shard, None)

    def _valid(self, shard: int) -> bool:
        return shard in self.held and self._monotonic() < self._valid_until.get(shard, 0.0)

    async def check(self, host: str, removal_only: bool) -> str | None:
        """None when ``host`` may be written now; otherwise why not (one line)."""
        shard = self._shard_of(host)
        if self._valid(shard):
            return None
        async with self._lock:
            if self._valid(shard):  # confirmed by the writer we waited for
                return None
            if shard not in self.held:
                return self._refuse(host, shard, NOT_HELD)
            asked = self._monotonic()
            held = dict(self.held)
            try:
                confirmed = await self._run(self._confirm, held)
            except REGISTRY_FAILURES as exc:
                if removal_only:
                    self._log.warning(
                        "write_unconfirmed_removal", host=host, shard=shard, error=first_line(exc)
                    )
                    return None
                reason = f"{FENCED} the registry cannot confirm the lease ({first_line(exc)})"
                return self._refuse(host, shard, reason)
            for s, token in held.items():
                if s in confirmed:
                    if self.held.get(s) == token:
                        self._valid_until[s] = asked + self._max_trust
                else:
                    self._log.error("lease_lost", shard=s, token=token, noticed="write")
                    self.drop([s])
                    self._on_lost(s, token)
            if self._valid(shard) or (shard in confirmed and self.held.get(shard) is not None):
                return None
            return self._refuse(host, shard, NOT_HELD)

    def _refuse(self, host: str, shard: int, reason: str) -> str:
        self.refused += 1
        self._log.error("write_fenced", host=host, shard=shard, reason=reason)
        return reason
