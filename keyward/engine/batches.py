"""Recording finished hosts while a run goes on, many hosts per registry transaction.

A one-shot reconcile used to record each host in its own transaction, on the event
loop: one disk sync per host, during which no other host made progress. The recorder
instead collects results as hosts finish and hands whatever has gathered to a worker
thread, one batch (one transaction) at a time. While a batch is written, the next one
gathers, so batches grow when the registry is slow and stay small when it is fast.

A host's changes are recorded moments after they are made, as before; if the run is
killed in between, the next run records them late (``recorded-late``), so no key
reaches or leaves a host without an audit event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_BATCH = 250  # results per transaction: bounds how long one write holds the registry


class BatchRecorder(Generic[T]):
    """Feed results with :meth:`add` from the event loop; :meth:`close` waits for the last."""

    def __init__(self, record: Callable[[list[T]], None], max_batch: int = MAX_BATCH) -> None:
        self._record = record
        self._max_batch = max_batch
        self._pending: list[T] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def add(self, item: T) -> None:
        self._pending.append(item)
        self._wake.set()

    async def close(self) -> None:
        """Record everything still pending; re-raises what the record callback raised."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await asyncio.to_thread(self._record, batch)
            if self._closing:
                return
