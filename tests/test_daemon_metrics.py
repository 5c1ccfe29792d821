"""The daemon's metrics endpoint cannot be used against it.

A local user who binds the port first must not stop enforcement (the daemon used to exit and
restart in a loop); idle connections must not pile up threads; and a socket passed by systemd
(socket activation) is served, so there is no port to squat at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyward.daemon.metrics import Metrics, MetricsServer, parse_loopback
from keyward.errors import UsageError
from tests.agent_env import AgentEnv
from tests.test_daemon import Daemon, everywhere, wait_until

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


@pytest.fixture
def daemons(env: AgentEnv, tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.alive():
            d.stop(signal.SIGKILL)


def test_a_squatted_metrics_port_does_not_stop_enforcement(
    env: AgentEnv, daemons: list[Daemon], tmp_path: Path
) -> None:
    port = free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        d = Daemon(env, tmp_path / "daemon.log", "--metrics", f"127.0.0.1:{port}")
        daemons.append(d)
        d.start()
        fp = env.person_with_key("alice", "devops")
        wait_until(everywhere(env, env.deploy, "alice", True), what="alice's grant to arrive")
        env.kw.ok("key", "revoke", fp, "--reason", "stolen laptop")
        wait_until(everywhere(env, env.deploy, "alice", False), what="the revocation")
        assert d.alive()
        assert "metrics_unavailable" in d.logs()

        def metrics_state() -> dict[str, object]:
            state = env.kw.ok("status", "--json").json()["daemon"]["metrics"]
            return state if isinstance(state, dict) else {}

        wait_until(lambda: bool(metrics_state().get("error")), what="the heartbeat to say so")
        state = metrics_state()
        assert state["listening"] is False
        assert "in use" in str(state["error"])
        text = env.kw.ok("status").out
        assert f"metrics NOT served on 127.0.0.1:{port}" in text, text
        assert "alive" in text
    finally:
        squatter.close()
    # Once the port is free again the daemon takes it (it retries with backoff).
    wait_until(lambda: metrics_state().get("listening") is True, what="the retry to bind")
    assert "keyward_hosts_connected 3.0" in scrape(port)
    assert "metrics served on" in env.kw.ok("status").out


def test_idle_metrics_connections_are_bounded(
    env: AgentEnv, daemons: list[Daemon], tmp_path: Path
) -> None:
    port = free_port()
    d = Daemon(env, tmp_path / "daemon.log", "--metrics", f"127.0.0.1:{port}")
    daemons.append(d)
    d.start()
    assert d.proc is not None
    wait_until(lambda: "metrics_listening" in d.logs(), what="the metrics endpoint")
    assert "keyward_hosts " in scrape(port)
    before = threads(d.proc.pid)
    idle = []
    try:
        for _ in range(60):  # connect, send nothing: each used to hold a server thread
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never finish the request
            idle.append(conn)
        time.sleep(1.0)
        assert threads(d.proc.pid) <= before + 4, (before, threads(d.proc.pid))
        # The daemon drops them (refused at once, or after the request timeout) ...
        for conn in idle:
            with contextlib.suppress(ConnectionResetError):
                assert conn.recv(1) == b""
    finally:
        for conn in idle:
            conn.close()
    # ... and serves the next scraper; enforcement never noticed.
    assert "keyward_hosts " in scrape(port)
    env.person_with_key("alice", "devops")
    wait_until(everywhere(env, env.deploy, "alice", True), what="alice's grant to arrive")


def test_a_socket_passed_by_systemd_is_served(env: AgentEnv, tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()
    log = tmp_path / "daemon.log"
    environ = {
        **os.environ,
        "KEYWARD_DB": env.kw.db_url,
        "KEYWARD_INVENTORY": env.kw.inventory,
        "KEYWARD_ACTOR": "keyward-daemon",
        "LISTEN_FDS": "1",
    }
    # What systemd does: the socket on fd 3, LISTEN_PID naming the process that execs.
    launcher = (
        "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.execv(sys.executable, [sys.executable, '-m', 'keyward', 'daemon', "
        "'--metrics', '127.0.0.1:1'])"
    )
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher],
            env=environ,
            stdout=handle,
            stderr=handle,
            pass_fds=(3,) if fd == 3 else (3, fd),
            preexec_fn=(lambda: None) if fd == 3 else (lambda: os.dup2(fd, 3)),
        )
    listener.close()
    try:
        wait_until(lambda: "metrics_listening" in log.read_text(), what="metrics on fd 3")
        assert f"127.0.0.1:{port}" in log.read_text()
        assert "keyward_hosts " in scrape(port)
        # Nothing was bound: the address on the command line was never used.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", 1), timeout=5).close()
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_metrics_address_off_loopback_is_refused_at_start(env: AgentEnv) -> None:
    environ = {**os.environ, "KEYWARD_DB": env.kw.db_url, "KEYWARD_INVENTORY": env.kw.inventory}
    done = subprocess.run(
        [sys.executable, "-m", "keyward", "daemon", "--metrics", "0.0.0.0:9464"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done
    assert "--metrics only listens on loopback" in done.stderr
    assert "Traceback" not in done.stderr


async def exchange(request: bytes, timeout: float = 1.0) -> bytes:
    """Send ``request`` to a fresh in-process metrics server; return all it answers."""
    server = MetricsServer(Metrics(), max_connections=2, timeout=timeout)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    await server.start(sock)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), timeout + 2)
        except ConnectionResetError:
            return b"<reset>"
        finally:
            writer.close()
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("request_bytes", "expect"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK"),
        (b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.1 200 OK"),
        (b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK"),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK"),
        (b"GET /etc/passwd HTTP/1.1\r\n\r\n", b"HTTP/1.1 404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"HTTP/1.1 405 Method Not Allowed"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 9000 + b"\r\n\r\n", b""),  # too big
        (b"GET /metrics HTTP/1.1\r\n", b""),  # never finished: dropped after the timeout
    ],
    ids=["get", "root", "query", "head", "other-path", "post", "oversized", "unfinished"],
)
def test_metrics_server_answers(request_bytes: bytes, expect: bytes) -> None:
    answer = asyncio.run(exchange(request_bytes))
    if expect:
        assert answer.startswith(expect), answer[:200]
    else:
        assert answer in (b"", b"<reset>"), answer[:200]
    if request_bytes.startswith(b"GET /metrics"):
        assert (b"keyward_hosts " in answer) is bool(expect)
    if request_bytes.startswith(b"HEAD"):
        assert answer.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1:9464", None),
        ("[::1]:9464", None),
        ("0.0.0.0:9464", "only listens on loopback"),
        ("10.0.0.1:9464", "only listens on loopback"),
        ("localhost:9464", "loopback IP address"),
        ("127.0.0.1", "ADDRESS:PORT"),
        ("127.0.0.1:0", "1-65535"),
        ("127.0.0.1:70000", "1-65535"),
    ],
)
def test_metrics_address_is_checked(address: str, problem: str | None) -> None:
    if problem is None:
        assert parse_loopback(address)[1] == 9464
        return
    with pytest.raises(UsageError, match=problem):
        parse_loopback(address)


@pytest.mark.parametrize(
    ("bind", "problem"),
    [
        ("127.0.0.1", None),
        ("0.0.0.0", "is not on a loopback address"),
    ],
)
def test_a_socket_from_systemd_must_be_on_loopback(bind: str, problem: str | None) -> None:
    listener = socket.socket()
    listener.bind((bind, 0))
    listener.listen()
    probe = (
        "import os, sys\n"
        "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'\n"
        "from keyward.daemon.metrics import inherited_listener, address_of\n"
        "from keyward.errors import UsageError\n"
        "try:\n"
        "    print(address_of(inherited_listener()))\n"
        "except UsageError as exc:\n"
        "    print(exc.message)\n"
    )
    fd = listener.fileno()
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        pass_fds=(3,) if fd == 3 else (3, fd),
        preexec_fn=(lambda: None) if fd == 3 else (lambda: os.dup2(fd, 3)),
        check=True,
    ).stdout
    listener.close()
    assert (problem or f"127.0.0.1:{listener_port(out)}") in out


def listener_port(out: str) -> str:
    return out.strip().rpartition(":")[2]
