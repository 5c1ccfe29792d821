"""Commands that explain: ``explain`` (who can log in where, and why not) and ``key attest``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json
from keyward.cli.registry_cmds import key, key_claim, key_policy, log_events
from keyward.errors import KeywardError, UsageError

# Imported where used: `key check` loads this module (it adds `key attest`) and must not
# pay for the registry or the desired-state chain (tests/test_startup.py).
if TYPE_CHECKING:
    from keyward.explain import HostSync
    from keyward.keys import PublicKey
    from keyward.registry.models import HostState

pass_app = click.make_pass_decorator(AppContext)


def host_syncs(rows: list[HostState]) -> dict[str, HostSync]:
    """``host_state`` rows as the frozen values ``keyward.explain`` reads."""
    from keyward.explain import HostSync, RecordedFile

    out: dict[str, HostSync] = {}
    for row in rows:
        try:
            files: dict[str, Any] = json.loads(row.files or "{}")
        except ValueError:
            files = {}
        recorded = {
            name: RecordedFile(
                entry.get("sha256"),
                frozenset(str(k[0]) for k in entry.get("keys", ()) if k and k[0]),
            )
            for name, entry in files.items()
            if isinstance(entry, dict)
        }
        out[row.host] = HostSync(
            row.host, row.last_success, row.last_attempt, row.last_error, recorded
        )
    return out


@click.command("explain")
@click.argument("username")
@click.argument("host", required=False)
@click.argument("account", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def explain_cmd(
    app: AppContext, username: str, host: str | None, account: str | None, as_json: bool
) -> None:
    """Can USERNAME log in (on HOST, as ACCOUNT), and if not, exactly why.

    Decided by the same computation reconcile deploys. Without HOST: every host and
    account an access rule covers. Exit 0 for any answer; 2 for an unknown name.
    """
    from sqlmodel import select

    from keyward.engine.inputs import load_agent_key
    from keyward.explain import describe, explain, place_json
    from keyward.inventory import load_inventory
    from keyward.registry.models import HostState
    from keyward.registry.snapshot import load_snapshot

    inv = load_inventory(app.inventory_dir())
    agent_key: PublicKey | None
    try:
        agent_key = load_agent_key(inv)
    except KeywardError:
        agent_key = None  # only makes the login account's sync check less exact
    registry = app.registry()
    now = registry.clock()
    with registry.read() as session:
        snapshot = load_snapshot(session)
        states = host_syncs(list(session.exec(select(HostState))))
    places = explain(snapshot, inv, username, states, now, host, account, agent_key)
    if as_json:
        emit_json(
            {
                "person": username,
                "status": snapshot.people[username].status,
                "places": [place_json(p) for p in places],
            }
        )
        return
    for place in places:
        click.echo(describe(place))
    able = sum(1 for p in places if p.can_login)
    if not places:
        click.echo(f"{username}: no access rule covers any account here")
    elif host is None or account is None:
        click.echo(f"{username} can log in at {able} of {len(places)} places")


@key.command("attest")
@click.argument("fingerprint")
@click.option(
    "--proof",
    "proof_file",
    default=None,
    metavar="SIGFILE",
    help="SSHSIG signature of 'keyward key statement' output, by the key's owner.",
)
@click.option(
    "--attest",
    type=click.Choice(["admin", "sk"]),
    default=None,
    help="admin: you vouch for the key; sk: it is a FIDO security key.",
)
@pass_app
def key_attest(
    app: AppContext, fingerprint: str, proof_file: str | None, attest: str | None
) -> None:
    """Raise the attestation of an already registered key (never lower it)."""
    from keyward.keys import decode_key
    from keyward.registry import ops
    from keyward.registry.models import Person

    if not proof_file and not attest:
        raise UsageError("give --proof SIGFILE or --attest admin|sk")
    policy = key_policy(app)
    registry = app.registry()
    now = registry.clock()
    with registry.read() as session:
        row = ops.find_key(session, fingerprint)
        owner = session.get(Person, row.person_id)
        assert owner is not None
        username = owner.username
        public = decode_key(row.key_type, row.blob, row.comment)
        expires_at = row.expires_at
    claim = key_claim(app, username, public, policy, now, expires_at, proof_file, attest)
    with registry.write(app.actor) as tx:
        old = ops.find_key(tx.session, fingerprint).attestation
        ops.attest_key(tx, fingerprint, claim, public)
    log_events(tx)
    click.echo(f"key {fingerprint} of {username}: attestation {old} -> {claim.attestation}")


def register(cli: click.Group) -> None:
    cli.add_command(explain_cmd)
    # ``key attest`` attaches itself to the ``key`` group on import (like ``key rotate``).
    _ = key_attest
