"""The CLI through ``keyward server`` (KEYWARD_URL): same output and exit codes as locally.

People sign through a real ``ssh-agent`` (``KEYWARD_KEY`` names the public key) or a
private key file; the server is a real process (tests/server_env.py).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyward.errors import UsageError
from keyward.server.run import check_tls, parse_listen
from tests.cli_runner import Keyward
from tests.server_env import ServerEnv, free_port, server_env

REQUESTED = re.compile(
    r"access request (\d+): devops in prod for 2h, waiting for approval by someone else\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    with server_env(tmp_path_factory.mktemp("server-cli"), host="127.0.0.22") as env:
        yield env


def remote(server: ServerEnv, person: str, **extra: str) -> Keyward:
    """The CLI of ``person``'s shell: no database, the server and their agent."""
    return Keyward(
        "sqlite:////nonexistent/no-database.db",
        str(server.inventory),
        env={**server.cli_env(person), "KEYWARD_ACTOR": "mallory", **extra},
    )


def test_request_and_approve_print_what_they_print_locally(server: ServerEnv) -> None:
    alice = remote(server, "alice")
    out = alice.ok(
        "access", "request", "devops", "--env", "prod", "--for", "2h", "--reason", "INC-1"
    ).out
    match = REQUESTED.fullmatch(out)
    assert match, out
    rid = match.group(1)
    local = server.kw.ok(
        "access",
        "request",
        "devops",
        "--env",
        "prod",
        "--for",
        "2h",
        "--reason",
        "INC-1",
        actor="rita",
    ).out
    assert REQUESTED.fullmatch(local)
    out = remote(server, "bob").ok("access", "approve", rid).out
    assert re.fullmatch(
        rf"approved access request {rid} until \d{{4}}-\d\d-\d\d \d\d:\d\d UTC\n", out
    )
    # The audit trail names the proven people, not KEYWARD_ACTOR=mallory.
    events = server.kw.ok("audit", "log", "--json").json()
    mine = [e for e in events if e["details"].get("request_id") == int(rid)]
    assert [(e["action"], e["actor"]) for e in mine] == [
        ("access.request", "alice"),
        ("access.approve", "bob"),
    ]


def test_deny_and_list_match_the_local_output(server: ServerEnv) -> None:
    rid = server.request_for("rita", "devops")
    assert remote(server, "bob").ok("access", "deny", str(rid)).out == (
        f"denied access request {rid}\n"
    )
    for args in (("access", "list", "--json"), ("access", "list"), ("access", "list", "--open")):
        assert remote(server, "erin")(*args).out == server.kw.ok(*args).out, args


def test_approving_your_own_request_fails_the_same_way_and_writes_nothing(
    server: ServerEnv,
) -> None:
    rid = server.request_for("bob", "devops")
    before = server.head()
    through_server = remote(server, "bob").fails("access", "approve", str(rid))
    assert server.head() == before
    locally = server.kw.fails("access", "approve", str(rid), actor="bob")
    assert (
        through_server.err
        == locally.err
        == ("keyward: error: a request must be approved by someone other than the requester\n")
    )


def test_a_member_cannot_approve(server: ServerEnv) -> None:
    rid = server.request_for("rita", "devops")
    result = remote(server, "alice").fails("access", "approve", str(rid))
    assert "may not decide requests for role 'devops'" in result.err


def test_login_whoami_and_the_session_ending_with_the_key(
    server: ServerEnv, tmp_path: Path
) -> None:
    from tests.keygen import make_key

    private, public = make_key(tmp_path, "ed25519", name="dave2")
    server.kw.ok("key", "add", "dave", str(public), "--attest", "admin")
    dave = remote(server, "dave", KEYWARD_KEY=str(private))  # a private key file, no agent
    out = dave.ok("auth", "login").out
    assert out.startswith(f"signed in to {server.url} as dave with key SHA256:")
    files = list((server.base / "home" / "dave").glob("session-*.json"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    me = dave.ok("auth", "whoami", "--json").json()
    assert (me["username"], me["via"], me["auditor"]) == ("dave", "session", True)
    assert "session until:" in dave.ok("auth", "whoami").out
    fingerprint = me["fingerprint"]
    server.kw.ok("key", "revoke", fingerprint, "--reason", "laptop stolen")
    result = dave.fails("auth", "whoami")
    assert result.err == f"keyward: error: key {fingerprint} is revoked\n"
    assert dave.ok("auth", "logout").out == "signed out\n"


def test_without_a_key_or_session_the_cli_says_what_to_set(server: ServerEnv) -> None:
    result = remote(server, "alice", KEYWARD_KEY="").fails("auth", "whoami")
    assert "set KEYWARD_KEY" in result.err


def test_an_unreachable_server_is_an_operational_failure(server: ServerEnv) -> None:
    port = free_port("127.0.0.22")
    result = remote(server, "alice", KEYWARD_URL=f"http://127.0.0.22:{port}")("auth", "whoami")
    assert result.code == 1 and "cannot reach the keyward server" in result.err


def test_auth_needs_a_server() -> None:
    result = Keyward("sqlite:////nonexistent.db", "/nonexistent")("auth", "whoami")
    assert result.code == 2 and "KEYWARD_URL" in result.err


# -- listening and TLS -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        ("127.0.0.1:8443", "127.0.0.1", 8443, True),
        ("[::1]:9000", "::1", 9000, True),
        ("localhost:1", "localhost", 1, True),
        ("0.0.0.0:8443", "0.0.0.0", 8443, False),
        ("10.1.2.3:443", "10.1.2.3", 443, False),
    ],
)
def test_parse_listen(text: str, host: str, port: int, loopback: bool) -> None:
    listen = parse_listen(text)
    assert (listen.host, listen.port, listen.loopback) == (host, port, loopback)


@pytest.mark.parametrize("bad", ["8443", "host:", ":80", "h:0", "h:65536", "h:x"])
def test_parse_listen_refuses(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_listen(bad)


def test_plain_http_is_refused_beyond_loopback() -> None:
    with pytest.raises(UsageError, match="refusing plain HTTP"):
        check_tls(parse_listen("0.0.0.0:8443"), None, None)
    with pytest.raises(UsageError, match="both"):
        check_tls(parse_listen("127.0.0.1:8443"), "cert.pem", None)
    assert check_tls(parse_listen("127.0.0.1:8443"), None, None) is None


def test_tls_directly(server: ServerEnv, tmp_path: Path) -> None:
    from tests.server_env import tls_server

    with tls_server(server, tmp_path, "127.0.0.23") as (url, cert, log):
        alice = remote(server, "alice", KEYWARD_URL=url, KEYWARD_CA=str(cert))
        assert alice.ok("auth", "whoami", "--json").json()["username"] == "alice"
        untrusted = remote(server, "alice", KEYWARD_URL=url)
        result = untrusted("auth", "whoami")
        assert result.code == 1 and "CERTIFICATE_VERIFY_FAILED" in result.err
    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
    assert any(ln["event"] == "server_start" and ln["tls"] for ln in lines)


def test_the_server_refuses_plain_http_on_a_public_address(server: ServerEnv) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "keyward", "--db", server.db_url, "server", "--listen", "0.0.0.0:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert proc.returncode == 2 and "refusing plain HTTP" in proc.stderr


def test_the_cli_through_the_server_loads_no_orm_ssh_or_server(
    server: ServerEnv, tmp_path: Path
) -> None:
    """Through the server, the CLI is an HTTP client: urllib, no SQLAlchemy, no asyncssh."""
    from tests.test_startup import REGISTRY, SSH, imported_by, loaded

    server.request_for("rita", "devops")
    modules = imported_by(tmp_path, "access", "list", env=server.cli_env("erin"))
    assert "keyward.auth.client" in modules
    heavy = (*REGISTRY, *SSH, "starlette", "uvicorn", "keyward.registry.store", "keyward.server")
    assert loaded(modules, heavy) == []


def test_the_two_person_rule_through_the_server_on_each_backend(
    db_url: str, tmp_path: Path
) -> None:
    """The team set-up's registry is usually PostgreSQL: the same flow on both backends."""
    with server_env(tmp_path, host="127.0.0.24", db_url=db_url) as env:
        out = (
            remote(env, "alice")
            .ok("access", "request", "devops", "--env", "prod", "--for", "2h", "--reason", "INC-2")
            .out
        )
        match = REQUESTED.fullmatch(out)
        assert match, out
        rid = match.group(1)
        own = (
            remote(env, "bob")
            .ok("access", "request", "devops", "--env", "prod", "--for", "2h", "--reason", "INC-2")
            .out
        )
        own_id = REQUESTED.fullmatch(own).group(1)  # type: ignore[union-attr]
        before = env.head()
        remote(env, "bob").fails("access", "approve", own_id)
        assert env.head() == before
        remote(env, "bob").ok("access", "approve", rid)
        rows = {r["id"]: r for r in remote(env, "erin").ok("access", "list", "--json").json()}
        assert (rows[int(rid)]["status"], rows[int(rid)]["decided_by"]) == ("approved", "bob")
        assert rows[int(own_id)]["status"] == "pending"


def test_a_public_key_signs_through_the_agent_only(server: ServerEnv, tmp_path: Path) -> None:
    """KEYWARD_KEY=a .pub with no private key beside it: the ssh-agent signs, or nothing."""
    import shutil

    alone = tmp_path / "id_alice.pub"
    shutil.copy(server.pub("alice"), alone)
    me = remote(server, "alice", KEYWARD_KEY=str(alone)).ok("auth", "whoami", "--json").json()
    assert (me["username"], me["via"]) == ("alice", "signature")
    no_agent = remote(server, "alice", KEYWARD_KEY=str(alone), SSH_AUTH_SOCK="")
    result = no_agent.fails("auth", "whoami")
    assert f"cannot sign with {alone}" in result.err
