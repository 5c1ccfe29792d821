"""``keyward offboard``: take a person's access away from every host, with per-host evidence."""

from __future__ import annotations

import sys
from typing import Any

import click

from keyward.cli.common import log_events
from keyward.cli.context import AppContext
from keyward.cli.output import chatter, emit_json, table

pass_app = click.make_pass_decorator(AppContext)


# -- offboarding --------------------------------------------------------------


class DefaultCommandGroup(click.Group):
    """``keyward offboard USER ...`` runs ``start``; ``keyward offboard status USER`` too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultCommandGroup)
def offboard() -> None:
    """Take a person's access away from every host, with per-host evidence.

    \b
    keyward offboard USERNAME --reason TEXT    revoke everything, reconcile, confirm
    keyward offboard status USERNAME           where the case stands
    """


def _case(app: AppContext, username: str) -> dict[str, Any]:
    """The person's latest case (``keyward.registry.views.offboarding_case``)."""
    api = app.api()
    if api is not None:
        from urllib.parse import quote

        result: dict[str, Any] = api.call("GET", f"/api/v1/offboard/{quote(username, safe='')}")
        return result
    from keyward.registry import views

    with app.registry().read() as session:
        return views.offboarding_case(session, username)


def _print_case(case: dict[str, Any], as_json: bool) -> int:
    from keyward.cli.rounds import EXIT_FAILED

    rows = case["targets"]
    unconfirmed = [r for r in rows if r["confirmed_at"] is None]
    if as_json:
        emit_json(case)
    else:
        table(
            rows,
            [
                ("host", "HOST"),
                ("account", "ACCOUNT"),
                ("removed", "REMOVED"),
                ("confirmed_at", "CONFIRMED AT"),
                ("error", "ERROR"),
            ],
        )
        if unconfirmed:
            hosts = sorted({r["host"] for r in unconfirmed})
            click.echo(
                f"UNCONFIRMED on {len(hosts)} host(s): {', '.join(hosts)}; every later "
                "'keyward reconcile' retries them"
            )
        else:
            click.echo(f"offboarding case {case['case_id']}: confirmed on every host")
    return EXIT_FAILED if unconfirmed else 0


@offboard.command("start", hidden=True)
@click.argument("username")
@click.option("--reason", required=True, help="Why the person leaves; recorded.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@click.pass_context
def offboard_start(
    ctx: click.Context, app: AppContext, username: str, reason: str, as_json: bool
) -> None:
    """Offboard USERNAME: revoke all, reconcile every host, confirm by read-back.

    Through a keyward server (KEYWARD_URL) the server records the offboarding and the
    daemon (or the next 'keyward reconcile') confirms it on the hosts; 'keyward offboard
    status' follows it.
    """
    api = app.api()
    if api is not None:
        case = api.call("POST", "/api/v1/offboard", {"username": username, "reason": reason})
        if not as_json:
            chatter(
                f"offboarding case {case['case_id']}: {username} revoked in the registry by "
                f"{api.url}; the daemon (or the next 'keyward reconcile') confirms it on "
                f"{len({t['host'] for t in case['targets']})} hosts"
            )
        ctx.exit(_print_case(case, as_json))
    from keyward.cli.output import progress
    from keyward.cli.rounds import load_inputs, say_lock_wait, surroundings
    from keyward.engine.offboarding import case_targets, confirm_round
    from keyward.registry import lifecycle

    before = load_inputs(app, None, None)
    targets = case_targets(before, username)
    registry = app.registry()
    with registry.write(app.actor) as tx:
        opened = lifecycle.offboard(tx, username, reason, targets)
    log_events(tx)
    if not as_json:
        chatter(
            f"offboarding case {opened.id}: {username} revoked in the registry; "
            f"confirming on {len({t[0] for t in targets})} hosts"
        )
    confirm_round(surroundings(app), before, "keyward offboard", say_lock_wait, progress)
    ctx.exit(_print_case(_case(app, username), as_json))


@offboard.command("status")
@click.argument("username")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@click.pass_context
def offboard_status(ctx: click.Context, app: AppContext, username: str, as_json: bool) -> None:
    """Where USERNAME's offboarding stands, per host and account (exit 1 while unconfirmed)."""
    ctx.exit(_print_case(_case(app, username), as_json))


def register(cli: click.Group) -> None:
    cli.add_command(offboard)


_ = sys
