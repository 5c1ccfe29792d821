"""Registry commands: init, person, key, role, audit."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.checkpoint_cmds import (
    audit_checkpoint,
    check_and_checkpoint,
    checkpoint_options,
    report,
)
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, short_ts, table, ts
from keyward.cli.parsing import duration, end_of_day, start_of_day
from keyward.errors import UsageError
from keyward.logs import get_logger, human_value

if TYPE_CHECKING:
    from keyward.inventory.model import PolicySettings
    from keyward.keys import KeyPolicy, PublicKey
    from keyward.registry import ops
    from keyward.registry.models import AuditEvent, Membership, Person, Role, SshKey
    from keyward.registry.quickread import PersonRow
    from keyward.registry.store import WriteTx
    from keyward.registry.subjects import Subject

MAX_INPUT_BYTES = 64 * 1024
pass_app = click.make_pass_decorator(AppContext)


def read_small_file(path: str, what: str) -> bytes:
    """Read a key or signature file ('-' for stdin), bounded in size."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(f"{what} {path} is larger than {MAX_INPUT_BYTES} bytes")
    return data


def key_policy(app: AppContext) -> KeyPolicy:
    """The key policy: the inventory's ``[policy]`` when there is an inventory, else defaults."""
    from keyward.keys import DEFAULT_POLICY

    root = app.inventory_dir()
    if not root.is_dir():
        return DEFAULT_POLICY
    from keyward.inventory import load_inventory

    return load_inventory(root).policy.key_policy()


def key_policy_settings(app: AppContext) -> PolicySettings:
    """The inventory's ``[policy]`` (defaults without an inventory)."""
    from keyward.inventory.model import PolicySettings
    from keyward.keys import DEFAULT_POLICY

    root = app.inventory_dir()
    if not root.is_dir():
        return PolicySettings(DEFAULT_POLICY.max_key_age_days, DEFAULT_POLICY.min_rsa_bits, None)
    from keyward.inventory import load_inventory

    return load_inventory(root).policy


def customer_hosts(app: AppContext, customer: str) -> set[str]:
    """Names of the inventory's hosts that belong to ``customer``."""
    from keyward.inventory import load_inventory

    inv = load_inventory(app.inventory_dir())
    return {h.name for h in inv.hosts() if h.customer == customer}


def log_events(tx: WriteTx) -> None:
    log = get_logger()
    for event in tx.events:
        log.info(
            "registry_change",
            action=event.action,
            subject=event.subject,
            actor=event.actor,
            seq=event.seq,
            details=json.loads(event.details),
        )


def key_claim(
    app: AppContext,
    username: str,
    public: PublicKey,
    policy: KeyPolicy,
    now: datetime,
    expires_at: datetime,
    proof_file: str | None,
    attest: str | None,
) -> ops.KeyClaim:
    """What we can honestly say about a new key: a verified proof, a voucher, or nothing."""
    from keyward.registry import ops
    from keyward.sshsig import verify_proof

    if proof_file and attest:
        raise UsageError("give either --proof or --attest, not both")
    if proof_file:
        signed = verify_proof(
            read_small_file(proof_file, "proof file"),
            username,
            public,
            now.date(),
            policy.proof_max_age_days,
        )
        return ops.KeyClaim("proof", expires_at, proof_date=signed.isoformat())
    if attest:
        return ops.KeyClaim(attest, expires_at, attested_by=app.actor)
    return ops.KeyClaim("none", expires_at)


def key_status(key: SshKey, now: Any) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at <= now:
        return "expired"
    return "active"


# -- init ---------------------------------------------------------------------


@click.command()
@pass_app
def init(app: AppContext) -> None:
    """Create the registry (or upgrade an older one to this keyward's schema)."""
    import os

    from keyward.registry.db import describe
    from keyward.registry.location import resolve_url
    from keyward.registry.store import Registry
    from keyward.registry.subjects import Subject

    url = resolve_url(app.db, dict(os.environ), os.geteuid())
    registry, before, after = Registry.initialise(url, app.clock)
    try:
        if before is None:
            with registry.write(app.actor) as tx:
                tx.audit(
                    "registry.init",
                    Subject("registry", registry.backend),
                    {"schema": after, "backend": registry.backend},
                )
            log_events(tx)
            click.echo(f"initialised registry {describe(url)} (schema {after})")
        elif before != after:
            with registry.write(app.actor) as tx:
                tx.audit(
                    "registry.upgrade",
                    Subject("registry", registry.backend),
                    {"from": before, "to": after},
                )
            log_events(tx)
            click.echo(f"upgraded registry {describe(url)} from schema {before} to {after}")
        else:
            click.echo(f"registry {describe(url)} is up to date (schema {after})")
    finally:
        registry.dispose()


# -- person -------------------------------------------------------------------


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


# -- key ----------------------------------------------------------------------


@click.group()
def key() -> None:
    """Personal public keys."""


def key_json(k: SshKey, owner: Person, now: Any) -> dict[str, Any]:
    from keyward.keys import decode_key

    public = decode_key(k.key_type, k.blob, k.comment)
    return {
        "fingerprint": k.fingerprint,
        "owner": owner.username,
        "type": k.key_type,
        "bits": public.bits,
        "comment": k.comment,
        "attestation": k.attestation,
        "attested_by": k.attested_by,
        "proof_date": k.proof_date,
        "added_by": k.added_by,
        "added_at": ts(k.added_at),
        "expires_at": ts(k.expires_at),
        "revoked_at": ts(k.revoked_at),
        "revoked_by": k.revoked_by,
        "revoke_reason": k.revoke_reason,
        "status": key_status(k, now),
    }


@key.command("add")
@click.argument("username")
@click.argument("pubkey_file")
@click.option("--expires", default=None, metavar="YYYY-MM-DD", help="Earlier expiry than policy.")
@click.option(
    "--proof",
    "proof_file",
    default=None,
    metavar="SIGFILE",
    help="SSHSIG signature of 'keyward key statement' output (ssh-keygen -Y sign -n keyward).",
)
@click.option(
    "--attest",
    type=click.Choice(["admin", "sk"]),
    default=None,
    help="admin: you vouch for the key; sk: a FIDO security key.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def key_add(
    app: AppContext,
    username: str,
    pubkey_file: str,
    expires: str | None,
    proof_file: str | None,
    attest: str | None,
    as_json: bool,
) -> None:
    """Register USERNAME's public key from PUBKEY_FILE ('-' for stdin)."""
    from keyward.keys import from_pub_file, parse_public_key
    from keyward.registry import ops

    policy = key_policy(app)
    text = read_small_file(pubkey_file, "public key file").decode("utf-8", errors="replace")
    public = parse_public_key(from_pub_file(text), policy)
    registry = app.registry()
    now = registry.clock()
    latest = now + timedelta(days=policy.max_key_age_days)
    expires_at = latest
    if expires is not None:
        expires_at = end_of_day(expires, "--expires")
        if expires_at > latest + timedelta(days=1):
            raise UsageError(
                f"--expires is later than the policy allows ({policy.max_key_age_days} days)"
            )
        expires_at = min(expires_at, latest)
    claim = key_claim(app, username, public, policy, now, expires_at, proof_file, attest)
    with registry.write(app.actor) as tx:
        row = ops.add_key(tx, username, public, claim)
        result = key_json(row, ops.find_person(tx.session, username), tx.now)
    log_events(tx)
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"added {public.key_type} key {public.fingerprint} for {username} "
        f"(attestation {claim.attestation}, expires {short_ts(expires_at)} UTC)"
    )


@key.command("statement")
@click.argument("username")
@click.argument("pubkey_file")
@pass_app
def key_statement(app: AppContext, username: str, pubkey_file: str) -> None:
    """Print the statement the key owner signs to prove possession (for --proof).

    \b
    keyward key statement alice id_ed25519.pub > statement
    ssh-keygen -Y sign -n keyward -f id_ed25519 statement   # writes statement.sig
    keyward key add alice id_ed25519.pub --proof statement.sig
    """
    from keyward.keys import from_pub_file, parse_public_key
    from keyward.sshsig import proof_statement

    policy = key_policy(app)
    text = read_small_file(pubkey_file, "public key file").decode("utf-8", errors="replace")
    public = parse_public_key(from_pub_file(text), policy)
    sys.stdout.buffer.write(proof_statement(username, public.fingerprint, app.clock().date()))


@key.command("list")
@click.argument("username", required=False)
@click.option("--all", "show_all", is_flag=True, help="Include revoked and expired keys.")
@click.option(
    "--expiring",
    default=None,
    metavar="DURATION",
    help="Only keys that expire within DURATION (e.g. 30d).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def key_list(
    app: AppContext, username: str | None, show_all: bool, expiring: str | None, as_json: bool
) -> None:
    """List keys (active ones unless --all)."""
    from sqlmodel import col, select

    from keyward.registry import ops
    from keyward.registry.models import Person, SshKey

    registry = app.registry()
    now = registry.clock()
    horizon = now + duration(expiring, "--expiring") if expiring else None
    with registry.read() as session:
        query = select(SshKey, Person).join(Person, col(Person.id) == col(SshKey.person_id))
        if username:
            p = ops.find_person(session, username)
            query = query.where(SshKey.person_id == p.id)
        rows = [
            key_json(k, p, now)
            for k, p in session.exec(query.order_by(col(Person.username), col(SshKey.added_at)))
        ]
    if not show_all:
        rows = [r for r in rows if r["status"] == "active"]
    if horizon is not None:
        limit = ts(horizon)
        rows = [r for r in rows if r["status"] == "active" and r["expires_at"] <= limit]
        deployed = deployed_hosts(app)
        for r in rows:
            r["hosts"] = deployed.get(r["fingerprint"], [])
    if as_json:
        emit_json(rows)
        return
    table(
        rows,
        [
            ("owner", "OWNER"),
            ("fingerprint", "FINGERPRINT"),
            ("type", "TYPE"),
            ("attestation", "ATTEST"),
            ("expires_at", "EXPIRES"),
            ("status", "STATUS"),
        ]
        + ([("hosts", "HOSTS")] if horizon is not None else []),
    )


def deployed_hosts(app: AppContext) -> dict[str, list[str]]:
    """Fingerprint -> the hosts its key is deployed to (empty without an inventory)."""
    root = app.inventory_dir()
    if not root.is_dir():
        return {}
    from keyward.desired import compute_desired
    from keyward.inventory import load_inventory
    from keyward.registry.snapshot import load_snapshot

    inv = load_inventory(root)
    registry = app.registry()
    with registry.read() as session:
        snapshot = load_snapshot(session)
    desired = compute_desired(snapshot, inv, inv.hosts(), None, registry.clock())
    out: dict[str, set[str]] = {}
    for target, d in desired.items():
        for line in d.lines:
            out.setdefault(line.key.fingerprint, set()).add(target.host)
    return {fp: sorted(hosts) for fp, hosts in out.items()}


@key.command("revoke")
@click.argument("fingerprint")
@click.option("--reason", required=True, help="Why (recorded).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def key_revoke(app: AppContext, fingerprint: str, reason: str, as_json: bool) -> None:
    """Revoke a key by its SHA256 fingerprint.

    FINGERPRINT may be the short form written on host lines: the comment
    keyward:OWNER:XXXXXXXXXXXXXXXX, or its 16 characters; more characters are fine.
    """
    from keyward.registry import ops
    from keyward.registry.models import Person

    registry = app.registry()
    with registry.write(app.actor) as tx:
        revoked = ops.revoke_key(tx, fingerprint, reason)
        owner = tx.session.get(Person, revoked.person_id)
        assert owner is not None
        result = key_json(revoked, owner, tx.now)
    log_events(tx)
    if as_json:
        emit_json(result)
        return
    click.echo(f"revoked key {revoked.fingerprint} of {owner.username}")


@key.command("check")
@click.argument("private_key_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def key_check(app: AppContext, private_key_file: str, as_json: bool) -> None:
    """Check a PRIVATE key file on the owner's machine, without its passphrase.

    Refuses an unencrypted key; prints the public key and its fingerprint.
    """
    from keyward.keys import parse_public_key
    from keyward.privkey import check_private_key

    policy = key_policy(app)
    data = read_small_file(private_key_file, "private key file")
    hint = None
    pub_path = Path(private_key_file + ".pub")
    if pub_path.is_file():
        hint = parse_public_key(
            read_small_file(str(pub_path), "public key file").decode("utf-8", errors="replace"),
            policy,
        )
    report = check_private_key(data, policy, hint)
    public = report.public_key or hint
    result = {
        "container": report.container,
        "encrypted": report.encrypted,
        "cipher": report.cipher,
        "kdf": report.kdf,
        "kdf_rounds": report.kdf_rounds,
        "public_key": public.openssh() if public else None,
        "fingerprint": public.fingerprint if public else None,
        "notes": list(report.notes),
    }
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"ok: {private_key_file} is protected ({report.container}, cipher {report.cipher}, "
        f"kdf {report.kdf} rounds {report.kdf_rounds})"
    )
    for note in report.notes:
        click.echo(f"note: {note}")
    if public is not None:
        click.echo(f"fingerprint: {public.fingerprint}")
        click.echo(public.openssh())
    else:
        click.echo("no public key in this file; keep the matching .pub next to it")


# -- role ---------------------------------------------------------------------


@click.group()
def role() -> None:
    """Roles and who holds them."""


def membership_json(m: Membership, r: Role, now: Any) -> dict[str, Any]:
    if m.ended_at is not None:
        status = "ended"
    elif m.until is not None and m.until <= now:
        status = "lapsed"
    else:
        status = "active"
    return {
        "role": r.name,
        "granted_by": m.granted_by,
        "granted_at": ts(m.granted_at),
        "reason": m.reason,
        "until": ts(m.until),
        "customer": m.customer,
        "ended_at": ts(m.ended_at),
        "ended_by": m.ended_by,
        "end_reason": m.end_reason,
        "status": status,
    }


@role.command("add")
@click.argument("name")
@click.option("--description", default="", help="What the role is for.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def role_add(app: AppContext, name: str, description: str, as_json: bool) -> None:
    """Create a role."""
    from keyward.registry import ops

    with app.registry().write(app.actor) as tx:
        created = ops.add_role(tx, name, description)
        result = {
            "name": created.name,
            "description": created.description,
            "created_by": created.created_by,
            "created_at": ts(created.created_at),
        }
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
    """Grant role NAME to USERNAME."""
    from keyward.registry import ops

    until_at = end_of_day(until, "--until") if until else None
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
    from sqlmodel import col, select

    from keyward.registry.models import Membership, Person, Role

    registry = app.registry()
    now = registry.clock()
    with registry.read() as session:
        roles = session.exec(select(Role).order_by(Role.name)).all()
        members = session.exec(
            select(Membership, Person)
            .join(Person, col(Person.id) == col(Membership.person_id))
            .where(col(Membership.ended_at).is_(None))
        ).all()
        rows = []
        for r in roles:
            current = sorted(
                p.username
                for m, p in members
                if m.role_id == r.id and (m.until is None or m.until > now)
            )
            rows.append({"name": r.name, "description": r.description, "members": current})
    if as_json:
        emit_json(rows)
        return
    table(rows, [("name", "ROLE"), ("members", "MEMBERS"), ("description", "DESCRIPTION")])


# -- audit --------------------------------------------------------------------


@click.group()
def audit() -> None:
    """The tamper-evident audit trail."""


def _event_row(event: AuditEvent, subject: Subject | None) -> dict[str, Any]:
    """One event for ``audit log``: ``subject`` is the name, ``subject_kind`` its kind.

    Older events store a bare name and newer ones ``kind:name``; both are shown the
    same way, so a script filtering on ``subject`` keeps working across the change.
    """
    return {
        "seq": event.seq,
        "at": ts(event.at),
        "actor": event.actor,
        "action": event.action,
        "subject": subject.name if subject else event.subject,
        "subject_kind": subject.kind if subject else None,
        "details": json.loads(event.details) if not event.redacted else {"redacted": True},
        "hash": event.hash,
    }


@audit.command("log")
@click.option("--since", default=None, metavar="DATE", help="Only events from this date (UTC).")
@click.option("--person", "username", default=None, help="Only events about this person.")
@click.option("--action", default=None, help="Only this action (e.g. key.revoke).")
@click.option(
    "--customer", default=None, help="Only events about this customer's hosts and grants."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def audit_log(
    app: AppContext,
    since: str | None,
    username: str | None,
    action: str | None,
    customer: str | None,
    as_json: bool,
) -> None:
    """Show audit events, oldest first."""
    from sqlmodel import col, select

    from keyward.registry import subjects
    from keyward.registry.models import AuditEvent
    from keyward.registry.subjects import Subject

    with app.registry().read() as session:
        query = select(AuditEvent).order_by(col(AuditEvent.seq))
        if since:
            query = query.where(AuditEvent.at >= start_of_day(since, "--since"))
        if username:
            query = query.where(subjects.matches(Subject.person(username)))
        if action:
            query = query.where(AuditEvent.action == action)
        events = list(session.exec(query))
        kinds = subjects.resolve(session, events)
        if username:
            events = [e for e in events if kinds[e.seq] == Subject.person(username)]
        rows = [_event_row(e, kinds[e.seq]) for e in events]
    if customer is not None:
        hosts = customer_hosts(app, customer)
        rows = [
            r
            for r in rows
            if (r["subject_kind"] == "host" and r["subject"] in hosts)
            or r["details"].get("customer") == customer
        ]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        details = " ".join(
            f"{k}={human_value(v)}" for k, v in sorted(r["details"].items()) if v is not None
        )
        about = f"{r['subject_kind']}:{r['subject']}" if r["subject_kind"] else r["subject"]
        click.echo(
            f"{r['seq']:>6}  {r['at']}  {r['actor']:<12} {r['action']:<22} {about:<16} {details}"
        )
    if not rows:
        click.echo("(no events)")


@audit.command("verify")
@checkpoint_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def audit_verify(
    app: AppContext, checkpoint_dir: str | None, trusted_keys: tuple[str, ...], as_json: bool
) -> None:
    """Check the whole audit chain and its signed checkpoints; exit 1 naming the first bad event.

    Then sign a checkpoint of the head (outside the registry) if it moved.
    """
    report(check_and_checkpoint(app, checkpoint_dir, trusted_keys, must_write=False), as_json)


def register(cli: click.Group) -> None:
    audit.add_command(audit_checkpoint)
    for command in (init, person, key, role, audit):
        cli.add_command(command)
