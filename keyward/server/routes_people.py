"""The API's people, keys and roles: ``keyward person``, ``key`` and ``role`` over HTTP.

Who may do what (docs/server.md, ``authz.MATRIX``):

- administrators add, correct and rehire people and clear their alerts, add, rotate,
  attest and revoke anyone's keys (never attest their own), add roles, and grant and
  revoke roles, but never grant a role to themselves (nobody does);
- auditors read people and keys, never write; everyone lists the roles and their own keys;
- every person reads themselves, revokes their own keys, and adds or rotates their own
  key **with a proof of possession** (``key statement`` signed by the new key): nobody
  vouches (``attest``) for their own key, administrators included.

Each write runs in one registry transaction whose actor is the proven caller, through
the same registry operations as the CLI, and answers the JSON the CLI prints.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

from keyward.errors import UsageError
from keyward.keys import DEFAULT_POLICY, KeyPolicy, decode_key
from keyward.registry import key_intake, lifecycle, login_views, ops, views
from keyward.registry.models import Person
from keyward.server.app import Call, Handler, Result, ServerState, _field, _log_changes
from keyward.server.authz import Caller, Forbidden
from keyward.timeparse import duration, end_of_day


def _admin(caller: Caller, what: str) -> None:
    if not caller.admin:
        raise Forbidden(f"only administrators may {what}")


def _optional(body: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise UsageError(f"field {name!r} must be a str")
    return value


def person_show(call: Call) -> Result:
    username = call.params["username"]
    caller = call.caller
    if not (caller.admin or caller.auditor or caller.username == username):
        raise Forbidden("only administrators and auditors may see other people")
    with call.state.registry.read() as session:
        return 200, views.person_detail(session, username, call.now)


def person_add(call: Call) -> Result:
    _admin(call.caller, "add people")
    body = call.json()
    with call.state.registry.write(call.caller.username) as tx:
        result = views.person_json(
            ops.add_person(
                tx, _field(body, "username", str), _field(body, "full_name", str), body_email(body)
            )
        )
    _log_changes(tx)
    return 201, result


def body_email(body: dict[str, Any]) -> str | None:
    value: str | None = _optional(body, "email")
    return value


def person_edit(call: Call) -> Result:
    _admin(call.caller, "correct people's details")
    body = call.json()
    with call.state.registry.write(call.caller.username) as tx:
        edited = ops.edit_person(
            tx, call.params["username"], _optional(body, "full_name"), body_email(body)
        )
        result = views.person_json(edited)
        result["changed"] = list(json.loads(tx.events[-1].details))
    _log_changes(tx)
    return 200, result


def person_rehire(call: Call) -> Result:
    _admin(call.caller, "rehire people")
    body = call.json()
    username = call.params["username"]
    with call.state.registry.write(call.caller.username) as tx:
        returned = lifecycle.rehire(
            tx,
            username,
            _field(body, "reason", str),
            _optional(body, "full_name"),
            body_email(body),
        )
        result = views.person_json(returned)
        result["periods"] = lifecycle.employment_periods(tx.session, returned)
    _log_changes(tx)
    return 200, result


def person_clear_alert(call: Call) -> Result:
    _admin(call.caller, "clear alerts")
    reason = _field(call.json(), "reason", str)
    with call.state.registry.write(call.caller.username) as tx:
        result = login_views.clear_person_alerts(tx, call.params["username"], reason)
    _log_changes(tx)
    return 200, result


def person_purge(call: Call) -> Result:
    """Administrators purge an offboarded person after the inventory's purge_after_days."""
    _admin(call.caller, "purge people")
    keep = purge_after_days(call.state)
    with call.state.registry.write(call.caller.username) as tx:
        seqs = lifecycle.purge_person(tx, call.params["username"], keep)
    _log_changes(tx)
    return 200, {"person": call.params["username"], "redacted": seqs}


def purge_after_days(state: ServerState) -> int:
    """The inventory's ``[policy] purge_after_days``, as ``person purge`` reads it locally."""
    from keyward.inventory.policy import PolicySettings, load_policy

    if state.inventory_dir is None:
        return PolicySettings.purge_after_days  # the dataclass default (365)
    return load_policy(state.inventory_dir).purge_after_days


def explain(call: Call) -> Result:
    """Administrators and auditors explain anyone; every other person only themselves."""
    username = call.params["username"]
    caller = call.caller
    if not (caller.admin or caller.auditor) and username != caller.username:
        raise Forbidden("only administrators and auditors may explain other people")
    inventory = call.state.inventory
    if inventory is None:
        raise UsageError("this keyward server has no inventory (--inventory); explain needs one")
    from keyward.registry.explain_view import explain_report

    host, account = call.query.get("host") or None, call.query.get("account") or None
    with call.state.registry.read() as session:
        document, lines = explain_report(session, inventory, username, call.now, host, account)
    return 200, {"document": document, "lines": lines}


# -- keys -------------------------------------------------------------------------


def key_policy(state: ServerState) -> KeyPolicy:
    """The inventory's ``[policy]``, as ``key add`` on the registry machine reads it."""
    if state.inventory_dir is None:
        return DEFAULT_POLICY
    from keyward.inventory.policy import load_policy

    return load_policy(state.inventory_dir).key_policy()


def _proof(body: dict[str, Any]) -> bytes | None:
    """The proof file's bytes, sent base64 (an armored SSHSIG, or whatever the file held)."""
    text = _optional(body, "proof_base64")
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise UsageError("field 'proof_base64' is not base64") from None


def _may_add_key(caller: Caller, username: str, proof: bytes | None, attest: str | None) -> None:
    """Administrators for anyone; a person for themselves with a proof; nobody vouches for
    their own key."""
    if username == caller.username:
        if attest:
            raise Forbidden(
                "nobody vouches for their own key: prove possession with --proof "
                "(see 'keyward key statement')"
            )
        if not proof:
            raise Forbidden(
                "adding your own key needs a proof of possession: --proof SIGFILE "
                "(see 'keyward key statement')"
            )
        return
    _admin(caller, "add or rotate other people's keys")


def key_add(call: Call) -> Result:
    body = call.json()
    username = _field(body, "username", str)
    proof, attest = _proof(body), _optional(body, "attest")
    _may_add_key(call.caller, username, proof, attest)
    policy = key_policy(call.state)
    public = key_intake.parse_new_key(_field(body, "public_key", str), policy)
    expires = _optional(body, "expires")
    expires_at = key_intake.expiry(
        call.now, policy, end_of_day(expires, "--expires") if expires else None
    )
    claim = key_intake.claim(
        username, public, policy, call.now, expires_at, proof, attest, call.caller.username
    )
    with call.state.registry.write(call.caller.username) as tx:
        row = ops.add_key(tx, username, public, claim)
        result = views.key_json(row, ops.find_person(tx.session, username), tx.now)
    _log_changes(tx)
    return 201, result


def key_list(call: Call) -> Result:
    """Administrators and auditors list anyone's keys; everyone else their own (asking
    for nobody in particular lists their own)."""
    caller = call.caller
    username = call.query.get("username") or None
    if not (caller.admin or caller.auditor):
        if username not in (None, caller.username):
            raise Forbidden("only administrators and auditors may list other people's keys")
        username = caller.username
    expiring = call.query.get("expiring")
    horizon = call.now + duration(expiring, "--expiring") if expiring else None
    with call.state.registry.read() as session:
        rows = views.key_rows(session, username, call.now, bool(call.query.get("all")), horizon)
        if horizon is not None:
            inventory = call.state.inventory
            deployed = views.deployed_hosts(session, inventory, call.now) if inventory else {}
            for r in rows:
                r["hosts"] = deployed.get(r["fingerprint"], [])
    return 200, rows


def key_attest(call: Call) -> Result:
    """Administrators raise the attestation of someone else's key (with the owner's proof
    or their own word); nobody attests their own key."""
    _admin(call.caller, "attest keys")
    body = call.json()
    fingerprint = _field(body, "fingerprint", str)
    proof, attest = _proof(body), _optional(body, "attest")
    if not proof and not attest:
        raise UsageError("give --proof SIGFILE or --attest admin|sk")
    policy = key_policy(call.state)
    with call.state.registry.read() as session:
        row = ops.find_key(session, fingerprint)
        owner = session.get(Person, row.person_id)
        assert owner is not None
        username = owner.username
        public = decode_key(row.key_type, row.blob, row.comment)
        expires_at = row.expires_at
    if username == call.caller.username:
        raise Forbidden("nobody attests their own key")
    claim = key_intake.claim(
        username, public, policy, call.now, expires_at, proof, attest, call.caller.username
    )
    with call.state.registry.write(call.caller.username) as tx:
        old = ops.find_key(tx.session, fingerprint).attestation
        ops.attest_key(tx, fingerprint, claim, public)
    _log_changes(tx)
    return 200, {
        "fingerprint": fingerprint,
        "person": username,
        "old": old,
        "new": claim.attestation,
    }


def key_rotate(call: Call) -> Result:
    body = call.json()
    username = _field(body, "username", str)
    proof, attest = _proof(body), _optional(body, "attest")
    _may_add_key(call.caller, username, proof, attest)
    seconds = _field(body, "grace_seconds", int, 86400)
    if not 0 <= seconds <= 30 * 86400:
        raise UsageError("--grace must be between 0 and 30 days")
    policy = key_policy(call.state)
    public = key_intake.parse_new_key(_field(body, "public_key", str), policy)
    expires_at = key_intake.expiry(call.now, policy, None)
    claim = key_intake.claim(
        username, public, policy, call.now, expires_at, proof, attest, call.caller.username
    )
    with call.state.registry.write(call.caller.username) as tx:
        old, new = lifecycle.rotate_key(
            tx, username, public, claim, timedelta(seconds=seconds), _optional(body, "old")
        )
        owner = ops.find_person(tx.session, username)
        result = {
            "old": views.key_json(old, owner, tx.now),
            "new": views.key_json(new, owner, tx.now),
        }
    _log_changes(tx)
    return 200, result


def key_revoke(call: Call) -> Result:
    body = call.json()
    fingerprint = _field(body, "fingerprint", str)
    reason = _field(body, "reason", str)
    with call.state.registry.write(call.caller.username) as tx:
        key = ops.resolve_key(tx.session, fingerprint)
        owner = tx.session.get(Person, key.person_id)
        assert owner is not None
        if owner.username != call.caller.username and not call.caller.admin:
            raise Forbidden("only administrators may revoke other people's keys")
        revoked = ops.revoke_key(tx, key.fingerprint, reason)
        result = views.key_json(revoked, owner, tx.now)
    _log_changes(tx)
    return 200, result


# -- roles ------------------------------------------------------------------------


def role_list(call: Call) -> Result:
    """Every proven person may see the roles and who holds them (as ``role list``)."""
    with call.state.registry.read() as session:
        return 200, views.role_rows(session, call.now)


def role_add(call: Call) -> Result:
    _admin(call.caller, "add roles")
    body = call.json()
    with call.state.registry.write(call.caller.username) as tx:
        result = views.role_json(
            ops.add_role(tx, _field(body, "name", str), _field(body, "description", str, ""))
        )
    _log_changes(tx)
    return 201, result


def role_grant(call: Call) -> Result:
    _admin(call.caller, "grant roles")
    body = call.json()
    role, username = call.params["name"], _field(body, "username", str)
    if username == call.caller.username:
        raise Forbidden("a person cannot grant a role to themselves")
    until = _optional(body, "until")
    until_at = end_of_day(until, "--until") if until else None
    with call.state.registry.write(call.caller.username) as tx:
        granted = ops.grant_role(
            tx,
            role,
            username,
            _field(body, "reason", str),
            until_at,
            _optional(body, "customer"),
        )
        result = {
            "person": username,
            **views.membership_json(granted, ops.find_role(tx.session, role), tx.now),
        }
    _log_changes(tx)
    return 200, result


def role_revoke(call: Call) -> Result:
    _admin(call.caller, "revoke roles")
    body = call.json()
    role, username = call.params["name"], _field(body, "username", str)
    with call.state.registry.write(call.caller.username) as tx:
        ended = ops.revoke_role(tx, role, username, _field(body, "reason", str))
        result = {
            "person": username,
            **views.membership_json(ended, ops.find_role(tx.session, role), tx.now),
        }
    _log_changes(tx)
    return 200, result


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/api/v1/people", person_add),
    ("GET", "/api/v1/people/{username}", person_show),
    ("PATCH", "/api/v1/people/{username}", person_edit),
    ("POST", "/api/v1/people/{username}/rehire", person_rehire),
    ("POST", "/api/v1/people/{username}/clear-alert", person_clear_alert),
    ("POST", "/api/v1/people/{username}/purge", person_purge),
    ("GET", "/api/v1/explain/{username}", explain),
    ("GET", "/api/v1/keys", key_list),
    ("POST", "/api/v1/keys", key_add),
    ("POST", "/api/v1/keys/rotate", key_rotate),
    ("POST", "/api/v1/keys/attest", key_attest),
    ("POST", "/api/v1/keys/revoke", key_revoke),
    ("GET", "/api/v1/roles", role_list),
    ("POST", "/api/v1/roles", role_add),
    ("POST", "/api/v1/roles/{name}/grant", role_grant),
    ("POST", "/api/v1/roles/{name}/revoke", role_revoke),
)
