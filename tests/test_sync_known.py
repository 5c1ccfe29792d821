"""A push over a held connection plans from what the connection last left in the files.

``sync_known`` is how the daemon pushes a change: no read first, every write a
compare-and-swap against what its last sync confirmed. These tests hold it to the promise
that it ends exactly where ``sync_files`` (read, plan, write) would: same content, same
changes and log events, a hand edit found and removed as drift, nothing written over a file
that changed; and that it does not skip the read where a fresh read is the evidence.
"""

from __future__ import annotations

import asyncio
from typing import Any

from keyward.agent.reconcile import (
    HostResult,
    RunContext,
    files_of,
    known_after,
    sync_files,
    sync_known,
)
from keyward.desired import DesiredFile, FileTarget
from keyward.testing.fakehost import FakeFleet
from tests.test_fakehost import (
    AK,
    KEYS,
    NOW,
    Events,
    desired_for,
    fingerprints,
    fleet_of,
    make_host,
    snapshot,
)


def ctx_for(
    fleet: FakeFleet, desired: dict[FileTarget, DesiredFile], log: Events, **more: Any
) -> RunContext:
    return RunContext(
        snapshot(("bob",)), desired, fleet, NOW, KEYS["agent"].fingerprint, "d1", lambda: NOW,
        log=log, **more,
    )  # fmt: skip


def test_a_push_writes_without_reading_and_ends_where_a_read_would() -> None:
    host = make_host("h0")
    fleet = fleet_of([host])
    fake = fleet["h0"]
    log = Events()

    async def scenario() -> tuple[HostResult, HostResult]:
        conn = await fleet.open(host)
        first = desired_for([host], ("alice", "bob"), ("alice", "bob"))
        synced = await sync_files(conn, files_of(host, first), ctx_for(fleet, first, log))
        known = known_after(synced)
        before = len(fake.requests)
        revoked = desired_for([host], ("alice",), ("alice",))
        push = await sync_known(conn, files_of(host, revoked), ctx_for(fleet, revoked, log), known)
        # No read, and both files in one request.
        assert [q.op for q in fake.requests[before:]] == ["write_many"]
        assert len(fake.requests[-1].files) == 2
        await conn.close()
        return synced, push

    synced, push = asyncio.run(scenario())
    assert synced.ok and push.ok
    assert [f.plan.action for f in push.files] == ["update", "update"]
    assert fingerprints(fake, "deploy") == {KEYS["alice"].fingerprint}
    assert fingerprints(fake, "root") == {KEYS["agent"].fingerprint, KEYS["alice"].fingerprint}
    removed = [(e["account"], e["person"], e["reason"]) for e in log.named("key_removed")]
    assert removed == [("deploy", "bob", "revoked"), ("root", "bob", "revoked")]
    assert push.changes == 2


def test_a_file_changed_since_is_read_again_and_never_overwritten_blindly() -> None:
    host = make_host("h0")
    fleet = fleet_of([host])
    fake = fleet["h0"]
    log = Events()
    hand = KEYS["eve"].openssh().encode() + b" by hand\n"

    async def scenario() -> HostResult:
        conn = await fleet.open(host)
        first = desired_for([host], ("alice", "bob"), ("alice", "bob"))
        synced = await sync_files(conn, files_of(host, first), ctx_for(fleet, first, log))
        fake.edit(fake.path_of("root"), (fake.content("root") or b"") + hand)
        revoked = desired_for([host], ("alice",), ("alice",))
        before = len(fake.requests)
        push = await sync_known(
            conn, files_of(host, revoked), ctx_for(fleet, revoked, log), known_after(synced)
        )
        # deploy written from what was known; root refused (changed), read, then written.
        ops = [q.op for q in fake.requests[before:]]
        assert ops == ["write_many", "read", "write_many"]
        assert [len(q.files) for q in fake.requests[before:]] == [2, 1, 1]
        await conn.close()
        return push

    push = asyncio.run(scenario())
    assert push.ok
    assert [f.plan.target.account for f in push.files] == ["deploy", "root"]
    assert [f.written for f in push.files] == [True, True]
    assert fingerprints(fake, "root") == {KEYS["agent"].fingerprint, KEYS["alice"].fingerprint}
    assert [e["person"] for e in log.named("drift_removed")] == ["eve"]
    assert push.plan is not None and len(push.plan.files) == 2
    assert log.named("file_write_failed") == []  # the refusal was expected, not a failure


def test_a_fresh_read_is_kept_where_it_is_the_evidence() -> None:
    host = make_host("h0")
    fleet = fleet_of([host])
    fake = fleet["h0"]
    log = Events()

    async def scenario() -> None:
        conn = await fleet.open(host)
        first = desired_for([host], ("alice", "bob"), ("alice", "bob"))
        synced = await sync_files(conn, files_of(host, first), ctx_for(fleet, first, log))
        revoked = desired_for([host], ("alice",), ("alice",))
        watch = {1: frozenset({KEYS["bob"].fingerprint})}
        for extra in ({"watch": watch}, {"collect": True}, {"dry_run": True}):
            before = len(fake.requests)
            ctx = ctx_for(fleet, revoked, log, **extra)
            await sync_known(conn, files_of(host, revoked), ctx, known_after(synced))
            assert fake.requests[before].op == "read", extra
        await conn.close()

    asyncio.run(scenario())


def test_a_push_without_a_read_still_asks_the_fence_before_each_write() -> None:
    """Several daemons: the lease check stands before every write request, on this path
    too (one request carries all of a host's files: one check covers them)."""
    host = make_host("h0")
    fleet = fleet_of([host])
    fake = fleet["h0"]
    log = Events()
    asked: list[tuple[str, bool]] = []

    async def lost_lease(name: str, removal_only: bool) -> str | None:
        asked.append((name, removal_only))
        return "not written: this daemon no longer holds the host's lease"

    async def scenario() -> HostResult:
        conn = await fleet.open(host)
        first = desired_for([host], ("alice",), ("alice",))
        synced = await sync_files(conn, files_of(host, first), ctx_for(fleet, first, log))
        before = len(fake.requests)
        grant = desired_for([host], ("alice", "bob"), ("alice", "bob"))
        push = await sync_known(
            conn,
            files_of(host, grant),
            ctx_for(fleet, grant, log, fence=lost_lease),
            known_after(synced),
        )
        assert [q.op for q in fake.requests[before:]] == []  # nothing read, nothing written
        await conn.close()
        return push

    push = asyncio.run(scenario())
    assert not push.ok and not any(f.written for f in push.files)
    assert asked == [("h0", False)]
    assert fingerprints(fake, "deploy") == {KEYS["alice"].fingerprint}


def test_a_removal_is_not_held_back_by_an_addition_the_fence_refuses() -> None:
    """The fence lets removals through when it cannot confirm the lease (registry down): a
    push that removes from one file and adds to another asks again for the removal alone."""
    host = make_host("h0")
    fleet = fleet_of([host])
    fake = fleet["h0"]
    log = Events()
    asked: list[bool] = []

    async def registry_down(name: str, removal_only: bool) -> str | None:
        asked.append(removal_only)
        return None if removal_only else "not written: the registry cannot confirm the lease"

    async def scenario() -> HostResult:
        conn = await fleet.open(host)
        first = desired_for([host], ("alice",), ("alice", "bob"))
        synced = await sync_files(conn, files_of(host, first), ctx_for(fleet, first, log))
        before = len(fake.requests)
        mixed = desired_for([host], ("alice", "eve"), ("alice",))  # deploy -bob, root +eve
        push = await sync_known(
            conn,
            files_of(host, mixed),
            ctx_for(fleet, mixed, log, fence=registry_down),
            known_after(synced),
        )
        assert [(q.op, q.files) for q in fake.requests[before:]] == [
            ("write_many", (f"deploy:{AK}",))
        ]
        await conn.close()
        return push

    push = asyncio.run(scenario())
    assert asked == [False, True]
    assert [(f.plan.target.account, f.written) for f in push.files] == [
        ("deploy", True),
        ("root", False),
    ]
    assert push.files[1].error == "not written: the registry cannot confirm the lease"
    assert fingerprints(fake, "deploy") == {KEYS["alice"].fingerprint}
    assert KEYS["eve"].fingerprint not in fingerprints(fake, "root")


def test_a_push_without_a_read_is_held_by_the_adoption_guard() -> None:
    """The switch from managed-block to exclusive on a scanned host: the daemon's push must
    not remove a line nobody accounted for just because it plans from what it knew."""
    from dataclasses import replace

    from keyward.state import AdoptionGuard
    from tests.test_fakehost import new_key

    block, exclusive = make_host("h0", "managed-block"), make_host("h0")
    fleet = fleet_of([block])
    fake = fleet["h0"]
    log = Events()
    stranger = new_key()
    fake.put(fake.path_of("deploy"), stranger.openssh().encode() + b" old laptop\n")
    scanned = replace(
        snapshot(),
        adoption=AdoptionGuard(
            sighted={"h0": frozenset({stranger.fingerprint})}, complete=frozenset({"h0"})
        ),
    )

    async def scenario() -> HostResult:
        conn = await fleet.open(block)
        before = desired_for([block], ("alice",), ("alice",))
        synced = await sync_files(conn, files_of(block, before), ctx_for(fleet, before, log))
        assert synced.ok and stranger.fingerprint in fingerprints(fake, "deploy")
        after = desired_for([exclusive], ("alice",), ("alice",))
        ctx = ctx_for(fleet, after, log)
        ctx = replace(ctx, snapshot=scanned)
        push = await sync_known(conn, files_of(exclusive, after), ctx, known_after(synced))
        await conn.close()
        return push

    push = asyncio.run(scenario())
    assert not push.ok and push.error is not None and stranger.fingerprint in push.error
    assert stranger.fingerprint in fingerprints(fake, "deploy")
    assert not any(f.written for f in push.files)
