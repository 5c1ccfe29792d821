"""Bulk writes: audit events appended in one insert form exactly the chain one-by-one would."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import col, select

from keyward.registry.models import AuditEvent
from keyward.registry.store import Registry
from keyward.registry.subjects import Subject
from keyward.registry.verify import verify_session

NOW = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC)  # whole second: the timestamp format edge
EVENTS = [
    (
        "host.add",
        Subject.host(f"web-{i}"),
        {"account": "deploy", "fingerprint": f"SHA256:{i}", "n": i},
    )
    for i in range(5)
]


def _chain(url: str, bulk: bool) -> list[tuple[int, str, str]]:
    registry, _, _ = Registry.initialise(url, clock=lambda: NOW)
    with registry.write("bench") as tx:
        tx.audit("role.add", Subject.role("devops"), {"why": "first"})
        if bulk:
            assert tx.audit_many(iter(EVENTS)) == len(EVENTS)
            assert tx.audit_many([]) == 0
        else:
            for action, subject, details in EVENTS:
                tx.audit(action, subject, details)
        tx.audit("role.add", Subject.role("qa"), {"why": "last"})
    with registry.read() as session:
        checked = verify_session(session)
        assert checked is not None and checked[2] is None  # the chain verifies
        return [
            (e.seq, e.action, e.hash)
            for e in session.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))
        ]


def test_audit_many_builds_the_same_chain_as_one_by_one(db_url: str, tmp_path: Path) -> None:
    bulk = _chain(db_url, bulk=True)
    one_by_one = _chain(f"sqlite:///{tmp_path / 'reference.db'}", bulk=False)
    assert bulk == one_by_one
    assert [action for _, action, _ in bulk][-7:] == ["role.add"] + ["host.add"] * 5 + ["role.add"]
