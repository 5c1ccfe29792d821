"""In-memory managed hosts behind the transport interface, for fast tests of rounds.

``FakeFleet`` is a ``Connector`` and ``FakeConnection`` a ``HostTransport``
(``keyward.agent.transport``): a round, its failure handling and the daemon's per-host sync
(``sync_files``) run against them in milliseconds, with no sshd, no accounts and no root.
What only a real login proves (that sshd accepts the file keyward wrote, host keys, the
helper's walk through real directories) stays with the real-sshd tests.

A faithful model of the helper, not the helper itself: ``remote.py`` works on directory
descriptors of the real file system, so the fake re-implements its rules on a dictionary of
paths, taking from ``remote.py`` what is pure (account names, ``%h``/``%u`` expansion, the
reply templates, the error codes) and answering in the same JSON shapes, read by the same
readers as real replies.  Modelled: accounts and their home directories; files with content,
owner, mode and link count; symbolic links and FIFOs as entries that are refused (and
replaceable); the read rules (``dir_ok``, ``owner_ok``, the owners whose file is read, size
and hard-link limits); the write rules (compare-and-swap, the owner and mode a new file gets,
creating ``~/.ssh``, fixing its mode, read-back; ``write_many`` as a sequence of them);
sshd's log lines in a journal or a log file;
``sshd -T`` settings; and whether sshd would let the agent in at all (its key in the login
account's file).  Not modelled: symbolic links followed in trusted directories, mounts, stale
temporary files, log rotation, journal size limits, per-file deadlines (a file is either
answered or ``stuck``).  ``tests/test_fakehost.py`` runs the same reads and writes through
``remote.py`` on disk and through the fake, and compares the replies field by field.

Failure injection, per host: refuse connections, hang in any operation (the caller's timeout
then fires, with the message a real helper's silence gives), fail a file's writes, change a
file between a read and the write that follows, change it right after a write (the read-back
sees it), leave a file stuck (``timeout``, then ``busy``), drop open connections.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import pwd
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from keyward.agent import remote
from keyward.agent.connection import FILE_TIMEOUT, REQUEST_TIMEOUT
from keyward.agent.transport import (
    AuthLogRead,
    FileRead,
    SshdConfig,
    WriteRequest,
    WriteResult,
    auth_log_read,
    file_read,
    sshd_config_read,
    write_result,
    write_results,
)
from keyward.authorized_keys import parse_authorized_keys
from keyward.errors import HostError
from keyward.inventory.model import Host
from keyward.plan import sha256

EntryKind = Literal["file", "dir", "symlink", "fifo"]
Operation = Literal["connect", "hello", "read", "write", "write_many", "auth_log", "sshd_config"]


@functools.lru_cache(maxsize=1024)
def _digest(content: bytes) -> str:
    """``sha256(content)``, memoised: the simulated fleet (``simhost``) holds the same few
    contents on thousands of hosts in one process, and hashing each again at every write
    was the simulation's cost, not the daemon's."""
    return sha256(content)


DEFAULT_SSHD = {"loglevel": "VERBOSE", "strictmodes": "yes", "permituserenvironment": "no"}


@dataclass
class Entry:
    """One directory entry: a directory, a regular file, a symbolic link or a FIFO."""

    kind: EntryKind
    uid: int
    gid: int
    mode: int
    content: bytes = b""
    nlink: int = 1


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str

    def passwd(self) -> pwd.struct_passwd:
        """The ``pwd`` entry ``remote.expand_pattern`` expands ``%h``, ``%u``, ``%U`` from."""
        return pwd.struct_passwd((self.name, "x", self.uid, self.gid, "", self.home, "/bin/sh"))


@dataclass(frozen=True)
class Request:
    """What a connection was asked, for tests that check what travelled (and what did not)."""

    op: Operation
    files: tuple[str, ...] = ()  # "account:pattern" of each file read or written


def _parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/", "/a", "/a/b"]``: the directories a walk to ``path`` enters."""
    parts = path.split("/")[1:-1]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass
class FakeHost:
    """One managed host: its file system, accounts, sshd's log and what should go wrong."""

    name: str
    entries: dict[str, Entry] = field(default_factory=lambda: {"/": Entry("dir", 0, 0, 0o755)})
    accounts: dict[str, Account] = field(default_factory=dict)
    # Where sshd logs: the journal (MESSAGE, time) when ``journal``, else the file ``log_path``.
    journal: bool = True
    log_path: str = "/var/log/auth.log"
    journal_entries: list[tuple[str, float | None]] = field(default_factory=list)
    log_inode: int = 4242
    sshd_settings: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SSHD))
    # -- failure injection
    refuse: str | None = None  # connection attempts fail with this reason
    hang: set[Operation] = field(default_factory=set)  # these never answer
    write_errors: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> code, msg
    after_read: dict[str, bytes | None] = field(default_factory=dict)  # once: new content
    after_write: dict[str, bytes | None] = field(default_factory=dict)  # once: new content
    stuck: set[str] = field(default_factory=set)  # paths whose reads and writes never return
    claimed: set[str] = field(default_factory=set)  # stuck paths an earlier request still holds
    latency: float = 0.0  # seconds each request takes
    # -- what happened
    requests: list[Request] = field(default_factory=list)
    opened: int = 0
    connections: list[FakeConnection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.add_account("root", 0, home="/root")

    # -- building the host

    def mkdir(self, path: str, uid: int = 0, gid: int = 0, mode: int = 0o755) -> None:
        """Create ``path`` (and root-owned 0755 parents that are missing), or reset it."""
        for parent in _ancestors(path):
            self.entries.setdefault(parent, Entry("dir", 0, 0, 0o755))
        self.entries[path] = Entry("dir", uid, gid, mode)

    def add_account(
        self, name: str, uid: int, gid: int | None = None, home: str | None = None, ssh: bool = True
    ) -> Account:
        """An account with its home directory (and an empty ``~/.ssh``, 0700, unless not)."""
        gid = uid if gid is None else gid
        account = Account(name, uid, gid, home or f"/home/{name}")
        self.accounts[name] = account
        self.mkdir(account.home, uid, gid, 0o700 if uid == 0 else 0o755)
        if ssh:
            self.mkdir(f"{account.home}/.ssh", uid, gid, 0o700)
        return account

    def put(
        self,
        path: str,
        content: bytes,
        uid: int | None = None,
        gid: int | None = None,
        mode: int = 0o600,
        nlink: int = 1,
    ) -> None:
        """A regular file at ``path``; its owner defaults to its directory's."""
        parent = self.entries[_parent(path)]
        self.entries[path] = Entry(
            "file",
            parent.uid if uid is None else uid,
            parent.gid if gid is None else gid,
            mode,
            content,
            nlink,
        )

    def symlink(self, path: str, target: str) -> None:
        self.entries[path] = Entry("symlink", 0, 0, 0o777, target.encode())

    def fifo(self, path: str, uid: int | None = None, gid: int | None = None) -> None:
        """A FIFO at ``path``; its owner defaults to its directory's."""
        parent = self.entries[_parent(path)]
        self.entries[path] = Entry(
            "fifo", parent.uid if uid is None else uid, parent.gid if gid is None else gid, 0o600
        )

    def path_of(self, account: str, pattern: str = "%h/.ssh/authorized_keys") -> str:
        return remote.expand_pattern(pattern, self.accounts[account].passwd())

    def content(self, account: str, pattern: str = "%h/.ssh/authorized_keys") -> bytes | None:
        """What the file holds now, None when there is no regular file."""
        entry = self.entries.get(self.path_of(account, pattern))
        return entry.content if entry is not None and entry.kind == "file" else None

    def log(self, message: str, ts: float | None = None) -> None:
        """One line from sshd: a journal entry's MESSAGE, or a whole line of the log file."""
        if self.journal:
            self.journal_entries.append((message, ts))
            return
        entry = self.entries.get(self.log_path)
        if entry is None:
            self.mkdir(_parent(self.log_path))
            self.put(self.log_path, b"", 0, 0, 0o640)
            entry = self.entries[self.log_path]
        entry.content += message.encode() + b"\n"

    def login(
        self, account: str, fingerprint: str, at: datetime, addr: str = "127.0.0.1", port: int = 1
    ) -> None:
        """sshd's line for a public-key login (``LogLevel VERBOSE``), at time ``at``."""
        message = (
            f"Accepted publickey for {account} from {addr} port {port} ssh2: ED25519 {fingerprint}"
        )
        if self.journal:
            self.log(message, at.timestamp())
        else:
            stamp = f"{at:%b} {at.day:2d} {at:%H:%M:%S}"
            self.log(f"{stamp} {self.name} sshd[{1000 + port}]: {message}")

    def disconnect(self) -> None:
        """Drop every open connection, as a reboot or a network cut would."""
        for conn in list(self.connections):
            conn.abort()

    # -- the helper's operations, as remote.py answers them

    def _target(self, account: object, pattern: object) -> tuple[Account, str]:
        if not isinstance(account, str) or not remote.ACCOUNT_RE.fullmatch(account):
            raise remote.Refused("no_such_account", f"{account!r} is not a valid account name")
        if not isinstance(pattern, str):
            raise remote.Refused("bad_pattern", "pattern must be a string")
        if account not in self.accounts:
            raise remote.Refused(
                "no_such_account", f"account {account} does not exist on this host"
            )
        found = self.accounts[account]
        path = remote.expand_pattern(pattern, found.passwd())
        if path.startswith(found.home.rstrip("/") + "/") and found.home not in self.entries:
            raise remote.Refused(
                "home_missing", f"home directory {found.home} of {account} does not exist"
            )
        if path.rsplit("/", 1)[-1] in ("", ".", ".."):
            raise remote.Refused("not_regular", f"{path} does not name a file")
        return found, path

    def _walk(self, path: str) -> str | None:
        """The first directory on the way to ``path`` that is missing, or None."""
        for directory in _ancestors(path):
            entry = self.entries.get(directory)
            if entry is None:
                return directory
            if entry.kind != "dir":
                raise remote.Refused("not_directory", f"{directory} is not a directory")
        return None

    def _dir_ok(self, account: Account, path: str) -> bool:
        """sshd's StrictModes: every directory from the file's up to home (or /) is safe."""
        for directory in reversed(_ancestors(path)):
            entry = self.entries[directory]
            if entry.uid not in (0, account.uid) or entry.mode & 0o022:
                return False
            if directory == account.home:
                break
        return True

    def _inspect(self, account: Account, path: str) -> tuple[Entry | None, remote.Refused | None]:
        """The entry at ``path`` and why its content may not be read (None: it may)."""
        entry = self.entries.get(path)
        if entry is None:
            return None, None
        if entry.kind == "symlink":
            return None, remote.Refused(
                "symlink", f"{path} is a symbolic link; refusing to follow it", True
            )
        if entry.kind == "fifo":
            return entry, remote.Refused("fifo", f"{path} is a FIFO, not a regular file", True)
        if entry.kind == "dir":
            return entry, remote.Refused(
                "not_regular", f"{path} is a directory, not a regular file"
            )
        if entry.nlink > 1:
            message = f"{path} has {entry.nlink} hard links; its content is not read"
            return entry, remote.Refused("hardlink", message, True)
        if len(entry.content) > remote.MAX_FILE_SIZE:
            size = len(entry.content)
            message = f"{path} is {size} bytes, more than the {remote.MAX_FILE_SIZE} allowed"
            return entry, remote.Refused("too_large", message, True)
        owners = (account.uid, 0) if self.entries[_parent(path)].uid == 0 else (account.uid,)
        if entry.uid not in owners:
            allowed = " or ".join(str(uid) for uid in owners)
            return entry, remote.Refused(
                "foreign_owner",
                f"{path} is owned by uid {entry.uid}, not by the account or the owner a write "
                f"would give it (uid {allowed}); its content is not read",
                True,
            )
        return entry, None

    def _owner_for(self, account: Account, path: str) -> tuple[int, int, int]:
        """Owner and mode of a new file, from who owns its directory."""
        parent = self.entries[_parent(path)]
        if parent.uid == account.uid:
            return account.uid, account.gid, 0o600
        if parent.uid == 0:
            return 0, 0, 0o644
        raise remote.Refused(
            "bad_owner",
            f"directory {_parent(path)} is owned by uid {parent.uid}, "
            f"neither root nor {account.name}",
        )

    def _owner_ok(self, account: Account, path: str, entry: Entry | None) -> bool:
        if entry is None:
            return True
        parent = self.entries[_parent(path)]
        if parent.uid not in (0, account.uid):
            return False
        wanted = self._owner_for(account, path)
        return (entry.uid, entry.gid, entry.mode) == wanted

    def _stuck(self, path: str, reading: bool) -> remote.Refused:
        """A file whose worker never returns: ``timeout`` once, then ``busy`` (remote.py)."""
        if path in self.claimed:
            return remote.Refused(
                "busy",
                f"{path} is still held by an earlier request that timed out on it; "
                "left alone until that one returns",
            )
        self.claimed.add(path)
        if reading:
            what = f"reading {path}; it was not read"
        else:
            what = f"writing {path}; it was left as it was"
        return remote.Refused("timeout", f"timed out after {FILE_TIMEOUT:g} s {what}")

    def read_one(self, account: object, pattern: object) -> dict[str, Any]:
        result = remote._read_result(account)
        try:
            found, path = self._target(account, pattern)
            result["path"] = path
            if path in self.stuck:
                raise self._stuck(path, reading=True)
            if self._walk(path) is not None:
                result["state"] = "missing"
                return result
            result["dir_ok"] = self._dir_ok(found, path)
            entry, problem = self._inspect(found, path)
        except remote.Refused as exc:
            result["error"] = exc.as_json()
            return result
        if entry is not None:
            result.update(uid=entry.uid, gid=entry.gid, mode=entry.mode, nlink=entry.nlink)
        result["owner_ok"] = self._owner_ok(found, path, entry)
        if problem is not None:
            result["error"] = problem.as_json()
            result["replaceable"] = problem.replaceable
        elif entry is None:
            result["state"] = "missing"
        else:
            result["state"] = "present"
            result["content_b64"] = base64.b64encode(entry.content).decode("ascii")
            result["sha256"] = _digest(entry.content)
        return result

    def write_one(
        self, account: object, pattern: object, content: bytes, expect: str | None
    ) -> dict[str, Any]:
        reply = remote._write_reply()
        try:
            found, path = self._target(account, pattern)
            reply["path"] = path
            if path in self.stuck:
                raise self._stuck(path, reading=False)
            if len(content) > remote.MAX_FILE_SIZE:
                message = f"new content for {path} exceeds {remote.MAX_FILE_SIZE} bytes"
                raise remote.Refused("too_large", message)
            self._write(found, path, content, expect, reply)
        except remote.Refused as exc:
            reply["error"] = exc.as_json()
            return reply
        reply["ok"] = True
        return reply

    def write_many(self, files: Sequence[WriteRequest]) -> dict[str, Any]:
        """remote.py's ``write_many``: each file written as ``write`` would, in order."""
        replies = [self.write_one(*f) for f in files]
        return {"ok": True, "files": replies}

    def _check_expected(
        self, path: str, entry: Entry | None, problem: remote.Refused | None, expect: str | None
    ) -> None:
        if expect == "*":
            return
        if problem is not None:
            raise remote.Refused(
                "changed",
                f"{problem.message}; its content was not compared (expect_sha256 '*' replaces it)",
            )
        found = None if entry is None else _digest(entry.content)
        if found != expect:
            raise remote.Refused(
                "changed",
                f"{path} changed since it was read: expected {expect or 'no file'}, "
                f"found {found or 'no file'}",
            )

    def _write(
        self, account: Account, path: str, content: bytes, expect: str | None, reply: dict[str, Any]
    ) -> None:
        missing = self._walk(path)
        if missing is not None:
            if missing != _parent(path) or _parent(missing) != account.home:
                raise remote.Refused(
                    "not_directory",
                    f"directory {missing} does not exist (only a directory in home is made)",
                )
            if self.entries[account.home].uid != account.uid:
                raise remote.Refused(
                    "not_directory",
                    f"directory {missing} does not exist (only a directory in home is made)",
                )
            self._check_expected(path, None, None, expect)
            self.entries[missing] = Entry("dir", account.uid, account.gid, 0o700)
            reply["created_dir"] = True
        owner = self._owner_for(account, path)
        entry, problem = self._inspect(account, path)
        if entry is not None:
            reply["sha256"] = None if problem is not None else _digest(entry.content)
        if problem is not None and (
            not problem.replaceable or (expect != "*" and problem.code not in remote.UNREAD)
        ):
            raise problem
        self._check_expected(path, entry, problem, expect)
        parent = self.entries[_parent(path)]
        if (
            parent.uid == account.uid
            and _parent(_parent(path)) == account.home
            and parent.mode & 0o022
        ):
            parent.mode = 0o700
            reply["fixed_dir_mode"] = True
        if path in self.write_errors:
            code, message = self.write_errors[path]
            raise remote.Refused(code, message)
        uid, gid, mode = owner
        self.entries[path] = Entry("file", uid, gid, mode, content)
        if path in self.after_write:
            self.edit(path, self.after_write.pop(path))
        after, problem = self._inspect(account, path)
        if after is not None:
            reply.update(uid=after.uid, gid=after.gid, mode=after.mode)
        reply["dir_ok"] = self._dir_ok(account, path)
        if problem is not None:
            raise problem
        if after is None:
            raise remote.Refused("changed", f"{path} vanished right after it was written")
        reply["sha256"] = _digest(after.content)
        if after.content != content:
            raise remote.Refused(
                "changed", f"{path} was changed by someone else right after the write"
            )

    def edit(self, path: str, content: bytes | None) -> None:
        """Someone else edits (or, with None, removes) the file."""
        if content is None:
            self.entries.pop(path, None)
        elif path in self.entries:
            self.entries[path].content = content
        else:
            self.put(path, content)

    def auth_log(
        self,
        source: str,
        cursor: str | None,
        position: Mapping[str, Any] | None,
        match: Sequence[str],
    ) -> dict[str, Any]:
        wanted = tuple(match)
        if source == "journal" or (source == "auto" and self.journal):
            return self._read_journal(cursor, wanted)
        if source == "auto":
            if self.log_path in self.entries:
                return self._read_file(self.log_path, position, wanted)
            message = "no journal with sshd entries and no auth log file"
            return {"ok": False, "error": {"code": "missing", "message": message}}
        if not source.startswith("/"):
            message = "source must be auto, journal or an absolute path"
            return {"ok": False, "error": {"code": "bad_request", "message": message}}
        return self._read_file(source, position, wanted)

    def _read_journal(self, cursor: str | None, match: tuple[str, ...]) -> dict[str, Any]:
        start = int(cursor.rpartition("=")[2]) + 1 if cursor else 0
        lines = [
            {"ts": ts, "text": text, "pos": f"s=fake;i={index}"}
            for index, (text, ts) in enumerate(self.journal_entries)
            if index >= start and any(m in text for m in match)
        ]
        last = len(self.journal_entries) - 1
        new_cursor = f"s=fake;i={last}" if last >= 0 else cursor
        return {"ok": True, "source": "journal", "lines": lines, "cursor": new_cursor}

    def _read_file(
        self, path: str, position: Mapping[str, Any] | None, match: tuple[str, ...]
    ) -> dict[str, Any]:
        entry = self.entries.get(path)
        if entry is None:
            message = f"auth log {path} does not exist"
            return {"ok": False, "error": {"code": "missing", "message": message}}
        saved = position or {}
        offset = saved.get("offset")
        start = offset if isinstance(offset, int) and 0 <= offset <= len(entry.content) else 0
        end = entry.content.rfind(b"\n") + 1
        lines, pos = [], start
        for raw in entry.content[start:end].split(b"\n")[:-1] if end > start else []:
            text = raw.decode("utf-8", "replace")
            if any(m in text for m in match):
                lines.append({"ts": None, "text": text, "pos": f"{self.log_inode}:{pos}"})
            pos += len(raw) + 1
        return {
            "ok": True,
            "source": "file",
            "path": path,
            "lines": lines,
            "position": {"inode": self.log_inode, "offset": max(pos, start)},
        }

    def sshd_config(self) -> dict[str, Any]:
        return {"ok": True, "sshd": "/usr/sbin/sshd", "settings": dict(self.sshd_settings)}

    def lets_in(self, host: Host, fingerprint: str) -> bool:
        """Whether sshd would accept the agent's key for the login account (first file)."""
        try:
            _, path = self._target(host.login, host.authorized_keys[0])
            entry, problem = self._inspect(self.accounts[host.login], path)
        except remote.Refused:
            return False
        if entry is None or problem is not None:
            return False
        return any(
            line.key is not None and line.key.fingerprint == fingerprint
            for line in parse_authorized_keys(entry.content)
        )


class FakeConnection:
    """One open connection to a ``FakeHost``: the ``HostTransport`` tests use."""

    def __init__(self, host: Host, fake: FakeHost, request_timeout: float) -> None:
        self.host = host
        self.fake = fake
        self._timeout = request_timeout
        self._closed = asyncio.Event()
        self._lock = asyncio.Lock()  # one request at a time, like the helper's pipe

    async def _answer(
        self, op: Operation, timeout: float, paths: Iterable[str], work: Callable[[], Any]
    ) -> Any:
        async with self._lock:
            if self._closed.is_set():
                raise HostError(
                    f"{self.host.name}: the remote helper exited (is python3 installed?)"
                )
            self.fake.requests.append(Request(op, tuple(paths)))
            if op in self.fake.hang:
                try:
                    await asyncio.wait_for(self._closed.wait(), timeout)
                except TimeoutError:
                    raise HostError(
                        f"{self.host.name}: no answer to {op} within {timeout:.0f}s"
                    ) from None
                raise HostError(
                    f"{self.host.name}: the remote helper exited (is python3 installed?)"
                )
            await asyncio.sleep(self.fake.latency)
            return work()

    async def hello(self, timeout: float) -> None:
        await self._answer("hello", timeout, (), lambda: None)

    async def read(self, files: Sequence[tuple[str, str]]) -> list[FileRead]:
        def work() -> list[FileRead]:
            if len(files) > remote.MAX_READ_FILES:
                message = (
                    f"at most {remote.MAX_READ_FILES} files per read request, got {len(files)}"
                )
                raise HostError(f"{self.host.name}: read failed: {message}")
            replies = [self.fake.read_one(account, pattern) for account, pattern in files]
            for reply in replies:
                path = reply.get("path")
                if path in self.fake.after_read:
                    self.fake.edit(path, self.fake.after_read.pop(path))
            return [file_read(reply) for reply in replies]

        result: list[FileRead] = await self._answer(
            "read", self._timeout, (f"{a}:{p}" for a, p in files), work
        )
        return result

    async def write(
        self, account: str, pattern: str, content: bytes, expect_sha256: str | None
    ) -> WriteResult:
        result: WriteResult = await self._answer(
            "write",
            self._timeout,
            (f"{account}:{pattern}",),
            lambda: write_result(self.fake.write_one(account, pattern, content, expect_sha256)),
        )
        return result

    async def write_many(self, files: Sequence[WriteRequest]) -> list[WriteResult]:
        if not files:
            return []

        def work() -> list[WriteResult]:
            if len(files) > remote.MAX_WRITE_FILES:  # the SSH transport splits such a batch
                raise HostError(f"{self.host.name}: more than {remote.MAX_WRITE_FILES} files")
            return write_results(self.fake.write_many(files), len(files))

        result: list[WriteResult] = await self._answer(
            "write_many", self._timeout, (f"{f.account}:{f.pattern}" for f in files), work
        )
        return result

    async def auth_log(
        self,
        source: str,
        *,
        cursor: str | None,
        position: Mapping[str, Any] | None,
        match: Sequence[str],
    ) -> AuthLogRead:
        result: AuthLogRead = await self._answer(
            "auth_log",
            self._timeout,
            (),
            lambda: auth_log_read(self.fake.auth_log(source, cursor, position, match)),
        )
        return result

    async def sshd_config(self, user: str, config: str | None) -> SshdConfig:
        result: SshdConfig = await self._answer(
            "sshd_config", self._timeout, (), lambda: sshd_config_read(self.fake.sshd_config())
        )
        return result

    def abort(self) -> None:
        self._closed.set()
        if self in self.fake.connections:
            self.fake.connections.remove(self)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self.abort()


@dataclass
class FakeFleet:
    """The ``Connector`` for fake hosts: ``open`` finds the host by its inventory name.

    With ``agent_fingerprint``, a host lets the agent in only while its login account's
    first authorized_keys file holds that key, as sshd would: a round that locked the agent
    out is seen by the next one.  ``connect_timeout`` and ``request_timeout`` play the parts
    of the inventory's connect timeout and the helper's request timeout (one for every
    request, reads included); tests that make a host hang set them small.
    """

    hosts: dict[str, FakeHost] = field(default_factory=dict)
    agent_fingerprint: str | None = None
    connect_timeout: float = 10.0
    request_timeout: float = REQUEST_TIMEOUT
    most_open: int = 0  # the most connections open at once, over the whole fleet

    def add(self, name: str) -> FakeHost:
        fake = FakeHost(name)
        self.hosts[name] = fake
        return fake

    def __getitem__(self, name: str) -> FakeHost:
        return self.hosts[name]

    async def open(self, host: Host, *, keepalive: float = 0) -> FakeConnection:
        where = f"{host.address}:{host.port}"
        fake = self.hosts.get(host.name)
        if fake is None:
            raise HostError(f"{host.name}: cannot connect to {where}: no such fake host")
        if fake.refuse is not None:
            raise HostError(f"{host.name}: cannot connect to {where}: {fake.refuse}")
        if "connect" in fake.hang:
            await asyncio.sleep(self.connect_timeout * 2)
            raise HostError(f"{host.name}: cannot connect to {where}: TimeoutError")
        if self.agent_fingerprint is not None and not fake.lets_in(host, self.agent_fingerprint):
            raise HostError(
                f"{host.name}: the agent's key was refused for {host.login}@{host.address}"
            )
        conn = FakeConnection(host, fake, self.request_timeout)
        await conn.hello(self.connect_timeout * 3)
        fake.opened += 1
        fake.connections.append(conn)
        self.most_open = max(self.most_open, sum(len(h.connections) for h in self.hosts.values()))
        return conn
