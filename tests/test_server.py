"""``keyward server``: the authorization matrix, the two-person rule and sessions, for real.

A real server process on 127.0.0.21 over a SQLite registry, real ``ssh-keygen`` keys and
a real ``ssh-agent`` (tests/server_env.py).  Every cell of ``keyward.server.authz.MATRIX``
is sent as a real HTTP request; docs/server.md must state the same matrix.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyward.server.authz import CALLERS, ENDPOINTS, MATRIX
from tests.keygen import make_key
from tests.server_env import ServerEnv, server_env

DOC = Path(__file__).resolve().parent.parent / "docs" / "server.md"

# The person each kind of caller is; the last five are refused whoever they are.
PERSON = {
    "member": "alice",
    "approver of another role": "carol",
    "approver": "bob",
    "auditor": "dave",
    "administrator": "erin",
    "offboarded person": "frank",
    "revoked key": "grace",
    "replayed request": "bob",
    "tampered body": "bob",
    "expired timestamp": "bob",
}
NEW_REQUEST = json.dumps(
    {"role": "devops", "environment": "prod", "duration_seconds": 3600, "reason": "matrix"}
).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    with server_env(tmp_path_factory.mktemp("server")) as env:
        yield env


_FRESH = itertools.count(1)


def fresh_person(env: ServerEnv, *, key: bool = False, role: str | None = None) -> str:
    """A new person for one request that changes them (made directly in the database)."""
    name = f"m{next(_FRESH)}"
    env.kw.ok("person", "add", name, "--name", name.title())
    if key:
        _, public = make_key(env.base / "keys", "ed25519", name=name)
        env.kw.ok("key", "add", name, str(public), "--attest", "admin")
    if role:
        env.kw.ok("role", "grant", role, name, "--reason", "matrix")
    return name


def new_public_key(env: ServerEnv) -> str:
    _, public = make_key(env.base / "keys", "ed25519", name=f"k{next(_FRESH)}")
    return public.read_text()


def _body(env: ServerEnv, endpoint: str) -> tuple[dict[str, str], dict[str, object] | None]:
    """Path parameters and JSON body of one request to ``endpoint``; each write acts on
    something made for it, so every cell is asked the same question."""
    if endpoint == "POST /api/v1/people":
        return {}, {"username": f"n{next(_FRESH)}", "full_name": "New Person"}
    if endpoint == "PATCH /api/v1/people/{username}":
        return {"username": "rita"}, {"full_name": f"Rita {next(_FRESH)}"}
    if endpoint == "POST /api/v1/keys/attest":
        _, public = make_key(env.base / "keys", "ed25519", name=f"a{next(_FRESH)}")
        added = env.kw.ok("key", "add", "rita", str(public), "--json")  # unattested
        return {}, {"fingerprint": added.json()["fingerprint"], "attest": "admin"}
    if endpoint == "POST /api/v1/people/{username}/rehire":
        name = fresh_person(env)
        env.mark_offboarded(name)
        return {"username": name}, {"reason": "matrix"}
    if endpoint == "POST /api/v1/people/{username}/clear-alert":
        name = fresh_person(env)
        env.alert_for(name)
        return {"username": name}, {"reason": "matrix"}
    if endpoint == "POST /api/v1/people/{username}/purge":
        name = fresh_person(env)
        env.mark_offboarded(name)  # the fixture's policy keeps details 0 days
        return {"username": name}, {}
    if endpoint == "GET /api/v1/explain/{username}":
        return {"username": "rita"}, None  # someone else (a person explains themselves)
    if endpoint == "POST /api/v1/alerts/{id}/clear":
        return {}, {"reason": "matrix"}
    if endpoint == "POST /api/v1/roles":
        return {}, {"name": f"role{next(_FRESH)}", "description": "matrix"}
    if endpoint == "POST /api/v1/keys":
        return {}, {"username": "rita", "public_key": new_public_key(env), "attest": "admin"}
    if endpoint == "POST /api/v1/keys/rotate":
        name = fresh_person(env, key=True)
        return {}, {"username": name, "public_key": new_public_key(env), "attest": "admin"}
    if endpoint == "POST /api/v1/keys/revoke":
        _, public = make_key(env.base / "keys", "ed25519", name=f"r{next(_FRESH)}")
        added = env.kw.ok("key", "add", "rita", str(public), "--attest", "admin", "--json")
        return {}, {"fingerprint": added.json()["fingerprint"], "reason": "matrix"}
    if endpoint == "POST /api/v1/roles/{name}/grant":
        return {"name": "dba"}, {"username": fresh_person(env), "reason": "matrix"}
    if endpoint == "POST /api/v1/roles/{name}/revoke":
        return {"name": "dba"}, {"username": fresh_person(env, role="dba"), "reason": "matrix"}
    if endpoint == "POST /api/v1/offboard":
        return {}, {"username": fresh_person(env, key=True), "reason": "matrix"}
    if endpoint.endswith("/{username}"):
        return {"username": "rita" if "/people/" in endpoint else "frank"}, None
    return {}, None


def _request(env: ServerEnv, endpoint: str) -> tuple[str, str, bytes]:
    method, path = endpoint.split(" ")
    if "/alerts/{id}" in path:
        path = path.replace("{id}", str(env.alert_for("rita")))
    elif "{id}" in path:
        path = path.replace("{id}", str(env.request_for("rita", "devops")))
    params, payload = _body(env, endpoint)
    for name, value in params.items():
        path = path.replace("{" + name + "}", value)
    if endpoint == "GET /api/v1/keys":
        path += "?username=rita"  # someone else's keys (a member lists their own)
    if endpoint == "GET /api/v1/logins":
        path += "?person=rita"  # someone else's logins (a member reads their own)
    body = NEW_REQUEST if endpoint == "POST /api/v1/access-requests" else b""
    if payload is not None:
        body = json.dumps(payload).encode()
    if method != "GET" and not body:
        body = b"{}"
    return method, path, body


def answer(env: ServerEnv, endpoint: str, caller: str) -> int:
    """The status the real server gives ``caller`` for one request to ``endpoint``."""
    method, path, body = _request(env, endpoint)
    if caller == "anonymous":
        return env.send(method, path, body)[0]
    person = PERSON[caller]
    if caller == "expired timestamp":
        old = datetime.now(UTC) - timedelta(seconds=301)
        return env.send(method, path, body, env.signed(person, method, path, body, when=old))[0]
    headers = env.signed(person, method, path, body)
    if caller == "tampered body":
        return env.send(method, path, body + b" ", headers)[0]
    status = env.send(method, path, body, headers)[0]
    if caller == "replayed request":
        return env.send(method, path, body, headers)[0]
    return status


def test_every_endpoint_answers_every_caller_as_documented(server: ServerEnv) -> None:
    got = {e: {c: answer(server, e, c) for c in CALLERS} for e in ENDPOINTS}
    assert got == MATRIX


def test_the_matrix_covers_every_route() -> None:
    from keyward.server.app import ROUTES

    assert {f"{m} {p}" for m, p, _ in ROUTES} == set(ENDPOINTS) == set(MATRIX)
    assert all(set(row) == set(CALLERS) for row in MATRIX.values())


def doc_matrix() -> dict[str, dict[str, int]]:
    """The table under "## Authorization matrix" in docs/server.md."""
    text = DOC.read_text()
    section = text.split("## Authorization matrix", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    table: dict[str, dict[str, int]] = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        endpoint = cells[0].strip("`")
        table[endpoint] = {header[i]: int(cells[i]) for i in range(1, len(cells))}
    # The doc's rows are endpoints, its columns callers: transpose nothing, compare all.
    return table


def test_the_doc_states_the_codes_matrix() -> None:
    assert doc_matrix() == MATRIX


# -- the two-person rule, with proven identities -----------------------------------


def test_an_approver_cannot_approve_their_own_request(server: ServerEnv) -> None:
    own = server.request_for("bob", "devops")  # bob approves devops requests
    before = server.head()
    for verb in ("approve", "deny"):
        path = f"/api/v1/access-requests/{own}/{verb}"
        status, body = server.send("POST", path, b"{}", server.signed("bob", "POST", path, b"{}"))
        assert status == 403
        assert body == {"error": "a request must be approved by someone other than the requester"}
    assert server.head() == before  # recorded nowhere
    rows = server.kw.ok("access", "list", "--json").json()
    assert next(r for r in rows if r["id"] == own)["status"] == "pending"


def test_the_actor_is_the_proven_identity_not_a_claimed_one(server: ServerEnv) -> None:
    own = server.request_for("rita", "devops")
    path = f"/api/v1/access-requests/{own}/approve"
    # Whatever the client claims elsewhere, bob's key proves bob.
    headers = {**server.signed("bob", "POST", path, b"{}"), "x-keyward-actor": "rita"}
    assert server.send("POST", path, b"{}", headers)[0] == 200
    event = server.kw.ok("audit", "log", "--json", "--action", "access.approve").json()[-1]
    assert (event["actor"], event["details"]["request_id"]) == ("bob", own)


def test_members_see_only_their_own_requests(server: ServerEnv) -> None:
    server.request_for("rita", "dba")
    path = "/api/v1/access-requests"
    status, rows = server.send("GET", path, headers=server.signed("alice", "GET", path))
    assert status == 200 and {r["person"] for r in rows} <= {"alice"}
    status, rows = server.send("GET", path, headers=server.signed("dave", "GET", path))
    assert status == 200 and "rita" in {r["person"] for r in rows}


def test_a_request_is_validated_like_the_cli(server: ServerEnv) -> None:
    path = "/api/v1/access-requests"
    for body, message in (
        (
            {"role": "devops", "environment": "nowhere", "duration_seconds": 60, "reason": "x"},
            "unknown environment",
        ),
        (
            {"role": "devops", "environment": "prod", "duration_seconds": 8 * 86400, "reason": "x"},
            "between 1 minute and 7 days",
        ),
        (
            {"role": "nosuch", "environment": "prod", "duration_seconds": 60, "reason": "x"},
            "no role",
        ),
        (
            {"role": "devops", "environment": "prod", "duration_seconds": "1h", "reason": "x"},
            "duration_seconds",
        ),
        (
            {"role": "devops", "environment": "prod", "duration_seconds": 10**30, "reason": "x"},
            "between 1 minute and 7 days",
        ),
        (
            {"role": "devops", "environment": "prod", "duration_seconds": 60, "reason": "a\nb"},
            "reason",
        ),
    ):
        raw = json.dumps(body).encode()
        status, answer_ = server.send("POST", path, raw, server.signed("alice", "POST", path, raw))
        assert status == 400, answer_
        assert message in answer_["error"]


def test_a_decided_request_is_a_conflict(server: ServerEnv) -> None:
    rid = server.request_for("rita", "devops")
    path = f"/api/v1/access-requests/{rid}/deny"
    assert server.send("POST", path, b"{}", server.signed("bob", "POST", path, b"{}"))[0] == 200
    status, body = server.send("POST", path, b"{}", server.signed("bob", "POST", path, b"{}"))
    assert status == 409 and "not pending" in body["error"]
    for bad in ("9" * 30, "-1", "1e3"):
        path = f"/api/v1/access-requests/{bad}/approve"
        status, body = server.send("POST", path, b"{}", server.signed("bob", "POST", path, b"{}"))
        assert status == 404, (bad, body)
    missing = "/api/v1/access-requests/99999/approve"
    assert (
        server.send("POST", missing, b"{}", server.signed("bob", "POST", missing, b"{}"))[0] == 404
    )


def test_refusals_are_one_line_json(server: ServerEnv) -> None:
    status, body = server.send("GET", "/api/v1/nothing-here")
    assert status == 404 and set(body) == {"error"}
    big = b"{" + b" " * (70 * 1024) + b"}"
    path = "/api/v1/access-requests"
    status, body = server.send("POST", path, big, server.signed("alice", "POST", path, big))
    assert status == 413
    deep = b"[" * 60000
    status, body = server.send("POST", path, deep, server.signed("alice", "POST", path, deep))
    assert status == 400 and "not JSON" in body["error"]
    status, body = server.send("GET", "/api/v1/whoami", headers={"authorization": "Basic x"})
    assert status == 401 and "Bearer" in body["error"]


# -- sessions -----------------------------------------------------------------------


def login(server: ServerEnv, person: str) -> str:
    path = "/api/v1/auth/login"
    status, body = server.send("POST", path, b"{}", server.signed(person, "POST", path, b"{}"))
    assert status == 200, body
    return str(body["token"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_session_works_until_its_key_is_revoked(server: ServerEnv, tmp_path: Path) -> None:
    from tests.keygen import make_key

    _, public = make_key(tmp_path, "ed25519", name="second")
    server.kw.ok("key", "add", "carol", str(public), "--attest", "admin")
    token = login(server, "carol")
    status, me = server.send("GET", "/api/v1/whoami", headers=bearer(token))
    assert status == 200 and (me["username"], me["via"]) == ("carol", "session")
    server.kw.ok("key", "revoke", server.signer("carol").public.fingerprint, "--reason", "test")
    status, body = server.send("GET", "/api/v1/whoami", headers=bearer(token))
    assert status == 401 and "revoked" in body["error"]


def test_offboarding_ends_a_session_at_once(server: ServerEnv) -> None:
    from keyward.registry import lifecycle

    server.kw.ok("person", "add", "olga", "--name", "Olga")
    from tests.keygen import make_key

    private, public = make_key(server.base / "keys", "ed25519", name="olga")
    server.kw.ok("key", "add", "olga", str(public), "--attest", "admin")
    server.keys["olga"] = private
    token = login(server, "olga")
    assert server.send("GET", "/api/v1/whoami", headers=bearer(token))[0] == 200
    registry = server.registry()
    with registry.write("admin") as tx:
        lifecycle.offboard(tx, "olga", "left", [])
    registry.dispose()
    status, body = server.send("GET", "/api/v1/whoami", headers=bearer(token))
    assert status == 401 and "offboarded" in body["error"]


def test_a_session_cannot_mint_another(server: ServerEnv) -> None:
    token = login(server, "alice")
    status, _ = server.send("POST", "/api/v1/auth/login", b"{}", bearer(token))
    assert status == 403


def test_a_forged_session_is_refused(server: ServerEnv) -> None:
    token = login(server, "alice")
    payload, mac = token.split(".")[1:]
    status, _ = server.send("GET", "/api/v1/whoami", headers=bearer(f"kws1.{payload}.{mac[:-2]}AA"))
    assert status == 401


def test_a_key_below_the_minimum_attestation_cannot_sign_in(
    server: ServerEnv, tmp_path: Path
) -> None:
    from keyward.auth.signer import load_signer
    from tests.keygen import make_key

    private, public = make_key(tmp_path, "ed25519", name="weak")
    server.kw.ok("key", "add", "alice", str(public))  # attestation none
    signer = load_signer(str(private))
    path = "/api/v1/whoami"
    status, body = server.send(
        "GET", path, headers=signer.headers("GET", path, b"", datetime.now(UTC))
    )
    assert status == 401 and "attested 'none'" in body["error"]


def test_an_unregistered_key_is_unknown(server: ServerEnv, tmp_path: Path) -> None:
    from keyward.auth.signer import load_signer
    from tests.keygen import make_key

    private, _ = make_key(tmp_path, "ed25519", name="stranger")
    path = "/api/v1/whoami"
    headers = load_signer(str(private)).headers("GET", path, b"", datetime.now(UTC))
    status, body = server.send("GET", path, headers=headers)
    assert status == 401 and "unknown key" in body["error"]


def test_the_server_logs_json_lines(server: ServerEnv) -> None:
    # Every line is JSON, uvicorn's own messages included.
    lines = [json.loads(ln) for ln in server.log.read_text().splitlines()]
    assert any(ln["event"] == "server_start" for ln in lines)
    assert any(ln["event"] == "uvicorn" and "running on" in ln["message"] for ln in lines)
    assert any(ln["event"] == "api_request" and ln["user"] == "bob" for ln in lines)
    assert not re.search(r"Traceback|api_internal_error", server.log.read_text())


def test_the_signature_covers_the_path_as_sent(server: ServerEnv) -> None:
    """Signed over /api/v1/whoami, sent percent-encoded: the bytes differ, so it is refused."""
    headers = server.signed("alice", "GET", "/api/v1/whoami")
    assert server.send("GET", "/api/v1/%77hoami", headers=headers)[0] == 401
    headers = server.signed("alice", "GET", "/api/v1/%77hoami")
    assert server.send("GET", "/api/v1/%77hoami", headers=headers)[0] == 200
