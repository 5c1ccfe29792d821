"""Work that arrives close together, done as one batch; every caller waits for its own.

When a large fleet connects, hosts arrive tens per second. Syncing each on its own cost
a round's fixed work per host: a writers' lock taken and given back, a registry
transaction (one disk sync) for its record, and plans no other host could share. A
``Gatherer`` holds each arrival for a short window, then hands everything that arrived
meanwhile to one call; while that call runs, the next batch gathers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Gatherer(Generic[T]):
    """``await join(item)`` returns once a batch containing ``item`` has been handled
    (raising what handling it raised)."""

    def __init__(
        self,
        handle: Callable[[list[T]], Awaitable[None]],
        window: float,
        spawn: Callable[[Any], asyncio.Task[Any]] = asyncio.ensure_future,
    ) -> None:
        self._handle = handle
        self._window = window
        self._spawn = spawn  # the daemon's, so a stopping daemon waits for a batch in flight
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._gathering = False

    async def join(self, item: T) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if not self._gathering:
            self._gathering = True
            self._spawn(self._drain())
        await asyncio.shield(done)  # a caller that gives up does not cancel the others' batch

    def _take(self) -> list[tuple[T, asyncio.Future[None]]]:
        batch, self._pending = self._pending, []
        self._gathering = False  # arrivals from now on start the next batch
        return batch

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[None]]] | None = None
        try:
            await asyncio.sleep(self._window)
            batch = self._take()
            await self._handle([item for item, _ in batch])
        except BaseException as exc:
            for _, done in batch if batch is not None else self._take():
                if done.done():
                    continue
                if isinstance(exc, Exception):
                    done.set_exception(exc)
                    done.exception()  # retrieved: a caller that gave up is not an error
                else:
                    done.cancel()  # the daemon is stopping
            if not isinstance(exc, Exception):
                raise
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
