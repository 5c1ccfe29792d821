"""Rounds over in-memory hosts: what a round does and how it fails, in milliseconds.

The hosts are ``keyward.testing.fakehost`` fakes behind the transport interface, so these
run ``reconcile_fleet`` exactly as ``keyward reconcile`` does, with no sshd: twenty hosts
take a few milliseconds.  What a real login proves stays in test_agent.py and friends.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import stat
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from keyward.agent.reconcile import HostResult, RunContext, reconcile_fleet
from keyward.agent.transport import WriteRequest
from keyward.authorized_keys import parse_authorized_keys
from keyward.desired import DesiredFile, DesiredLine, FileTarget
from keyward.inventory.model import Host, Mode
from keyward.keys import PublicKey, parse_public_key
from keyward.logins import LOGIN_MARKERS
from keyward.plan import sha256
from keyward.state import KeyRecord, PersonRecord, RegistrySnapshot
from keyward.testing.fakehost import FakeFleet, FakeHost

NOW = datetime(2026, 6, 1, tzinfo=UTC)
AK = "%h/.ssh/authorized_keys"
DEPLOY_UID = 1000


def new_key() -> PublicKey:
    raw = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return parse_public_key(raw.decode())


KEYS = {name: new_key() for name in ("agent", "alice", "alice2", "bob", "eve")}


class Events:
    """A logger that keeps (event, fields) instead of printing them."""

    def __init__(self, seen: list[tuple[str, dict[str, Any]]] | None = None, **bound: Any) -> None:
        self.seen = [] if seen is None else seen
        self.bound = bound

    def bind(self, **fields: Any) -> Events:
        return Events(self.seen, **self.bound, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.seen.append((event, {**self.bound, **fields}))

    warning = error = info

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.seen if name == event]


def make_host(name: str, mode: Mode = "exclusive", auth_log: str = "auto") -> Host:
    """A host whose login is root and whose other managed account is deploy."""
    return Host(name, "prod", "127.0.0.1", 22, "root", (AK,), mode, (), ("deploy",), None, auth_log)


def snapshot(revoked: Iterable[str] = ()) -> RegistrySnapshot:
    later, earlier = NOW + timedelta(days=30), NOW - timedelta(days=1)
    gone = set(revoked)
    return RegistrySnapshot(
        people={n: PersonRecord(n, n.title(), "active") for n in ("alice", "bob", "eve")},
        keys=tuple(
            KeyRecord(KEYS[k], owner_of(k), "none", earlier, later, earlier if k in gone else None)
            for k in ("alice", "alice2", "bob", "eve")
        ),
        grants=(),
    )


def owner_of(key: str) -> str:
    return key.rstrip("2")  # alice2 is alice's second key


def line(key: str, kind: str = "person") -> DesiredLine:
    return DesiredLine(KEYS[key], (), "agent" if kind == "agent" else owner_of(key), kind)  # type: ignore[arg-type]


def desired_for(
    hosts: Iterable[Host], root: tuple[str, ...], deploy: tuple[str, ...], agent: bool = True
) -> dict[FileTarget, DesiredFile]:
    out: dict[FileTarget, DesiredFile] = {}
    for host in hosts:
        root_lines = ((line("agent", "agent"),) if agent else ()) + tuple(map(line, root))
        for account, lines in (("deploy", tuple(map(line, deploy))), ("root", root_lines)):
            target = FileTarget(host.name, account, AK)
            out[target] = DesiredFile(target, host.mode, lines, is_login=account == "root")
    return out


def fleet_of(hosts: Iterable[Host], **settings: Any) -> FakeFleet:
    fleet = FakeFleet(**settings)
    for host in hosts:
        fleet.add(host.name).add_account("deploy", DEPLOY_UID)
    return fleet


def run(
    hosts: list[Host],
    fleet: FakeFleet,
    desired: Mapping[FileTarget, DesiredFile],
    snap: RegistrySnapshot | None = None,
    concurrency: int = 8,
    **options: Any,
) -> tuple[list[HostResult], Events]:
    """One round over ``hosts`` as ``keyward reconcile`` runs it; its results and log."""
    log = Events()
    ctx = RunContext(
        snapshot=snap or snapshot(),
        desired=dict(desired),
        connector=fleet,
        now=NOW,
        agent_fingerprint=KEYS["agent"].fingerprint,
        run_id="t1",
        clock=lambda: NOW,
        log=log,
        **options,
    )
    return asyncio.run(reconcile_fleet(hosts, ctx, concurrency)), log


def fingerprints(fake: FakeHost, account: str) -> set[str]:
    content = fake.content(account)
    assert content is not None
    return {ln.key.fingerprint for ln in parse_authorized_keys(content) if ln.key}


def test_a_round_over_twenty_hosts_adds_removes_and_rotates() -> None:
    hosts = [make_host(f"h{i:02}") for i in range(20)]
    fleet = fleet_of(hosts, agent_fingerprint=None)
    fleet["h07"].put(fleet["h07"].path_of("deploy"), KEYS["eve"].openssh().encode() + b" hand\n")

    results, log = run(hosts, fleet, desired_for(hosts, ("alice",), ("alice", "bob")))
    assert [r.host.name for r in results] == [h.name for h in hosts]
    assert all(r.ok for r in results), [r.problems for r in results if not r.ok]
    for host in hosts:
        fake = fleet[host.name]
        assert fingerprints(fake, "deploy") == {KEYS["alice"].fingerprint, KEYS["bob"].fingerprint}
        assert KEYS["agent"].fingerprint in fingerprints(fake, "root")
        deploy = fake.entries[fake.path_of("deploy")]
        root = fake.entries[fake.path_of("root")]
        assert (deploy.uid, deploy.gid, deploy.mode) == (DEPLOY_UID, DEPLOY_UID, 0o600)
        assert (root.uid, root.mode) == (0, 0o600)
    assert [f["host"] for f in log.named("drift_removed")] == ["h07"]
    assert len(log.named("key_added")) == 20 * 4  # agent and alice for root, alice and bob

    # alice rotates her key (the old one revoked), bob leaves the deploy account.
    fleet.agent_fingerprint = KEYS["agent"].fingerprint  # from now on sshd checks it
    rotated = snapshot(revoked=("alice",))
    results, log = run(hosts, fleet, desired_for(hosts, ("alice2",), ("alice2",)), rotated)
    assert all(r.ok for r in results)
    assert sum(r.changes for r in results) == 20 * 5
    for host in hosts:
        assert fingerprints(fleet[host.name], "deploy") == {KEYS["alice2"].fingerprint}
    reasons = sorted({(f["person"], f["reason"]) for f in log.named("key_removed")})
    assert reasons == [("alice", "revoked"), ("bob", "access-ended")]

    # A third round finds everything in sync and writes nothing.
    before = {h.name: len(fleet[h.name].requests) for h in hosts}
    results, _ = run(hosts, fleet, desired_for(hosts, ("alice2",), ("alice2",)), rotated)
    assert all(r.ok and r.changes == 0 for r in results)
    for host in hosts:
        ops = [q.op for q in fleet[host.name].requests[before[host.name] :]]
        assert ops == ["hello", "read"]


def test_a_round_keeps_to_its_concurrency_and_a_dry_run_writes_nothing() -> None:
    hosts = [make_host(f"h{i:02}") for i in range(20)]
    fleet = fleet_of(hosts)
    for host in hosts:
        fleet[host.name].latency = 0.002
    desired = desired_for(hosts, ("alice",), ("bob",))
    results, _ = run(hosts, fleet, desired, concurrency=3, dry_run=True)
    assert fleet.most_open == 3
    assert all(r.ok and r.plan is not None and r.plan.pending for r in results)
    assert all(q.op not in ("write", "write_many") for h in hosts for q in fleet[h.name].requests)
    assert all(fleet[h.name].connections == [] for h in hosts)  # every one closed


def test_an_offboarding_is_confirmed_by_the_round_that_removes_the_keys() -> None:
    hosts = [make_host("h0"), make_host("h1")]
    fleet = fleet_of(hosts)
    run(hosts, fleet, desired_for(hosts, ("bob",), ("alice", "bob")))
    fleet["h1"].refuse = "Connection refused"
    watch = {7: frozenset({KEYS["bob"].fingerprint})}
    results, log = run(hosts, fleet, desired_for(hosts, (), ("alice",)), watch=watch)
    assert [(c.account, c.clean, c.removed) for c in results[0].confirmations] == [
        ("deploy", True, 1),
        ("root", True, 1),
    ]
    assert results[1].confirmations == ()  # not reached: nothing is confirmed for it
    assert len(log.named("offboarding_confirmed")) == 2


def test_one_failing_host_does_not_stop_the_others() -> None:
    hosts = [make_host(f"h{i}") for i in range(8)]
    fleet = fleet_of(hosts, connect_timeout=0.05, request_timeout=0.05)
    fleet["h1"].refuse = "Connection refused"
    fleet["h2"].hang.add("read")
    fleet["h3"].hang.add("connect")
    fleet["h4"].write_errors[fleet["h4"].path_of("deploy")] = ("io", "No space left on device")
    fleet["h5"].hang.add("hello")
    del fleet.hosts["h6"]

    results, log = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",)))
    by_name = {r.host.name: r for r in results}
    assert [r.host.name for r in results if r.ok] == ["h0", "h7"]
    assert by_name["h1"].error == "h1: cannot connect to 127.0.0.1:22: Connection refused"
    assert by_name["h2"].error == "h2: no answer to read within 0s"
    assert by_name["h3"].error == "h3: cannot connect to 127.0.0.1:22: TimeoutError"
    assert by_name["h5"].error == "h5: no answer to hello within 0s"
    # A failed write is one file's problem: the host's other file was written.
    assert by_name["h4"].error is None
    assert by_name["h4"].problems == [
        "deploy /home/deploy/.ssh/authorized_keys: No space left on device"
    ]
    assert [f.written for f in by_name["h4"].files] == [False, True]
    assert sorted(f["host"] for f in log.named("host_failed")) == ["h1", "h2", "h3", "h5", "h6"]
    assert log.named("file_write_failed")[0]["code"] == "io"
    for name in ("h0", "h7"):
        assert fingerprints(fleet[name], "deploy") == {KEYS["bob"].fingerprint}


def test_a_file_changed_between_read_and_write_is_not_overwritten() -> None:
    hosts = [make_host("h0"), make_host("h1")]
    fleet = fleet_of(hosts)
    fake = fleet["h0"]
    path = fake.path_of("deploy")
    fake.put(path, b"")
    someone = KEYS["eve"].openssh().encode() + b" added meanwhile\n"
    fake.after_read[path] = someone

    results, log = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",)))
    assert results[1].ok
    problem = results[0].files[0].error
    assert problem is not None and problem.startswith(f"{path} changed since it was read")
    assert fake.content("deploy") == someone  # the other writer's content stands
    assert log.named("file_write_failed")[0]["code"] == "changed"

    # The next round sees the new content and plans from it.
    results, log = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",)))
    assert all(r.ok for r in results)
    assert [f["host"] for f in log.named("drift_removed")] == ["h0"]


def test_a_change_right_after_the_write_fails_the_read_back() -> None:
    hosts = [make_host("h0")]
    fleet = fleet_of(hosts)
    path = fleet["h0"].path_of("deploy")
    fleet["h0"].after_write[path] = b"# replaced by someone\n"
    results, _ = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",)))
    assert results[0].problems == [
        f"deploy {path}: {path} was changed by someone else right after the write"
    ]


def test_the_lockout_guard_holds() -> None:
    hosts = [make_host("h0"), make_host("h1")]
    fleet = fleet_of(hosts, agent_fingerprint=KEYS["agent"].fingerprint)
    for name in ("h0", "h1"):
        fake = fleet[name]
        fake.put(fake.path_of("root"), KEYS["agent"].openssh().encode() + b" agent\n")
    before = fleet["h0"].content("root")

    results, log = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",), agent=False))
    assert not any(r.ok for r in results)
    assert all("lockout" in (r.error or "") for r in results)
    assert len(log.named("plan_refused")) == 2
    assert all(q.op not in ("write", "write_many") for h in ("h0", "h1") for q in fleet[h].requests)
    assert fleet["h0"].content("root") == before

    # The guard is what keeps the agent able to log in: the fake sshd checks the key.
    results, _ = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",)))
    assert all(r.ok for r in results)
    fleet["h1"].put(fleet["h1"].path_of("root"), b"")
    results, _ = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",)))
    assert results[1].error == "h1: the agent's key was refused for root@127.0.0.1"


def test_a_stuck_file_fails_alone_then_answers_busy() -> None:
    hosts = [make_host("h0")]
    fleet = fleet_of(hosts)
    fleet["h0"].stuck.add(fleet["h0"].path_of("deploy"))
    for code, root in (("timeout", "create"), ("busy", "in-sync")):
        results, log = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",)))
        assert results[0].error is None
        assert [f.plan.action for f in results[0].files] == ["error", root]
        assert results[0].files[1].error is None
        assert [e["code"] for e in log.named("file_timeout")] == [code]


@pytest.mark.parametrize(
    ("entry", "mode", "outcome"),
    [
        ("hardlink", "exclusive", "replaced"),
        ("symlink", "exclusive", "replaced"),
        ("fifo", "exclusive", "replaced"),
        ("foreign", "exclusive", "replaced"),
        ("hardlink", "managed-block", "hardlink"),
        ("symlink", "managed-block", "symlink"),
    ],
)
def test_an_unsafe_entry_is_replaced_only_where_keyward_owns_the_file(
    entry: str, mode: Mode, outcome: str
) -> None:
    hosts = [make_host("h0", mode)]
    fleet = fleet_of(hosts)
    fake = fleet["h0"]
    path = fake.path_of("deploy")
    if entry == "hardlink":
        fake.put(path, b"x\n", nlink=2)
    elif entry == "symlink":
        fake.symlink(path, "/etc/shadow")
    elif entry == "fifo":
        fake.fifo(path)
    else:
        fake.put(path, b"x\n", uid=4242)
    results, log = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",)))
    deploy = results[0].files[0]
    if outcome == "replaced":
        assert deploy.written and deploy.plan.expect_sha256 == "*"
        assert fingerprints(fake, "deploy") == {KEYS["bob"].fingerprint}
    else:
        assert deploy.plan.error_code == outcome and not deploy.written
        assert log.named("file_unsafe")[0]["code"] == outcome


def test_owner_mode_and_directory_are_fixed() -> None:
    hosts = [make_host("h0"), make_host("h1")]
    fleet = fleet_of(hosts)
    a, b = fleet["h0"], fleet["h1"]
    ssh_dir = "/home/deploy/.ssh"
    a.entries[ssh_dir].mode = 0o775  # group-writable: sshd's StrictModes would refuse it
    a.put(a.path_of("root"), b"", mode=0o644)
    del b.entries[ssh_dir]  # no ~/.ssh at all
    results, log = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",)))
    assert all(r.ok for r in results)
    assert a.entries[ssh_dir].mode == 0o700
    assert [e["host"] for e in log.named("dir_mode_fixed")] == ["h0"]
    made = b.entries[ssh_dir]
    assert (made.kind, made.uid, made.mode) == ("dir", DEPLOY_UID, 0o700)

    # Right content, wrong mode: fixed without a line changing.
    a.entries[a.path_of("deploy")].mode = 0o640
    results, log = run(hosts, fleet, desired_for(hosts, ("alice",), ("bob",)))
    assert [f.plan.action for f in results[0].files] == ["fix-mode", "in-sync"]
    assert a.entries[a.path_of("deploy")].mode == 0o600
    assert [e["host"] for e in log.named("file_mode_fixed")] == ["h0"]


@pytest.mark.parametrize("journal", [True, False])
def test_logins_are_collected_from_where_they_were_left(journal: bool) -> None:
    hosts = [make_host("h0", auth_log="auto" if journal else "/var/log/auth.log")]
    fleet = fleet_of(hosts)
    fake = fleet["h0"]
    fake.journal = journal
    fake.log("Server listening on 0.0.0.0 port 22.")
    fake.login("deploy", KEYS["alice"].fingerprint, NOW)
    desired = desired_for(hosts, ("alice",), ("bob",))

    results, _ = run(hosts, fleet, desired, collect=True)
    batch = results[0].auth
    assert batch is not None and batch.error is None
    assert batch.kind == ("journal" if journal else "file:/var/log/auth.log")
    assert [ln.text.endswith(KEYS["alice"].fingerprint) for ln in batch.lines] == [True]
    assert all(any(m in ln.text for m in LOGIN_MARKERS) for ln in batch.lines)

    assert batch.position is not None
    fake.login("root", KEYS["bob"].fingerprint, NOW)
    results, _ = run(hosts, fleet, desired, collect=True, auth_positions={"h0": batch.position})
    again = results[0].auth
    assert again is not None
    assert [ln.text.split()[-1] for ln in again.lines] == [KEYS["bob"].fingerprint]


def test_sshd_settings_that_weaken_keyward_are_reported() -> None:
    hosts = [make_host("h0")]
    fleet = fleet_of(hosts)
    fleet["h0"].sshd_settings.update(loglevel="INFO", strictmodes="no")
    results, _ = run(hosts, fleet, desired_for(hosts, ("alice",), ()), check_sshd=True)
    assert len(results[0].warnings) == 2
    assert results[0].warnings[0].startswith("sshd LogLevel is INFO")


def test_a_dropped_connection_ends_its_requests() -> None:
    """What the daemon's links rely on: abort ends wait_closed, and later requests fail."""
    host = make_host("h0")
    fleet = fleet_of([host])

    async def scenario() -> str:
        conn = await fleet.open(host)
        waiter = asyncio.create_task(conn.wait_closed())
        await asyncio.sleep(0)
        fleet["h0"].disconnect()
        await asyncio.wait_for(waiter, 1)
        try:
            await conn.read([("deploy", AK)])
        except Exception as exc:
            return str(exc)
        return "no error"

    assert asyncio.run(scenario()) == "h0: the remote helper exited (is python3 installed?)"


# -- the fake against the real helper: the same scenario on disk and in memory ------------


def mirror(fake: FakeHost, path: Path) -> None:
    """Give the fake the real directories on the way to ``path``: owners and modes."""
    for parent in reversed(path.parents):
        st = os.stat(parent)
        fake.mkdir(str(parent), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


SCENARIOS = ["missing", "present", "wrong-mode", "hardlink", "symlink", "fifo", "foreign", "no-dir"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the helper's owner rules need root")
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("expect", ["seen", "none", "*"])
@pytest.mark.parametrize("who", ["root", "daemon", "daemon-owns-dir"])
def test_the_fake_answers_as_the_helper_does(
    tmp_path: Path, scenario: str, expect: str, who: str
) -> None:
    """Reads and writes of a file outside home, on disk by the helper and in the fake: the
    same replies, byte for byte (``daemon`` is an account every system has)."""
    from keyward.agent import remote

    account = who.split("-")[0]
    pw = pwd.getpwnam(account)
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o755)
    if who == "daemon-owns-dir":
        os.chown(directory, pw.pw_uid, pw.pw_gid)
    path = directory / "authorized_keys"
    fake = FakeHost("h0")
    fake.add_account(account, pw.pw_uid, pw.pw_gid, pw.pw_dir, ssh=False)
    mirror(fake, path)
    data = KEYS["alice"].openssh().encode() + b" x\n"
    if scenario == "no-dir":
        directory.rmdir()
        del fake.entries[str(directory)]
    elif scenario in ("present", "wrong-mode", "foreign", "hardlink"):
        path.write_bytes(data)
        uid, gid = (4242, 4242) if scenario == "foreign" else (pw.pw_uid, pw.pw_gid)
        mode = 0o644 if scenario == "wrong-mode" else 0o600
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        nlink = 1
        if scenario == "hardlink":
            os.link(path, directory / "other")
            nlink = 2
        fake.put(str(path), data, uid, gid, mode, nlink)
    elif scenario == "symlink":
        path.symlink_to("/etc/hostname")
        fake.symlink(str(path), "/etc/hostname")
    elif scenario == "fifo":
        os.mkfifo(path, 0o600)
        os.chown(path, pw.pw_uid, pw.pw_gid)
        fake.fifo(str(path), pw.pw_uid, pw.pw_gid)

    pattern = str(path)
    real_read = remote.read_one(account, pattern)
    assert fake.read_one(account, pattern) == real_read
    expected = {"seen": real_read["sha256"], "none": None, "*": "*"}[expect]
    new = KEYS["bob"].openssh().encode() + b" y\n"
    real_write = remote.write_one({"account": account, "pattern": pattern}, new, expected, True)
    assert fake.write_one(account, pattern, new, expected) == real_write
    assert fake.read_one(account, pattern) == remote.read_one(account, pattern)
    # The batch: a stale file refused, the right one written, each as a write answers.
    now = remote.read_one(account, pattern)["sha256"]
    batch = [
        WriteRequest(account, pattern, b"stale\n", sha256(b"what was seen before\n")),
        WriteRequest(account, pattern, new + b"z\n", now),
        WriteRequest("kwnosuchuser", pattern, new, None),
    ]
    real_batch = remote.op_write_many(
        {
            "files": [
                {"account": a, "pattern": p, "content_b64": base64.b64encode(c).decode(),
                 "expect_sha256": e, "create_dir": True}
                for a, p, c, e in batch
            ]
        }
    )  # fmt: skip
    assert fake.write_many(batch) == real_batch
    assert fake.read_one(account, pattern) == remote.read_one(account, pattern)


def test_a_long_lived_connection_serves_pushes_and_verification() -> None:
    """The daemon's use of a connection: a push of just the changed file, then a full
    verification that finds a hand edit, over one connection opened once."""
    from keyward.agent.reconcile import files_of, sync_files

    host = make_host("h0")
    fleet = fleet_of([host])
    fake = fleet["h0"]
    log = Events()

    def ctx(desired: dict[FileTarget, DesiredFile]) -> RunContext:
        return RunContext(snapshot(), desired, fleet, NOW, KEYS["agent"].fingerprint, "d1",
                          lambda: NOW, log=log)  # fmt: skip

    async def scenario() -> list[HostResult]:
        conn = await fleet.open(host)
        first = desired_for([host], ("alice",), ("bob",))
        everything = await sync_files(conn, files_of(host, first), ctx(first))
        changed = desired_for([host], ("alice",), ("alice",))
        deploy = [d for d in files_of(host, changed) if d.target.account == "deploy"]
        push = await sync_files(conn, deploy, ctx(changed))
        hand = KEYS["eve"].openssh().encode() + b" by hand\n"
        fake.edit(fake.path_of("root"), (fake.content("root") or b"") + hand)
        verify = await sync_files(conn, files_of(host, changed), ctx(changed))
        await conn.close()
        return [everything, push, verify]

    everything, push, verify = asyncio.run(scenario())
    assert [len(r.files) for r in (everything, push, verify)] == [2, 1, 2]
    assert all(r.ok for r in (everything, push, verify))
    assert [f.plan.action for f in verify.files] == ["in-sync", "update"]
    assert [e["person"] for e in log.named("drift_removed")] == ["eve"]
    assert fake.opened == 1 and fake.connections == []


# -- the daemon's links over fake hosts ------------------------------------------------


class Jitter:
    """Stands in for ``random`` in keyward.daemon.links: sleeps no time, keeps each bound.

    After ``fail_times`` bounds it lets ``host`` be reached again, so the link's backoff is
    seen exactly without waiting for it.
    """

    def __init__(self, host: FakeHost, fail_times: int) -> None:
        self.bounds: list[float] = []
        self.host = host
        self.fail_times = fail_times

    def uniform(self, low: float, high: float) -> float:
        self.bounds.append(high)
        if len(self.bounds) >= self.fail_times:
            self.host.refuse = None
        return low


def test_a_host_link_pushes_on_connect_and_reopens_with_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon link on a fake fleet: each connection gets the desired files pushed; a cut
    connection is reopened, backing off exponentially while the host refuses."""
    from keyward.agent.reconcile import files_of, sync_files
    from keyward.daemon import links
    from keyward.daemon.links import HostLink

    host = make_host("h0")
    fleet = fleet_of([host])
    fake = fleet["h0"]
    jitter = Jitter(fake, fail_times=4)  # the pause after the cut, then three refusals
    monkeypatch.setattr(links, "random", jitter)
    log = Events()
    wanted = [desired_for([host], ("alice",), ("bob",))]
    pushed: list[HostResult] = []

    async def on_connect(link: HostLink) -> None:
        desired = wanted[-1]
        ctx = RunContext(snapshot(), desired, fleet, NOW, KEYS["agent"].fingerprint, "d1",
                         lambda: NOW, log=log)  # fmt: skip
        async with link.busy:
            assert link.connection is not None
            pushed.append(await sync_files(link.connection, files_of(host, desired), ctx))

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await asyncio.sleep(0.001)

    async def scenario() -> None:
        link = HostLink(host, fleet, asyncio.Semaphore(1), log, on_connect, keepalive=0)
        link.start()
        await asyncio.wait_for(until(lambda: len(pushed) == 1), 2)
        assert link.connected and fake.opened == 1
        assert parse_authorized_keys(fake.content("deploy") or b"")[0].key == KEYS["bob"]
        wanted.append(desired_for([host], ("alice",), ("eve",)))
        fake.refuse = "Connection refused"
        fake.disconnect()  # a reboot: the link notices, and the host refuses for a while
        await asyncio.wait_for(until(lambda: len(pushed) == 2), 2)
        assert link.connected and link.failures == 0 and link.last_error is None
        await link.stop()
        assert not link.connected and fake.connections == []

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert all(r.ok for r in pushed)
    assert parse_authorized_keys(fake.content("deploy") or b"")[0].key == KEYS["eve"]
    assert fake.opened == 2
    start = links.BACKOFF_START
    assert jitter.bounds == [start, start, 2 * start, 4 * start]
    retries = [e["retry_in"] for e in log.named("host_connect_failed")]
    assert retries == [start, 2 * start, 4 * start]  # and each failure logged its pause
    assert len(log.named("host_disconnected")) == 1
    assert len(log.named("host_connected")) == 2


def test_a_host_link_broken_by_a_failed_request_reconnects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``broken`` (a request over the connection failed) aborts it; the link opens a new one."""
    from keyward.daemon import links
    from keyward.daemon.links import HostLink

    host = make_host("h0")
    fleet = fleet_of([host])
    jitter = Jitter(fleet["h0"], fail_times=0)
    monkeypatch.setattr(links, "random", jitter)
    connects: list[HostLink] = []

    async def on_connect(link: HostLink) -> None:
        connects.append(link)

    async def scenario() -> str | None:
        link = HostLink(host, fleet, asyncio.Semaphore(1), Events(), on_connect, keepalive=0)
        link.start()
        while len(connects) < 1:
            await asyncio.sleep(0.001)
        first = link.connection
        link.broken("h0: no answer to read within 1s")
        assert link.last_error == "h0: no answer to read within 1s"
        while len(connects) < 2:
            await asyncio.sleep(0.001)
        assert link.connection is not first and link.connected
        await link.stop()
        return link.last_error

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) is None
    assert fleet["h0"].opened == 2
    assert jitter.bounds == [links.BACKOFF_START]  # the one pause before reconnecting
