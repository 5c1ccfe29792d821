"""Storing collected login events, raising alerts, and notifying about them.

Runs after the agent (or the daemon) read a host's new sshd log lines: the
events are attributed to people by fingerprint, stored without duplicates
(each has its position in the source), sessions are paired from accept to
disconnect, and the alert rules of ``keyward.logins`` run over the result.
Every alert and every failure-mode change is an audit event; every alert is
logged and, when configured, piped as JSON to the alert command.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, bindparam, insert, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from keyward.agent.reconcile import AuthBatch, HostResult
from keyward.inventory.model import PolicySettings
from keyward.logins import (
    Alert,
    LoginEvent,
    Session,
    failed_login_alerts,
    multi_source_alerts,
    new_source_alerts,
    parse_lines,
)
from keyward.logs import get_logger
from keyward.registry.models import Alert as AlertRow
from keyward.registry.models import AuthLogPosition, FailureMode, LoginSource, Person
from keyward.registry.models import LoginEvent as LoginRow
from keyward.registry.store import Registry, WriteTx
from keyward.state import RegistrySnapshot

NOTIFY_TIMEOUT = 30
CHUNK = 500  # values per IN (...) list: well below every backend's bound-parameter limit
LOGIN_TABLE: Table = LoginRow.__table__  # type: ignore[attr-defined]
SOURCE_TABLE: Table = LoginSource.__table__  # type: ignore[attr-defined]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Collected:
    events: int
    alerts: tuple[int, ...]
    failure_modes: int


def saved_positions(registry: Registry) -> dict[str, dict[str, object]]:
    with registry.read() as session:
        return {row.host: json.loads(row.position) for row in session.exec(select(AuthLogPosition))}


def record_logins(
    registry: Registry,
    actor: str,
    results: Sequence[HostResult],
    snapshot: RegistrySnapshot,
    policy: PolicySettings,
    now: datetime,
    extra_owners: Mapping[str, str] | None = None,
) -> Collected:
    """Store the new login events of many hosts and raise alerts, in one transaction.

    One transaction per batch of hosts (one disk sync), and queries that read only what
    the new events can touch: known sources of their keys, sessions still open or closed
    since the earliest new one, and recent failures. Collecting thus costs in proportion
    to the new lines, not to the hosts times the stored history.
    """
    batches = [
        (r.host.name, r.auth) for r in results if r.auth is not None and r.auth.position is not None
    ]
    if not batches:
        return Collected(0, (), 0)
    owners = {record.fingerprint: record.owner for record in snapshot.keys}
    owners.update(extra_owners or {})
    parsed = [(host, batch, parse_lines(host, batch.lines, owners, now)) for host, batch in batches]
    alert_ids: list[int] = []
    modes = 0
    with registry.write(actor) as tx:
        fresh: list[LoginEvent] = []
        for host, _batch, events in parsed:
            fresh += _store(tx, host, events, now)
        _save_positions(tx, [(host, batch) for host, batch, _ in parsed], now)
        for alert in _alerts(tx, fresh, policy, now):
            row = AlertRow(
                kind=alert.kind,
                person=alert.person,
                host=alert.host,
                account=alert.account,
                summary=alert.summary,
                details=json.dumps(dict(alert.details), sort_keys=True),
                created_at=now,
            )
            tx.session.add(row)
            tx.session.flush()
            alert_ids.append(row.id or 0)
            tx.audit(
                "alert.raise",
                alert.person or alert.host or "fleet",
                {"alert_id": row.id, "kind": alert.kind, "summary": alert.summary},
            )
            if alert.kind == "failed_logins" and alert.person and policy.failure_mode != "off":
                modes += _enter_failure_mode(tx, alert.person, row, policy, now)
    return Collected(sum(len(events) for _, _, events in parsed), tuple(alert_ids), modes)


def _chunks(items: Sequence[_T], size: int = CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _save_positions(tx: WriteTx, batches: list[tuple[str, AuthBatch]], now: datetime) -> None:
    hosts = [host for host, _ in batches]
    saved: dict[str, AuthLogPosition] = {}
    for chunk in _chunks(hosts):
        for row in tx.session.exec(
            select(AuthLogPosition).where(col(AuthLogPosition.host).in_(chunk))
        ):
            saved[row.host] = row
    for host, batch in batches:
        position = saved.get(host) or AuthLogPosition(
            host=host, source=batch.source, position="{}", updated_at=now
        )
        position.source = batch.source
        position.position = json.dumps(batch.position, sort_keys=True)
        position.updated_at = now
        tx.session.add(position)
    tx.session.flush()


def _store(tx: WriteTx, host: str, events: list[LoginEvent], now: datetime) -> list[LoginEvent]:
    """Insert events not stored before; pair disconnects with their accepted session.

    Rows go in with one multi-row insert. Sessions opened in this batch are paired in
    memory; disconnects whose accept came in an earlier batch cost one query per host.
    """
    positions = [e.pos for e in events if e.pos]
    existing: set[str] = set()
    for chunk in _chunks(positions):
        existing.update(
            tx.session.exec(
                select(LoginRow.pos).where(LoginRow.host == host, col(LoginRow.pos).in_(chunk))
            ).all()
        )
    fresh: list[LoginEvent] = []
    rows: list[dict[str, Any]] = []
    opened: dict[tuple[str, int], dict[str, Any]] = {}
    unpaired: list[LoginEvent] = []
    for event in events:
        pos = event.pos or f"{event.at.isoformat()}:{event.order}"
        if pos in existing:
            continue
        existing.add(pos)
        fresh.append(event)
        if event.outcome == "disconnected":
            open_row = opened.pop((event.addr, event.port), None)
            if open_row is None:
                unpaired.append(event)
            else:
                open_row["session_end"] = event.at
                open_row["session_end_ordinal"] = event.order
        row = {
            "host": host,
            "account": event.account,
            "at": event.at,
            "outcome": event.outcome,
            "addr": event.addr,
            "port": event.port,
            "fingerprint": event.fingerprint,
            "person": event.person,
            "pos": pos,
            "ordinal": event.order,
            "session_end": None,
            "session_end_ordinal": None,
            "collected_at": now,
        }
        if event.outcome == "accepted":
            opened[(event.addr, event.port)] = row
        rows.append(row)
    connection = tx.session.connection()
    if unpaired:
        _close_earlier_sessions(connection, host, unpaired)
    if rows:
        connection.execute(insert(LOGIN_TABLE), rows)
    return fresh


def _close_earlier_sessions(
    connection: Connection, host: str, disconnects: list[LoginEvent]
) -> None:
    """End sessions accepted in an earlier batch: the newest open one per address and port."""
    open_ids: dict[tuple[str, int], list[int]] = {}
    addrs = sorted({e.addr for e in disconnects})
    for chunk in _chunks(addrs):
        for row_id, addr, port in connection.execute(
            sa_select(LOGIN_TABLE.c.id, LOGIN_TABLE.c.addr, LOGIN_TABLE.c.port)
            .where(
                LOGIN_TABLE.c.host == host,
                LOGIN_TABLE.c.outcome == "accepted",
                LOGIN_TABLE.c.session_end.is_(None),
                LOGIN_TABLE.c.addr.in_(chunk),
            )
            .order_by(LOGIN_TABLE.c.id.desc())
        ):
            open_ids.setdefault((addr, port), []).append(row_id)
    updates = []
    for event in disconnects:
        ids = open_ids.get((event.addr, event.port))
        if ids:
            updates.append({"b_id": ids.pop(0), "b_end": event.at, "b_order": event.order})
    if updates:
        connection.execute(
            update(LOGIN_TABLE)
            .where(LOGIN_TABLE.c.id == bindparam("b_id"))
            .values(session_end=bindparam("b_end"), session_end_ordinal=bindparam("b_order")),
            updates,
        )


def _new_sources(tx: WriteTx, accepted: list[LoginEvent]) -> list[Alert]:
    """Alerts for keys used from an address never seen for them; remember the addresses."""
    connection = tx.session.connection()
    fingerprints = sorted({e.fingerprint for e in accepted if e.fingerprint})
    known: dict[str, set[str]] = {}
    for chunk in _chunks(fingerprints):
        for fingerprint, addr in connection.execute(
            sa_select(SOURCE_TABLE.c.fingerprint, SOURCE_TABLE.c.addr).where(
                SOURCE_TABLE.c.fingerprint.in_(chunk)
            )
        ):
            known.setdefault(fingerprint, set()).add(addr)
    alerts = new_source_alerts({k: frozenset(v) for k, v in known.items()}, accepted)
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for e in accepted:
        if e.fingerprint is None:
            continue
        entry = seen.setdefault(
            (e.fingerprint, e.addr),
            {"fingerprint": e.fingerprint, "addr": e.addr, "person": e.person, "first": e.at},
        )
        entry["first"] = min(entry["first"], e.at)
        entry["last"] = max(entry.get("last", e.at), e.at)
    added = [
        {
            "fingerprint": v["fingerprint"],
            "addr": v["addr"],
            "person": v["person"],
            "first_seen": v["first"],
            "last_seen": v["last"],
        }
        for (fp, addr), v in seen.items()
        if addr not in known.get(fp, ())
    ]
    again = [
        {"b_fp": fp, "b_addr": addr, "b_last": v["last"]}
        for (fp, addr), v in seen.items()
        if addr in known.get(fp, ())
    ]
    if added:
        connection.execute(insert(SOURCE_TABLE), added)
    if again:
        connection.execute(
            update(SOURCE_TABLE)
            .where(
                SOURCE_TABLE.c.fingerprint == bindparam("b_fp"),
                SOURCE_TABLE.c.addr == bindparam("b_addr"),
                SOURCE_TABLE.c.last_seen < bindparam("b_last"),
            )
            .values(last_seen=bindparam("b_last")),
            again,
        )
    return alerts


def _alerts(
    tx: WriteTx, fresh: list[LoginEvent], policy: PolicySettings, now: datetime
) -> list[Alert]:
    alerts: list[Alert] = []
    connection = tx.session.connection()
    accepted = [e for e in fresh if e.outcome == "accepted"]
    if accepted:
        alerts += _new_sources(tx, accepted)
    people = sorted({e.person for e in accepted if e.person})
    if people:
        window = timedelta(minutes=policy.multi_source_window_minutes)
        earliest = min(e.at for e in accepted)
        fresh_keys = {(e.host, e.pos) for e in accepted}
        t = LOGIN_TABLE.c
        sessions: list[Session] = []
        new_sessions: list[Session] = []
        for chunk in _chunks(people):
            for row in connection.execute(
                sa_select(
                    t.host,
                    t.account,
                    t.person,
                    t.fingerprint,
                    t.addr,
                    t.port,
                    t.at,
                    t.session_end,
                    t.ordinal,
                    t.session_end_ordinal,
                    t.pos,
                ).where(
                    t.outcome == "accepted",
                    t.at >= now - window,
                    or_(t.session_end.is_(None), t.session_end >= earliest),
                    t.person.in_(chunk),
                )
            ):
                session = Session(
                    row.host,
                    row.account,
                    row.person,
                    row.fingerprint,
                    row.addr,
                    row.port,
                    row.at,
                    row.session_end,
                    row.ordinal,
                    row.session_end_ordinal or 0,
                )
                sessions.append(session)
                if (row.host, row.pos) in fresh_keys:
                    new_sessions.append(session)
        alerts += multi_source_alerts(sessions, new_sessions, window)
    failed = [e for e in fresh if e.outcome in ("failed", "invalid_user")]
    if failed:
        window = timedelta(minutes=policy.failed_login_window_minutes)
        t = LOGIN_TABLE.c
        recent = [
            LoginEvent(
                r.host, r.account, r.at, r.outcome, r.addr, r.port, r.fingerprint, r.person, r.pos
            )
            for r in connection.execute(
                sa_select(
                    t.host,
                    t.account,
                    t.at,
                    t.outcome,
                    t.addr,
                    t.port,
                    t.fingerprint,
                    t.person,
                    t.pos,
                ).where(t.outcome.in_(["failed", "invalid_user"]), t.at >= now - window)
            )
        ]
        for alert in failed_login_alerts(recent, policy.failed_login_threshold, window, now):
            last = _last_alert(tx, alert)
            if last is None:
                alerts.append(alert)
                continue
            # Only failures after the previous alert about the same person or account count
            # again: clearing an alert must not re-raise it from the same failures.
            since = last.created_at
            newer = [
                e
                for e in recent
                if e.at > since
                and (
                    (alert.person and e.person == alert.person)
                    or (not alert.person and (e.host, e.account) == (alert.host, alert.account))
                )
            ]
            if len(newer) > policy.failed_login_threshold:
                alerts.append(alert)
    return alerts


def _last_alert(tx: WriteTx, alert: Alert) -> AlertRow | None:
    query = select(AlertRow).where(AlertRow.kind == alert.kind)
    if alert.person:
        query = query.where(AlertRow.person == alert.person)
    else:
        query = query.where(AlertRow.host == alert.host, AlertRow.account == alert.account)
    return tx.session.exec(query.order_by(col(AlertRow.id).desc())).first()


def _enter_failure_mode(
    tx: WriteTx, username: str, alert: AlertRow, policy: PolicySettings, now: datetime
) -> int:
    person = tx.session.exec(select(Person).where(Person.username == username)).first()
    if person is None:
        return 0
    active = tx.session.exec(
        select(FailureMode).where(
            FailureMode.person_id == person.id, col(FailureMode.cleared_at).is_(None)
        )
    ).first()
    if active is not None:
        return 0
    addresses: list[str] = []
    if policy.failure_mode == "restrict":
        addresses = sorted(
            set(
                tx.session.exec(
                    select(LoginRow.addr).where(
                        LoginRow.person == username, LoginRow.outcome == "accepted"
                    )
                ).all()
            )
        )
    tx.session.add(
        FailureMode(
            person_id=person.id or 0,
            mode=policy.failure_mode,
            addresses=json.dumps(addresses),
            alert_id=alert.id,
            since=now,
        )
    )
    tx.audit(
        "person.failure-mode",
        username,
        {
            "mode": policy.failure_mode,
            "alert_id": alert.id,
            "addresses": addresses,
        },
    )
    return 1


def notify(registry: Registry, actor: str, alert_ids: tuple[int, ...], command: str | None) -> None:
    """Log every new alert and hand it to the configured command as JSON on stdin."""
    log = get_logger()
    with registry.read() as session:
        rows = session.exec(select(AlertRow).where(col(AlertRow.id).in_(list(alert_ids)))).all()
        payloads = [
            {
                "id": row.id,
                "kind": row.kind,
                "person": row.person,
                "host": row.host,
                "account": row.account,
                "summary": row.summary,
                "details": json.loads(row.details),
                "created_at": row.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            for row in rows
        ]
    errors: dict[int, str | None] = {}
    for payload in payloads:
        log.warning("alert_raised", **{k: v for k, v in payload.items() if k != "details"})
        error = None
        if command:
            try:
                proc = subprocess.run(
                    shlex.split(command),
                    input=json.dumps(payload).encode(),
                    capture_output=True,
                    timeout=NOTIFY_TIMEOUT,
                    check=False,
                )
                if proc.returncode != 0:
                    error = (
                        f"alert command exited {proc.returncode}: "
                        + " ".join(proc.stderr.decode("utf-8", "replace").split())[:300]
                    )
            except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
                error = f"alert command failed: {exc}"
            if error:
                log.error("alert_notify_failed", alert_id=payload["id"], error=error)
        errors[int(payload["id"] or 0)] = error
    if not errors:
        return
    with registry.write(actor) as tx:  # one transaction for the whole batch
        for row in tx.session.exec(select(AlertRow).where(col(AlertRow.id).in_(list(errors)))):
            row.notified_at = tx.now
            row.notify_error = errors.get(row.id or 0)
            tx.session.add(row)
