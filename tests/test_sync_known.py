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
        assert [q.op for q in fake.requests[before:]] == ["write", "write"]  # no read
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
        assert [q.op for q in fake.requests[before:]] == ["write", "write", "read", "write"]
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
