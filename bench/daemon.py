"""Benchmark: ``keyward daemon`` against a real local sshd fleet.

Sets up N loopback hosts (real OpenSSH sshd), K=3 managed accounts per host (root
as login + two throw-away local accounts), a SQLite registry with P=50 people
(one key each, all in role ``devops`` -> deploy+root, every 3rd also in ``qa`` ->
app) written through ``keyward.registry.ops``, and an inventory (``write_inventory``).

(a) revocation propagation: ``keyward daemon`` runs as a subprocess; for each of R
    rounds a fresh key is added to a devops person (and its arrival on every host
    is timed: the "re-grant"), then revoked; the time from the revoke's commit to
    the moment no host file on disk contains it any more is measured (also the
    daemon's own ``push_done`` lag_ms, and the time until the audit log holds the
    2N ``host.remove`` events).  Target: median < 1 s for N=100.
(b) cost of a full verification pass over open connections (daemon with a short
    ``--verify-interval``; ``verification_done`` events carry ``seconds``) versus a
    one-shot ``keyward reconcile`` of the same unchanged fleet: wall time, controller
    CPU (daemon: /proc/<pid>/stat; reconcile: RUSAGE_CHILDREN) and host-side CPU
    (every process under each sshd listener, utime+stime+cutime+cstime, so exited
    session processes are included through the listener's cutime/cstime).
    Target: >= 20x cheaper in wall and CPU.
(c) ``--hold``: N (default 1000) hosts served by N/10 sshd processes, each listening
    on 10 loopback addresses (``Match LocalAddress`` gives each host its own
    AuthorizedKeysFile); the daemon holds them for ``--hold-seconds`` and its RSS is
    sampled every ``--sample`` seconds.  Target: RSS < 300 MB, no growth.

Run as root (accounts, sshd).  Everything is on 127.0.0.0/8, bounded in time, and
torn down at the end (sshd trees, accounts, the /srv work directory).

    python bench/daemon.py --hosts 100 [--revocations 20] [--json out.json]
    python bench/daemon.py --hold --hosts 1000 --hold-seconds 600 [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import resource
import secrets
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from select import select as select_fds
from typing import Any

from sqlmodel import col, func, select

# The repository, for the test helpers that create local accounts (tests/accounts.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keyward.keys import ED25519, PublicKey, encode_string, parse_public_key
from keyward.registry.models import AuditEvent, DaemonStatus
from keyward.registry.ops import KeyClaim, add_key, add_person, add_role, grant_role, revoke_key
from keyward.registry.store import Registry
from keyward.testing.fleet import FleetHost, fleet_address, free_port, safe_base_dir
from keyward.testing.inventory import AccessSpec, InventorySpec, write_inventory
from keyward.testing.keypairs import make_ed25519
from keyward.testing.localfleet import LocalFleet, sshd_binary
from keyward.testing.processes import alive, children_map, freeze_tree, signal_all
from tests.accounts import ensure_account, remove_account

CLK_TCK = os.sysconf("SC_CLK_TCK")
PEOPLE = 50


def fake_key(comment: str = "") -> PublicKey:
    point = secrets.token_bytes(32)
    return PublicKey(ED25519, encode_string(ED25519.encode()) + encode_string(point), comment)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- /proc accounting -------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            raw = fh.read()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def cpu_seconds(pid: int, children: bool = True) -> float:
    """utime+stime (+cutime+cstime) of one process, seconds; 0 if it is gone."""
    f = proc_stat(pid)
    if f is None:
        return 0.0
    # fields after ")": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(f[11]) + int(f[12])
    if children:
        ticks += int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def tree_cpu(roots: list[int]) -> tuple[float, int]:
    """CPU seconds of every process under ``roots`` (incl. reaped children); and count."""
    tree = children_map()
    total = 0.0
    count = 0
    todo = list(roots)
    while todo:
        pid = todo.pop()
        total += cpu_seconds(pid)
        count += 1
        todo.extend(tree.get(pid, []))
    return total, count


def tree_cpu_by_program(roots: list[int]) -> dict[str, float]:
    """Own user and system CPU seconds (without reaped children) of every process under
    ``roots``, summed by program name (``comm``): how the hosts' share splits between sshd
    and the helper's Python, and between their own code and the kernel's."""
    tree = children_map()
    out: dict[str, float] = {}
    todo = list(roots)
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
                name = fh.read().strip()
        except OSError:
            name = "?"
        f = proc_stat(pid)
        if f is not None:
            for part, ticks in (("user", f[11]), ("system", f[12])):
                key = f"{name} {part}"
                out[key] = out.get(key, 0.0) + int(ticks) / CLK_TCK
        todo.extend(tree.get(pid, []))
    return out


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def mem_available_mb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pctl(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# -- fleets -----------------------------------------------------------------------


class MultiFleet:
    """N hosts on ``per`` addresses per sshd: N/per sshd processes instead of N.

    Every host keeps a unique address:port and, through ``Match LocalAddress``, its
    own AuthorizedKeysFile directory; hosts of one sshd share its host key.
    """

    def __init__(
        self, base: Path, count: int, per: int, first_address: int = 10, extra_config: str = ""
    ) -> None:
        self.base = base
        self.count = count
        self.per = per
        self.first_address = first_address
        self.extra_config = extra_config
        self.hosts: list[FleetHost] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        sshd = sshd_binary()
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        self.base.mkdir(mode=0o755, parents=True, exist_ok=True)
        groups = math.ceil(self.count / self.per)
        index = 0
        for g in range(groups):
            gdir = self.base / f"sshd{g}"
            gdir.mkdir(mode=0o755)
            key = gdir / "ssh_host_ed25519_key"
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
                check=True,
                capture_output=True,
                timeout=30,
            )
            pub = " ".join((gdir / "ssh_host_ed25519_key.pub").read_text().split()[:2])
            members: list[FleetHost] = []
            for _ in range(min(self.per, self.count - index)):
                index += 1
                name = f"m{index}"
                hdir = gdir / name
                (hdir / "keys").mkdir(mode=0o755, parents=True)
                hdir.chmod(0o755)
                address = fleet_address(self.first_address + index - 1)
                members.append(
                    FleetHost(
                        name=name,
                        address=address,
                        port=free_port(address),
                        host_key_pub=pub,
                        sshd_config=gdir / "sshd_config",
                        dir=hdir,
                        authorized_keys_file=f"{hdir}/keys/%u",
                    )
                )
            lines = [f"ListenAddress {h.address}:{h.port}" for h in members]
            lines += [
                f"HostKey {key}",
                f"PidFile {gdir / 'sshd.pid'}",
                "AuthorizedKeysFile none",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes yes",
                "PermitRootLogin prohibit-password",
                "LogLevel ERROR",
                "MaxStartups 200:30:400",
                "MaxSessions 50",
            ]
            for h in members:
                lines += [
                    f"Match LocalAddress {h.address}",
                    f"  AuthorizedKeysFile {h.authorized_keys_file}",
                ]
            config = gdir / "sshd_config"
            config.write_text("\n".join(lines) + "\n" + self.extra_config)
            test = subprocess.run(
                [sshd, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30
            )
            if test.returncode != 0:
                raise RuntimeError(f"sshd -t: {test.stderr.strip()}")
            with open(gdir / "sshd.log", "ab") as out:
                proc = subprocess.Popen(
                    [sshd, "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    close_fds=True,
                )
            self.procs.append(proc)
            self.hosts += members
        import socket

        deadline = time.monotonic() + 60
        pending = list(self.hosts)
        while pending and time.monotonic() < deadline:
            still = []
            for h in pending:
                try:
                    socket.create_connection((h.address, h.port), timeout=0.5).close()
                except OSError:
                    still.append(h)
            pending = still
            if pending:
                time.sleep(0.2)
        if pending:
            raise RuntimeError(f"{len(pending)} hosts never listened")

    def listener_pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                pids = freeze_tree(proc.pid)
                signal_all(pids, signal.SIGTERM)
                signal_all(pids, signal.SIGCONT)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and any(alive(p) for p in pids):
                    proc.poll()
                    time.sleep(0.02)
                signal_all([p for p in pids if alive(p)], signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()


def login_rc_config(base: Path) -> str:
    """sshd_config lines that give root's sessions an empty home for the shell's rc files.

    This machine's root ``.bashrc`` runs ``pyenv init``, whose ``pyenv rehash`` takes a
    lock and polls it every 0.1 s: 50 sessions starting at once queue on it for seconds
    (measured: one ``pyenv rehash`` 1.85 s wall during a run), which inflates every tool
    non-linearly with how many sessions it keeps in flight, and made some of 1,000 hosts
    time out. Real servers have no such rc. ``SetEnv HOME`` (applied by sshd after its
    own ``HOME``) points bash at an empty directory; the session still runs as root in
    root's home directory (sshd changes to the passwd home, not ``$HOME``).
    """
    home = base / "root-rc-home"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"Match User root\n  SetEnv HOME={home}\n"


class LocalFleetAdapter:
    """LocalFleet (one sshd per host) with the interface the benchmark uses."""

    def __init__(self, base: Path, count: int, extra_config: str = "") -> None:
        self.fleet = LocalFleet(
            base, count, name_prefix="b", log_level="ERROR", extra_config=extra_config
        )

    def start(self) -> None:
        self.fleet.start()

    @property
    def hosts(self) -> list[FleetHost]:
        return self.fleet.hosts

    def listener_pids(self) -> list[int]:
        return [p for p in (self.fleet.pid(h.name) for h in self.fleet.hosts) if p]

    def stop(self) -> None:
        self.fleet.stop()


def spread_over_block_groups(directory: Path) -> bool:
    """Make ``directory`` a top of directory hierarchies for ext4's allocator (``chattr +T``).

    A thousand hosts on one machine share one file system, where they would each have their
    own. Every write renames a new file over the old one, so every revocation frees 2,000
    inodes and allocates 2,000, and ext4 will not reuse an inode freed in the last minutes:
    each allocation walks past every recently freed inode of its block group (the kernel's
    ``recently_deleted``). With every host's directory in the same few block groups, that
    walk grows with the fleet and with the rounds already run, and was the largest single
    cost of a revocation (perf, 1,000 hosts: 13% of all samples, in ``ext4_create``).
    With ``+T`` the allocator spreads the hosts' directories over block groups, as if each
    had a file system of its own; the files are still written, ``fsync``ed and renamed the
    same way. Returns whether the attribute was set (not on other file systems).
    """
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    done = subprocess.run(
        ["chattr", "+T", str(directory)], capture_output=True, check=False
    ).returncode
    return done == 0


# -- environment ------------------------------------------------------------------


class Bench:
    def __init__(
        self, hosts: int, hold: bool, per_sshd: int, root_rc: bool = False, spread: bool = True
    ) -> None:
        self.tag = secrets.token_hex(3)
        self.spread = spread
        self.base = safe_base_dir(f"keyward-bench-{self.tag}-")
        # root_rc=True keeps this machine's root .bashrc (pyenv) in every session.
        self.root_rc = root_rc
        extra = "" if root_rc else login_rc_config(self.base)
        self.deploy, self.app = f"kbd{self.tag}", f"kba{self.tag}"
        self.accounts_made: list[str] = []
        self.fleet: Any = (
            MultiFleet(self.base / "fleet", hosts, per_sshd, extra_config=extra)
            if hold
            else LocalFleetAdapter(self.base / "fleet", hosts, extra_config=extra)
        )
        self.db = self.base / "registry.db"
        self.url = f"sqlite:///{self.db}"
        self.inventory = self.base / "inventory"
        self.registry: Registry | None = None
        self.people: list[str] = [f"p{i:02d}" for i in range(PEOPLE)]
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log: Path | None = None
        self._log_handle: Any = None

    # setup / teardown

    def setup(self) -> dict[str, Any]:
        t0 = time.monotonic()
        for name in (self.deploy, self.app):
            ensure_account(name, self.base / "home")
            self.accounts_made.append(name)
        mem0 = mem_available_mb()
        spread = self.spread and spread_over_block_groups(self.base / "fleet")
        self.fleet.start()
        t_fleet = time.monotonic() - t0
        agent = make_ed25519(self.base / "agent" / "id", comment="keyward-agent")
        spec = InventorySpec(
            environment="bench",
            login="root",
            accounts=(self.deploy, self.app),
            access=(
                AccessSpec(roles=("devops",), accounts=(self.deploy, "root")),
                AccessSpec(roles=("qa",), accounts=(self.app,), options=("no-port-forwarding",)),
            ),
            concurrency=50,
        )
        write_inventory(self.inventory, self.fleet.hosts, spec, agent)
        agent_line = Path(f"{agent}.pub").read_text()
        for host in self.fleet.hosts:
            path = host.authorized_keys_path("root")
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.write_text(agent_line)
            path.chmod(0o600)
        self.registry, _, _ = Registry.initialise(self.url)
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
            "root_rc": "machine's .bashrc" if self.root_rc else "skipped (SetEnv HOME)",
            "hosts_spread_over_block_groups": spread,
            "fleet_start_s": round(t_fleet, 1),
            "sshd_listeners": len(self.fleet.listener_pids()),
            "hosts": len(self.fleet.hosts),
            "mem_available_before_fleet_mb": round(mem0),
            "mem_available_after_fleet_mb": round(mem_available_mb()),
        }

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_daemon()
        with contextlib.suppress(Exception):
            self.fleet.stop()
        if self.registry is not None:
            self.registry.dispose()
        for name in self.accounts_made:
            with contextlib.suppress(Exception):
                remove_account(name)
        shutil.rmtree(self.base, ignore_errors=True)

    # the daemon

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
                self.daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(timeout=10)
        self._log_handle.close()
        self.daemon = None

    def daemon_status(self) -> tuple[int, int]:
        assert self.registry is not None
        with self.registry.read() as session:
            row = session.exec(
                select(DaemonStatus).where(DaemonStatus.id.like(f"%:{self.daemon.pid}"))  # type: ignore[union-attr]
            ).first()
            if row is None:
                return 0, 0
            hosts = json.loads(row.hosts)
            synced = sum(1 for h in hosts.values() if h["connected"] and h["confirmed_files"] >= 3)
            return row.hosts_connected, synced

    def wait_in_sync(self, timeout: float) -> float:
        """Until every host is connected and has all 3 files confirmed (heartbeat row)."""
        start = time.monotonic()
        n = len(self.fleet.hosts)
        last_report = 0.0
        while time.monotonic() - start < timeout:
            assert self.daemon is not None
            if self.daemon.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.daemon_log}")
            connected, synced = self.daemon_status()
            if connected == n and synced == n:
                return time.monotonic() - start
            if time.monotonic() - last_report > 15:
                log(f"  waiting: {connected}/{n} connected, {synced}/{n} in sync")
                last_report = time.monotonic()
            time.sleep(1.0)
        raise RuntimeError(f"not in sync after {timeout}s")

    def status_cli(self) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "keyward", "status", "--json"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return json.loads(done.stdout)

    # files on disk

    def key_files(self) -> list[Path]:
        """The files a devops key lands in: deploy and root on every host."""
        return [
            host.authorized_keys_path(account, home=Path("/nonexistent"))
            for host in self.fleet.hosts
            for account in (self.deploy, "root")
        ]


class LogTail:
    """Reads new JSON log lines of the daemon as they appear."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.buffer = b""

    def events(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


class FileWatch:
    """Waits until a needle is in (or gone from) every one of ``paths``, woken by inotify.

    The first version re-read every file every 5 ms. At 1,000 hosts that is 2,000 reads of
    7 KB per pass, about 40 ms of Python, so the observer kept most of one of this
    machine's two CPUs busy during the very seconds it timed, taking it from the daemon
    and the sshd it was timing. Now each file's directory is watched (``IN_MOVED_TO``:
    the helper renames a new file into place; ``IN_CLOSE_WRITE`` for writers in place),
    and a file is read again only after an event names it. A queue overflow falls back
    to reading every file still waited for. Create the watch before the commit, so that
    no change is missed between the commit and the wait.
    """

    IN_CLOSE_WRITE = 0x8
    IN_MOVED_TO = 0x80
    IN_Q_OVERFLOW = 0x4000
    _EVENT = struct.Struct("iIII")

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.names: dict[int, dict[bytes, Path]] = {}
        dirs: dict[Path, list[Path]] = {}
        for path in self.paths:
            dirs.setdefault(path.parent, []).append(path)
        mask = self.IN_CLOSE_WRITE | self.IN_MOVED_TO
        for directory, files in dirs.items():
            wd = libc.inotify_add_watch(self.fd, os.fsencode(directory), mask)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
            self.names.setdefault(wd, {}).update({os.fsencode(f.name): f for f in files})

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> FileWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _changed(self) -> set[Path] | None:
        """Paths named by the queued events; None after an overflow (anything may have)."""
        out: set[Path] = set()
        while True:
            try:
                data = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return out
            at = 0
            while at < len(data):
                wd, mask, _cookie, size = self._EVENT.unpack_from(data, at)
                name = data[at + 16 : at + 16 + size].rstrip(b"\0")
                at += 16 + size
                if mask & self.IN_Q_OVERFLOW:
                    return None
                path = self.names.get(wd, {}).get(name)
                if path is not None:
                    out.add(path)

    def wait(self, needle: bytes, present: bool, timeout: float, start: float) -> float:
        """Seconds from ``start`` (a ``perf_counter`` value) until every file agrees."""

        def settled(path: Path) -> bool:
            try:
                return (needle in path.read_bytes()) == present
            except OSError:
                return not present

        remaining = {p for p in self.paths if not settled(p)}
        while remaining:
            left = start + timeout - time.perf_counter()
            if left <= 0:
                raise RuntimeError(f"{len(remaining)} files not updated within {timeout}s")
            select_fds([self.fd], [], [], min(left, 1.0))
            changed = self._changed()
            for path in list(remaining if changed is None else changed & remaining):
                if settled(path):
                    remaining.discard(path)
        return time.perf_counter() - start


# -- (a) revocation ---------------------------------------------------------------


def bench_revocation(b: Bench, rounds: int) -> dict[str, Any]:
    assert b.registry is not None
    b.start_daemon("--verify-interval", "3600")
    synced_after = b.wait_in_sync(600)
    status = b.status_cli()
    log(
        f"(a) daemon in sync after {synced_after:.1f}s; status --json: "
        f"{status['daemon']['hosts_connected']}/{status['daemon']['hosts_total']} connected"
    )
    files = b.key_files()
    n = len(b.fleet.hosts)
    rows = []
    for i in range(rounds):
        person = b.people[i % len(b.people)]
        key = fake_key(f"{person}@round{i}")
        needle = key.base64.encode()
        with FileWatch(files) as watch:
            with b.registry.write("bench-admin") as tx:
                add_key(tx, person, key, KeyClaim("admin", tx.now + timedelta(days=300)))
            grant_s = watch.wait(needle, True, 60, time.perf_counter())
        time.sleep(1.0)  # let the push round finish recording
        b.tail.events()  # discard older events
        # Where the CPU goes during the revocation: the daemon's own, and the hosts' (every
        # process under the sshd listeners, exited session children included).
        listeners = b.fleet.listener_pids()
        assert b.daemon is not None
        d0, (h0, _) = cpu_seconds(b.daemon.pid, children=False), tree_cpu(listeners)
        by0 = tree_cpu_by_program(listeners)
        with FileWatch(files) as watch:
            with b.registry.write("bench-admin") as tx:
                revoke_key(tx, key.fingerprint, "bench round")
            committed = time.perf_counter()
            revoke_s = watch.wait(needle, False, 60, committed)
        d1, (h1, _) = cpu_seconds(b.daemon.pid, children=False), tree_cpu(listeners)
        by1 = tree_cpu_by_program(listeners)
        # audit: 2N host.remove events for this fingerprint
        audit_s = None
        lag_ms = None
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            with b.registry.read() as session:
                count = session.exec(
                    select(func.count())
                    .select_from(AuditEvent)
                    .where(
                        AuditEvent.action == "host.remove",
                        col(AuditEvent.details).contains(key.fingerprint),
                    )
                ).one()
            if count >= 2 * n:
                audit_s = time.perf_counter() - committed
                break
            time.sleep(0.02)
        until = time.perf_counter() + 5  # push_done is logged just after the last record
        while lag_ms is None and time.perf_counter() < until:
            for ev in b.tail.events():
                if ev.get("event") == "push_done" and lag_ms is None:
                    lag_ms = ev.get("lag_ms")
            time.sleep(0.02)
        rows.append(
            {
                "round": i,
                "grant_to_all_hosts_s": round(grant_s, 3),
                "revoke_to_all_files_s": round(revoke_s, 3),
                "revoke_to_audit_2n_s": round(audit_s, 3) if audit_s is not None else None,
                "daemon_push_done_lag_ms": lag_ms,
                # Sampled right after the last file changed (the round may still be
                # recording): the push's CPU, not the audit's.
                "daemon_cpu_to_disk_s": round(d1 - d0, 3),
                "hosts_cpu_to_disk_s": round(h1 - h0, 3),
                "hosts_cpu_by_program_s": {
                    k: round(v - by0.get(k, 0.0), 3) for k, v in sorted(by1.items())
                },
            }
        )
        log(
            f"(a) round {i}: grant {grant_s:.3f}s, revoke on disk {revoke_s:.3f}s, "
            f"audit {audit_s if audit_s is None else round(audit_s, 3)}s, daemon lag {lag_ms} ms"
        )
    daemon_rss = rss_mb(b.daemon.pid) if b.daemon else 0.0
    b.stop_daemon()
    rev = [r["revoke_to_all_files_s"] for r in rows]
    grants = [r["grant_to_all_hosts_s"] for r in rows]
    audits = [r["revoke_to_audit_2n_s"] for r in rows if r["revoke_to_audit_2n_s"] is not None]
    lags = [r["daemon_push_done_lag_ms"] for r in rows if r["daemon_push_done_lag_ms"] is not None]
    return {
        "hosts": n,
        "files_per_revocation": len(files),
        "initial_sync_s": round(synced_after, 1),
        "rounds": rows,
        "revoke_median_s": round(statistics.median(rev), 3),
        "revoke_p99_s": round(pctl(rev, 99), 3),
        "revoke_max_s": round(max(rev), 3),
        "grant_median_s": round(statistics.median(grants), 3),
        "grant_p99_s": round(pctl(grants, 99), 3),
        "audit_median_s": round(statistics.median(audits), 3) if audits else None,
        "audit_p99_s": round(pctl(audits, 99), 3) if audits else None,
        "daemon_lag_median_ms": statistics.median(lags) if lags else None,
        "daemon_rss_mb": round(daemon_rss, 1),
        "daemon_cpu_to_disk_median_s": statistics.median(r["daemon_cpu_to_disk_s"] for r in rows),
        "hosts_cpu_to_disk_median_s": statistics.median(r["hosts_cpu_to_disk_s"] for r in rows),
        "target_met": statistics.median(rev) < 1.0,
    }


# -- (d) offboarding confirmed by the daemon --------------------------------------


def bench_offboarding(b: Bench, rounds: int) -> dict[str, Any]:
    """From an offboarding's commit to its case closed by the daemon's read-back evidence.

    Each round offboards one person exactly as ``keyward offboard`` records it (the
    fleet's files as targets, from the same desired state), but without the command's
    own one-shot run: the running daemon must notice the case, remove the keys and
    confirm every file. Timed: all of the person's lines gone from disk, and the case
    marked ``confirmed`` in the registry.
    """
    from keyward.desired import compute_desired
    from keyward.inventory import load_inventory
    from keyward.registry.lifecycle import offboard
    from keyward.registry.models import OffboardingCase
    from keyward.registry.snapshot import load_snapshot

    assert b.registry is not None
    b.start_daemon("--verify-interval", "3600")
    synced_after = b.wait_in_sync(600)
    files = b.key_files()
    inventory = load_inventory(b.inventory)
    agent_key = parse_public_key(inventory.agent.identity_pub.read_text())
    rows = []
    # The last people: bench_revocation's extra keys went to the first ones.
    for person in list(reversed(b.people))[:rounds]:
        with b.registry.read() as session:
            snapshot = load_snapshot(session)
        needles = [k.key.base64.encode() for k in snapshot.keys_of().get(person, ())]
        desired = compute_desired(snapshot, inventory, inventory.hosts(), agent_key, b.registry.clock())
        targets = [
            (t.host, t.account, t.pattern, any(line.owner == person for line in d.lines))
            for t, d in desired.items()
        ]
        time.sleep(1.0)  # a quiet daemon, as in (a)
        with FileWatch(files) as watch:
            with b.registry.write("bench-admin") as tx:
                case = offboard(tx, person, "bench offboarding", targets)
            committed = time.perf_counter()
            case_id = case.id
            for needle in needles:
                watch.wait(needle, False, 60, committed)
        on_disk_s = time.perf_counter() - committed
        confirmed_s = None
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline:
            with b.registry.read() as session:
                status = session.get(OffboardingCase, case_id).status  # type: ignore[union-attr]
            if status == "confirmed":
                confirmed_s = time.perf_counter() - committed
                break
            time.sleep(0.01)
        rows.append(
            {
                "person": person,
                "targets": len(targets),
                "keys_gone_from_disk_s": round(on_disk_s, 3),
                "case_confirmed_s": round(confirmed_s, 3) if confirmed_s is not None else None,
            }
        )
        log(f"(d) {person}: gone from disk {on_disk_s:.3f}s, case confirmed {confirmed_s}s")
    b.stop_daemon()
    confirmed = [r["case_confirmed_s"] for r in rows if r["case_confirmed_s"] is not None]
    return {
        "hosts": len(b.fleet.hosts),
        "initial_sync_s": round(synced_after, 1),
        "rounds": rows,
        "gone_from_disk_median_s": round(statistics.median(r["keys_gone_from_disk_s"] for r in rows), 3),
        "case_confirmed_median_s": round(statistics.median(confirmed), 3) if confirmed else None,
        "case_confirmed_max_s": round(max(confirmed), 3) if confirmed else None,
        "unconfirmed_rounds": len(rows) - len(confirmed),
        "target_met": bool(confirmed) and len(confirmed) == len(rows) and statistics.median(confirmed) < 1.0,
    }


# -- (b) verification vs one-shot reconcile ---------------------------------------


class CpuSampler(threading.Thread):
    """Samples (time, daemon CPU, host-side CPU) every ``period`` seconds."""

    def __init__(self, daemon_pid: int, listeners: list[int], period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.daemon_pid = daemon_pid
        self.listeners = listeners
        self.period = period
        self.samples: list[tuple[float, float, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            t = time.monotonic()
            d = cpu_seconds(self.daemon_pid)
            h, _ = tree_cpu(self.listeners)
            self.samples.append((t, d, h))
            self.stopped.wait(self.period)

    def at(self, t: float) -> tuple[float, float, float]:
        """The last sample taken at or before ``t`` (or the first one)."""
        best = self.samples[0]
        for s in self.samples:
            if s[0] <= t:
                best = s
            else:
                break
        return best

    def after(self, t: float) -> tuple[float, float, float]:
        for s in self.samples:
            if s[0] >= t:
                return s
        return self.samples[-1]


def bench_verification(b: Bench, passes: int, reconciles: int, interval: float) -> dict[str, Any]:
    listeners = b.fleet.listener_pids()
    b.start_daemon("--verify-interval", str(interval))
    b.wait_in_sync(600)
    assert b.daemon is not None
    time.sleep(3)  # let the initial syncs' records settle
    sampler = CpuSampler(b.daemon.pid, listeners)
    sampler.start()
    # Idle baseline: the daemon and sshds when nothing is being verified.
    b.tail.events()
    idle_start = time.monotonic()
    verify_rows = []
    deadline = time.monotonic() + interval * 1.2 * (passes + 1) + 120
    while len(verify_rows) < passes and time.monotonic() < deadline:
        for ev in b.tail.events():
            if ev.get("event") != "verification_done":
                continue
            seen = time.monotonic()
            seconds = float(ev["seconds"])
            start = seen - seconds - 0.1
            s0, s1 = sampler.at(start), sampler.after(seen)
            verify_rows.append(
                {
                    "hosts": ev.get("hosts"),
                    "drift": ev.get("drift"),
                    "failed": ev.get("failed"),
                    "wall_s": seconds,
                    "window_s": round(s1[0] - s0[0], 3),
                    "controller_cpu_s": round(s1[1] - s0[1], 3),
                    "host_cpu_s": round(s1[2] - s0[2], 3),
                }
            )
            log(f"(b) verification pass: {verify_rows[-1]}")
        time.sleep(0.05)
    # idle rate over a stretch without a pass: the first samples (before pass 1 began)
    idle_end = time.monotonic()
    sampler.stopped.set()
    sampler.join()
    idle = [s for s in sampler.samples if s[0] <= idle_start + interval * 0.8]
    idle_rate = None
    if len(idle) > 2:
        span = idle[-1][0] - idle[0][0]
        idle_rate = {
            "controller_cpu_per_s": round((idle[-1][1] - idle[0][1]) / span, 4),
            "host_cpu_per_s": round((idle[-1][2] - idle[0][2]) / span, 4),
            "span_s": round(span, 1),
        }
    daemon_rss = rss_mb(b.daemon.pid)
    b.stop_daemon()
    _ = idle_end

    # One-shot reconcile of the same, unchanged fleet.
    time.sleep(2)
    recon_rows = []
    for _ in range(reconciles):
        h0, _ = tree_cpu(listeners)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "keyward", "reconcile"],
            env=b.env(),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        time.sleep(1.0)  # let the listeners reap their session children
        h1, _ = tree_cpu(listeners)
        row = {
            "exit": done.returncode,
            "summary": done.stdout.strip().splitlines()[0] if done.stdout.strip() else "",
            "wall_s": round(wall, 3),
            "controller_cpu_s": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 3),
            "host_cpu_s": round(h1 - h0, 3),
        }
        recon_rows.append(row)
        log(f"(b) one-shot reconcile: {row}")

    def med(rows: list[dict[str, Any]], k: str) -> float:
        return statistics.median(r[k] for r in rows)

    v_wall, r_wall = med(verify_rows, "wall_s"), med(recon_rows, "wall_s")
    v_cpu = med(verify_rows, "controller_cpu_s") + med(verify_rows, "host_cpu_s")
    r_cpu = med(recon_rows, "controller_cpu_s") + med(recon_rows, "host_cpu_s")
    return {
        "hosts": len(b.fleet.hosts),
        "verify_interval_s": interval,
        "verification_passes": verify_rows,
        "idle_rate": idle_rate,
        "daemon_rss_mb": round(daemon_rss, 1),
        "reconciles": recon_rows,
        "verify_wall_median_s": v_wall,
        "verify_controller_cpu_median_s": med(verify_rows, "controller_cpu_s"),
        "verify_host_cpu_median_s": med(verify_rows, "host_cpu_s"),
        "reconcile_wall_median_s": r_wall,
        "reconcile_controller_cpu_median_s": med(recon_rows, "controller_cpu_s"),
        "reconcile_host_cpu_median_s": med(recon_rows, "host_cpu_s"),
        "wall_ratio": round(r_wall / v_wall, 1) if v_wall else None,
        "cpu_ratio": round(r_cpu / v_cpu, 1) if v_cpu else None,
        "controller_cpu_ratio": round(
            med(recon_rows, "controller_cpu_s") / max(0.01, med(verify_rows, "controller_cpu_s")), 1
        ),
        "host_cpu_ratio": round(
            med(recon_rows, "host_cpu_s") / max(0.01, med(verify_rows, "host_cpu_s")), 1
        ),
    }


# -- (c) hold ---------------------------------------------------------------------


def bench_hold(b: Bench, seconds: float, sample: float, connect_timeout: float) -> dict[str, Any]:
    n = len(b.fleet.hosts)
    mem0 = mem_available_mb()
    t0 = time.monotonic()
    b.start_daemon()  # default --verify-interval 300
    assert b.daemon is not None
    synced = b.wait_in_sync(connect_timeout)
    mem1 = mem_available_mb()
    log(f"(c) {n} hosts connected and in sync after {synced:.0f}s; holding {seconds:.0f}s")
    samples = []
    events: dict[str, int] = {}
    verifications = []
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        connected, _ = b.daemon_status()
        samples.append(
            {
                "t_s": round(elapsed, 1),
                "rss_mb": round(rss_mb(b.daemon.pid), 1),
                "cpu_s": round(cpu_seconds(b.daemon.pid, children=False), 2),
                "connected": connected,
                "mem_available_mb": round(mem_available_mb()),
            }
        )
        for ev in b.tail.events():
            name = str(ev.get("event"))
            events[name] = events.get(name, 0) + 1
            if name == "verification_done":
                verifications.append({k: ev.get(k) for k in ("hosts", "failed", "seconds")})
        if elapsed >= seconds:
            break
        log(f"(c) t={elapsed:.0f}s rss={samples[-1]['rss_mb']} MB connected={connected}")
        if b.daemon.poll() is not None:
            raise RuntimeError("daemon exited during hold")
        time.sleep(max(0.0, sample - (time.monotonic() - start - elapsed)))
    rss = [s["rss_mb"] for s in samples]
    half = len(rss) // 2
    b.stop_daemon()
    return {
        "hosts": n,
        "sshd_processes": len(b.fleet.listener_pids()),
        "connect_and_sync_s": round(synced, 1),
        "hold_s": seconds,
        "sample_every_s": sample,
        "samples": samples,
        "rss_first_mb": rss[0],
        "rss_max_mb": max(rss),
        "rss_last_mb": rss[-1],
        "rss_growth_mb": round(rss[-1] - rss[0], 1),
        "rss_growth_second_half_mb": round(rss[-1] - rss[half], 1),
        "min_connected": min(s["connected"] for s in samples),
        "mem_used_by_connections_mb": round(mem0 - mem1),
        "verification_passes": verifications,
        "log_event_counts": events,
        "total_s": round(time.monotonic() - t0, 1),
        "target_met": max(rss) < 300,
    }


# -- main -------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=None, help="default 100, or 1000 with --hold")
    parser.add_argument("--revocations", type=int, default=20)
    parser.add_argument("--verify-passes", type=int, default=3)
    parser.add_argument("--verify-interval", type=float, default=15.0)
    parser.add_argument("--reconciles", type=int, default=3)
    parser.add_argument("--skip-a", action="store_true")
    parser.add_argument("--skip-b", action="store_true")
    parser.add_argument("--offboardings", type=int, default=5, help="(d) rounds; 0 skips (d)")
    parser.add_argument("--hold", action="store_true", help="run (c) only")
    parser.add_argument("--hold-seconds", type=float, default=600)
    parser.add_argument("--sample", type=float, default=10)
    parser.add_argument("--per-sshd", type=int, default=10)
    parser.add_argument("--connect-timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--no-spread",
        action="store_true",
        help="leave the hosts' directories where ext4 puts them (see spread_over_block_groups)",
    )
    parser.add_argument(
        "--root-rc", action="store_true", help="keep root's .bashrc in sessions (see login_rc_config)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (local accounts and sshd)", file=sys.stderr)
        return 2
    hosts = args.hosts or (1000 if args.hold else 100)
    b = Bench(hosts, args.hold, args.per_sshd, args.root_rc, spread=not args.no_spread)
    results: dict[str, Any] = {"argv": sys.argv[1:], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    old_handler = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        log(f"setting up {hosts} hosts under {b.base}")
        results["setup"] = b.setup()
        log(f"setup: {results['setup']}")
        if args.hold:
            results["hold"] = bench_hold(b, args.hold_seconds, args.sample, args.connect_timeout)
        else:
            if not args.skip_a:
                results["revocation"] = bench_revocation(b, args.revocations)
            if args.offboardings:
                results["offboarding"] = bench_offboarding(b, args.offboardings)
            if not args.skip_b:
                results["verification"] = bench_verification(
                    b, args.verify_passes, args.reconciles, args.verify_interval
                )
    finally:
        log("tearing down")
        b.teardown()
        signal.signal(signal.SIGTERM, old_handler)
        results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    text = json.dumps(results, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    summary = {k: v for k, v in results.items()}
    for section in ("revocation", "offboarding", "verification", "hold"):
        if section in summary:
            summary[section] = {
                k: v
                for k, v in summary[section].items()
                if k not in ("rounds", "samples", "verification_passes", "reconciles")
            }
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
