"""The daemon against the real sshd fleet: changes reach hosts with no command in between."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyward.authorized_keys import parse_authorized_keys
from tests.agent_env import AgentEnv

WAIT = 40.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Daemon:
    def __init__(self, env: AgentEnv, log: Path, *args: str) -> None:
        self.env = env
        self.log = log
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        environ = {
            **os.environ,
            "KEYWARD_DB": self.env.kw.db_url,
            "KEYWARD_INVENTORY": self.env.kw.inventory,
            "KEYWARD_ACTOR": "keyward-daemon",
        }
        self.handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keyward", "daemon", *self.args],
            env=environ,
            stdout=self.handle,
            stderr=self.handle,
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.handle.close()
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def daemon(env: AgentEnv, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(env, tmp_path / "daemon.log", "--verify-interval", "3")
    d.start()
    try:
        yield d
    finally:
        if d.alive():
            d.stop(signal.SIGKILL)


def everywhere(env: AgentEnv, account: str, key: str, expect: bool) -> Callable[[], bool]:
    return lambda: all(env.can_login(h, account, key) is expect for h in env.hosts)


def test_grant_and_revocation_reach_every_host_without_a_command(
    env: AgentEnv, daemon: Daemon
) -> None:
    fp = env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="alice's grant to arrive")
    env.kw.ok("key", "revoke", fp, "--reason", "stolen laptop")
    took = wait_until(everywhere(env, env.deploy, "alice", False), what="revocation")
    assert took < 10
    status = env.kw.ok("status", "--json").json()
    assert status["daemon"]["alive"] is True
    assert status["daemon"]["hosts_connected"] == len(env.hosts)
    assert all(h["connected"] for h in status["hosts"])
    assert "daemon: alive" in env.kw.ok("status").out
    assert daemon.stop() == 0
    stopped = env.kw.ok("status", "--json").json()
    assert stopped["daemon"]["alive"] is False
    events = env.kw.ok("audit", "log", "--json", "--action", "host.remove").json()
    assert {e["details"]["reason"] for e in events} == {"revoked"}


def test_a_restarted_sshd_is_reconnected_and_converged(env: AgentEnv, daemon: Daemon) -> None:
    env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="first push")
    victim = env.hosts[1]
    env.fleet.stop_host(victim.name)
    env.person_with_key("bob", "devops")
    wait_until(lambda: env.can_login(env.hosts[0], env.deploy, "bob"), what="bob on a live host")
    env.fleet.start_host(victim.name)
    wait_until(lambda: env.can_login(victim, env.deploy, "bob"), timeout=90, what="reconnect")
    assert daemon.alive()


def test_hand_edit_is_fixed_by_the_next_verification(env: AgentEnv, daemon: Daemon) -> None:
    env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="first push")
    target = env.file(env.hosts[2], env.deploy)
    with target.open("a") as handle:
        handle.write(env.pub("mallory").read_text())
    wait_until(lambda: not env.can_login(env.hosts[2], env.deploy, "mallory"), what="drift fix")
    wait_until(lambda: "verification_done" in daemon.logs(), what="the pass to be logged")
    drift = env.kw.ok("audit", "log", "--json", "--action", "host.drift-removed").json()
    assert drift and drift[0]["subject"] == env.hosts[2].name


def test_invalid_inventory_keeps_the_last_good_one(env: AgentEnv, daemon: Daemon) -> None:
    fp = env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="first push")
    env_file = env.inventory / "test.toml"
    env_file.write_text(env_file.read_text() + "\n[[hosts]]\nname = 'broken'\nportt = 1\n")
    wait_until(lambda: "inventory_invalid" in daemon.logs(), what="the problem to be logged")
    assert "portt" in daemon.logs()
    env.kw.ok("key", "revoke", fp, "--reason", "left")
    wait_until(everywhere(env, env.deploy, "alice", False), what="revocation on old inventory")
    assert daemon.alive()


def test_expiry_is_enforced_when_it_comes(env: AgentEnv, daemon: Daemon) -> None:
    # Register the key "a year minus a few seconds ago": it expires a few seconds from now.
    soon = datetime.now(UTC) - timedelta(days=365) + timedelta(seconds=8)
    env.kw.ok("person", "add", "alice", "--name", "Alice")
    env.kw.ok(
        "key",
        "add",
        "alice",
        str(env.pub("alice")),
        env={"KEYWARD_NOW": soon.strftime("%Y-%m-%dT%H:%M:%SZ")},
    )
    env.kw.ok("role", "add", "devops")
    env.kw.ok("role", "grant", "devops", "alice", "--reason", "t", actor="security")
    fingerprint = env.kw.ok("key", "list", "alice", "--json").json()[0]["fingerprint"]
    path = env.file(env.hosts[0], env.deploy)
    wait_until(lambda: path.exists() and "alice" in path.read_text(), what="key deployed")
    wait_until(lambda: "alice" not in path.read_text(), timeout=30, what="expiry removal")

    def removals() -> set[tuple[str, str]]:
        events = env.kw.ok("audit", "log", "--json", "--action", "host.remove").json()
        return {(e["details"]["fingerprint"], e["details"]["reason"]) for e in events}

    # The daemon records a round right after its files are written and read back.
    wait_until(lambda: bool(removals()), timeout=15, what="the removal's audit event")
    assert removals() == {(fingerprint, "expired")}


def test_sigterm_during_a_push_leaves_every_file_whole(env: AgentEnv, daemon: Daemon) -> None:
    env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="first push")
    for i in range(12):
        env.person_with_key(f"p{i}", "devops")
    time.sleep(0.3)
    assert daemon.stop() == 0
    for host in env.hosts:
        for account in (env.deploy, "root"):
            data = env.file(host, account).read_bytes()
            assert data.endswith(b"\n")
            lines = [ln for ln in data.decode().splitlines() if ln and not ln.startswith("#")]
            parsed = parse_authorized_keys(data)
            assert len(parsed) == len(lines) and all(p.key is not None for p in parsed)
    assert "daemon_stopped" in daemon.logs()


def test_offboarding_with_a_daemon_running(env: AgentEnv, daemon: Daemon) -> None:
    env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="first push")
    result = env.kw("offboard", "alice", "--reason", "left")
    assert result.code == 0, str(result)
    assert not any(env.can_login(h, env.deploy, "alice") for h in env.hosts)
    assert env.kw("offboard", "status", "alice").code == 0


def test_daemon_collects_logins_on_its_verification_passes(env: AgentEnv, daemon: Daemon) -> None:
    env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="first push")

    def attributed() -> bool:
        rows = env.kw.ok("logins", "--json", "--person", "alice").json()
        return any(r["account"] == env.deploy for r in rows)

    wait_until(attributed, what="alice's logins to be collected by a verification pass")
