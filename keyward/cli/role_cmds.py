"""``keyward role``: roles and who holds them (add, grant, revoke, list)."""

from __future__ import annotations

import click

from keyward.cli.common import log_events, membership_json
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, short_ts, table
from keyward.timeparse import end_of_day

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def role() -> None:
    """Roles and who holds them."""


def role_path(name: str) -> str:
    from urllib.parse import quote

    return f"/api/v1/roles/{quote(name, safe='')}"


@role.command("add")
@click.argument("name")
@click.option("--description", default="", help="What the role is for.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def role_add(app: AppContext, name: str, description: str, as_json: bool) -> None:
    """Create a role."""
    api = app.api()
    if api is not None:
        result = api.call("POST", "/api/v1/roles", {"name": name, "description": description})
    else:
        from keyward.registry import ops, views

        with app.registry().write(app.actor) as tx:
            result = views.role_json(ops.add_role(tx, name, description))
        log_events(tx)
    if as_json:
        emit_json(result)
        return
    click.echo(f"added role {name}")


@role.command("grant")
@click.argument("name")
@click.argument("username")
@click.option("--reason", required=True, help="Why (e.g. a ticket); recorded.")
@click.option(
    "--until", default=None, metavar="YYYY-MM-DD", help="The grant lapses after this day."
)
@click.option("--customer", default=None, help="Limit the grant to one customer's hosts.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def role_grant(
    app: AppContext,
    name: str,
    username: str,
    reason: str,
    until: str | None,
    customer: str | None,
    as_json: bool,
) -> None:
    """Grant role NAME to USERNAME (never to yourself)."""
    until_at = end_of_day(until, "--until") if until else None
    api = app.api()
    if api is not None:
        body = {"username": username, "reason": reason, "until": until, "customer": customer}
        result = api.call("POST", f"{role_path(name)}/grant", body)
    else:
        from keyward.registry import ops

        with app.registry().write(app.actor) as tx:
            granted = ops.grant_role(tx, name, username, reason, until_at, customer)
            result = {
                "person": username,
                **membership_json(granted, ops.find_role(tx.session, name), tx.now),
            }
        log_events(tx)
    if as_json:
        emit_json(result)
        return
    suffix = f" until {short_ts(until_at)} UTC" if until_at else ""
    click.echo(f"granted role {name} to {username}{suffix}")


@role.command("revoke")
@click.argument("name")
@click.argument("username")
@click.option("--reason", required=True, help="Why; recorded.")
@pass_app
def role_revoke(app: AppContext, name: str, username: str, reason: str) -> None:
    """End USERNAME's membership of role NAME."""
    api = app.api()
    if api is not None:
        api.call("POST", f"{role_path(name)}/revoke", {"username": username, "reason": reason})
    else:
        from keyward.registry import ops

        with app.registry().write(app.actor) as tx:
            ops.revoke_role(tx, name, username, reason)
        log_events(tx)
    click.echo(f"revoked role {name} from {username}")


@role.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def role_list(app: AppContext, as_json: bool) -> None:
    """List roles and their current members."""
    api = app.api()
    if api is not None:
        rows = api.call("GET", "/api/v1/roles")
    else:
        from keyward.registry import views

        registry = app.registry()
        with registry.read() as session:
            rows = views.role_rows(session, registry.clock())
    if as_json:
        emit_json(rows)
        return
    table(rows, [("name", "ROLE"), ("members", "MEMBERS"), ("description", "DESCRIPTION")])


def register(cli: click.Group) -> None:
    cli.add_command(role)
