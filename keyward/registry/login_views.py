"""Who actually logged in, and the alerts about it, as ``keyward logins`` and ``keyward
alerts`` show them: one JSON shape whether the CLI read the database itself or asked
``keyward server`` (which returns the same rows), and one way to clear an alert.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, or_, select

from keyward.errors import KeywardError, RegistryError
from keyward.registry import validate
from keyward.registry.models import Alert, FailureMode, LoginEvent
from keyward.registry.subjects import alert_subject
from keyward.registry.views import ts

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

    from keyward.inventory.model import Inventory
    from keyward.registry.store import WriteTx

AGENT_OWNER = "keyward-agent"
"""The owner name login rows carry for the agent's key (``logins.service_keys``)."""


def login_rows(
    session: Session,
    *,
    username: str | None,
    host: str | None,
    since: datetime | None,
    failed: bool,
    hosts: Collection[str] | None,
    limit: int,
    show_all: bool,
    agent_keys: Collection[str],
) -> list[dict[str, Any]]:
    """Login events, newest first; keyward's own sessions (the agent's key, by owner or
    by ``agent_keys`` fingerprints) left out unless ``show_all``; ``hosts`` is a
    customer's hosts (None: every host)."""
    query = select(LoginEvent).where(LoginEvent.outcome != "disconnected")
    if not show_all:
        query = query.where(or_(col(LoginEvent.person).is_(None), LoginEvent.person != AGENT_OWNER))
        if agent_keys:
            query = query.where(
                or_(
                    col(LoginEvent.fingerprint).is_(None),
                    col(LoginEvent.fingerprint).not_in(sorted(agent_keys)),
                )
            )
    if username:
        query = query.where(LoginEvent.person == username)
    if host:
        query = query.where(LoginEvent.host == host)
    if since is not None:
        query = query.where(LoginEvent.at >= since)
    if failed:
        query = query.where(col(LoginEvent.outcome).in_(["failed", "invalid_user"]))
    if hosts is not None:
        query = query.where(col(LoginEvent.host).in_(sorted(hosts)))
    return [
        {
            "at": ts(e.at),
            "host": e.host,
            "account": e.account,
            "person": e.person,
            "outcome": e.outcome,
            "source": e.addr,
            "source_port": e.port,
            "fingerprint": e.fingerprint,
            "session_end": ts(e.session_end),
            "attribution": e.person or ("unknown key" if e.fingerprint else None),
        }
        for e in session.exec(
            query.order_by(col(LoginEvent.at).desc(), col(LoginEvent.id).desc()).limit(limit)
        )
    ]


def agent_keys(inventory: Inventory) -> set[str]:
    """The agent identity key's fingerprint, when ``inventory`` names a readable one.

    Login rows carry the owner ``keyward-agent`` for that key (``service_keys``); the
    fingerprint also catches rows stored before the key was attributed.  A key that
    cannot be read is not an error for a log listing: the owner suffices.
    """
    from keyward.keys import parse_public_key

    try:
        return {parse_public_key(inventory.agent.identity_pub.read_text()).fingerprint}
    except (KeywardError, OSError, UnicodeDecodeError):
        return set()


def alert_json(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "person": a.person,
        "host": a.host,
        "account": a.account,
        "summary": a.summary,
        "details": json.loads(a.details),
        "created_at": ts(a.created_at),
        "status": a.status,
        "cleared_by": a.cleared_by,
        "cleared_at": ts(a.cleared_at),
        "clear_reason": a.clear_reason,
        "notified_at": ts(a.notified_at),
        "notify_error": a.notify_error,
    }


def alert_rows(
    session: Session,
    *,
    only_open: bool,
    kind: str | None,
    username: str | None,
    host: str | None,
) -> list[dict[str, Any]]:
    """Alerts, oldest first, filtered as ``keyward alerts`` filters them."""
    query = select(Alert).order_by(col(Alert.id))
    if only_open:
        query = query.where(Alert.status == "open")
    if kind is not None:
        query = query.where(Alert.kind == kind)
    if username is not None:
        query = query.where(Alert.person == username)
    if host is not None:
        query = query.where(_about_host(session, host))
    return [alert_json(a) for a in session.exec(query)]


def _about_host(session: Session, host: str) -> ColumnElement[bool]:
    """Alerts whose host is ``host``, or whose details list it among their hosts.

    A failed-login burst or a multi-computer alert spans hosts: its ``host`` column
    is empty and the hosts are in the details, so those are read (few: alerts are rare).
    """
    ids = [
        a.id
        for a in session.exec(select(Alert).where(col(Alert.host).is_(None)))
        if host in _detail_hosts(a.details)
    ]
    return or_(col(Alert.host) == host, col(Alert.id).in_(ids))


def _detail_hosts(details: str) -> list[str]:
    try:
        value = json.loads(details)
    except ValueError:
        return []
    hosts = value.get("hosts") if isinstance(value, dict) else None
    return [h for h in hosts if isinstance(h, str)] if isinstance(hosts, list) else []


def clear_alert(tx: WriteTx, alert_id: int, reason: str) -> dict[str, Any]:
    """Clear one open alert and end the failure mode it started, in ``tx``; the alert as
    ``alerts clear --json`` prints it (with ``failure_mode_cleared``)."""
    reason = validate.line("reason", reason)
    alert = tx.session.get(Alert, alert_id)
    if alert is None:
        raise RegistryError(f"no alert {alert_id}")
    if alert.status != "open":
        raise RegistryError(f"alert {alert_id} is already {alert.status} (by {alert.cleared_by})")
    modes = tx.session.exec(
        select(FailureMode).where(
            FailureMode.alert_id == alert_id, col(FailureMode.cleared_at).is_(None)
        )
    ).all()
    for mode in modes:
        mode.cleared_at = tx.now
        mode.cleared_by = tx.actor
        tx.session.add(mode)
    alert.status = "cleared"
    alert.cleared_by = tx.actor
    alert.cleared_at = tx.now
    alert.clear_reason = reason
    tx.session.add(alert)
    tx.audit(
        "alert.clear",
        alert_subject(alert.person, alert.host),
        {
            "alert_id": alert_id,
            "kind": alert.kind,
            "reason": reason,
            "failure_mode_cleared": bool(modes),
        },
    )
    result = alert_json(alert)
    result["failure_mode_cleared"] = bool(modes)
    return result


def clear_person_alerts(tx: WriteTx, username: str, reason: str) -> dict[str, Any]:
    """End ``username``'s failure mode and close their open alerts, in ``tx``: ``person
    clear-alert``.  The answer names the alerts closed and whether a mode ended."""
    from keyward.registry import ops
    from keyward.registry.subjects import Subject

    reason = validate.line("reason", reason)
    who = ops.find_person(tx.session, username)
    modes = tx.session.exec(
        select(FailureMode).where(
            FailureMode.person_id == who.id, col(FailureMode.cleared_at).is_(None)
        )
    ).all()
    open_alerts = tx.session.exec(
        select(Alert).where(Alert.person == username, Alert.status == "open")
    ).all()
    if not modes and not open_alerts:
        raise RegistryError(f"{username!r} has no open alert and is not in failure mode")
    for mode in modes:
        mode.cleared_at = tx.now
        mode.cleared_by = tx.actor
        tx.session.add(mode)
    for alert in open_alerts:
        alert.status = "cleared"
        alert.cleared_by = tx.actor
        alert.cleared_at = tx.now
        alert.clear_reason = reason
        tx.session.add(alert)
    ids = [a.id for a in open_alerts]
    tx.audit(
        "person.clear-alert",
        Subject.person(username),
        {"reason": reason, "alerts": ids, "failure_mode_cleared": bool(modes)},
    )
    return {"person": username, "alerts": ids, "failure_mode_cleared": bool(modes)}
