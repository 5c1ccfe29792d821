"""``keyward access``: short-lived access for break-fix work (request, approve, deny, list)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from keyward.cli.common import log_events
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, short_ts, table, ts
from keyward.cli.parsing import duration

if TYPE_CHECKING:
    from keyward.registry.models import AccessRequest, Person, Role

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def access() -> None:
    """Short-lived access for break-fix work: request, approve (by someone else), list."""


def request_json(a: AccessRequest, p: Person, r: Role) -> dict[str, Any]:
    return {
        "id": a.id,
        "person": p.username,
        "role": r.name,
        "environment": a.environment,
        "duration_seconds": a.duration_seconds,
        "reason": a.reason,
        "requested_at": ts(a.requested_at),
        "status": a.status,
        "decided_by": a.decided_by,
        "decided_at": ts(a.decided_at),
        "until": ts(a.until),
        "ended_at": ts(a.ended_at),
    }


@access.command("request")
@click.argument("role")
@click.option("--env", "environment", required=True, help="The environment the access is for.")
@click.option("--for", "length", required=True, metavar="DURATION", help="e.g. 30m, 4h.")
@click.option("--reason", required=True, help="Why (e.g. an incident); recorded.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def access_request(
    app: AppContext, role: str, environment: str, length: str, reason: str, as_json: bool
) -> None:
    """Ask for ROLE in one environment for a while (the requester is --actor)."""
    from keyward.inventory import load_inventory
    from keyward.registry import lifecycle, ops

    root = app.inventory_dir()
    if root.is_dir():
        load_inventory(root).environment(environment)
    with app.registry().write(app.actor) as tx:
        request = lifecycle.request_access(tx, role, environment, duration(length, "--for"), reason)
        result = request_json(
            request,
            ops.find_person(tx.session, app.actor),
            ops.find_role(tx.session, role),
        )
    log_events(tx)
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"access request {request.id}: {role} in {environment} for {length}, "
        "waiting for approval by someone else"
    )


@access.command("approve")
@click.argument("request_id", type=int)
@click.option("--note", default="", help="Optional note, recorded.")
@pass_app
def access_approve(app: AppContext, request_id: int, note: str) -> None:
    """Approve a pending request (never your own); it counts from now."""
    from keyward.registry import lifecycle

    with app.registry().write(app.actor) as tx:
        request = lifecycle.decide_access(tx, request_id, approve=True, note=note)
    log_events(tx)
    click.echo(f"approved access request {request_id} until {short_ts(request.until)} UTC")


@access.command("deny")
@click.argument("request_id", type=int)
@click.option("--note", default="", help="Optional note, recorded.")
@pass_app
def access_deny(app: AppContext, request_id: int, note: str) -> None:
    """Deny a pending request."""
    from keyward.registry import lifecycle

    with app.registry().write(app.actor) as tx:
        lifecycle.decide_access(tx, request_id, approve=False, note=note)
    log_events(tx)
    click.echo(f"denied access request {request_id}")


@access.command("list")
@click.option("--open", "only_open", is_flag=True, help="Pending or currently valid only.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def access_list(app: AppContext, only_open: bool, as_json: bool) -> None:
    """List access requests."""
    from sqlmodel import col, select

    from keyward.registry.models import AccessRequest, Person, Role

    registry = app.registry()
    now = registry.clock()
    with registry.read() as session:
        rows = [
            request_json(a, p, r)
            for a, p, r in session.exec(
                select(AccessRequest, Person, Role)
                .join(Person, col(Person.id) == col(AccessRequest.person_id))
                .join(Role, col(Role.id) == col(AccessRequest.role_id))
                .order_by(col(AccessRequest.id))
            )
            if not only_open
            or a.status == "pending"
            or (a.status == "approved" and a.ended_at is None and a.until and a.until > now)
        ]
    if as_json:
        emit_json(rows)
        return
    table(
        rows,
        [
            ("id", "ID"),
            ("person", "PERSON"),
            ("role", "ROLE"),
            ("environment", "ENV"),
            ("status", "STATUS"),
            ("decided_by", "BY"),
            ("until", "UNTIL"),
            ("reason", "REASON"),
        ],
    )


def register(cli: click.Group) -> None:
    cli.add_command(access)
