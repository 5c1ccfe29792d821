"""``keyward directory sync`` and ``status`` against a real OpenLDAP slapd on loopback.

The guard gets one test per reason it stops a sync; the end-to-end test takes a
person's access away from real sshd hosts because HR disabled them in the directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyward.directory.ldap import read_directory
from keyward.inventory.directory_settings import DirectoryAttributes, DirectorySettings
from keyward.testing.inventory import InventorySpec, write_inventory
from keyward.testing.keypairs import make_ed25519
from keyward.testing.slapd import (
    BIND_DN,
    BIND_PASSWORD,
    LIMITED_DN,
    PEOPLE,
    SUFFIX,
    Group,
    Person,
    Slapd,
    make_tls,
)
from tests.agent_env import AgentEnv
from tests.cli_runner import Keyward

pytestmark = pytest.mark.fleet

STAFF = [Person(f"user{i}", f"User {i}", f"user{i}@example.com") for i in range(10)]


@pytest.fixture
def ldap() -> Iterator[Slapd]:
    with Slapd(
        [
            *STAFF,
            Person("locked", "Locked Out", locked=True),
            Person("adgone", "AD Disabled", account_control=514),
        ],
        address="127.0.2.9",
    ) as server:
        yield server


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    """An inventory without hosts: syncs that offboard nobody never contact one."""
    root = tmp_path / "inventory"
    key = make_ed25519(tmp_path / "keys" / "agent", comment="keyward-agent")
    write_inventory(
        root, [], InventorySpec(environment="test", login="root", accounts=("app",), access=()), key
    )
    return root


def configure(root: Path, ldap: Slapd, **fields: object) -> None:
    """(Re)write ``[directory]`` in ``keyward.toml``; fields override the defaults."""
    password = root / "ldap.pw"
    password.write_text(BIND_PASSWORD + "\n")
    table: dict[str, object] = {
        "url": ldap.url,
        "bind_dn": BIND_DN,
        "password_file": str(password),
        "base_dn": PEOPLE,
        "page_size": 4,
        "create_people": True,
    }
    table.update(fields)
    toml = root / "keyward.toml"
    text = toml.read_text().split("\n[directory]")[0]
    lines = ["", "[directory]"]
    attributes = table.pop("attributes", {"disabled": "nsAccountLock"})
    roles = table.pop("roles", None)
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    lines += ["", "[directory.attributes]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in attributes.items()]  # type: ignore[attr-defined]
    if roles:
        lines += ["", "[directory.roles]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in roles.items()]  # type: ignore[attr-defined]
    toml.write_text(text + "\n".join(lines) + "\n")


@pytest.fixture
def kw(inventory: Path, ldap: Slapd, db_url: str) -> Keyward:
    """The CLI on a fresh registry (each backend) with ``[directory]`` pointing at ``ldap``."""
    configure(inventory, ldap)
    runner = Keyward(db_url, str(inventory))
    runner.ok("init")
    return runner


def events(kw: Keyward, action: str) -> list[dict[str, object]]:
    return [e for e in kw.ok("audit", "log", "--json").json() if e["action"] == action]


def last_sync(kw: Keyward) -> dict[str, object]:
    status = kw.ok("directory", "status", "--json").json()
    return status["last_sync"]  # type: ignore[no-any-return]


# -- reading ---------------------------------------------------------------------------


def test_read_is_paged_and_maps_both_disabled_rules(ldap: Slapd) -> None:
    ldap.add_group(Group("devops", ("user1", "user2")))
    settings = DirectorySettings(
        url=ldap.url,
        base_dn=PEOPLE,
        bind_dn=BIND_DN,
        password_env="PW",
        page_size=3,
        attributes=DirectoryAttributes(disabled="nsAccountLock"),
    )
    got = read_directory(settings, {"PW": BIND_PASSWORD})
    assert got.complete and got.error is None
    by_name = {e.username: e for e in got.entries}
    assert len(by_name) == 12  # four pages of three
    assert by_name["locked"].disabled == "nsAccountLock=TRUE"
    assert by_name["adgone"].disabled is None
    assert by_name["user1"].groups == {f"cn=devops,ou=groups,{SUFFIX}"}
    assert by_name["user3"].email == "user3@example.com" and by_name["user3"].name == "User 3"
    ad = DirectorySettings(
        url=ldap.url,
        base_dn=PEOPLE,
        bind_dn=BIND_DN,
        password_env="PW",
        attributes=DirectoryAttributes(
            disabled="userAccountControl", disabled_rule="account-control"
        ),
    )
    by_name = {e.username: e for e in read_directory(ad, {"PW": BIND_PASSWORD}).entries}
    assert by_name["adgone"].disabled == "userAccountControl=514 (ACCOUNTDISABLE)"
    assert by_name["locked"].disabled is None
    refused = read_directory(settings, {"PW": "wrong"})
    assert refused.error is not None and "invalidCredentials" in refused.error
    missing = read_directory(settings, {})
    assert missing.error == "the directory password variable PW is not set"


# -- applying --------------------------------------------------------------------------


def test_sync_creates_links_updates_and_records(kw: Keyward, ldap: Slapd, inventory: Path) -> None:
    kw.ok("person", "add", "user0", "--name", "Old Name")  # already in the registry: linked
    kw.ok("person", "add", "handkept", "--name", "Contractor")  # never in the directory
    dry = kw.ok("directory", "sync", "--dry-run", "--json").json()
    assert dry["outcome"] == "dry-run"
    assert dry["counts"] == {
        "create": 10,
        "link": 1,
        "update": 1,
        "offboard": 0,
        "grant": 0,
        "revoke": 0,
    }
    assert events(kw, "directory.sync") == []  # a dry run records nothing
    out = kw.ok("directory", "sync").out
    assert "create    user5 (uid=user5,ou=people,dc=example,dc=com)" in out
    people = {p["username"]: p for p in kw.ok("person", "list", "--json").json()}
    assert people["user0"]["full_name"] == "User 0"
    assert people["user7"]["email"] == "user7@example.com"
    assert "locked" not in people and "adgone" in people  # nsAccountLock is the rule here
    created = events(kw, "directory.person-created")
    assert {e["subject"] for e in created} >= {"user1", "user9"}
    assert created[0]["details"]["dn"].startswith("uid=")  # type: ignore[index]
    assert events(kw, "directory.person-linked")[0]["details"] == {"dn": f"uid=user0,{PEOPLE}"}
    sync = last_sync(kw)
    assert sync["outcome"] == "applied" and sync["read"] == 12 and sync["applied_base_dn"] == PEOPLE

    ldap.modify(f"uid=user3,{PEOPLE}", mail="u3@example.org", cn="User Three")
    status = kw.ok("directory", "status", "--json").json()
    assert status["pending"]["changes"]["update"] == [
        {
            "username": "user3",
            "dn": f"uid=user3,{PEOPLE}",
            "changes": {
                "full_name": {"from": "User 3", "to": "User Three"},
                "email": {"from": "user3@example.com", "to": "u3@example.org"},
            },
        }
    ]
    kw.ok("directory", "sync")
    updated = events(kw, "directory.person-updated")
    assert updated[-1]["subject"] == "user3"
    assert kw.ok("directory", "sync", "--json").json()["outcome"] == "unchanged"
    text = kw.ok("directory", "status").out
    assert "unchanged, 12 entries read" in text and "nothing to change" in text
    assert kw.ok("audit", "verify").code == 0


def holders(kw: Keyward, role: str) -> set[str]:
    found = set()
    for user in ("user0", "user1", "user2", "user3"):
        roles = kw.ok("person", "show", user, "--json").json()["roles"]
        if any(r["role"] == role and r["status"] == "active" for r in roles):
            found.add(user)
    return found


def test_mapped_groups_grant_and_revoke_roles(kw: Keyward, ldap: Slapd, inventory: Path) -> None:
    group = f"cn=devops,ou=groups,{SUFFIX}"
    configure(inventory, ldap, roles={"devops": group})
    kw.ok("role", "add", "devops")
    ldap.add_group(Group("devops", ("user1", "user2")))
    kw.ok("directory", "sync")
    assert holders(kw, "devops") == {"user1", "user2"}
    ldap.modify(group, member=f"uid=user2,{PEOPLE}")
    result = kw.ok("directory", "sync", "--dry-run").out
    assert "revoke    devops from user1" in result
    kw.ok("directory", "sync")
    assert holders(kw, "devops") == {"user2"}
    assert [e["details"]["dn"] for e in events(kw, "directory.role-revoked")] == [  # type: ignore[index]
        f"uid=user1,{PEOPLE}"
    ]


# -- the mass-accident guard -----------------------------------------------------------


def refused(kw: Keyward, kind: str, *args: str) -> dict[str, object]:
    """A sync the guard stops: exit 1, nothing changed, an alert, a refused sync event."""
    before = {p["username"]: p["status"] for p in kw.ok("person", "list", "--json").json()}
    result = kw("directory", "sync", "--json", *args)
    assert result.code == 1, str(result)
    out = result.json()
    assert kind in [t["kind"] for t in out["guard"] if t["blocking"]], out
    after = {p["username"]: p["status"] for p in kw.ok("person", "list", "--json").json()}
    assert after == before
    alerts = kw.ok("alerts", "--kind", "directory_guard", "--json").json()
    assert out["alert_id"] in [a["id"] for a in alerts]
    assert last_sync(kw)["outcome"] in ("refused", "failed")
    return out  # type: ignore[no-any-return]


def test_guard_too_many_leavers_until_allowed(kw: Keyward, ldap: Slapd) -> None:
    kw.ok("directory", "sync")
    for uid in ("user1", "user2"):  # 2 of 11 active people: over 10% (one allowed)
        ldap.modify(f"uid={uid},{PEOPLE}", nsAccountLock="TRUE")
    refused(kw, "too-many")
    done = kw("directory", "sync", "--allow-mass-offboard", "--json")
    assert done.code == 0, str(done)
    assert [o["username"] for o in done.json()["changes"]["offboard"]] == ["user1", "user2"]
    statuses = {p["username"]: p["status"] for p in kw.ok("person", "list", "--json").json()}
    assert statuses["user1"] == statuses["user2"] == "offboarded"
    assert statuses["user3"] == "active"
    offboarded = events(kw, "directory.person-offboarded")
    assert offboarded[0]["details"]["reason"] == "directory: disabled (nsAccountLock=TRUE)"  # type: ignore[index]


def test_guard_empty_result(kw: Keyward, ldap: Slapd, inventory: Path) -> None:
    kw.ok("directory", "sync")
    configure(inventory, ldap, filter="(uid=nobody-matches)")
    refused(kw, "empty")


def test_guard_partial_paged_search(kw: Keyward, ldap: Slapd, inventory: Path) -> None:
    kw.ok("directory", "sync")
    configure(inventory, ldap, bind_dn=LIMITED_DN, page_size=2)  # at most 3 entries, then cut
    out = refused(kw, "partial")
    assert out["read"]["complete"] is False  # type: ignore[index]


def test_guard_changed_base_dn(kw: Keyward, ldap: Slapd, inventory: Path) -> None:
    kw.ok("directory", "sync")
    configure(inventory, ldap, base_dn=SUFFIX)  # same people, a different subtree
    refused(kw, "base-dn-changed")
    assert kw("directory", "sync", "--allow-mass-offboard").code == 0
    assert kw.ok("directory", "sync").code == 0  # the new base DN is now the known one


def test_guard_failed_search_cannot_be_overridden(
    kw: Keyward, ldap: Slapd, inventory: Path
) -> None:
    kw.ok("directory", "sync")
    configure(inventory, ldap, base_dn=f"ou=gone,{SUFFIX}")
    out = refused(kw, "failed")
    assert "noSuchObject" in out["read"]["error"]  # type: ignore[index]
    assert kw("directory", "sync", "--allow-mass-offboard").code == 1
    configure(inventory, ldap, url="ldap://127.0.2.9:1", timeout=2)
    refused(kw, "failed")
    assert last_sync(kw)["outcome"] == "failed"


def test_no_directory_section_is_a_usage_error(sqlite_url: str, inventory: Path) -> None:
    runner = Keyward(sqlite_url, str(inventory))
    runner.ok("init")
    assert "no [directory] section" in runner.fails("directory", "sync").err


# -- end to end ------------------------------------------------------------------------


@pytest.fixture
def fleet_ldap(env: AgentEnv) -> Iterator[Slapd]:
    with Slapd(
        [*STAFF[:3], Person("alice", "Alice Doe", "alice@example.com"), Person("bob", "Bob Roe")],
        address="127.0.2.10",
    ) as server:
        yield server


def test_disabled_in_the_directory_cannot_log_in_after_the_next_sync(
    env: AgentEnv, fleet_ldap: Slapd
) -> None:
    configure(env.inventory, fleet_ldap, create_people=False)
    fp = env.person_with_key("alice", "devops")
    env.person_with_key("bob", "devops")
    env.kw.ok("reconcile")
    host = env.hosts[0]
    assert env.can_login(host, env.deploy, "alice")
    env.kw.ok("directory", "sync")  # links alice and bob

    fleet_ldap.modify(f"uid=alice,{PEOPLE}", nsAccountLock="TRUE")
    result = env.kw("directory", "sync")
    assert result.code == 0, str(result)
    for each in env.hosts:
        assert not env.can_login(each, env.deploy, "alice")
        assert env.can_login(each, env.deploy, "bob")
    assert env.kw.ok("offboard", "status", "alice", "--json").json()["status"] == "confirmed"
    report = env.kw.ok("report", "offboarding", "alice").out
    assert "directory: disabled (nsAccountLock=TRUE)" in report and fp in report
    assert "Nothing: every managed file is confirmed." in report
    offboarded = events(env.kw, "directory.person-offboarded")
    assert offboarded[0]["details"]["dn"] == f"uid=alice,{PEOPLE}"  # type: ignore[index]

    fleet_ldap.delete(f"uid=bob,{PEOPLE}")  # deleted rather than disabled
    env.kw.ok("directory", "sync")  # one leaver at a time passes the guard in a small team
    assert not env.can_login(host, env.deploy, "bob")
    reason = env.kw.ok("offboard", "status", "bob", "--json").json()["reason"]
    assert reason.startswith(f"directory: entry gone (uid=bob,{PEOPLE}")


# -- TLS ---------------------------------------------------------------------------------


def test_starttls_and_ldaps_verify_the_certificate(tmp_path: Path) -> None:
    address = "127.0.2.11"
    good = make_tls(tmp_path / "good", address)
    other = make_tls(tmp_path / "other", address)  # a CA that did not sign the server
    with Slapd(STAFF[:2], address=address, tls=good) as server:

        def read(url: str, ca: Path, starttls: bool = False) -> tuple[int, str | None]:
            settings = DirectorySettings(
                url=url,
                base_dn=PEOPLE,
                bind_dn=BIND_DN,
                password_env="PW",
                starttls=starttls,
                ca_file=ca,
                timeout=5,
            )
            got = read_directory(settings, {"PW": BIND_PASSWORD})
            return len(got.entries), got.error

        assert read(server.url, good.ca, starttls=True) == (2, None)
        assert read(server.ldaps_url, good.ca) == (2, None)
        count, error = read(server.ldaps_url, other.ca)
        assert count == 0 and error is not None and "certificate verify failed" in error
        count, error = read(server.url, other.ca, starttls=True)
        assert count == 0 and error is not None
    named = make_tls(tmp_path / "named", address, name="ldap.example.com")
    with Slapd(STAFF[:2], address=address, tls=named) as server:
        settings = DirectorySettings(
            url=server.ldaps_url,
            base_dn=PEOPLE,
            bind_dn=BIND_DN,
            password_env="PW",
            ca_file=named.ca,
            timeout=5,
        )
        error = read_directory(settings, {"PW": BIND_PASSWORD}).error
        assert error is not None and "127.0.2.11" in error  # the name does not match
