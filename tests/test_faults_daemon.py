"""The daemon under faults: flapping hosts, a registry file that goes away and comes back,
and a burst of 1,000 registry changes.  It stays up, its memory stays bounded, and it
converges once the fault clears (checked with ``keyward plan`` and real ssh logins).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyward.registry import ops
from keyward.registry.db import sqlite_path
from keyward.registry.store import Registry
from tests.agent_env import AgentEnv
from tests.test_daemon import Daemon, everywhere, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def daemon(env: AgentEnv, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(env, tmp_path / "daemon.log", "--verify-interval", "3")
    d.start()
    try:
        yield d
    finally:
        if d.alive():
            d.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def converged(env: AgentEnv) -> bool:
    return env.kw("plan").code == 0


def test_flapping_host_is_converged_when_it_settles(env: AgentEnv, daemon: Daemon) -> None:
    env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="first push")
    victim = env.hosts[1]
    for i in range(4):
        env.fleet.stop_host(victim.name)
        env.person_with_key(f"f{i}", "devops")
        time.sleep(0.7)
        env.fleet.start_host(victim.name)
        time.sleep(0.7)
    assert daemon.alive()
    wait_until(lambda: env.can_login(victim, env.deploy, "f3"), timeout=120, what="reconverge")
    wait_until(lambda: converged(env), timeout=60, what="plan in sync")
    assert daemon.alive()


def test_registry_file_going_away_and_back(env: AgentEnv, daemon: Daemon) -> None:
    env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="first push")
    db = sqlite_path(env.kw.db_url)
    assert db is not None
    files = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
    for path in files:
        os.rename(path, f"{path}.away")
    try:
        refused = env.kw("person", "add", "bob", "--name", "Bob")
        assert refused.code == 2 and "no registry" in refused.err, str(refused)
        time.sleep(3)  # several polls and a verification pass without a registry
        assert daemon.alive()
    finally:
        for path in files:
            os.rename(f"{path}.away", path)
    env.person_with_key("bob", "devops")
    wait_until(everywhere(env, env.deploy, "bob", True), what="bob after the registry returned")
    wait_until(lambda: converged(env), timeout=60, what="plan in sync")
    assert daemon.alive()
    assert env.kw.ok("audit", "verify").code == 0


def test_a_burst_of_a_thousand_changes(env: AgentEnv, daemon: Daemon) -> None:
    env.person_with_key("alice", "devops")
    env.person_with_key("bob")
    wait_until(everywhere(env, env.deploy, "alice", True), what="first push")
    assert daemon.proc is not None
    pid = daemon.proc.pid
    time.sleep(1)
    baseline = rss_kib(pid)
    peak = baseline
    registry = Registry.open(env.kw.db_url)
    started = time.monotonic()
    try:
        for _ in range(20):  # 20 transactions of 50 grant/revoke pairs: 2,000 events
            with registry.write("security") as tx:
                for _ in range(50):
                    ops.grant_role(tx, "devops", "bob", "burst", None)
                    tx.session.flush()
                    ops.revoke_role(tx, "devops", "bob", "burst")
                    tx.session.flush()
            peak = max(peak, rss_kib(pid))
        with registry.write("security") as tx:
            ops.grant_role(tx, "devops", "bob", "final", None)
    finally:
        registry.dispose()
    burst_seconds = time.monotonic() - started
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not env.can_login(env.hosts[0], env.deploy, "bob"):
        peak = max(peak, rss_kib(pid))
        time.sleep(0.3)
    wait_until(everywhere(env, env.deploy, "bob", True), timeout=30, what="bob's final grant")
    wait_until(lambda: converged(env), timeout=60, what="plan in sync")
    peak = max(peak, rss_kib(pid))
    assert daemon.alive()
    assert peak < baseline + 100 * 1024, (baseline, peak, burst_seconds)
    assert env.kw.ok("audit", "verify").code == 0


class StallingProxy:
    """A loopback TCP proxy whose connections can go silent without closing (half-open)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        import socket
        import threading

        self.upstream = upstream
        self.stalled = threading.Event()
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.sock.close()

    def _accept(self) -> None:
        import threading

        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.stalled.is_set():  # a stalled network: accept, then say nothing
                self.threads.append(threading.Thread(target=self._hold, args=(client,)))
            else:
                self.threads.append(threading.Thread(target=self._pump, args=(client,)))
            self.threads[-1].daemon = True
            self.threads[-1].start()

    def _hold(self, client: object) -> None:
        with client:  # type: ignore[attr-defined]
            self.stop.wait(120)

    def _pump(self, client: object) -> None:
        import selectors
        import socket

        server = socket.create_connection(self.upstream, timeout=5)
        with selectors.DefaultSelector() as sel, client, server:  # type: ignore[attr-defined]
            sel.register(client, selectors.EVENT_READ, server)  # type: ignore[arg-type]
            sel.register(server, selectors.EVENT_READ, client)
            while not self.stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        return
                    if not data:
                        return
                    if not self.stalled.is_set():  # stalled: swallow everything, close nothing
                        key.data.sendall(data)


def test_a_half_open_connection_is_dropped_and_converged(env: AgentEnv, tmp_path: Path) -> None:
    import dataclasses

    from keyward.testing.inventory import write_inventory

    victim = env.hosts[0]
    proxy = StallingProxy((victim.address, victim.port))
    proxied = [
        dataclasses.replace(h, address="127.0.0.1", port=proxy.port) if h.name == victim.name else h
        for h in env.hosts
    ]
    write_inventory(env.inventory, proxied, env.spec, env.agent_key)
    with (env.inventory / "known_hosts").open("a") as handle:  # the test's own direct logins
        handle.write(victim.known_hosts_line() + "\n")
    d = Daemon(env, tmp_path / "daemon.log", "--verify-interval", "3", "--keepalive", "1")
    d.start()
    try:
        fp = env.person_with_key("alice", "devops")
        wait_until(everywhere(env, env.deploy, "alice", True), what="first push")
        proxy.stalled.set()  # the victim's connection goes silent, nothing is closed
        env.kw.ok("key", "revoke", fp, "--reason", "left")
        others = env.hosts[1:]
        wait_until(
            lambda: not any(env.can_login(h, env.deploy, "alice") for h in others),
            what="revocation on the hosts that still answer",
        )
        wait_until(lambda: "host_disconnected" in d.logs(), what="the stalled link to be dropped")
        proxy.stalled.clear()
        wait_until(
            lambda: not env.can_login(victim, env.deploy, "alice"),
            timeout=120,
            what="the stalled host to converge once the network is back",
        )
        assert d.alive()
    finally:
        d.stop()
        proxy.close()
