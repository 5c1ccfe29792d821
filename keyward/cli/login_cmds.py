"""Who actually logged in: ``keyward logins``, ``keyward alerts``, ``person clear-alert``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, table, ts
from keyward.cli.parsing import start_of_day
from keyward.cli.registry_cmds import customer_hosts, log_events, person
from keyward.errors import RegistryError

if TYPE_CHECKING:
    from keyward.registry.models import Alert

pass_app = click.make_pass_decorator(AppContext)


@click.command()
@click.option("--person", "username", default=None, help="Only this person's keys.")
@click.option("--host", default=None, help="Only this host.")
@click.option("--since", default=None, metavar="DATE", help="Only from this date (UTC).")
@click.option("--failed", is_flag=True, help="Only failed attempts.")
@click.option("--customer", default=None, help="Only this customer's hosts.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
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
    as_json: bool,
) -> None:
    """The fleet's access log, attributed to people by the key they used (newest first)."""
    from sqlmodel import col, select

    from keyward.registry.models import LoginEvent

    with app.registry().read() as session:
        query = select(LoginEvent).where(LoginEvent.outcome != "disconnected")
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
        "notified_at": ts(a.notified_at),
        "notify_error": a.notify_error,
    }


@click.command()
@click.option("--open", "only_open", is_flag=True, help="Only alerts not yet cleared.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def alerts(app: AppContext, only_open: bool, as_json: bool) -> None:
    """Alerts: multi-computer use, keys used from a new address, failed-login bursts."""
    from sqlmodel import col, select

    from keyward.registry.models import Alert

    with app.registry().read() as session:
        query = select(Alert).order_by(col(Alert.id))
        if only_open:
            query = query.where(Alert.status == "open")
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


@person.command("clear-alert")
@click.argument("username")
@click.option("--reason", required=True, help="What was checked; recorded.")
@pass_app
def person_clear_alert(app: AppContext, username: str, reason: str) -> None:
    """End USERNAME's failure mode and close their open alerts."""
    from sqlmodel import col, select

    from keyward.registry import ops, validate
    from keyward.registry.models import Alert, FailureMode
    from keyward.registry.subjects import Subject

    reason = validate.line("reason", reason)
    with app.registry().write(app.actor) as tx:
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
        tx.audit(
            "person.clear-alert",
            Subject.person(username),
            {
                "reason": reason,
                "alerts": [a.id for a in open_alerts],
                "failure_mode_cleared": bool(modes),
            },
        )
    log_events(tx)
    click.echo(
        f"cleared {len(open_alerts)} alert(s) for {username}"
        + ("; failure mode ended (deployed at the next reconcile)" if modes else "")
    )


@person.command("purge")
@click.argument("username")
@pass_app
def person_purge(app: AppContext, username: str) -> None:
    """Reduce an offboarded person to what the audit chain needs (after purge_after_days)."""
    from keyward.cli.registry_cmds import key_policy_settings
    from keyward.registry.lifecycle import purge_person

    keep = key_policy_settings(app).purge_after_days
    with app.registry().write(app.actor) as tx:
        seqs = purge_person(tx, username, keep)
    log_events(tx)
    click.echo(f"purged {username}: {len(seqs)} audit events redacted; the chain still verifies")


def register(cli: click.Group) -> None:
    cli.add_command(logins)
    cli.add_command(alerts)
