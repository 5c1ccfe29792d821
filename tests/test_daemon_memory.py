"""keyward.daemon.memory: survivors frozen after a round, a full collection now and then."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from collections.abc import Iterator

import pytest

from keyward.daemon.memory import Collector


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settle_takes_survivors_out_of_the_scans(thawed: None) -> None:
    before = gc.get_freeze_count()
    kept = [Node() for _ in range(100)]
    Collector(600).settle()
    assert gc.get_freeze_count() >= before + 100
    assert kept


def test_a_frozen_cycle_is_freed_by_the_next_full_collection_not_sooner(thawed: None) -> None:
    now = [0.0]
    collector = Collector(600, clock=lambda: now[0])
    node = Node()
    ref = weakref.ref(node)
    collector.settle()
    del node
    gc.collect()
    assert ref() is not None  # frozen: ordinary collections skip it
    now[0] = 599.0
    assert collector.maintain() is None and ref() is not None
    now[0] = 600.0
    took = collector.maintain()
    assert took is not None and took >= 0
    assert ref() is None and collector.full_collections == 1
    assert gc.get_freeze_count() > 0  # what is alive is frozen again


def test_overlapping_rounds_keep_the_collector_off_until_the_last_leaves(thawed: None) -> None:
    collector = Collector(600)
    assert gc.isenabled()
    before = gc.get_freeze_count()
    with collector.pausing():
        assert not gc.isenabled()
        with collector.pausing():
            kept = [Node() for _ in range(50)]
        assert not gc.isenabled()  # the other round is still syncing
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + 50 and kept


def test_no_full_collection_while_a_round_syncs(thawed: None) -> None:
    now = [0.0]
    collector = Collector(600, clock=lambda: now[0])
    now[0] = 600.0
    with collector.pausing():
        assert collector.maintain() is None  # due, but a round is syncing
    assert collector.maintain() is not None


def test_the_heap_is_given_back_after_rounds_when_due_and_never_during_one(
    thawed: None,
) -> None:
    now = [0.0]
    calls: list[float] = []
    collector = Collector(
        600, clock=lambda: now[0], trim_every=30, give_back=lambda: calls.append(now[0])
    )
    now[0] = 100.0
    assert collector.trim() is None  # no round since start: nothing to give back
    with collector.pausing():
        pass
    now[0] = 110.0
    with collector.pausing():
        assert collector.trim() is None  # a round is syncing
    trimmed = collector.trim()
    assert trimmed is not None and calls == [110.0]
    assert trimmed.seconds >= 0 and trimmed.resident_mb is not None and trimmed.resident_mb > 0
    with collector.pausing():
        pass
    now[0] = 139.0
    assert collector.trim() is None  # the last was 29 s ago
    now[0] = 140.0
    assert collector.trim() is not None and calls == [110.0, 140.0]
    now[0] = 500.0
    assert collector.trim() is None  # no round since: nothing new to give back


GIVE_BACK = """
from keyward.daemon.memory import give_back_heap, resident_mb
give_back_heap()
blocks = [bytearray(9000) for _ in range(20000)]  # like 20,000 requests in flight
kept = blocks[-10:]  # the last ones stay, so free() alone cannot shrink the heap's top
del blocks
before = resident_mb()
give_back_heap()
print(before, resident_mb())
"""


def test_giving_back_the_heap_returns_freed_memory_to_the_system() -> None:
    """glibc keeps freed memory in its heap; ``give_back_heap`` hands it back. In a fresh
    interpreter, so that what earlier tests left in this one's heap cannot change the layout."""
    out = subprocess.run(
        [sys.executable, "-c", GIVE_BACK], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    before, after = (float(x) for x in out.split())
    assert before - after > 100, out  # about 180 MB were allocated and freed
