"""Small operating-system helpers for the daemon: systemd notify, writer lock."""

from __future__ import annotations

import asyncio
import os
import socket

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
        self._lock = LockHandle(registry, DAEMON_HOLDER, shared)
        self._holders = 0
        self._steps = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._steps:
            if self._holders == 0:
                while not await asyncio.to_thread(self._lock.try_acquire):
                    await asyncio.sleep(POLL)
            self._holders += 1

    async def release(self) -> None:
        async with self._steps:
            self._holders -= 1
            if self._holders == 0:
                await asyncio.to_thread(self._lock.release)

    def close(self) -> None:
        self._lock.close()
