"""Hostile and broken input around the registry and the inventory.

Every refusal is one line on stderr (never a traceback), exits non-zero and changes
nothing: not the registry, not a host.  Private keys pasted where a public key belongs
never reach an error message, a log line or the audit trail.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyward.agent import bootstrap
from keyward.registry import db as registry_db
from keyward.testing.fleet import free_port
from tests.agent_env import AgentEnv
from tests.cli_runner import Keyward, Result
from tests.hungfs import hung_fuse
from tests.keygen import make_key

pytestmark = pytest.mark.timeout(120)


def one_line_error(result: Result, code: int = 2) -> str:
    assert result.code == code, str(result)
    assert "Traceback" not in result.err and "Traceback" not in result.out, str(result)
    errors = [ln for ln in result.err.splitlines() if ln.startswith("keyward: ")]
    assert len(errors) == 1, str(result)
    return errors[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def host_files(env: AgentEnv) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for host in env.hosts:
        for account in (env.deploy, env.app, "root"):
            path = env.file(host, account)
            out[str(path)] = path.read_bytes() if path.exists() else None
    return out


# -- inventory ------------------------------------------------------------------------


def test_malformed_toml_unknown_fields_and_duplicate_hosts(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env_file = env.inventory / "test.toml"
    settings = env.inventory / "keyward.toml"
    good_env, good_settings = env_file.read_text(), settings.read_text()
    before = host_files(env)
    cases = {
        "malformed": (env_file, good_env + '\n[[hosts]\nname = "x\n'),
        "binary": (env_file, "\0\xff\xfe[[hosts]]"),
        "unknown agent field": (settings, good_settings.replace("[agent]", "[agent]\nidentty = 1")),
        "unknown table": (settings, good_settings + "\n[nonsense]\nx = 1\n"),
        "duplicate host": (
            env_file,
            good_env
            + f'\n[[hosts]]\nname = "{env.hosts[0].name}"\naddress = "127.0.9.9"\nport = 2222\n',
        ),
        "duplicate endpoint": (
            env_file,
            good_env + f'\n[[hosts]]\nname = "other"\naddress = "{env.hosts[0].address}"\n'
            f"port = {env.hosts[0].port}\n",
        ),
        "wrong type": (env_file, good_env.replace(f"port = {env.hosts[1].port}", 'port = "22"')),
        "newline in name": (env_file, good_env.replace(f'"{env.hosts[2].name}"', '"a\\nb"', 1)),
    }
    for what, (path, text) in cases.items():
        env_file.write_text(good_env)
        settings.write_text(good_settings)
        if isinstance(text, str) and "\0" in text:
            path.write_bytes(text.encode("latin-1"))
        else:
            path.write_text(text)
        check = env.kw("inventory", "check")
        assert check.code == 2 and "Traceback" not in check.err, (what, str(check))
        for command in (("reconcile",), ("plan",)):
            line = one_line_error(env.kw(*command))
            assert len(line) < 1000, what
    env_file.write_text(good_env)
    settings.write_text(good_settings)
    assert host_files(env) == before
    assert env.kw.ok("audit", "verify").code == 0


def test_a_closed_port_is_reported_and_the_others_are_done(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    port = free_port("127.0.0.1")
    block = (
        f'[[hosts]]\nname = "closed"\naddress = "127.0.0.1"\nport = {port}\n'
        f'authorized_keys = "%h/.ssh/authorized_keys"\naccounts = ["{env.deploy}", "{env.app}"]'
    )
    env.rewrite_inventory(env.spec.__class__(**{**env.spec.__dict__, "extra_hosts": (block,)}))
    with (env.inventory / "known_hosts").open("a") as known:
        known.write(f"[127.0.0.1]:{port} {env.hosts[0].host_key_pub}\n")
    started = time.monotonic()
    result = env.kw("reconcile", "--json")
    assert time.monotonic() - started < 30
    assert result.code == 1, str(result)
    by_host = {r["host"]: r for r in result.json()}
    assert "cannot connect" in by_host["closed"]["error"]
    for host in env.hosts:
        assert by_host[host.name]["error"] is None
        assert env.can_login(host, env.deploy, "alice")


# -- the registry database --------------------------------------------------------------


def registry_file(kw: Keyward) -> Path:
    path = registry_db.sqlite_path(kw.db_url)
    assert path is not None
    return path


def registry_rows(kw: Keyward) -> tuple[object, ...]:
    people = kw.ok("person", "list", "--json").json()
    events = kw.ok("audit", "log", "--json").json()
    return (people, len(events))


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``BEGIN EXCLUSIVE`` on the SQLite file."""
    script = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI runs in-process: wait 1 s for a lock instead of 15.
    monkeypatch.setattr(registry_db, "SQLITE_BUSY_TIMEOUT_MS", 1000)


def test_locked_registry_refuses_writes_with_one_line(
    env: AgentEnv, short_busy_timeout: None
) -> None:
    env.person_with_key("alice", "devops")
    before = registry_rows(env.kw)
    with exclusive_lock(registry_file(env.kw)):
        for command in (
            ("person", "add", "bob", "--name", "Bob"),
            ("role", "grant", "devops", "alice", "--reason", "x"),
            ("key", "revoke", "SHA256:" + "A" * 43, "--reason", "x"),
            ("offboard", "alice", "--reason", "left"),
        ):
            line = one_line_error(env.kw(*command))
            assert "locked" in line, line
    assert registry_rows(env.kw) == before


def test_locked_registry_during_reconcile_changes_no_host(
    env: AgentEnv, short_busy_timeout: None
) -> None:
    """A reconcile that cannot record what it did must not do it: it stops before any host."""
    env.person_with_key("alice", "devops")
    before = host_files(env)
    with exclusive_lock(registry_file(env.kw)):
        result = env.kw("reconcile")
    assert "locked" in one_line_error(result)
    assert host_files(env) == before


def test_read_only_registry(env: AgentEnv) -> None:
    """Root ignores file modes, so the file is made immutable (chattr +i) instead."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr not available")
    env.person_with_key("alice", "devops")
    path = registry_file(env.kw)
    before = digest(path)
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, timeout=10)
    if done.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {done.stderr!r}")
    try:
        line = one_line_error(env.kw("person", "add", "bob", "--name", "Bob"))
        assert "read-only" in line, line
        line = one_line_error(env.kw("key", "add", "bob", str(env.pub("bob"))))
        assert "bob" in line  # no such person: refused before any write
        assert env.kw("person", "list", "--json").code == 0  # reads still work
        assert digest(path) == before
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, timeout=10)
    assert [p["username"] for p in env.kw.ok("person", "list", "--json").json()] == ["alice"]


def test_missing_registry(env: AgentEnv, tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "registry.db"
    kw = Keyward(f"sqlite:///{db}", env.kw.inventory)
    before = host_files(env)
    for command in (
        ("person", "add", "bob", "--name", "Bob"),
        ("person", "list"),
        ("audit", "verify"),
        ("reconcile",),
        ("plan",),
        ("status",),
    ):
        line = one_line_error(kw(*command))
        assert "no registry" in line and "keyward init" in line, line
    assert not db.parent.exists()
    assert host_files(env) == before


def test_malformed_registry_urls(tmp_path: Path) -> None:
    for url in ("mysql://x/y", "postgresql+psycopg://user:hunter2secret@127.0.0.1:1/db", "::"):
        kw = Keyward(url, str(tmp_path / "no-inventory"))
        result = kw("person", "list")
        assert result.code != 0 and "Traceback" not in result.err, str(result)
        assert "hunter2secret" not in result.err + result.out


# -- secrets ------------------------------------------------------------------------------

PASSPHRASE = "correct-horse-battery-staple-42"
PUTTY = """PuTTY-User-Key-File-3: ssh-ed25519
Encryption: none
Comment: eddsa-key-20240101
Public-Lines: 2
AAAAC3NzaC1lZDI1NTE5AAAAIBgwKLqCx1c9bTtNFGmtEjrxJvgTOfHYn8Cn2B0D
yA0y
Private-Lines: 1
AAAAIB7qYkmKS3BQu2k2yu0UTXbt1B6Zl+ooSYoXy81kTo5tSECRETx9xq2L
Private-MAC: 0d1f1bc7f3c77b1c3a8d39e5d2e6e2a13b3d8f6f8d2c9a1b7e4f0c2d9a8b7c6d
"""


def private_keys(directory: Path) -> dict[str, bytes]:
    keys = {
        "openssh": make_key(directory, "ed25519")[0],
        "openssh-encrypted": make_key(directory, "ed25519", passphrase=PASSPHRASE)[0],
        "pem-rsa": make_key(directory, "rsa", 3072, fmt="PEM")[0],
        "pkcs8-ecdsa": make_key(directory, "ecdsa", 256, fmt="PKCS8")[0],
        "pkcs8-encrypted": make_key(directory, "ecdsa", 384, passphrase=PASSPHRASE, fmt="PKCS8")[0],
    }
    out = {name: path.read_bytes() for name, path in keys.items()}
    out["putty"] = PUTTY.encode()
    # A private key pasted after a public key line, and one with CRLF line ends.
    pub = (directory / "ed25519.pub").read_bytes()
    out["pub-then-private"] = pub + out["openssh"]
    out["crlf"] = out["pem-rsa"].replace(b"\n", b"\r\n")
    return out


def secret_lines(data: bytes) -> list[str]:
    text = data.decode()
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) >= 12]
    return [ln for ln in lines if "PUBLIC" not in ln and not ln.startswith("ssh-")] + [PASSPHRASE]


def test_private_keys_never_reach_errors_logs_or_audit(env: AgentEnv, tmp_path: Path) -> None:
    env.kw.ok("person", "add", "alice", "--name", "Alice")
    seen: list[str] = []
    for name, data in private_keys(tmp_path / "priv").items():
        path = tmp_path / f"{name}.key"
        path.write_bytes(data)
        for args, stdin in (
            (("key", "add", "alice", str(path), "--attest", "admin"), None),
            (("key", "add", "alice", "-"), data),
            (("key", "statement", "alice", str(path)), None),
            (("key", "rotate", "alice", str(path)), None),
        ):
            result = env.kw(*args, input=stdin)
            assert result.code == 2, (name, str(result))
            assert "Traceback" not in result.err, (name, str(result))
            seen.append(result.out + result.err)
        if name.startswith(("openssh", "pem", "pkcs8")):
            # key check is meant for private keys: it reports, but never echoes them.
            result = env.kw("key", "check", str(path))
            assert "Traceback" not in result.err, (name, str(result))
            seen.append(result.out + result.err)
        # A private key as an inventory break-glass key.
        spec = env.spec.__class__(
            **{**env.spec.__dict__, "break_glass": ((("root",), data.decode()),)}
        )
        env.rewrite_inventory(spec)
        for command in (("inventory", "check"), ("reconcile",)):
            result = env.kw(*command)
            assert result.code == 2 and "Traceback" not in result.err, (name, str(result))
            seen.append(result.out + result.err)
        blob = "\n".join(seen)
        for line in secret_lines(data):
            assert line not in blob, (name, line)
    audit = json.dumps(env.kw.ok("audit", "log", "--json").json())
    for data in private_keys(tmp_path / "priv2").values():
        for line in secret_lines(data):
            assert line not in audit
    assert env.kw.ok("key", "list", "--all", "--json").json() == []


def test_private_key_in_the_daemon_log_never_shows(env: AgentEnv, tmp_path: Path) -> None:
    """The agent's identity_pub replaced by a private key: the JSON logs stay clean."""
    priv = make_key(tmp_path / "p", "ed25519")[0].read_bytes()
    settings = env.inventory / "keyward.toml"
    fake_pub = tmp_path / "agent.pub"
    fake_pub.write_bytes(priv)
    settings.write_text(
        settings.read_text().replace("[agent]\n", f'[agent]\nidentity_pub = "{fake_pub}"\n')
    )
    environ = {
        **os.environ,
        "KEYWARD_DB": env.kw.db_url,
        "KEYWARD_INVENTORY": env.kw.inventory,
        "KEYWARD_ACTOR": "t",
    }
    done = subprocess.run(
        [sys.executable, "-m", "keyward", "daemon"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    for line in secret_lines(priv):
        assert line not in done.stderr + done.stdout


# -- a managed file that never answers ---------------------------------------------------


def reconcile_files(env: AgentEnv) -> tuple[Result, dict[tuple[str, str], dict[str, Any]]]:
    """A reconcile that must finish well within one helper request's timeout (60 s)."""
    started = time.monotonic()
    result = env.kw("reconcile", "--json")
    assert time.monotonic() - started < 30, str(result)
    assert result.code == 1, str(result)
    files = {(r["host"], f["account"]): f for r in result.json() for f in r["files"]}
    return result, files


def revoked_everywhere_else(env: AgentEnv, stuck: set[tuple[str, str]]) -> None:
    """The revocation reached every file but the ``stuck`` ones (host name, account)."""
    for host in env.hosts:
        assert not env.can_login(host, "root", "alice"), host.name
        if (host.name, env.deploy) not in stuck:
            assert not env.can_login(host, env.deploy, "alice"), host.name


def test_a_mount_over_authorized_keys_is_refused_and_the_host_still_revokes(env: AgentEnv) -> None:
    """A never-answering FUSE file system, or a bind mount, over one account's file: that file
    is refused at once with its own error, and the same host's other files are reconciled."""
    fp = env.person_with_key("alice", "devops")
    assert env.kw("reconcile").code == 0
    fuse_host, bind_host = env.hosts[0], env.hosts[1]
    elsewhere = env.base / "home" / env.deploy / "elsewhere"
    granted = env.file(bind_host, env.deploy).read_bytes()
    assert b"keyward:alice:" in granted
    elsewhere.write_bytes(granted)
    shutil.chown(elsewhere, env.deploy, env.deploy)
    env.kw.ok("key", "revoke", fp, "--reason", "laptop lost")
    with (
        hung_fuse(env.file(fuse_host, env.deploy)),
        mount_bind(elsewhere, env.file(bind_host, env.deploy)),
    ):
        _, files = reconcile_files(env)
        fused = files[(fuse_host.name, env.deploy)]
        assert fused["error_code"] == "untrusted_fs", fused
        assert "fuse.hang" in fused["error"] and "mount point" in fused["error"]
        bound = files[(bind_host.name, env.deploy)]
        assert bound["error_code"] == "mount_point", bound
        assert str(env.file(bind_host, env.deploy)) in bound["error"]
        revoked_everywhere_else(env, {(fuse_host.name, env.deploy), (bind_host.name, env.deploy)})
    assert elsewhere.read_bytes() == granted  # nothing was written through the mount


@contextlib.contextmanager
def mount_bind(source: Path, target: Path) -> Iterator[None]:
    done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], timeout=30, check=True)


@pytest.fixture
def blind_helper(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The helper the hosts run cannot see mount ids (as on a host without /proc, or when a
    mount appears right after the check) and gives each file 2 s."""
    source = bootstrap.remote_source()
    blinded = source.replace(
        b'FDINFO = "/proc/self/fdinfo/%d"', b'FDINFO = "/nonexistent/%d"'
    ).replace(b"FILE_TIMEOUT = 10.0", b"FILE_TIMEOUT = 2.0")
    assert blinded.count(b"/nonexistent/") == 1 and b"FILE_TIMEOUT = 2.0" in blinded
    monkeypatch.setattr(bootstrap, "remote_source", lambda: blinded)
    bootstrap._payload.cache_clear()
    bootstrap._compiled.cache_clear()
    yield
    monkeypatch.undo()
    bootstrap._payload.cache_clear()
    bootstrap._compiled.cache_clear()


def test_a_file_that_never_answers_times_out_alone_and_the_host_still_revokes(
    env: AgentEnv, blind_helper: None
) -> None:
    fp = env.person_with_key("alice", "devops")
    assert env.kw("reconcile").code == 0
    stuck_host = env.hosts[0]
    path = env.file(stuck_host, env.deploy)
    env.kw.ok("key", "revoke", fp, "--reason", "laptop lost")
    with hung_fuse(path):
        result, files = reconcile_files(env)
        stuck = files[(stuck_host.name, env.deploy)]
        assert stuck["error_code"] == "timeout", stuck
        assert stuck["error"] == f"timed out after 2 s reading {path}; it was not read"
        events = [json.loads(ln) for ln in result.err.splitlines() if ln.startswith("{")]
        assert [(e["host"], e["path"]) for e in events if e["event"] == "file_timeout"] == [
            (stuck_host.name, str(path))
        ]
        revoked_everywhere_else(env, {(stuck_host.name, env.deploy)})
