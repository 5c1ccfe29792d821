"""One long-lived, self-healing SSH connection per managed host.

A fresh SSH connection costs far more than anything done over it, so the
daemon opens each host once and keeps it: keepalives detect a dead peer,
reconnects back off exponentially with full jitter, and a shared semaphore
bounds how many connection attempts run at once.  Connections are opened through
the transport's ``Connector`` (the SSH credentials; a fake fleet in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

from keyward.agent.transport import Connector, HostTransport
from keyward.daemon.failures import round_failed
from keyward.desired import FileTarget
from keyward.errors import HostError
from keyward.inventory.model import Host
from keyward.plan import Observed

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
KEEPALIVE = 15.0


class HostLink:
    """Keeps ``host`` connected; ``connection`` is None while it is not."""

    def __init__(
        self,
        host: Host,
        connector: Connector,
        attempts: asyncio.Semaphore,
        log: Any,
        on_connect: Callable[[HostLink], Awaitable[None]],
        keepalive: float = KEEPALIVE,
    ) -> None:
        self.host = host
        self.connector = connector
        self._attempts = attempts
        self._log = log.bind(host=host.name)
        self._on_connect = on_connect
        self._keepalive = keepalive
        self.connection: HostTransport | None = None
        self.last_error: str | None = None
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.busy = asyncio.Lock()  # one sync at a time per host
        # What the last syncs over the current connection left in each file (a push then
        # need not read them again: ``keyward.agent.reconcile.sync_known``); emptied
        # whenever the connection is (re)made or dropped.
        self.known: dict[FileTarget, Observed] = {}

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"link-{self.host.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()

    def broken(self, reason: str) -> None:
        """Called when a request over the connection failed: reconnect."""
        self.last_error = reason
        if self.connection is not None:
            self.connection.abort()

    async def _drop(self) -> None:
        conn, self.connection = self.connection, None
        self.known = {}
        if conn is not None:
            with contextlib.suppress(TimeoutError, OSError, HostError):
                await asyncio.wait_for(conn.close(), 5)

    async def _run(self) -> None:
        delay = BACKOFF_START
        while not self._stopping:
            try:
                async with self._attempts:
                    conn = await self.connector.open(self.host, keepalive=self._keepalive)
            except HostError as exc:
                self.failures += 1
                self.last_error = exc.message
                self._log.warning(
                    "host_connect_failed", error=exc.message, retry_in=round(delay, 1)
                )
                await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not crypto
                delay = min(BACKOFF_MAX, delay * 2)
                continue
            self.known = {}
            self.connection = conn
            self.last_error = None
            self.failures = 0
            delay = BACKOFF_START
            self._log.info("host_connected")
            try:
                await self._on_connect(self)
            except Exception as exc:  # the one policy: see keyward.daemon.failures
                round_failed(self._log, "host_sync_failed", exc)
            await conn.wait_closed()
            self.connection = None
            self.known = {}
            if not self._stopping:
                self._log.warning("host_disconnected", error=self.last_error)
                await asyncio.sleep(random.uniform(0, BACKOFF_START))  # noqa: S311
