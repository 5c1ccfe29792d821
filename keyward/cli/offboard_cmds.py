"""``keyward offboard``: take a person's access away from every host, with per-host evidence."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.common import log_events
from keyward.cli.context import AppContext
from keyward.cli.output import chatter, emit_json, table, ts
from keyward.errors import RegistryError

if TYPE_CHECKING:
    from keyward.registry.models import OffboardingCase

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


def _case_rows(app: AppContext, username: str) -> tuple[OffboardingCase, list[dict[str, Any]]]:
    from sqlmodel import col, select

    from keyward.registry import ops
    from keyward.registry.models import OffboardingCase, OffboardingTarget

    with app.registry().read() as session:
        person = ops.find_person(session, username)
        case = session.exec(
            select(OffboardingCase)
            .where(OffboardingCase.person_id == person.id)
            .order_by(col(OffboardingCase.id).desc())
        ).first()
        if case is None:
            raise RegistryError(f"{username!r} has no offboarding case")
        rows = [
            {
                "host": t.host,
                "account": t.account,
                "path": t.path or t.pattern,
                "had_access": t.had_access,
                "removed": t.removed,
                "confirmed_at": ts(t.confirmed_at),
                "confirmed_by_run": t.confirmed_by_run,
                "last_attempt": ts(t.last_attempt),
                "error": None if t.confirmed_at else (t.last_error or "not yet checked"),
            }
            for t in session.exec(
                select(OffboardingTarget)
                .where(OffboardingTarget.case_id == case.id)
                .order_by(col(OffboardingTarget.host), col(OffboardingTarget.account))
            )
        ]
        session.expunge(case)
    return case, rows


def _print_case(case: OffboardingCase, rows: list[dict[str, Any]], as_json: bool) -> int:
    from keyward.cli.rounds import EXIT_FAILED

    unconfirmed = [r for r in rows if r["confirmed_at"] is None]
    if as_json:
        emit_json(
            {
                "case_id": case.id,
                "status": case.status,
                "reason": case.reason,
                "requested_by": case.requested_by,
                "started_at": ts(case.started_at),
                "closed_at": ts(case.closed_at),
                "fingerprints": json.loads(case.fingerprints),
                "targets": rows,
            }
        )
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
            click.echo(f"offboarding case {case.id}: confirmed on every host")
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
    """Offboard USERNAME: revoke all, reconcile every host, confirm by read-back."""
    from keyward.cli.output import progress
    from keyward.cli.rounds import load_inputs, say_lock_wait, surroundings
    from keyward.engine.offboarding import case_targets, confirm_round
    from keyward.registry import lifecycle

    before = load_inputs(app, None, None)
    targets = case_targets(before, username)
    registry = app.registry()
    with registry.write(app.actor) as tx:
        case = lifecycle.offboard(tx, username, reason, targets)
    log_events(tx)
    if not as_json:
        chatter(
            f"offboarding case {case.id}: {username} revoked in the registry; "
            f"confirming on {len({t[0] for t in targets})} hosts"
        )
    confirm_round(surroundings(app), before, "keyward offboard", say_lock_wait, progress)
    case, rows = _case_rows(app, username)
    ctx.exit(_print_case(case, rows, as_json))


@offboard.command("status")
@click.argument("username")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@click.pass_context
def offboard_status(ctx: click.Context, app: AppContext, username: str, as_json: bool) -> None:
    """Where USERNAME's offboarding stands, per host and account (exit 1 while unconfirmed)."""
    case, rows = _case_rows(app, username)
    ctx.exit(_print_case(case, rows, as_json))


def register(cli: click.Group) -> None:
    cli.add_command(offboard)


_ = sys
