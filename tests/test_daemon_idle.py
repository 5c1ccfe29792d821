"""The daemon at rest: it sleeps until the next expiry, applies it on time, and stops promptly.

These run a real ``keyward daemon`` process against the real sshd fleet. The CPU check
reads the process's own accounting in ``/proc``: a resource check, not a timing one.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_env import AgentEnv
from tests.test_daemon import Daemon, everywhere, wait_until

pytestmark = pytest.mark.timeout(180)

IDLE_WINDOW = 4.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After "pid (comm) ", field 3 (state) is index 0: utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share_over(pid: int, window: float) -> float:
    """The share of one core ``pid`` used over ``window`` seconds of wall time."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


def rotate(env: AgentEnv, grace: str) -> None:
    """Replace alice's key by alice2's; the old one stays deployed for ``grace``."""
    new = str(env.pub("alice2"))
    env.kw.ok("key", "rotate", "alice", new, "--attest", "admin", "--grace", grace)


@pytest.fixture
def idle_daemon(env: AgentEnv, tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose only reasons to work are registry changes and the expiry timer."""
    d = Daemon(env, tmp_path / "daemon.log", "--verify-interval", "3600")
    try:
        yield d
    finally:
        if d.alive():
            d.stop(signal.SIGKILL)


def test_idle_daemon_sleeps_while_an_expiry_is_within_the_hour(
    env: AgentEnv, idle_daemon: Daemon
) -> None:
    env.person_with_key("alice", "devops")
    rotate(env, "1h")
    idle_daemon.start()
    assert idle_daemon.proc is not None
    wait_until(everywhere(env, env.deploy, "alice2", True), what="the rotated key to arrive")
    # A registry change while the expiry is pending must not start a busy loop either.
    env.person_with_key("bob", "devops")
    wait_until(everywhere(env, env.deploy, "bob", True), what="bob's grant to arrive")
    time.sleep(1.0)  # let the push round and its audit write finish
    share = cpu_share_over(idle_daemon.proc.pid, IDLE_WINDOW)
    assert share < 0.10, f"idle daemon used {share:.0%} of a core"
    assert idle_daemon.logs().count("time_change_due") <= 1, idle_daemon.logs()[-2000:]
    assert idle_daemon.alive()


def test_idle_daemon_removes_a_line_when_its_grace_ends(env: AgentEnv, idle_daemon: Daemon) -> None:
    env.person_with_key("alice", "devops")
    old_blob = env.pub("alice").read_text().split()[1]
    idle_daemon.start()
    wait_until(everywhere(env, env.deploy, "alice", True), what="alice's key to arrive")
    rotate(env, "6s")
    rotated = time.monotonic()
    path = env.file(env.hosts[0], env.deploy)
    wait_until(everywhere(env, env.deploy, "alice2", True), what="the new key to arrive")
    # No verification pass is due for an hour: only the expiry timer can remove the old key.
    wait_until(lambda: old_blob not in path.read_text(), timeout=30, what="grace to end")
    assert time.monotonic() - rotated >= 5.0  # not before the grace was over
    assert not env.can_login(env.hosts[0], env.deploy, "alice")
    assert env.can_login(env.hosts[0], env.deploy, "alice2")


@pytest.fixture
def any_db_daemon(env_any_db: AgentEnv, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(env_any_db, tmp_path / "daemon.log", "--verify-interval", "3600")
    d.start()
    try:
        yield d
    finally:
        if d.alive():
            d.stop(signal.SIGKILL)


def test_sigterm_stops_the_daemon_within_seconds(
    env_any_db: AgentEnv, any_db_daemon: Daemon
) -> None:
    env = env_any_db
    env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="alice's key to arrive")
    assert any_db_daemon.proc is not None
    any_db_daemon.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = any_db_daemon.proc.wait(timeout=60)
    took = time.monotonic() - started
    assert code == 0
    assert took < 5.0, f"SIGTERM took {took:.1f}s"
    assert "daemon_stopped" in any_db_daemon.logs()
    assert env.kw.ok("status", "--json").json()["daemon"]["alive"] is False
