"""Which daemon enforces which host: hosts fall into fixed shards, shards go to live members.

Pure functions, the same in every daemon, so that daemons that see the same live members
agree on the division without talking to each other:

- a host's shard is a hash of its name modulo :data:`SHARDS` (fixed: changing it would
  move every host at once, so it is part of the protocol, not a setting);
- a shard goes to the live member with the highest rendezvous score
  ``hash(member, shard)`` (highest random weight hashing). When a member leaves, only
  its own shards move, each to the member that scored second for it; when one joins, it
  takes about ``1/n`` of the shards, from every member alike. Nothing else moves.

Leases (``keyward.daemon.leases``), not this function, decide who may write: during a
change of membership two daemons may briefly disagree about the division, and the lease
makes the newcomer wait until the old holder let go or its lease ran out.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping

SHARDS = 1024


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


@functools.lru_cache(maxsize=1 << 16)  # asked for every host at every heartbeat
def shard_of(host: str, shards: int = SHARDS) -> int:
    """The shard a host name falls into, ``0 <= shard < shards``."""
    return _hash64(b"host\0" + host.encode()) % shards


def score(member: str, shard: int) -> int:
    """The rendezvous weight of ``member`` for ``shard``."""
    return _hash64(f"{member}\0{shard}".encode())


def owner(shard: int, members: Iterable[str]) -> str | None:
    """The member ``shard`` goes to (None without members); ties go to the smaller id."""
    best: tuple[int, str] | None = None
    for member in members:
        key = (score(member, shard), member)
        if best is None or key[0] > best[0] or (key[0] == best[0] and member < best[1]):
            best = key
    return None if best is None else best[1]


def assign(shards: Iterable[int], members: Iterable[str]) -> dict[int, str]:
    """Each shard's member; empty when there are no members."""
    live = sorted(set(members))
    if not live:
        return {}
    out: dict[int, str] = {}
    for shard in shards:
        who = owner(shard, live)
        assert who is not None
        out[shard] = who
    return out


def shards_of_hosts(hosts: Iterable[str], shards: int = SHARDS) -> dict[int, list[str]]:
    """The hosts of each shard that has any, in the order given."""
    out: dict[int, list[str]] = {}
    for host in hosts:
        out.setdefault(shard_of(host, shards), []).append(host)
    return out


def hosts_of(member: str, by_shard: Mapping[int, list[str]], members: Iterable[str]) -> set[str]:
    """The hosts ``member`` is meant to hold among ``members`` (whether or not it does yet)."""
    live = sorted(set(members))
    return {
        host for shard, names in by_shard.items() if owner(shard, live) == member for host in names
    }
