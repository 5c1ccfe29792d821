"""The desired state, as tables of cases: registry + inventory + now -> lines per file."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyward.desired import FileTarget, compute_desired, render_lines
from keyward.errors import UsageError
from keyward.inventory.model import (
    AccessRule,
    AgentSettings,
    BreakGlass,
    Environment,
    Host,
    Inventory,
)
from keyward.inventory.policy import PolicySettings
from keyward.keys import PublicKey, parse_public_key
from keyward.state import GrantRecord, KeyRecord, PersonRecord, RegistrySnapshot
from keyward.testing.keypairs import make_ed25519

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PublicKey]:
    base = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("agent", "alice", "alice2", "bob", "glass"):
        path = make_ed25519(base / name, f"{name}@x")
        out[name] = parse_public_key(Path(f"{path}.pub").read_text())
    return out


def host(
    name: str = "web-1",
    env: str = "prod",
    customer: str | None = None,
    groups: tuple[str, ...] = ("web",),
) -> Host:
    return Host(
        name,
        env,
        f"{name}.example.com",
        22,
        "root",
        ("%h/.ssh/authorized_keys",),
        "exclusive",
        groups,
        ("deploy",),
        customer,
    )


def inventory(
    hosts: tuple[Host, ...],
    access: tuple[AccessRule, ...],
    glass: tuple[BreakGlass, ...] = (),
    min_attestation: str = "none",
) -> Inventory:
    env = Environment("prod", min_attestation, None, hosts, access, glass, "prod.toml")
    agent = AgentSettings(Path("/k"), Path("/k.pub"), Path("/kh"), 10, 5.0, "python3")
    return Inventory(Path("/inv"), agent, PolicySettings(365, 3072, None), (env,))


def rule(
    roles: tuple[str, ...] = ("devops",),
    accounts: tuple[str, ...] = ("deploy",),
    options: tuple[str, ...] = (),
    groups: tuple[str, ...] | None = None,
) -> AccessRule:
    return AccessRule("prod", roles, accounts, groups, None, options, "prod.toml: access[0]")


def snapshot(
    keys: dict[str, PublicKey],
    *,
    status: str = "active",
    attestation: str = "none",
    key_expires: datetime = NOW + timedelta(days=100),
    revoked: bool = False,
    grants: tuple[GrantRecord, ...] | None = None,
) -> RegistrySnapshot:
    records = (
        KeyRecord(
            keys["alice"],
            "alice",
            attestation,
            NOW - timedelta(days=1),
            key_expires,
            NOW if revoked else None,
        ),
    )
    if grants is None:
        grants = (GrantRecord("alice", "devops", "bob", NOW - timedelta(days=1), "t"),)
    return RegistrySnapshot({"alice": PersonRecord("alice", "Alice", status)}, records, grants)


def lines_for(desired: dict[FileTarget, object], account: str = "deploy", h: str = "web-1"):  # type: ignore[no-untyped-def]
    return desired[FileTarget(h, account, "%h/.ssh/authorized_keys")].lines  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("case", "kwargs", "deployed"),
    [
        ("granted", {}, True),
        ("offboarded person", {"status": "offboarded"}, False),
        ("revoked key", {"revoked": True}, False),
        ("expired key", {"key_expires": NOW - timedelta(seconds=1)}, False),
        (
            "lapsed grant",
            {
                "grants": (
                    GrantRecord("alice", "devops", "bob", NOW, "t", until=NOW - timedelta(hours=1)),
                )
            },
            False,
        ),
        ("other role", {"grants": (GrantRecord("alice", "qa", "bob", NOW, "t"),)}, False),
        (
            "request for another env",
            {
                "grants": (
                    GrantRecord(
                        "alice",
                        "devops",
                        "bob",
                        NOW,
                        "t",
                        until=NOW + timedelta(hours=1),
                        environment="test",
                    ),
                )
            },
            False,
        ),
        (
            "request for this env",
            {
                "grants": (
                    GrantRecord(
                        "alice",
                        "devops",
                        "bob",
                        NOW,
                        "t",
                        until=NOW + timedelta(hours=1),
                        environment="prod",
                    ),
                )
            },
            True,
        ),
        (
            "customer grant elsewhere",
            {"grants": (GrantRecord("alice", "devops", "bob", NOW, "t", customer="acme"),)},
            False,
        ),
    ],
)
def test_who_is_deployed(
    keys: dict[str, PublicKey], case: str, kwargs: dict, deployed: bool
) -> None:  # type: ignore[type-arg]
    inv = inventory((host(),), (rule(),))
    desired = compute_desired(snapshot(keys, **kwargs), inv, inv.hosts(), keys["agent"], NOW)
    owners = [line.owner for line in lines_for(desired)]
    assert (owners == ["alice"]) is deployed, case


@pytest.mark.parametrize(
    ("minimum", "attestation", "deployed"),
    [
        ("none", "none", True),
        ("admin", "none", False),
        ("admin", "admin", True),
        ("proof", "admin", False),
        ("proof", "proof", True),
        ("proof", "sk", True),
        ("sk", "proof", False),
    ],
)
def test_min_attestation(
    keys: dict[str, PublicKey], minimum: str, attestation: str, deployed: bool
) -> None:
    inv = inventory((host(),), (rule(),), min_attestation=minimum)
    desired = compute_desired(snapshot(keys, attestation=attestation), inv, inv.hosts(), None, NOW)
    assert bool(lines_for(desired)) is deployed


def test_expiry_time_is_the_earlier_of_key_and_grant(keys: dict[str, PublicKey]) -> None:
    inv = inventory((host(),), (rule(options=("no-pty",)),))
    until = NOW + timedelta(days=3)
    snap = snapshot(keys, grants=(GrantRecord("alice", "devops", "bob", NOW, "t", until=until),))
    (line,) = lines_for(compute_desired(snap, inv, inv.hosts(), None, NOW))
    assert line.options == ("no-pty", 'expiry-time="20260604120000Z"')
    assert line.render().startswith('no-pty,expiry-time="20260604120000Z" ssh-ed25519 ')
    assert line.render().endswith(f" keyward:alice:{keys['alice'].short_fingerprint}")


def test_agent_and_break_glass_on_login_account_only_where_declared(
    keys: dict[str, PublicKey],
) -> None:
    glass = BreakGlass("prod", ("root",), keys["glass"], None, None, (), "prod.toml: bg[0]")
    inv = inventory((host(),), (rule(),), glass=(glass,))
    desired = compute_desired(snapshot(keys), inv, inv.hosts(), keys["agent"], NOW)
    root = [(line.kind, line.owner) for line in lines_for(desired, "root")]
    assert root == [("agent", "agent"), ("break-glass", "break-glass")]
    assert [line.kind for line in lines_for(desired, "deploy")] == ["person"]
    text = desired[FileTarget("web-1", "root", "%h/.ssh/authorized_keys")].exclusive_content()
    assert text.decode().startswith("# This file is managed by keyward.")
    assert len([ln for ln in text.decode().splitlines() if not ln.startswith("#")]) == 2


def test_sk_attested_keys_get_verify_required(keys: dict[str, PublicKey]) -> None:
    inv = inventory((host(),), (rule(),))
    (line,) = lines_for(
        compute_desired(snapshot(keys, attestation="sk"), inv, inv.hosts(), None, NOW)
    )
    assert "verify-required" in line.options


def test_group_scoping_and_same_key_with_two_option_sets(keys: dict[str, PublicKey]) -> None:
    web, db = host("web-1"), host("db-1", groups=("db",))
    rules = (rule(groups=("web",)), rule(options=("no-pty",)))
    inv = inventory((web, db), rules)
    desired = compute_desired(snapshot(keys), inv, inv.hosts(), None, NOW)
    assert len(lines_for(desired, h="web-1")) == 2  # sshd treats them as alternatives
    assert [line.options[0] for line in lines_for(desired, h="db-1")] == ["no-pty"]


def test_output_is_deterministic(keys: dict[str, PublicKey]) -> None:
    inv = inventory((host(),), (rule(roles=("devops", "qa")),))
    snap = snapshot(keys)
    snap2 = replace(snap, grants=tuple(reversed(snap.grants)))
    a = compute_desired(snap, inv, inv.hosts(), keys["agent"], NOW)
    b = compute_desired(snap2, inv, inv.hosts(), keys["agent"], NOW)
    assert {t: d.exclusive_content() for t, d in a.items()} == {
        t: d.exclusive_content() for t, d in b.items()
    }


def test_file_order_and_dedup_with_one_rule_and_with_several(keys: dict[str, PublicKey]) -> None:
    """People sort by name whatever the grant order; a key given twice is written once."""
    people = {n: PersonRecord(n, n.title(), "active") for n in ("alice", "bob")}
    records = tuple(
        KeyRecord(keys[k], owner, "none", NOW - timedelta(days=1), NOW + timedelta(days=9))
        for k, owner in (("bob", "bob"), ("alice2", "alice"), ("alice", "alice"))
    )
    grants = (
        GrantRecord("bob", "qa", "root", NOW, "t"),
        GrantRecord("alice", "devops", "root", NOW, "t"),
        GrantRecord("bob", "devops", "root", NOW, "t"),
    )
    snap = RegistrySnapshot(people, records, grants)
    glass = BreakGlass("prod", ("root",), keys["glass"], None, None, (), "prod.toml")
    one = inventory(
        (host(),), (rule(roles=("devops", "qa"), accounts=("deploy", "root")),), (glass,)
    )
    several = inventory(
        (host(),),
        (rule(roles=("qa",), accounts=("root",)), rule(accounts=("deploy", "root"))),
        (glass,),
    )
    for inv in (one, several):
        desired = compute_desired(snap, inv, inv.hosts(), keys["agent"], NOW)
        root = lines_for(desired, account="root")
        assert [(line.kind, line.owner) for line in root] == [
            ("agent", "agent"),
            ("break-glass", "break-glass"),
            ("person", "alice"),
            ("person", "alice"),
            ("person", "bob"),
        ]
        assert len({line.key.blob for line in root}) == 5  # bob's key once, not twice
        assert [line.owner for line in lines_for(desired)] == ["alice", "alice", "bob"]
        for file in desired.values():
            assert file.exclusive_content() == render_lines(file.lines)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_left_as_it_was(keys: dict[str, PublicKey], enabled: bool) -> None:
    """compute_desired pauses cycle collection for speed; the caller's setting survives it."""
    import gc

    inv = inventory((host(),), (rule(),))
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        compute_desired(snapshot(keys), inv, inv.hosts(), None, NOW)
        assert gc.isenabled() is enabled
        with pytest.raises(UsageError):  # an error inside leaves it as it was too
            compute_desired(snapshot(keys), inv, (replace(host(), environment="nope"),), None, NOW)
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
