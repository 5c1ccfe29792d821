"""Rotation, time-bound access, offboarding and the auditor's reports, on the real sshd fleet."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from keyward.registry.lifecycle import purge_person
from keyward.registry.models import Alert, AuditEvent, Person
from keyward.registry.store import Registry
from keyward.registry.subjects import Subject, parse_subject
from keyward.registry.verify import verify_session
from tests.agent_env import AgentEnv


def at(delta: timedelta) -> dict[str, str]:
    when = datetime.now(UTC) + delta
    return {"KEYWARD_NOW": when.strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_rotation_keeps_the_old_key_only_for_the_grace_period(env: AgentEnv) -> None:
    old_fp = env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    out = env.kw.ok(
        "key", "rotate", "alice", str(env.pub("alice-new")), "--grace", "24h", "--attest", "admin"
    ).out
    assert old_fp in out
    env.kw.ok("reconcile")
    host = env.hosts[0]
    # During the grace period both keys work, and the old line already carries its end.
    assert env.can_login(host, env.deploy, "alice")
    assert env.can_login(host, env.deploy, "alice-new")
    old_line = next(
        ln for ln in env.file(host, env.deploy).read_text().splitlines() if old_fp[7:23] in ln
    )
    stamp = old_line.split('expiry-time="')[1][:14]
    end = datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert end <= datetime.now(UTC) + timedelta(hours=24, seconds=5)
    # After it, the next reconcile removes the old key, logged as expired (not drift).
    result = env.kw("reconcile", "--json", env=at(timedelta(hours=25)))
    assert result.code == 0, str(result)
    reasons = {
        (c["fingerprint"], c["reason"])
        for r in result.json()
        for f in r["files"]
        for c in f["changes"]
        if c["action"] == "remove"
    }
    assert reasons == {(old_fp, "expired")}
    assert not env.can_login(host, env.deploy, "alice")
    assert env.can_login(host, env.deploy, "alice-new")
    rotations = env.kw.ok("audit", "log", "--json", "--action", "key.rotate").json()
    assert len(rotations) == 1
    assert rotations[0]["details"]["old_fingerprint"] == old_fp
    assert (
        env.kw.ok("audit", "log", "--json", "--action", "key.add").json()[-1]["subject"] == "alice"
    )


def test_rotation_to_someone_elses_or_a_weak_key_changes_nothing(env: AgentEnv, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env.person_with_key("alice", "devops")
    env.person_with_key("bob")
    before = env.kw.ok("audit", "log", "--json").json()
    refused = env.kw.fails("key", "rotate", "alice", str(env.pub("bob")))
    assert "already registered" in refused.err and "bob" not in refused.err
    from tests.keygen import make_key

    _, weak = make_key(tmp_path, "rsa", bits=2048)
    assert "3072" in env.kw.fails("key", "rotate", "alice", str(weak)).err
    assert env.kw.ok("audit", "log", "--json").json() == before
    keys = env.kw.ok("key", "list", "alice", "--json").json()
    assert len(keys) == 1 and keys[0]["status"] == "active"


def test_access_request_needs_another_approver_and_runs_out(env: AgentEnv) -> None:
    env.person_with_key("carol")
    env.kw.ok("role", "add", "devops")
    env.kw.ok(
        "access",
        "request",
        "devops",
        "--env",
        "test",
        "--for",
        "4h",
        "--reason",
        "INC-9 disk full",
        actor="carol",
    )
    requests = env.kw.ok("access", "list", "--json").json()
    assert requests[0]["status"] == "pending"
    env.kw.ok("reconcile")
    assert not env.can_login(env.hosts[0], env.deploy, "carol")
    assert "someone other" in env.kw.fails("access", "approve", "1", actor="carol").err
    env.kw.ok("access", "approve", "1", actor="dave")
    env.kw.ok("reconcile")
    assert env.can_login(env.hosts[0], env.deploy, "carol")
    line = env.file(env.hosts[0], env.deploy).read_text().splitlines()[-1]
    stamp = line.split('expiry-time="')[1][:14]
    end = datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert end <= datetime.now(UTC) + timedelta(hours=4, seconds=5)
    assert [r["id"] for r in env.kw.ok("access", "list", "--open", "--json").json()] == [1]
    env.kw.ok("reconcile", env=at(timedelta(hours=5)))
    assert not env.can_login(env.hosts[0], env.deploy, "carol")
    actions = [e["action"] for e in env.kw.ok("audit", "log", "--json", "--person", "carol").json()]
    assert "access.request" in actions and "access.approve" in actions


def test_offboarding_confirms_everywhere_even_after_a_host_was_down(env: AgentEnv) -> None:
    fp = env.person_with_key("alice", "devops")
    env.person_with_key("bob", "devops")
    env.kw.ok("reconcile")
    # alice copied her key by hand to an account she was never granted.
    copied = env.file(env.hosts[1], env.app)
    copied.parent.mkdir(mode=0o700, exist_ok=True)
    copied.write_text(env.pub("alice").read_text())
    shutil.chown(copied, env.app, env.app)
    shutil.chown(copied.parent, env.app, env.app)
    assert env.can_login(env.hosts[1], env.app, "alice")
    down = env.hosts[2]
    env.fleet.stop_host(down.name)

    result = env.kw("offboard", "alice", "--reason", "left the company", "--json")
    assert result.code == 1, str(result)
    case = result.json()
    assert case["fingerprints"] == [fp]
    unconfirmed = {t["host"] for t in case["targets"] if t["confirmed_at"] is None}
    assert unconfirmed == {down.name}
    copied_row = next(
        t for t in case["targets"] if t["host"] == env.hosts[1].name and t["account"] == env.app
    )
    assert copied_row["removed"] == 1 and not copied_row["had_access"]
    for host in env.hosts[:2]:
        for account in (env.deploy, env.app, "root"):
            assert not env.can_login(host, account, "alice")
        assert env.can_login(host, env.deploy, "bob")
    person = env.kw.ok("person", "show", "alice", "--json").json()
    assert person["status"] == "offboarded"
    assert {k["status"] for k in person["keys"]} == {"revoked"}
    assert {r["status"] for r in person["roles"]} == {"ended"}
    assert env.kw("offboard", "status", "alice").code == 1

    env.fleet.start_host(down.name)
    env.kw.ok("reconcile")
    status = env.kw("offboard", "status", "alice", "--json")
    assert status.code == 0, str(status)
    assert status.json()["status"] == "confirmed"
    assert not env.can_login(down, env.deploy, "alice")
    report = env.kw.ok("report", "offboarding", "alice").out
    for host in env.hosts:
        assert f"| {host.name} |" in report
    assert "left the company" in report and fp in report
    assert "Nothing: every managed file is confirmed." in report
    evidence = env.kw.ok("report", "offboarding", "alice", "--format", "json").json()
    assert all(h["confirmed_at"] for h in evidence["hosts"])
    assert env.kw.ok("audit", "verify").code == 0
    # A second offboarding of the same person is refused.
    assert "already offboarded" in env.kw.fails("offboard", "alice", "--reason", "again").err


def test_access_review_and_expiring_keys(env: AgentEnv) -> None:
    fp = env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    rows = env.kw.ok("report", "access", "--format", "json").json()
    mine = {(r["host"], r["account"]) for r in rows if r["person"] == "alice"}
    assert mine == {(h.name, a) for h in env.hosts for a in (env.deploy, "root")}
    assert all(r["granted_by"] == "security" and r["fingerprint"] == fp for r in rows)
    assert all(r["confirmed_on_host_at"] for r in rows)
    csv_text = env.kw.ok("report", "access", "--format", "csv").out
    assert csv_text.splitlines()[0].startswith("environment,host,account,person,role")
    assert len(csv_text.splitlines()) == len(rows) + 1
    md = env.kw.ok("report", "access").out
    assert md.startswith("# Access review") and "| alice |" in md
    expiring = env.kw.ok("key", "list", "--expiring", "400d", "--json").json()
    assert expiring[0]["hosts"] == sorted(h.name for h in env.hosts)
    assert env.kw.ok("key", "list", "--expiring", "30d", "--json").json() == []


def test_purge_redacts_only_the_persons_events_not_a_host_of_the_same_name(
    env: AgentEnv,
) -> None:
    """``person add h1`` next to inventory host h1: purging the person keeps the host's trail."""
    host = env.hosts[0]
    twin = host.name  # a valid username too: the person is named exactly like the host
    env.person_with_key("bob", "devops")
    env.person_with_key(twin, "devops")
    env.kw.ok("reconcile")
    host_events = [
        e for e in env.kw.ok("audit", "log", "--json").json() if e["action"].startswith("host.")
    ]
    on_twin = [e for e in host_events if e["subject"] == twin]
    assert on_twin
    assert env.kw("offboard", twin, "--reason", "left").code == 0
    later = (datetime.now(UTC) + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")
    env.kw.ok("person", "purge", twin, env={"KEYWARD_NOW": later})

    after = {e["seq"]: e for e in env.kw.ok("audit", "log", "--json").json()}
    # The host's events keep their details; only the person's were redacted.
    for event in on_twin:
        assert after[event["seq"]]["details"] == event["details"] != {"redacted": True}
    assert {after[e["seq"]]["subject_kind"] for e in on_twin} == {"host"}
    redact = next(e for e in after.values() if e["action"] == "audit.redact")
    redacted = {s for s, e in after.items() if e["details"] == {"redacted": True}}
    assert redacted == set(redact["details"]["seqs"])
    assert all(after[s]["subject_kind"] == "person" for s in redacted)
    assert {after[s]["action"] for s in redacted} >= {"person.add", "key.add", "person.offboard"}
    assert env.kw.ok("audit", "verify").out.startswith("audit chain ok")
    # Filters by person see the person only, never the host of the same name.
    mine = env.kw.ok("audit", "log", "--person", twin, "--json").json()
    assert mine and all(e["subject_kind"] == "person" for e in mine)
    evidence = env.kw.ok("report", "offboarding", twin, "--format", "json").json()
    assert not any(e["action"].startswith("host.") for e in evidence["audit_events"])
    assert any(e["action"] == "person.offboard" for e in evidence["audit_events"])
    text = env.kw.ok("audit", "log", "--action", "host.add").out
    assert f"host:{twin}" in text and f"person:{twin}" not in text


def test_purge_of_events_written_before_subjects_had_kinds(db_url: str) -> None:
    """A chain written with bare subjects: the kind comes from the action (or the alert row)."""
    registry, _, _ = Registry.initialise(db_url, clock=lambda: datetime.now(UTC))
    with registry.write("admin") as tx:
        tx.session.add(
            Person(
                username="h1",
                full_name="H One",
                status="offboarded",
                created_at=tx.now,
                changed_at=tx.now - timedelta(days=1),
            )
        )
        by_host = Alert(
            kind="failed_logins", host="h1", summary="s", details="{}", created_at=tx.now
        )
        by_person = Alert(
            kind="new_source", person="h1", summary="s", details="{}", created_at=tx.now
        )
        tx.session.add_all([by_host, by_person])
        tx.session.flush()
        # What earlier versions stored: the bare name, whatever it named.
        legacy: list[tuple[str, str, dict[str, object]]] = [
            ("person.add", "h1", {"full_name": "H One"}),
            ("host.add", "h1", {"person": "bob", "fingerprint": "SHA256:x"}),
            ("role.grant", "h1", {"role": "devops"}),
            ("alert.raise", "h1", {"alert_id": by_host.id, "kind": "failed_logins"}),
            ("alert.raise", "h1", {"alert_id": by_person.id, "kind": "new_source"}),
            ("offboard.host-confirmed", "h1", {"case_id": 1}),
            ("backup.restore", "person:h1", {"file": "person:h1"}),
            ("person.offboard", "h1", {"reason": "left"}),
        ]
        for action, subject, details in legacy:
            tx.audit(action, subject, details)  # type: ignore[arg-type]  # the old bare form
    with registry.write("admin") as tx:
        seqs = purge_person(tx, "h1", keep_days=0)
    with registry.read() as session:
        events = {e.seq: e for e in session.exec(select(AuditEvent))}
        checked = verify_session(session)
    assert checked is not None and checked[2] is None  # the chain still verifies
    assert all(events[s].redacted for s in seqs)
    assert sorted(events[s].action for s in seqs) == [
        "alert.raise",  # only the alert about the person, not the one about the host
        "person.add",
        "person.offboard",
        "role.grant",
    ]
    kept = [e for e in events.values() if not e.redacted and e.subject in ("h1", "person:h1")]
    assert {e.action for e in kept} >= {"host.add", "offboard.host-confirmed", "backup.restore"}
    assert [json.loads(e.details)["alert_id"] for e in kept if e.action == "alert.raise"] == [
        by_host.id
    ]
    registry.dispose()


@pytest.mark.parametrize(
    ("action", "stored", "expected"),
    [
        # typed subjects, as written now
        ("person.add", "person:h1", Subject.person("h1")),
        ("host.add", "host:h1", Subject.host("h1")),
        ("alert.raise", "host:h1", Subject.host("h1")),
        ("alert.raise", "fleet:*", Subject("fleet", "*")),
        (
            "backup.restore",
            "backup:keyward-registry-x.sqlite",
            Subject.backup("keyward-registry-x.sqlite"),
        ),
        ("registry.init", "registry:sqlite", Subject("registry", "sqlite")),
        # bare subjects written before kinds: the action says the kind
        ("person.add", "h1", Subject.person("h1")),
        ("key.revoke", "h1", Subject.person("h1")),
        ("access.end", "h1", Subject.person("h1")),
        ("role.grant", "h1", Subject.person("h1")),
        ("audit.redact", "h1", Subject.person("h1")),
        ("role.add", "h1", Subject.role("h1")),
        ("host.drift-removed", "h1", Subject.host("h1")),
        ("offboard.host-confirmed", "h1", Subject.host("h1")),
        ("offboard.confirmed", "case-3", Subject("case", "case-3")),
        ("registry.init", "registry", Subject("registry", "registry")),
        # a snapshot file may be named like a typed subject; it stays a backup
        ("backup.restore", "person:h1", Subject.backup("person:h1")),
        # a legacy alert names a person or a host: only its alert row can tell
        ("alert.raise", "h1", None),
    ],
)
def test_subject_kind_of_stored_events(action: str, stored: str, expected: Subject | None) -> None:
    assert parse_subject(action, stored) == expected
