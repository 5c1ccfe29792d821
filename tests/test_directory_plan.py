"""The directory sync's pure parts: LDAP attributes -> entries, the diff, the guard, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyward.directory import guard
from keyward.directory.diff import plan_sync
from keyward.directory.entries import collect, disabled_reason, to_entry
from keyward.directory.model import (
    Create,
    DirectoryEntry,
    DirectoryRead,
    Link,
    Offboard,
    RegistryPerson,
    RoleChange,
)
from keyward.inventory.directory_settings import DirectoryAttributes, read_directory
from keyward.inventory.reader import Problem, Reader

BASE = "ou=people,dc=example,dc=com"
DEVOPS = "cn=devops,ou=groups,dc=example,dc=com"


def dn(uid: str) -> str:
    return f"uid={uid},{BASE}"


def entry(uid: str, **kw: object) -> DirectoryEntry:
    return DirectoryEntry(dn=dn(uid), username=uid, **kw)  # type: ignore[arg-type]


def person(uid: str, linked: bool = True, **kw: object) -> RegistryPerson:
    fields: dict[str, object] = {"full_name": uid.title(), "email": None, "status": "active"}
    fields.update(kw)
    return RegistryPerson(username=uid, dn=dn(uid) if linked else None, **fields)  # type: ignore[arg-type]


def read(*entries: DirectoryEntry, **kw: object) -> DirectoryRead:
    return DirectoryRead(base_dn=BASE, entries=entries, **kw)  # type: ignore[arg-type]


# -- entries ----------------------------------------------------------------------------

AD = DirectoryAttributes(
    username="sAMAccountName",
    name="displayName",
    disabled="userAccountControl",
    disabled_rule="account-control",
)
FLAG = DirectoryAttributes(disabled="nsAccountLock")
LOCKED = DirectoryAttributes(disabled="nsAccountLock", disabled_rule="present")


@pytest.mark.parametrize(
    ("mapping", "value", "expected"),
    [
        (AD, b"512", None),  # NORMAL_ACCOUNT
        (AD, b"514", "userAccountControl=514 (ACCOUNTDISABLE)"),  # 512 | 2
        (AD, b"66050", "userAccountControl=66050 (ACCOUNTDISABLE)"),  # + DONT_EXPIRE_PASSWORD
        (AD, b"66048", None),
        (AD, b"0x202", "userAccountControl=514 (ACCOUNTDISABLE)"),
        (AD, b"lots", "userAccountControl=lots (not a number; treated as disabled)"),
        (FLAG, b"TRUE", "nsAccountLock=TRUE"),
        (FLAG, b"true", "nsAccountLock=true"),
        (FLAG, b"FALSE", None),
        (FLAG, None, None),
        (DirectoryAttributes(), b"TRUE", None),  # no disabled attribute configured
        (LOCKED, b"000001010000Z", "nsAccountLock=000001010000Z"),
        (LOCKED, None, None),
    ],
)
def test_disabled_rules(
    mapping: DirectoryAttributes, value: bytes | None, expected: str | None
) -> None:
    attrs = {
        "useraccountcontrol": [value] if value else [],
        "nsaccountlock": [value] if value else [],
    }
    assert disabled_reason(attrs, mapping) == expected


def test_entry_mapping_normalises_and_refuses_bad_usernames() -> None:
    got = to_entry(
        "CN=Ann,OU=Staff,DC=corp",
        {
            "sAMAccountName": [b"ann"],
            "displayName": [b"  Ann   Smith "],
            "mail": [b"not-an-address"],
            "memberOf": [b"CN=DevOps,OU=Groups,DC=corp"],
            "userAccountControl": [b"512"],
        },
        AD,
    )
    assert got == DirectoryEntry(
        dn="CN=Ann,OU=Staff,DC=corp",
        username="ann",
        name="Ann Smith",
        email=None,
        groups=frozenset({"cn=devops,ou=groups,dc=corp"}),
    )
    odd = to_entry(
        "cn=x",
        {"sAMAccountName": [b"bo"], "displayName": ["Bo\u200b\x00Li"], "mail": ["b\x00@x.io"]},
        AD,
    )
    assert isinstance(odd, DirectoryEntry) and (odd.name, odd.email) == ("Bo Li", None)
    assert "is not a valid username" in str(
        to_entry("cn=x", {"sAMAccountName": [b"Ann Smith"]}, AD)
    )
    assert "no sAMAccountName" in str(to_entry("cn=x", {}, AD))


def test_a_username_on_two_entries_is_left_alone() -> None:
    mapping = DirectoryAttributes()
    got = collect(
        BASE,
        [(dn("a"), {"uid": [b"ann"]}), (dn("b"), {"uid": [b"ann"]}), (dn("c"), {"uid": [b"cy"]})],
        mapping,
    )
    assert [e.username for e in got.entries] == ["cy"]
    assert got.ambiguous == frozenset({"ann"})
    plan = plan_sync(got, [person("ann"), person("cy")], create_people=False)
    assert plan.offboards == ()


# -- the diff ---------------------------------------------------------------------------

CASES = [
    pytest.param(
        read(entry("ann", name="Ann")),
        [],
        True,
        {"creates": (Create(entry("ann", name="Ann")),)},
        id="new-entry-created",
    ),
    pytest.param(read(entry("ann")), [], False, {}, id="new-entry-ignored-without-create_people"),
    pytest.param(
        read(entry("ann", disabled="nsAccountLock=TRUE")),
        [],
        True,
        {},
        id="disabled-new-entry-never-created",
    ),
    pytest.param(
        read(entry("ann")),
        [person("ann", linked=False)],
        False,
        {"links": (Link("ann", dn("ann")),)},
        id="first-sight-links",
    ),
    pytest.param(read(entry("ann")), [person("ann")], False, {}, id="linked-and-equal"),
    pytest.param(
        read(entry("ann", name="Ann Smith", email="ann@example.com")),
        [person("ann", email="old@example.com")],
        False,
        {
            "updates": {
                "ann": {
                    "full_name": {"from": "Ann", "to": "Ann Smith"},
                    "email": {"from": "old@example.com", "to": "ann@example.com"},
                }
            }
        },
        id="name-and-email-updated",
    ),
    pytest.param(
        read(entry("ann", name=None, email=None)),
        [person("ann", email="a@example.com")],
        False,
        {},
        id="missing-directory-values-change-nothing",
    ),
    pytest.param(
        read(entry("ann", disabled="userAccountControl=514 (ACCOUNTDISABLE)")),
        [person("ann")],
        False,
        {
            "offboards": (
                Offboard(
                    "ann",
                    dn("ann"),
                    "directory: disabled (userAccountControl=514 (ACCOUNTDISABLE))",
                ),
            )
        },
        id="disabled-offboards",
    ),
    pytest.param(
        read(entry("ann", disabled="nsAccountLock=TRUE")),
        [person("ann", linked=False)],
        False,
        {"offboards": (Offboard("ann", dn("ann"), "directory: disabled (nsAccountLock=TRUE)"),)},
        id="disabled-offboards-even-before-linking",
    ),
    pytest.param(
        read(entry("ann", disabled="nsAccountLock=TRUE")),
        [person("ann", status="offboarded")],
        False,
        {},
        id="disabled-and-already-offboarded",
    ),
    pytest.param(
        read(entry("bob")),
        [person("ann"), person("bob")],
        False,
        {
            "offboards": (
                Offboard(
                    "ann",
                    dn("ann"),
                    f"directory: entry gone ({dn('ann')} no longer under {BASE} "
                    "or no longer matches the filter)",
                ),
            )
        },
        id="linked-and-gone-offboards",
    ),
    pytest.param(
        read(entry("bob")),
        [person("ann", linked=False), person("bob")],
        False,
        {},
        id="never-linked-and-absent-is-left-alone",
    ),
    pytest.param(
        read(entry("ann")),
        [person("ann", status="offboarded")],
        False,
        {"notes": 1},
        id="enabled-again-is-a-note-not-a-rehire",
    ),
    pytest.param(
        read(entry("ann").__class__(dn="UID=ann,OU=People,DC=example,DC=com", username="ann")),
        [person("ann")],
        False,
        {},
        id="dn-case-does-not-relink",
    ),
]


@pytest.mark.parametrize(("got", "people", "create", "expected"), CASES)
def test_plan(
    got: DirectoryRead, people: list[RegistryPerson], create: bool, expected: dict[str, object]
) -> None:
    plan = plan_sync(got, people, create_people=create)
    assert plan.creates == expected.get("creates", ())
    assert plan.links == expected.get("links", ())
    assert {u.username: u.changes for u in plan.updates} == expected.get("updates", {})
    assert plan.offboards == expected.get("offboards", ())
    assert len(plan.notes) == expected.get("notes", 0)
    assert plan.roles == ()


def test_mapped_roles_follow_groups_one_way() -> None:
    got = read(
        entry("ann", groups=frozenset({DEVOPS})),
        entry("bob"),
        entry("cy", groups=frozenset({DEVOPS})),
        entry("new", groups=frozenset({DEVOPS})),
    )
    people = [
        person("ann"),
        person("bob", roles=frozenset({"devops", "qa"})),
        person("cy", roles=frozenset({"devops"})),
    ]
    plan = plan_sync(got, people, create_people=True, roles={"devops": DEVOPS.upper()})
    assert plan.roles == (
        RoleChange("ann", dn("ann"), "devops", DEVOPS, grant=True),
        RoleChange("bob", dn("bob"), "devops", DEVOPS, grant=False),
        RoleChange("new", dn("new"), "devops", DEVOPS, grant=True),
    )  # qa is not mapped: bob keeps it


# -- the guard --------------------------------------------------------------------------


def check(
    got: DirectoryRead, offboards: int, active: int = 100, last: str | None = BASE
) -> list[str]:
    plan = plan_sync(got, [], create_people=False)
    plan = plan.__class__(
        offboards=tuple(Offboard(f"u{i}", dn(f"u{i}"), "x") for i in range(offboards))
    )
    return [
        t.kind for t in guard.check(got, plan, active_people=active, share=0.1, last_base_dn=last)
    ]


def test_guard() -> None:
    ok = read(entry("ann"))
    assert check(ok, 10) == []
    assert check(ok, 11) == ["too-many"]
    assert check(ok, 1, active=3) == []  # a small team may still lose one person per sync
    assert check(ok, 2, active=3) == ["too-many"]
    assert check(read(), 0) == ["empty"]
    assert check(read(entry("ann"), complete=False), 0) == ["partial"]
    assert check(ok, 0, last="ou=staff,dc=example,dc=com") == ["base-dn-changed"]
    assert check(ok, 0, last=BASE.upper()) == []
    assert check(ok, 0, last=None) == []
    failed = guard.check(
        read(error="no such object"),
        plan_sync(read(), [], create_people=False),
        active_people=3,
        share=0.1,
        last_base_dn=None,
    )
    assert [t.kind for t in failed] == ["failed"]
    assert guard.blocking(failed, allow_mass_offboard=True) == failed
    empty = guard.check(
        read(),
        plan_sync(read(), [], create_people=False),
        active_people=3,
        share=0.1,
        last_base_dn=None,
    )
    assert guard.blocking(empty, allow_mass_offboard=True) == []


# -- settings ---------------------------------------------------------------------------


def settings(table: dict[str, object]) -> tuple[object, list[str]]:
    problems: list[Problem] = []
    got = read_directory(Path("/inv"), Reader("keyward.toml", problems), {"directory": table})
    return got, [str(p) for p in problems]


def test_settings() -> None:
    got, problems = settings(
        {
            "url": "ldaps://dc1.corp.example:636",
            "base_dn": "DC=corp",
            "bind_dn": "CN=svc",
            "password_file": "ldap.pw",
            "ca_file": "/etc/ssl/corp.pem",
            "attributes": {"username": "sAMAccountName", "disabled": "userAccountControl"},
            "roles": {"devops": "CN=DevOps,DC=corp"},
        }
    )
    assert problems == []
    assert got.password_file == Path("/inv/ldap.pw")  # type: ignore[attr-defined]
    assert got.attributes.disabled_rule == "account-control"  # type: ignore[attr-defined]
    assert got.mass_offboard_share == 0.1 and got.create_people is False  # type: ignore[attr-defined]
    assert got.tls  # type: ignore[attr-defined]
    _, problems = settings(
        {
            "url": "http://x",
            "base_dn": "dc=x",
            "bind_dn": "cn=a",
            "password_env": "1BAD",
            "mass_offboard_share": 2,
            "attributes": {"usrname": "uid", "disabled_rule": "maybe"},
            "roles": {"Bad Role": "cn=x"},
        }
    )
    assert problems == [
        "keyward.toml: directory.url: 'http://x' must be ldap://HOST[:PORT] or ldaps://...",
        "keyward.toml: directory.password_env: must be an environment variable name",
        "keyward.toml: directory.mass_offboard_share: must be a share above 0 up to 1 (0.10)",
        "keyward.toml: directory.attributes: unknown field 'usrname' (did you mean 'username'?)",
        "keyward.toml: directory.attributes.disabled_rule: must be one of "
        "flag, account-control, present",
        "keyward.toml: directory.attributes: disabled_rule needs the disabled attribute",
        "keyward.toml: directory.roles: 'Bad Role' is not a valid role name",
    ]


def test_inventory_check_reports_the_directory_section(tmp_path: Path) -> None:
    from keyward.testing.inventory import InventorySpec, write_inventory
    from keyward.testing.keypairs import make_ed25519
    from tests.cli_runner import Keyward

    root = tmp_path / "inventory"
    key = make_ed25519(tmp_path / "agent", comment="keyward-agent")
    spec = InventorySpec(environment="test", login="root", accounts=("app",), access=())
    write_inventory(root, [], spec, key)
    with open(root / "keyward.toml", "a") as toml:
        toml.write('\n[directory]\nurl = "ldap://127.0.0.1"\nbase_dn = "dc=x"\nstarttls = "yes"\n')
    result = Keyward(f"sqlite:///{tmp_path / 'r.db'}", str(root)).fails("inventory", "check")
    assert (
        "keyward.toml: directory.starttls: must be true or false, not a string"
        in result.out + result.err
    )


def test_the_pure_parts_import_no_database_ldap_or_logging() -> None:
    import subprocess
    import sys

    code = (
        "import sys, keyward.directory.diff, keyward.directory.guard, keyward.directory.entries\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'sqlmodel', 'asyncssh', 'ldap3', 'structlog', 'click'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
