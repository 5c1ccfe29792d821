"""The local fleet runs real sshd processes that accept exactly the keys we place.

These tests prove the harness itself: if they pass, a later test that sees a login
refused or allowed is seeing what OpenSSH decided, not an artefact of the fleet.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from keyward.testing.fleet import FleetError, FleetHost, fleet_address, safe_base_dir
from keyward.testing.localfleet import LocalFleet
from keyward.testing.ssh_client import can_login, ssh_login
from tests.accounts import ensure_account, remove_account
from tests.pgserver import PgServer, libpq_url

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating accounts needs root")


def _running(pid: int) -> bool:
    """Alive and not a zombie (orphans are reaped by PID 1 a little later)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rfind(")") + 2 :].split()[0] != "Z"


def _user_pids(user: str, name: str | None = None) -> set[int]:
    argv = ["pgrep", "-u", user] + (["-x", name] if name else [])
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return {int(p) for p in done.stdout.split() if _running(int(p))}


def _wait_for(cond: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _sshd_pids() -> set[int]:
    done = subprocess.run(["pgrep", "-x", "sshd"], capture_output=True, text=True, check=False)
    return {int(p) for p in done.stdout.split() if _running(int(p))}


@pytest.fixture
def base_dir() -> Iterator[Path]:
    path = safe_base_dir("keyward-test-fleet-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def account(base_dir: Path) -> Iterator[str]:
    name = "kwt" + secrets.token_hex(4)
    ensure_account(name, base_dir / "home")
    try:
        yield name
    finally:
        remove_account(name)


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text()


def _authorize(host: FleetHost, user: str, pub_line: str) -> None:
    path = host.authorized_keys_path(user)
    assert path == host.dir / "keys" / user
    path.write_text(pub_line)
    path.chmod(0o644)


def test_fleet_address_wraps() -> None:
    assert fleet_address(10) == "127.0.0.10"
    assert fleet_address(254) == "127.0.0.254"
    assert fleet_address(255) == "127.0.1.1"
    assert fleet_address(1010) == "127.0.3.248"


def test_safe_base_dir_passes_strict_modes(base_dir: Path) -> None:
    assert not str(base_dir).startswith("/tmp")
    assert base_dir.stat().st_mode & 0o777 == 0o755
    assert base_dir.stat().st_uid == os.geteuid()


def test_base_dir_under_tmp_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="StrictModes"), LocalFleet(tmp_path, 1):
        pass


@needs_root
@pytest.mark.fleet
@pytest.mark.timeout(120)
def test_fleet_logins(base_dir: Path, account: str) -> None:
    key = base_dir / "id_test"
    pub = _keygen(key)
    with LocalFleet(base_dir / "fleet", 3) as fleet:
        h1, h2, h3 = fleet.hosts
        assert [h.name for h in fleet.hosts] == ["h1", "h2", "h3"]
        assert [h.address for h in fleet.hosts] == ["127.0.0.10", "127.0.0.11", "127.0.0.12"]
        assert fleet.host("h2") == h2
        keys_dir = h1.dir / "keys"
        assert keys_dir.stat().st_uid == 0 and keys_dir.stat().st_mode & 0o777 == 0o755
        known = fleet.write_known_hosts(base_dir / "known_hosts")
        assert known.read_text().splitlines()[0] == h1.known_hosts_line()
        assert h1.known_hosts_line().startswith(f"[127.0.0.10]:{h1.port} ssh-ed25519 AAAA")

        _authorize(h1, account, pub)
        done = ssh_login(h1, account, key, known, command="id -un")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == account
        refused = ssh_login(h2, account, key, known)
        assert refused.returncode == 255
        assert "Permission denied" in refused.stderr
        assert not can_login(h3, account, key, known)
        # The VERBOSE auth lines land in the per-host log.
        assert "Accepted publickey for " + account in h1.log_file.read_text()

        # Restart one host: same port and host key, so the pinned known_hosts still works.
        pid = fleet.pid("h1")
        fleet.stop_host("h1")
        assert not fleet.is_running("h1")
        assert pid is not None and pid not in _sshd_pids()
        assert not can_login(h1, account, key, known, timeout=20)
        fleet.start_host("h1")
        assert fleet.host("h1") == h1
        assert can_login(h1, account, key, known)

        # A wrong pinned host key is refused by the client before authentication.
        wrong = base_dir / "wrong_known_hosts"
        other_pub = _keygen(base_dir / "other_host_key").split()
        wrong.write_text(f"[{h1.address}]:{h1.port} {other_pub[0]} {other_pub[1]}\n")
        bad = ssh_login(h1, account, key, wrong)
        assert bad.returncode == 255
        assert "HOST IDENTIFICATION HAS CHANGED" in bad.stderr

        # A session left running must not survive stop().
        session = subprocess.Popen(
            ["ssh", *_client_args(h1, account, key, known), "sleep 60"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(lambda: _user_pids(account, "sleep") != set())
        listeners = {fleet.pid(h.name) for h in fleet.hosts}
        assert None not in listeners
        sessions = _user_pids(account)
    try:
        session.wait(timeout=20)
    finally:
        if session.poll() is None:
            session.kill()
    fleet.stop()  # idempotent
    assert not _user_pids(account)
    assert not (listeners | sessions) & _sshd_pids()
    assert not [p for p in sessions if _running(p)]


def _client_args(host: FleetHost, user: str, key: Path, known: Path) -> list[str]:
    from keyward.testing.ssh_client import ssh_command

    return ssh_command(host, user, key, known, "")[1:-1]


@pytest.mark.fleet
@pytest.mark.timeout(60)
def test_fleet_stops_on_exception(base_dir: Path) -> None:
    pids: set[int | None] = set()
    with pytest.raises(RuntimeError, match="boom"), LocalFleet(base_dir / "f", 2) as fleet:
        pids = {fleet.pid(h.name) for h in fleet.hosts}
        assert None not in pids
        raise RuntimeError("boom")
    assert not pids & set(_sshd_pids())


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_pgserver_select_one() -> None:
    with PgServer() as pg:
        postmaster = pg.postmaster_pid()
        assert pg.url.startswith("postgresql+psycopg://")
        with psycopg.connect(libpq_url(pg.url), connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        url = pg.create_database("kw_extra")
        with psycopg.connect(libpq_url(url), connect_timeout=10) as conn:
            row = conn.execute("SELECT current_database()").fetchone()
            assert row == ("kw_extra",)
        pg.drop_database("kw_extra")
    if postmaster is not None:
        assert not _running(postmaster), "postgres still running"
