"""The in-process SSH fleet enforces exactly what the authorized_keys files say."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from keyward.agent.bootstrap import remote_command
from keyward.testing.asyncssh_client import asyncssh_can_login
from keyward.testing.embedded_keys import effective_authorized_keys, parse_expiry_time
from keyward.testing.embedded_ssh import EmbeddedFleet
from keyward.testing.fleet import FleetHost
from keyward.testing.keypairs import make_ed25519

pytestmark = pytest.mark.timeout(60)

USER = __import__("pwd").getpwuid(os.geteuid()).pw_name


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[EmbeddedFleet]:
    with EmbeddedFleet(tmp_path / "fleet", 2, name_prefix="e", first_address=40) as running:
        yield running


@pytest.fixture
def known_hosts(fleet: EmbeddedFleet, tmp_path: Path) -> Path:
    return fleet.write_known_hosts(tmp_path / "known_hosts")


@pytest.fixture
def alice(tmp_path: Path) -> Path:
    return make_ed25519(tmp_path / "keys" / "alice", "alice@laptop")


@pytest.fixture
def bob(tmp_path: Path) -> Path:
    return make_ed25519(tmp_path / "keys" / "bob", "bob@laptop")


def pub(key: Path) -> str:
    return Path(f"{key}.pub").read_text().strip()


def grant(host: FleetHost, *lines: str) -> None:
    path = host.authorized_keys_path(USER)
    path.write_text("".join(line + "\n" for line in lines))
    path.chmod(0o600)


def run_async(coro: Any, timeout: float = 30) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def connect(host: FleetHost, key: Path, user: str = USER) -> Any:
    return asyncssh.connect(
        host.address,
        port=host.port,
        username=user,
        client_keys=[str(key)],
        known_hosts=([asyncssh.import_public_key(host.host_key_pub)], [], []),
        config=[],
        agent_path=None,
        connect_timeout=5,
        login_timeout=10,
    )


def test_hosts_listen_on_their_own_loopback_address_with_own_keys(
    fleet: EmbeddedFleet,
) -> None:
    a, b = fleet.hosts
    assert (a.address, b.address) == ("127.0.0.40", "127.0.0.41")
    assert a.port > 0 and b.port > 0
    assert a.host_key_pub != b.host_key_pub
    assert fleet.host("e2") == b
    assert fleet.known_hosts_text().splitlines() == [
        f"[127.0.0.40]:{a.port} {a.host_key_pub}",
        f"[127.0.0.41]:{b.port} {b.host_key_pub}",
    ]
    assert a.authorized_keys_path(USER) == a.dir / "keys" / USER
    with socket.create_connection((a.address, a.port), timeout=5) as sock:
        assert sock.recv(64).startswith(b"SSH-2.0-")


def test_key_in_file_logs_in_other_key_refused(
    fleet: EmbeddedFleet, known_hosts: Path, alice: Path, bob: Path
) -> None:
    a, b = fleet.hosts
    grant(a, pub(alice))
    assert asyncssh_can_login(a, USER, alice, known_hosts)
    assert not asyncssh_can_login(a, USER, bob, known_hosts)
    # Each host has its own file: b grants nobody yet.
    assert not asyncssh_can_login(b, USER, alice, known_hosts)
    assert "Accepted publickey" in a.log_file.read_text()
    assert "Refused publickey" in a.log_file.read_text()


def test_missing_or_empty_file_refuses(
    fleet: EmbeddedFleet, known_hosts: Path, alice: Path
) -> None:
    a = fleet.hosts[0]
    assert not a.authorized_keys_path(USER).exists()
    assert not asyncssh_can_login(a, USER, alice, known_hosts)
    grant(a, "# nothing here", "garbage line")
    assert not asyncssh_can_login(a, USER, alice, known_hosts)


def test_removing_the_line_refuses_the_next_login(
    fleet: EmbeddedFleet, known_hosts: Path, alice: Path, bob: Path
) -> None:
    a = fleet.hosts[0]
    grant(a, pub(alice), pub(bob))
    assert asyncssh_can_login(a, USER, alice, known_hosts)
    grant(a, pub(bob))
    assert not asyncssh_can_login(a, USER, alice, known_hosts)
    assert asyncssh_can_login(a, USER, bob, known_hosts)


def test_past_expiry_time_is_refused_future_accepted(
    fleet: EmbeddedFleet, known_hosts: Path, alice: Path
) -> None:
    a = fleet.hosts[0]
    grant(a, f'no-agent-forwarding,expiry-time="20200101000000Z" {pub(alice)}')
    assert not asyncssh_can_login(a, USER, alice, known_hosts)
    grant(a, f'expiry-time="20991231235959Z",no-agent-forwarding {pub(alice)}')
    assert asyncssh_can_login(a, USER, alice, known_hosts)
    # sshd refuses a line whose expiry-time it cannot read; so does the embedded server.
    grant(a, f'expiry-time="tomorrow" {pub(alice)}')
    assert not asyncssh_can_login(a, USER, alice, known_hosts)


def test_asyncssh_alone_ignores_expiry_time(alice: Path) -> None:
    """Why the embedded server filters expired lines itself (asyncssh 2.x would accept)."""
    line = f'expiry-time="20200101000000Z" {pub(alice)}'
    key = asyncssh.import_public_key(pub(alice))
    assert asyncssh.import_authorized_keys(line).validate(key, "h", "127.0.0.1") is not None
    assert effective_authorized_keys(line.encode()) == []


def test_parse_expiry_time() -> None:
    assert parse_expiry_time("20200101000000Z") is not None
    assert parse_expiry_time("202001010000") is not None
    assert parse_expiry_time("20200101") is not None
    assert parse_expiry_time("2020010100") is None
    assert parse_expiry_time("20201301000000Z") is None


def test_from_option_is_enforced(fleet: EmbeddedFleet, known_hosts: Path, alice: Path) -> None:
    a = fleet.hosts[0]
    grant(a, f'from="10.0.0.0/8" {pub(alice)}')
    assert not asyncssh_can_login(a, USER, alice, known_hosts)
    grant(a, f'from="127.0.0.0/8" {pub(alice)}')
    assert asyncssh_can_login(a, USER, alice, known_hosts)


def test_forced_command_is_enforced(fleet: EmbeddedFleet, alice: Path) -> None:
    a = fleet.hosts[0]
    grant(a, f'command="echo forced" {pub(alice)}')

    async def go() -> str:
        async with connect(a, alice) as conn:
            result = await conn.run("echo asked", check=False, timeout=10)
            return str(result.stdout)

    assert run_async(go()) == "forced\n"


def test_other_user_is_refused(fleet: EmbeddedFleet, alice: Path) -> None:
    a = fleet.hosts[0]
    grant(a, pub(alice))
    # Even a file for the other name that grants the key does not help.
    other = "kwnobody"
    a.authorized_keys_path(other).write_text(pub(alice) + "\n")

    async def go() -> None:
        async with connect(a, alice, user=other):
            pass

    with pytest.raises(asyncssh.PermissionDenied):
        run_async(go())


def test_wrong_host_key_is_not_trusted(fleet: EmbeddedFleet, tmp_path: Path, alice: Path) -> None:
    a, b = fleet.hosts
    grant(a, pub(alice))
    swapped = tmp_path / "swapped"
    swapped.write_text(f"[{a.address}]:{a.port} {b.host_key_pub}\n")
    assert not asyncssh_can_login(a, USER, alice, swapped)


def test_exec_relays_output_stderr_and_exit_status(fleet: EmbeddedFleet, alice: Path) -> None:
    a = fleet.hosts[0]
    grant(a, pub(alice))

    async def go() -> tuple[Any, Any, Any, Any]:
        async with connect(a, alice) as conn:
            result = await conn.run("echo out; echo err >&2; exit 3", check=False, timeout=10)
            piped = await conn.run("tr a-z A-Z", input="hello\n", check=False, timeout=10)
            return result.stdout, result.stderr, result.exit_status, piped.stdout

    assert run_async(go()) == ("out\n", "err\n", 3, "HELLO\n")


def test_shell_requests_are_refused(fleet: EmbeddedFleet, alice: Path) -> None:
    a = fleet.hosts[0]
    grant(a, pub(alice))

    async def go() -> Any:
        async with connect(a, alice) as conn:
            process = await conn.create_process(term_type=None)
            process.stdin.write_eof()
            return await asyncio.wait_for(process.wait(), 10)

    assert run_async(go()).exit_status != 0


def test_agent_remote_helper_runs_over_embedded_ssh(fleet: EmbeddedFleet, alice: Path) -> None:
    """The agent's JSON-lines helper: one request, one reply, interactively, several times."""
    a = fleet.hosts[0]
    grant(a, pub(alice))

    async def go() -> tuple[list[dict[str, Any]], Any]:
        replies: list[dict[str, Any]] = []
        async with connect(a, alice) as conn:
            process = await conn.create_process(remote_command(), encoding="utf-8")
            for request_id in (1, 2, 3):
                process.stdin.write(json.dumps({"id": request_id, "op": "hello"}) + "\n")
                line = await asyncio.wait_for(process.stdout.readline(), 15)
                replies.append(json.loads(line))
            process.stdin.write(
                json.dumps(
                    {
                        "id": 4,
                        "op": "read",
                        "files": [{"account": USER, "pattern": a.authorized_keys_file}],
                    }
                )
                + "\n"
            )
            replies.append(json.loads(await asyncio.wait_for(process.stdout.readline(), 15)))
            process.stdin.write(json.dumps({"id": 0, "op": "bye"}) + "\n")
            process.stdin.write_eof()
            done = await asyncio.wait_for(process.wait(), 15)
            return replies, done.exit_status

    replies, status = run_async(go(), timeout=45)
    assert [r["id"] for r in replies] == [1, 2, 3, 4]
    assert all(r["ok"] for r in replies)
    assert replies[0]["euid"] == os.geteuid()
    assert replies[3]["files"][0]["state"] == "present"
    assert status == 0


def test_stop_kills_sessions_and_closes_listeners(tmp_path: Path, alice: Path) -> None:
    fleet = EmbeddedFleet(tmp_path / "f", 1, first_address=50)
    fleet.start()
    a = fleet.hosts[0]
    grant(a, pub(alice))
    marker = tmp_path / "child.pid"

    async def start_sleeper() -> None:
        async with connect(a, alice) as conn:
            await conn.create_process(f"echo $$ > {marker}; exec sleep 120")
            for _ in range(100):
                if marker.exists() and marker.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            # Leave without closing the session politely: stop() must clean it up.
            fleet.stop()

    try:
        run_async(start_sleeper())
    except (OSError, asyncssh.Error):
        pass
    finally:
        fleet.stop()
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError):
        socket.create_connection((a.address, a.port), timeout=2).close()
    fleet.stop()  # idempotent


def test_pins_are_per_address_and_port_for_the_asyncssh_client_too(
    fleet: EmbeddedFleet, tmp_path: Path, alice: Path
) -> None:
    """The demo's asyncssh logins trust a host as the agent does (``agent.hostkeys``)."""
    a = fleet.hosts[0]
    grant(a, pub(alice))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(
        f"{a.address} {a.host_key_pub}\n[{a.address}]:{a.port + 1} {a.host_key_pub}\n"
    )
    assert not asyncssh_can_login(a, USER, alice, elsewhere)
    exact = tmp_path / "exact"
    exact.write_text(f"[{a.address}]:{a.port} {a.host_key_pub}\n")
    assert asyncssh_can_login(a, USER, alice, exact)
