"""One daemon's part in a fleet shared by several: heartbeat, division, leases, every 2 s.

Each round (every :data:`~keyward.daemon.membership.HEARTBEAT_EVERY` seconds, or at once
when a write found a lease lost):

1. heartbeat, and read the live members (``keyward.daemon.membership``);
2. divide the inventory's shards among them (``keyward.daemon.sharding``, the same
   pure function in every daemon) and find this daemon's;
3. hand over the shards that are no longer this daemon's: stop writing them (the
   fence), close their hosts' connections once in-flight syncs are done, then let the
   leases run out at once so the new owner need not wait;
4. renew the leases still held; a lease the database no longer confirms is lost, and
   its hosts are dropped;
5. take the leases of this daemon's shards that are free (or have run out), from its
   second round on (the first one only registers it, so that daemons started together
   divide the fleet once instead of the first one taking all of it);
6. tell the daemon which hosts it holds now: it connects to new ones and syncs them
   in full (they may have missed changes), and disconnects from those it let go.

When the registry is unreachable nothing changes hands: the daemon keeps its hosts and
connections, and the fence decides what may still be written (see ``leases``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from keyward.daemon.failures import REGISTRY_FAILURES, first_line
from keyward.daemon.leases import LEASE_TTL, Fence, LeaseStore
from keyward.daemon.membership import HEARTBEAT_EVERY, LIVE_WINDOW, DbClock, Membership
from keyward.daemon.metrics import ClusterMetrics
from keyward.daemon.sharding import owner, shard_of, shards_of_hosts

IDLE_IN_TRANSACTION_MS = 15_000
T = TypeVar("T")


def limit_idle_transactions(engine: Any, limit_ms: int = IDLE_IN_TRANSACTION_MS) -> None:
    """Have PostgreSQL end this daemon's sessions that sit in a transaction doing nothing.

    A daemon paused (or cut off) in the middle of a registry transaction, say while
    recording a round, would otherwise hold the audit chain's lock for as long as it is
    paused, and every registry write of every other daemon and administrator would wait
    for it. With this setting the server ends such a session after ``limit_ms``: the
    locks go, the paused daemon's transaction fails when it resumes, and its round is
    recorded from its backlog. Applies to connections opened from now on.
    """
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET idle_in_transaction_session_timeout = {int(limit_ms)}")
        finally:
            cursor.close()
        dbapi_connection.commit()

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened before (start-up checks) are not reused


class Cluster:
    """The coordinator.

    ``on_hosts(hosts)`` makes the daemon hold exactly ``hosts`` (it returns at once,
    closing the others' links in the background); ``let_go(names)`` returns once those
    hosts' links are closed and their in-flight syncs over.
    """

    def __init__(
        self,
        engine: Any,
        member_id: str,
        host_names: Callable[[], list[str]],
        on_hosts: Callable[[set[str]], Awaitable[None]],
        let_go: Callable[[set[str]], Awaitable[None]],
        metrics: ClusterMetrics,
        log: Any,
        clock: DbClock | None = None,
        heartbeat_every: float = HEARTBEAT_EVERY,
        live_window: float = LIVE_WINDOW,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        self.id = member_id
        self.membership = Membership(engine, member_id, live_window, clock)
        self.leases = LeaseStore(engine, member_id, lease_ttl)
        self.host_names = host_names
        self.on_hosts = on_hosts
        self.let_go = let_go
        self.metrics = metrics
        self.log = log.bind(member=member_id)
        self.heartbeat_every = heartbeat_every
        # Heartbeats, leases and the fence's confirmations run on threads of their own:
        # on asyncio's shared pool (6 threads on 2 CPUs) they waited behind the daemon's
        # recorders, which wait in turn for the audit chain's lock while other daemons
        # record; during a large initial sync a heartbeat was late by more than the
        # lease, and the others took this daemon's shards and gave them back.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="keyward-cluster")
        self.fence = Fence(
            self.leases.confirm, shard_of, self._lost_at_write, self.log, run=self._db
        )
        self.held: dict[int, int] = {}  # shard -> fencing token
        self.live: list[str] = []
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()  # set after the first round that reached the registry
        self.cut_off = False  # the last heartbeat did not reach the registry
        self.handing_over: set[asyncio.Task[None]] = set()

    async def _db(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on the coordinator's own threads (never behind the recorders)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(call, *args))

    def hosts(self) -> set[str]:
        """The inventory hosts whose shard's lease this daemon holds."""
        return {name for name in self.host_names() if shard_of(name) in self.held}

    def _lost_at_write(self, shard: int, token: int) -> None:
        if self.held.get(shard) == token:
            del self.held[shard]
            self.metrics.lost.inc()
            self.metrics.forget_shard(shard)
        self.wake.set()  # drop the hosts now, not at the next heartbeat

    async def round(self) -> None:
        """One heartbeat and lease round; registry failures are logged and outlived."""
        try:
            self.live = await self._db(self.membership.beat)
        except REGISTRY_FAILURES as exc:
            self.metrics.heartbeat_failures.inc()
            if not self.cut_off:
                self.log.warning("cluster_heartbeat_failed", error=first_line(exc))
            self.cut_off = True
            return
        # Back from an outage, the others' heartbeats may all look stale for a moment:
        # renew what is held, but take nothing new until they had a round to beat.
        returning, self.cut_off = self.cut_off, False
        if returning:
            self.log.info("cluster_heartbeat_restored", live=len(self.live))
        # The first round only registers this daemon: daemons started together would
        # otherwise each see itself alone, the first one take every shard and connect to
        # every host, then hand two thirds over a round later. From the second round on,
        # every daemon that beat within one heartbeat of it is counted.
        joining = not self.ready.is_set()
        self.metrics.members_live.set(len(self.live))
        by_shard = shards_of_hosts(self.host_names())
        wanted = {s for s in by_shard if owner(s, self.live) == self.id}
        before = set(self.held)
        try:
            if not returning:
                await self._hand_over({s: t for s, t in self.held.items() if s not in wanted})
            await self._renew()
            if not returning and not joining:
                await self._acquire(wanted - set(self.held))
        except REGISTRY_FAILURES as exc:
            self.log.warning("lease_round_failed", error=first_line(exc))
        self.fence.hold(self.held)
        self.metrics.shards_held.set(len(self.held))
        for shard, token in self.held.items():
            self.metrics.shard_token.labels(shard=str(shard)).set(token)
            self.metrics.shard_hosts.labels(shard=str(shard)).set(len(by_shard.get(shard, [])))
        if set(self.held) != before or not self.ready.is_set():
            await self.on_hosts(self.hosts())
        self.ready.set()

    async def _hand_over(self, going: Mapping[int, int]) -> None:
        """Stop writing ``going`` now; let the leases go once their hosts are let go.

        The wait for in-flight syncs (a stuck host can hold one for minutes) runs on its
        own, so that the rounds go on renewing the other leases meanwhile; until the
        release, the shards' new owner waits (at most until the leases run out).
        """
        if not going:
            return
        self.fence.drop(going)  # no write starts on them from now on
        for shard in going:
            del self.held[shard]
            self.metrics.forget_shard(shard)
        task = asyncio.create_task(self._release_when_let_go(dict(going)))
        self.handing_over.add(task)
        task.add_done_callback(self.handing_over.discard)

    async def _release_when_let_go(self, going: dict[int, int]) -> None:
        await self.on_hosts(self.hosts())
        await self.let_go({h for h in self.host_names() if shard_of(h) in going})
        try:
            await self._db(self.leases.release, going)
        except REGISTRY_FAILURES as exc:  # they run out by themselves
            self.log.warning("lease_release_failed", shards=len(going), error=first_line(exc))
            return
        self.metrics.released.inc(len(going))
        self.log.info("lease_released", shards=len(going), live=len(self.live))

    async def _renew(self) -> None:
        asked = dict(self.held)
        renewed = await self._db(self.leases.renew, asked)
        for shard, token in asked.items():
            if renewed.get(shard) != token and self.held.get(shard) == token:
                del self.held[shard]
                self.fence.drop([shard])
                self.metrics.lost.inc()
                self.metrics.forget_shard(shard)
                self.log.error("lease_lost", shard=shard, token=token, noticed="renewal")

    async def _acquire(self, shards: set[int]) -> None:
        if not shards:
            return
        got = await self._db(self.leases.acquire, shards)
        if got:
            self.held.update(got)
            self.metrics.acquired.inc(len(got))
            self.log.info(
                "lease_acquired",
                shards=len(got),
                tokens=dict(sorted(got.items())[:20]),
                waiting=len(shards) - len(got),
            )

    async def run(self, sleep: Callable[[float, asyncio.Event], Awaitable[bool]]) -> None:
        """Rounds until ``sleep`` says the daemon is stopping."""
        while True:
            await self.round()
            if await sleep(self.heartbeat_every, self.wake):
                return

    async def leave(self) -> None:
        """On a clean stop: let every lease go and mark this member stopped."""
        held, self.held = dict(self.held), {}
        self.fence.drop(held)
        if self.handing_over:  # the links are closed by now: these finish at once
            await asyncio.wait(self.handing_over, timeout=5)
        try:
            await self._db(self.leases.release, held)
            await self._db(self.membership.leave)
        except REGISTRY_FAILURES as exc:
            self.log.warning("cluster_leave_failed", error=first_line(exc))
            return
        finally:
            self.executor.shutdown(wait=False)
        self.log.info("cluster_left", shards=len(held))
