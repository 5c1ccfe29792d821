"""``keyward key``: personal public keys, from registration (with a proof of possession or an
attestation) through rotation and raised attestation to revocation; ``key check`` on the
owner's machine."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.common import key_json, key_policy, log_events, read_small_file
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, short_ts, table
from keyward.clock import parse_utc
from keyward.errors import UsageError
from keyward.timeparse import duration, end_of_day

# Imported where used: `key check` loads this module and must not pay for the registry
# (tests/test_startup.py).
if TYPE_CHECKING:
    from keyward.keys import KeyPolicy, PublicKey
    from keyward.registry import ops

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def key() -> None:
    """Personal public keys."""


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
    from keyward.registry import key_intake

    proof = read_small_file(proof_file, "proof file") if proof_file else None
    return key_intake.claim(username, public, policy, now, expires_at, proof, attest, app.actor)


def key_body(
    username: str, pubkey_file: str, proof_file: str | None, attest: str | None
) -> dict[str, Any]:
    """The JSON ``key add`` and ``key rotate`` send to keyward server: the files' contents
    (the server checks the key against its policy and verifies the proof itself)."""
    import base64

    if proof_file and attest:
        raise UsageError("give either --proof or --attest, not both")
    text = read_small_file(pubkey_file, "public key file").decode("utf-8", errors="replace")
    proof = read_small_file(proof_file, "proof file") if proof_file else None
    return {
        "username": username,
        "public_key": text,
        "proof_base64": base64.b64encode(proof).decode() if proof is not None else None,
        "attest": attest,
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
    """Register USERNAME's public key from PUBKEY_FILE ('-' for stdin).

    Through a keyward server (KEYWARD_URL), administrators add anyone's key; a person
    adds their own with --proof (nobody vouches for their own key).
    """
    api = app.api()
    if api is not None:
        body = {**key_body(username, pubkey_file, proof_file, attest), "expires": expires}
        result = api.call("POST", "/api/v1/keys", body)
    else:
        result = _add_locally(app, username, pubkey_file, expires, proof_file, attest)
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"added {result['type']} key {result['fingerprint']} for {username} "
        f"(attestation {result['attestation']}, "
        f"expires {short_ts(parse_utc(result['expires_at']))} UTC)"
    )


def _add_locally(
    app: AppContext,
    username: str,
    pubkey_file: str,
    expires: str | None,
    proof_file: str | None,
    attest: str | None,
) -> dict[str, Any]:
    from keyward.registry import key_intake, ops

    policy = key_policy(app)
    text = read_small_file(pubkey_file, "public key file").decode("utf-8", errors="replace")
    public = key_intake.parse_new_key(text, policy)
    registry = app.registry()
    now = registry.clock()
    requested = end_of_day(expires, "--expires") if expires is not None else None
    expires_at = key_intake.expiry(now, policy, requested)
    claim = key_claim(app, username, public, policy, now, expires_at, proof_file, attest)
    with registry.write(app.actor) as tx:
        row = ops.add_key(tx, username, public, claim)
        result = key_json(row, ops.find_person(tx.session, username), tx.now)
    log_events(tx)
    return result


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
    api = app.api()
    if api is not None:
        from urllib.parse import urlencode

        if expiring:
            duration(expiring, "--expiring")  # a bad DURATION is refused here, as locally
        query = {"username": username, "all": "1" if show_all else None, "expiring": expiring}
        wanted = urlencode({k: v for k, v in query.items() if v is not None})
        rows = api.call("GET", "/api/v1/keys" + (f"?{wanted}" if wanted else ""))
    else:
        from keyward.registry import views

        registry = app.registry()
        now = registry.clock()
        horizon = now + duration(expiring, "--expiring") if expiring else None
        with registry.read() as session:
            rows = views.key_rows(session, username, now, show_all, horizon)
        if horizon is not None:
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
        + ([("hosts", "HOSTS")] if expiring else []),
    )


def deployed_hosts(app: AppContext) -> dict[str, list[str]]:
    """Fingerprint -> the hosts its key is deployed to (empty without an inventory)."""
    root = app.inventory_dir()
    if not root.is_dir():
        return {}
    from keyward.inventory import load_inventory
    from keyward.registry import views

    inv = load_inventory(root)
    registry = app.registry()
    with registry.read() as session:
        return views.deployed_hosts(session, inv, registry.clock())


@key.command("revoke")
@click.argument("fingerprint")
@click.option("--reason", required=True, help="Why (recorded).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def key_revoke(app: AppContext, fingerprint: str, reason: str, as_json: bool) -> None:
    """Revoke a key by its SHA256 fingerprint.

    FINGERPRINT may be the short form written on host lines: the comment
    keyward:OWNER:XXXXXXXXXXXXXXXX, or its 16 characters; more characters are fine.
    Through a keyward server, a person may revoke their own keys, administrators anyone's.
    """
    api = app.api()
    if api is not None:
        body = {"fingerprint": fingerprint, "reason": reason}
        result = api.call("POST", "/api/v1/keys/revoke", body)
    else:
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
    click.echo(f"revoked key {result['fingerprint']} of {result['owner']}")


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
    grace_period = duration(grace, "--grace") if grace != "0" else timedelta(0)
    api = app.api()
    if api is not None:
        body = {
            **key_body(username, new_pubkey_file, proof_file, attest),
            "grace_seconds": int(grace_period.total_seconds()),
            "old": old_fingerprint,
        }
        result = api.call("POST", "/api/v1/keys/rotate", body)
    else:
        from keyward.registry import key_intake, lifecycle, ops

        policy = key_policy(app)
        text = read_small_file(new_pubkey_file, "public key file").decode("utf-8", errors="replace")
        public = key_intake.parse_new_key(text, policy)
        registry = app.registry()
        now = registry.clock()
        expires_at = key_intake.expiry(now, policy, None)
        claim = key_claim(app, username, public, policy, now, expires_at, proof_file, attest)
        with registry.write(app.actor) as tx:
            old, new = lifecycle.rotate_key(
                tx, username, public, claim, grace_period, old_fingerprint
            )
            owner = ops.find_person(tx.session, username)
            result = {"old": key_json(old, owner, tx.now), "new": key_json(new, owner, tx.now)}
        log_events(tx)
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"rotated {username}: new key {result['new']['fingerprint']} deployed at the next "
        f"reconcile; old key {result['old']['fingerprint']} valid until "
        f"{short_ts(parse_utc(result['old']['expires_at']))} UTC"
    )


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
    """Raise the attestation of an already registered key (never lower it).

    Through a keyward server (KEYWARD_URL), administrators attest others' keys, never
    their own.
    """
    if not proof_file and not attest:
        raise UsageError("give --proof SIGFILE or --attest admin|sk")
    api = app.api()
    if api is not None:
        import base64

        if proof_file and attest:
            raise UsageError("give either --proof or --attest, not both")
        proof = read_small_file(proof_file, "proof file") if proof_file else None
        body = {
            "fingerprint": fingerprint,
            "proof_base64": base64.b64encode(proof).decode() if proof is not None else None,
            "attest": attest,
        }
        result = api.call("POST", "/api/v1/keys/attest", body)
    else:
        result = _attest_locally(app, fingerprint, proof_file, attest)
    click.echo(
        f"key {result['fingerprint']} of {result['person']}: "
        f"attestation {result['old']} -> {result['new']}"
    )


def _attest_locally(
    app: AppContext, fingerprint: str, proof_file: str | None, attest: str | None
) -> dict[str, Any]:
    from keyward.keys import decode_key
    from keyward.registry import ops
    from keyward.registry.models import Person

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
    return {"fingerprint": fingerprint, "person": username, "old": old, "new": claim.attestation}


def register(cli: click.Group) -> None:
    cli.add_command(key)
