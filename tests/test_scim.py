"""SCIM 2.0 on a real ``keyward server`` (uvicorn on loopback), driven by real SCIM clients.

The ``scim2-tester`` compliance checker runs every check it has against the server;
a ``scim2-client`` plays the identity provider that deactivates a person, whose real
``ssh`` logins to real sshd hosts then fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_models import Group, PatchOp, PatchOperation, SCIMException
from scim2_tester import Status, check_server

from keyward.testing.inventory import InventorySpec, write_inventory
from keyward.testing.keypairs import make_ed25519
from tests.agent_env import AgentEnv
from tests.cli_runner import Keyward
from tests.server_env import _wait_listening, free_port, start_server, stop

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
TOKEN = "kw-scim-test-token-0123456789abcdef0123456789"


def add_scim(inventory: Path, roles: dict[str, str] | None = None, **fields: object) -> Path:
    """``[scim]`` in ``keyward.toml``, with the token in a 0600 file beside it."""
    token = inventory.parent / "scim-token"
    token.write_text(TOKEN + "\n")
    os.chmod(token, 0o600)
    lines = ["", "[scim]", f'token_file = "{token}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    if roles:
        lines += ["[scim.roles]", *(f"{k} = {json.dumps(v)}" for k, v in roles.items())]
    with (inventory / "keyward.toml").open("a") as out:
        out.write("\n".join(lines) + "\n")
    return token


@dataclass
class Served:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def scim(self) -> str:
        return self.url + "/scim/v2"

    def client(self, token: str = TOKEN) -> SyncSCIMClient:
        http = httpx2.Client(
            base_url=self.scim, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        return SyncSCIMClient(http)

    def send(
        self, method: str, path: str, body: bytes = b"", token: str | None = TOKEN
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = {"content-type": "application/scim+json"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.scim + path, data=body or None, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else {}, dict(response.headers)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            assert b"Traceback" not in raw, raw
            return exc.code, json.loads(raw), dict(exc.headers)


@pytest.fixture
def served_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def serve(db_url: str, inventory: Path, host: str) -> Served:
        port = free_port(host)
        process, log = start_server(tmp_path, db_url, inventory, host, port)
        started.append(process)
        _wait_listening(host, port, process, log)
        return Served(f"http://{host}:{port}", log, process)

    yield serve
    for process in started:
        stop(process)


@pytest.fixture
def plain(tmp_path: Path, sqlite_url: str, served_factory: Any) -> Served:
    """A server whose inventory has no hosts: SCIM changes reach no fleet."""
    inventory = tmp_path / "inventory"
    key = make_ed25519(tmp_path / "keys" / "agent", comment="keyward-agent")
    spec = InventorySpec(environment="test", login="root", accounts=("app",), access=())
    write_inventory(inventory, [], spec, key)
    add_scim(inventory)
    Keyward(sqlite_url, str(inventory)).ok("init")
    served: Served = served_factory(sqlite_url, inventory, "127.0.2.31")
    return served


def test_scim2_tester_compliance_checks_all_pass(plain: Served) -> None:
    results = check_server(plain.client(), raise_exceptions=False)
    assert len(results) > 50
    failed = [
        f"{r.resource_type} {r.title}: {r.reason}"
        for r in results
        if r.status not in (Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE)
    ]
    assert not failed, "\n".join(failed)
    # Every group of checks ran: discovery, CRUD, PATCH, attribute filtering, errors.
    tags = set().union(*(r.tags for r in results))
    for tag in ("discovery", "crud:create", "crud:read", "crud:update", "crud:delete", "misc"):
        assert tag in tags
    assert {r.resource_type for r in results} >= {"User", "Group"}


def test_bad_tokens_401_malformed_json_400_never_a_traceback(plain: Served) -> None:
    for token in (None, "", "wrong-token", TOKEN + "x", TOKEN[:-1]):
        status, body, headers = plain.send("GET", "/Users", token=token)
        assert status == 401, token
        assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
        assert headers["www-authenticate"].startswith("Bearer")
    user = b'{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "x"'
    for body_bytes in (user, b"\xff\xfe", b"[1, 2]", b'"text"', b"{" * 5000 + b"}" * 5000):
        status, body, _ = plain.send("POST", "/Users", body_bytes)
        assert status == 400, body_bytes[:20]
        assert body["scimType"] == "invalidSyntax" and body["status"] == "400"
    status, body, _ = plain.send("POST", "/Users", b'{"schemas": ["urn:x"], "userName": 7}')
    assert status == 400 and body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    status, body, _ = plain.send("POST", "/Users", b"{}" + b" " * (300 * 1024))
    assert status == 413 and body["status"] == "413"
    status, body, _ = plain.send("GET", "/Users?filter=" + "userName%20eq", b"")
    assert status == 400 and body["scimType"] == "invalidFilter"
    # The people's API is not opened by the SCIM token.
    request = urllib.request.Request(
        plain.url + "/api/v1/people", headers={"authorization": f"Bearer {TOKEN}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
    log = plain.log.read_text()
    assert "Traceback" not in log and "scim_internal_error" not in log
    assert TOKEN not in log
    assert '"event": "scim_refused"' in log


# -- end to end: the identity provider deactivates a person -----------------------------


def wait_confirmed(kw: Keyward, username: str, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        status: dict[str, Any] = kw("offboard", "status", username, "--json").json()
        if status["status"] == "confirmed" or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_deactivated_over_scim_cannot_log_in(
    env: AgentEnv, sqlite_url: str, served_factory: Any
) -> None:
    add_scim(env.inventory)
    served: Served = served_factory(sqlite_url, env.inventory, "127.0.2.32")
    client = served.client()
    client.discover()
    user_model: Any = client.get_resource_model("User")
    assert user_model is not None
    created = client.create(
        user_model.model_validate(
            {
                "userName": "Alice@Example.com",
                "name": {"givenName": "Alice", "familyName": "Doe"},
                "emails": [{"value": "alice@example.com", "primary": True}],
                "active": True,
            }
        )
    )
    assert created.id and created.active is True
    person = env.kw.ok("person", "show", "alice", "--json").json()
    assert person["full_name"] == "Alice Doe" and person["email"] == "alice@example.com"
    bob = client.create(user_model(user_name="bob@example.com", display_name="Bob Roe"))
    for username in ("alice", "bob"):
        env.kw.ok("key", "add", username, str(env.pub(username)), "--attest", "admin")
    env.kw("role", "add", "devops")
    for username in ("alice", "bob"):
        env.kw.ok("role", "grant", "devops", username, "--reason", "test", actor="security")
    env.kw.ok("reconcile")
    assert all(env.can_login(host, env.deploy, "alice") for host in env.hosts)

    patch = PatchOp[user_model](
        operations=[PatchOperation(op="replace", path="active", value=False)]
    )
    answered = client.modify(user_model, created.id, patch)
    assert answered is not None and answered.active is False
    status = wait_confirmed(env.kw, "alice")
    assert status["status"] == "confirmed", status
    assert status["reason"] == f"directory: scim active=false (id {created.id})"
    for host in env.hosts:
        assert not env.can_login(host, env.deploy, "alice")
        assert env.can_login(host, env.deploy, "bob")
    report = env.kw.ok("report", "offboarding", "alice").out
    assert f"directory: scim active=false (id {created.id})" in report
    assert "Nothing: every managed file is confirmed." in report
    events = env.kw.ok("audit", "log", "--json").json()
    offboarded = [e for e in events if e["action"] == "scim.person-offboarded"]
    assert offboarded[0]["details"]["scim_id"] == created.id
    assert offboarded[0]["actor"] == "keyward-scim"
    # The same deactivation again changes nothing; a reactivation does not rehire.
    client.modify(user_model, created.id, patch)
    stale = created.model_copy(update={"active": True})
    with pytest.raises(SCIMException, match="If-Match"):  # the ETag of the first version
        client.replace(stale)
    current = client.query(user_model, created.id)
    client.replace(current.model_copy(update={"active": True}))
    assert env.kw.ok("person", "show", "alice", "--json").json()["status"] == "offboarded"

    # A second leaver within the hour is one too many for a team of two (the guard:
    # 10%, at least one a window): refused, nothing changed, an alert raised.
    code, body, _ = served.send("DELETE", f"/Users/{bob.id}")
    assert code == 503 and "keyward alerts clear" in body["detail"], body
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert env.kw.ok("person", "show", "bob", "--json").json()["status"] == "active"
    assert served.send("GET", f"/Users/{bob.id}")[0] == 200
    assert env.can_login(env.hosts[0], env.deploy, "bob")
    guard = [a for a in env.kw.ok("alerts", "--json").json() if a["kind"] == "scim_guard"]
    assert len(guard) == 1
    env.kw.ok("alerts", "clear", str(guard[0]["id"]), "--reason", "checked the IdP")
    # Cleared by an administrator: the deletion goes through (the IdP retries it).
    assert served.send("DELETE", f"/Users/{bob.id}")[0] == 204
    status = wait_confirmed(env.kw, "bob")
    assert status["status"] == "confirmed"
    assert status["reason"] == f"directory: scim user deleted (id {bob.id})"
    assert not env.can_login(env.hosts[0], env.deploy, "bob")
    assert served.send("GET", f"/Users/{bob.id}")[0] == 404


def test_groups_are_stored_and_a_user_is_unique(plain: Served) -> None:
    client = plain.client()
    client.discover()
    user_model: Any = client.get_resource_model("User")
    assert user_model is not None and "EnterpriseUser" in user_model.__name__
    dan = client.create(user_model(user_name="dan@example.com"))
    code, body, _ = plain.send(
        "POST",
        "/Users",
        json.dumps({"schemas": [USER_SCHEMA], "userName": "DAN@example.com"}).encode(),
    )
    assert code == 409 and body["scimType"] == "uniqueness"
    found_user = client.query(
        user_model, query_parameters={"filter": 'userName eq "DAN@example.com"'}
    )
    assert found_user.total_results == 1 and found_user.resources[0].id == dan.id
    group = client.create(Group(display_name="SSH-DevOps", members=[Group.Members(value=dan.id)]))
    found = client.query(Group, query_parameters={"filter": 'displayName eq "SSH-DevOps"'})
    assert found.total_results == 1 and found.resources[0].id == group.id


# -- settings and the token ------------------------------------------------------------


def test_token_file_is_private_long_or_a_hash(tmp_path: Path) -> None:
    import hashlib

    from keyward.errors import UsageError
    from keyward.server.scim_protocol import ScimToken

    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(UsageError, match="readable by others"):
        ScimToken.load(path)
    os.chmod(path, 0o600)
    token = ScimToken.load(path)
    assert token.matches(TOKEN) and not token.matches(TOKEN + " ") and not token.matches("")
    path.write_text("short\n")
    with pytest.raises(UsageError, match="at least 32"):
        ScimToken.load(path)
    path.write_text("sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest() + "\n")
    hashed = ScimToken.load(path)
    assert hashed.matches(TOKEN) and not hashed.matches("sha256:" + TOKEN)
    path.write_text("sha256:abc\n")
    with pytest.raises(UsageError, match="64 hex"):
        ScimToken.load(path)
    with pytest.raises(UsageError, match="cannot read"):
        ScimToken.load(tmp_path / "missing")


def test_scim_and_sync_interval_settings_are_checked(tmp_path: Path) -> None:
    from keyward.inventory import check_inventory

    inventory = tmp_path / "inventory"
    key = make_ed25519(tmp_path / "keys" / "agent", comment="keyward-agent")
    spec = InventorySpec(environment="test", login="root", accounts=("app",), access=())
    write_inventory(inventory, [], spec, key)
    base = (inventory / "keyward.toml").read_text()
    (inventory / "keyward.toml").write_text(
        base
        + '\n[scim]\ntoken_file = "t"\nmass_offboard_share = 2\nmass_offboard_window = "soon"\n'
        + 'colour = "red"\n\n[directory]\nurl = "ldap://127.0.0.1"\nbase_dn = "dc=x"\n'
        + 'sync_interval = "1s"\n'
    )
    _, problems = check_inventory(inventory)
    text = "\n".join(str(p) for p in problems)
    for expected in (
        "scim.mass_offboard_share",
        "scim.mass_offboard_window",
        "colour",
        "directory.sync_interval: must be between 5s and 24h",
    ):
        assert expected in text, text


def test_entra_and_okta_shaped_deactivations(plain: Served, sqlite_url: str) -> None:
    """Entra ID sends ``"Replace"`` with the string ``"False"``; Okta a replace without path."""
    kw = Keyward(sqlite_url, str(plain.log.parent / "inventory"))
    patch_schema = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
    code, erin, _ = plain.send(
        "POST",
        "/Users",
        json.dumps(
            {
                "schemas": [USER_SCHEMA],
                "userName": "erin@corp.example.com",
                "active": True,
                "displayName": "Erin Example",
                "emails": [{"value": "erin@corp.example.com", "type": "work", "primary": True}],
            }
        ).encode(),
    )
    assert code == 201
    assert kw.ok("person", "show", "erin", "--json").json()["full_name"] == "Erin Example"
    entra = {
        "schemas": [patch_schema],
        "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
    }
    code, body, _ = plain.send("PATCH", f"/Users/{erin['id']}", json.dumps(entra).encode())
    assert code == 200 and body["active"] is False
    reason = kw("offboard", "status", "erin", "--json").json()["reason"]
    assert reason == f"directory: scim active=false (id {erin['id']})"
    # Okta: no path, the attributes in the value. (A userName that is no login name
    # becomes no person: only the SCIM resource changes.)
    code, okta, _ = plain.send(
        "POST", "/Users", json.dumps({"schemas": [USER_SCHEMA], "userName": "9.okta"}).encode()
    )
    assert code == 201
    okta_patch = {
        "schemas": [patch_schema],
        "Operations": [{"op": "replace", "value": {"active": False}}],
    }
    code, body, headers = plain.send(
        "PATCH", f"/Users/{okta['id']}", json.dumps(okta_patch).encode()
    )
    assert code == 200 and body["active"] is False and headers["etag"] == 'W/"2"'
    assert '"note": "userName' in plain.log.read_text()


def test_a_mapped_group_grants_and_revokes_its_role(
    tmp_path: Path, sqlite_url: str, served_factory: Any
) -> None:
    inventory = tmp_path / "inventory"
    key = make_ed25519(tmp_path / "keys" / "agent", comment="keyward-agent")
    spec = InventorySpec(environment="test", login="root", accounts=("app",), access=())
    write_inventory(inventory, [], spec, key)
    add_scim(inventory, roles={"devops": "SSH-DevOps"})
    kw = Keyward(sqlite_url, str(inventory))
    kw.ok("init")
    kw.ok("role", "add", "devops")
    kw.ok("person", "add", "ivan", "--name", "Ivan")  # managed by hand, not over SCIM
    kw.ok("role", "grant", "devops", "ivan", "--reason", "by hand", actor="security")
    served: Served = served_factory(sqlite_url, inventory, "127.0.2.33")
    client = served.client()
    client.discover()
    user_model: Any = client.get_resource_model("User")
    gina = client.create(user_model(user_name="gina@example.com"))
    hank = client.create(user_model(user_name="hank@example.com"))

    def holders() -> set[str]:
        found = set()
        for user in ("gina", "hank", "ivan"):
            roles = kw.ok("person", "show", user, "--json").json()["roles"]
            if any(r["role"] == "devops" and r["status"] == "active" for r in roles):
                found.add(user)
        return found

    group = client.create(Group(display_name="SSH-DevOps", members=[Group.Members(value=gina.id)]))
    assert holders() == {"gina", "ivan"}
    add = PatchOp[Group](
        operations=[PatchOperation(op="add", path="members", value=[{"value": hank.id}])]
    )
    client.modify(Group, group.id, add)
    assert holders() == {"gina", "hank", "ivan"}
    remove = PatchOp[Group](
        operations=[PatchOperation(op="remove", path=f'members[value eq "{gina.id}"]')]
    )
    client.modify(Group, group.id, remove)
    assert holders() == {"hank", "ivan"}  # ivan, managed by hand, keeps his grant
    client.delete(Group, group.id)
    assert holders() == {"ivan"}
    events = kw.ok("audit", "log", "--json").json()
    granted = [e for e in events if e["action"] == "scim.role-granted"]
    assert [e["subject"] for e in granted] == ["gina", "hank"]
    assert granted[0]["details"] == {"role": "devops", "group": "ssh-devops"}


def test_a_loose_token_file_stops_the_server_with_one_line(tmp_path: Path, sqlite_url: str) -> None:
    inventory = tmp_path / "inventory"
    key = make_ed25519(tmp_path / "keys" / "agent", comment="keyward-agent")
    spec = InventorySpec(environment="test", login="root", accounts=("app",), access=())
    write_inventory(inventory, [], spec, key)
    token = add_scim(inventory)
    os.chmod(token, 0o644)
    Keyward(sqlite_url, str(inventory)).ok("init")
    process, log = start_server(tmp_path, sqlite_url, inventory, "127.0.2.34", 1)
    try:
        assert process.wait(timeout=60) == 2
    finally:
        stop(process)
    text = log.read_text()
    assert "readable by others; chmod 600 it" in text and "Traceback" not in text
    assert TOKEN not in text


def test_a_broken_inventory_refuses_the_offboarding_until_fixed(
    plain: Served, sqlite_url: str
) -> None:
    """As a directory sync does: nothing changes, 503, the identity provider retries."""
    inventory = plain.log.parent / "inventory"
    kw = Keyward(sqlite_url, str(inventory))
    body = json.dumps({"schemas": [USER_SCHEMA], "userName": "jo", "active": True}).encode()
    code, jo, _ = plain.send("POST", "/Users", body)
    assert code == 201
    broken = inventory / "broken.toml"
    broken.write_text("[environment\n")
    off = json.dumps(
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "active", "value": False}],
        }
    ).encode()
    code, error, _ = plain.send("PATCH", f"/Users/{jo['id']}", off)
    assert code == 503 and "cannot read the inventory" in error["detail"], error
    assert kw.ok("person", "show", "jo", "--json").json()["status"] == "active"
    assert plain.send("GET", f"/Users/{jo['id']}")[1]["active"] is True
    broken.unlink()
    assert plain.send("PATCH", f"/Users/{jo['id']}", off)[0] == 200
    assert kw.ok("person", "show", "jo", "--json").json()["status"] == "offboarded"
