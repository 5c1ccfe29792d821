"""Benchmark: three ``keyward daemon`` processes splitting a SIMULATED fleet through PostgreSQL.

A simulation, labelled as such in every result: the hosts are ``keyward.testing.simhost``
SSH servers (asyncssh, the helper's protocol answered from memory), many per process on
loopback addresses 127.77.x.y, exactly as in ``bench/simfleet.py`` (whose fleet, key and
helpers this script imports). What is real: a PostgreSQL server started for the run on
127.0.0.1 (``tests/pgserver.py``, fsync off), the registry in it, and ``--daemons`` real
``keyward daemon`` processes with the cluster's default timings (heartbeat 2 s, liveness
and lease 10 s, 1,024 shards), each its own process, log file and member id.

Measured (wall clock of this script, CPU and RSS from ``/proc``):

- the split: per daemon the hosts it holds, its RSS once all are in sync, and when (from
  the daemons' start) its share stopped changing and was all connected and in sync (from
  the ``daemon_status`` rows the daemons write); the shards' leases per daemon; the
  balance (min/max hosts per daemon); how often each daemon changed what it holds
  (``hosts_held`` events: a rebalancing storm shows here);
- revocation rounds: a key added to a devops person (deploy + root files on every host),
  then revoked; time from the revoke's commit until no simulated file holds it (the
  simulators' watch, on the system-wide monotonic clock) and until the registry holds the
  2N ``host.remove`` audit events; each daemon's CPU over the round;
- ``--failover`` (optional, slow at thousands of hosts): SIGKILL one daemon, time until
  the survivors hold all its hosts and until they are all in sync again.

    python bench/simcluster.py --hosts 30000 --daemons 3 [--procs 12] [--revocations 5]
        [--failover] [--json out.json]

Every wait has a deadline; every process and directory it starts is removed on exit,
also on failure, SIGTERM or ^C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlmodel import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon import LogTail, cpu_seconds, fake_key, log, mem_available_mb, rss_mb
from simfleet import APP, DEPLOY, PEOPLE, SimFleet, audit_removes, patiently

from keyward.registry.models import DaemonStatus
from keyward.registry.ops import KeyClaim, add_key, add_person, add_role, grant_role, revoke_key
from keyward.registry.store import Registry
from keyward.testing.fleet import safe_base_dir
from keyward.testing.inventory import AccessSpec, InventorySpec, write_inventory
from keyward.testing.keypairs import make_ed25519
from tests.pgserver import PgServer

FILES_PER_HOST = 3  # deploy, app and root's authorized_keys: a host is in sync with all three
HOSTS_PER_SIMULATOR = 2500

METHOD = (
    "SIMULATED hosts (keyward.testing.simhost: asyncssh servers answering the helper's "
    "protocol from memory, 127.77.x.y, one pinned ed25519 host key each) in separate "
    "processes; a real PostgreSQL on 127.0.0.1 (fsync off) holds the registry; N real "
    "'keyward daemon' processes with the default cluster timings share the fleet through "
    "it. Split times are from the daemons' start, read from their daemon_status rows "
    "(polled every second); revocation times from the revoke's commit until the "
    "simulators saw the last watched file change (system-wide monotonic clock)."
)


class Member:
    """One ``keyward daemon`` process, its log and its ``daemon_status`` row."""

    def __init__(self, base: Path, index: int, env: dict[str, str], args: list[str]) -> None:
        self.name = f"d{index}"
        self.log = base / f"daemon-{self.name}.log"
        self.env = {**env, "KEYWARD_ACTOR": f"daemon-{self.name}"}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail = LogTail(self.log)
        self.events: list[dict[str, Any]] = []  # everything read from the log so far

    def start(self) -> None:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "keyward", "daemon", *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=handle,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read_events(self) -> list[dict[str, Any]]:
        new = self.tail.events()
        self.events.extend(new)
        return new

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Bench:
    def __init__(self, hosts: int, procs: int, daemons: int, daemon_args: list[str]) -> None:
        self.base = safe_base_dir("keyward-simcluster-")
        self.agent = make_ed25519(self.base / "agent" / "id", comment="keyward-agent")
        self.fleet = SimFleet(self.base, hosts, procs, Path(f"{self.agent}.pub").read_text())
        self.inventory = self.base / "inventory"
        self.pg = PgServer(database="keyward_bench")
        self.registry: Registry | None = None
        self.people = [f"p{i:02d}" for i in range(PEOPLE)]
        self.daemon_count = daemons
        self.daemon_args = daemon_args
        self.members: list[Member] = []

    def setup(self) -> dict[str, Any]:
        t0 = time.monotonic()
        mem0 = mem_available_mb()
        self.pg.start()
        pg_s = time.monotonic() - t0
        self.fleet.start()
        started = time.monotonic() - t0 - pg_s
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
        self.registry, _, _ = Registry.initialise(self.pg.url)
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
            "postgres_start_s": round(pg_s, 1),
            "simulators_start_s": round(started, 1),
            "simulators_rss_mb": round(self.fleet.rss()),
            "mem_available_before_mb": round(mem0),
        }

    def start_daemons(self) -> None:
        env = {
            **os.environ,
            "KEYWARD_DB": self.pg.url,
            "KEYWARD_INVENTORY": str(self.inventory),
        }
        for i in range(self.daemon_count):
            member = Member(self.base, i, env, self.daemon_args)
            member.start()
            self.members.append(member)

    def live(self) -> list[Member]:
        return [m for m in self.members if m.alive()]

    def statuses(self) -> dict[str, tuple[set[str], int, int]]:
        """Per live daemon: the hosts it holds, how many are connected, how many in sync."""
        assert self.registry is not None
        by_pid = {m.pid: m for m in self.live()}
        out: dict[str, tuple[set[str], int, int]] = {m.name: (set(), 0, 0) for m in by_pid.values()}
        with self.registry.read() as session:
            for row in session.exec(select(DaemonStatus).where(DaemonStatus.stopped_at == None)):  # noqa: E711
                parts = row.id.split(":")
                pid = int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else -1
                if pid not in by_pid:
                    continue
                hosts = json.loads(row.hosts)
                held = {name for name in hosts if not name.startswith("@")}
                connected = sum(1 for name in held if hosts[name]["connected"])
                synced = sum(
                    1
                    for name in held
                    if hosts[name]["connected"] and hosts[name]["confirmed_files"] >= FILES_PER_HOST
                )
                out[by_pid[pid].name] = (held, connected, synced)
        return out

    def leases(self) -> dict[str, int]:
        """Unexpired shard leases per daemon (by the database's clock)."""
        assert self.registry is not None
        by_pid = {str(m.pid): m.name for m in self.members}
        out: dict[str, int] = {}
        with self.registry.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT holder, count(*) FROM shard_lease "
                    "WHERE expires_at > clock_timestamp() GROUP BY holder"
                )
            )
            for holder, count in rows:
                parts = str(holder).split(":")
                name = by_pid.get(parts[1], holder) if len(parts) >= 3 else holder
                out[name] = int(count)
        return out

    def registry_size(self) -> dict[str, Any]:
        """Audit rows and the database's size: what the run leaves in PostgreSQL."""
        assert self.registry is not None
        with self.registry.engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM audit_event")).scalar_one()
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
            # How often the daemons rewrote their status rows (each holds its whole host map).
            updates = conn.execute(
                text("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'daemon_status'")
            ).scalar()
            status_bytes = conn.execute(
                text("SELECT coalesce(sum(length(hosts)), 0) FROM daemon_status")
            ).scalar_one()
        return {
            "audit_events": int(rows),
            "database_mb": round(int(size) / 2**20),
            "daemon_status_updates": None if updates is None else int(updates),
            "daemon_status_hosts_bytes": int(status_bytes),
        }

    def wait_split(self, since: float, timeout: float, what: str) -> dict[str, Any]:
        """Until every host is held by exactly one live daemon and all are in sync.

        Returns per daemon its final share and the times (from ``since``) after which its
        set of hosts no longer changed (``hold_s``) and it was also all in sync (``sync_s``).
        """
        n = len(self.fleet.hosts)
        everything = {h.name for h in self.fleet.hosts}
        samples: list[tuple[float, dict[str, tuple[set[str], int, int]]]] = []
        last_log = 0.0
        deadline = since + timeout
        while True:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"{what}: hosts not split and in sync after {timeout}s")
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None and m.proc.returncode != -9:
                    raise RuntimeError(f"daemon {m.name} exited ({m.proc.returncode}): {m.log}")
            st = patiently(self.statuses, timeout=60)
            samples.append((now - since, st))
            held_total = sum(len(h) for h, _, _ in st.values())
            union = set().union(*(h for h, _, _ in st.values())) if st else set()
            done = (
                held_total == n
                and union == everything
                and all(len(h) == c == s for h, c, s in st.values())
            )
            if done:
                break
            if now - last_log > 15:
                state = {k: f"{len(h)}/{c}/{s}" for k, (h, c, s) in sorted(st.items())}
                log(f"  {what}: held/connected/in sync {state} ({held_total}/{n} held)")
                last_log = now
            time.sleep(1.0)
        total = samples[-1][0]
        final = samples[-1][1]
        per: dict[str, Any] = {}
        for name, (held, _, _) in sorted(final.items()):
            hold_s = sync_s = 0.0
            for t, st in samples:
                h, c, s = st.get(name, (set(), 0, 0))
                if h != held:
                    hold_s = t
                if h != held or not (len(h) == c == s):
                    sync_s = t
            member = next(m for m in self.members if m.name == name)
            per[name] = {
                "hosts_held": len(held),
                "hold_s": round(hold_s, 1),
                "hold_and_sync_s": round(sync_s, 1),
                "rss_mb": round(rss_mb(member.pid)),
                "cpu_s": round(cpu_seconds(member.pid, children=False), 1),
            }
        shares = [len(h) for h, _, _ in final.values()]
        return {
            "all_held_and_in_sync_s": round(total, 1),
            "daemons": per,
            "hosts_min": min(shares),
            "hosts_max": max(shares),
            "balance_min_over_max": round(min(shares) / max(shares), 3) if max(shares) else None,
            "shard_leases": self.leases(),
        }

    def churn(self) -> dict[str, Any]:
        """How often each daemon changed its hosts, and how many it let go, from its log."""
        out: dict[str, Any] = {}
        for m in self.members:
            m.read_events()
            held = [e for e in m.events if e.get("event") == "hosts_held"]
            out[m.name] = {
                "hosts_held_events": len(held),
                "hosts_let_go": sum(int(e.get("let_go") or 0) for e in held),
                "lease_acquired_events": sum(
                    1 for e in m.events if e.get("event") == "lease_acquired"
                ),
                "lease_lost_events": sum(1 for e in m.events if e.get("event") == "lease_lost"),
                "write_fenced_events": sum(1 for e in m.events if e.get("event") == "write_fenced"),
            }
        return out

    def teardown(self) -> None:
        for m in self.members:
            with contextlib.suppress(Exception):
                m.stop()
        for m in self.members:
            with contextlib.suppress(Exception):
                m.kill()
        with contextlib.suppress(Exception):
            self.fleet.stop()
        if self.registry is not None:
            with contextlib.suppress(Exception):
                self.registry.dispose()
        with contextlib.suppress(Exception):
            self.pg.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def bench_split(b: Bench, timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    b.start_daemons()
    log(f"started {len(b.members)} daemons: " + ", ".join(f"{m.name}={m.pid}" for m in b.members))
    split = b.wait_split(t0, timeout, "split")
    split["churn"] = b.churn()
    split["registry"] = patiently(b.registry_size, timeout=60)
    log(f"split: {json.dumps(split)}")
    return split


def wait_push_done(b: Bench, timeout: float) -> None:
    """Until every live daemon that holds hosts logged the end of a push."""
    waiting = {m.name for m in b.live()}
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for m in b.live():
            if any(e.get("event") == "push_done" for e in m.read_events()):
                waiting.discard(m.name)
        time.sleep(0.05)


def bench_revocation(b: Bench, rounds: int, round_timeout: float) -> dict[str, Any]:
    assert b.registry is not None
    n = len(b.fleet.hosts)
    time.sleep(5)  # the initial syncs' records settle
    rows = []
    for i in range(rounds):
        person = b.people[i % len(b.people)]
        key = fake_key(f"{person}@round{i}")
        needle = key.base64.encode()
        b.fleet.watch(needle, True)
        for m in b.live():
            m.read_events()

        def grant(person: str = person, key: Any = key) -> None:
            assert b.registry is not None
            with b.registry.write("bench-admin") as tx:
                add_key(tx, person, key, KeyClaim("admin", tx.now + timedelta(days=300)))

        # Timed from before the commit: a push can finish before the writer returns.
        granted = time.monotonic()
        patiently(grant)
        grant_s = b.fleet.wait_watch(granted, round_timeout)
        wait_push_done(b, round_timeout)  # the grant's rounds are recorded before the revoke
        time.sleep(1.0)
        for m in b.live():
            m.read_events()
        b.fleet.watch(needle, False)
        cpu0 = {m.name: cpu_seconds(m.pid, children=False) for m in b.live()}
        sim0 = b.fleet.cpu()

        def revoke(fingerprint: str = key.fingerprint) -> None:
            assert b.registry is not None
            with b.registry.write("bench-admin") as tx:
                revoke_key(tx, fingerprint, "bench round")

        committed = time.monotonic()  # before the commit (see the grant)
        patiently(revoke)
        revoke_s = b.fleet.wait_watch(committed, round_timeout)
        audit_s = None
        deadline = time.monotonic() + round_timeout
        while time.monotonic() < deadline:
            if audit_removes(b, key.fingerprint) >= 2 * n:  # type: ignore[arg-type]
                audit_s = time.monotonic() - committed
                break
            time.sleep(0.1)
        wait_push_done(b, 30)
        cpu1 = {m.name: cpu_seconds(m.pid, children=False) for m in b.live()}
        rows.append(
            {
                "round": i,
                "grant_on_all_files_s": round(grant_s, 3),
                "revoke_on_all_files_s": round(revoke_s, 3),
                "revoke_audit_2n_s": None if audit_s is None else round(audit_s, 3),
                "daemon_cpu_s": {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0 if k in cpu1},
                "simulators_cpu_s": round(b.fleet.cpu() - sim0, 2),
            }
        )
        log(f"revocation round {i}: {rows[-1]}")
    rev = [r["revoke_on_all_files_s"] for r in rows]
    audits = [r["revoke_audit_2n_s"] for r in rows if r["revoke_audit_2n_s"] is not None]
    names = sorted({k for r in rows for k in r["daemon_cpu_s"]})
    return {
        "hosts": n,
        "files_per_revocation": 2 * n,
        "rounds": rows,
        "revoke_median_s": round(statistics.median(rev), 3),
        "revoke_max_s": round(max(rev), 3),
        "grant_median_s": round(statistics.median(r["grant_on_all_files_s"] for r in rows), 3),
        "audit_median_s": round(statistics.median(audits), 3) if audits else None,
        "daemon_cpu_per_round_median_s": {
            k: statistics.median(r["daemon_cpu_s"].get(k, 0.0) for r in rows) for k in names
        },
        "daemon_rss_mb": {m.name: round(rss_mb(m.pid)) for m in b.live()},
    }


def bench_failover(b: Bench, timeout: float) -> dict[str, Any]:
    """SIGKILL the daemon holding the most hosts; until the survivors hold them, in sync."""
    st = patiently(b.statuses, timeout=60)
    victim = max(b.live(), key=lambda m: len(st.get(m.name, (set(), 0, 0))[0]))
    moved = len(st[victim.name][0])
    log(f"failover: SIGKILL {victim.name} (pid {victim.pid}, {moved} hosts)")
    for m in b.live():
        m.read_events()
    t0 = time.monotonic()
    victim.kill()
    result = b.wait_split(t0, timeout, "failover")
    result["killed"] = victim.name
    result["hosts_moved"] = moved
    # When the survivors took its shards' leases, from their logs.
    taken = []
    for m in b.live():
        for e in m.read_events():
            if e.get("event") == "lease_acquired":
                taken.append(e)
    result["lease_acquired_events_after_kill"] = len(taken)
    result["churn"] = b.churn()
    log(f"failover: {json.dumps(result)}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=30000)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument(
        "--procs",
        type=int,
        default=None,
        help=f"simulator processes (default: one per {HOSTS_PER_SIMULATOR} hosts, 2 to 12)",
    )
    parser.add_argument("--revocations", type=int, default=5)
    parser.add_argument("--failover", action="store_true", help="SIGKILL one daemon at the end")
    parser.add_argument("--split-timeout", type=float, default=3600.0)
    parser.add_argument("--round-timeout", type=float, default=300.0)
    parser.add_argument("--failover-timeout", type=float, default=1800.0)
    parser.add_argument("--max-connecting", type=int, default=50, help="per daemon")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    procs = args.procs or max(2, min(12, -(-args.hosts // HOSTS_PER_SIMULATOR)))
    daemon_args = ["--verify-interval", "86400", "--max-connecting", str(args.max_connecting)]
    b = Bench(args.hosts, procs, args.daemons, daemon_args)
    results: dict[str, Any] = {
        "simulated": True,
        "method": METHOD,
        "argv": sys.argv[1:],
        "daemon_args": daemon_args,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "sched": os.sched_getscheduler(0),
        "cpus": os.cpu_count(),
    }
    t_start = time.monotonic()
    old = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # ^C also when started with &
    try:
        log(f"starting {args.hosts} simulated hosts in {procs} processes under {b.base}")
        results["setup"] = b.setup()
        log(f"setup: {results['setup']}")
        results["split"] = bench_split(b, args.split_timeout)
        if args.revocations:
            results["revocation"] = bench_revocation(b, args.revocations, args.round_timeout)
        if args.failover:
            results["failover"] = bench_failover(b, args.failover_timeout)
        results["simulators_rss_end_mb"] = round(b.fleet.rss())
        results["registry_end"] = patiently(b.registry_size, timeout=60)
    finally:
        log("tearing down")
        b.teardown()
        signal.signal(signal.SIGTERM, old)
        results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
        results["end_to_end_s"] = round(time.monotonic() - t_start, 1)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    summary = {
        k: ({kk: vv for kk, vv in v.items() if kk != "rounds"} if isinstance(v, dict) else v)
        for k, v in results.items()
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
