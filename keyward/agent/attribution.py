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
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select

from keyward.agent.reconcile import HostResult
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
from keyward.registry.models import AuthLogPosition, FailureMode, Person
from keyward.registry.models import LoginEvent as LoginRow
from keyward.registry.store import Registry, WriteTx
from keyward.state import RegistrySnapshot

NOTIFY_TIMEOUT = 30


@dataclass(frozen=True)
class Collected:
    events: int
    alerts: tuple[int, ...]
    failure_modes: int


def saved_positions(registry: Registry) -> dict[str, dict[str, object]]:
    with registry.read() as session:
        return {row.host: json.loads(row.position) for row in session.exec(select(AuthLogPosition))}


def _session(row: LoginRow) -> Session:
    return Session(
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


def record_logins(
    registry: Registry,
    actor: str,
    result: HostResult,
    snapshot: RegistrySnapshot,
    policy: PolicySettings,
    now: datetime,
    extra_owners: dict[str, str] | None = None,
) -> Collected:
    """Store one host's new login events and raise alerts, in one transaction."""
    batch = result.auth
    if batch is None or batch.position is None:
        return Collected(0, (), 0)
    owners = {record.fingerprint: record.owner for record in snapshot.keys}
    owners.update(extra_owners or {})
    events = parse_lines(result.host.name, batch.lines, owners, now)
    alert_ids: list[int] = []
    modes = 0
    with registry.write(actor) as tx:
        fresh = _store(tx, result.host.name, events, now)
        position = tx.session.get(AuthLogPosition, result.host.name) or AuthLogPosition(
            host=result.host.name, source=batch.source, position="{}", updated_at=now
        )
        position.source = batch.source
        position.position = json.dumps(batch.position, sort_keys=True)
        position.updated_at = now
        tx.session.add(position)
        tx.session.flush()
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
    return Collected(len(events), tuple(alert_ids), modes)


def _store(tx: WriteTx, host: str, events: list[LoginEvent], now: datetime) -> list[LoginEvent]:
    """Insert events not stored before; pair disconnects with their accepted session."""
    positions = [e.pos for e in events if e.pos]
    existing: set[str] = set()
    for chunk in range(0, len(positions), 500):
        existing.update(
            tx.session.exec(
                select(LoginRow.pos).where(
                    LoginRow.host == host, col(LoginRow.pos).in_(positions[chunk : chunk + 500])
                )
            ).all()
        )
    fresh: list[LoginEvent] = []
    # Sessions opened in this batch are paired in memory; only a disconnect whose accept
    # came in an earlier batch costs a query.
    opened: dict[tuple[str, int], LoginRow] = {}
    for event in events:
        pos = event.pos or f"{event.at.isoformat()}:{event.order}"
        if pos in existing:
            continue
        existing.add(pos)
        fresh.append(event)
        if event.outcome == "disconnected":
            open_row = opened.pop((event.addr, event.port), None)
            if open_row is None:
                open_row = tx.session.exec(
                    select(LoginRow)
                    .where(
                        LoginRow.host == host,
                        LoginRow.outcome == "accepted",
                        LoginRow.addr == event.addr,
                        LoginRow.port == event.port,
                        col(LoginRow.session_end).is_(None),
                    )
                    .order_by(col(LoginRow.id).desc())
                ).first()
            if open_row is not None:
                open_row.session_end = event.at
                open_row.session_end_ordinal = event.order
                tx.session.add(open_row)
        row = LoginRow(
            host=host,
            account=event.account,
            at=event.at,
            outcome=event.outcome,
            addr=event.addr,
            port=event.port,
            fingerprint=event.fingerprint,
            person=event.person,
            pos=pos,
            ordinal=event.order,
            collected_at=now,
        )
        if event.outcome == "accepted":
            opened[(event.addr, event.port)] = row
        tx.session.add(row)
    tx.session.flush()
    return fresh


def _alerts(
    tx: WriteTx, fresh: list[LoginEvent], policy: PolicySettings, now: datetime
) -> list[Alert]:
    alerts: list[Alert] = []
    accepted = [e for e in fresh if e.outcome == "accepted"]
    fingerprints = sorted({e.fingerprint for e in accepted if e.fingerprint})
    if fingerprints:
        fresh_pos = {e.pos for e in accepted}
        known: dict[str, set[str]] = {}
        for fp, addr, pos in tx.session.exec(
            select(LoginRow.fingerprint, LoginRow.addr, LoginRow.pos).where(
                col(LoginRow.fingerprint).in_(fingerprints), LoginRow.outcome == "accepted"
            )
        ):
            if fp and pos not in fresh_pos:
                known.setdefault(fp, set()).add(addr)
        alerts += new_source_alerts({k: frozenset(v) for k, v in known.items()}, accepted)
    people = sorted({e.person for e in accepted if e.person})
    if people:
        window = timedelta(minutes=policy.multi_source_window_minutes)
        rows = tx.session.exec(
            select(LoginRow).where(
                col(LoginRow.person).in_(people),
                LoginRow.outcome == "accepted",
                LoginRow.at >= now - window,
            )
        ).all()
        sessions = [_session(r) for r in rows]
        new_sessions = [
            s
            for s in sessions
            if any(s.host == e.host and s.port == e.port and s.addr == e.addr for e in accepted)
        ]
        alerts += multi_source_alerts(sessions, new_sessions, window)
    failed = [e for e in fresh if e.outcome in ("failed", "invalid_user")]
    if failed:
        window = timedelta(minutes=policy.failed_login_window_minutes)
        rows = tx.session.exec(
            select(LoginRow).where(
                col(LoginRow.outcome).in_(["failed", "invalid_user"]),
                LoginRow.at >= now - window,
            )
        ).all()
        recent = [
            LoginEvent(
                r.host,
                r.account,
                r.at,
                r.outcome,  # type: ignore[arg-type]
                r.addr,
                r.port,
                r.fingerprint,
                r.person,
                r.pos,
            )
            for r in rows
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
