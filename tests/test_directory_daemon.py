"""``[directory] sync_interval``: the daemon syncs the directory itself.

A real slapd on loopback, a running ``keyward daemon`` and real sshd hosts: a person
disabled in LDAP loses access with no command run; a sync the guard stops raises an
alert and offboards nobody, and the daemon goes on.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyward.testing.slapd import PEOPLE, Person, Slapd
from tests.agent_env import AgentEnv
from tests.test_daemon import Daemon, wait_until
from tests.test_directory_sync import configure

pytestmark = pytest.mark.fleet


@pytest.fixture
def ldap() -> Iterator[Slapd]:
    with Slapd(
        [Person("alice", "Alice Doe", "alice@example.com"), Person("bob", "Bob Roe")],
        address="127.0.2.12",
    ) as server:
        yield server


def test_disabled_in_ldap_loses_access_with_the_daemon_alone(
    env: AgentEnv, ldap: Slapd, tmp_path: Path
) -> None:
    configure(env.inventory, ldap, create_people=False, sync_interval="5s")
    env.person_with_key("alice", "devops")
    env.person_with_key("bob", "devops")
    daemon = Daemon(env, tmp_path / "daemon.log", "--verify-interval", "60")
    daemon.start()
    try:
        wait_until(
            lambda: all(env.can_login(h, env.deploy, "alice") for h in env.hosts),
            what="alice's key on every host",
        )
        wait_until(lambda: "directory_sync_done" in daemon.logs(), what="the first sync")
        assert env.kw.ok("directory", "status", "--json").json()["last_sync"]["actor"] == (
            "keyward-daemon"
        )

        ldap.modify(f"uid=alice,{PEOPLE}", nsAccountLock="TRUE")  # HR disables alice
        wait_until(
            lambda: not any(env.can_login(h, env.deploy, "alice") for h in env.hosts),
            what="alice refused everywhere",
        )
        assert all(env.can_login(h, env.deploy, "bob") for h in env.hosts)
        status = env.kw("offboard", "status", "alice", "--json").json()
        assert status["reason"] == "directory: disabled (nsAccountLock=TRUE)"
        wait_until(
            lambda: env.kw("offboard", "status", "alice", "--json").json()["status"] == "confirmed",
            what="the case confirmed",
        )

        # A directory that cannot be read: the guard stops the sync (an alert, nobody
        # offboarded), as it makes `keyward directory sync` exit 1; the daemon goes on.
        configure(env.inventory, ldap, create_people=False, sync_interval="5s", url=dead_url())
        wait_until(
            lambda: any(
                a["kind"] == "directory_guard" for a in env.kw.ok("alerts", "--json").json()
            ),
            what="the guard's alert",
        )
        assert env.kw.ok("person", "show", "bob", "--json").json()["status"] == "active"
        assert env.kw.ok("directory", "status", "--json").json()["last_sync"]["outcome"] in (
            "failed",
            "refused",
        )
        assert daemon.alive()
        assert daemon.stop() == 0
    finally:
        if daemon.alive():
            daemon.stop(signal.SIGKILL)
    assert "Traceback" not in daemon.logs()


def dead_url() -> str:
    """An LDAP URL on loopback where nothing listens."""
    from tests.server_env import free_port

    return f"ldap://127.0.2.13:{free_port('127.0.2.13')}"
