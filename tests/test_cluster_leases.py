"""Shard leases, fencing tokens and membership on a real PostgreSQL server.

Every time here is the database's: leases are taken only when free or run out, the token
grows with every change of holder, and the fence refuses a write once the lease is
another daemon's, whatever the writing daemon believed when its round began.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyward.daemon.leases import NOT_HELD, Fence, LeaseStore
from keyward.daemon.membership import Membership, members
from keyward.registry import ops
from keyward.registry.store import Registry
from tests.agent_env import AgentEnv
from tests.cli_runner import Keyward
from tests.pgserver import PgServer


class Log:
    """A structlog stand-in that keeps the events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def _add(self, event: str, **fields: object) -> None:
        self.events.append((event, fields))

    info = warning = error = _add

    def bind(self, **fields: object) -> Log:
        return self

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


@pytest.fixture
def engine(pg_server: PgServer, tmp_path: Path) -> Iterator[object]:
    name = "kw_" + uuid.uuid4().hex[:12]
    url = pg_server.create_database(name)
    Keyward(url, str(tmp_path / "no-inventory")).ok("init")
    registry = Registry.open(url)
    try:
        yield registry.engine
    finally:
        registry.dispose()
        pg_server.drop_database(name)


def test_a_lease_is_taken_once_and_its_token_grows_with_each_holder(engine: object) -> None:
    a, b = LeaseStore(engine, "a", ttl=0.6), LeaseStore(engine, "b", ttl=0.6)
    assert a.acquire({1, 2}) == {1: 1, 2: 1}
    assert b.acquire({1, 2, 3}) == {3: 1}  # 1 and 2 are a's until they run out
    assert a.renew({1: 1, 2: 1}) == {1: 1, 2: 1}
    time.sleep(0.8)  # a stops renewing: its leases run out
    assert b.acquire({1}) == {1: 2}
    assert a.renew({1: 1, 2: 1}) == {2: 1}  # 2 ran out but nobody took it: still a's
    assert a.confirm({1: 1}) == set()  # another daemon's now
    b.release({1: 2, 3: 1})
    assert a.acquire({1, 3}) == {1: 3, 3: 2}  # released: taken at once, next token


def test_a_lease_that_ran_out_is_confirmed_only_if_nobody_took_it(engine: object) -> None:
    a, b = LeaseStore(engine, "a", ttl=0.3), LeaseStore(engine, "b", ttl=5)
    assert a.acquire({5, 6}) == {5: 1, 6: 1}
    time.sleep(0.5)  # both run out (a registry outage, a pause)
    assert b.acquire({6}) == {6: 2}
    assert a.confirm({5: 1, 6: 1}) == {5}  # 5: still a's, token unchanged; 6: b's now
    assert b.acquire({5}) == {}  # and confirming renewed 5
    assert a.acquire({5}) == {5: 2}  # taken again by a (a lost reply): a new token


def test_the_fence_refuses_a_write_once_the_lease_is_another_daemons(engine: object) -> None:
    a, b = LeaseStore(engine, "a", ttl=0.5), LeaseStore(engine, "b", ttl=5)
    lost: list[tuple[int, int]] = []
    log = Log()
    now = [100.0]
    fence = Fence(a.confirm, lambda host: 7, lambda s, t: lost.append((s, t)), log, lambda: now[0])
    fence.hold(a.acquire({7}))

    async def check() -> str | None:
        return await fence.check("web-1", removal_only=False)

    assert asyncio.run(check()) is None  # confirmed in the database
    now[0] += 0.5
    assert asyncio.run(check()) is None  # within MAX_TRUST of the confirmation: no query
    time.sleep(0.7)  # "paused" past the lease; another daemon takes the shard over
    assert b.acquire({7}) == {7: 2}
    now[0] += 5.0  # the monotonic clock ran on while the process was stopped
    assert asyncio.run(check()) == NOT_HELD
    assert lost == [(7, 1)]
    assert {"lease_lost", "write_fenced"} <= set(log.names())
    assert asyncio.run(check()) == NOT_HELD  # and it stays refused without a new lease


def test_membership_by_the_databases_clock(engine: object) -> None:
    a, b = Membership(engine, "a", live_window=0.5), Membership(engine, "b", live_window=0.5)
    assert a.beat() == ["a"]
    assert b.beat() == ["a", "b"]
    time.sleep(0.7)
    assert a.beat() == ["a"]  # b went silent
    b.leave()
    with engine.connect() as conn:  # type: ignore[attr-defined]
        rows = {m.id: m for m in members(conn, live_window=0.5)}
    assert rows["a"].live and not rows["b"].live
    assert rows["b"].stopped_at is not None
    assert b.beat() == ["a", "b"]  # a restarted member is live again


def test_a_write_planned_under_a_lost_lease_never_reaches_the_host(
    env: AgentEnv, engine: object
) -> None:
    """The round is planned while the lease is held; by the time of the write another
    daemon holds it: the fence, asked immediately before the write, refuses, and the
    real host's file is left as it was. The new holder's write goes through."""
    import dataclasses

    from keyward.agent.reconcile import reconcile_host
    from keyward.clock import system_clock
    from keyward.daemon.sharding import shard_of
    from keyward.engine.inputs import checked_credentials, load_inputs
    from keyward.engine.round import RoundSettings, host_context

    env.person_with_key("alice", "devops")
    host = env.hosts[0]
    path = env.file(host, env.deploy)
    before = path.read_bytes() if path.exists() else None
    registry = Registry.open(env.kw.db_url)
    try:
        inputs = load_inputs(registry, system_clock, env.inventory, None, host.name)
    finally:
        registry.dispose()
    creds = checked_credentials(inputs.inventory, inputs.agent_key)
    ctx = host_context(inputs, creds, system_clock, "dtest", {}, RoundSettings(collect=False), {})
    shard = shard_of(host.name)
    a, b = LeaseStore(engine, "a", ttl=0.3), LeaseStore(engine, "b", ttl=30)
    log = Log()
    fence_a = Fence(a.confirm, shard_of, lambda s, t: None, log)
    fence_a.hold(a.acquire({shard}))
    time.sleep(0.5)  # a is paused past its lease ...
    assert b.acquire({shard}) == {shard: 2}  # ... and b takes the host over
    [inventory_host] = inputs.hosts
    stale = asyncio.run(
        reconcile_host(inventory_host, dataclasses.replace(ctx, fence=fence_a.check))
    )
    assert not stale.ok and not any(f.written for f in stale.files)
    assert {f.error for f in stale.files if f.error} == {NOT_HELD}
    assert (path.read_bytes() if path.exists() else None) == before
    assert not env.can_login(host, env.deploy, "alice")
    assert "write_fenced" in log.names()

    fence_b = Fence(b.confirm, shard_of, lambda s, t: None, Log())
    fence_b.hold({shard: 2})
    fresh = asyncio.run(
        reconcile_host(inventory_host, dataclasses.replace(ctx, fence=fence_b.check))
    )
    assert fresh.ok and any(f.written for f in fresh.files)
    assert env.can_login(host, env.deploy, "alice")


def test_a_registry_write_left_open_by_a_paused_daemon_is_ended(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """A daemon stopped in the middle of a registry transaction holds the audit chain's
    lock; PostgreSQL ends its session after the limit, and the others write again."""
    from keyward.daemon.cluster import limit_idle_transactions
    from keyward.errors import KeywardError

    name = "kw_" + uuid.uuid4().hex[:12]
    url = pg_server.create_database(name)
    Keyward(url, str(tmp_path / "no-inventory")).ok("init")
    paused, other = Registry.open(url), Registry.open(url)
    try:
        limit_idle_transactions(paused.engine, 1000)
        write = paused.write("keyward-daemon")
        write.__enter__()  # holds the chain head FOR UPDATE ... and is paused here
        started = time.monotonic()
        with other.write("admin") as tx:
            ops.add_person(tx, "bob", "Bob", None)
        waited = time.monotonic() - started
        assert 0.5 < waited < 10, waited
        with pytest.raises(KeywardError):  # resumed: its transaction is gone
            write.__exit__(None, None, None)
    finally:
        paused.dispose()
        other.dispose()
        pg_server.drop_database(name)


def test_daemons_started_together_divide_the_fleet_once(engine: object) -> None:
    """The first round only registers: no daemon takes (and then hands over) the others' share."""
    from prometheus_client import CollectorRegistry

    from keyward.daemon.cluster import Cluster
    from keyward.daemon.metrics import ClusterMetrics
    from keyward.daemon.sharding import owner, shards_of_hosts

    names = [f"h{i}" for i in range(300)]
    held: dict[str, list[int]] = {"a": [], "b": []}

    def cluster(me: str) -> Cluster:
        async def on_hosts(hosts: set[str]) -> None:
            held[me].append(len(hosts))

        async def let_go(hosts: set[str]) -> None:
            return None

        return Cluster(
            engine, me, lambda: names, on_hosts, let_go,
            ClusterMetrics(CollectorRegistry(), me), Log(),
        )  # fmt: skip

    async def rounds() -> tuple[Cluster, Cluster]:
        a, b = cluster("a"), cluster("b")
        await a.round()  # a alone so far: it registers, takes nothing
        await b.round()
        assert a.held == b.held == {}
        await a.round()
        await b.round()
        return a, b

    a, b = asyncio.run(rounds())
    by_shard = shards_of_hosts(names)
    assert set(a.held) == {s for s in by_shard if owner(s, ["a", "b"]) == "a"}
    assert set(b.held) == set(by_shard) - set(a.held)
    assert held["a"] == [0, len(a.hosts())]  # never more than its share, nothing let go
    assert 0 < len(a.hosts()) < len(names)


def test_heartbeats_and_leases_do_not_wait_behind_the_daemons_other_threads(
    engine: object,
) -> None:
    """asyncio's shared thread pool all busy (recorders waiting for the audit chain's lock):
    the heartbeat, the lease round and the fence's confirmation still run at once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import CollectorRegistry

    from keyward.daemon.cluster import Cluster
    from keyward.daemon.metrics import ClusterMetrics

    release = threading.Event()

    async def on_hosts(hosts: set[str]) -> None:
        return None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        c = Cluster(
            engine, "a", lambda: [f"h{i}" for i in range(50)], on_hosts, on_hosts,
            ClusterMetrics(CollectorRegistry(), "a"), Log(),
        )  # fmt: skip
        busy = asyncio.ensure_future(asyncio.to_thread(release.wait, 30))
        try:
            async with asyncio.timeout(10):
                await c.round()
                await c.round()
                assert c.held
                assert await c.fence.check("h1", removal_only=False) is None
        finally:
            release.set()
            await busy
        await c.leave()

    asyncio.run(main())
