"""The one-shot run's batch recorder: nothing added is lost, and slow writes make batches."""

from __future__ import annotations

import asyncio
import threading

import pytest

from keyward.engine.batches import BatchRecorder


def test_results_arriving_during_a_write_go_into_the_next_batch() -> None:
    batches: list[list[int]] = []
    first_started = threading.Event()
    release = threading.Event()

    def record(batch: list[int]) -> None:
        batches.append(list(batch))
        if len(batches) == 1:
            first_started.set()
            release.wait(10)

    async def run() -> None:
        recorder: BatchRecorder[int] = BatchRecorder(record)
        recorder.start()
        recorder.add(1)
        await asyncio.to_thread(first_started.wait, 10)
        for i in range(2, 7):  # while the first write is still going on
            recorder.add(i)
        release.set()
        await recorder.close()

    asyncio.run(run())
    assert batches == [[1], [2, 3, 4, 5, 6]]


def test_close_records_everything_pending_in_bounded_batches() -> None:
    batches: list[list[int]] = []

    async def run() -> None:
        recorder: BatchRecorder[int] = BatchRecorder(batches.append, max_batch=4)
        recorder.start()
        for i in range(10):
            recorder.add(i)
        await recorder.close()

    asyncio.run(run())
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [i for b in batches for i in b] == list(range(10))


def test_a_failing_record_is_reported_at_close() -> None:
    def record(batch: list[int]) -> None:
        raise RuntimeError("registry gone")

    async def run() -> None:
        recorder: BatchRecorder[int] = BatchRecorder(record)
        recorder.start()
        recorder.add(1)
        await recorder.close()

    with pytest.raises(RuntimeError, match="registry gone"):
        asyncio.run(run())
