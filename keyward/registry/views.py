"""The registry as the everyday commands show it: one JSON shape per view.

``keyward person show``, ``key list``, ``status``, ``audit log``, ``offboard status`` and
``report offboarding`` print these dicts, whether the CLI read the database itself or
asked ``keyward server`` (which returns the same dicts): one renderer, one shape, so the
output is the same either way.

Nothing heavy at import (``key check`` loads ``keyward.cli.common``, which re-exports
the small helpers here); the ORM is imported inside the functions that query.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlmodel import Session

    from keyward.registry.models import Membership, OffboardingCase, Person, Role, SshKey
    from keyward.registry.quickread import PersonRow

LOCAL_PREFIX = "local:"
"""Actors of events written straight into the database by the CLI (``local:<unix user>``)."""


def ts(value: datetime | None) -> str | None:
    """A timestamp for JSON: ISO 8601 UTC with a Z, or null."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def person_json(p: Person | PersonRow) -> dict[str, Any]:
    return {
        "username": p.username,
        "full_name": p.full_name,
        "email": p.email,
        "status": p.status,
        "created_at": ts(p.created_at),
        "changed_at": ts(p.changed_at),
    }


def key_status(key: SshKey, now: Any) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at <= now:
        return "expired"
    return "active"


def key_json(k: SshKey, owner: Person, now: Any) -> dict[str, Any]:
    from keyward.keys import decode_key

    public = decode_key(k.key_type, k.blob, k.comment)
    return {
        "fingerprint": k.fingerprint,
        "owner": owner.username,
        "type": k.key_type,
        "bits": public.bits,
        "comment": k.comment,
        "attestation": k.attestation,
        "attested_by": k.attested_by,
        "proof_date": k.proof_date,
        "added_by": k.added_by,
        "added_at": ts(k.added_at),
        "expires_at": ts(k.expires_at),
        "revoked_at": ts(k.revoked_at),
        "revoked_by": k.revoked_by,
        "revoke_reason": k.revoke_reason,
        "status": key_status(k, now),
    }


def membership_json(m: Membership, r: Role, now: Any) -> dict[str, Any]:
    if m.ended_at is not None:
        status = "ended"
    elif m.until is not None and m.until <= now:
        status = "lapsed"
    else:
        status = "active"
    return {
        "role": r.name,
        "granted_by": m.granted_by,
        "granted_at": ts(m.granted_at),
        "reason": m.reason,
        "until": ts(m.until),
        "customer": m.customer,
        "ended_at": ts(m.ended_at),
        "ended_by": m.ended_by,
        "end_reason": m.end_reason,
        "status": status,
    }


def person_detail(session: Session, username: str, now: datetime) -> dict[str, Any]:
    """``person show``: the person with their keys, roles and periods of employment."""
    from sqlmodel import col, select

    from keyward.registry import ops
    from keyward.registry.lifecycle import employment_periods
    from keyward.registry.models import Membership, Role, SshKey

    p = ops.find_person(session, username)
    keys = session.exec(select(SshKey).where(SshKey.person_id == p.id)).all()
    memberships = session.exec(
        select(Membership, Role)
        .join(Role, col(Role.id) == col(Membership.role_id))
        .where(Membership.person_id == p.id)
        .order_by(col(Membership.granted_at))
    ).all()
    data = person_json(p)
    data["keys"] = [key_json(k, p, now) for k in keys]
    data["roles"] = [membership_json(m, r, now) for m, r in memberships]
    data["periods"] = employment_periods(session, p)
    return data


def audit_rows(
    session: Session, since: datetime | None, username: str | None, action: str | None
) -> list[dict[str, Any]]:
    """``audit log``: events oldest first; ``subject`` is the name, ``subject_kind`` its kind.

    Older events store a bare name and newer ones ``kind:name``; both are shown the
    same way, so a script filtering on ``subject`` keeps working across the change.
    """
    from sqlmodel import col, select

    from keyward.registry import subjects
    from keyward.registry.models import AuditEvent
    from keyward.registry.subjects import Subject

    query = select(AuditEvent).order_by(col(AuditEvent.seq))
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if username:
        query = query.where(subjects.matches(Subject.person(username)))
    if action:
        query = query.where(AuditEvent.action == action)
    events = list(session.exec(query))
    kinds = subjects.resolve(session, events)
    if username:
        events = [e for e in events if kinds[e.seq] == Subject.person(username)]
    rows = []
    for event in events:
        subject = kinds[event.seq]
        rows.append(
            {
                "seq": event.seq,
                "at": ts(event.at),
                "actor": event.actor,
                "action": event.action,
                "subject": subject.name if subject else event.subject,
                "subject_kind": subject.kind if subject else None,
                "details": json.loads(event.details) if not event.redacted else {"redacted": True},
                "hash": event.hash,
            }
        )
    return rows


def direct_writes(session: Session) -> list[dict[str, Any]]:
    """Audit events written straight into the database by the CLI (actor ``local:...``).

    In a team set-up the server is the only writer and records proven people; these
    are the bootstrap and break-glass writes an access review must look at.
    """
    from sqlmodel import col, select

    from keyward.registry.models import AuditEvent

    return [
        {"seq": e.seq, "at": ts(e.at), "actor": e.actor, "action": e.action, "subject": e.subject}
        for e in session.exec(
            select(AuditEvent)
            .where(col(AuditEvent.actor).startswith(LOCAL_PREFIX))
            .order_by(col(AuditEvent.seq))
        )
    ]


def in_scope(direct: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The direct writes about the hosts, people and roles of a scoped review's ``rows``.

    A review for one customer or environment is disclosed to that audience: it must not
    name other customers' hosts or people through this section.
    """
    subjects = {f"host:{r['host']}" for r in rows}
    subjects |= {f"person:{r['person']}" for r in rows}
    subjects |= {f"role:{r['role']}" for r in rows if r.get("role")}
    return [d for d in direct if d["subject"] in subjects]


DAEMON_STALE_AFTER = 20.0  # seconds without a heartbeat before a daemon counts as gone


def status_view(session: Session, now: datetime) -> dict[str, Any]:
    """``status``: per host, the last round's outcome; and the daemon's heartbeat."""
    from sqlmodel import col, select

    from keyward.clock import as_utc
    from keyward.registry.models import DaemonStatus, HostState

    beats = session.exec(select(DaemonStatus).order_by(col(DaemonStatus.heartbeat_at).desc())).all()
    daemon_row = beats[0] if beats else None
    rows = [
        {
            "host": s.host,
            "environment": s.environment,
            "last_attempt": ts(s.last_attempt),
            "last_success": ts(s.last_success),
            "last_error": s.last_error,
            "last_run_id": s.last_run_id,
            "last_changes": s.last_changes,
            "drift_found": s.drift_found,
            "files": json.loads(s.files),
            "connected": None,
        }
        for s in session.exec(select(HostState).order_by(HostState.host))
    ]
    daemon: dict[str, Any] | None = None
    if daemon_row is not None:
        age = (now - as_utc(daemon_row.heartbeat_at)).total_seconds()
        alive = daemon_row.stopped_at is None and age < DAEMON_STALE_AFTER
        links = json.loads(daemon_row.hosts)
        # The daemon keeps its metrics endpoint's state next to the hosts, under a key no
        # host name can have (names start with a letter or digit).
        metrics = links.pop("@metrics", None)
        daemon = {
            "instance": daemon_row.id,
            "alive": alive,
            "heartbeat_at": ts(daemon_row.heartbeat_at),
            "heartbeat_age_seconds": round(age, 1),
            "started_at": ts(daemon_row.started_at),
            "stopped_at": ts(daemon_row.stopped_at),
            "hosts_total": daemon_row.hosts_total,
            "hosts_connected": daemon_row.hosts_connected,
            "last_push_at": ts(daemon_row.last_push_at),
            "propagation_lag_ms": daemon_row.last_lag_ms,
            "last_verification_at": ts(daemon_row.last_verify_at),
            "metrics": metrics,
        }
        if alive:
            # Several daemons share a fleet: a host is connected if its holder says so.
            for beat in beats:
                age = (now - as_utc(beat.heartbeat_at)).total_seconds()
                if beat.stopped_at is None and age < DAEMON_STALE_AFTER:
                    for name, link in json.loads(beat.hosts).items():
                        if isinstance(link, dict) and link.get("connected"):
                            links.setdefault(name, link)
            for row in rows:
                link = links.get(row["host"])
                row["connected"] = bool(link and link.get("connected"))
    view: dict[str, Any] = {"daemon": daemon, "hosts": rows}
    if session.get_bind().dialect.name == "postgresql":
        cluster = read_cluster(session)
        for row in rows:
            row["holder"] = cluster["holders"].get(row["host"])
        view["cluster"] = cluster
    return view


def read_cluster(session: Any) -> dict[str, Any]:
    """The daemons sharing the fleet and which holds which host, by the database's clock.

    A host's holder is the daemon holding its shard's lease, while the lease runs.
    """
    from sqlalchemy import text

    from keyward.daemon.membership import members
    from keyward.daemon.sharding import shard_of

    conn = session.connection()
    leases = {
        int(shard): str(holder)
        for shard, holder, left in conn.execute(
            text(
                "SELECT shard, holder, EXTRACT(EPOCH FROM expires_at - clock_timestamp()) "
                "FROM shard_lease"
            )
        )
        if float(left) > 0
    }
    from keyward.registry.models import HostState

    names = [str(n) for (n,) in conn.execute(text(f"SELECT host FROM {HostState.__tablename__}"))]
    holders = {name: leases[shard_of(name)] for name in names if shard_of(name) in leases}
    rows = members(conn)
    listed = [
        {
            "id": m.id,
            "hostname": m.hostname,
            "pid": m.pid,
            "live": m.live,
            "started_at": ts(m.started_at),
            "heartbeat_at": ts(m.heartbeat_at),
            "heartbeat_age_seconds": round(m.age, 1),
            "stopped_at": ts(m.stopped_at),
            "shards": sum(1 for h in leases.values() if h == m.id),
            "hosts": sum(1 for h in holders.values() if h == m.id),
        }
        for m in rows
        if m.live or m.age < 3600  # gone daemons stay listed for an hour
    ]
    return {"members": listed, "live": sum(1 for m in rows if m.live), "holders": holders}


def _latest_case(session: Session, username: str) -> tuple[Person, OffboardingCase]:
    from sqlmodel import col, select

    from keyward.errors import RegistryError
    from keyward.registry import ops
    from keyward.registry.models import OffboardingCase

    person = ops.find_person(session, username)
    case = session.exec(
        select(OffboardingCase)
        .where(OffboardingCase.person_id == person.id)
        .order_by(col(OffboardingCase.id).desc())
    ).first()
    if case is None:
        raise RegistryError(f"{username!r} has no offboarding case")
    return person, case


def offboarding_case(session: Session, username: str) -> dict[str, Any]:
    """``offboard status``: the person's latest case with one row per host and account."""
    from sqlmodel import col, select

    from keyward.registry.models import OffboardingTarget

    _, case = _latest_case(session, username)
    rows = [
        {
            "host": t.host,
            "account": t.account,
            "path": t.path or t.pattern,
            "had_access": t.had_access,
            "removed": t.removed,
            "confirmed_at": ts(t.confirmed_at),
            "confirmed_by_run": t.confirmed_by_run,
            "last_attempt": ts(t.last_attempt),
            "error": None if t.confirmed_at else (t.last_error or "not yet checked"),
        }
        for t in session.exec(
            select(OffboardingTarget)
            .where(OffboardingTarget.case_id == case.id)
            .order_by(col(OffboardingTarget.host), col(OffboardingTarget.account))
        )
    ]
    return {
        "case_id": case.id,
        "status": case.status,
        "reason": case.reason,
        "requested_by": case.requested_by,
        "started_at": ts(case.started_at),
        "closed_at": ts(case.closed_at),
        "fingerprints": json.loads(case.fingerprints),
        "targets": rows,
    }


Columns = tuple[tuple[str, str], ...]
"""(field, heading) pairs: which fields of a view's rows a table shows, in order."""

# The tables of the offboarding evidence (``offboarding_evidence``), the same in the
# Markdown report and on the web page, so both show the same evidence.
EVIDENCE_KEY_COLUMNS: Columns = (
    ("fingerprint", "Fingerprint"),
    ("type", "Type"),
    ("revoked_at", "Revoked at"),
    ("revoked_by", "By"),
    ("revoke_reason", "Reason"),
)
EVIDENCE_TARGET_COLUMNS: Columns = (
    ("host", "Host"),
    ("account", "Account"),
    ("path", "File"),
    ("had_access", "Had access"),
    ("keys_removed", "Keys removed"),
    ("confirmed_at", "Confirmed at"),
    ("open_issue", "Open issue"),
)
EVIDENCE_LOGIN_COLUMNS: Columns = (
    ("at", "At"),
    ("host", "Host"),
    ("account", "Account"),
    ("address", "From"),
    ("fingerprint", "Key"),
    ("session_end", "Session ended"),
    ("log_source", "Log"),
)
EVIDENCE_AUDIT_COLUMNS: Columns = (
    ("seq", "#"),
    ("at", "At"),
    ("actor", "Actor"),
    ("action", "Action"),
    ("hash", "Chain hash"),
)


def offboarding_evidence(session: Session, username: str) -> dict[str, Any]:
    """``report offboarding``: who asked, what was revoked, per-host proof, later logins."""
    from sqlmodel import col, select

    from keyward.registry import subjects
    from keyward.registry.login_store import source_of_pos
    from keyward.registry.models import AuditEvent, LoginEvent, OffboardingTarget, SshKey
    from keyward.registry.subjects import Subject

    person, case = _latest_case(session, username)
    keys = session.exec(select(SshKey).where(SshKey.person_id == person.id)).all()
    targets = session.exec(
        select(OffboardingTarget)
        .where(OffboardingTarget.case_id == case.id)
        .order_by(col(OffboardingTarget.host), col(OffboardingTarget.account))
    ).all()
    subject = Subject.person(username)
    events = subjects.about(
        session,
        session.exec(
            select(AuditEvent)
            .where(subjects.matches(subject), AuditEvent.at >= case.started_at)
            .order_by(col(AuditEvent.seq))
        ),
        subject,
    )
    # Logins with the person's keys at or after the case opened: a host that was down
    # during the offboarding kept the key until the agent reached it again.
    fingerprints = [str(fp) for fp in json.loads(case.fingerprints or "[]")]
    late_logins = session.exec(
        select(LoginEvent)
        .where(
            LoginEvent.outcome == "accepted",
            col(LoginEvent.at) >= case.started_at,
            (col(LoginEvent.person) == username) | col(LoginEvent.fingerprint).in_(fingerprints),
        )
        .order_by(col(LoginEvent.at), col(LoginEvent.id))
    ).all()
    return {
        "person": {
            "username": person.username,
            "full_name": person.full_name,
            "status": person.status,
        },
        "case": {
            "id": case.id,
            "requested_by": case.requested_by,
            "reason": case.reason,
            "started_at": ts(case.started_at),
            "status": case.status,
            "closed_at": ts(case.closed_at),
        },
        "keys": [
            {
                "fingerprint": k.fingerprint,
                "type": k.key_type,
                "revoked_at": ts(k.revoked_at),
                "revoked_by": k.revoked_by,
                "revoke_reason": k.revoke_reason,
            }
            for k in keys
        ],
        "hosts": [
            {
                "host": t.host,
                "account": t.account,
                "path": t.path or t.pattern,
                "had_access": t.had_access,
                "keys_removed": t.removed,
                "confirmed_at": ts(t.confirmed_at),
                "confirmed_by_run": t.confirmed_by_run,
                "open_issue": None if t.confirmed_at else (t.last_error or "not yet checked"),
            }
            for t in targets
        ],
        "audit_events": [
            {"seq": e.seq, "at": ts(e.at), "actor": e.actor, "action": e.action, "hash": e.hash}
            for e in events
        ],
        "logins_after_offboarding": [
            {
                "at": ts(e.at),
                "host": e.host,
                "account": e.account,
                "address": e.addr,
                "fingerprint": e.fingerprint,
                "session_end": ts(e.session_end),
                "log_source": source_of_pos(e.pos),
            }
            for e in late_logins
        ],
    }


def key_rows(
    session: Session,
    username: str | None,
    now: datetime,
    show_all: bool,
    horizon: datetime | None,
) -> list[dict[str, Any]]:
    """``keyward key list``: keys by owner, active ones unless ``show_all``; with a
    ``horizon``, only active keys expiring by then (the caller adds ``hosts``)."""
    from sqlmodel import col, select

    from keyward.registry import ops
    from keyward.registry.models import Person, SshKey

    query = select(SshKey, Person).join(Person, col(Person.id) == col(SshKey.person_id))
    if username:
        p = ops.find_person(session, username)
        query = query.where(SshKey.person_id == p.id)
    rows = [
        key_json(k, p, now)
        for k, p in session.exec(query.order_by(col(Person.username), col(SshKey.added_at)))
    ]
    if not show_all:
        rows = [r for r in rows if r["status"] == "active"]
    if horizon is not None:
        limit = ts(horizon)
        rows = [r for r in rows if r["status"] == "active" and r["expires_at"] <= limit]
    return rows


def deployed_hosts(session: Session, inventory: Any, now: datetime) -> dict[str, list[str]]:
    """Fingerprint -> the hosts its key is deployed to under ``inventory`` (an
    ``Inventory``), as ``key list --expiring`` shows it."""
    from keyward.desired import compute_desired
    from keyward.registry.snapshot import load_snapshot

    desired = compute_desired(load_snapshot(session), inventory, inventory.hosts(), None, now)
    out: dict[str, set[str]] = {}
    for target, d in desired.items():
        for line in d.lines:
            out.setdefault(line.key.fingerprint, set()).add(target.host)
    return {fp: sorted(hosts) for fp, hosts in out.items()}


def role_rows(session: Session, now: datetime) -> list[dict[str, Any]]:
    """``keyward role list``: every role with its current members."""
    from sqlmodel import col, select

    from keyward.registry.models import Membership, Person, Role

    roles = session.exec(select(Role).order_by(Role.name)).all()
    members = session.exec(
        select(Membership, Person)
        .join(Person, col(Person.id) == col(Membership.person_id))
        .where(col(Membership.ended_at).is_(None))
    ).all()
    rows = []
    for r in roles:
        current = sorted(
            p.username
            for m, p in members
            if m.role_id == r.id and (m.until is None or m.until > now)
        )
        rows.append({"name": r.name, "description": r.description, "members": current})
    return rows


def role_json(r: Role) -> dict[str, Any]:
    """``keyward role add``'s answer."""
    return {
        "name": r.name,
        "description": r.description,
        "created_by": r.created_by,
        "created_at": ts(r.created_at),
    }
