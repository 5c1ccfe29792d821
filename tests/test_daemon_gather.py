"""keyward.daemon.gather: arrivals within a window are handled as one batch."""

from __future__ import annotations

import asyncio

import pytest

from keyward.daemon.gather import Gatherer


def test_arrivals_within_the_window_are_one_batch_and_later_ones_the_next() -> None:
    batches: list[list[int]] = []

    async def handle(items: list[int]) -> None:
        await asyncio.sleep(0.05)
        batches.append(items)

    async def main() -> None:
        g: Gatherer[int] = Gatherer(handle, 0.1)
        first = [asyncio.ensure_future(g.join(i)) for i in range(5)]
        await asyncio.sleep(0.12)  # the first window closed: the batch is being handled
        later = [asyncio.ensure_future(g.join(i)) for i in range(5, 8)]
        await asyncio.gather(*first)
        assert batches == [[0, 1, 2, 3, 4]]  # each caller returns once its batch is done
        await asyncio.gather(*later)

    asyncio.run(main())
    assert batches == [[0, 1, 2, 3, 4], [5, 6, 7]]


def test_a_failure_reaches_every_caller_of_its_batch_and_not_the_next() -> None:
    async def handle(items: list[int]) -> None:
        if 0 in items:
            raise RuntimeError("registry gone")

    async def main() -> None:
        g: Gatherer[int] = Gatherer(handle, 0.05)
        calls = [asyncio.ensure_future(g.join(i)) for i in range(3)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        await g.join(7)  # the next batch is handled on its own

    asyncio.run(main())


def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    handled: list[list[int]] = []

    async def handle(items: list[int]) -> None:
        await asyncio.sleep(0.05)
        handled.append(items)

    async def main() -> None:
        g: Gatherer[int] = Gatherer(handle, 0.05)
        quitter = asyncio.ensure_future(g.join(1))
        stayer = asyncio.ensure_future(g.join(2))
        await asyncio.sleep(0.01)
        quitter.cancel()
        await stayer
        with pytest.raises(asyncio.CancelledError):
            await quitter

    asyncio.run(main())
    assert handled == [[1, 2]]
