"""Network and host faults against the real fleet: black holes, cut connections, full disks,
and several writers at once.  Everything listens on 127.0.0.1 only and is torn down.

The invariant throughout: a file on a host holds either its old or its new content, never
a mix; a failing host is reported and never stops the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyward.authorized_keys import parse_authorized_keys
from keyward.testing.fleet import FleetHost
from keyward.testing.inventory import write_inventory
from tests.agent_env import AgentEnv

pytestmark = pytest.mark.timeout(180)


# -- helpers shared by the fault tests ----------------------------------------------------


def assert_whole(data: bytes) -> None:
    """A complete keyward-written file: ends with a newline, every line is a key."""
    assert data.endswith(b"\n"), data[-80:]
    text = data.decode()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    parsed = parse_authorized_keys(data)
    assert len(parsed) == len(lines)
    assert all(p.key is not None and p.error is None for p in parsed), text


def managed_files(env: AgentEnv) -> dict[Path, bytes | None]:
    out: dict[Path, bytes | None] = {}
    for host in env.hosts:
        for account in (env.deploy, env.app, "root"):
            path = env.file(host, account)
            out[path] = path.read_bytes() if path.exists() else None
    return out


def stale_temps(env: AgentEnv, older_than: float = 60.0) -> list[Path]:
    now = time.time()
    found = []
    for path in managed_files(env):
        if path.parent.is_dir():
            for entry in path.parent.glob(".keyward-*.tmp"):
                if now - entry.stat().st_mtime > older_than:
                    found.append(entry)
    return found


def cli_env(env: AgentEnv, actor: str = "ops") -> dict[str, str]:
    return {
        **os.environ,
        "KEYWARD_DB": env.kw.db_url,
        "KEYWARD_INVENTORY": env.kw.inventory,
        "KEYWARD_ACTOR": actor,
    }


def fake_host_key() -> str:
    """A well-formed ed25519 host key nobody serves."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


# -- servers ---------------------------------------------------------------------------------


class BlackHole:
    """Accepts TCP connections on 127.0.0.1 and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)

    def __enter__(self) -> BlackHole:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self.sock.close()


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of a real sshd that hangs up after ``limit`` bytes.

    ``limit`` counts both directions; ``None`` passes everything (and measures ``total``).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.limit: int | None = None
        self.total = 0
        self.cuts = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CuttingProxy:
        self.acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.acceptor.join(timeout=5)
        for thread in self.threads:
            thread.join(timeout=5)
        self.sock.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._pump, args=(client,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket) -> None:
        limit = self.limit
        server = socket.create_connection(self.upstream, timeout=5)
        moved = 0
        with selectors.DefaultSelector() as sel, client, server:
            sel.register(client, selectors.EVENT_READ, server)
            sel.register(server, selectors.EVENT_READ, client)
            while not self.stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self.total += moved
                        return
                    if limit is not None and moved + len(data) >= limit:
                        key.data.sendall(data[: limit - moved])
                        self.cuts += 1
                        # Hang up hard, mid-stream (RST rather than a polite FIN).
                        for s in (client, server):
                            s.setsockopt(
                                socket.SOL_SOCKET,
                                socket.SO_LINGER,
                                b"\x01\x00\x00\x00\x00\x00\x00\x00",
                            )
                        return
                    key.data.sendall(data)
                    moved += len(data)


# -- tests -------------------------------------------------------------------------------


def test_a_silent_host_times_out_and_the_others_are_done(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    timeout = 2
    with BlackHole() as hole:
        block = (
            f'[[hosts]]\nname = "silent"\naddress = "127.0.0.1"\nport = {hole.port}\n'
            f'authorized_keys = "%h/.ssh/authorized_keys"\n'
            f'accounts = ["{env.deploy}", "{env.app}"]'
        )
        spec = dataclasses.replace(env.spec, extra_hosts=(block,), connect_timeout=timeout)
        env.rewrite_inventory(spec)
        with (env.inventory / "known_hosts").open("a") as known:
            known.write(f"[127.0.0.1]:{hole.port} {fake_host_key()}\n")
        started = time.monotonic()
        result = env.kw("reconcile", "--json")
        took = time.monotonic() - started
    assert took < timeout * 2 + 10, took
    assert result.code == 1, str(result)
    by_host = {r["host"]: r for r in result.json()}
    assert by_host["silent"]["error"] and "silent" in by_host["silent"]["error"]
    for host in env.hosts:
        assert by_host[host.name]["error"] is None
        assert env.can_login(host, env.deploy, "alice")


def _through(env: AgentEnv, victim: FleetHost, port: int) -> None:
    """Point the inventory's entry for ``victim`` at 127.0.0.1:``port`` (same host key)."""
    proxied = [
        dataclasses.replace(h, address="127.0.0.1", port=port) if h.name == victim.name else h
        for h in env.hosts
    ]
    write_inventory(env.inventory, proxied, env.spec, env.agent_key)


def test_a_connection_cut_mid_session_leaves_old_or_new_content(env: AgentEnv) -> None:
    victim = env.hosts[0]
    env.person_with_key("p0", "devops")
    env.kw.ok("reconcile")
    with CuttingProxy((victim.address, victim.port)) as proxy:
        _through(env, victim, proxy.port)
        # Measure one whole session that writes the three files (to place the cuts).
        env.person_with_key("p1", "devops")
        env.person_with_key("q1", "qa")
        proxy.total = 0
        env.kw.ok("reconcile", "--host", victim.name)
        full = proxy.total
        assert full > 10_000
        for i, fraction in enumerate((0.05, 0.3, 0.6, 0.8, 0.9, 0.95, 0.98)):
            env.person_with_key(f"c{i}", "devops")
            env.person_with_key(f"d{i}", "qa")
            before = managed_files(env)
            proxy.limit = int(full * fraction)
            cut = env.kw("reconcile", "--host", victim.name)
            assert "Traceback" not in cut.err, str(cut)
            middle = managed_files(env)
            proxy.limit = None
            env.kw.ok("reconcile", "--host", victim.name)
            after = managed_files(env)
            for path, data in middle.items():
                assert data in (before[path], after[path]), (fraction, path)
                if data is not None:
                    assert_whole(data)
        assert proxy.cuts >= 5
    write_inventory(env.inventory, env.hosts, env.spec, env.agent_key)
    env.kw.ok("reconcile")
    assert env.kw("plan").code == 0
    assert not stale_temps(env)
    assert env.kw.ok("audit", "verify").code == 0


@contextlib.contextmanager
def tiny_tmpfs_over(directory: Path, owner: pwd.struct_passwd) -> Iterator[Path]:
    """Mount a 64 KiB tmpfs over ``directory`` (keeping what is in it), filled to the brim."""
    tree = sorted(p for p in directory.rglob("*") if not p.is_symlink())
    dirs = {p.relative_to(directory): p.stat() for p in tree if p.is_dir()}
    saved = {p.relative_to(directory): (p.read_bytes(), p.stat()) for p in tree if p.is_file()}
    done = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size=64k,mode=0700,uid={owner.pw_uid},gid={owner.pw_gid}",
            "tmpfs",
            str(directory),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        for rel, st in dirs.items():
            (directory / rel).mkdir()
            os.chown(directory / rel, st.st_uid, st.st_gid)
            os.chmod(directory / rel, st.st_mode & 0o7777)
        for rel, (data, st) in saved.items():
            path = directory / rel
            path.write_bytes(data)
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, st.st_mode & 0o777)
        filler = directory / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * 512):
                    pass
        finally:
            os.close(fd)
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30)


def test_a_full_disk_is_reported_and_keeps_the_old_file(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    account = pwd.getpwnam(env.deploy)
    ssh_dir = env.file(env.hosts[0], env.deploy).parent
    # On the home directory: the helper refuses a mount on ~/.ssh itself (mount_point).
    with tiny_tmpfs_over(ssh_dir.parent, account):
        before = managed_files(env)
        for i in range(15):
            env.person_with_key(f"p{i}", "devops")
        result = env.kw("reconcile", "--json")
        assert result.code == 1, str(result)
        after = managed_files(env)
        for r in result.json():
            errors = {f["account"]: f["error"] for f in r["files"] if f["error"]}
            assert set(errors) == {env.deploy}, r
            assert "No space left" in errors[env.deploy], errors
        for host in env.hosts:
            # The deploy files are untouched; root's (on another disk) got the new people.
            path = env.file(host, env.deploy)
            assert after[path] == before[path]
            assert env.can_login(host, env.deploy, "alice")
            assert b":p14:" in (after[env.file(host, "root")] or b"")
        assert sorted(p.name for p in ssh_dir.glob(".keyward-*")) == []
    # The disk is back (the tmpfs is gone): the next run converges.
    env.kw.ok("reconcile")
    assert env.kw("plan").code == 0
    assert env.can_login(env.hosts[0], env.deploy, "p14")


def test_two_reconciles_and_an_offboarding_at_once(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env.person_with_key("bob", "devops")
    env.kw.ok("reconcile")
    for i in range(6):
        env.person_with_key(f"p{i}", "qa")
    commands = [
        ["reconcile"],
        ["reconcile"],
        ["offboard", "alice", "--reason", "left"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "keyward", *cmd],
            env=cli_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for cmd in commands
    ]
    outcomes = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=150)
            outcomes.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    for code, out, err in outcomes:
        assert code == 0, (code, out, err)
        assert "another keyward writer" not in err and "Traceback" not in err
    assert env.kw("plan").code == 0
    assert env.kw.ok("audit", "verify").code == 0
    for host in env.hosts:
        assert not env.can_login(host, env.deploy, "alice")
        assert env.can_login(host, env.deploy, "bob")
        assert env.can_login(host, env.app, "p5")
    for data in managed_files(env).values():
        if data is not None:
            assert_whole(data)
