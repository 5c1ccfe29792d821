"""Adoption's registry side and the guard in a round, on fake hosts (both backends).

Scans are recorded host by host (a host that fails keeps its earlier lines, and is marked
incomplete), decisions and claims are refused where they would bend a rule, and a round
loads the guard with its snapshot: the host holding an unaccounted line is refused, the
others proceed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlmodel import select

from keyward.adoption.lines import HostScan
from keyward.agent.adopt import scan_fleet
from keyward.agent.reconcile import RunContext, reconcile_fleet
from keyward.desired import DesiredFile, DesiredLine, FileTarget
from keyward.errors import KeyPolicyError, RegistryError, UsageError
from keyward.inventory.model import Host
from keyward.keys import DEFAULT_POLICY, KeyPolicy, PublicKey, parse_public_key
from keyward.registry import ops
from keyward.registry.adoption import claim, decide, load_scan, record_scan
from keyward.registry.models import AdoptHost, AdoptLine, AuditEvent
from keyward.registry.snapshot import load_snapshot
from keyward.registry.store import Registry
from keyward.registry.verify import verify_session
from keyward.testing.fakehost import FakeFleet
from tests.cli_runner import Keyward

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(days=1)
AK = "%h/.ssh/authorized_keys"


def new_key(comment: str) -> PublicKey:
    raw = ed25519.Ed25519PrivateKey.generate().public_key()
    line = raw.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return parse_public_key(f"{line.decode()} {comment}")


KEYS = {name: new_key(f"{name}@x") for name in ("agent", "alice", "stranger")}
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
WEAK = parse_public_key(
    _RSA.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode(),
    KeyPolicy(min_rsa_bits=1024),
)


def host(name: str) -> Host:
    return Host(name, "prod", "127.0.0.1", 22, "root", (AK,), "exclusive", (), ("deploy",))


def scan(fleet: FakeFleet, hosts: list[Host]) -> list[HostScan]:
    return asyncio.run(scan_fleet(hosts, fleet, 4))


def line(key: PublicKey, prefix: str = "") -> bytes:
    return f"{prefix}{key.openssh()} {key.comment}\n".encode()


@pytest.fixture
def fleet() -> tuple[FakeFleet, list[Host]]:
    fleet = FakeFleet()
    hosts = [host(f"h{i}") for i in (1, 2, 3)]
    for h in hosts:
        fleet.add(h.name).add_account("deploy", 1000)
    h1, h2 = fleet["h1"], fleet["h2"]
    h1.put(
        h1.path_of("root"),
        line(KEYS["agent"]) + line(KEYS["alice"]) + line(KEYS["stranger"]) + b"garbage\n",
    )
    h1.put(h1.path_of("deploy"), line(WEAK, 'no-pty,from="10.0.0.1" '), uid=1000)
    h2.put(h2.path_of("root"), line(KEYS["agent"]) + line(KEYS["stranger"]))
    h2.symlink(h2.path_of("deploy"), "/etc/shadow")
    fleet["h3"].refuse = "connection refused"
    return fleet, hosts


def test_scans_are_recorded_per_host(db_url: str, fleet: tuple[FakeFleet, list[Host]]) -> None:
    fakes, hosts = fleet
    registry, _, _ = Registry.initialise(db_url, clock=lambda: T0)
    results = scan(fakes, hosts)
    assert [r.error is not None for r in results] == [False, False, True]
    assert results[1].file_errors[0][0] == "deploy" and not results[1].complete
    with registry.write("admin") as tx:
        counts = record_scan(tx, results, {"env": None, "host": None})
    assert counts == {
        "hosts": 3,
        "failed": 1,
        "incomplete": 1,
        "files": 4,
        "lines": 6,
        "keys": 4,
        "unhonoured": 1,
    }
    with registry.read() as session:
        data = load_scan(session)
        guard = load_snapshot(session).adoption
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "adopt.scan")).all()
    assert len(events) == 1
    assert {s.where.host for s in data.sightings} == {"h1", "h2"}
    assert [u.reason for u in data.unhonoured] == ["no key found"]
    weak = next(s for s in data.sightings if s.fingerprint == WEAK.fingerprint)
    assert weak.options == ("no-pty", 'from="10.0.0.1"')
    assert guard.complete == frozenset({"h1"})
    assert guard.sighted["h3"] == frozenset()
    assert KEYS["stranger"].fingerprint in guard.sighted["h2"]

    # The stranger's line goes from h1; h3 is still down: its (no) lines stay, still failed.
    h1 = fakes["h1"]
    h1.put(h1.path_of("root"), line(KEYS["alice"]) + line(KEYS["agent"]))  # alice moved up
    registry.clock = lambda: T1
    with registry.write("admin") as tx:
        record_scan(tx, scan(fakes, hosts), {"env": None, "host": None})
    with registry.read() as session:
        data = load_scan(session)
        rows = session.exec(select(AdoptLine).where(AdoptLine.host == "h1")).all()
        h3 = session.get(AdoptHost, "h3")
        assert verify_session(session) is not None
    assert KEYS["stranger"].fingerprint not in {
        s.fingerprint for s in data.sightings if s.where.host == "h1"
    }
    alice_row = next(r for r in rows if r.fingerprint == KEYS["alice"].fingerprint)
    assert alice_row.lineno == 1 and alice_row.first_seen == T0  # moved: still first seen at T0
    alice = next(k for k in data.keys if k.fingerprint == KEYS["alice"].fingerprint)
    assert (alice.first_seen, alice.last_seen) == (T0, T1)
    assert h3 is not None and h3.error and not h3.complete
    with registry.read() as session:
        problem = verify_session(session)
    assert problem is not None and problem[2] is None


def test_decisions_and_claims_keep_the_rules(
    db_url: str, fleet: tuple[FakeFleet, list[Host]]
) -> None:
    fakes, hosts = fleet
    registry, _, _ = Registry.initialise(db_url, clock=lambda: T0)
    with registry.write("admin") as tx:
        record_scan(tx, scan(fakes, hosts), {})
        ops.add_person(tx, "alice", "Alice", None)
        ops.add_person(tx, "bob", "Bob", None)
    later = T0 + timedelta(days=300)
    stranger = KEYS["stranger"].fingerprint
    for text, error in (
        ("SHA256:short", UsageError),
        ("SHA256:" + "A" * 43, RegistryError),
        ("nonsense with spaces", UsageError),
    ):
        with pytest.raises(error), registry.write("admin") as tx:
            decide(tx, text, "ignore", "x")
    with pytest.raises(UsageError), registry.write("admin") as tx:
        decide(tx, stranger, "ignore", "bad\x1breason")
    with registry.write("admin") as tx:
        decide(tx, stranger[:30], "ignore", "a test box")
    with registry.write("admin") as tx:
        row = decide(tx, stranger, "remove", "nobody knows it")
        assert row.decision == "remove"
    with pytest.raises(KeyPolicyError), registry.write("admin") as tx:
        claim(tx, WEAK.fingerprint, "bob", DEFAULT_POLICY, later)
    with registry.write("admin") as tx:
        claim(tx, KEYS["alice"].fingerprint, "alice", DEFAULT_POLICY, later)
    with pytest.raises(RegistryError, match="already registered"), registry.write("admin") as tx:
        claim(tx, KEYS["alice"].fingerprint, "bob", DEFAULT_POLICY, later)
    with (
        pytest.raises(RegistryError, match="registered to a person"),
        registry.write("admin") as tx,
    ):
        decide(tx, KEYS["alice"].fingerprint, "ignore", "x")
    with registry.read() as session:
        key = ops.find_key(session, KEYS["alice"].fingerprint)
        actions = [e.action for e in session.exec(select(AuditEvent).order_by(AuditEvent.seq))]  # type: ignore[arg-type]
        guard = load_snapshot(session).adoption
    assert key.attestation == "none"
    assert actions[-4:] == ["adopt.ignore", "adopt.remove", "key.add", "adopt.claim"]
    assert stranger in guard.decided


def test_a_round_refuses_only_the_host_with_unaccounted_lines(
    db_url: str, fleet: tuple[FakeFleet, list[Host]]
) -> None:
    fakes, hosts = fleet
    registry, _, _ = Registry.initialise(db_url, clock=lambda: T0)
    with registry.write("admin") as tx:
        record_scan(tx, scan(fakes, hosts[:2]), {})
        decide(tx, WEAK.fingerprint, "remove", "weak")
        decide(tx, KEYS["alice"].fingerprint, "ignore", "alice has a new key")
    fakes["h3"].refuse = None
    agent = DesiredLine(KEYS["agent"], (), "agent", "agent")

    def run() -> dict[str, str | None]:
        with registry.read() as session:
            snap = load_snapshot(session)
        desired = {
            FileTarget(h.name, a, AK): DesiredFile(
                FileTarget(h.name, a, AK), "exclusive", (agent,) if a == "root" else (), a == "root"
            )
            for h in hosts
            for a in ("deploy", "root")
        }
        ctx = RunContext(
            snap, desired, fakes, T0, KEYS["agent"].fingerprint, "t", lambda: T0, dry_run=True
        )
        return {r.host.name: r.error for r in asyncio.run(reconcile_fleet(hosts, ctx, 4))}

    errors = run()
    assert errors["h3"] is None  # never scanned: exclusive as before
    assert errors["h1"] is not None and KEYS["stranger"].fingerprint in errors["h1"]
    assert "(never logged in)" in errors["h1"] and "\n" not in errors["h1"]
    assert errors["h2"] is not None and "did not read every file" in errors["h2"]
    with registry.write("admin") as tx:
        decide(tx, KEYS["stranger"].fingerprint, "remove", "nobody knows it")
    assert run() == {"h1": None, "h2": None, "h3": None}


@pytest.mark.parametrize(
    "args",
    [
        ("adopt", "claim", "nonsense with spaces", "alice"),
        ("adopt", "claim", "SHA256:" + "B" * 43, "alice"),
        ("adopt", "ignore", "SHA256:" + "B" * 43, "--reason", "x"),
        ("adopt", "remove", "SHA256:" + "B" * 20, "--reason", "line\nbreak"),
        ("adopt", "report", "--json", "--csv"),
        ("adopt", "scan", "--host", "nope"),
    ],
)
def test_adopt_commands_refuse_bad_input_in_one_line(kw: Keyward, args: tuple[str, ...]) -> None:
    result = kw.fails(*args)
    assert len(result.err.strip().splitlines()) == 1, str(result)
