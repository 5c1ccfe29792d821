"""The division of hosts among daemons (keyward.daemon.sharding): pure, table tests.

Rendezvous hashing must spread the fleet evenly, and a change of membership must move
only the hosts it has to: the leaving member's, or about 1/n for a newcomer.
"""

from __future__ import annotations

from collections import Counter

import pytest

from keyward.daemon.sharding import SHARDS, assign, hosts_of, owner, shard_of, shards_of_hosts

HOSTS = [f"web-{i:04d}.example" for i in range(3000)]


def members(n: int) -> list[str]:
    return [f"kw-{i}.example:1:{i:06x}" for i in range(n)]


def test_a_host_always_falls_into_the_same_shard() -> None:
    assert shard_of("web-1") == shard_of("web-1")
    assert all(0 <= shard_of(h) < SHARDS for h in HOSTS)
    assert len({shard_of(h) for h in HOSTS}) > SHARDS * 0.9  # nearly every shard is used


@pytest.mark.parametrize(("n", "tolerance"), [(2, 0.10), (3, 0.15), (4, 0.20), (5, 0.20)])
def test_hosts_are_balanced_among_members(n: int, tolerance: float) -> None:
    division = assign(range(SHARDS), members(n))
    per_member = Counter(division[shard_of(h)] for h in HOSTS)
    mean = len(HOSTS) / n
    assert set(per_member) == set(members(n))
    worst = max(abs(count - mean) / mean for count in per_member.values())
    assert worst <= tolerance, (per_member, worst)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_a_leaving_member_moves_only_its_own_hosts(n: int) -> None:
    before = assign(range(SHARDS), members(n))
    gone = members(n)[1]
    after = assign(range(SHARDS), [m for m in members(n) if m != gone])
    moved = {s for s in range(SHARDS) if before[s] != after[s]}
    assert moved == {s for s in range(SHARDS) if before[s] == gone}
    assert gone not in after.values()


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_a_joining_member_takes_about_its_share_from_everyone(n: int) -> None:
    before = assign(range(SHARDS), members(n))
    newcomer = members(n + 1)[-1]
    after = assign(range(SHARDS), members(n + 1))
    moved = [s for s in range(SHARDS) if before[s] != after[s]]
    assert all(after[s] == newcomer for s in moved)  # nothing moves between old members
    share = SHARDS / (n + 1)
    assert abs(len(moved) - share) <= share * 0.15, (len(moved), share)


def test_every_daemon_computes_the_same_division_in_any_order() -> None:
    live = members(3)
    assert assign(range(SHARDS), live) == assign(range(SHARDS), list(reversed(live)))
    assert assign(range(10), []) == {}
    assert owner(7, []) is None


def test_hosts_of_a_member() -> None:
    live = members(3)
    by_shard = shards_of_hosts(HOSTS)
    parts = [hosts_of(m, by_shard, live) for m in live]
    assert set().union(*parts) == set(HOSTS)
    assert sum(len(p) for p in parts) == len(HOSTS)  # disjoint
