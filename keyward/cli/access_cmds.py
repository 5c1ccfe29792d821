"""``keyward access``: short-lived access for break-fix work (request, approve, deny, list)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import click

from keyward.cli.common import log_events
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, short_ts, table
from keyward.clock import parse_utc
from keyward.timeparse import duration

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def access() -> None:
    """Short-lived access for break-fix work: request, approve (by someone else), list."""


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
    """Ask for ROLE in one environment for a while (the requester is --actor).

    Through a keyward server (KEYWARD_URL) the requester is whoever KEYWARD_KEY proves.
    """
    span = duration(length, "--for")
    api = app.api()
    if api is not None:
        body = {
            "role": role,
            "environment": environment,
            "duration_seconds": int(span.total_seconds()),
            "reason": reason,
        }
        result = api.call("POST", "/api/v1/access-requests", body)
    else:
        result = _request_locally(app, role, environment, span, reason)
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"access request {result['id']}: {role} in {environment} for {length}, "
        "waiting for approval by someone else"
    )


def _request_locally(
    app: AppContext, role: str, environment: str, span: timedelta, reason: str
) -> dict[str, Any]:
    from keyward.inventory import load_inventory
    from keyward.registry import lifecycle, ops
    from keyward.registry.access_rows import request_json

    root = app.inventory_dir()
    if root.is_dir():
        load_inventory(root).environment(environment)
    with app.registry().write(app.actor) as tx:
        request = lifecycle.request_access(tx, role, environment, span, reason)
        result = request_json(
            request,
            ops.find_person(tx.session, app.actor),
            ops.find_role(tx.session, role),
        )
    log_events(tx)
    return result


def _decide(app: AppContext, request_id: int, approve: bool, note: str) -> datetime | None:
    """Approve or deny, through the server when one is set; the request's new ``until``."""
    api = app.api()
    if api is not None:
        verb = "approve" if approve else "deny"
        result = api.call("POST", f"/api/v1/access-requests/{request_id}/{verb}", {"note": note})
        return parse_utc(result["until"]) if result.get("until") else None
    from keyward.registry import lifecycle

    with app.registry().write(app.actor) as tx:
        request = lifecycle.decide_access(tx, request_id, approve=approve, note=note)
    log_events(tx)
    return request.until


@access.command("approve")
@click.argument("request_id", type=int)
@click.option("--note", default="", help="Optional note, recorded.")
@pass_app
def access_approve(app: AppContext, request_id: int, note: str) -> None:
    """Approve a pending request (never your own); it counts from now."""
    until = _decide(app, request_id, True, note)
    click.echo(f"approved access request {request_id} until {short_ts(until)} UTC")


@access.command("deny")
@click.argument("request_id", type=int)
@click.option("--note", default="", help="Optional note, recorded.")
@pass_app
def access_deny(app: AppContext, request_id: int, note: str) -> None:
    """Deny a pending request."""
    _decide(app, request_id, False, note)
    click.echo(f"denied access request {request_id}")


@access.command("list")
@click.option("--open", "only_open", is_flag=True, help="Pending or currently valid only.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def access_list(app: AppContext, only_open: bool, as_json: bool) -> None:
    """List access requests."""
    api = app.api()
    if api is not None:
        rows = api.call("GET", "/api/v1/access-requests" + ("?open=1" if only_open else ""))
    else:
        from keyward.registry.access_rows import list_requests

        registry = app.registry()
        now = registry.clock()
        with registry.read() as session:
            rows = list_requests(session, now, only_open)
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
