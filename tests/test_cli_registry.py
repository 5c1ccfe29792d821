"""The registry through the real CLI, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from keyward.cli.context import unix_user
from tests.cli_runner import Keyward
from tests.keygen import make_key


def fingerprint_by_ssh_keygen(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


@pytest.fixture
def alice(kw: Keyward) -> Keyward:
    kw.ok("person", "add", "alice", "--name", "Alice Example", "--email", "alice@example.com")
    kw.ok("person", "add", "bob", "--name", "Bob Example")
    return kw


def test_init_is_idempotent_and_audited(kw: Keyward) -> None:
    again = kw.ok("init")
    assert "up to date" in again.out
    events = kw.ok("audit", "log", "--json").json()
    assert [e["action"] for e in events] == ["registry.init"]
    # A direct database write names the unix user; the claimed name (--actor) stays beside it.
    assert events[0]["actor"] == f"local:{unix_user()} (claims admin)"


def test_commands_without_registry_say_run_init(tmp_path: Path) -> None:
    cli = Keyward(f"sqlite:///{tmp_path / 'missing.db'}", str(tmp_path / "inv"))
    result = cli.fails("person", "list")
    assert "keyward init" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "missing.db").exists()


def test_person_add_list_show(alice: Keyward) -> None:
    people = alice.ok("person", "list", "--json").json()
    assert [p["username"] for p in people] == ["alice", "bob"]
    assert people[0]["email"] == "alice@example.com"
    assert people[0]["status"] == "active"
    shown = alice.ok("person", "show", "alice", "--json").json()
    assert shown["full_name"] == "Alice Example"
    assert shown["keys"] == [] and shown["roles"] == []
    table = alice.ok("person", "list").out
    assert "alice" in table and "Alice Example" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["person", "add", "Alice", "--name", "A"], "invalid username"),
        (["person", "add", "root;rm", "--name", "A"], "invalid username"),
        (["person", "add", "alice\n", "--name", "A"], "invalid username"),
        (["person", "add", "carol", "--name", "Carol\nInjected"], "single line"),
        (["person", "add", "carol", "--name", "C", "--email", "not-an-email"], "invalid email"),
        (["person", "add", "alice", "--name", "Again"], "already exists"),
        (["person", "show", "nobody"], "no person 'nobody'"),
    ],
)
def test_person_bad_input_is_one_line_exit_2(alice: Keyward, args: list[str], message: str) -> None:
    before = alice.ok("audit", "log", "--json").json()
    result = alice.fails(*args)
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert alice.ok("audit", "log", "--json").json() == before


def test_key_add_records_fingerprint_like_ssh_keygen(alice: Keyward, tmp_path: Path) -> None:
    _, pub = make_key(tmp_path, "ed25519", comment="alice@laptop")
    out = alice.ok("key", "add", "alice", str(pub), "--attest", "admin")
    expected = fingerprint_by_ssh_keygen(pub)
    assert expected in out.out
    keys = alice.ok("key", "list", "alice", "--json").json()
    assert len(keys) == 1
    assert keys[0]["fingerprint"] == expected
    assert keys[0]["attestation"] == "admin"
    assert keys[0]["attested_by"] == "admin"
    assert keys[0]["status"] == "active"
    event = alice.ok("audit", "log", "--json", "--action", "key.add").json()[0]
    assert event["details"]["fingerprint"] == expected
    assert "AAAA" not in str(event["details"])  # never key material in the audit trail


def test_key_from_stdin(alice: Keyward, tmp_path: Path) -> None:
    _, pub = make_key(tmp_path, "ecdsa", bits=256)
    alice.ok("key", "add", "bob", "-", input=pub.read_bytes())
    assert len(alice.ok("key", "list", "bob", "--json").json()) == 1


def test_a_key_is_personal_and_the_owner_is_not_named(alice: Keyward, tmp_path: Path) -> None:
    _, pub = make_key(tmp_path, "ed25519")
    alice.ok("key", "add", "alice", str(pub))
    result = alice.fails("key", "add", "bob", str(pub))
    assert "already registered" in result.err
    assert "alice" not in result.err
    assert alice.ok("key", "list", "bob", "--json").json() == []


@pytest.mark.parametrize(
    ("kind", "bits", "accepted", "message"),
    [
        ("ed25519", None, True, ""),
        ("ecdsa", 384, True, ""),
        ("ecdsa", 521, True, ""),
        ("rsa", 3072, True, ""),
        ("rsa", 2048, False, "3072"),
    ],
)
def test_key_policy_on_real_keys(
    alice: Keyward, tmp_path: Path, kind: str, bits: int | None, accepted: bool, message: str
) -> None:
    _, pub = make_key(tmp_path, kind, bits=bits)
    result = alice("key", "add", "alice", str(pub))
    if accepted:
        assert result.code == 0, str(result)
    else:
        assert result.code == 2, str(result)
        assert message in result.err
        assert alice.ok("key", "list", "alice", "--json").json() == []


def test_private_key_pasted_by_mistake_is_refused_and_not_echoed(
    alice: Keyward, tmp_path: Path
) -> None:
    private, _ = make_key(tmp_path, "ed25519")
    body = private.read_text()
    result = alice.fails("key", "add", "alice", str(private))
    assert "private" in result.err.lower()
    secret_line = body.splitlines()[1]
    assert secret_line not in result.err and secret_line not in result.out
    assert alice.ok("key", "list", "alice", "--all", "--json").json() == []
    assert secret_line not in str(alice.ok("audit", "log", "--json").out)


def test_injected_second_key_is_refused(alice: Keyward, tmp_path: Path) -> None:
    _, pub1 = make_key(tmp_path / "a", "ed25519")
    _, pub2 = make_key(tmp_path / "b", "ed25519")
    smuggled = pub1.read_text().strip() + "\n" + pub2.read_text()
    alice.fails("key", "add", "alice", "-", input=smuggled)
    assert alice.ok("key", "list", "alice", "--json").json() == []


def test_proof_signed_with_ssh_keygen(alice: Keyward, tmp_path: Path) -> None:
    private, pub = make_key(tmp_path, "ed25519")
    statement = tmp_path / "statement"
    statement.write_bytes(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from keyward.cli.main import main; main()",
                "key",
                "statement",
                "alice",
                str(pub),
            ],
            capture_output=True,
            check=True,
            env={**_env(alice)},
        ).stdout
    )
    subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-n", "keyward", "-f", str(private), str(statement)],
        check=True,
        capture_output=True,
    )
    sig = Path(str(statement) + ".sig")
    # Bob cannot use Alice's statement: the username is part of what was signed.
    alice.fails("key", "add", "bob", str(pub), "--proof", str(sig))
    alice.ok("key", "add", "alice", str(pub), "--proof", str(sig))
    keys = alice.ok("key", "list", "alice", "--json").json()
    assert keys[0]["attestation"] == "proof"
    assert keys[0]["proof_date"] is not None


def _env(cli: Keyward) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "KEYWARD_DB": cli.db_url,
        "KEYWARD_INVENTORY": cli.inventory,
        "KEYWARD_ACTOR": "admin",
    }


def test_sk_attestation_only_for_security_keys(alice: Keyward, tmp_path: Path) -> None:
    _, pub = make_key(tmp_path, "ed25519")
    result = alice.fails("key", "add", "alice", str(pub), "--attest", "sk")
    assert "FIDO" in result.err


def test_expiry_default_and_limits(alice: Keyward, tmp_path: Path) -> None:
    _, pub = make_key(tmp_path / "a", "ed25519")
    now = "2026-01-10T12:00:00Z"
    alice.ok("key", "add", "alice", str(pub), env={"KEYWARD_NOW": now})
    key = alice.ok("key", "list", "alice", "--json", env={"KEYWARD_NOW": now}).json()[0]
    assert key["expires_at"] == "2027-01-10T12:00:00Z"  # max_key_age_days = 365
    _, pub2 = make_key(tmp_path / "b", "ed25519")
    too_late = alice.fails(
        "key", "add", "alice", str(pub2), "--expires", "2030-01-01", env={"KEYWARD_NOW": now}
    )
    assert "later than the policy" in too_late.err
    alice.ok("key", "add", "alice", str(pub2), "--expires", "2026-03-01", env={"KEYWARD_NOW": now})
    soon = alice.ok("key", "list", "--expiring", "60d", "--json", env={"KEYWARD_NOW": now}).json()
    assert [k["expires_at"] for k in soon] == ["2026-03-02T00:00:00Z"]
    later = "2026-06-01T00:00:00Z"
    statuses = alice.ok("key", "list", "alice", "--all", "--json", env={"KEYWARD_NOW": later})
    assert sorted(k["status"] for k in statuses.json()) == ["active", "expired"]


def test_key_revoke(alice: Keyward, tmp_path: Path) -> None:
    _, pub = make_key(tmp_path, "ed25519")
    alice.ok("key", "add", "alice", str(pub))
    fp = fingerprint_by_ssh_keygen(pub)
    alice.ok("key", "revoke", fp, "--reason", "laptop stolen (INC-7)")
    assert alice.ok("key", "list", "alice", "--json").json() == []
    revoked = alice.ok("key", "list", "alice", "--all", "--json").json()[0]
    assert revoked["status"] == "revoked"
    assert revoked["revoke_reason"] == "laptop stolen (INC-7)"
    assert "already revoked" in alice.fails("key", "revoke", fp, "--reason", "x").err
    # A revoked key cannot come back, for anyone.
    assert "already registered" in alice.fails("key", "add", "alice", str(pub)).err


def test_roles_grant_revoke_and_self_grant(alice: Keyward) -> None:
    alice.ok("role", "add", "devops", "--description", "production operators")
    alice.ok("role", "grant", "devops", "alice", "--reason", "OPS-1", actor="bob")
    assert (
        "themselves"
        in alice.fails("role", "grant", "devops", "bob", "--reason", "x", actor="bob").err
    )
    assert (
        "already has role"
        in alice.fails("role", "grant", "devops", "alice", "--reason", "y", actor="bob").err
    )
    roles = alice.ok("role", "list", "--json").json()
    assert roles == [
        {"name": "devops", "description": "production operators", "members": ["alice"]}
    ]
    shown = alice.ok("person", "show", "alice", "--json").json()
    assert shown["roles"][0]["granted_by"] == "bob"
    assert shown["roles"][0]["reason"] == "OPS-1"
    alice.ok("role", "revoke", "devops", "alice", "--reason", "changed team")
    assert alice.ok("role", "list", "--json").json()[0]["members"] == []
    assert (
        "does not have role"
        in alice.fails("role", "revoke", "devops", "alice", "--reason", "again").err
    )


def test_grant_until_lapses(alice: Keyward) -> None:
    alice.ok("role", "add", "qa")
    now = {"KEYWARD_NOW": "2026-05-01T00:00:00Z"}
    alice.ok(
        "role", "grant", "qa", "bob", "--reason", "release 4.2", "--until", "2026-05-10", env=now
    )
    assert alice.ok("role", "list", "--json", env=now).json()[0]["members"] == ["bob"]
    after = {"KEYWARD_NOW": "2026-05-11T00:00:01Z"}
    assert alice.ok("role", "list", "--json", env=after).json()[0]["members"] == []
    status = alice.ok("person", "show", "bob", "--json", env=after).json()["roles"][0]["status"]
    assert status == "lapsed"
    assert (
        "past"
        in alice.fails(
            "role", "grant", "qa", "alice", "--reason", "x", "--until", "2026-04-01", env=now
        ).err
    )


def test_audit_log_filters_and_verify(alice: Keyward) -> None:
    alice.ok("role", "add", "devops")
    alice.ok("role", "grant", "devops", "alice", "--reason", "OPS-2")
    about_alice = alice.ok("audit", "log", "--person", "alice", "--json").json()
    assert [e["action"] for e in about_alice] == ["person.add", "role.grant"]
    assert alice.ok("audit", "verify").out.startswith("audit chain ok: 5 events")


def _engine(cli: Keyward):  # type: ignore[no-untyped-def]
    return create_engine(cli.db_url)


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        ('UPDATE audit_event SET details = \'{"full_name":"Mallory"}\' WHERE seq = 2', 2),
        ("UPDATE audit_event SET actor = 'someone-else' WHERE seq = 3", 3),
        ("DELETE FROM audit_event WHERE seq = 2", 2),
        ("DELETE FROM audit_event WHERE seq = 4", 4),
        ("UPDATE audit_event SET details = '{}', redacted = true WHERE seq = 3", 3),
        (
            "UPDATE audit_event SET seq = -seq WHERE seq IN (2, 3);"
            "UPDATE audit_event SET seq = 3 WHERE seq = -2;"
            "UPDATE audit_event SET seq = 2 WHERE seq = -3",
            2,
        ),
    ],
    ids=[
        "edit-details",
        "edit-actor",
        "delete-middle",
        "delete-newest",
        "fake-redaction",
        "reorder",
    ],
)
def test_tampering_is_detected(alice: Keyward, tamper: str, first_bad: int) -> None:
    alice.ok("role", "add", "devops")  # events: init, alice, bob, role.add
    engine = _engine(alice)
    with engine.begin() as conn:
        for statement in tamper.split(";"):
            conn.execute(text(statement))
    engine.dispose()
    result = alice.fails("audit", "verify", code=1)
    assert f"audit event {first_bad}" in result.err
    report = alice("audit", "verify", "--json")
    assert report.code == 1
    assert report.json()["first_bad_event"] == first_bad


def test_key_check_refuses_unencrypted_and_accepts_encrypted(
    alice: Keyward, tmp_path: Path
) -> None:
    plain, _ = make_key(tmp_path / "plain", "ed25519")
    result = alice.fails("key", "check", str(plain))
    assert "passphrase" in result.err
    locked, pub = make_key(tmp_path / "locked", "ed25519", passphrase="correct horse")
    report = alice.ok("key", "check", str(locked), "--json").json()
    assert report["encrypted"] is True
    assert report["fingerprint"] == fingerprint_by_ssh_keygen(pub)
    assert "correct horse" not in str(report)


def test_concurrent_administrators_lose_nothing(kw: Keyward, tmp_path: Path) -> None:
    """Two processes registering people at once: every change lands, the chain verifies."""
    script = (
        "import sys\n"
        "from keyward.cli.main import main\n"
        "prefix = sys.argv[1]\n"
        "for i in range(8):\n"
        "    try:\n"
        "        main(['person', 'add', f'{prefix}{i}', '--name', f'Person {prefix}{i}'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
    )
    env = _env(kw)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, prefix],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for prefix in ("p", "q")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    people = kw.ok("person", "list", "--json").json()
    assert len(people) == 16
    assert kw.ok("audit", "verify").out.startswith("audit chain ok: 17 events")


def test_console_script_reports_errors_without_traceback(kw: Keyward) -> None:
    proc = subprocess.run(
        ["keyward", "person", "add", "BAD NAME", "--name", "x"],
        capture_output=True,
        text=True,
        env=_env(kw),
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("keyward: error: invalid username")
    assert "Traceback" not in proc.stderr
