"""Benchmark: one ``keyward daemon`` holding thousands of SIMULATED hosts.

A simulation, labelled as such in every result: the hosts are ``keyward.testing.simhost``
SSH servers (asyncssh) that answer the host helper's protocol from memory, many per process
on loopback addresses 127.77.x.y (one address and one pinned ed25519 host key per host).
The daemon is the real one, a separate process, with a real SQLite registry; it logs in with
its key, pins each host key and speaks the helper's protocol over SSH as with real hosts.
The simulators run in ``--procs`` processes of their own, so the daemon's CPU and RSS are
measured apart from theirs. What it measures is the controller: nothing here says what
real hosts (sshd, a Python helper per connection, their file systems) cost.

Measured:

- connect and initial sync of every host; daemon RSS once in sync (target < 2 GB at 10,000);
- revocation: a key added to a devops person (deploy + root files on every host), then
  revoked; time from the revoke's commit until no simulated file holds it (the simulators
  record the moment their last watched file changed, on the system-wide monotonic clock),
  and until the registry holds the 2N ``host.remove`` audit events (target < 3 s at 10,000);
- verification: a second daemon run with a short ``--verify-interval``; the ``seconds`` of
  its ``verification_done`` events, and the daemon's and simulators' CPU over each pass
  (target < 10 s at 10,000).

    python bench/simfleet.py --hosts 10000 [--procs 4] [--revocations 5] [--verify-passes 3]
        [--verify-interval 40] [--profile out.txt] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlmodel import col, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon import LogTail, cpu_seconds, fake_key, log, mem_available_mb, rss_mb

from keyward.errors import RegistryUnavailable
from keyward.keys import PublicKey
from keyward.registry.models import AuditEvent, DaemonStatus
from keyward.registry.ops import KeyClaim, add_key, add_person, add_role, grant_role, revoke_key
from keyward.registry.store import Registry
from keyward.testing.fleet import FleetHost, safe_base_dir
from keyward.testing.inventory import AccessSpec, InventorySpec, write_inventory
from keyward.testing.keypairs import make_ed25519

PEOPLE = 50
T = TypeVar("T")
DEPLOY, APP = "deploy", "app"
SECOND_OCTET = 77
MARKER = "keyward-simfleet"  # on every process this script starts (for a safe cleanup)


class SimFleet:
    """``procs`` simulator processes serving ``count`` hosts between them."""

    def __init__(self, base: Path, count: int, procs: int, agent_line: str) -> None:
        self.base = base
        self.count = count
        self.procs_wanted = procs
        self.agent_line = agent_line
        self.procs: list[subprocess.Popen[bytes]] = []
        self.controls: list[Path] = []
        self.hosts: list[FleetHost] = []

    def start(self) -> None:
        port = pick_port()
        per = -(-self.count // self.procs_wanted)
        specs = []
        for p in range(self.procs_wanted):
            first = p * per
            count = min(per, self.count - first)
            if count <= 0:
                break
            spec = self.base / f"sim{p}.json"
            control = self.base / f"sim{p}.sock"
            spec.write_text(
                json.dumps(
                    {
                        "prefix": "s",
                        "first": first,
                        "count": count,
                        "port": port,
                        "second": SECOND_OCTET,
                        "agent_key": self.agent_line,
                        "accounts": [DEPLOY, APP],
                        "login": "root",
                        "control": str(control),
                    }
                )
            )
            specs.append(spec)
            self.controls.append(control)
            out = (self.base / f"sim{p}.log").open("ab")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "keyward.testing.simhost", str(spec), MARKER],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 600
        for spec, proc in zip(specs, self.procs, strict=True):
            while not Path(f"{spec}.ready").exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"simulator {spec} exited; see its .log")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"simulator {spec} not ready")
                time.sleep(0.2)
        for spec in specs:
            for line in Path(f"{spec}.known_hosts").read_text().splitlines():
                where, kind, blob = line.split()
                address, _, port_text = where.strip("[").partition("]:")
                index = len(self.hosts) + 1
                self.hosts.append(
                    FleetHost(
                        name=f"s{index}",
                        address=address,
                        port=int(port_text),
                        host_key_pub=f"{kind} {blob}",
                        sshd_config=self.base / "unused",
                        dir=self.base,
                        authorized_keys_file="%h/.ssh/authorized_keys",
                    )
                )

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def control(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        replies = []
        for path in self.controls:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(30)
                sock.connect(str(path))
                sock.sendall(json.dumps(request).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            replies.append(json.loads(data))
        return replies

    def watch(self, needle: bytes, present: bool) -> None:
        import base64

        self.control(
            {
                "op": "watch",
                "needle_b64": base64.b64encode(needle).decode(),
                "present": present,
                "accounts": [DEPLOY, "root"],
            }
        )

    def wait_watch(self, since: float, timeout: float) -> float:
        """Seconds from ``since`` (time.monotonic) until every watched file complied."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = self.control({"op": "status"})
            if all(r["done_at"] is not None for r in replies):
                return max(r["done_at"] for r in replies) - since
            time.sleep(0.1)
        left = sum(r["remaining"] or 0 for r in self.control({"op": "status"}))
        raise RuntimeError(f"{left} simulated files not updated within {timeout}s")

    def cpu(self) -> float:
        return sum(cpu_seconds(p, children=False) for p in self.pids())

    def rss(self) -> float:
        return sum(rss_mb(p) for p in self.pids())

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()


def pick_port() -> int:
    """A port free on the simulators' first address (every host listens on it)."""
    with socket.socket() as sock:
        sock.bind((f"127.{SECOND_OCTET}.0.1", 0))
        return int(sock.getsockname()[1])


class Bench:
    def __init__(self, hosts: int, procs: int) -> None:
        self.base = safe_base_dir(f"keyward-simfleet-{secrets.token_hex(3)}-")
        self.agent = make_ed25519(self.base / "agent" / "id", comment="keyward-agent")
        self.fleet = SimFleet(self.base, hosts, procs, Path(f"{self.agent}.pub").read_text())
        self.db = self.base / "registry.db"
        self.inventory = self.base / "inventory"
        self.registry: Registry | None = None
        self.people = [f"p{i:02d}" for i in range(PEOPLE)]
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log: Path | None = None
        self._log_handle: Any = None
        self.tail: LogTail | None = None

    def setup(self) -> dict[str, Any]:
        t0 = time.monotonic()
        mem0 = mem_available_mb()
        self.fleet.start()
        started = time.monotonic() - t0
        spec = InventorySpec(
            environment="sim",
            login="root",
            accounts=(DEPLOY, APP),
            access=(
                AccessSpec(roles=("devops",), accounts=(DEPLOY, "root")),
                AccessSpec(roles=("qa",), accounts=(APP,), options=("no-port-forwarding",)),
            ),
            auth_logs=False,
        )
        write_inventory(self.inventory, self.fleet.hosts, spec, self.agent)
        self.registry, _, _ = Registry.initialise(f"sqlite:///{self.db}")
        with self.registry.write("bench-admin") as tx:
            add_role(tx, "devops", "bench")
            add_role(tx, "qa", "bench")
            for i, person in enumerate(self.people):
                add_person(tx, person, f"Person {i}", None)
                claim = KeyClaim("admin", tx.now + timedelta(days=300), attested_by="bench-admin")
                add_key(tx, person, fake_key(f"{person}@laptop"), claim)
                grant_role(tx, "devops", person, "bench", None)
                if i % 3 == 0:
                    grant_role(tx, "qa", person, "bench", None)
        return {
            "simulated": True,
            "hosts": len(self.fleet.hosts),
            "simulator_processes": len(self.fleet.procs),
            "simulators_start_s": round(started, 1),
            "simulators_rss_mb": round(self.fleet.rss()),
            "mem_available_before_mb": round(mem0),
        }

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KEYWARD_DB": str(self.db),
            "KEYWARD_INVENTORY": str(self.inventory),
            "KEYWARD_ACTOR": "keyward-daemon",
        }

    def start_daemon(self, *args: str) -> None:
        self.daemon_log = self.base / f"daemon-{int(time.time() * 1000)}.log"
        self._log_handle = self.daemon_log.open("ab")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "keyward", "daemon", *args],
            env=self.env(),
            stdout=self._log_handle,
            stderr=self._log_handle,
            start_new_session=True,
        )
        self.tail = LogTail(self.daemon_log)

    def stop_daemon(self) -> None:
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(timeout=10)
        self._log_handle.close()
        self.daemon = None

    def daemon_status(self) -> tuple[int, int]:
        assert self.registry is not None and self.daemon is not None
        with self.registry.read() as session:
            row = session.exec(
                select(DaemonStatus).where(col(DaemonStatus.id).like(f"%:{self.daemon.pid}"))
            ).first()
            if row is None:
                return 0, 0
            hosts = json.loads(row.hosts)
            synced = sum(
                1
                for name, h in hosts.items()
                if not name.startswith("@") and h["connected"] and h["confirmed_files"] >= 3
            )
            return row.hosts_connected, synced

    def wait_in_sync(self, timeout: float) -> float:
        start = time.monotonic()
        n = len(self.fleet.hosts)
        last = 0.0
        while time.monotonic() - start < timeout:
            assert self.daemon is not None
            if self.daemon.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.daemon_log}")
            connected, synced = patiently(self.daemon_status)
            if connected == n and synced == n:
                return time.monotonic() - start
            if time.monotonic() - last > 15:
                log(f"  waiting: {connected}/{n} connected, {synced}/{n} in sync")
                last = time.monotonic()
            time.sleep(1.0)
        raise RuntimeError(f"not in sync after {timeout}s")

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_daemon()
        with contextlib.suppress(Exception):
            self.fleet.stop()
        if self.registry is not None:
            self.registry.dispose()
        shutil.rmtree(self.base, ignore_errors=True)


def patiently(action: Callable[[], T], timeout: float = 300) -> T:
    """Run a registry read or write, again while the daemon's recorder holds SQLite's lock.

    At 10,000 hosts one round's record is tens of thousands of audit rows in a single
    transaction: a benchmark query may meet the lock for longer than the busy timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except RegistryUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def audit_removes(b: Bench, fingerprint: str) -> int:
    assert b.registry is not None
    with b.registry.read() as session:
        return int(
            session.exec(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.action == "host.remove",
                    col(AuditEvent.details).contains(fingerprint),
                )
            ).one()
        )


def start_profile(pid: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the daemon (every thread) into collapsed stacks, if asked for."""
    if out is None:
        return None
    return subprocess.Popen(
        [
            "py-spy",
            "record",
            "-p",
            str(pid),
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profile(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def bench_revocation(
    b: Bench, rounds: int, sync_timeout: float, profile: Path | None = None
) -> dict[str, Any]:
    assert b.registry is not None
    b.start_daemon("--verify-interval", "86400")
    synced = b.wait_in_sync(sync_timeout)
    assert b.daemon is not None and b.tail is not None
    time.sleep(5)  # the initial syncs' records settle
    profiler = start_profile(b.daemon.pid, profile)
    rss_synced = rss_mb(b.daemon.pid)
    n = len(b.fleet.hosts)
    log(f"revocation: {n} hosts in sync after {synced:.1f}s, RSS {rss_synced:.0f} MB")
    rows = []
    for i in range(rounds):
        person = b.people[i % len(b.people)]
        key = fake_key(f"{person}@round{i}")
        needle = key.base64.encode()
        b.fleet.watch(needle, True)

        def grant(person: str = person, key: PublicKey = key) -> None:
            assert b.registry is not None
            with b.registry.write("bench-admin") as tx:
                add_key(tx, person, key, KeyClaim("admin", tx.now + timedelta(days=300)))

        # Timed from before the commit: a push can finish before the writer returns.
        granted = time.monotonic()
        patiently(grant)
        grant_s = b.fleet.wait_watch(granted, 120)
        # The grant's round finishes recording (push_done) before the revocation.
        until = time.monotonic() + 120
        while time.monotonic() < until and not any(
            ev.get("event") == "push_done" for ev in b.tail.events()
        ):
            time.sleep(0.05)
        time.sleep(1.0)
        b.tail.events()
        b.fleet.watch(needle, False)
        d0, s0 = cpu_seconds(b.daemon.pid, children=False), b.fleet.cpu()

        def revoke(fingerprint: str = key.fingerprint) -> None:
            assert b.registry is not None
            with b.registry.write("bench-admin") as tx:
                revoke_key(tx, fingerprint, "bench round")

        committed = time.monotonic()  # before the commit (see the grant)
        patiently(revoke)
        revoke_s = b.fleet.wait_watch(committed, 120)
        audit_s = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if patiently(functools.partial(audit_removes, b, key.fingerprint)) >= 2 * n:
                audit_s = time.monotonic() - committed
                break
            time.sleep(0.05)
        lag_ms = None
        until = time.monotonic() + 30
        while lag_ms is None and time.monotonic() < until:
            for ev in b.tail.events():
                if ev.get("event") == "push_done":
                    lag_ms = ev.get("lag_ms")
            time.sleep(0.05)
        d1, s1 = cpu_seconds(b.daemon.pid, children=False), b.fleet.cpu()
        rows.append(
            {
                "round": i,
                "grant_on_all_hosts_s": round(grant_s, 3),
                "revoke_on_all_files_s": round(revoke_s, 3),
                "revoke_audit_2n_s": None if audit_s is None else round(audit_s, 3),
                "daemon_push_done_lag_ms": lag_ms,
                "daemon_cpu_s": round(d1 - d0, 2),
                "simulators_cpu_s": round(s1 - s0, 2),
            }
        )
        log(f"revocation round {i}: {rows[-1]}")
    rss_end = rss_mb(b.daemon.pid)
    stop_profile(profiler)
    b.stop_daemon()
    rev = [r["revoke_on_all_files_s"] for r in rows]
    audits = [r["revoke_audit_2n_s"] for r in rows if r["revoke_audit_2n_s"] is not None]
    return {
        "hosts": n,
        "files_per_revocation": 2 * n,
        "connect_and_sync_s": round(synced, 1),
        "daemon_rss_in_sync_mb": round(rss_synced),
        "daemon_rss_end_mb": round(rss_end),
        "rounds": rows,
        "revoke_median_s": round(statistics.median(rev), 3),
        "revoke_max_s": round(max(rev), 3),
        "grant_median_s": round(statistics.median(r["grant_on_all_hosts_s"] for r in rows), 3),
        "audit_median_s": round(statistics.median(audits), 3) if audits else None,
        "daemon_cpu_per_revocation_median_s": statistics.median(r["daemon_cpu_s"] for r in rows),
        "daemon_cpu_per_host_ms": round(
            1000 * statistics.median(r["daemon_cpu_s"] for r in rows) / n, 3
        ),
    }


def bench_verification(
    b: Bench, passes: int, interval: float, sync_timeout: float, profile: Path | None = None
) -> dict[str, Any]:
    b.start_daemon("--verify-interval", str(interval))
    synced = b.wait_in_sync(sync_timeout)
    assert b.daemon is not None and b.tail is not None
    profiler = start_profile(b.daemon.pid, profile)
    n = len(b.fleet.hosts)
    b.tail.events()  # passes that ran while hosts were still connecting do not count
    rows: list[dict[str, Any]] = []
    samples: list[tuple[float, float, float]] = []
    deadline = time.monotonic() + interval * 1.2 * (passes + 1) + 600
    while len(rows) < passes and time.monotonic() < deadline:
        samples.append((time.monotonic(), cpu_seconds(b.daemon.pid, children=False), b.fleet.cpu()))
        for ev in b.tail.events():
            if ev.get("event") != "verification_done" or ev.get("hosts") != n:
                continue
            seconds = float(ev["seconds"])
            seen = time.monotonic()
            before = [s for s in samples if s[0] <= seen - seconds - 0.2]
            s0 = before[-1] if before else samples[0]
            s1 = samples[-1]
            rows.append(
                {
                    "hosts": ev.get("hosts"),
                    "failed": ev.get("failed"),
                    "drift": ev.get("drift"),
                    "wall_s": seconds,
                    "daemon_cpu_s": round(s1[1] - s0[1], 2),
                    "simulators_cpu_s": round(s1[2] - s0[2], 2),
                    "daemon_rss_mb": round(rss_mb(b.daemon.pid)),
                }
            )
            log(f"verification pass: {rows[-1]}")
        time.sleep(0.1)
    stop_profile(profiler)
    b.stop_daemon()
    walls = [r["wall_s"] for r in rows]
    return {
        "hosts": n,
        "connect_and_sync_s": round(synced, 1),
        "verify_interval_s": interval,
        "passes": rows,
        "wall_median_s": round(statistics.median(walls), 3) if walls else None,
        "daemon_cpu_per_host_ms": round(
            1000 * statistics.median(r["daemon_cpu_s"] for r in rows) / n, 3
        )
        if rows
        else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=4, help="simulator processes")
    parser.add_argument("--revocations", type=int, default=5)
    parser.add_argument("--verify-passes", type=int, default=3)
    parser.add_argument("--verify-interval", type=float, default=30.0)
    parser.add_argument("--sync-timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output (revocations)")
    parser.add_argument(
        "--profile-verify", type=Path, default=None, help="py-spy output (verification passes)"
    )
    args = parser.parse_args()
    random.seed(1)
    b = Bench(args.hosts, args.procs)
    results: dict[str, Any] = {
        "simulation": "hosts are keyward.testing.simhost (asyncssh, helper protocol answered "
        "from memory); the daemon is real",
        "argv": sys.argv[1:],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "sched": os.sched_getscheduler(0),
    }
    old = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        log(f"starting {args.hosts} simulated hosts in {args.procs} processes under {b.base}")
        results["setup"] = b.setup()
        log(f"setup: {results['setup']}")
        if args.revocations:
            results["revocation"] = bench_revocation(
                b, args.revocations, args.sync_timeout, args.profile
            )
        if args.verify_passes:
            results["verification"] = bench_verification(
                b, args.verify_passes, args.verify_interval, args.sync_timeout, args.profile_verify
            )
    finally:
        log("tearing down")
        b.teardown()
        signal.signal(signal.SIGTERM, old)
        results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    summary = {
        k: (
            {kk: vv for kk, vv in v.items() if kk not in ("rounds", "passes")}
            if isinstance(v, dict)
            else v
        )
        for k, v in results.items()
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
