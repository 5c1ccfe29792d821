"""The daemon's writer lock: many rounds in the daemon may hold it, no other process can."""

from __future__ import annotations

import asyncio

import pytest

from keyward.daemon.support import WriterLock
from keyward.registry.lock import LockBusy, reconcile_lock
from keyward.registry.store import Registry


def other_writer_gets_in(registry: Registry) -> bool:
    try:
        with reconcile_lock(registry, wait=0.0):
            return True
    except LockBusy:
        return False


def test_concurrent_rounds_share_the_lock_and_the_last_one_gives_it_back(db_url: str) -> None:
    registry, _, _ = Registry.initialise(db_url)
    lock = WriterLock(registry)

    async def rounds() -> list[bool]:
        seen: list[bool] = []

        async def one(delay: float) -> None:
            await lock.acquire()
            try:
                await asyncio.sleep(delay)
                seen.append(await asyncio.to_thread(other_writer_gets_in, registry))
            finally:
                await lock.release()

        # Started together: they used to open the lock file twice and keep it forever.
        await asyncio.wait_for(asyncio.gather(*(one(0.01 * i) for i in range(8))), 30)
        seen.append(await asyncio.to_thread(other_writer_gets_in, registry))
        return seen

    async def twice() -> list[bool]:
        return await rounds() + await rounds()

    try:
        assert asyncio.run(twice()) == ([False] * 8 + [True]) * 2
    finally:
        lock.close()


def test_the_daemon_waits_for_another_writer(db_url: str) -> None:
    registry, _, _ = Registry.initialise(db_url)
    lock = WriterLock(registry)

    async def scenario() -> None:
        with reconcile_lock(registry), pytest.raises(TimeoutError):
            await asyncio.wait_for(lock.acquire(), 0.5)
        await asyncio.wait_for(lock.acquire(), 5)
        assert not await asyncio.to_thread(other_writer_gets_in, registry)
        await lock.release()
        assert await asyncio.to_thread(other_writer_gets_in, registry)

    try:
        asyncio.run(scenario())
    finally:
        lock.close()
