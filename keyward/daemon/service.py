"""The daemon's main loop: watch for changes, push only what changed, verify periodically.

Flow, each step reusing the one-shot agent's pieces:

- a registry change (chain head moved; PostgreSQL NOTIFY or SQLite polling)
  or an inventory change (content hash) or a time-driven change (an expiry,
  a grant's ``until``) recomputes the desired state with the same pure
  function as ``plan``;
- files whose desired content differs from what was last confirmed are
  synced over the open connections (read, plan, compare-and-swap write,
  read-back), under the same writers' lock as ``keyward reconcile``;
- every ``verify_interval`` (with jitter) all files of every host are read
  and synced, which catches hand edits;
- a heartbeat row in the registry lets ``keyward status`` see the daemon;
- with ``[directory] sync_interval``, the directory sync of ``keyward directory sync``
  runs on that schedule (``keyward.engine.directory_sync``: the same guard, alert and
  offboarding round), so a leaver loses access without anyone running a command.

On PostgreSQL several daemons may share the fleet: each holds the hosts whose shard
lease it holds (``keyward.daemon.cluster``) and asks the lease's fence before every
write. On SQLite one daemon holds every host, and a second one is refused
(``keyward.daemon.solo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import random
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from keyward.agent.connection import Credentials
from keyward.agent.limits import fds_needed, raise_fd_limit
from keyward.agent.reconcile import (
    HOST_FAILURES,
    HostResult,
    RunContext,
    failed,
    files_of,
    known_after,
    sync_known,
)
from keyward.clock import Clock
from keyward.daemon.backlog import Backlog
from keyward.daemon.cluster import Cluster, limit_idle_transactions
from keyward.daemon.failures import REGISTRY_FAILURES, first_line, round_failed
from keyward.daemon.gather import Gatherer
from keyward.daemon.leases import FENCED
from keyward.daemon.links import HostLink
from keyward.daemon.membership import DbClock, new_member_id
from keyward.daemon.memory import Collector
from keyward.daemon.metrics import (
    ClusterMetrics,
    Metrics,
    MetricsServer,
    address_of,
    bind_loopback,
    inherited_listener,
    parse_loopback,
)
from keyward.daemon.sharding import shard_of
from keyward.daemon.solo import claim_sqlite
from keyward.daemon.support import WriterLock, sd_notify
from keyward.desired import DesiredFile, FileTarget
from keyward.engine.inputs import (
    CaseWatch,
    RoundInputs,
    agent_identity,
    compute_inputs,
    read_registry,
)
from keyward.engine.recorder import LoginSink, Recorder
from keyward.engine.round import RoundSettings, host_context, new_run_id
from keyward.errors import KeywardError, UsageError
from keyward.inventory import check_inventory
from keyward.inventory.model import Inventory
from keyward.keys import PublicKey
from keyward.logs import get_logger
from keyward.registry.attribution import saved_positions
from keyward.registry.models import AuditEvent, DaemonStatus
from keyward.registry.store import Registry
from keyward.state import RegistrySnapshot

HEARTBEAT_EVERY = 5.0
BEAT_SPACING = 1.0  # at most one early heartbeat per second
FULL_COLLECTION_EVERY = 600.0  # seconds between full collections (checked at heartbeats)
CONNECT_WINDOW = 0.2  # seconds a connected host waits for others to sync with
SYNC_TIMEOUT = 120.0
MAX_SLEEP = 3600.0
METRICS_RETRY_START = 5.0  # seconds before binding the metrics port again; doubles
METRICS_RETRY_MAX = 300.0
METRICS_KEY = "@metrics"  # in the heartbeat's host map; no host name can start with "@"
TIME_SLACK = 0.05  # seconds past an expiry before the recompute, so it is surely past


@dataclass(frozen=True)
class DaemonSettings:
    verify_interval: float = 300.0
    poll_interval: float = 0.25
    inventory_poll: float = 1.0
    metrics: str | None = None
    max_connecting: int = 50
    keepalive: float = 15.0  # seconds; three unanswered keepalives drop a connection


def signature(desired: DesiredFile) -> str:
    """What a file must contain, independent of its current content (constant time)."""
    return f"{desired.mode}:{desired.content_digest()}"


def inventory_fingerprint(root: Path) -> str:
    """Content hash of the inventory files (and the pinned host keys)."""
    digest = hashlib.sha256()
    try:
        names = sorted(p for p in root.iterdir() if p.suffix == ".toml" or p.name == "known_hosts")
    except OSError as exc:
        return f"unreadable:{exc.errno}"
    for path in names:
        digest.update(path.name.encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            digest.update(f"unreadable:{exc.errno}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


def next_time_change(snapshot: RegistrySnapshot, now: datetime) -> datetime | None:
    """The next moment the desired state changes by itself (an expiry or an ``until``)."""
    moments = [k.expires_at for k in snapshot.keys if k.revoked_at is None and k.expires_at > now]
    moments += [g.until for g in snapshot.grants if g.until is not None and g.until > now]
    return min(moments) if moments else None


def fenced(result: HostResult) -> bool:
    """Whether the fence refused the host's writes and nothing of it was written."""
    refused = any(f.error is not None and f.error.startswith(FENCED) for f in result.files)
    return refused and not any(f.written for f in result.files)


class Daemon:
    def __init__(
        self,
        registry: Registry,
        inventory_dir: Path,
        actor: str,
        clock: Clock,
        settings: DaemonSettings,
    ) -> None:
        self.registry = registry
        self.inventory_dir = inventory_dir
        self.actor = actor
        self.clock = clock
        self.settings = settings
        self.log = get_logger(component="daemon")
        self.metrics = Metrics()
        self.metrics_server = MetricsServer(self.metrics)
        self.metrics_address = settings.metrics  # where it is served, once it is
        self.metrics_listening = False
        self.metrics_error: str | None = None
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.cluster: Cluster | None = None  # on PostgreSQL, from run()
        self.owned: set[str] | None = None  # the hosts this daemon holds; None: all of them
        self.solo_fd: int | None = None  # the SQLite daemon lock, held while running
        self.enforcing_last_state = False  # the registry is unreachable: last state in force
        self.backlog = Backlog(self.log)  # rounds the registry did not take, recorded later
        self.links: dict[str, HostLink] = {}
        self.letting_go: dict[str, asyncio.Task[Any]] = {}  # host -> its link's closing
        self.inventory: Inventory | None = None
        self.inventory_hash = ""
        self.creds: Credentials | None = None
        self.agent_key: PublicKey | None = None
        self.inputs: RoundInputs | None = None  # the last round's, from the engine
        self.snapshot: RegistrySnapshot | None = None
        self.desired: dict[FileTarget, DesiredFile] = {}
        self.confirmed: dict[FileTarget, str] = {}
        self.watch: CaseWatch = {}
        self.changed = asyncio.Event()
        self.stopping = asyncio.Event()
        self.reload = asyncio.Event()
        self.changed_snapshot = asyncio.Event()  # wakes the expiry timer after a recompute
        self.beat = asyncio.Event()  # write the heartbeat now (after a push or a connect)
        # No cyclic collection during a round's syncs; survivors frozen after (memory.py).
        self.collector = Collector(FULL_COLLECTION_EVERY)
        # Hosts that connect close together are synced together (keyward.daemon.gather).
        self.connects: Gatherer[HostLink] = Gatherer(
            self._sync_connected, CONNECT_WINDOW, self._track
        )
        self.sweep_due = asyncio.Event()  # expired access and reminders, after a recompute
        self.lock = WriterLock(registry, shared=registry.backend == "postgresql")
        self.inflight: set[asyncio.Task[Any]] = set()
        self.started_at = clock()
        self.last_push_at: datetime | None = None
        self.last_lag_ms: float | None = None
        self.last_verify_at: datetime | None = None
        self.head_seq = -1
        self.connecting = asyncio.Semaphore(settings.max_connecting)
        self.auth_positions: dict[str, dict[str, Any]] = {}
        self.confirmed_at = self.clock()

    # -- set-up ---------------------------------------------------------------

    def _load_inventory(self) -> bool:
        inventory, problems = check_inventory(self.inventory_dir)
        if inventory is None:
            for problem in problems:
                self.log.error("inventory_invalid", problem=str(problem))
            return False
        try:
            pub, creds = agent_identity(inventory)
        except KeywardError as exc:
            self.log.error("inventory_invalid", problem=exc.message)
            return False
        self.inventory, self.creds, self.agent_key = inventory, creds, pub
        return True

    def _owns(self, name: str) -> bool:
        return self.owned is None or name in self.owned

    def _sync_links(self) -> list[asyncio.Task[Any]]:
        """Links for exactly the hosts held; the tasks that stop the others."""
        assert self.inventory is not None and self.creds is not None
        wanted = {h.name: h for h in self.inventory.hosts() if self._owns(h.name)}
        stopping: list[asyncio.Task[Any]] = []
        for name in list(self.links):
            link = self.links[name]
            if name not in wanted or wanted[name] != link.host or link.connector is not self.creds:
                task = self._track(self._let_go(link))
                stopping.append(task)
                self.letting_go[name] = task
                task.add_done_callback(functools.partial(self._let_go_done, name))
                del self.links[name]
                self.confirmed = {t: s for t, s in self.confirmed.items() if t.host != name}
        for name, host in wanted.items():
            if name not in self.links:
                link = HostLink(
                    host,
                    self.creds,
                    self.connecting,
                    self.log,
                    self._on_connect,
                    self.settings.keepalive,
                )
                self.links[name] = link
                link.start()
        self.metrics.hosts_total.set(len(self.links))
        return stopping

    def _let_go_done(self, name: str, task: asyncio.Task[Any]) -> None:
        if self.letting_go.get(name) is task:
            del self.letting_go[name]

    async def _let_go(self, link: HostLink) -> None:
        """Close a host's link once its in-flight sync is over (bounded by its timeout)."""
        await link.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SYNC_TIMEOUT):
                async with link.busy:
                    pass

    async def set_owned(self, hosts: set[str]) -> None:
        """Hold exactly ``hosts`` (the cluster's call); the others are let go in the
        background (:meth:`wait_let_go`)."""
        added = hosts - (self.owned or set())
        self.owned = set(hosts)
        if self.inventory is None or self.creds is None:
            return
        stopping = self._sync_links()
        self.log.info("hosts_held", hosts=len(hosts), added=len(added), let_go=len(stopping))
        self.beat.set()
        if added:
            self.changed.set()  # their desired state is computed with the next round

    async def wait_let_go(self, names: set[str]) -> None:
        """Return once these hosts' links are closed and their in-flight syncs over."""
        tasks = [self.letting_go[n] for n in names if n in self.letting_go]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _track(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        return task

    # -- the registry side ----------------------------------------------------

    def _read_state(self) -> tuple[RegistrySnapshot, CaseWatch, datetime | None]:
        """The round's registry inputs, and when the change they include was committed."""
        with self.registry.read() as session:
            snapshot, watch = read_registry(session)
            last = session.exec(
                select(AuditEvent.at).where(AuditEvent.seq == snapshot.head_seq)
            ).first()
        return snapshot, watch, last

    async def _state(self) -> tuple[RegistrySnapshot, CaseWatch, datetime | None]:
        """The registry's state now; while it cannot be read, the last one read.

        Enforcing the last known state keeps expiries and grants' ``until`` working
        through a registry outage (the state is recomputed at the moment). The rounds
        are recorded once the registry is back (``keyward.daemon.backlog``).
        """
        try:
            state = await asyncio.to_thread(self._read_state)
        except REGISTRY_FAILURES as exc:
            if self.snapshot is None:
                raise
            if not self.enforcing_last_state:
                self.enforcing_last_state = True
                self.log.error(
                    "registry_unavailable_enforcing_last_state",
                    seq=self.snapshot.head_seq,
                    error=first_line(exc),
                )
            return self.snapshot, self.watch, None
        if self.enforcing_last_state:
            self.enforcing_last_state = False
            self.log.info("registry_available_again", seq=state[0].head_seq)
        return state

    def _head(self) -> int:
        seq, _ = self.registry.head()
        return seq

    async def watch_registry(self) -> None:
        """Poll the chain head (cheap, one row); PostgreSQL NOTIFY wakes it sooner."""
        # The listener is part of this watcher, not in-flight work: it never finishes by
        # itself, so waiting for it on SIGTERM held every PostgreSQL shutdown for 30 s.
        listener = None
        if self.registry.backend == "postgresql":
            listener = asyncio.create_task(self._listen(), name="registry-listen")
        try:
            while not self.stopping.is_set():
                try:
                    seq = await asyncio.to_thread(self._head)
                    if seq != self.head_seq:
                        self.head_seq = seq
                        self.changed.set()
                except REGISTRY_FAILURES as exc:
                    self.log.warning("registry_unavailable", error=first_line(exc))
                await self._sleep(self.settings.poll_interval)
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _listen(self) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        dsn = (
            make_url(self.registry.url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        while not self.stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute("LISTEN keyward_registry")
                    async for _ in conn.notifies():
                        self.changed.set()
                        if self.stopping.is_set():
                            return
            except (psycopg.Error, OSError) as exc:
                self.log.warning("registry_listen_failed", error=first_line(exc))
                await self._sleep(2.0)

    async def watch_inventory(self) -> None:
        while not self.stopping.is_set():
            await self._sleep(self.settings.inventory_poll, self.reload)
            forced = self.reload.is_set()
            self.reload.clear()
            current = await asyncio.to_thread(inventory_fingerprint, self.inventory_dir)
            if current == self.inventory_hash and not forced:
                continue
            self.inventory_hash = current
            if await asyncio.to_thread(self._load_inventory):
                self.log.info("inventory_reloaded", hosts=len(self.inventory.hosts()))  # type: ignore[union-attr]
                self._sync_links()
                self.confirmed.clear()
                self.changed.set()
            else:
                self.log.error(
                    "inventory_kept",
                    reason="new inventory does not validate; enforcing the last good one",
                )

    async def watch_time(self) -> None:
        """Wake up when a key expires or a grant runs out, not at the next full pass.

        Two things end the sleep: the moment arrives (then the state is recomputed), or a
        push round produced a new snapshot (then only the next moment is recomputed). The
        second must never count as the first: every round sets ``changed_snapshot``, so
        treating that wake-up as "time is due" fed a round, which woke this loop again, and
        the daemon spun on one core for as long as an expiry was within the hour.
        """
        while not self.stopping.is_set():
            moment = None
            if self.snapshot is not None:
                moment = next_time_change(self.snapshot, self.clock())
            delay = MAX_SLEEP
            if moment is not None:
                # The slack lands the wake-up just past the moment, when the line is gone.
                left = (moment - self.clock()).total_seconds()
                delay = min(MAX_SLEEP, max(0.0, left) + TIME_SLACK)
            if await self._sleep(delay, self.changed_snapshot):
                return
            # Decide by the clock, not by which wait ended: a new snapshot that came in
            # just as the moment passed must not swallow it, nor an early wake fire it.
            if moment is not None and self.clock() >= moment:
                self.log.info("time_change_due", moment=moment.isoformat())
                self.changed.set()

    # -- pushing --------------------------------------------------------------

    async def apply_changes(self) -> None:
        while not self.stopping.is_set():
            await self.changed.wait()
            self.changed.clear()
            if self.inventory is None:
                continue
            try:
                await self._apply_once()
            except Exception as exc:  # the one policy: see keyward.daemon.failures
                round_failed(self.log, "push_round_failed", exc)
                await self._sleep(1.0)
                self.changed.set()

    async def _apply_once(self) -> None:
        assert self.inventory is not None
        started = time.monotonic()
        assert self.agent_key is not None
        snapshot, watch, committed_at = await self._state()
        now = self.clock()
        hosts = tuple(h for h in self.inventory.hosts() if self._owns(h.name))
        # Off the event loop: at thousands of hosts this takes a while, and keepalives,
        # heartbeats and other hosts' I/O must go on meanwhile.
        inputs = await asyncio.to_thread(
            compute_inputs, snapshot, self.inventory, hosts, self.agent_key, now
        )
        desired = inputs.desired
        new_cases = set(watch) - set(self.watch)
        self.inputs, self.snapshot, self.desired, self.watch = inputs, snapshot, desired, watch
        self.changed_snapshot.set()
        try:
            await self._push(inputs, started, new_cases, committed_at)
        finally:
            # After the push, not beside it: the sweep's queries in a worker thread held the
            # interpreter against the push's event loop, at every round.
            self.sweep_due.set()

    async def _push(
        self,
        inputs: RoundInputs,
        started: float,
        new_cases: set[int],
        committed_at: datetime | None,
    ) -> None:
        """Sync every file whose desired content this daemon has not confirmed."""
        snapshot, desired = inputs.snapshot, inputs.desired
        pending: dict[str, list[DesiredFile]] = {}
        for target, d in desired.items():
            if new_cases or self.confirmed.get(target) != signature(d):
                pending.setdefault(target.host, []).append(d)
        self.metrics.pending.set(sum(len(v) for v in pending.values()))
        ready = [self.links[h] for h in pending if h in self.links and self.links[h].connected]
        if not ready:
            return
        self.log.info(
            "change_detected",
            seq=snapshot.head_seq,
            hosts=len(ready),
            files=sum(len(pending[link.host.name]) for link in ready),
        )
        results = await self._sync_many(
            [
                (link, files_of(link.host, desired) if new_cases else pending[link.host.name])
                for link in ready
            ]
        )
        elapsed = time.monotonic() - started
        lag = None
        if committed_at is not None:
            lag = max(0.0, (self.confirmed_at - committed_at).total_seconds())
            self.metrics.propagation.observe(lag)
        self.last_push_at = self.clock()
        self.last_lag_ms = round((lag if lag is not None else elapsed) * 1000, 1)
        self.log.info(
            "push_done",
            hosts=len(results),
            failed=sum(1 for r in results if not r.ok),
            seconds=round(elapsed, 3),
            lag_ms=self.last_lag_ms,
        )
        self.metrics.pending.set(
            sum(1 for t, d in self.desired.items() if self.confirmed.get(t) != signature(d))
        )

    async def _sync_many(
        self, work: Iterable[tuple[HostLink, list[DesiredFile]]], collect: bool = False
    ) -> list[HostResult]:
        assert self.inputs is not None and self.creds is not None
        # Planned at this moment, from the last computed state (a connect can come later).
        inputs = dataclasses.replace(self.inputs, now=self.clock())
        ctx = host_context(
            inputs,
            self.creds,
            self.clock,
            new_run_id("d"),
            self.watch,
            RoundSettings(collect=collect),
            self.auth_positions,
        )
        if self.cluster is not None:
            ctx = dataclasses.replace(ctx, fence=self.cluster.fence.check)
        await self.lock.acquire()
        try:
            with self.collector.pausing():
                tasks = [self._track(self._sync(link, files, ctx)) for link, files in work]
                results: list[HostResult] = list(await asyncio.gather(*tasks))
        finally:
            await self.lock.release()
        self.confirmed_at = self.clock()  # every file of the round is read back by now
        # A host whose writes the fence refused, with nothing written, is no longer this
        # daemon's: its state is the new holder's to record, not ours.
        results = [r for r in results if not fenced(r)]
        await self._record(inputs, ctx, results)
        return results

    async def _record(
        self, inputs: RoundInputs, ctx: RunContext, results: list[HostResult]
    ) -> None:
        """The engine's recorder, one transaction for the whole round (one disk sync).

        The daemon does not wait for a registry that refuses: it keeps the round in its
        backlog and records it, before anything newer, once the registry is back
        (``keyward.daemon.backlog``). Read positions advance only for the hosts whose
        logins were stored.
        """
        if not await self.backlog.flush(self._plain_recorder):
            self.backlog.keep(ctx.run_id, results)
            return
        recorder = Recorder(
            self.registry,
            self.actor,
            self.clock,
            ctx.run_id,
            tuple(self.watch),
            self.log,
            LoginSink.of(inputs),
        )
        await asyncio.to_thread(recorder.record, results)
        self.backlog.keep(ctx.run_id, recorder.unrecorded)
        for result in recorder.logins_stored:
            assert result.auth is not None and result.auth.position is not None
            self.auth_positions[result.host.name] = result.auth.position
        if not recorder.alerts:
            return
        try:
            await asyncio.to_thread(recorder.notify, inputs.inventory.policy.alert_command)
        except KeywardError as exc:
            self.log.error("logins_record_failed", hosts=len(results), error=exc.message)

    def _plain_recorder(self, run_id: str) -> Recorder:
        """A recorder for a round kept in the backlog (its logins are not kept)."""
        return Recorder(self.registry, self.actor, self.clock, run_id, tuple(self.watch), self.log)

    async def _sync(self, link: HostLink, files: list[DesiredFile], ctx: RunContext) -> HostResult:
        async with link.busy:
            conn = link.connection
            started = self.clock()
            if conn is None:
                return failed(
                    link.host, started, ctx, KeywardError(f"{link.host.name}: not connected")
                )
            try:
                async with asyncio.timeout(SYNC_TIMEOUT):
                    result = await sync_known(conn, files, ctx, link.known)
            except (TimeoutError, *HOST_FAILURES) as exc:
                link.broken(str(exc) or type(exc).__name__)
                result = failed(link.host, started, ctx, exc)
            if not result.ok:
                link.known.clear()
            elif link.connection is conn:  # still the connection the files were synced over
                link.known.update(known_after(result))
        if self.cluster is not None:
            outcome = "fenced" if fenced(result) else "ok" if result.ok else "failed"
            self.cluster.metrics.shard_pushes.labels(
                shard=str(shard_of(link.host.name)), outcome=outcome
            ).inc()
            if outcome == "fenced":
                self.cluster.metrics.fenced.inc()
        if result.ok:
            for f in result.files:
                self.confirmed[f.plan.target] = (
                    signature(self.desired[f.plan.target])
                    if (f.plan.target in self.desired)
                    else ""
                )
        else:
            self.metrics.failures.inc()
            for f in result.files:
                self.confirmed.pop(f.plan.target, None)
        return result

    async def _on_connect(self, link: HostLink) -> None:
        """A (re)connected host gets every file synced: it may have missed changes."""
        # The heartbeat counts the connected hosts (once per beat, not once per connect:
        # counting at every connect was quadratic while a large fleet connected).
        self.beat.set()
        if self.snapshot is None or self.inventory is None:
            self.changed.set()
            return
        # Its own targets, not a scan of every host's (quadratic when a fleet connects).
        host = link.host
        for account in host.managed_accounts:
            for pattern in host.authorized_keys:
                self.confirmed.pop(FileTarget(host.name, account, pattern), None)
        await self.connects.join(link)

    async def _sync_connected(self, links: list[HostLink]) -> None:
        """The hosts that connected within one gathering window, synced as one round."""
        work = []
        for link in links:
            if link.connection is None:
                continue  # dropped again meanwhile: its next connect syncs it
            try:
                work.append((link, files_of(link.host, self.desired)))
            except KeyError:
                self.changed.set()  # newly held: its desired state comes with the next round
        if work:
            await self._sync_many(work, collect=True)

    async def verify(self) -> None:
        """Full verification: read every managed file over the open connections."""
        interval = self.settings.verify_interval
        while not self.stopping.is_set():
            if await self._sleep(interval * random.uniform(0.9, 1.1)):  # noqa: S311
                return
            if self.snapshot is None:
                continue
            # Recompute first so the pass checks against the state at this moment.
            try:
                await self._apply_once()
            except Exception as exc:  # the one policy: see keyward.daemon.failures
                round_failed(self.log, "verification_failed", exc)
                continue
            links = [link for link in self.links.values() if link.connected]
            random.shuffle(links)
            started = time.monotonic()
            results = await self._sync_many(
                ((link, files_of(link.host, self.desired)) for link in links), collect=True
            )
            self.last_verify_at = self.clock()
            self.metrics.last_verification = time.time()
            drift = sum(
                1
                for r in results
                for f in r.files
                for c in f.plan.changes
                if c.action == "remove" and c.reason == "drift"
            )
            self.log.info(
                "verification_done",
                hosts=len(results),
                drift=drift,
                failed=sum(1 for r in results if not r.ok),
                seconds=round(time.monotonic() - started, 3),
            )

    # -- notifications ----------------------------------------------------------

    def _sweep(self) -> None:
        from keyward.inventory.settings import load_notify_settings
        from keyward.notify.deliver import Deliverer
        from keyward.notify.sweep import sweep

        settings = load_notify_settings(self.inventory_dir)
        deliverer = Deliverer.from_settings(settings) if settings.channels else None
        sweep(self.registry, settings, deliverer, self.actor, self.clock())

    async def notify_sweep(self) -> None:
        """Record expired access and send renewal reminders (``keyward.notify.sweep``):
        after every recompute (an ``until`` passing is one) and at least every minute, in
        a thread of its own so a slow receiver never holds a push."""
        from keyward.notify.sweep import SWEEP_EVERY

        while not self.stopping.is_set():
            if await self._sleep(SWEEP_EVERY, self.sweep_due):
                return
            try:
                await asyncio.to_thread(self._sweep)
            except Exception as exc:  # the one policy: see keyward.daemon.failures
                round_failed(self.log, "notify_sweep_failed", exc)

    # -- directory ------------------------------------------------------------

    async def directory_sync(self) -> None:
        """``keyward directory sync`` every ``[directory] sync_interval``, first at start.

        The sync runs in a worker thread (LDAP and the offboarding round block); its
        guard stops it exactly as it stops the timer's (an alert, nothing changed), and
        a failure is logged and retried at the next interval, never fatal.  The
        interval is read from the inventory each time, so a reload changes it.
        """
        while not self.stopping.is_set():
            directory = self.inventory.directory if self.inventory is not None else None
            interval = directory.sync_interval if directory is not None else None
            if directory is None or interval is None:
                if await self._sleep(5.0):  # a reloaded inventory may bring one
                    return
                continue
            try:
                await asyncio.to_thread(self._directory_sync_once)
            except Exception as exc:  # the one policy: see keyward.daemon.failures
                round_failed(self.log, "directory_sync_failed", exc)
            if await self._sleep(interval):
                return

    def _directory_sync_once(self) -> None:
        from keyward.engine.directory_sync import sync
        from keyward.engine.round import Surroundings

        assert self.inventory is not None
        around = Surroundings(self.registry, self.actor, self.clock, time.sleep)
        result = sync(
            around,
            self.inventory,
            dry_run=False,
            allow_mass_offboard=False,  # never from a schedule, as the timer never does
            on_wait=lambda holder: self.log.info("lock_wait", holder=holder),
            holder="keyward daemon (directory sync)",
            component="daemon",
        )
        self.log.info(
            "directory_sync_done",
            outcome=result.outcome,
            exit_code=result.exit_code,
            cases=result.cases,
            unconfirmed_hosts=result.unconfirmed,
        )

    # -- heartbeat ------------------------------------------------------------

    def _host_map(self) -> str:
        """The heartbeat's per-host JSON, built on the event loop in one pass over the files.

        It used to be built in the writer thread while the loop changed ``confirmed``
        (a "dictionary changed size" error ended the heartbeat for good, at a thousand
        hosts) and counted every host's files over all files (quadratic in the fleet).
        """
        counts: dict[str, int] = {}
        for target in self.confirmed:
            counts[target.host] = counts.get(target.host, 0) + 1
        hosts: dict[str, Any] = {
            name: {
                "connected": link.connected,
                "error": link.last_error,
                "confirmed_files": counts.get(name, 0),
            }
            for name, link in self.links.items()
        }
        if self.settings.metrics:
            hosts[METRICS_KEY] = self.metrics_state()
        return json.dumps(hosts, sort_keys=True)

    def _write_heartbeat(self, hosts: str, connected: int, stopped: bool = False) -> None:
        with Session(self.registry.engine) as session, session.begin():
            row = session.get(DaemonStatus, self.instance) or DaemonStatus(
                id=self.instance, started_at=self.started_at, heartbeat_at=self.clock()
            )
            row.heartbeat_at = self.clock()
            row.hosts_total = len(self.links)
            row.hosts_connected = connected
            row.last_push_at = self.last_push_at
            row.last_lag_ms = self.last_lag_ms
            row.last_verify_at = self.last_verify_at
            row.stopped_at = self.clock() if stopped else None
            row.hosts = hosts
            session.add(row)

    async def heartbeat(self) -> None:
        while not self.stopping.is_set():
            connected = sum(1 for x in self.links.values() if x.connected)
            self.metrics.hosts_connected.set(connected)
            try:
                await asyncio.to_thread(self._write_heartbeat, self._host_map(), connected)
            except REGISTRY_FAILURES as exc:
                self.log.warning("heartbeat_failed", error=first_line(exc))
            else:
                if len(self.backlog):  # the registry is back: record what it missed
                    await self.backlog.flush(self._plain_recorder)
            took = self.collector.maintain()  # when due and no round is syncing
            if took is not None:
                self.log.info("memory_collected", seconds=round(took, 3))
            trimmed = self.collector.trim()  # after rounds, when due and none is syncing
            if trimmed is not None:
                self.log.info(
                    "memory_trimmed",
                    seconds=round(trimmed.seconds, 3),
                    resident_mb_before=trimmed.resident_mb_before,
                    resident_mb=trimmed.resident_mb,
                )
            state = f"connected {connected}/{len(self.links)} hosts"
            if self.metrics_error is not None:
                state += f"; metrics unavailable: {self.metrics_error}"
            sd_notify(f"STATUS={state}")
            beat_at = time.monotonic()
            if await self._sleep(HEARTBEAT_EVERY, self.beat):
                return
            # Woken early (a push, a connect): not more than once per BEAT_SPACING. While
            # a large fleet connects, a beat per connect rebuilt and stored the whole host
            # map thousands of times.
            spacing = BEAT_SPACING - (time.monotonic() - beat_at)
            if spacing > 0 and await self._sleep(spacing):
                return

    # -- metrics --------------------------------------------------------------

    def metrics_state(self) -> dict[str, Any]:
        """What ``keyward status`` shows about the metrics endpoint."""
        return {
            "address": self.metrics_address,
            "listening": self.metrics_listening,
            "error": self.metrics_error,
        }

    def _metrics_unavailable(self, error: str, retry_in: float | None) -> None:
        if error != self.metrics_error:  # once per distinct problem, not once per retry
            self.log.error(
                "metrics_unavailable", address=self.metrics_address, error=error, retry_in=retry_in
            )
        self.metrics_error = error
        self.beat.set()

    async def serve_metrics(self) -> None:
        """Serve ``--metrics``; a port that cannot be had is reported and retried, never fatal.

        A local user who binds the port first used to make the daemon exit, and under
        systemd restart it in a loop while the squatter's fake metrics looked healthy: a
        user could switch enforcement off. Enforcement does not depend on the metrics, so
        the failure is logged (``metrics_unavailable``), put in the heartbeat for
        ``keyward status`` and in systemd's STATUS, and the bind is retried with backoff.
        """
        try:
            sock = inherited_listener()
        except KeywardError as exc:
            self._metrics_unavailable(exc.message, None)  # a unit file problem: no retry
            return
        delay = METRICS_RETRY_START
        while sock is None:
            assert self.settings.metrics is not None
            try:
                sock = bind_loopback(self.settings.metrics)
            except OSError as exc:
                self._metrics_unavailable(exc.strerror or str(exc), delay)
                if await self._sleep(delay):
                    return
                delay = min(METRICS_RETRY_MAX, delay * 2)
        try:
            self.metrics_address = address_of(sock)
            try:
                await self.metrics_server.start(sock)
            except OSError as exc:
                self._metrics_unavailable(exc.strerror or str(exc), None)
                return
            self.metrics_listening, self.metrics_error = True, None
            self.log.info("metrics_listening", address=self.metrics_address)
            self.beat.set()
            await self.stopping.wait()
        finally:
            self.metrics_listening = False
            await self.metrics_server.close()
            sock.close()

    # -- lifecycle ------------------------------------------------------------

    async def _sleep(self, seconds: float, event: asyncio.Event | None = None) -> bool:
        """Sleep, waking early when stopping (returns True) or ``event`` is set."""
        waits = [asyncio.ensure_future(self.stopping.wait())]
        if event is not None:
            waits.append(asyncio.ensure_future(event.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if event is not None and event.is_set():
            event.clear()
        return self.stopping.is_set()

    def request_stop(self) -> None:
        self.log.info("daemon_stopping")
        sd_notify("STOPPING=1")
        self.stopping.set()
        self.changed.set()

    def _join_cluster(self) -> None:
        """On PostgreSQL: hold no host until the first lease round says which are ours.

        From here on the daemon's clock is the database's (corrected at each heartbeat),
        for expiries and for its records alike: daemons of one fleet agree on the time.
        """
        limit_idle_transactions(self.registry.engine)
        clock = DbClock(self.clock)
        self.clock = self.registry.clock = clock
        member = new_member_id()
        self.instance = member
        self.owned = set()
        self.log = self.log.bind(member=member)
        self.backlog = Backlog(self.log)
        self.cluster = Cluster(
            self.registry.engine,
            member,
            lambda: [h.name for h in self.inventory.hosts()] if self.inventory else [],
            self.set_owned,
            self.wait_let_go,
            ClusterMetrics(self.metrics.registry, member),
            self.log,
            clock,
        )

    async def run(self) -> int:
        self.solo_fd = claim_sqlite(self.registry)  # a second daemon on SQLite stops here
        if self.registry.backend == "postgresql":
            self._join_cluster()
        if not self._load_inventory():
            raise UsageError(
                f"the inventory in {self.inventory_dir} does not validate; "
                "run 'keyward inventory check'"
            )
        self.inventory_hash = inventory_fingerprint(self.inventory_dir)
        self.auth_positions = await asyncio.to_thread(saved_positions, self.registry)
        assert self.inventory is not None
        soft, _ = raise_fd_limit(fds_needed(len(self.inventory.hosts())))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload.set)
        if self.settings.metrics:
            parse_loopback(self.settings.metrics)  # a malformed address is the user's error
        self.log.info(
            "daemon_started",
            hosts=len(self.inventory.hosts()),
            fd_limit=soft,
            verify_interval=self.settings.verify_interval,
        )
        self._sync_links()
        workers = [
            asyncio.create_task(self.watch_registry()),
            asyncio.create_task(self.watch_inventory()),
            asyncio.create_task(self.watch_time()),
            asyncio.create_task(self.apply_changes()),
            asyncio.create_task(self.verify()),
            asyncio.create_task(self.heartbeat()),
            asyncio.create_task(self.notify_sweep()),
            asyncio.create_task(self.directory_sync()),
        ]
        if self.settings.metrics:
            workers.append(asyncio.create_task(self.serve_metrics()))
        if self.cluster is not None:
            workers.append(asyncio.create_task(self.cluster.run(self._sleep)))
        sd_notify("READY=1")
        await self.stopping.wait()
        # Finish what is in flight (writes are atomic on the hosts anyway), then close.
        pending = [t for t in self.inflight if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=30)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.gather(*(link.stop() for link in self.links.values()), return_exceptions=True)
        if self.cluster is not None:  # nothing is written any more: hand every host over
            await self.cluster.leave()
        with contextlib.suppress(*REGISTRY_FAILURES):  # best effort on the way out
            connected = sum(1 for x in self.links.values() if x.connected)
            await asyncio.to_thread(self._write_heartbeat, self._host_map(), connected, True)
        self.lock.close()
        if self.solo_fd is not None:
            os.close(self.solo_fd)
        self.log.info("daemon_stopped")
        return 0
