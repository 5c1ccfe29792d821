"""Reaching hosts as they are: a non-root login through Debian's real ``sudo``, and a bastion.

The hosts are the ``env`` fixture's real sshd processes; the sudo is the system's, with a
sudoers drop-in written for exactly the command the agent runs; the bastion is one more
real sshd on another loopback address, logging at DEBUG1 so that its log shows every
tunnel it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncssh
import pytest

from keyward.agent.connection import Credentials
from keyward.inventory import load_inventory
from keyward.testing.fleet import FleetHost
from keyward.testing.inventory import AccessSpec, _system_python
from keyward.testing.localfleet import LocalFleet
from tests.accounts import ensure_account, remove_account
from tests.agent_env import AgentEnv
from tests.test_daemon import Daemon, everywhere, wait_until

pytestmark = pytest.mark.skipif(shutil.which("sudo") is None, reason="needs Debian's sudo")


def _with_fields(env: AgentEnv, host: FleetHost, *lines: str) -> None:
    """Add ``lines`` to ``host``'s ``[[hosts]]`` table of the environment file."""
    path = env.inventory / "test.toml"
    anchor = f'name = "{host.name}"\n'
    text = path.read_text()
    assert anchor in text
    path.write_text(text.replace(anchor, anchor + "".join(f"{ln}\n" for ln in lines), 1))


def _bootstrap(env: AgentEnv, host: FleetHost, login: str) -> None:
    """The agent's key on ``login``'s file, as an operator would put it there once."""
    path = env.file(host, login)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text(Path(f"{env.agent_key}.pub").read_text())
    os.chmod(path, 0o600)
    account = path.parent.parent.name
    shutil.chown(path.parent, account, account)
    shutil.chown(path, account, account)


@pytest.fixture
def ops(env: AgentEnv) -> Iterator[tuple[str, str]]:
    """Two non-root logins: one granted the helper's command in sudoers, one granted nothing."""
    tag = secrets.token_hex(3)
    granted, refused = f"kwo{tag}", f"kwn{tag}"
    ensure_account(granted, env.base / "home")
    ensure_account(refused, env.base / "home")
    dropin = Path(f"/etc/sudoers.d/keyward-test-{tag}")
    # Exactly what docs/operations.md tells an operator to grant (the tests' interpreter).
    dropin.write_text(f"{granted} ALL=(root) NOPASSWD: {_system_python()} -I -S -c *\n")
    dropin.chmod(0o440)
    try:
        check = subprocess.run(["visudo", "-cf", str(dropin)], capture_output=True, check=False)
        assert check.returncode == 0, check
        yield granted, refused
    finally:
        dropin.unlink()
        remove_account(granted)
        remove_account(refused)


def test_non_root_login_becomes_root_through_sudo(env: AgentEnv, ops: tuple[str, str]) -> None:
    granted, refused = ops
    through_sudo, asks_password, direct = env.hosts
    # A non-root login is not root's: the access rules stop at the accounts it manages.
    env.rewrite_inventory(replace(env.spec, access=(AccessSpec(("devops",), (env.deploy,)),)))
    _bootstrap(env, through_sudo, granted)
    _bootstrap(env, asks_password, refused)
    _with_fields(env, through_sudo, f'login = "{granted}"', 'become = "sudo"')
    _with_fields(env, asks_password, f'login = "{refused}"', 'become = "sudo"')
    shown = env.kw.ok("inventory", "show", "--json").json()["environments"][0]["hosts"]
    assert [(h["login"], h["become"]) for h in shown] == [
        (granted, "sudo"),
        (refused, "sudo"),
        ("root", None),
    ]
    text = env.kw.ok("inventory", "show").out
    assert f"login {granted}" in text and "become sudo" in text
    env.person_with_key("alice", "devops")

    result = env.kw("reconcile")
    assert result.code == 1, str(result)
    errors = [line for line in result.out.splitlines() if "sudo" in line]
    assert len(errors) == 1 and errors[0].strip().startswith(asks_password.name), result.out
    assert "a password is required" in errors[0] and refused in errors[0]
    # Nothing was written where sudo refused; the others were reconciled.
    assert not env.file(asks_password, env.deploy).exists()
    assert env.can_login(through_sudo, env.deploy, "alice")
    assert env.can_login(direct, env.deploy, "alice")
    # The helper ran as root (it wrote another account's file, owned by that account), and
    # kept the agent's own key on the non-root login, which it manages like any account.
    assert env.file(through_sudo, env.deploy).stat().st_uid != 0
    assert (
        Path(f"{env.agent_key}.pub").read_text().split()[1]
        in env.file(through_sudo, granted).read_text()
    )


@pytest.fixture
def bastion(env: AgentEnv) -> Iterator[FleetHost]:
    """One more sshd, on its own loopback address, logging every tunnel it opens."""
    fleet = LocalFleet(
        env.base / "bastion",
        1,
        first_address=200,
        name_prefix=f"b{secrets.token_hex(3)}",
        log_level="DEBUG1",
    )
    fleet.start()
    try:
        host = fleet.hosts[0]
        keys = host.dir / "keys"
        (keys / "root").write_text(Path(f"{env.agent_key}.pub").read_text())
        (keys / "root").chmod(0o600)
        with (env.inventory / "known_hosts").open("a") as handle:
            handle.write(host.known_hosts_line() + "\n")
        text = (env.inventory / "test.toml").read_text()
        (env.inventory / "test.toml").write_text(
            text.replace(
                "[defaults]",
                f'[[jump_hosts]]\nname = "{host.name}"\naddress = "{host.address}"\n'
                f'port = {host.port}\nlogin = "root"\n\n[defaults]',
                1,
            )
        )
        yield host
    finally:
        fleet.stop()


def _tunnels_to(bastion: FleetHost, target: FleetHost) -> int:
    log = (bastion.dir / "sshd.log").read_text()
    return log.count(f"target {target.address} port {target.port}")


def test_host_behind_a_bastion(env: AgentEnv, bastion: FleetHost) -> None:
    behind = env.hosts[2]
    _with_fields(env, behind, f'jump = ["{bastion.name}"]')
    shown = env.kw.ok("inventory", "show", "--json").json()["environments"][0]["hosts"]
    assert shown[2]["jump"] == [
        {"name": bastion.name, "address": bastion.address, "port": bastion.port, "login": "root"}
    ]
    assert shown[0]["jump"] == []
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    assert env.can_login(behind, env.deploy, "alice")
    assert _tunnels_to(bastion, behind) == 1
    assert _tunnels_to(bastion, env.hosts[0]) == 0

    # Every hop's key is pinned like a host's: unpinned or wrong, nothing goes through it.
    known = env.inventory / "known_hosts"
    pinned = known.read_text()
    known.write_text(pinned.replace(bastion.known_hosts_line() + "\n", ""))
    result = env.kw("reconcile", "--host", behind.name)
    assert result.code == 1 and f"jump host {bastion.name}" in result.out
    assert "not pinned" in result.out
    known.write_text(pinned.replace(bastion.host_key_pub, env.hosts[0].host_key_pub))
    result = env.kw("reconcile", "--host", behind.name)
    assert result.code == 1 and f"jump host {bastion.name}" in result.out
    assert "does not match the pinned key" in result.out
    assert _tunnels_to(bastion, behind) == 1


def test_connector_shares_one_bastion_connection(env: AgentEnv, bastion: FleetHost) -> None:
    """What the daemon's links do: ``Credentials.open(host, keepalive=...)``, held open."""
    for host in env.hosts:
        _with_fields(env, host, f'jump = ["{bastion.name}"]')
    inv = load_inventory(env.inventory)
    creds = Credentials.load(
        inv.agent.identity, inv.agent.known_hosts, inv.agent.connect_timeout, inv.agent.python
    )

    async def hold() -> tuple[int, int]:
        conns = await asyncio.gather(*(creds.open(h, keepalive=5) for h in inv.hosts()))
        try:
            replies = await asyncio.gather(
                *(c.read([("root", c.host.authorized_keys[0])]) for c in conns)
            )
            assert len(replies) == 3
            shared = len(creds.hops._tunnels)
        finally:
            for conn in conns:
                with contextlib.suppress(Exception):
                    await conn.close()
        return shared, len(creds.hops._tunnels)

    shared, left = asyncio.run(hold())
    assert (shared, left) == (1, 0)
    log = (bastion.dir / "sshd.log").read_text()
    assert log.count("Accepted publickey for root") == 1
    assert all(_tunnels_to(bastion, host) == 1 for host in env.hosts)

    # A bastion with a key other than the pinned one: every host waiting for it fails, each
    # error naming that host, and nothing is left open.
    known = (env.inventory / "known_hosts").read_text()
    wrong = Credentials.load(
        inv.agent.identity, inv.agent.known_hosts, inv.agent.connect_timeout, inv.agent.python
    )
    wrong = replace(
        wrong,
        known_hosts_text=known.replace(bastion.host_key_pub, env.hosts[0].host_key_pub),
    )

    async def refused() -> list[BaseException | object]:
        return await asyncio.gather(*(wrong.open(h) for h in inv.hosts()), return_exceptions=True)

    errors = asyncio.run(refused())
    assert [str(e).split(":")[0] for e in errors] == [h.name for h in inv.hosts()]
    assert all(f"jump host {bastion.name}" in str(e) and "does not match" in str(e) for e in errors)
    assert wrong.hops._tunnels == {}


def test_daemon_holds_its_links_through_the_bastion(
    env: AgentEnv, bastion: FleetHost, tmp_path: Path
) -> None:
    for host in env.hosts:
        _with_fields(env, host, f'jump = ["{bastion.name}"]')
    daemon = Daemon(env, tmp_path / "daemon.log", "--verify-interval", "3")
    daemon.start()
    try:
        fp = env.person_with_key("alice", "devops")
        wait_until(everywhere(env, env.deploy, "alice", True), what="alice's grant to arrive")
        env.kw.ok("key", "revoke", fp, "--reason", "stolen laptop")
        wait_until(everywhere(env, env.deploy, "alice", False), what="revocation")
        assert env.kw.ok("status", "--json").json()["daemon"]["hosts_connected"] == 3
        log = (bastion.dir / "sshd.log").read_text()
        # One bastion login carries every link the daemon holds.
        assert log.count("Accepted publickey for root") == 1, log
        assert all(_tunnels_to(bastion, host) >= 1 for host in env.hosts)
        assert daemon.stop() == 0
    finally:
        if daemon.alive():
            daemon.stop(signal.SIGKILL)


def test_hosts_scan_goes_through_the_bastion(env: AgentEnv, bastion: FleetHost) -> None:
    """``hosts scan`` asks a host behind a bastion for its key through the bastion, as the
    agent will reach it, and scans the bastion itself; an unpinned bastion is pinned first."""
    behind = env.hosts[2]
    _with_fields(env, behind, f'jump = ["{bastion.name}"]')
    assert f"via {bastion.name}" in env.kw.ok("inventory", "show").out
    known = env.inventory / "known_hosts"
    pinned = known.read_text()
    known.write_text(
        pinned.replace(bastion.known_hosts_line() + "\n", "").replace(
            behind.known_hosts_line() + "\n", ""
        )
    )

    # Nothing goes through a bastion that is not pinned: it is scanned, the host is not.
    result = env.kw("hosts", "scan", "--all", "--json")
    assert result.code == 1
    report = result.json()
    shown = {row["host"]: row for row in report["hosts"]}
    assert shown[bastion.name]["status"] == "new"
    assert shown[env.hosts[0].name]["status"] == "pinned"
    assert [row["host"] for row in report["failures"]] == [behind.name]
    assert f"jump host {bastion.name}" in report["failures"][0]["error"]
    assert "not pinned" in report["failures"][0]["error"]
    assert _tunnels_to(bastion, behind) == 0

    # The bastion, named, pinned after review; then the host behind it, through it.
    env.kw.ok("hosts", "scan", bastion.name, "--write")
    assert bastion.known_hosts_line().split()[2] in known.read_text()
    result = env.kw.ok("hosts", "scan", behind.name, "--write", "--json").json()
    assert [(r["host"], r["status"], r["written"]) for r in result["hosts"]] == [
        (behind.name, "new", True)
    ]
    presented = asyncssh.import_public_key(behind.host_key_pub).get_fingerprint("sha256")
    assert result["hosts"][0]["fingerprint"] == presented
    assert _tunnels_to(bastion, behind) == 1

    # What was pinned is what the agent then trusts through the bastion.
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile", "--host", behind.name)
    assert env.can_login(behind, env.deploy, "alice")
