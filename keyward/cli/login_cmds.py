"""Who actually logged in: ``keyward logins`` and ``keyward alerts``."""

from __future__ import annotations

import click

from keyward.alert_kinds import ALERT_KINDS
from keyward.cli.common import customer_hosts, log_events
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, table
from keyward.errors import KeywardError
from keyward.timeparse import start_of_day

pass_app = click.make_pass_decorator(AppContext)


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
    since_at = start_of_day(since, "--since") if since else None
    api = app.api()
    if api is not None:
        query = {
            "person": username,
            "host": host,
            "since": since,
            "failed": "1" if failed else None,
            "customer": customer,
            "limit": str(limit),
            "all": "1" if show_all else None,
        }
        rows = api.call("GET", "/api/v1/logins?" + _encode(query))
    else:
        from keyward.registry import login_views

        with app.registry().read() as session:
            rows = login_views.login_rows(
                session,
                username=username,
                host=host,
                since=since_at,
                failed=failed,
                hosts=customer_hosts(app, customer) if customer is not None else None,
                limit=limit,
                show_all=show_all,
                agent_keys=() if show_all else agent_fingerprints(app),
            )
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
    from keyward.registry.login_views import agent_keys

    try:
        return agent_keys(load_inventory(root))
    except (KeywardError, OSError, UnicodeDecodeError):
        return set()


def _encode(query: dict[str, str | None]) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in query.items() if v is not None})


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
    api = app.api()
    if api is not None:
        query = {"open": "1" if only_open else None, "kind": kind, "person": username, "host": host}
        wanted = _encode(query)
        rows = api.call("GET", "/api/v1/alerts" + (f"?{wanted}" if wanted else ""))
    else:
        from keyward.registry import login_views

        with app.registry().read() as session:
            rows = login_views.alert_rows(
                session, only_open=only_open, kind=kind, username=username, host=host
            )
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
    modes_ended: bool
    api = app.api()
    if api is not None:
        result = api.call("POST", f"/api/v1/alerts/{alert_id}/clear", {"reason": reason})
    else:
        from keyward.registry import login_views

        with app.registry().write(app.actor) as tx:
            result = login_views.clear_alert(tx, alert_id, reason)
        log_events(tx)
    modes_ended = bool(result["failure_mode_cleared"])
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"cleared alert {alert_id}"
        + ("; failure mode ended (deployed at the next reconcile)" if modes_ended else "")
    )


def register(cli: click.Group) -> None:
    cli.add_command(logins)
    cli.add_command(alerts)
