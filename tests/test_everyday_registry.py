"""Everyday registry work through the real CLI, on SQLite and PostgreSQL.

Short fingerprints from host lines, Windows line endings in .pub files, person edit and
re-hire, and the --json of the commands that create something.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from keyward.keys import parse_public_key
from tests.cli_runner import Keyward
from tests.keygen import make_key


@pytest.fixture
def alice(kw: Keyward) -> Keyward:
    kw.ok("person", "add", "alice", "--name", "Alice Example", "--email", "alice@example.com")
    kw.ok("person", "add", "bob", "--name", "Bob Example")
    return kw


def _key(cli: Keyward, tmp_path: Path, owner: str, name: str) -> str:
    _, pub = make_key(tmp_path, "ed25519", name=name)
    return str(cli.ok("key", "add", owner, str(pub), "--json").json()["fingerprint"])


@pytest.mark.parametrize(
    "form",
    ["host_comment", "short", "sha256_short", "longer_prefix", "full"],
)
def test_key_revoke_takes_the_short_fingerprint_of_host_lines(
    alice: Keyward, tmp_path: Path, form: str
) -> None:
    _, pub = make_key(tmp_path, "ed25519")
    public = parse_public_key(pub.read_text())
    alice.ok("key", "add", "alice", str(pub))
    short = public.short_fingerprint
    given = {
        "host_comment": f"keyward:alice:{short}",  # what a host's authorized_keys line ends with
        "short": short,
        "sha256_short": f"SHA256:{short}",
        "longer_prefix": public.fingerprint[7:30],
        "full": public.fingerprint,
    }[form]
    out = alice.ok("key", "revoke", given, "--reason", "seen on a host", "--json").json()
    assert out["fingerprint"] == public.fingerprint and out["status"] == "revoked"
    event = alice.ok("audit", "log", "--action", "key.revoke", "--json").json()[0]
    assert event["details"]["fingerprint"] == public.fingerprint  # always the full one


def test_key_revoke_short_form_refusals(alice: Keyward, tmp_path: Path) -> None:
    fp = _key(alice, tmp_path, "alice", "a1")
    other = _key(alice, tmp_path, "bob", "b1")
    short = fp[7:23]
    # The owner in a host-line comment must be the key's owner.
    err = alice.fails("key", "revoke", f"keyward:bob:{short}", "--reason", "x").err
    assert "no key" in err
    # Too short to be the host-line form: refused, not guessed.
    assert (
        "at least the 16 characters" in alice.fails("key", "revoke", fp[7:15], "--reason", "x").err
    )
    # Case matters in base64 (SQLite's LIKE would ignore it).
    swapped = short.swapcase()
    if swapped != short:
        assert "no key" in alice.fails("key", "revoke", swapped, "--reason", "x").err
    # Two keys sharing the 16 characters: an error naming both, nothing revoked.
    twin = fp[:23] + other[23:]
    with create_engine(alice.db_url).begin() as conn:
        conn.execute(
            text("UPDATE ssh_key SET fingerprint = :t WHERE fingerprint = :o"),
            {"t": twin, "o": other},
        )
    err = alice.fails("key", "revoke", short, "--reason", "x").err
    assert "matches 2 keys" in err and fp in err and twin in err
    assert len(alice.ok("key", "list", "--json").json()) == 2


def test_key_add_accepts_a_pub_file_saved_with_crlf(alice: Keyward, tmp_path: Path) -> None:
    _, pub = make_key(tmp_path, "ed25519", comment="alice@windows")
    expected = parse_public_key(pub.read_text()).fingerprint
    crlf = tmp_path / "windows.pub"
    crlf.write_bytes(pub.read_bytes().rstrip(b"\n") + b"\r\n")
    out = alice.ok("key", "add", "alice", str(crlf), "--json").json()
    assert out["fingerprint"] == expected and out["comment"] == "alice@windows"
    # Other control characters, and a CR that does not end a line, are still refused.
    line = pub.read_text().strip()
    for bad in (line + " a\rb\r\n", line + "\x1b[31m\r\n", line + "\r\n" + line + "\r\n"):
        hostile = tmp_path / "hostile.pub"
        hostile.write_bytes(bad.encode())
        alice.fails("key", "add", "bob", str(hostile))
    assert alice.ok("key", "list", "bob", "--json").json() == []


def test_person_edit_name_and_email_audited(alice: Keyward) -> None:
    out = alice.ok("person", "edit", "alice", "--name", "Alice Married", "--json").json()
    assert out["full_name"] == "Alice Married" and out["email"] == "alice@example.com"
    alice.ok("person", "edit", "alice", "--email", "alice@new.example")
    assert "nothing to change" in alice.fails("person", "edit", "bob", "--email", "").err
    shown = alice.ok("person", "show", "alice", "--json").json()
    assert (shown["full_name"], shown["email"]) == ("Alice Married", "alice@new.example")
    edits = alice.ok("audit", "log", "--action", "person.edit", "--json").json()
    assert edits[0]["details"] == {"full_name": {"from": "Alice Example", "to": "Alice Married"}}
    assert edits[1]["details"]["email"] == {"from": "alice@example.com", "to": "alice@new.example"}
    alice.ok("person", "edit", "alice", "--email", "")
    assert alice.ok("person", "show", "alice", "--json").json()["email"] is None
    assert "nothing to change" in alice.fails("person", "edit", "alice").err
    assert "invalid email" in alice.fails("person", "edit", "alice", "--email", "no-at").err
    assert "control characters" in alice.fails("person", "edit", "alice", "--name", "A\x1bB").err
    assert "no person" in alice.fails("person", "edit", "zed", "--name", "Z").err
    alice.ok("audit", "verify")


def test_creating_commands_answer_in_json(alice: Keyward, tmp_path: Path) -> None:
    person = alice.ok("person", "add", "carol", "--name", "Carol", "--json").json()
    assert (person["username"], person["status"]) == ("carol", "active")
    role = alice.ok("role", "add", "devops", "--description", "ops", "--json").json()
    assert role == {
        "name": "devops",
        "description": "ops",
        "created_by": "admin",
        "created_at": role["created_at"],
    }
    grant = alice.ok("role", "grant", "devops", "alice", "--reason", "OPS-1", "--json").json()
    assert (grant["person"], grant["role"], grant["granted_by"], grant["status"]) == (
        "alice",
        "devops",
        "admin",
        "active",
    )
    old = _key(alice, tmp_path, "alice", "old")
    _, new_pub = make_key(tmp_path, "ed25519", name="new")
    rotated = alice.ok("key", "rotate", "alice", str(new_pub), "--json").json()
    assert rotated["old"]["fingerprint"] == old
    assert rotated["new"]["fingerprint"] == parse_public_key(new_pub.read_text()).fingerprint
    request = alice.ok(
        "access", "request", "devops", "--env", "production", "--for", "4h",
        "--reason", "INC-1", "--json", actor="bob",
    ).json()  # fmt: skip
    assert (request["person"], request["status"]) == ("bob", "pending")
    listed = alice.ok("access", "list", "--json").json()
    assert [r["id"] for r in listed] == [request["id"]]
