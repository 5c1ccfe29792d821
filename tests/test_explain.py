"""``keyward explain``: can a person log in, and if not, exactly why.

A table of cases over the pure module (each reason, and that the answer agrees
with ``compute_desired``), then the real CLI on a real sshd fleet for the issue's
case: a key registered without --attest deploys nowhere in an ``admin``
environment, and explain says so and names ``key attest`` as the fix.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyward.desired import FileTarget, compute_desired
from keyward.errors import UsageError
from keyward.explain import HostSync, Place, RecordedFile, describe, explain, place_json
from keyward.inventory.model import (
    AccessRule,
    AgentSettings,
    Environment,
    Host,
    Inventory,
)
from keyward.inventory.policy import PolicySettings
from keyward.keys import PublicKey, parse_public_key
from keyward.sshsig import proof_statement
from keyward.state import GrantRecord, KeyRecord, PersonRecord, RegistrySnapshot
from keyward.testing.keypairs import make_ed25519
from tests.agent_env import AgentEnv
from tests.cli_runner import Keyward
from tests.keygen import ssh_sign

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> PublicKey:
    path = make_ed25519(tmp_path_factory.mktemp("keys") / "alice", "alice@x")
    return parse_public_key(Path(f"{path}.pub").read_text())


def host(name: str = "web-1", customer: str | None = None) -> Host:
    return Host(
        name,
        "prod",
        f"{name}.example.com",
        22,
        "root",
        ("%h/.ssh/authorized_keys",),
        "exclusive",
        ("web",),
        ("deploy",),
        customer,
    )


def inventory(min_attestation: str = "none", hosts: tuple[Host, ...] = ()) -> Inventory:
    rule = AccessRule("prod", ("devops",), ("deploy",), None, None, (), "prod.toml: access[0]")
    env = Environment("prod", min_attestation, None, hosts or (host(),), (rule,), (), "prod.toml")
    agent = AgentSettings(Path("/k"), Path("/k.pub"), Path("/kh"), 10, 5.0, "python3")
    return Inventory(Path("/inv"), agent, PolicySettings(365, 3072, None), (env,))


def grant(**kw: object) -> GrantRecord:
    base = GrantRecord("alice", "devops", "bob", NOW - DAY, "ticket-1")
    return replace(base, **kw)  # type: ignore[arg-type]


def snapshot(
    key: PublicKey,
    *,
    status: str = "active",
    attestation: str = "admin",
    keys: bool = True,
    expires: datetime = NOW + 100 * DAY,
    revoked: bool = False,
    grants: tuple[GrantRecord, ...] | None = None,
    restricted: dict[str, frozenset[str]] | None = None,
) -> RegistrySnapshot:
    records = (
        (KeyRecord(key, "alice", attestation, NOW - DAY, expires, NOW if revoked else None),)
        if keys
        else ()
    )
    return RegistrySnapshot(
        {"alice": PersonRecord("alice", "Alice", status)},
        records,
        (grant(),) if grants is None else grants,
        restricted=restricted or {},
    )


LAPSED = grant(until=NOW - timedelta(hours=1))
CASES: list[tuple[str, dict[str, object], dict[str, object], list[str]]] = [
    # (case, snapshot kwargs, inventory kwargs, reason codes; [] = can log in)
    ("granted", {}, {}, []),
    ("offboarded", {"status": "offboarded"}, {}, ["offboarded"]),
    ("failure mode suspend", {"restricted": {"alice": frozenset()}}, {}, ["failure-mode"]),
    ("failure mode restrict", {"restricted": {"alice": frozenset({"192.0.2.7"})}}, {}, []),
    ("no key", {"keys": False}, {}, ["no-key"]),
    ("revoked key", {"revoked": True}, {}, ["keys-unusable"]),
    ("expired key", {"expires": NOW - timedelta(seconds=1)}, {}, ["keys-unusable"]),
    ("no grant", {"grants": (grant(role="qa"),)}, {}, ["no-grant"]),
    ("other customer", {"grants": (grant(customer="acme"),)}, {}, ["other-customer"]),
    (
        "request for another environment",
        {"grants": (grant(environment="staging", request_id=7),)},
        {},
        ["other-environment"],
    ),
    (
        "attestation none < admin",
        {"attestation": "none"},
        {"min_attestation": "admin"},
        ["attestation"],
    ),
    ("attestation admin < sk", {}, {"min_attestation": "sk"}, ["attestation"]),
    ("lapsed grant", {"grants": (LAPSED,)}, {}, ["grant-lapsed"]),
    (
        "lapsed request",
        {"grants": (grant(environment="prod", request_id=3, until=NOW - DAY),)},
        {},
        ["grant-lapsed"],
    ),
    (
        "lapsed grant and low attestation: both named, attestation first",
        {"grants": (LAPSED,), "attestation": "none"},
        {"min_attestation": "admin"},
        ["attestation", "grant-lapsed"],
    ),
    ("no key and no grant", {"keys": False, "grants": ()}, {}, ["no-key", "no-grant"]),
    ("a lapsed grant beside a live one", {"grants": (LAPSED, grant(role="devops"))}, {}, []),
]


@pytest.mark.parametrize(("case", "snap_kw", "inv_kw", "codes"), CASES, ids=[c[0] for c in CASES])
def test_reasons_walk_in_order_and_agree_with_the_desired_state(
    key: PublicKey,
    case: str,
    snap_kw: dict[str, object],
    inv_kw: dict[str, object],
    codes: list[str],
) -> None:
    snap = snapshot(key, **snap_kw)  # type: ignore[arg-type]
    inv = inventory(**inv_kw)  # type: ignore[arg-type]
    (place,) = explain(snap, inv, "alice", {}, NOW, "web-1", "deploy")
    desired = compute_desired(snap, inv, inv.hosts(), None, NOW)
    deployed = any(
        line.owner == "alice"
        for line in desired[FileTarget("web-1", "deploy", "%h/.ssh/authorized_keys")].lines
    )
    assert place.can_login is deployed is (codes == []), case
    assert [r.code for r in place.reasons] == codes, describe(place)
    assert "unexplained" not in describe(place)
    if place.can_login:
        assert place.access[0].fingerprint == key.fingerprint
        assert place.access[0].roles == ("devops",)
        assert "role devops (granted by bob)" in place.access[0].via
        assert "CAN log in" in describe(place)
    else:
        assert describe(place).startswith("web-1 deploy: CANNOT log in: ")
    assert json.loads(json.dumps(place_json(place)))["reasons"] == [
        {"code": r.code, "message": r.message, "fix": r.fix} for r in place.reasons
    ]


def test_attestation_reason_names_the_levels_and_key_attest(key: PublicKey) -> None:
    snap = snapshot(key, attestation="none")
    (place,) = explain(snap, inventory("admin"), "alice", {}, NOW, "web-1", "deploy")
    (reason,) = place.reasons
    assert "attestation none, below prod's min_attestation admin" in reason.message
    assert reason.fix is not None
    assert f"keyward key attest {key.fingerprint} --attest admin" in reason.fix
    # Only a FIDO key can meet "sk": attesting this one would not help.
    (place,) = explain(snapshot(key), inventory("sk"), "alice", {}, NOW, "web-1", "deploy")
    assert place.reasons[0].fix is not None and "needs a FIDO security key" in place.reasons[0].fix


def test_reasons_name_the_grant_and_the_fix(key: PublicKey) -> None:
    hosts = (host("web-1", customer="acme"), host("web-2", customer="other"))
    inv = inventory(hosts=hosts)
    snap = snapshot(key, grants=(grant(customer="acme"),))
    places = explain(snap, inv, "alice", {}, NOW)
    assert [(p.host, p.account, p.can_login) for p in places] == [
        ("web-1", "deploy", True),
        ("web-2", "deploy", False),
    ]
    assert places[1].reasons[0].message == (
        "role devops (granted by bob) is limited to customer acme; web-2 belongs to customer other"
    )
    no_grant = explain(snapshot(key, grants=(grant(role="qa"),)), inv, "alice", {}, NOW)[0]
    assert "for role devops (prod.toml: access[0]); alice holds qa" in no_grant.reasons[0].message
    assert no_grant.reasons[0].fix == "keyward role grant devops alice --reason TEXT"
    # The login account has no access rule: nobody but the agent gets in there.
    root = explain(snapshot(key), inv, "alice", {}, NOW, "web-1", "root")[0]
    assert [r.code for r in root.reasons] == ["no-access-rule"]


def test_a_second_key_below_the_minimum_is_noted_where_the_first_gets_in(
    key: PublicKey, tmp_path: Path
) -> None:
    other = parse_public_key(Path(f"{make_ed25519(tmp_path / 'k2', 'k2@x')}.pub").read_text())
    weak = KeyRecord(other, "alice", "none", NOW - DAY, NOW + 100 * DAY)
    snap = snapshot(key)
    snap = replace(snap, keys=(*snap.keys, weak), by_fingerprint={})
    (place,) = explain(snap, inventory("admin"), "alice", {}, NOW, "web-1", "deploy")
    assert place.can_login and [a.fingerprint for a in place.access] == [key.fingerprint]
    assert place.notes == (
        f"key {other.fingerprint} is not deployed: attestation none is below min_attestation admin",
    )


def test_restricted_person_is_shown_with_the_from_option(key: PublicKey) -> None:
    snap = snapshot(key, restricted={"alice": frozenset({"192.0.2.7"})})
    (place,) = explain(snap, inventory(), "alice", {}, NOW, "web-1", "deploy")
    assert 'from="192.0.2.7"' in place.access[0].options
    assert any(o.startswith("expiry-time=") for o in place.access[0].options)


def test_sync_is_judged_against_the_recorded_file(key: PublicKey) -> None:
    inv = inventory()
    snap = snapshot(key)
    target = FileTarget("web-1", "deploy", "%h/.ssh/authorized_keys")
    digest = compute_desired(snap, inv, inv.hosts(), None, NOW)[target].content_digest()
    last = NOW - timedelta(minutes=5)

    def sync(sha: str, fps: frozenset[str], error: str | None = None) -> Place:
        state = HostSync(
            "web-1", last, last, error, {"deploy:%h/.ssh/authorized_keys": RecordedFile(sha, fps)}
        )
        return explain(snap, inv, "alice", {"web-1": state}, NOW, "web-1", "deploy")[0]

    assert explain(snap, inv, "alice", {}, NOW, "web-1", "deploy")[0].sync.status == (
        "never-reconciled"
    )
    in_sync = sync(digest, frozenset({key.fingerprint}))
    assert in_sync.sync.status == "in-sync"
    assert "host last in sync 2026-06-01 11:55 UTC" in describe(in_sync)
    pending = sync("0" * 64, frozenset(), error="connection refused")
    assert pending.sync.status == "pending"
    assert "not deployed yet: the next reconcile adds it" in describe(pending)
    assert describe(pending).startswith("web-1 deploy: CAN log in after the next reconcile with ")
    assert pending.sync.missing == (key.fingerprint,)
    assert "the last attempt failed: connection refused" in describe(pending)
    # Revoked in the registry but still on the host until the next reconcile.
    revoked = snapshot(key, revoked=True)
    state = HostSync(
        "web-1",
        last,
        last,
        None,
        {"deploy:%h/.ssh/authorized_keys": RecordedFile("0" * 64, frozenset({key.fingerprint}))},
    )
    (gone,) = explain(revoked, inv, "alice", {"web-1": state}, NOW, "web-1", "deploy")
    assert gone.sync.status == "pending"
    assert describe(gone).startswith(
        f"web-1 deploy: STILL CAN log in until the next reconcile: still on the host "
        f"({key.fingerprint}): the next reconcile removes it"
    )
    assert "every key of alice is revoked or expired" in describe(gone)
    assert place_json(gone)["sync"]["lingering"] == [key.fingerprint]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bob", "web-1", None), "no person 'bob' in the registry"),
        (("alice", "web-9", None), "unknown host 'web-9'"),
        (("alice", "web-1", "nobody"), "account 'nobody' is not managed on web-1"),
    ],
)
def test_unknown_names_are_usage_errors(
    key: PublicKey, args: tuple[str, str, str | None], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        explain(snapshot(key), inventory(), args[0], {}, NOW, args[1], args[2])


# -- the real CLI on a real fleet ------------------------------------------------


def production(env: AgentEnv) -> None:
    """The fleet as a production environment that deploys only vouched-for keys."""
    (env.inventory / f"{env.spec.environment}.toml").unlink()
    env.rewrite_inventory(replace(env.spec, environment="production", min_attestation="admin"))


def test_unattested_key_is_explained_and_key_attest_raises_it(env: AgentEnv) -> None:
    production(env)
    kw, h = env.kw, env.hosts[0]
    kw.ok("person", "add", "alice", "--name", "Alice")
    added = kw.ok("key", "add", "alice", str(env.pub("alice"))).out  # no --attest
    fp = added.split()[3]
    kw.ok("role", "add", "devops")
    kw.ok("role", "grant", "devops", "alice", "--reason", "t", actor="security")
    kw.ok("reconcile")
    assert not env.can_login(h, env.deploy, "alice")

    why = kw.ok("explain", "alice", h.name, env.deploy)
    assert why.out.count("\n") == 1
    assert f"{h.name} {env.deploy}: CANNOT log in" in why.out
    assert f"key {fp} has attestation none, below production's min_attestation admin" in why.out
    assert f"keyward key attest {fp}" in why.out

    # Registering it again with a claim names key attest instead of "keys are personal".
    again = kw.fails("key", "add", "alice", str(env.pub("alice")), "--attest", "admin")
    assert f"'keyward key attest {fp}'" in again.err and "personal" not in again.err
    assert "sk-*" in kw.fails("key", "attest", fp, "--attest", "sk").err
    assert "--proof SIGFILE or --attest" in kw.fails("key", "attest", fp).err
    assert "no key" in kw.fails("key", "attest", "SHA256:" + "A" * 43, "--attest", "admin").err

    assert "attestation none -> admin" in kw.ok("key", "attest", fp, "--attest", "admin").out
    same = kw.fails("key", "add", "alice", str(env.pub("alice")), "--attest", "admin")
    assert "keys are personal" in same.err and "key attest" not in same.err  # nothing to raise
    pending = kw.ok("explain", "alice", h.name, env.deploy).out
    assert "CAN log in after the next reconcile" in pending
    assert "role devops (granted by security)" in pending
    assert "not deployed yet: the next reconcile adds it" in pending
    kw.ok("reconcile")
    assert env.can_login(h, env.deploy, "alice")
    done = kw.ok("explain", "alice", h.name, env.deploy, "--json").json()
    (place,) = done["places"]
    assert place["can_login"] and place["sync"]["status"] == "in-sync"
    assert place["access"][0]["fingerprint"] == fp
    assert any(o.startswith("expiry-time=") for o in place["access"][0]["options"])

    # A proof raises it further; going back down to admin is refused in one line.
    today = datetime.now(UTC).date()
    sig = env.keys / "alice.sig"
    sig.write_bytes(ssh_sign(env.key("alice"), proof_statement("bob", fp, today)))
    assert "signature does not match" in kw.fails("key", "attest", fp, "--proof", str(sig)).err
    both = kw.fails("key", "attest", fp, "--proof", str(sig), "--attest", "admin")
    assert "not both" in both.err
    sig.write_bytes(ssh_sign(env.key("alice"), proof_statement("alice", fp, today)))
    assert "admin -> proof" in kw.ok("key", "attest", fp, "--proof", str(sig)).out
    lower = kw.fails("key", "attest", fp, "--attest", "admin")
    assert "has the higher attestation proof; only raising is allowed" in lower.err
    assert len(lower.err.strip().splitlines()) == 1
    events = kw.ok("audit", "log", "--json", "--action", "key.attest").json()
    assert [(e["details"]["old_attestation"], e["details"]["new_attestation"]) for e in events] == [
        ("none", "admin"),
        ("admin", "proof"),
    ]
    assert events[0]["details"]["attested_by"] == "admin"
    assert events[1]["details"]["proof_date"] == today.isoformat()

    summary = kw.ok("explain", "alice").out.splitlines()
    # deploy and root on every host are covered by the devops rule; app is qa's.
    assert len(summary) == 3 * 3 + 1
    assert summary[-1] == "alice can log in at 6 of 9 places"
    assert sum("CANNOT log in" in ln and "is for role qa" in ln for ln in summary) == 3

    # Revoked in the registry, not yet on the host: explain says they still get in.
    kw.ok("key", "revoke", fp, "--reason", "laptop lost")
    still = kw.ok("explain", "alice", h.name, env.deploy).out
    assert still.startswith(f"{h.name} {env.deploy}: STILL CAN log in until the next reconcile")
    assert env.can_login(h, env.deploy, "alice")
    kw.ok("reconcile")
    gone = kw.ok("explain", "alice", h.name, env.deploy).out
    assert gone.startswith(f"{h.name} {env.deploy}: CANNOT log in: every key of alice is revoked")
    assert not env.can_login(h, env.deploy, "alice")


def test_explain_unknown_names_exit_2(env: AgentEnv) -> None:
    env.kw.ok("person", "add", "alice", "--name", "Alice")
    assert "no person 'nobody'" in env.kw.fails("explain", "nobody").err
    assert "unknown host 'nowhere'" in env.kw.fails("explain", "alice", "nowhere").err
    nokey = env.kw.ok("explain", "alice", env.hosts[0].name, env.deploy).out
    assert "alice has no registered key" in nokey and "keyward key add alice" in nokey


def test_inventory_show_lists_what_was_loaded(env: AgentEnv) -> None:
    data = env.kw.ok("inventory", "show", "--json").json()
    (e,) = data["environments"]
    assert e["name"] == "test" and e["min_attestation"] == "none"
    assert [h["name"] for h in e["hosts"]] == [h.name for h in env.hosts]
    assert e["hosts"][0]["managed_accounts"] == [env.deploy, env.app, "root"]
    assert e["access"][1] == {
        "roles": ["qa"],
        "accounts": [env.app],
        "groups": None,
        "hosts": None,
        "options": ["no-port-forwarding"],
        "source": e["access"][1]["source"],
    }
    text = env.kw.ok("inventory", "show", "--env", "test").out
    assert "environment test (test.toml): min_attestation none" in text
    assert f"roles qa -> accounts {env.app} on every host  [no-port-forwarding]" in text
    for h in env.hosts:
        assert f"    {h.name}  {h.address}:{h.port}  login root" in text
    assert "unknown environment 'prod'" in env.kw.fails("inventory", "show", "--env", "prod").err


def test_hosts_scan_selects_by_environment_or_all(env: AgentEnv) -> None:
    from tests.test_scan import new_host_key

    kw = env.kw
    for args in (("--env", "test"), ("--all",)):
        out = kw.ok("hosts", "scan", *args).out
        assert all(f"# {h.name}: " in out and "(pinned)" in out for h in env.hosts), out
    for args in ((), ("--env", "test", env.hosts[0].name), ("--env", "test", "--all")):
        err = kw.fails("hosts", "scan", *args).err
        assert "host NAMES, --env ENV or --all" in err
    assert "unknown environment 'nope'" in kw.fails("hosts", "scan", "--env", "nope").err
    # A CHANGED key still refuses --write when the hosts come from --env.
    known = env.inventory / "known_hosts"
    before = known.read_text()
    new = new_host_key(env, env.hosts[1])
    refused = kw.fails("hosts", "scan", "--env", "test", "--write")
    assert f"presented {new}" in refused.err and known.read_text() == before


def test_key_attest_on_each_backend(kw: Keyward, tmp_path: Path) -> None:
    path = make_ed25519(tmp_path / "alice", "alice@x")
    kw.ok("person", "add", "alice", "--name", "Alice")
    fp = kw.ok("key", "add", "alice", f"{path}.pub").out.split()[3]
    assert "attestation none -> admin" in kw.ok("key", "attest", fp, "--attest", "admin").out
    assert "already has attestation admin" in kw.fails("key", "attest", fp, "--attest", "admin").err
    (listed,) = kw.ok("key", "list", "alice", "--json").json()
    assert listed["attestation"] == "admin" and listed["attested_by"] == "admin"
    kw.ok("key", "revoke", fp, "--reason", "lost")
    assert "is revoked" in kw.fails("key", "attest", fp, "--attest", "admin").err
    (event,) = kw.ok("audit", "log", "--json", "--action", "key.attest").json()
    assert (event["subject_kind"], event["subject"]) == ("person", "alice")
