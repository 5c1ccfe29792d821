"""Storing collected login events, raising alerts, and notifying about them.

Runs after the agent (or the daemon) read a host's new sshd log lines: the
events are attributed to people by fingerprint, stored without duplicates
(each has its position in the source), sessions are paired from accept to
disconnect, and the alert rules of ``keyward.logins`` run over the result.
Every alert and every failure-mode change is an audit event; every alert is
logged and, when configured, piped as JSON to the alert command.

Which lines count: a log *file* is not authenticated (any local user can run
``logger -t 'sshd[1]' 'Accepted publickey for root ...'`` into syslog), so a
file's lines are attributed only when the inventory marks the host's
``auth_log_trusted``, and are otherwise not stored at all; the journal, filtered
to what a root sshd logged through syslog, is always used. Failure mode, which
takes someone's access away, is entered only on failures read from the journal,
and restricts to addresses seen in the journal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlmodel import col, select

from keyward.hook import run_hook
from keyward.inventory.model import Host
from keyward.inventory.policy import PolicySettings
from keyward.logins import (
    Alert,
    LoginEvent,
    failed_login_alerts,
    multi_source_alerts,
    new_source_alerts,
    parse_lines,
    trusted_source,
)
from keyward.logs import get_logger
from keyward.registry.bulk import insert_many
from keyward.registry.login_store import (
    JOURNAL_POS,
    LOGIN_TABLE,
    HostLogins,
    chunks,
    close_earlier_sessions,
    fresh_logins,
    known_sources,
    recent_failures,
    recent_sessions,
    remember_sources,
    session_of,
)
from keyward.registry.models import Alert as AlertRow
from keyward.registry.models import AuthLogPosition, FailureMode, OffboardingCase, Person
from keyward.registry.models import LoginEvent as LoginRow
from keyward.registry.store import Registry, WriteTx
from keyward.registry.subjects import Subject, alert_subject
from keyward.state import RegistrySnapshot

if TYPE_CHECKING:
    from keyward.agent.reconcile import AuthBatch, HostResult


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
        (r.host, r.auth) for r in results if r.auth is not None and r.auth.position is not None
    ]
    if not batches:
        return Collected(0, (), 0)
    owners = {record.fingerprint: record.owner for record in snapshot.keys}
    owners.update(extra_owners or {})
    parsed = [
        (host.name, batch, parse_lines(host.name, batch.lines, owners, now, batch.kind))
        if trusted_source(batch.kind, host.auth_log_trusted)
        else (host.name, batch, _ignored(host, batch))
        for host, batch in batches
    ]
    alert_ids: list[int] = []
    modes = 0
    with registry.write(actor) as tx:
        connection = tx.session.connection()
        stored = [fresh_logins(connection, host, events, now) for host, _, events in parsed]
        # Older sessions closed by this batch first, so the alert rules see them closed;
        # the rules read the stored history before the new rows go in.
        for logins in stored:
            close_earlier_sessions(connection, logins.host, logins.unpaired)
        alerts, journal_backed = _alerts(tx, stored, policy, now)
        alerts += _after_offboarding(tx, stored)
        insert_many(connection, LOGIN_TABLE, [row for logins in stored for row in logins.rows])
        _save_positions(tx, [(host, batch) for host, batch, _ in parsed], now)
        for alert in alerts:
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
                alert_subject(alert.person, alert.host),
                {"alert_id": row.id, "kind": alert.kind, "summary": alert.summary},
            )
            if (
                alert.kind == "failed_logins"
                and alert.person
                and alert.person in journal_backed
                and policy.failure_mode != "off"
            ):
                modes += _enter_failure_mode(tx, alert.person, row, policy, now)
    return Collected(sum(len(events) for _, _, events in parsed), tuple(alert_ids), modes)


def _ignored(host: Host, batch: AuthBatch) -> list[LoginEvent]:
    """No events from an untrusted file; say so, once per collection that had lines."""
    if batch.lines:
        get_logger().warning(
            "logins_untrusted_source",
            host=host.name,
            source=batch.kind,
            lines=len(batch.lines),
        )
    return []


def _save_positions(tx: WriteTx, batches: list[tuple[str, AuthBatch]], now: datetime) -> None:
    hosts = [host for host, _ in batches]
    saved: dict[str, AuthLogPosition] = {}
    for chunk in chunks(hosts):
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


def _alerts(
    tx: WriteTx, stored: list[HostLogins], policy: PolicySettings, now: datetime
) -> tuple[list[Alert], set[str]]:
    """The alert rules over the batch's new events and the stored history they can touch,
    and the people whose ``failed_logins`` alert the journal's failures alone would raise
    (only they may enter failure mode)."""
    connection = tx.session.connection()
    journal_backed: set[str] = set()
    fresh = [e for logins in stored for e in logins.fresh]
    accepted = [e for e in fresh if e.outcome == "accepted"]
    alerts: list[Alert] = []
    if accepted:
        known = known_sources(connection, list({e.fingerprint for e in accepted if e.fingerprint}))
        alerts += new_source_alerts({k: frozenset(v) for k, v in known.items()}, accepted)
        remember_sources(connection, accepted, known)
    alerts += _multi_source(connection, stored, accepted, policy, now)
    failed = [e for e in fresh if e.outcome in ("failed", "invalid_user")]
    if failed:
        window = timedelta(minutes=policy.failed_login_window_minutes)
        recent = recent_failures(connection, now - window) + failed
        for alert in failed_login_alerts(recent, policy.failed_login_threshold, window, now):
            last = _last_alert(tx, alert)
            # Only failures after the previous alert about the same person or account count
            # again: clearing an alert must not re-raise it from the same failures.
            since = last.created_at if last is not None else None
            basis = [
                e
                for e in recent
                if e.outcome in ("failed", "invalid_user")
                and e.at >= now - window
                and (since is None or e.at > since)
                and (
                    (alert.person and e.person == alert.person)
                    or (not alert.person and (e.host, e.account) == (alert.host, alert.account))
                )
            ]
            if last is not None and len(basis) <= policy.failed_login_threshold:
                continue
            alerts.append(alert)
            journal = [e for e in basis if e.from_journal]
            if alert.person and len(journal) > policy.failed_login_threshold:
                journal_backed.add(alert.person)
    return alerts, journal_backed


def _after_offboarding(tx: WriteTx, stored: list[HostLogins]) -> list[Alert]:
    """Logins by people at or after the start of their offboarding case.

    A host that was down during ``keyward offboard`` still has the person's key until
    the agent reaches it again; a login in between is evidence the report must show.
    One alert per person, host and account in a collection.  Only logins with a key
    the case revoked count: a re-hired person (``person rehire``) logs in with new
    keys, which are no evidence against the earlier offboarding.
    """
    accepted = [e for logins in stored for e in logins.fresh if e.outcome == "accepted"]
    people = sorted({e.person for e in accepted if e.person})
    if not people:
        return []
    revoked: dict[str, tuple[int, datetime]] = {}  # fingerprint -> its earliest case
    cases: dict[str, tuple[int, datetime]] = {}
    for chunk in chunks(people):
        for case_id, started_at, fingerprints in tx.session.exec(
            select(
                OffboardingCase.id,
                OffboardingCase.started_at,
                OffboardingCase.fingerprints,
            )
            .select_from(Person)
            .join(OffboardingCase, col(OffboardingCase.person_id) == col(Person.id))
            .where(col(Person.username).in_(chunk))
            .order_by(col(OffboardingCase.id))
        ):
            for fingerprint in json.loads(fingerprints):
                revoked.setdefault(fingerprint, (case_id or 0, started_at))
    late: dict[tuple[str, str, str], list[LoginEvent]] = {}
    for e in accepted:
        case = revoked.get(e.fingerprint or "")
        if case is not None and e.at >= case[1]:
            key = (e.person or "", e.host, e.account)
            late.setdefault(key, []).append(e)
            cases[key[0]] = max(cases.get(key[0], case), case)
    alerts: list[Alert] = []
    for (person, host, account), events in sorted(late.items()):
        case_id, started_at = cases[person]  # the latest case a late key belongs to
        addresses = sorted({e.addr for e in events})
        alerts.append(
            Alert(
                "login_after_offboarding",
                person,
                host,
                account,
                f"{person} logged in to {account}@{host} after their offboarding began "
                f"({started_at.strftime('%Y-%m-%dT%H:%M:%SZ')}): {len(events)} login(s) "
                f"from {', '.join(addresses)}",
                {
                    "case_id": case_id,
                    "count": len(events),
                    "addresses": addresses,
                    "fingerprints": sorted({e.fingerprint for e in events if e.fingerprint}),
                    "first_at": min(e.at for e in events).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "source": sorted({e.source for e in events}),
                },
            )
        )
    return alerts


def _multi_source(
    connection: Connection,
    stored: list[HostLogins],
    accepted: list[LoginEvent],
    policy: PolicySettings,
    now: datetime,
) -> list[Alert]:
    """Sessions open at once from several addresses, for the people who logged in now.

    Only people seen from two or more addresses (stored or new) can trigger it, so the
    sweep runs over just their sessions.
    """
    people = sorted({e.person for e in accepted if e.person})
    if not people:
        return []
    window = timedelta(minutes=policy.multi_source_window_minutes)
    earliest = min(e.at for e in accepted)
    old = recent_sessions(connection, people, now - window, earliest)
    fresh_rows = [
        r
        for logins in stored
        for r in logins.rows
        if r["outcome"] == "accepted" and r["person"] and r["at"] >= now - window
    ]
    addresses: dict[str, set[str]] = {}
    pairs = [(s.person, s.addr) for s in old] + [(r["person"], r["addr"]) for r in fresh_rows]
    for person, addr in pairs:
        if person:
            addresses.setdefault(person, set()).add(addr)
    several = {person for person, addrs in addresses.items() if len(addrs) > 1}
    if not several:
        return []
    new = [session_of(r) for r in fresh_rows if r["person"] in several]
    return multi_source_alerts([s for s in old if s.person in several], new, window)


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
                    # Only addresses the journal saw: a line in a file could add any.
                    select(LoginRow.addr).where(
                        LoginRow.person == username,
                        LoginRow.outcome == "accepted",
                        col(LoginRow.pos).startswith(JOURNAL_POS),
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
        Subject.person(username),
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
            failed = run_hook(command, payload)
            error = f"alert command {failed}" if failed else None
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
