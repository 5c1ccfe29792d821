"""Lifecycle commands: key rotation, short-lived access, offboarding and its evidence."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.context import AppContext
from keyward.cli.output import chatter, emit_json, short_ts, table, ts
from keyward.cli.parsing import duration
from keyward.cli.registry_cmds import key, key_claim, key_policy, log_events, read_small_file
from keyward.errors import RegistryError

if TYPE_CHECKING:
    from keyward.engine.inputs import RoundInputs
    from keyward.registry.models import (
        AccessRequest,
        OffboardingCase,
        Person,
        Role,
    )

pass_app = click.make_pass_decorator(AppContext)


# -- key rotate ---------------------------------------------------------------


@key.command("rotate")
@click.argument("username")
@click.argument("new_pubkey_file")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="How long the old key stays valid (e.g. 24h, 3d).",
)
@click.option(
    "--old",
    "old_fingerprint",
    default=None,
    metavar="FINGERPRINT",
    help="Which key to replace, when the person has several.",
)
@click.option(
    "--proof",
    "proof_file",
    default=None,
    metavar="SIGFILE",
    help="SSHSIG proof for the new key (see 'key statement').",
)
@click.option(
    "--attest",
    type=click.Choice(["admin", "sk"]),
    default=None,
    help="Attestation for the new key, if no proof.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def key_rotate(
    app: AppContext,
    username: str,
    new_pubkey_file: str,
    grace: str,
    old_fingerprint: str | None,
    proof_file: str | None,
    attest: str | None,
    as_json: bool,
) -> None:
    """Replace USERNAME's key: the new one is deployed at once, the old one lapses after --grace."""
    from datetime import timedelta

    from keyward.cli.registry_cmds import key_json
    from keyward.keys import from_pub_file, parse_public_key
    from keyward.registry import lifecycle, ops

    policy = key_policy(app)
    grace_period = duration(grace, "--grace") if grace != "0" else timedelta(0)
    text = read_small_file(new_pubkey_file, "public key file").decode("utf-8", errors="replace")
    public = parse_public_key(from_pub_file(text), policy)
    registry = app.registry()
    now = registry.clock()
    expires_at = now + timedelta(days=policy.max_key_age_days)
    claim = key_claim(app, username, public, policy, now, expires_at, proof_file, attest)
    with registry.write(app.actor) as tx:
        old, new = lifecycle.rotate_key(tx, username, public, claim, grace_period, old_fingerprint)
        owner = ops.find_person(tx.session, username)
        result = {"old": key_json(old, owner, tx.now), "new": key_json(new, owner, tx.now)}
    log_events(tx)
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"rotated {username}: new key {new.fingerprint} deployed at the next reconcile; "
        f"old key {old.fingerprint} valid until {short_ts(old.expires_at)} UTC"
    )


# -- access requests ----------------------------------------------------------


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


def _targets(prepared: RoundInputs, username: str) -> list[tuple[str, str, str, bool]]:
    """Every managed file of the fleet, marking those where the person had access."""
    return [
        (
            target.host,
            target.account,
            target.pattern,
            any(line.owner == username and line.kind == "person" for line in desired.lines),
        )
        for target, desired in sorted(
            prepared.desired.items(),
            key=lambda item: (item[0].host, item[0].account, item[0].pattern),
        )
    ]


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
    from keyward.cli.agent_cmds import EXIT_FAILED

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
    from keyward.cli.agent_cmds import load_inputs, say_lock_wait, surroundings
    from keyward.cli.output import progress
    from keyward.engine.inputs import refresh
    from keyward.engine.round import RoundSettings, run_round, writers_lock
    from keyward.registry import lifecycle

    before = load_inputs(app, None, None)
    targets = _targets(before, username)
    registry = app.registry()
    with registry.write(app.actor) as tx:
        case = lifecycle.offboard(tx, username, reason, targets)
    log_events(tx)
    if not as_json:
        chatter(
            f"offboarding case {case.id}: {username} revoked in the registry; "
            f"confirming on {len({t[0] for t in targets})} hosts"
        )
    around = surroundings(app)
    with writers_lock(around, "keyward offboard", float("inf"), say_lock_wait):
        # The registry is read again (the revocation is in it); the inventory is not.
        after = refresh(
            around.registry, around.clock, before.inventory, before.hosts, before.agent_key
        )
        run_round(around, after, RoundSettings(), progress)
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
    cli.add_command(access)
    cli.add_command(offboard)


_ = sys
