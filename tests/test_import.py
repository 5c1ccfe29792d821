"""Bulk onboarding with ``keyward import people.csv``: all rows or none, every problem by line."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyward.cli.context import unix_user
from keyward.keys import parse_public_key
from tests.cli_runner import Keyward
from tests.keygen import make_key


@pytest.fixture
def roles(kw: Keyward) -> Keyward:
    kw.ok("role", "add", "devops")
    kw.ok("role", "add", "qa")
    kw.ok("person", "add", "existing", "--name", "Already Here")
    return kw


def _audit_head(cli: Keyward) -> int:
    return len(cli.ok("audit", "log", "--json").json())


def test_import_people_keys_and_roles_in_one_go(roles: Keyward, tmp_path: Path) -> None:
    _, alice_pub = make_key(tmp_path / "keys", "ed25519", name="alice", comment="alice@laptop")
    _, bob_pub = make_key(tmp_path / "keys", "ecdsa", bits=256, name="bob")
    bob_line = bob_pub.read_text().strip()
    csv_file = tmp_path / "people.csv"
    csv_file.write_bytes(
        b"username,name,email,key,roles\r\n"  # saved by a spreadsheet: CRLF
        b"alice,Alice Example,alice@example.com,keys/alice.pub,devops;qa\r\n"
        + f'bob,"Bob, Jr.",,{bob_line},devops qa\r\n'.encode()
        + b"\r\n"
        + b"carol,Carol Example,,,\r\n"
    )
    before = _audit_head(roles)
    dry = roles.ok("import", str(csv_file), "--dry-run")
    assert "would import 3 people, 2 keys, 4 role grants" in dry.out
    assert _audit_head(roles) == before  # a dry run changes nothing
    summary = roles.ok(
        "import", str(csv_file), "--attest", "admin", "--json", actor="hr-admin"
    ).json()
    assert summary["imported"] is True and summary["problems"] == []
    by_user = {p["username"]: p for p in summary["people"]}
    assert by_user["alice"]["fingerprint"] == parse_public_key(alice_pub.read_text()).fingerprint
    assert by_user["bob"]["roles"] == ["devops", "qa"] and by_user["carol"]["fingerprint"] is None
    keys = roles.ok("key", "list", "--json").json()
    assert {(k["owner"], k["attestation"], k["attested_by"]) for k in keys} == {
        ("alice", "admin", "hr-admin"),
        ("bob", "admin", "hr-admin"),
    }
    people = {p["username"]: p for p in roles.ok("person", "list", "--json").json()}
    assert (
        people["bob"]["full_name"] == "Bob, Jr." and people["alice"]["email"] == "alice@example.com"
    )
    members = {r["name"]: r["members"] for r in roles.ok("role", "list", "--json").json()}
    assert members == {"devops": ["alice", "bob"], "qa": ["alice", "bob"]}
    grants = roles.ok("audit", "log", "--action", "role.grant", "--json").json()
    assert {(g["actor"], g["details"]["reason"]) for g in grants} == {
        (f"local:{unix_user()} (claims hr-admin)", "import people.csv")
    }
    assert _audit_head(roles) == before + 3 + 2 + 4


def test_import_reports_every_problem_with_its_line_and_imports_nothing(
    roles: Keyward, tmp_path: Path
) -> None:
    priv, pub = make_key(tmp_path, "ed25519", name="shared")
    line = pub.read_text().strip()
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "username,name,email,key,roles\n"
        "good,Good Person,,,devops\n"  # 2: fine on its own
        "Bad User,Bad,,,\n"  # 3: invalid username
        "dave,Dave,,,ops\n"  # 4: no such role
        "good,Again,,,\n"  # 5: username twice in the file
        f"erin,Erin,,{priv.name},\n"  # 6: a private key file
        "admin,The Admin,,,devops\n"  # 7: the importer would grant to themselves
        "existing,Someone,,,\n"  # 8: already in the registry
        f"frank,Frank,,{line},\n"  # 9: fine
        f"gina,Gina,,{line},\n"  # 10: frank's key again
        "hank,Hank,not-an-email,missing.pub,\n"  # 11: two problems on one line
        "ivan,Ivan\n"  # 12: too few fields
        f'judy,Judy,,"{priv.read_text().strip()}",\n'  # 13 (and on): a private key pasted
        "kim,Kim,,,devops\n"  # fine, after a record of several lines
    )
    before = _audit_head(roles)
    result = roles.fails("import", str(csv_file))
    problems = [x for x in result.err.splitlines() if not x.startswith("keyward: error:")]
    label = str(csv_file)
    assert all(p.startswith(f"{label}:") for p in problems), result.err
    lines = sorted(int(p[len(label) + 1 :].split(":", 1)[0]) for p in problems)
    assert lines == [3, 4, 5, 6, 7, 8, 10, 11, 11, 12, 13], result.err
    text = result.err
    assert "invalid username" in text and "no role 'ops'" in text
    assert "also on line 2" in text and "PRIVATE key" in text
    assert "cannot grant a role to themselves" in text and "already exists" in text
    assert "also on line 9" in text and "invalid email" in text and "cannot read key file" in text
    assert result.err.splitlines()[-1].startswith("keyward: error: ")
    assert "11 problems; nothing was imported" in result.err
    assert "AAAA" not in result.err and "b3BlbnNz" not in result.err  # no key material
    assert result.err.count("PRIVATE key") == 2  # the file (line 6) and the pasted text
    assert _audit_head(roles) == before
    assert {p["username"] for p in roles.ok("person", "list", "--json").json()} == {"existing"}
    # --json lists the same problems, and still exits 2.
    out = roles.fails("import", str(csv_file), "--json")
    assert [p["line"] for p in out.json()["problems"]] == lines
    assert out.json()["imported"] is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"user,name\nalice,Alice\n", ":1: the first line must be the header"),
        (b"username,name,email,key,roles,extra\n", "unknown 'extra'"),
        (b'username,name,email,key,roles\nalice,"Alice\n', "not valid CSV"),
        (b"username,name,email,key,roles\n\xff\n", "not UTF-8"),
    ],
)
def test_import_unreadable_file_is_one_line(
    roles: Keyward, tmp_path: Path, content: bytes, message: str
) -> None:
    csv_file = tmp_path / "people.csv"
    csv_file.write_bytes(content)
    result = roles.fails("import", str(csv_file))
    assert message in result.err and len(result.err.splitlines()) == 1, result.err
    assert "cannot read" in roles.fails("import", str(tmp_path / "nope.csv")).err
