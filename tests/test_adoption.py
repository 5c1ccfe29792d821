"""The pure parts of adopting a fleet, as tables: reading lines, the report's grouping,
suggested grants, and the switch-over guard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyward.adoption import guard
from keyward.adoption.lines import Sighting, Where, read_file
from keyward.adoption.report import Decision, ScanData, ScannedHost, SeenKey, build_report
from keyward.adoption.suggest import suggest
from keyward.desired import DesiredFile, DesiredLine, FileTarget
from keyward.inventory.model import (
    AccessRule,
    AgentSettings,
    Environment,
    Host,
    Inventory,
    PolicySettings,
)
from keyward.keys import DEFAULT_POLICY, PublicKey, parse_public_key
from keyward.plan import FilePlan, HostPlan, LineChange
from keyward.state import AdoptionGuard, GrantRecord, KeyRecord, PersonRecord, RegistrySnapshot
from keyward.testing.keypairs import make_ed25519

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=300)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PublicKey]:
    base = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("alice", "bob", "carol", "ci", "x"):
        path = make_ed25519(base / name, f"{name}@x")
        out[name] = parse_public_key(Path(f"{path}.pub").read_text())
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    line = small.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    out["rsa"] = parse_public_key(line.decode(), DEFAULT_POLICY.__class__(min_rsa_bits=1024))
    return out


def where(host: str = "web-1", account: str = "root") -> Where:
    return Where(host, account, "%h/.ssh/authorized_keys", f"/home/{account}/.ssh/authorized_keys")


def seen(
    key: PublicKey,
    host: str = "web-1",
    account: str = "root",
    lineno: int = 1,
    options: tuple[str, ...] = (),
) -> Sighting:
    return Sighting(
        where(host, account),
        lineno,
        key.fingerprint,
        key.key_type,
        key.bits,
        key.blob,
        options,
        key.comment,
    )


def snapshot(
    keys: dict[str, PublicKey],
    owners: dict[str, str],
    status: dict[str, str] | None = None,
    grants: tuple[GrantRecord, ...] = (),
    attestation: str = "none",
) -> RegistrySnapshot:
    people = {
        p: PersonRecord(p, p.title(), (status or {}).get(p, "active")) for p in owners.values()
    }
    records = tuple(
        KeyRecord(keys[k], owner, attestation, NOW - timedelta(days=1), LATER)
        for k, owner in owners.items()
    )
    return RegistrySnapshot(people, records, grants)


def host(name: str, groups: tuple[str, ...] = ()) -> Host:
    return Host(
        name,
        "prod",
        name,
        22,
        "root",
        ("%h/.ssh/authorized_keys",),
        "exclusive",
        groups,
        ("deploy", "app"),
    )


def inventory(
    hosts: tuple[Host, ...], rules: tuple[AccessRule, ...], att: str = "none"
) -> Inventory:
    env = Environment("prod", att, None, hosts, rules, (), "prod.toml")
    agent = AgentSettings(Path("/k"), Path("/k.pub"), Path("/kh"), 10, 5.0, "python3")
    return Inventory(Path("/inv"), agent, PolicySettings(365, 3072, None), (env,))


def rule(
    roles: tuple[str, ...], accounts: tuple[str, ...], groups: tuple[str, ...] | None = None
) -> AccessRule:
    return AccessRule("prod", roles, accounts, groups, None, (), "prod.toml: access[0]")


# -- reading a file ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "found", "skipped"),
    [
        ("{alice}\n", 1, []),
        ("# comment\n\n{alice}\n{bob}\n", 2, []),
        ('from="10.0.0.0/8",no-pty {alice} odd comment\n', 1, []),
        ("bogus-option {alice}\n", 0, ["bad key options: unknown key option"]),
        ("ssh-ed25519 !!!notbase64\n", 0, ["key data is not valid base64"]),
        ('command="unterminated {alice}\n', 0, ["invalid key option string"]),
        ("{alice}\n\x00{bob}\n", 1, []),
    ],
)
def test_read_file(
    keys: dict[str, PublicKey], template: str, found: int, skipped: list[str]
) -> None:
    content = template.format(alice=keys["alice"].openssh(), bob=keys["bob"].openssh())
    sightings, unhonoured = read_file(where(), content.encode())
    assert len(sightings) == found
    assert [u.reason for u in unhonoured] == skipped


@pytest.mark.parametrize("data", [b"\xff\xfe" * 50, b"\n" * 1000, b"ssh-rsa " + b"A" * 5000, b""])
def test_read_file_never_raises(data: bytes) -> None:
    read_file(where(), data)


def test_options_and_comment_are_kept(keys: dict[str, PublicKey]) -> None:
    content = f'from="10.0.0.0/8",no-pty {keys["alice"].openssh()} alice at home\n'.encode()
    (s,), _ = read_file(where(), content)
    assert s.options == ('from="10.0.0.0/8"', "no-pty")
    assert s.comment == "alice at home"
    assert s.fingerprint == keys["alice"].fingerprint


# -- the guard --------------------------------------------------------------------


def plan_with(*changes: LineChange) -> HostPlan:
    target = FileTarget("web-1", "root", "%h/.ssh/authorized_keys")
    return HostPlan("web-1", (FilePlan(target, "update", "/root/.ssh/authorized_keys", changes),))


def drift(fp: str | None, owner: str | None = None, reason: str = "drift") -> LineChange:
    return LineChange("remove", fp, owner, reason, (), 3)


@pytest.mark.parametrize(
    ("change", "state", "held"),
    [
        (drift("SHA256:a"), AdoptionGuard(), False),  # never scanned: exclusive as before
        (
            drift("SHA256:a"),
            AdoptionGuard({"web-1": frozenset({"SHA256:a"})}, frozenset({"web-1"})),
            True,
        ),
        (
            drift("SHA256:a", owner="alice"),
            AdoptionGuard({"web-1": frozenset({"SHA256:a"})}, frozenset({"web-1"})),
            False,
        ),
        (
            drift("SHA256:a"),
            AdoptionGuard(
                {"web-1": frozenset({"SHA256:a"})}, frozenset({"web-1"}), frozenset({"SHA256:a"})
            ),
            False,
        ),
        (
            drift("SHA256:new"),
            AdoptionGuard({"web-1": frozenset({"SHA256:a"})}, frozenset({"web-1"})),
            False,
        ),
        (drift("SHA256:new"), AdoptionGuard({"web-1": frozenset({"SHA256:a"})}, frozenset()), True),
        (
            drift("SHA256:a", reason="duplicate"),
            AdoptionGuard({"web-1": frozenset({"SHA256:a"})}, frozenset()),
            False,
        ),
        (
            drift(None, reason="unparsable"),
            AdoptionGuard({"web-1": frozenset()}, frozenset()),
            False,
        ),
        (
            LineChange("add", "SHA256:a", "alice", "granted"),
            AdoptionGuard({"web-1": frozenset({"SHA256:a"})}),
            False,
        ),
        (drift("SHA256:a"), AdoptionGuard({"web-2": frozenset({"SHA256:a"})}), False),
    ],
)
def test_guard(change: LineChange, state: AdoptionGuard, held: bool) -> None:
    assert bool(guard.held_lines("web-1", plan_with(change), state)) is held
    refusal = guard.check("web-1", plan_with(change), state)
    assert (refusal is not None) is held


def test_guard_refusal_is_one_line_naming_every_line() -> None:
    state = AdoptionGuard(
        {"web-1": frozenset({"SHA256:a", "SHA256:b"})},
        frozenset({"web-1"}),
        last_login={"SHA256:a": datetime(2025, 1, 2, 3, 4, tzinfo=UTC)},
    )
    message = guard.check("web-1", plan_with(drift("SHA256:a"), drift("SHA256:b")), state)
    assert message is not None and "\n" not in message
    assert "root /root/.ssh/authorized_keys:3 SHA256:a (last login 2025-01-02 03:04 UTC)" in message
    assert "SHA256:b (never logged in)" in message
    assert message.startswith("web-1: refusing to switch to exclusive: it would remove 2 lines")


# -- the report -------------------------------------------------------------------


def scan_data(sightings: list[Sighting]) -> ScanData:
    fps = {s.fingerprint: s for s in sightings}
    keys = tuple(SeenKey(fp, s.key_type, s.bits, s.comment, NOW, NOW) for fp, s in fps.items())
    hosts = tuple(
        ScannedHost(h, "prod", "managed-block", NOW, None)
        for h in sorted({s.where.host for s in sightings})
    )
    return ScanData(hosts, keys, tuple(sightings), ())


def test_report_groups_and_flags(keys: dict[str, PublicKey]) -> None:
    sightings = [
        seen(keys["alice"], "web-1", "root"),
        seen(keys["alice"], "web-2", "root"),
        seen(keys["ci"], "web-1", "deploy"),
        seen(keys["ci"], "web-2", "app"),
        seen(keys["carol"], "web-1", "deploy", 2),
        seen(keys["rsa"], "web-2", "deploy"),
        seen(keys["x"], "web-2", "root", 2),
    ]
    snap = snapshot(keys, {"alice": "alice", "carol": "carol"}, {"carol": "offboarded"})
    decisions = {
        keys["x"].fingerprint: Decision(keys["x"].fingerprint, "ignore", "test box", "admin", NOW)
    }
    target = FileTarget("web-1", "root", "%h/.ssh/authorized_keys")
    targets = [
        FileTarget(h, a, "%h/.ssh/authorized_keys")
        for h in ("web-1", "web-2")
        for a in ("root", "deploy", "app")
    ]
    desired = {t: DesiredFile(t, "exclusive", ()) for t in targets}
    desired[target] = DesiredFile(
        target, "exclusive", (DesiredLine(keys["alice"], (), "alice", "person"),)
    )
    logins = {keys["alice"].fingerprint: NOW}
    rep = build_report(
        scan_data(sightings), snap, DEFAULT_POLICY, {}, decisions, logins, desired, NOW
    )
    by = {f.fingerprint: f for f in rep.keys}
    alice, ci, carol = (
        by[keys["alice"].fingerprint],
        by[keys["ci"].fingerprint],
        by[keys["carol"].fingerprint],
    )
    weak, ignored = by[keys["rsa"].fingerprint], by[keys["x"].fingerprint]
    assert (alice.kind, alice.owner, alice.flags, alice.accounted) == (
        "registered",
        "alice",
        (),
        True,
    )
    assert len(alice.places) == 2
    assert (ci.kind, ci.flags, ci.accounted) == ("unknown", ("shared", "never-used"), False)
    assert carol.flags == ("offboarded", "never-used") and carol.accounted
    assert weak.flags == ("weak", "never-used") and "2048 bits" in (weak.weak_reason or "")
    assert ignored.accounted and ignored.decision is not None
    assert rep.keys[0].kind == "unknown"  # the open findings first
    web1 = {h.host.host: h for h in rep.hosts}["web-1"]
    # alice's line on web-1 root is desired: kept; ci (unknown) and carol's go.
    assert [(r.account, r.what, r.accounted) for r in web1.removals] == [
        ("deploy", "unknown", False),
        ("deploy", "carol", True),
    ]
    assert web1.unaccounted == 1
    web2 = {h.host.host: h for h in rep.hosts}["web-2"]
    assert {r.fingerprint for r in web2.removals} >= {keys["alice"].fingerprint}


def test_report_keeps_a_line_only_with_the_desired_options(keys: dict[str, PublicKey]) -> None:
    target = FileTarget("web-1", "root", "%h/.ssh/authorized_keys")
    line = DesiredLine(keys["alice"], ("no-pty",), "alice", "person")
    desired = {target: DesiredFile(target, "exclusive", (line,))}
    data = scan_data([seen(keys["alice"], options=("no-pty",)), seen(keys["alice"], lineno=2)])
    snap = snapshot(keys, {"alice": "alice"})
    rep = build_report(data, snap, DEFAULT_POLICY, {}, {}, {}, desired, NOW)
    assert [r.lineno for r in rep.hosts[0].removals] == [2]


# -- suggestions ------------------------------------------------------------------


def test_suggest_picks_covering_roles(keys: dict[str, PublicKey]) -> None:
    hosts = (host("web-1", ("web",)), host("web-2", ("web",)), host("db-1", ("db",)))
    rules = (
        rule(("devops",), ("root", "deploy")),
        rule(("web-deploy",), ("deploy",), groups=("web",)),
        rule(("dba",), ("root",), groups=("db",)),
    )
    inv = inventory(hosts, rules)
    sightings = [
        seen(keys["alice"], "web-1", "deploy"),
        seen(keys["alice"], "web-2", "deploy"),
        seen(keys["bob"], "db-1", "root"),
        seen(keys["bob"], "web-1", "root"),
        seen(keys["carol"], "web-1", "root"),  # offboarded: nothing suggested
        seen(keys["ci"], "web-1", "app"),  # nobody's: nothing suggested
        seen(keys["x"], "web-1", "app"),  # x's owner: no rule gives app
    ]
    snap = snapshot(
        keys,
        {"alice": "alice", "bob": "bob", "carol": "carol", "x": "xavier"},
        {"carol": "offboarded"},
    )
    out = suggest(sightings, snap, inv, NOW)
    assert [(g.person, g.role, g.places) for g in out.grants] == [
        ("alice", "web-deploy", (("web-1", "deploy"), ("web-2", "deploy"))),
        ("bob", "devops", (("db-1", "root"), ("web-1", "root"))),
    ]
    assert [(u.person, u.host, u.account) for u in out.uncovered] == [("xavier", "web-1", "app")]


def test_suggest_skips_roles_already_held_and_warns_on_attestation(
    keys: dict[str, PublicKey],
) -> None:
    inv = inventory((host("web-1"),), (rule(("devops",), ("root",)),), att="proof")
    grant = GrantRecord("alice", "devops", "admin", NOW, "ops")
    snap = snapshot(keys, {"alice": "alice"}, grants=(grant,))
    out = suggest([seen(keys["alice"])], snap, inv, NOW)
    assert out.grants == ()
    assert len(out.uncovered) == 1 and "min_attestation proof" in out.uncovered[0].why
