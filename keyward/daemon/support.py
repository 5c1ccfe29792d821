"""Small operating-system helpers for the daemon: systemd notify, writer lock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from keyward.daemon.failures import REGISTRY_FAILURES, first_line
from keyward.registry.lock import POLL, Holder, LockHandle
from keyward.registry.store import Registry


def sd_notify(state: str) -> bool:
    """Tell systemd about readiness/status (Type=notify); a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


DAEMON_HOLDER = Holder("keyward daemon")


class WriterLock:
    """The same lock as ``keyward reconcile`` takes, acquired without blocking the event loop.

    It keeps other processes out; inside the daemon several push rounds may hold it at
    once (hosts connecting while a verification pass runs). The lock itself
    (:class:`keyward.registry.lock.LockHandle`) is taken when the first holder arrives
    and given back when the last one leaves, one step at a time: two rounds that tried
    at once used to open the lock file twice and flock both, and the release then
    unlocked the wrong descriptor, so the daemon kept a lock nobody would release and
    every later round waited for it forever.
    """

    def __init__(self, registry: Registry, shared: bool = False) -> None:
        self._registry = registry
        self._shared = shared
        self._lock = LockHandle(registry, DAEMON_HOLDER, shared)
        self._holders = 0
        self._locked = False
        self._steps = asyncio.Lock()
        self.unavailable: str | None = None  # why the last round went on without the lock

    async def acquire(self) -> None:
        async with self._steps:
            if self._holders == 0:
                self._locked = await self._take()
            self._holders += 1

    async def _take(self) -> bool:
        """Wait for the lock. Shared (several daemons): a registry that cannot be reached
        is outlived without it, since no one-shot writer can run then either, and the
        lease fence lets only removals through while it lasts."""
        while True:
            try:
                if await asyncio.to_thread(self._lock.try_acquire):
                    self.unavailable = None
                    return True
            except REGISTRY_FAILURES as exc:
                if not self._shared:
                    raise
                self._reset()
                self.unavailable = first_line(exc)
                return False
            await asyncio.sleep(POLL)

    def _reset(self) -> None:
        """A fresh handle (and connection) for the next attempt; the old one is broken."""
        with contextlib.suppress(*REGISTRY_FAILURES):
            self._lock.close()
        self._lock = LockHandle(self._registry, DAEMON_HOLDER, self._shared)

    async def release(self) -> None:
        async with self._steps:
            self._holders -= 1
            if self._holders == 0 and self._locked:
                self._locked = False
                try:
                    await asyncio.to_thread(self._lock.release)
                except REGISTRY_FAILURES:
                    if not self._shared:
                        raise
                    self._reset()  # the server dropped the lock with the connection

    def close(self) -> None:
        self._lock.close()
