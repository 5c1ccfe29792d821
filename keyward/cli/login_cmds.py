"""Who actually logged in: ``keyward logins`` and ``keyward alerts``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.common import customer_hosts, log_events
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, table, ts
from keyward.errors import KeywardError, RegistryError
from keyward.timeparse import start_of_day

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement
    from sqlmodel import Session

    from keyward.registry.models import Alert

pass_app = click.make_pass_decorator(AppContext)

AGENT_OWNER = "keyward-agent"
"""The owner name login rows carry for the agent's key (``logins.service_keys``)."""

ALERT_KINDS = (
    "multi_source",
    "new_source",
    "failed_logins",
    "login_after_offboarding",
    "directory_guard",
)


@click.command()
@click.option("--person", "username", default=None, help="Only this person's keys.")
@click.option("--host", default=None, help="Only this host.")
@click.option("--since", default=None, metavar="DATE", help="Only from this date (UTC).")
@click.option("--failed", is_flag=True, help="Only failed attempts.")
@click.option("--customer", default=None, help="Only this customer's hosts.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@click.option(
    "--all", "show_all", is_flag=True, help="Include keyward's own sessions (the agent's key)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def logins(
    app: AppContext,
    username: str | None,
    host: str | None,
    since: str | None,
    failed: bool,
    customer: str | None,
    limit: int,
    show_all: bool,
    as_json: bool,
) -> None:
    """The fleet's access log, attributed to people by the key they used (newest first).

    keyward's own sessions (every reconcile and daemon push logs in with the agent's
    key) outnumber people's; they are left out unless --all.
    """
    from sqlmodel import col, or_, select

    from keyward.registry.models import LoginEvent

    with app.registry().read() as session:
        query = select(LoginEvent).where(LoginEvent.outcome != "disconnected")
        if not show_all:
            query = query.where(
                or_(col(LoginEvent.person).is_(None), LoginEvent.person != AGENT_OWNER)
            )
            own = agent_fingerprints(app)
            if own:
                query = query.where(
                    or_(
                        col(LoginEvent.fingerprint).is_(None),
                        col(LoginEvent.fingerprint).not_in(sorted(own)),
                    )
                )
        if username:
            query = query.where(LoginEvent.person == username)
        if host:
            query = query.where(LoginEvent.host == host)
        if since:
            query = query.where(LoginEvent.at >= start_of_day(since, "--since"))
        if failed:
            query = query.where(col(LoginEvent.outcome).in_(["failed", "invalid_user"]))
        if customer is not None:
            query = query.where(col(LoginEvent.host).in_(sorted(customer_hosts(app, customer))))
        rows = [
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
    if as_json:
        emit_json(rows)
        return
    table(
        rows,
        [
            ("at", "AT"),
            ("attribution", "PERSON"),
            ("account", "ACCOUNT"),
            ("host", "HOST"),
            ("source", "FROM"),
            ("outcome", "OUTCOME"),
            ("session_end", "ENDED"),
        ],
    )


def agent_fingerprints(app: AppContext) -> set[str]:
    """The agent identity key's fingerprint, when the inventory names a readable one.

    Login rows carry the owner ``keyward-agent`` for that key (``service_keys``); the
    fingerprint also catches rows stored before the key was attributed.  No inventory,
    or one that cannot be read, is not an error for a log listing: the owner suffices.
    """
    root = app.inventory_dir()
    if not root.is_dir():
        return set()
    from keyward.inventory import load_inventory
    from keyward.keys import parse_public_key

    try:
        inv = load_inventory(root)
        return {parse_public_key(inv.agent.identity_pub.read_text()).fingerprint}
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


@click.group(invoke_without_command=True)
@click.option("--open", "only_open", is_flag=True, help="Only alerts not yet cleared.")
@click.option("--kind", type=click.Choice(ALERT_KINDS), default=None, help="Only this kind.")
@click.option("--person", "username", default=None, help="Only alerts about this person.")
@click.option("--host", default=None, help="Only alerts about this host.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def alerts(
    ctx: click.Context,
    only_open: bool,
    kind: str | None,
    username: str | None,
    host: str | None,
    as_json: bool,
) -> None:
    """Alerts: multi-computer use, keys used from a new address, failed-login bursts.

    'alerts clear ID --reason TEXT' closes one alert.
    """
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.find_object(AppContext)
    assert app is not None
    from sqlmodel import col, select

    from keyward.registry.models import Alert

    with app.registry().read() as session:
        query = select(Alert).order_by(col(Alert.id))
        if only_open:
            query = query.where(Alert.status == "open")
        if kind is not None:
            query = query.where(Alert.kind == kind)
        if username is not None:
            query = query.where(Alert.person == username)
        if host is not None:
            query = query.where(_about_host(session, host))
        rows = [alert_json(a) for a in session.exec(query)]
    if as_json:
        emit_json(rows)
        return
    table(
        rows,
        [
            ("id", "ID"),
            ("created_at", "AT"),
            ("kind", "KIND"),
            ("status", "STATUS"),
            ("summary", "SUMMARY"),
        ],
    )


def _about_host(session: Session, host: str) -> ColumnElement[bool]:
    """Alerts whose host is ``host``, or whose details list it among their hosts.

    A failed-login burst or a multi-computer alert spans hosts: its ``host`` column
    is empty and the hosts are in the details, so those are read (few: alerts are rare).
    """
    from sqlmodel import col, or_, select

    from keyward.registry.models import Alert

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


@alerts.command("clear")
@click.argument("alert_id", metavar="ID", type=click.IntRange(1))
@click.option("--reason", required=True, help="What was checked; recorded.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def alerts_clear(app: AppContext, alert_id: int, reason: str, as_json: bool) -> None:
    """Clear one alert; if it put its person into failure mode, that mode ends too.

    Other alerts and failure modes of the same person stay as they are ('person
    clear-alert' ends them all).
    """
    from sqlmodel import col, select

    from keyward.registry import validate
    from keyward.registry.models import Alert, FailureMode
    from keyward.registry.subjects import alert_subject

    reason = validate.line("reason", reason)
    with app.registry().write(app.actor) as tx:
        alert = tx.session.get(Alert, alert_id)
        if alert is None:
            raise RegistryError(f"no alert {alert_id}")
        if alert.status != "open":
            raise RegistryError(
                f"alert {alert_id} is already {alert.status} (by {alert.cleared_by})"
            )
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
    log_events(tx)
    result["failure_mode_cleared"] = bool(modes)
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"cleared alert {alert_id}"
        + ("; failure mode ended (deployed at the next reconcile)" if modes else "")
    )


def register(cli: click.Group) -> None:
    cli.add_command(logins)
    cli.add_command(alerts)
