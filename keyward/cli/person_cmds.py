"""``keyward person``: staff members, from ``person add`` to ``rehire``, ``clear-alert`` and
``purge``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.common import key_json, key_policy_settings, log_events, membership_json
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, table, ts
from keyward.errors import RegistryError

if TYPE_CHECKING:
    from keyward.registry.models import Person
    from keyward.registry.quickread import PersonRow

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def person() -> None:
    """Staff members: the owners of keys."""


def person_json(p: Person | PersonRow) -> dict[str, Any]:
    return {
        "username": p.username,
        "full_name": p.full_name,
        "email": p.email,
        "status": p.status,
        "created_at": ts(p.created_at),
        "changed_at": ts(p.changed_at),
    }


@person.command("add")
@click.argument("username")
@click.option("--name", "full_name", required=True, help="Full name.")
@click.option("--email", default=None, help="Email address.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def person_add(
    app: AppContext, username: str, full_name: str, email: str | None, as_json: bool
) -> None:
    """Register a person."""
    from keyward.registry import ops

    with app.registry().write(app.actor) as tx:
        result = person_json(ops.add_person(tx, username, full_name, email))
    log_events(tx)
    if as_json:
        emit_json(result)
        return
    click.echo(f"added person {username}")


@person.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def person_list(app: AppContext, as_json: bool) -> None:
    """List people."""
    from keyward.registry import quickread

    # Without the ORM where that gives the same answer: a listing in a tenth of a second.
    quick = quickread.people(app.url)
    if quick is not None:
        rows = [person_json(p) for p in quick]
    else:
        from sqlmodel import select

        from keyward.registry.models import Person

        with app.registry().read() as session:
            people = session.exec(select(Person).order_by(Person.username)).all()
            rows = [person_json(p) for p in people]
    if as_json:
        emit_json(rows)
        return
    table(
        rows,
        [("username", "USERNAME"), ("full_name", "NAME"), ("email", "EMAIL"), ("status", "STATUS")],
    )


@person.command("show")
@click.argument("username")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def person_show(app: AppContext, username: str, as_json: bool) -> None:
    """Show a person with their keys, roles and periods of employment."""
    from sqlmodel import col, select

    from keyward.registry import ops
    from keyward.registry.lifecycle import employment_periods
    from keyward.registry.models import Membership, Role, SshKey

    registry = app.registry()
    now = registry.clock()
    with registry.read() as session:
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
    if as_json:
        emit_json(data)
        return
    click.echo(f"{data['username']}  {data['full_name']}  <{data['email'] or '-'}>  {p.status}")
    click.echo(
        "employed: "
        + "; ".join(
            f"{(period['started_at'] or '?')[:10]} to {(period['ended_at'] or 'now')[:10]}"
            for period in data["periods"]
        )
    )
    click.echo("keys:")
    table(
        data["keys"],
        [
            ("fingerprint", "FINGERPRINT"),
            ("type", "TYPE"),
            ("attestation", "ATTEST"),
            ("expires_at", "EXPIRES"),
            ("status", "STATUS"),
        ],
    )
    click.echo("roles:")
    table(
        data["roles"],
        [
            ("role", "ROLE"),
            ("granted_by", "BY"),
            ("granted_at", "SINCE"),
            ("until", "UNTIL"),
            ("status", "STATUS"),
            ("reason", "REASON"),
        ],
    )


@person.command("edit")
@click.argument("username")
@click.option("--name", "full_name", default=None, help="The corrected full name.")
@click.option("--email", default=None, help="The corrected e-mail address ('' removes it).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def person_edit(
    app: AppContext, username: str, full_name: str | None, email: str | None, as_json: bool
) -> None:
    """Correct USERNAME's name or e-mail; the old and new values are in the audit trail."""
    from keyward.registry import ops

    with app.registry().write(app.actor) as tx:
        result = person_json(ops.edit_person(tx, username, full_name, email))
    log_events(tx)
    if as_json:
        emit_json(result)
        return
    click.echo(f"changed {', '.join(json.loads(tx.events[-1].details))} of {username}")


@person.command("rehire")
@click.argument("username")
@click.option("--reason", required=True, help="Why (e.g. the HR ticket); recorded.")
@click.option("--name", "full_name", default=None, help="Full name, if it changed (or was purged).")
@click.option("--email", default=None, help="E-mail address, if it changed ('' removes it).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def person_rehire(
    app: AppContext,
    username: str,
    reason: str,
    full_name: str | None,
    email: str | None,
    as_json: bool,
) -> None:
    """Employ an offboarded person again under the same username: a new period.

    Their history stays; the earlier period's keys stay revoked and its roles ended:
    add keys and grant roles as for a new person.  'person show' lists both periods.
    """
    from keyward.registry.lifecycle import employment_periods, rehire

    with app.registry().write(app.actor) as tx:
        returned = rehire(tx, username, reason, full_name, email)
        result = person_json(returned)
        result["periods"] = employment_periods(tx.session, returned)
    log_events(tx)
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"rehired {username}: employment period {len(result['periods'])} starts now; "
        "add a key and grant roles as for a new person"
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
    from keyward.registry.lifecycle import purge_person

    keep = key_policy_settings(app).purge_after_days
    with app.registry().write(app.actor) as tx:
        seqs = purge_person(tx, username, keep)
    log_events(tx)
    click.echo(f"purged {username}: {len(seqs)} audit events redacted; the chain still verifies")


def register(cli: click.Group) -> None:
    cli.add_command(person)
