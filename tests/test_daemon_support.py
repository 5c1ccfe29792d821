"""The writers' lock: one handle per process; in the daemon, many rounds may hold it."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from keyward.daemon.support import WriterLock
from keyward.errors import KeywardError
from keyward.registry.lock import Holder, LockBusy, LockHandle, reconcile_lock
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


def test_a_handle_names_its_holder_gives_the_lock_back_and_leaves_no_name(db_url: str) -> None:
    registry, _, _ = Registry.initialise(db_url)
    first = LockHandle(registry, Holder("keyward offboard", "carol"))
    second = LockHandle(registry, Holder("keyward reconcile"))
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        assert second.held_by().startswith("keyward offboard (pid ")
        assert "actor carol" in second.held_by()
        first.release()
        assert second.try_acquire()
        second.release()
        assert first.try_acquire()  # the same handle, round after round (the daemon's way)
        first.release()
    finally:
        first.close()
        second.close()
    if registry.backend == "postgresql":
        # The lock connections went back to the pool: none may go on naming a holder.
        with registry.engine.connect() as conn:
            names = conn.execute(
                text(
                    "SELECT application_name FROM pg_stat_activity "
                    "WHERE datname = current_database()"
                )
            ).scalars()
            assert not [name for name in names if name.startswith("keyward")]
    registry.dispose()


def test_an_in_memory_registry_has_no_writers_lock() -> None:
    registry, _, _ = Registry.initialise("sqlite://")
    with pytest.raises(KeywardError, match="file or PostgreSQL registry"):
        LockHandle(registry, Holder("keyward reconcile"))
