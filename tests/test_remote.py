"""The on-host program (keyward/agent/remote.py) against real accounts and real traps.

Runs as root: creates local accounts with useradd under a root-owned base directory in /srv,
plants the traps a user could plant in their own home, and speaks the JSON-lines protocol
with a real ``python3 remote.py`` subprocess (and through the bootstrap command with sh -c).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pwd
import queue
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keyward.agent import remote
from keyward.agent.bootstrap import remote_command
from tests.hungfs import hung_fuse

pytestmark = [
    pytest.mark.fleet,  # root: creates local accounts and mounts file systems
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, chown, mount)"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd"),
]

REMOTE = Path(__file__).resolve().parents[1] / "keyward" / "agent" / "remote.py"
DEFAULT = "%h/.ssh/authorized_keys"
KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBYx4Kq2Ua9TqzX5l3q1c2Rk0J4mNvQ6n9k1dY0d0pXw a@b\n"
REPLY_TIMEOUT = 15.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Agent:
    """A running remote.py speaking JSON lines; every reply is awaited with a timeout."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.counter = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send_raw(self, data: bytes, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        return self.receive(timeout)

    def receive(self, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"agent exited with {self.proc.poll()}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, op: str, timeout: float = REPLY_TIMEOUT, **fields: Any) -> dict[str, Any]:
        self.counter += 1
        rid = f"req-{self.counter}"
        line = json.dumps({"id": rid, "op": op, **fields}).encode() + b"\n"
        started = time.monotonic()
        reply = self.send_raw(line, timeout)
        assert time.monotonic() - started < timeout
        assert reply["id"] == rid
        return reply

    def read(self, account: str, pattern: str = DEFAULT) -> dict[str, Any]:
        reply = self.call("read", files=[{"account": account, "pattern": pattern}])
        assert reply["ok"] is True
        assert len(reply["files"]) == 1
        result: dict[str, Any] = reply["files"][0]
        return result

    def write(
        self,
        account: str,
        content: bytes,
        expect: str | None,
        pattern: str = DEFAULT,
        create_dir: bool = False,
    ) -> dict[str, Any]:
        return self.call(
            "write",
            account=account,
            pattern=pattern,
            content_b64=b64(content),
            expect_sha256=expect,
            create_dir=create_dir,
        )

    def close(self) -> int:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def ssh(self) -> Path:
        return self.home / ".ssh"

    @property
    def keys(self) -> Path:
        return self.ssh / "authorized_keys"

    def setup_keys(self, content: bytes = KEY) -> Path:
        self.ssh.mkdir(mode=0o700)
        os.chown(self.ssh, self.uid, self.gid)
        self.keys.write_bytes(content)
        os.chown(self.keys, self.uid, self.gid)
        self.keys.chmod(0o600)
        return self.keys


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="kwtest-", dir="/srv"))
    os.chown(root, 0, 0)
    root.chmod(0o755)
    (root / "home").mkdir(mode=0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def account(base: Path) -> Iterator[Account]:
    with new_account(base) as acct:
        yield acct


@contextlib.contextmanager
def new_account(base: Path) -> Iterator[Account]:
    name = "kwr" + secrets.token_hex(4)
    home = base / "home" / name
    subprocess.run(
        ["useradd", "-m", "-d", str(home), "-s", "/bin/sh", name],
        check=True,
        timeout=60,
        capture_output=True,
    )
    pw = pwd.getpwnam(name)
    try:
        yield Account(name, pw.pw_uid, pw.pw_gid, home)
    finally:
        subprocess.run(["usermod", "-d", str(home), name], timeout=60, capture_output=True)
        subprocess.run(["userdel", "-r", name], timeout=60, capture_output=True)
        if home.is_symlink() or home.is_file():
            home.unlink()
        shutil.rmtree(home, ignore_errors=True)


PY38 = "/root/.pyenv/versions/3.8.18/bin/python3"  # the oldest Python remote.py supports
# The helper's own interpreter always; Python 3.8 too where this machine has it (no Debian
# package provides it, so it widens coverage without being a requirement or a skip).
AGENT_PYTHONS = [sys.executable] + ([PY38] if os.access(PY38, os.X_OK) else [])
BOOTSTRAP_PYTHONS = [
    p
    for p in (sys.executable, "/usr/bin/python3", PY38)
    if p == sys.executable or os.access(p, os.X_OK)
]


@pytest.fixture(scope="module", params=AGENT_PYTHONS)
def agent(request: pytest.FixtureRequest) -> Iterator[Agent]:
    python: str = request.param
    proc = Agent([python, str(REMOTE)])
    yield proc
    proc.close()


@dataclass(frozen=True)
class Snapshot:
    content: bytes | None
    mtime_ns: int
    mode: int
    uid: int
    nlink: int


def snapshot(path: Path) -> Snapshot:
    st = path.lstat()
    content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
    return Snapshot(content, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_nlink)


def temps(*dirs: Path) -> list[str]:
    found = []
    for d in dirs:
        if d.is_dir() and not d.is_symlink():
            found += [str(d / n) for n in os.listdir(d) if n.startswith(".keyward-")]
    return found


def root_file(base: Path, content: bytes = b"root:SECRET:19000:0:99999:7:::\n") -> Path:
    path = base / f"rootfile-{secrets.token_hex(4)}"
    path.write_bytes(content)
    os.chown(path, 0, 0)
    path.chmod(0o600)
    return path


def root_dir(base: Path) -> Path:
    path = base / f"rootdir-{secrets.token_hex(4)}"
    path.mkdir(mode=0o755)
    os.chown(path, 0, 0)
    return path


# --------------------------------------------------------------------------- protocol


def test_hello(agent: Agent) -> None:
    reply = agent.call("hello")
    assert reply["ok"] is True
    assert reply["protocol"] == remote.PROTOCOL
    assert reply["euid"] == 0
    assert reply["python"].startswith("3.")
    assert isinstance(reply["hostname"], str)


def test_protocol_errors_keep_serving(agent: Agent) -> None:
    bad = agent.send_raw(b"{not json\n")
    assert bad["ok"] is False
    assert bad["error"]["code"] == "bad_json"
    assert bad["id"] is None
    arr = agent.send_raw(b"[1, 2]\n")
    assert arr["ok"] is False
    assert arr["error"]["code"] == "bad_request"
    unknown = agent.call("format_disk")
    assert unknown["ok"] is False
    assert unknown["error"]["code"] == "unknown_op"
    no_files = agent.call("read", files="nope")
    assert no_files["ok"] is False
    assert no_files["error"]["code"] == "bad_request"
    bad_b64 = agent.call("write", account="root", pattern="/x", content_b64="!!", create_dir=False)
    assert bad_b64["error"]["code"] == "bad_request"
    binary = agent.send_raw(b'{"id": 1, "op": "\xff"}\n')
    assert binary["ok"] is False
    assert agent.call("hello")["ok"] is True


def test_overlong_line_is_rejected_and_skipped(agent: Agent) -> None:
    reply = agent.send_raw(b"x" * (remote.MAX_LINE + 10) + b"\n", timeout=60)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "line_too_long"
    assert agent.call("hello")["ok"] is True


def test_bye_ends_the_process() -> None:
    proc = Agent([sys.executable, str(REMOTE)])
    assert proc.call("bye") == {"id": "req-1", "ok": True}
    assert proc.proc.wait(timeout=10) == 0


def test_unexpected_exception_becomes_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(req: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setitem(remote.OPS, "hello", boom)
    reply, stop = remote.handle_line(b'{"id": 7, "op": "hello"}')
    assert not stop
    assert reply == {
        "id": 7,
        "ok": False,
        "error": {"code": "internal", "message": "RuntimeError: kaboom second line"},
    }


def test_unexpected_exception_in_a_worker_becomes_internal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug met while reading a file on a worker thread ends the request like any other bug,
    and the files after it are not read behind the next request's back."""
    seen: list[object] = []

    def boom(account: object, pattern: object, progress: object = None) -> dict[str, Any]:
        seen.append(account)
        raise RuntimeError("kaboom")

    monkeypatch.setattr(remote, "read_one", boom)
    files = [{"account": name, "pattern": DEFAULT} for name in ("a", "b", "c")]
    reply, _ = remote.handle_request({"id": 8, "op": "read", "files": files})
    assert reply == {
        "id": 8,
        "ok": False,
        "error": {"code": "internal", "message": "RuntimeError: kaboom"},
    }
    time.sleep(0.1)
    assert seen == ["a"]
    assert remote.stuck_workers() == 0


def _bootstrap_session(python: str, magic: bytes | None = None) -> list[dict[str, Any]]:
    requests = [
        {"id": 1, "op": "hello"},
        {"id": 2, "op": "read", "files": [{"account": "root", "pattern": "/nonexistent/%u"}]},
        {"id": 3, "op": "bye"},
    ]
    proc = subprocess.run(
        ["sh", "-c", remote_command(python) if magic is None else remote_command(python, magic)],
        input="".join(json.dumps(r) + "\n" for r in requests).encode(),
        capture_output=True,
        timeout=60,
        check=True,
        cwd="/",
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("python", BOOTSTRAP_PYTHONS)
@pytest.mark.parametrize("compiled", [True, False], ids=["precompiled", "from-source"])
def test_bootstrap_command_runs_remote(python: str, compiled: bool) -> None:
    # A host whose bytecode format differs from the agent's compiles the source instead.
    hello, read, bye = _bootstrap_session(python, None if compiled else b"\0\0\0\0")
    assert hello["ok"] is True
    assert hello["protocol"] == remote.PROTOCOL
    assert read["files"][0]["state"] == "missing"
    assert read["files"][0]["path"] == "/nonexistent/root"
    assert bye == {"id": 3, "ok": True}


def test_bootstrap_command_is_one_shell_word_pair() -> None:
    command = remote_command("python3")
    assert command.startswith("exec python3 -I -S -c '")
    assert command.count("'") == 2
    # sshd hands the command to the login shell as one argument, and Linux refuses an
    # argument longer than 128 KiB (MAX_ARG_STRLEN): keep a wide margin.
    assert len(command.encode()) < 100_000


def test_bootstrap_command_through_sudo_is_fixed_up_to_the_code() -> None:
    """What a sudoers entry matches: ``sudo -n --`` and exactly ``PYTHON -I -S -c CODE``."""
    command = remote_command("/usr/bin/python3", sudo=True)
    plain = remote_command("/usr/bin/python3")
    assert command.startswith("exec sudo -n -- /usr/bin/python3 -I -S -c '")
    assert command.removeprefix("exec sudo -n -- ") == plain.removeprefix("exec ")


def test_sshd_config(agent: Agent) -> None:
    reply = agent.call("sshd_config", timeout=60)
    if reply["ok"]:
        assert "strictmodes" in reply["settings"]
        assert "authorizedkeysfile" in reply["settings"]
    else:
        assert reply["error"]["code"] in ("sshd_failed", "no_sshd")
        assert reply["error"]["message"]
    assert agent.call("hello")["ok"] is True


# ---------------------------------------------------------------------- reads, expansion


def test_read_present(agent: Agent, account: Account) -> None:
    account.setup_keys()
    got = agent.read(account.name)
    assert got["state"] == "present"
    assert got["error"] is None
    assert got["path"] == str(account.keys)
    assert base64.b64decode(got["content_b64"]) == KEY
    assert got["sha256"] == sha(KEY)
    assert (got["uid"], got["gid"], got["mode"], got["nlink"]) == (
        account.uid,
        account.gid,
        0o600,
        1,
    )
    assert got["dir_ok"] is True
    assert got["replaceable"] is False


def test_read_many_in_order(agent: Agent, account: Account) -> None:
    account.setup_keys()
    reply = agent.call(
        "read",
        files=[
            {"account": account.name, "pattern": DEFAULT},
            {"account": "kwnosuchuser", "pattern": DEFAULT},
            {"account": account.name, "pattern": "%h/.ssh/authorized_keys2"},
            {"account": "../etc", "pattern": DEFAULT},
        ],
    )
    states = [(f["state"], f["error"] and f["error"]["code"]) for f in reply["files"]]
    assert [f["replaceable"] for f in reply["files"]] == [False] * 4
    assert states == [
        ("present", None),
        ("error", "no_such_account"),
        ("missing", None),
        ("error", "no_such_account"),
    ]


@pytest.mark.parametrize("name", ["Root", "a b", "-x", "x" * 40, "", "root\n"])
def test_insane_account_names_refused(agent: Agent, name: str) -> None:
    got = agent.read(name)
    assert got["state"] == "error"
    assert got["error"]["code"] == "no_such_account"


def test_pattern_expansion(agent: Agent, account: Account) -> None:
    keys_dir = account.home / "keys"
    keys_dir.mkdir(mode=0o700)
    os.chown(keys_dir, account.uid, account.gid)
    reply = agent.write(account.name, KEY, None, pattern="keys/%u.%U.100%%")
    assert reply["ok"] is True, reply
    expected = keys_dir / f"{account.name}.{account.uid}.100%"
    assert reply["path"] == str(expected)
    assert expected.read_bytes() == KEY
    bad = agent.read(account.name, "%h/%x")
    assert bad["error"]["code"] == "bad_pattern"
    trailing = agent.read(account.name, "%h/a%")
    assert trailing["error"]["code"] == "bad_pattern"


def test_root_owned_system_symlinks_are_followed(
    agent: Agent, account: Account, base: Path
) -> None:
    account.setup_keys()
    link = base / f"homes-{account.name}"
    link.symlink_to("home")  # relative, in a root-owned 0755 directory
    abs_link = base / f"abs-{account.name}"
    abs_link.symlink_to(base / "home")
    for top in (link, abs_link):
        got = agent.read(account.name, f"{top}/%u/.ssh/authorized_keys")
        assert got["state"] == "present", got
        assert got["sha256"] == sha(KEY)


def test_symlink_loop_is_bounded(agent: Agent, base: Path) -> None:
    a = base / f"loop-a-{secrets.token_hex(3)}"
    b = base / f"loop-b-{secrets.token_hex(3)}"
    a.symlink_to(b)
    b.symlink_to(a)
    got = agent.read("root", f"{a}/x")
    assert got["error"]["code"] == "symlink"
    assert "too many" in got["error"]["message"]


def test_group_writable_ssh_dir_is_not_ok(agent: Agent, account: Account) -> None:
    account.setup_keys()
    account.ssh.chmod(0o775)
    got = agent.read(account.name)
    assert got["state"] == "present"
    assert got["dir_ok"] is False


# ---------------------------------------------------------------------------- trap table


@dataclass(frozen=True)
class Trap:
    name: str
    plant: Callable[[Account, Path], list[Path]]  # returns paths that must not change
    read_code: str
    write_code: str
    replaceable: bool = False  # only the final entry is wrong: "*" renames over it


def _ssh_symlink_to_root_dir(acct: Account, base: Path) -> list[Path]:
    target = root_dir(base)
    secret = target / "authorized_keys"
    secret.write_bytes(b"root-owned keys\n")
    acct.ssh.symlink_to(target)
    return [target, secret]


def _keys_symlink_to_root_file(acct: Account, base: Path) -> list[Path]:
    acct.setup_keys()
    secret = root_file(base)
    acct.keys.unlink()
    acct.keys.symlink_to(secret)
    return [secret, acct.keys]


def _ssh_symlink_relative(acct: Account, base: Path) -> list[Path]:
    target = root_dir(base)
    secret = target / "authorized_keys"
    secret.write_bytes(b"root-owned keys\n")
    acct.ssh.symlink_to(os.path.relpath(target, acct.home))
    return [target, secret]


def _home_component_symlink(acct: Account, base: Path) -> list[Path]:
    target = root_dir(base)
    (target / ".ssh").mkdir(mode=0o700)
    secret = target / ".ssh" / "authorized_keys"
    secret.write_bytes(b"root-owned keys\n")
    inner = acct.home / "inner"
    inner.symlink_to(target)
    os.lchown(inner, acct.uid, acct.gid)
    subprocess.run(["usermod", "-d", str(inner), acct.name], check=True, timeout=60)
    return [target, secret]


def _ssh_is_a_file(acct: Account, base: Path) -> list[Path]:
    acct.ssh.write_bytes(b"not a directory\n")
    os.chown(acct.ssh, acct.uid, acct.gid)
    return [acct.ssh]


def _keys_fifo(acct: Account, base: Path) -> list[Path]:
    acct.setup_keys()
    acct.keys.unlink()
    os.mkfifo(acct.keys, 0o600)
    os.chown(acct.keys, acct.uid, acct.gid)
    return [acct.keys]


def _keys_socket(acct: Account, base: Path) -> list[Path]:
    import socket

    acct.setup_keys()
    acct.keys.unlink()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(acct.keys))
    sock.close()
    return [acct.keys]


def _keys_directory(acct: Account, base: Path) -> list[Path]:
    acct.ssh.mkdir(mode=0o700)
    os.chown(acct.ssh, acct.uid, acct.gid)
    acct.keys.mkdir()
    return [acct.keys]


def _ssh_owned_by_other(acct: Account, base: Path) -> list[Path]:
    acct.setup_keys()
    nobody = pwd.getpwnam("nobody")
    os.chown(acct.ssh, nobody.pw_uid, nobody.pw_gid)
    return [acct.keys]


def _home_world_writable_dir_symlink(acct: Account, base: Path) -> list[Path]:
    # A root-owned but world-writable (sticky, like /tmp) directory is not trusted either.
    shared = base / f"shared-{secrets.token_hex(3)}"
    shared.mkdir()
    shared.chmod(0o1777)
    target = root_dir(base)
    (target / ".ssh").mkdir(mode=0o700)
    secret = target / ".ssh" / "authorized_keys"
    secret.write_bytes(b"root-owned keys\n")
    link = shared / "link"
    link.symlink_to(target)
    subprocess.run(["usermod", "-d", str(link), acct.name], check=True, timeout=60)
    return [target, secret]


TRAPS = [
    Trap("ssh_symlink_to_root_dir", _ssh_symlink_to_root_dir, "symlink", "symlink"),
    Trap("ssh_relative_symlink", _ssh_symlink_relative, "symlink", "symlink"),
    Trap("keys_symlink_to_root_file", _keys_symlink_to_root_file, "symlink", "symlink", True),
    Trap("home_component_symlink", _home_component_symlink, "symlink", "symlink"),
    Trap("ssh_is_a_file", _ssh_is_a_file, "not_directory", "not_directory"),
    Trap("keys_fifo", _keys_fifo, "fifo", "fifo", True),
    Trap("keys_socket", _keys_socket, "not_regular", "not_regular", True),
    Trap("keys_directory", _keys_directory, "not_regular", "not_regular"),
    Trap("ssh_owned_by_other", _ssh_owned_by_other, "", "bad_owner"),
    Trap("world_writable_hop", _home_world_writable_dir_symlink, "symlink", "symlink"),
]


@pytest.mark.parametrize("trap", TRAPS, ids=[t.name for t in TRAPS])
def test_trap(agent: Agent, account: Account, base: Path, trap: Trap) -> None:
    protected = trap.plant(account, base)
    before = {p: snapshot(p) for p in protected}
    dirs = [account.home, account.ssh, *(p.parent for p in protected), *protected]

    started = time.monotonic()
    got = agent.read(account.name)
    if trap.read_code:
        assert got["state"] == "error", got
        assert got["error"]["code"] == trap.read_code, got
        assert got["content_b64"] is None
        assert got["sha256"] is None
    assert got["replaceable"] is trap.replaceable, got
    if trap.name not in ("home_component_symlink", "world_writable_hop"):  # they move home
        assert got["path"] == str(account.keys)

    # A hash or null never replaces a trap; "*" replaces only a replaceable final entry.
    expects = (None, sha(KEY)) if trap.replaceable else ("*", None, sha(KEY))
    for expect in expects:
        reply = agent.write(account.name, b"ssh-ed25519 AAAA attacker-wins\n", expect)
        assert reply["ok"] is False, reply
        assert reply["error"]["code"] == trap.write_code, reply
        assert reply["error"]["message"]
    assert {p: snapshot(p) for p in protected} == before

    if trap.replaceable:
        reply = agent.write(account.name, KEY, "*")
        assert reply["ok"] is True, reply
        assert reply["sha256"] == sha(KEY)
        st = account.keys.lstat()
        assert stat.S_ISREG(st.st_mode)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            account.uid,
            account.gid,
            0o600,
        )
        assert account.keys.read_bytes() == KEY
        # What the old entry pointed at is untouched: rename replaced the entry only.
        rest = [p for p in protected if p != account.keys]
        assert {p: snapshot(p) for p in rest} == {p: before[p] for p in rest}
    assert time.monotonic() - started < 10, "traps must not make the agent wait"
    assert temps(*dirs) == []


# ------------------------------------------------------------------ replaceable problems


def test_hardlink_to_root_file(agent: Agent, account: Account, base: Path) -> None:
    account.ssh.mkdir(mode=0o700)
    os.chown(account.ssh, account.uid, account.gid)
    secret = root_file(base)
    os.link(secret, account.keys)
    before = snapshot(secret)
    assert before.nlink == 2

    got = agent.read(account.name)
    assert got["state"] == "error"
    assert got["error"]["code"] == "hardlink"
    assert got["content_b64"] is None
    assert got["sha256"] is None
    assert got["nlink"] == 2
    assert got["replaceable"] is True

    refused = agent.write(account.name, KEY, sha(before.content or b""))
    assert refused["ok"] is False
    assert refused["error"]["code"] == "changed"
    assert snapshot(secret) == before

    reply = agent.write(account.name, KEY, "*")
    assert reply["ok"] is True, reply
    assert reply["sha256"] == sha(KEY)
    assert (reply["uid"], reply["gid"], reply["mode"]) == (account.uid, account.gid, 0o600)
    after = snapshot(secret)
    assert after.content == before.content
    assert after.mtime_ns == before.mtime_ns
    assert after.mode == before.mode
    assert after.nlink == 1
    assert account.keys.read_bytes() == KEY
    assert account.keys.stat().st_nlink == 1
    assert temps(account.ssh, base) == []


def test_too_large_file(agent: Agent, account: Account) -> None:
    account.setup_keys(b"A" * (2 << 20))
    got = agent.read(account.name)
    assert got["state"] == "error"
    assert got["error"]["code"] == "too_large"
    assert got["content_b64"] is None
    assert got["replaceable"] is True
    refused = agent.write(account.name, KEY, None)
    assert refused["error"]["code"] == "changed"
    assert account.keys.stat().st_size == 2 << 20
    reply = agent.write(account.name, KEY, "*")
    assert reply["ok"] is True, reply
    assert account.keys.read_bytes() == KEY
    huge = agent.write(account.name, b"B" * ((1 << 20) + 1), "*")
    assert huge["error"]["code"] == "too_large"
    assert account.keys.read_bytes() == KEY
    assert temps(account.ssh) == []


# -------------------------------------------------------------------------------- writes


def test_non_utf8_round_trip(agent: Agent, account: Account) -> None:
    account.setup_keys()
    content = b"\xff\xfe\x00 ssh-ed25519 AAAA caf\xe9\n\x80\x81 trailing"
    reply = agent.write(account.name, content, sha(KEY))
    assert reply["ok"] is True, reply
    assert reply["sha256"] == sha(content)
    got = agent.read(account.name)
    assert base64.b64decode(got["content_b64"]) == content
    assert got["sha256"] == sha(content)
    assert account.keys.read_bytes() == content


def test_write_fixes_owner_mode_and_ssh_dir(agent: Agent, account: Account) -> None:
    account.setup_keys()
    os.chown(account.keys, account.uid, 0)  # the user's own file: still read and compared
    account.keys.chmod(0o666)
    got = agent.read(account.name)
    assert got["state"] == "present"
    assert got["owner_ok"] is False
    account.ssh.chmod(0o777)
    reply = agent.write(account.name, KEY + KEY, sha(KEY))
    assert reply["ok"] is True, reply
    assert reply["fixed_dir_mode"] is True
    assert reply["dir_ok"] is True
    st = account.keys.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (account.uid, account.gid, 0o600)
    assert (reply["uid"], reply["gid"], reply["mode"]) == (account.uid, account.gid, 0o600)
    assert stat.S_IMODE(account.ssh.stat().st_mode) == 0o700
    assert account.keys.read_bytes() == KEY + KEY
    assert temps(account.ssh) == []


def test_missing_home(agent: Agent, account: Account) -> None:
    shutil.rmtree(account.home)
    got = agent.read(account.name)
    assert got["state"] == "error"
    assert got["error"]["code"] == "home_missing"
    for create_dir in (False, True):
        reply = agent.write(account.name, KEY, None, create_dir=create_dir)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "home_missing"
    assert not account.home.exists()


def test_a_directory_left_half_made_is_finished_or_refused(agent: Agent, account: Account) -> None:
    """Two writers sharing a home (a test fleet's hosts) can meet inside ``make_dir``: one
    left ``~/.ssh`` root's (0700), where sshd, reading as the user, sees no key at all. An
    empty one is handed over as make_dir would; one with something in it is refused."""
    account.ssh.mkdir(mode=0o700)
    os.chown(account.ssh, 0, 0)
    os.chmod(account.ssh, 0o700)
    reply = agent.write(account.name, KEY, None, create_dir=True)
    assert reply["ok"] is True, reply
    assert reply["fixed_dir_mode"] is True
    st = account.ssh.lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (account.uid, account.gid, 0o700)
    assert account.keys.read_bytes() == KEY
    # Not empty: another writer's file is already inside. Nothing is written or handed over.
    account.keys.unlink()
    os.chown(account.ssh, 0, 0)
    (account.ssh / "authorized_keys2").write_bytes(b"root's\n")
    refused = agent.write(account.name, KEY, None, create_dir=True)
    assert refused["error"]["code"] == "race", refused
    assert account.ssh.lstat().st_uid == 0 and not account.keys.exists()
    assert (account.ssh / "authorized_keys2").read_bytes() == b"root's\n"


def test_missing_ssh_dir_created(agent: Agent, account: Account) -> None:
    got = agent.read(account.name)
    assert got["state"] == "missing"
    assert got["error"] is None

    refused = agent.write(account.name, KEY, None, create_dir=False)
    assert refused["error"]["code"] == "not_directory"
    changed = agent.write(account.name, KEY, sha(KEY), create_dir=True)
    assert changed["error"]["code"] == "changed"
    assert not account.ssh.exists()

    reply = agent.write(account.name, KEY, None, create_dir=True)
    assert reply["ok"] is True, reply
    assert reply["created_dir"] is True
    st = account.ssh.lstat()
    assert stat.S_ISDIR(st.st_mode)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (account.uid, account.gid, 0o700)
    kst = account.keys.stat()
    assert (kst.st_uid, kst.st_gid, stat.S_IMODE(kst.st_mode)) == (
        account.uid,
        account.gid,
        0o600,
    )
    assert agent.read(account.name)["sha256"] == sha(KEY)


def test_only_last_directory_is_created(agent: Agent, account: Account) -> None:
    reply = agent.write(account.name, KEY, None, pattern="%h/a/b/keys", create_dir=True)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "not_directory"
    assert not (account.home / "a").exists()
    got = agent.read(account.name, "%h/a/b/keys")
    assert got["state"] == "missing"


def test_central_layout_root_owned(agent: Agent, account: Account, base: Path) -> None:
    central = root_dir(base)
    pattern = f"{central}/%u"
    reply = agent.write(account.name, KEY, None, pattern=pattern)
    assert reply["ok"] is True, reply
    st = (central / account.name).stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644)
    assert (reply["uid"], reply["gid"], reply["mode"]) == (0, 0, 0o644)
    root_reply = agent.write("root", KEY, None, pattern=pattern)
    assert root_reply["ok"] is True, root_reply
    rst = (central / "root").stat()
    assert (rst.st_uid, rst.st_gid, stat.S_IMODE(rst.st_mode)) == (0, 0, 0o600)
    got = agent.read(account.name, pattern)
    assert got["state"] == "present"
    assert got["dir_ok"] is True
    assert temps(central) == []


def test_compare_and_swap(agent: Agent, account: Account) -> None:
    account.setup_keys()
    before = snapshot(account.keys)
    for expect in (sha(b"something else"), None):
        reply = agent.write(account.name, b"new\n", expect)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "changed"
        assert reply["sha256"] == sha(KEY)
    assert snapshot(account.keys) == before
    assert temps(account.ssh) == []
    ok = agent.write(account.name, b"new\n", sha(KEY).upper())
    assert ok["ok"] is True, ok
    assert account.keys.read_bytes() == b"new\n"


def test_stale_temp_files_removed(agent: Agent, account: Account, base: Path) -> None:
    account.setup_keys()
    old = time.time() - 3600

    def plant(name: str, uid: int) -> Path:
        path = account.ssh / name
        path.write_bytes(b"partial")
        os.chown(path, uid, uid)
        os.utime(path, (old, old))
        return path

    stale_user = plant(".keyward-deadbeef.tmp", account.uid)
    stale_root = plant(".keyward-0badf00d.tmp", 0)
    fresh = plant(".keyward-12345678.tmp", account.uid)
    os.utime(fresh)
    foreign = plant(".keyward-other.tmp", pwd.getpwnam("nobody").pw_uid)
    secret = root_file(base)
    link = account.ssh / ".keyward-link.tmp"
    link.symlink_to(secret)
    before = snapshot(secret)

    reply = agent.write(account.name, KEY + b"# two\n", sha(KEY))
    assert reply["ok"] is True, reply
    assert reply["removed_temps"] == 2
    assert not stale_user.exists()
    assert not stale_root.exists()
    assert fresh.exists()
    assert foreign.exists()
    assert link.is_symlink()
    assert snapshot(secret) == before
    assert sorted(temps(account.ssh)) == sorted(str(p) for p in (fresh, foreign, link))


def test_full_disk_keeps_old_content(agent: Agent, account: Account, base: Path) -> None:
    mnt = root_dir(base)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        pattern = f"{mnt}/%u"
        old = KEY * 20
        assert agent.write(account.name, old, None, pattern=pattern)["ok"] is True
        target = mnt / account.name
        before = snapshot(target)
        reply = agent.write(account.name, b"#" * (300 << 10), sha(old), pattern=pattern)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "io"
        assert "No space left" in reply["error"]["message"]
        assert snapshot(target) == before
        assert temps(mnt) == []
        assert agent.read(account.name, pattern)["sha256"] == sha(old)
    finally:
        subprocess.run(["umount", str(mnt)], timeout=30, check=True)


def test_write_reads_back_through_fresh_open(agent: Agent, account: Account) -> None:
    account.setup_keys()
    reply = agent.write(account.name, b"", sha(KEY))
    assert reply["ok"] is True, reply
    assert reply["sha256"] == sha(b"")
    assert account.keys.read_bytes() == b""
    got = agent.read(account.name)
    assert got["state"] == "present"
    assert got["content_b64"] == ""


# ------------------------------------------------------------------- security review fixes


def _in_process_write(
    account: Account, content: bytes, expect: str | None, **fields: Any
) -> dict[str, Any]:
    req = {
        "account": account.name,
        "pattern": DEFAULT,
        "content_b64": b64(content),
        "expect_sha256": expect,
        "create_dir": False,
    }
    req.update(fields)
    return remote.op_write(req)


def test_root_file_moved_into_ssh_is_not_read(agent: Agent, account: Account, base: Path) -> None:
    # The user renames a root-only file (say ~/.viminfo holding a secret) to authorized_keys.
    account.ssh.mkdir(mode=0o700)
    os.chown(account.ssh, account.uid, account.gid)
    secret = root_file(base, b"root-only secret\n")
    viminfo = account.home / ".viminfo"
    secret.rename(viminfo)
    viminfo.rename(account.keys)
    before = snapshot(account.keys)

    got = agent.read(account.name)
    assert got["state"] == "error", got
    assert got["error"]["code"] == "foreign_owner"
    assert str(account.keys) in got["error"]["message"]
    assert "uid 0" in got["error"]["message"]
    assert got["content_b64"] is None
    assert got["sha256"] is None
    assert got["uid"] == 0
    assert got["owner_ok"] is False
    assert got["replaceable"] is True

    # Not even the right hash gets it compared (let alone kept): the content is never read.
    for expect in (sha(b"root-only secret\n"), None):
        refused = agent.write(account.name, KEY, expect)
        assert refused["ok"] is False
        assert refused["error"]["code"] == "changed"
        assert refused["sha256"] is None
    assert snapshot(account.keys) == before

    reply = agent.write(account.name, KEY, "*")
    assert reply["ok"] is True, reply
    assert (reply["uid"], reply["gid"], reply["mode"]) == (account.uid, account.gid, 0o600)
    assert account.keys.read_bytes() == KEY
    assert temps(account.ssh) == []


def test_foreign_owner_in_root_owned_directory(agent: Agent, account: Account, base: Path) -> None:
    central = root_dir(base)
    pattern = f"{central}/%u"
    keys = central / account.name
    keys.write_bytes(KEY)
    os.chown(keys, account.uid, account.gid)  # the account's own: read
    got = agent.read(account.name, pattern)
    assert got["state"] == "present"
    assert got["sha256"] == sha(KEY)
    nobody = pwd.getpwnam("nobody")
    os.chown(keys, nobody.pw_uid, nobody.pw_gid)  # someone else's: not read
    got = agent.read(account.name, pattern)
    assert got["state"] == "error"
    assert got["error"]["code"] == "foreign_owner"
    assert f"uid {nobody.pw_uid}" in got["error"]["message"]
    assert got["content_b64"] is None
    assert got["replaceable"] is True
    os.chown(keys, 0, 0)  # root-owned, as a write would leave it: read
    assert agent.read(account.name, pattern)["state"] == "present"


def test_star_replaces_fifo_without_opening_it(agent: Agent, account: Account) -> None:
    account.ssh.mkdir(mode=0o700)
    os.chown(account.ssh, account.uid, account.gid)
    os.mkfifo(account.keys, 0o600)
    os.chown(account.keys, account.uid, account.gid)
    spare = account.home / "fifo-spare"
    os.link(account.keys, spare)  # the same FIFO, reachable after the entry is replaced
    opened = threading.Event()

    def writer() -> None:
        fd = os.open(spare, os.O_WRONLY)  # blocks until someone opens the FIFO for reading
        opened.set()
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        started = time.monotonic()
        got = agent.read(account.name)
        assert got["error"]["code"] == "fifo"
        assert got["replaceable"] is True
        for expect in (None, sha(KEY)):
            assert agent.write(account.name, KEY, expect)["error"]["code"] == "fifo"
        reply = agent.write(account.name, KEY, "*")
        assert reply["ok"] is True, reply
        assert time.monotonic() - started < 10
        assert not opened.is_set(), "the FIFO was opened"
        assert account.keys.read_bytes() == KEY
        assert stat.S_ISFIFO(spare.lstat().st_mode)
        assert spare.lstat().st_nlink == 1
    finally:
        release = os.open(spare, os.O_RDONLY | os.O_NONBLOCK)
        thread.join(5)
        os.close(release)
    assert opened.is_set()  # the writer really was waiting on that FIFO
    assert temps(account.ssh) == []


def test_directory_in_place_of_keys_is_not_replaceable(agent: Agent, account: Account) -> None:
    account.ssh.mkdir(mode=0o700)
    os.chown(account.ssh, account.uid, account.gid)
    account.keys.mkdir()
    got = agent.read(account.name)
    assert got["error"]["code"] == "not_regular"
    assert got["replaceable"] is False
    assert agent.write(account.name, KEY, "*")["error"]["code"] == "not_regular"
    assert account.keys.is_dir()


@pytest.mark.parametrize("decoy_kind", ["root_not_empty", "root_0755", "user_owned"])
def test_make_dir_race_is_refused(
    account: Account, monkeypatch: pytest.MonkeyPatch, decoy_kind: str
) -> None:
    decoy = account.home / "decoy"
    decoy.mkdir(mode=0o700)
    decoy.chmod(0o755 if decoy_kind == "root_0755" else 0o700)
    if decoy_kind == "root_not_empty":
        (decoy / "secret").write_bytes(b"root only\n")
    if decoy_kind == "user_owned":
        os.chown(decoy, account.uid, account.gid)
    before = snapshot(decoy)
    real_mkdir = os.mkdir

    def racing_mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        os.rename(decoy, account.ssh)  # the user: mv -T ~/decoy ~/.ssh, before our open

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    reply = _in_process_write(account, KEY, None, create_dir=True)
    monkeypatch.undo()
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "race"
    assert reply["created_dir"] is False
    after = account.ssh.lstat()
    assert (after.st_uid, after.st_mode) == (before.uid, before.mode)  # neither chowned nor chmoded
    names = sorted(os.listdir(account.ssh))
    assert names == (["secret"] if decoy_kind == "root_not_empty" else [])
    if decoy_kind == "root_not_empty":
        assert (account.ssh / "secret").stat().st_uid == 0


def test_symlink_is_never_followed_after_a_user_owned_directory(
    agent: Agent, account: Account, base: Path
) -> None:
    # A root-owned 0755 directory inside the user's home (as a FUSE mount could present one)
    # holding a symlink to a root directory: the walk has already been through the user's home.
    target = root_dir(base)
    (target / ".ssh").mkdir(mode=0o700)
    secret = target / ".ssh" / "authorized_keys"
    secret.write_bytes(b"root-owned keys\n")
    inner = account.home / "sys"
    inner.mkdir()
    os.chown(inner, 0, 0)
    inner.chmod(0o755)
    (inner / "link").symlink_to(target)
    before = snapshot(secret)
    pattern = "%h/sys/link/.ssh/authorized_keys"
    got = agent.read(account.name, pattern)
    assert got["state"] == "error", got
    assert got["error"]["code"] == "symlink"
    assert got["content_b64"] is None
    assert got["replaceable"] is False
    for expect in ("*", None):
        reply = agent.write(account.name, KEY, expect, pattern=pattern, create_dir=True)
        assert reply["error"]["code"] == "symlink", reply
    assert snapshot(secret) == before
    assert temps(target / ".ssh") == []


def test_mountinfo_parser(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "90 27 0:77 / /home/u/m rw,nosuid shared:5 master:1 - fuse.sshfs u@h:/ rw\n"
        "91 27 8:1 / /home/u/n rw - fuseblk /dev/sda1 rw\n"
        "garbage\n"
    )
    assert remote.read_mount_types(str(info)) == {22: "proc", 90: "fuse.sshfs", 91: "fuseblk"}
    assert remote.read_mount_types(str(tmp_path / "absent")) is None


@contextlib.contextmanager
def mounted(*args: str) -> Iterator[None]:
    """``mount ARGS`` (the last one is the mount point) for the block, or skip the test."""
    done = subprocess.run(["mount", *args], capture_output=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", args[-1]], timeout=30, check=True)


def tmpfs(path: Path) -> contextlib.AbstractContextManager[None]:
    return mounted("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(path))


def bind(source: Path, path: Path) -> contextlib.AbstractContextManager[None]:
    return mounted("--bind", str(source), str(path))


def _tmpfs_over_ssh(acct: Account) -> contextlib.AbstractContextManager[None]:
    acct.setup_keys()
    return tmpfs(acct.ssh)


def _same_fs_bind_over_ssh(acct: Account) -> contextlib.AbstractContextManager[None]:
    # Same file system, so the same st_dev: only the mount id tells.
    acct.setup_keys()
    other = acct.home / "elsewhere"
    other.mkdir(mode=0o700)
    os.chown(other, acct.uid, acct.gid)
    return bind(other, acct.ssh)


def _bind_file_over_keys(acct: Account) -> contextlib.AbstractContextManager[None]:
    acct.setup_keys()
    other = acct.home / "other-keys"
    other.write_bytes(b"ssh-ed25519 AAAA from-elsewhere\n")
    os.chown(other, acct.uid, acct.gid)
    return bind(other, acct.keys)


def _fuse_over_keys(acct: Account) -> contextlib.AbstractContextManager[None]:
    acct.setup_keys()
    return hung_fuse(acct.keys)


def _fuse_over_ssh(acct: Account) -> contextlib.AbstractContextManager[None]:
    acct.setup_keys()
    return hung_fuse(acct.ssh)


MOUNTS = {
    "tmpfs_over_ssh": (_tmpfs_over_ssh, "mount_point"),
    "same_fs_bind_over_ssh": (_same_fs_bind_over_ssh, "mount_point"),
    "bind_file_over_keys": (_bind_file_over_keys, "mount_point"),
    "hung_fuse_over_keys": (_fuse_over_keys, "untrusted_fs"),
    "hung_fuse_over_ssh": (_fuse_over_ssh, "untrusted_fs"),
}


@pytest.mark.parametrize("case", MOUNTS, ids=list(MOUNTS))
def test_mount_in_a_user_owned_path_is_refused(agent: Agent, account: Account, case: str) -> None:
    """A mount on the file, or anywhere below the user's home, is neither read nor written.

    A FUSE file system that never answers is refused from its mount id alone: the helper
    never waits on it.
    """
    plant, code = MOUNTS[case]
    with plant(account):
        started = time.monotonic()
        got = agent.read(account.name)
        assert got["state"] == "error", got
        assert got["error"]["code"] == code, got
        assert str(account.ssh) in got["error"]["message"]
        assert "mount point" in got["error"]["message"] or "fuse.hang" in got["error"]["message"]
        assert got["content_b64"] is None
        assert got["replaceable"] is False
        for expect in ("*", None, sha(KEY)):
            reply = agent.write(account.name, b"ssh-ed25519 AAAA attacker-wins\n", expect)
            assert reply["ok"] is False, reply
            assert reply["error"]["code"] == code, reply
        assert time.monotonic() - started < 5, "a mount must not make the helper wait"
    # Nothing was written underneath or into the mount.
    assert account.keys.read_bytes() == KEY
    assert temps(account.ssh) == []
    assert not (account.home / "elsewhere" / "authorized_keys").exists()


def test_a_home_that_is_a_mount_point_is_used(agent: Agent, account: Account) -> None:
    """Homes are often mount points (automounted NFS, a ZFS dataset each, systemd-homed),
    made in a root-owned directory: only mounts below the first user-owned directory count."""
    with tmpfs(account.home):
        os.chown(account.home, account.uid, account.gid)
        account.setup_keys()
        assert agent.read(account.name)["sha256"] == sha(KEY)
        reply = agent.write(account.name, b"new\n", sha(KEY))
        assert reply["ok"] is True, reply
        assert account.keys.read_bytes() == b"new\n"


def test_fuse_directory_is_not_entered(
    account: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FUSE mount is refused even where other mount points are accepted (a root path)."""
    mnt = root_dir(account.home.parent.parent)
    with tmpfs(mnt):
        os.chmod(mnt, 0o755)
        pattern = f"{mnt}/%u"
        assert remote.read_one(account.name, pattern)["state"] == "missing"
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            mnt_id = remote.mount_id(fd)
        finally:
            os.close(fd)
        fake = tmp_path / "mountinfo"
        fake.write_text(f"{mnt_id} 1 0:99 / {mnt} rw - fuse.sshfs u@h:/ rw,user_id=1\n")
        monkeypatch.setattr(remote, "MOUNTINFO", str(fake))
        got = remote.read_one(account.name, pattern)
        assert got["state"] == "error"
        assert got["error"]["code"] == "untrusted_fs"
        assert str(mnt) in got["error"]["message"]
        reply = _in_process_write(account, KEY, None, pattern=pattern)
        assert reply["error"]["code"] == "untrusted_fs"
        assert os.listdir(mnt) == []
        monkeypatch.setattr(remote, "FDINFO", str(tmp_path / "no-proc-%d"))  # check skipped
        assert remote.read_one(account.name, pattern)["state"] == "missing"


# ------------------------------------------------------------------- per-file deadline


@pytest.fixture
def blind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No mount ids (as without /proc, or a mount made after the check): only the deadline
    stands between the helper and a file that never answers."""
    monkeypatch.setattr(remote, "FDINFO", str(tmp_path / "no-proc-%d"))
    monkeypatch.setattr(remote, "FILE_TIMEOUT", 1.0)


def wait_until(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def raw_call(agent: Agent, **request: Any) -> dict[str, Any]:
    """A request with fields of its own choosing (``timeout`` included)."""
    reply = agent.send_raw(json.dumps({"id": "raw", **request}).encode() + b"\n")
    assert reply["id"] == "raw"
    return reply


def test_a_file_that_never_answers_times_out_alone(
    account: Account, base: Path, blind: None
) -> None:
    with new_account(base) as other:
        account.setup_keys()
        other.setup_keys(b"other\n")
        files = [
            {"account": account.name, "pattern": DEFAULT},
            {"account": other.name, "pattern": DEFAULT},
        ]
        with hung_fuse(account.keys):
            started = time.monotonic()
            got = remote.op_read({"files": files})["files"]
            assert 1 <= time.monotonic() - started < 3
            assert got[0]["state"] == "error"
            assert got[0]["error"] == {
                "code": "timeout",
                "message": f"timed out after 1 s reading {account.keys}; it was not read",
            }
            assert got[0]["path"] == str(account.keys)
            assert got[1]["state"] == "present" and got[1]["sha256"] == sha(b"other\n")
            # The stuck worker still holds the file: later requests answer at once.
            started = time.monotonic()
            again = remote.op_read({"files": files})["files"]
            assert time.monotonic() - started < 0.5
            assert again[0]["error"]["code"] == "busy", again
            assert again[1]["state"] == "present"
            written = _in_process_write(other, b"new\n", sha(b"other\n"))
            assert written["ok"] is True, written
            assert remote.stuck_workers() == 1
        wait_until(lambda: remote.stuck_workers() == 0)  # aborted: the worker returned
        assert remote.read_one(account.name, DEFAULT)["sha256"] == sha(KEY)


def test_a_write_given_up_on_never_renames(
    account: Account, monkeypatch: pytest.MonkeyPatch, blind: None
) -> None:
    account.setup_keys()
    release = threading.Event()
    real = remote.entry_unchanged

    def slow_check(*args: Any) -> None:
        real(*args)
        release.wait(30)  # a check that takes longer than the deadline

    monkeypatch.setattr(remote, "entry_unchanged", slow_check)
    reply = _in_process_write(account, b"new\n", sha(KEY))
    assert reply["ok"] is False
    assert reply["error"] == {
        "code": "timeout",
        "message": f"timed out after 1 s writing {account.keys}; it was left as it was",
    }
    release.set()
    wait_until(lambda: remote.stuck_workers() == 0)
    assert account.keys.read_bytes() == KEY
    assert temps(account.ssh) == []


def test_timeout_must_be_a_sane_number(agent: Agent) -> None:
    assert agent.call("hello")["file_timeout"] == remote.FILE_TIMEOUT
    for bad in (0, -1, "5", True, 1e9):
        reply = raw_call(agent, op="read", files=[], timeout=bad)
        assert reply["error"]["code"] == "bad_request", reply
        assert "timeout" in reply["error"]["message"]
    assert raw_call(agent, op="read", files=[], timeout=0.5)["ok"] is True


def test_helper_exits_at_eof_with_a_worker_stuck(account: Account, tmp_path: Path) -> None:
    """The thread stuck in the kernel does not keep the helper alive (or its session open)."""
    account.setup_keys()
    source = REMOTE.read_text()
    blinded = source.replace('FDINFO = "/proc/self/fdinfo/%d"', f'FDINFO = "{tmp_path}/no-%d"')
    assert blinded != source
    script = tmp_path / "helper.py"
    script.write_text(blinded)
    with hung_fuse(account.keys):
        proc = Agent([sys.executable, str(script)])
        files = [{"account": account.name, "pattern": DEFAULT}]
        reply = raw_call(proc, op="read", files=files, timeout=1)
        assert reply["files"][0]["error"]["code"] == "timeout"
        started = time.monotonic()
        assert proc.close() == 0
        assert time.monotonic() - started < 5


def test_stale_temp_sweep_is_capped_and_runs_before_compare(agent: Agent, account: Account) -> None:
    account.setup_keys()
    old = time.time() - 3600
    for i in range(remote.MAX_SWEEP_UNLINK + 5):
        path = account.ssh / f".keyward-{i:08x}.tmp"
        path.write_bytes(b"partial")
        os.chown(path, account.uid, account.gid)
        os.utime(path, (old, old))
    refused = agent.write(account.name, b"new\n", sha(b"not what is there"))
    assert refused["error"]["code"] == "changed"
    assert refused["removed_temps"] == remote.MAX_SWEEP_UNLINK
    assert len(temps(account.ssh)) == 5
    reply = agent.write(account.name, b"new\n", sha(KEY))
    assert reply["ok"] is True, reply
    assert reply["removed_temps"] == 5
    assert temps(account.ssh) == []


@pytest.mark.parametrize("existing", [True, False])
def test_change_during_write_is_detected_before_rename(
    account: Account, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    if existing:
        account.setup_keys()
    else:
        account.ssh.mkdir(mode=0o700)
        os.chown(account.ssh, account.uid, account.gid)
    real_write_all = remote._write_all

    def user_edits_meanwhile(fd: int, data: bytes) -> None:
        real_write_all(fd, data)
        with open(account.keys, "ab") as fh:  # the user edits between the check and the rename
            fh.write(b"# user edit\n")

    monkeypatch.setattr(remote, "_write_all", user_edits_meanwhile)
    reply = _in_process_write(account, b"new\n", sha(KEY) if existing else None)
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "changed"
    expected = (KEY if existing else b"") + b"# user edit\n"
    assert account.keys.read_bytes() == expected
    assert temps(account.ssh) == []
    forced = _in_process_write(account, b"new\n", "*")  # "*" replaces whatever is there
    assert forced["ok"] is True, forced
    assert account.keys.read_bytes() == b"new\n"
    assert temps(account.ssh) == []


def test_read_request_file_count_is_capped(agent: Agent) -> None:
    assert agent.call("hello")["max_read_files"] == remote.MAX_READ_FILES
    entry = {"account": "kwnosuchuser", "pattern": DEFAULT}
    too_many = agent.call("read", files=[entry] * (remote.MAX_READ_FILES + 1))
    assert too_many["ok"] is False
    assert too_many["error"]["code"] == "bad_request"
    at_cap = agent.call("read", timeout=60, files=[entry] * remote.MAX_READ_FILES)
    assert at_cap["ok"] is True
    assert len(at_cap["files"]) == remote.MAX_READ_FILES


# ------------------------------------------------------------------------------ auth log

LOGIN = "sshd[1]: Accepted publickey for deploy from 203.0.113.7 port {} ssh2: ED25519 SHA256:x"
NOISE = "sshd[1]: Connection from 203.0.113.7 port {} on 127.0.0.1 port 22"
MARKERS = ["Accepted publickey", "Disconnected from user"]


def auth_log(path: Path, position: object = None, match: object = MARKERS) -> dict[str, Any]:
    reply, _ = remote.handle_request(
        {"id": 1, "op": "auth_log", "source": str(path), "position": position, "match": match}
    )
    return reply


def test_auth_log_sends_only_matching_lines_and_advances_past_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_text("".join(f"{NOISE.format(i)}\n{LOGIN.format(i)}\n" for i in range(3)))
    first = auth_log(log)
    assert [line["text"] for line in first["lines"]] == [LOGIN.format(i) for i in range(3)]
    assert first["position"]["offset"] == log.stat().st_size
    with log.open("a") as handle:
        handle.write(NOISE.format(9) + "\n" + LOGIN.format(9) + "\npartial line")
    second = auth_log(log, first["position"])
    assert [line["text"] for line in second["lines"]] == [LOGIN.format(9)]
    assert auth_log(log, second["position"])["lines"] == []  # the partial line waits
    every = auth_log(log, None, None)  # without match: every whole line
    assert len(every["lines"]) == 8


def test_auth_log_over_the_line_limit_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote, "MAX_LOG_LINES", 4)
    log = tmp_path / "auth.log"
    log.write_text("".join(f"{LOGIN.format(i)}\n{NOISE.format(i)}\n" for i in range(10)))
    seen: list[str] = []
    position = None
    for _ in range(5):
        reply = auth_log(log, position)
        assert len(reply["lines"]) <= 4
        seen += [line["text"] for line in reply["lines"]]
        position = reply["position"]
    assert seen == [LOGIN.format(i) for i in range(10)]


def test_auth_log_finishes_the_rotated_file_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote, "MAX_LOG_LINES", 2)
    log = tmp_path / "auth.log"
    log.write_text(LOGIN.format(1) + "\n")
    position = auth_log(log)["position"]
    with log.open("a") as handle:  # written before the rotation, read after it
        handle.write("".join(LOGIN.format(i) + "\n" for i in range(2, 5)))
    log.rename(tmp_path / "auth.log.1")
    log.write_text(LOGIN.format(5) + "\n")
    ports: list[str] = []
    for _ in range(3):
        reply = auth_log(log, position)
        ports += [line["text"].split(" port ")[1].split()[0] for line in reply["lines"]]
        position = reply["position"]
    assert ports == ["2", "3", "4", "5"]


@pytest.mark.parametrize("match", ["Accepted", [], [""], [1], ["x"] * 17])
def test_auth_log_match_must_be_a_short_list_of_strings(tmp_path: Path, match: object) -> None:
    log = tmp_path / "auth.log"
    log.write_text(LOGIN.format(1) + "\n")
    reply = auth_log(log, None, match)
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"


# What journalctl filters by is the defence here, so this stand-in applies journalctl's
# documented match rules (values of one field ORed, different fields ANDed) to a fixed
# journal: no journald runs on the test machines.
FAKE_JOURNALCTL = """#!{python}
import json, sys
entries = json.load(open({journal!r}))
matches = {{}}
for arg in sys.argv[1:]:
    if "=" in arg and not arg.startswith("-"):
        field, value = arg.split("=", 1)
        matches.setdefault(field, set()).add(value)
for entry in entries:
    if all(entry.get(field) in values for field, values in matches.items()):
        if "cat" in sys.argv:
            print(entry["MESSAGE"])
        else:
            print(json.dumps(entry))
"""

JOURNAL_LOGIN = "Accepted publickey for deploy from 203.0.113.7 port {} ssh2: ED25519 SHA256:x"


def journal_entry(n: int, **fields: str) -> dict[str, str]:
    entry = {
        "_COMM": "sshd",
        "_TRANSPORT": "syslog",
        "_UID": "0",
        "MESSAGE": JOURNAL_LOGIN.format(n),
        "__CURSOR": f"s=1;i={n}",
        "__REALTIME_TIMESTAMP": str(1_700_000_000_000_000 + n),
    }
    return {**entry, **fields}


@pytest.mark.parametrize("source", ["journal", "auto"])
def test_journal_lines_come_only_from_sshd_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    journal = [
        journal_entry(1),
        journal_entry(2, _COMM="sshd-session"),
        # a local user's process named sshd, logging through syslog
        journal_entry(3, _UID="1000"),
        # sshd's stderr (`sshd -e`): a newline in a client-chosen certificate key ID
        # would start a line like this one
        journal_entry(4, _TRANSPORT="stdout"),
        journal_entry(5, _COMM="logger"),
    ]
    (tmp_path / "journal.json").write_text(json.dumps(journal))
    fake = tmp_path / "bin" / "journalctl"
    fake.parent.mkdir()
    fake.write_text(
        FAKE_JOURNALCTL.format(python=sys.executable, journal=str(tmp_path / "journal.json"))
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    reply, _ = remote.handle_request(
        {"id": 1, "op": "auth_log", "source": source, "position": None, "match": MARKERS}
    )
    assert reply["ok"] is True and reply["source"] == "journal"
    assert [line["text"] for line in reply["lines"]] == [JOURNAL_LOGIN.format(n) for n in (1, 2)]


def test_the_agent_waits_for_every_files_share_of_a_read() -> None:
    """The helper times out each file on its own; the agent must not give up on the whole
    host before those per-file answers can arrive (its budget follows the helper's)."""
    from keyward.agent import connection

    assert connection.FILE_TIMEOUT == remote.FILE_TIMEOUT
    assert connection.read_timeout(1) == connection.REQUEST_TIMEOUT
    assert connection.read_timeout(12) > 12 * remote.FILE_TIMEOUT
