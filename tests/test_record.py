"""Recording hosts' results: a whole batch's offboarding evidence in a fixed number of queries."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event
from sqlmodel import col, select

from keyward.agent.reconcile import Confirmation, FileResult, HostResult
from keyward.desired import FileTarget
from keyward.inventory.model import Host
from keyward.keys import ED25519, PublicKey, encode_string
from keyward.plan import FilePlan, HostPlan, LineChange
from keyward.registry.lifecycle import offboard
from keyward.registry.models import AuditEvent, HostState, OffboardingCase, OffboardingTarget
from keyward.registry.ops import KeyClaim, add_key, add_person
from keyward.registry.record import record_hosts
from keyward.registry.store import Registry
from keyward.registry.verify import verify_session

NOW = datetime(2026, 11, 24, 9, 0, 0, tzinfo=UTC)
ACCOUNTS = ("root", "deploy")
PATTERN = "%h/.ssh/authorized_keys"


def host(name: str) -> Host:
    return Host(name, "prod", "127.0.0.1", 22, "root", (PATTERN,), "exclusive", (), ("deploy",))


def result(name: str, case_id: int, clean: bool = True, error: str | None = None) -> HostResult:
    files = tuple(
        FileResult(FilePlan(FileTarget(name, account, PATTERN), "in-sync", f"/{account}/ak"))
        for account in ACCOUNTS
    )
    confirmations = tuple(
        Confirmation(
            case_id, account, PATTERN, f"/{account}/ak", clean, 0, None if clean else "1 left"
        )
        for account in ACCOUNTS
    )
    return HostResult(
        host(name),
        NOW,
        NOW + timedelta(seconds=1),
        HostPlan(name, tuple(f.plan for f in files)),
        files,
        error,
        () if error else confirmations,
    )


def open_case(registry: Registry, hosts: list[str]) -> int:
    with registry.write("admin") as tx:
        add_person(tx, "alice", "Alice", None)
        blob = encode_string(ED25519.encode()) + encode_string(secrets.token_bytes(32))
        add_key(tx, "alice", PublicKey(ED25519, blob), KeyClaim("admin", NOW + timedelta(days=9)))
        targets = [(h, account, PATTERN, True) for h in hosts for account in ACCOUNTS]
        case = offboard(tx, "alice", "left", targets)
    assert case.id is not None
    return case.id


@contextmanager
def counted(registry: Registry, wanted: Callable[[str], bool]) -> Iterator[list[str]]:
    """The SQL statements the registry sends that ``wanted`` picks, while inside."""
    statements: list[str] = []

    def count(*args: Any) -> None:
        if wanted(args[2]):
            statements.append(args[2])

    event.listen(registry.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(registry.engine, "before_cursor_execute", count)


def counted_selects(registry: Registry) -> Any:
    return counted(registry, lambda sql: sql.lstrip().upper().startswith("SELECT"))


def test_a_batch_confirms_the_case_with_queries_independent_of_hosts(db_url: str) -> None:
    registry, _, _ = Registry.initialise(db_url, clock=lambda: NOW)
    names = [f"web-{i}" for i in range(30)]
    case_id = open_case(registry, names)
    with counted_selects(registry) as few:
        record_hosts(registry, "agent", [result(n, case_id) for n in names[:3]], "run1", (case_id,))
    with counted_selects(registry) as many:
        record_hosts(registry, "agent", [result(n, case_id) for n in names[3:]], "run1", (case_id,))
    assert len(many) == len(few)
    with registry.read() as session:
        case = session.get(OffboardingCase, case_id)
        assert case is not None and case.status == "confirmed"
        targets = session.exec(select(OffboardingTarget)).all()
        assert len(targets) == 60 and all(t.confirmed_by_run == "run1" for t in targets)
        assert len(session.exec(select(HostState)).all()) == 30
        actions = [e.action for e in session.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))]
        assert actions.count("offboard.host-confirmed") == 30
        assert actions[-1] == "offboard.confirmed"
        checked = verify_session(session)
        assert checked is not None and checked[2] is None


def test_a_failed_or_dirty_host_keeps_the_case_open_with_its_reason(db_url: str) -> None:
    registry, _, _ = Registry.initialise(db_url, clock=lambda: NOW)
    case_id = open_case(registry, ["a", "b", "c"])
    batch = [
        result("a", case_id),
        result("b", case_id, clean=False),
        result("c", case_id, error="c: cannot connect"),
    ]
    record_hosts(registry, "agent", batch, "run1", (case_id,))
    with registry.read() as session:
        case = session.get(OffboardingCase, case_id)
        assert case is not None and case.status == "open"
        rows = {
            (t.host, t.account): (t.confirmed_at is not None, t.last_error)
            for t in session.exec(select(OffboardingTarget))
        }
    assert rows == {
        ("a", "root"): (True, None),
        ("a", "deploy"): (True, None),
        ("b", "root"): (False, "1 left"),
        ("b", "deploy"): (False, "1 left"),
        ("c", "root"): (False, "c: cannot connect"),
        ("c", "deploy"): (False, "c: cannot connect"),
    }
    # A later run that confirms the rest closes the case.
    record_hosts(
        registry, "agent", [result("b", case_id), result("c", case_id)], "run2", (case_id,)
    )
    with registry.read() as session:
        case = session.get(OffboardingCase, case_id)
        assert case is not None and case.status == "confirmed"
        details = [
            json.loads(e.details)["run_id"]
            for e in session.exec(
                select(AuditEvent).where(AuditEvent.action == "offboard.confirmed")
            )
        ]
    assert details == ["run2"]


def _key() -> PublicKey:
    return PublicKey(
        ED25519, encode_string(ED25519.encode()) + encode_string(secrets.token_bytes(32))
    )


def test_recorded_owners_are_the_registrys_not_the_lines_comments(db_url: str) -> None:
    """A comment is text anyone who edits the file can write: ``keyward:alice:...`` on bob's
    key, or on a key nobody registered, must not put the key in alice's name."""
    registry, _, _ = Registry.initialise(db_url, clock=lambda: NOW)
    alice, bob, stranger = _key(), _key(), _key()
    with registry.write("admin") as tx:
        for name, key in (("alice", alice), ("bob", bob)):
            add_person(tx, name, name.title(), None)
            add_key(tx, name, key, KeyClaim("admin", NOW + timedelta(days=9)))

    def line(key: PublicKey, comment: str) -> str:
        return f"{key.key_type} {key.base64} {comment}\n"

    content = (
        line(alice, "keyward:alice:" + alice.short_fingerprint)
        + line(bob, "keyward:alice:" + bob.short_fingerprint)  # bob's key, alice's name
        + line(stranger, "keyward:alice:" + stranger.short_fingerprint)
    ).encode()
    target = FileTarget("web-1", "root", PATTERN)
    written = FilePlan(target, "update", "/root/ak", new_content=content)
    late = FilePlan(
        FileTarget("web-1", "deploy", PATTERN), "in-sync", "/deploy/ak", new_content=content
    )
    files = (FileResult(written, written=True, confirmed_sha256="x"), FileResult(late))
    outcome = HostResult(
        host("web-1"), NOW, NOW, HostPlan("web-1", (written, late)), files, None, ()
    )
    record_hosts(registry, "agent", [outcome], "run1")
    expected = sorted(
        [[alice.fingerprint, "alice"], [bob.fingerprint, "bob"], [stranger.fingerprint, None]],
        key=lambda item: (item[0] or "", item[1] or ""),
    )
    with registry.read() as session:
        state = session.exec(select(HostState)).one()
        recorded = json.loads(state.files)
        assert recorded["root:" + PATTERN]["keys"] == expected
        assert recorded["deploy:" + PATTERN]["keys"] == expected
        late_events = {
            json.loads(e.details)["fingerprint"]: json.loads(e.details)["person"]
            for e in session.exec(select(AuditEvent).where(AuditEvent.action == "host.add"))
        }
    assert late_events == {
        alice.fingerprint: "alice",
        bob.fingerprint: "bob",
        stranger.fingerprint: None,
    }


def test_a_rounds_events_go_into_the_chain_in_order_in_one_insert(db_url: str) -> None:
    """Every host's late, removed, added and fix-mode events, in the order they happened
    per host and host after host; one insert for the batch; the chain verifies; a host
    whose files did not change keeps the recorded text as it was."""
    registry, _, _ = Registry.initialise(db_url, clock=lambda: NOW)
    old, new = _key(), _key()
    with registry.write("admin") as tx:
        add_person(tx, "alice", "Alice", None)
        for key in (old, new):
            add_key(tx, "alice", key, KeyClaim("admin", NOW + timedelta(days=9)))

    def text(*keys: PublicKey) -> bytes:
        return "".join(f"{k.key_type} {k.base64} keyward:alice\n" for k in keys).encode()

    def outcome(name: str, write: bool, late: bool) -> HostResult:
        root, deploy = (FileTarget(name, a, PATTERN) for a in ACCOUNTS)
        files = [
            FileResult(
                FilePlan(
                    root,
                    "update",
                    "/root/ak",
                    (
                        LineChange("remove", old.fingerprint, "alice", "revoked"),
                        LineChange("add", new.fingerprint, "alice", "granted"),
                    ),
                    text(new),
                ),
                written=True,
                confirmed_sha256="x",
            )
            if write
            else FileResult(FilePlan(root, "in-sync", "/root/ak", new_content=text(old)))
        ]
        deploy_content = text(old, new) if late else text(old)
        files.append(
            FileResult(FilePlan(deploy, "in-sync", "/deploy/ak", new_content=deploy_content))
        )
        plans = tuple(f.plan for f in files)
        return HostResult(host(name), NOW, NOW, HostPlan(name, plans), tuple(files), None, ())

    names = [f"web-{i}" for i in range(5)]
    # First: every host holds the old key everywhere (recorded as found, late).
    record_hosts(registry, "agent", [outcome(n, False, False) for n in names], "run0")
    with registry.read() as session:
        unchanged = {s.host: s.files for s in session.exec(select(HostState))}
        head = session.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc())).first()
        assert head is not None
        first_seq = head.seq
    with counted(registry, lambda sql: "INSERT INTO audit" in sql) as inserts:
        batch = [outcome(n, n != "web-4", n in ("web-1", "web-3")) for n in names]
        record_hosts(registry, "agent", batch, "run1")
    assert len(inserts) == 1
    with registry.read() as session:
        events = [
            (
                e.subject,
                e.action,
                json.loads(e.details)["reason"],
                json.loads(e.details)["fingerprint"],
            )
            for e in session.exec(
                select(AuditEvent)
                .where(col(AuditEvent.seq) > first_seq)
                .order_by(col(AuditEvent.seq))
            )
        ]
        states = {s.host: s.files for s in session.exec(select(HostState))}
        checked = verify_session(session)
    assert checked is not None and checked[2] is None
    expected = []
    for n in names:
        if n != "web-4":
            expected += [
                (f"host:{n}", "host.remove", "revoked", old.fingerprint),
                (f"host:{n}", "host.add", "granted", new.fingerprint),
            ]
        if n in ("web-1", "web-3"):
            expected.append((f"host:{n}", "host.add", "recorded-late", new.fingerprint))
    assert events == expected
    assert states["web-4"] == unchanged["web-4"]  # nothing changed: the same text
    assert states["web-0"] != unchanged["web-0"]
