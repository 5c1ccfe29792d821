"""The program keyward runs on each managed host to read and rewrite authorized_keys files.

Self-contained on purpose: standard library only, Python 3.8+, no side effects at import. The
agent sends its source over SSH (see ``bootstrap.py``) and speaks JSON lines with it: one
request object per line on stdin, one reply object per line on stdout, until EOF or
``{"op": "bye"}``.

Every reply carries ``id`` (the request's) and ``ok``. Operations:

``hello``
    ``protocol``, ``python``, ``hostname``, ``euid``, ``max_file_size``.
``read``
    ``files: [{account, pattern}, ...]`` -> ``files: [...]`` in the same order, each with
    ``account, path, state (present|missing|error), content_b64, sha256, uid, gid, mode,
    nlink, dir_ok, error``.
``write``
    ``account, pattern, content_b64, expect_sha256 (hex | null = expect missing | "*"),
    create_dir`` -> ``ok, path, sha256, uid, gid, mode, dir_ok, fixed_dir_mode, created_dir,
    removed_temps, error``. Compare-and-swap: refused with code ``changed`` when the file is
    not what the caller last saw.
``sshd_config``
    ``sshd -T`` as ``settings: {lowercased key: value}`` (repeated keys joined by newlines);
    optional ``user`` evaluates Match blocks for that user (``-C``).

Every path is walked from ``/`` one component at a time through directory file descriptors
opened with ``O_NOFOLLOW``. A symbolic link is followed only when it sits in a directory owned
by root and not writable by group or others; anywhere else it is refused. The file itself is
never followed, never read when it has more than one link, is not a regular file or is larger
than ``MAX_FILE_SIZE``, and never written in place: the new content goes to a fresh temporary
file in the same directory, gets its owner and mode through its descriptor, and is renamed over
the old entry.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import platform
import posixpath
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from typing import Any, BinaryIO

PROTOCOL = 1
MAX_FILE_SIZE = 1 << 20
MAX_LINE = 4 << 20
MAX_SYMLINK_HOPS = 40
MAX_PATH = 4096
STALE_TEMP_AGE = 60.0
SSHD_TIMEOUT = 30.0

ACCOUNT_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
TEMP_RE = re.compile(r"\.keyward-[^/]*\.tmp")
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY

# A hard link or an oversized file is not read, but a write may replace its directory entry.
REPLACEABLE = ("hardlink", "too_large")


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Refused(Exception):
    """A per-file failure with a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = _one_line(message)

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadRequest(Exception):
    """The request itself is malformed."""


class Missing(Exception):
    """A directory on the way does not exist; the walker stops at its parent."""

    def __init__(self, path: str, last: bool) -> None:
        super().__init__(path)
        self.path = path
        self.last = last


def _os_refusal(exc: OSError, what: str) -> Refused:
    code = "permission" if exc.errno in (errno.EACCES, errno.EPERM) else "io"
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return Refused(code, f"{what}: {reason}")


def _join(parent: str, name: str) -> str:
    return parent + name if parent.endswith("/") else parent + "/" + name


def _ident(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _trusted_dir(st: os.stat_result) -> bool:
    """Only root can change the entries of this directory."""
    return st.st_uid == 0 and not st.st_mode & 0o022


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Dir:
    __slots__ = ("fd", "path", "st")

    def __init__(self, fd: int, path: str, st: os.stat_result) -> None:
        self.fd = fd
        self.path = path
        self.st = st


class Walker:
    """A stack of open directory descriptors from ``/`` down to the current directory."""

    def __init__(self) -> None:
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.stack = [_Dir(fd, "/", os.fstat(fd))]

    def __enter__(self) -> Walker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        while self.stack:
            os.close(self.stack.pop().fd)

    @property
    def top(self) -> _Dir:
        return self.stack[-1]

    def _pop(self) -> None:
        os.close(self.stack.pop().fd)

    def _reset(self) -> None:
        while len(self.stack) > 1:
            self._pop()

    def _push(self, fd: int, path: str) -> None:
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        self.stack.append(_Dir(fd, path, st))

    def walk(self, components: list[str]) -> None:
        """Descend through directory ``components``, following only trusted symlinks."""
        queue = list(reversed(components))
        hops = 0
        while queue:
            name = queue.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(self.stack) > 1:
                    self._pop()
                continue
            parent = self.top
            path = _join(parent.path, name)
            try:
                fd = os.open(name, O_DIR, dir_fd=parent.fd)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise Missing(path, last=not queue) from None
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise _os_refusal(exc, f"cannot open directory {path}") from None
                target = self._symlink_target(parent, name, path)
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise Refused("symlink", f"too many symbolic links resolving {path}") from None
                if target.startswith("/"):
                    self._reset()
                queue.extend(reversed(target.split("/")))
                continue
            self._push(fd, path)

    def _symlink_target(self, parent: _Dir, name: str, path: str) -> str:
        """The target of the symlink ``name`` if it may be followed; else refuse."""
        try:
            lst = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            raise Missing(path, last=False) from None
        except OSError as exc:
            raise _os_refusal(exc, f"cannot inspect {path}") from None
        if not stat.S_ISLNK(lst.st_mode):
            raise Refused("not_directory", f"{path} is not a directory")
        if not _trusted_dir(parent.st):
            raise Refused(
                "symlink",
                f"{path} is a symbolic link in {parent.path}, which is not a root-owned directory "
                "closed to group and others; refusing to follow it",
            )
        try:
            target = os.readlink(name, dir_fd=parent.fd)
        except OSError as exc:
            raise _os_refusal(exc, f"cannot read symbolic link {path}") from None
        if not target or "\0" in target:
            raise Refused("symlink", f"{path} is an empty or invalid symbolic link")
        return target

    def make_dir(self, name: str, uid: int, gid: int) -> None:
        """Create ``name`` (mode 0700, owned by uid:gid) in the current directory; enter it."""
        parent = self.top
        path = _join(parent.path, name)
        try:
            os.mkdir(name, 0o700, dir_fd=parent.fd)
        except FileExistsError:
            pass  # raced with someone: whatever is there now is checked by the open below
        except OSError as exc:
            raise _os_refusal(exc, f"cannot create directory {path}") from None
        try:
            fd = os.open(name, O_DIR, dir_fd=parent.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise Refused("symlink", f"{path} was replaced while being created") from None
            raise _os_refusal(exc, f"cannot open directory {path}") from None
        self._push(fd, path)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
            self.top.st = os.fstat(fd)
            os.fsync(parent.fd)
        except OSError as exc:
            raise _os_refusal(exc, f"cannot set up directory {path}") from None


class Current:
    """What the final path component is now: missing, unusable (``problem``) or content."""

    __slots__ = ("data", "problem", "st")

    def __init__(
        self,
        st: os.stat_result | None = None,
        data: bytes | None = None,
        problem: Refused | None = None,
    ) -> None:
        self.st = st
        self.data = data
        self.problem = problem

    @property
    def missing(self) -> bool:
        return self.st is None and self.problem is None


def _classify(st: os.stat_result, path: str) -> Refused | None:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return Refused("symlink", f"{path} is a symbolic link; refusing to follow it")
    if stat.S_ISFIFO(mode):
        return Refused("fifo", f"{path} is a FIFO, not a regular file")
    if not stat.S_ISREG(mode):
        return Refused("not_regular", f"{path} is not a regular file")
    if st.st_nlink > 1:
        return Refused("hardlink", f"{path} has {st.st_nlink} hard links; its content is not read")
    if st.st_size > MAX_FILE_SIZE:
        return Refused(
            "too_large",
            f"{path} is {st.st_size} bytes, more than the {MAX_FILE_SIZE} allowed",
        )
    return None


def _read_bounded(fd: int, limit: int) -> bytes:
    chunks = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def inspect_file(parent: _Dir, name: str, path: str) -> Current:
    """Look at ``name`` in ``parent`` without following it; read it only if it is safe."""
    try:
        lst = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        return Current()
    except OSError as exc:
        raise _os_refusal(exc, f"cannot inspect {path}") from None
    problem = _classify(lst, path)
    if problem is not None:
        return Current(None if problem.code == "symlink" else lst, None, problem)
    try:
        fd = os.open(name, O_READ, dir_fd=parent.fd)
    except FileNotFoundError:
        return Current()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Current(None, None, _classify_link(path))
        if exc.errno == errno.ENXIO:
            return Current(None, None, Refused("not_regular", f"{path} is a socket"))
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return Current(lst, None, Refused("io", f"{path} is locked by a lease"))
        raise _os_refusal(exc, f"cannot open {path}") from None
    try:
        st = os.fstat(fd)
        problem = _classify(st, path)
        if problem is not None:
            return Current(st, None, problem)
        data = _read_bounded(fd, MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise _os_refusal(exc, f"cannot read {path}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:
        return Current(st, None, Refused("too_large", f"{path} grew past {MAX_FILE_SIZE} bytes"))
    return Current(st, data, None)


def _classify_link(path: str) -> Refused:
    return Refused("symlink", f"{path} is a symbolic link; refusing to follow it")


class Target:
    """An account and its expanded authorized_keys path."""

    def __init__(self, account: object, pattern: object) -> None:
        if not isinstance(account, str) or not ACCOUNT_RE.fullmatch(account):
            raise Refused("no_such_account", f"{account!r} is not a valid account name")
        if not isinstance(pattern, str):
            raise Refused("bad_pattern", "pattern must be a string")
        try:
            self.pw = pwd.getpwnam(account)
        except KeyError:
            raise Refused(
                "no_such_account", f"account {account} does not exist on this host"
            ) from None
        self.account = account
        self.home = self.pw.pw_dir
        self.path = expand_pattern(pattern, self.pw)
        parts = self.path.split("/")
        self.name = parts[-1]
        self.dir_components = parts[:-1]
        norm_path = posixpath.normpath(self.path)
        norm_home = posixpath.normpath(self.home) if self.home.startswith("/") else ""
        self.under_home = bool(norm_home) and (
            norm_home == "/" or norm_path.startswith(norm_home.rstrip("/") + "/")
        )
        self.home_ident: tuple[int, int] | None = None
        self.home_uid: int | None = None

    @property
    def uid(self) -> int:
        return self.pw.pw_uid

    @property
    def gid(self) -> int:
        return self.pw.pw_gid

    def check_home(self) -> None:
        """Resolve the home directory (when the file lies under it) to its inode."""
        if not self.under_home:
            return
        with Walker() as walker:
            try:
                walker.walk(self.home.split("/"))
            except Missing:
                raise Refused(
                    "home_missing",
                    f"home directory {self.home} of {self.account} does not exist",
                ) from None
            self.home_ident = _ident(walker.top.st)
            self.home_uid = walker.top.st.st_uid

    def open_parent(self, walker: Walker) -> None:
        if self.name in ("", ".", ".."):
            raise Refused("not_regular", f"{self.path} does not name a file")
        walker.walk(self.dir_components)

    def dir_ok(self, walker: Walker) -> bool:
        """What sshd StrictModes checks: every directory up to home (or /) is safe."""
        for d in reversed(walker.stack):
            if d.st.st_uid not in (0, self.uid) or d.st.st_mode & 0o022:
                return False
            if self.home_ident is not None and _ident(d.st) == self.home_ident:
                break
        return True


def expand_pattern(pattern: str, pw: pwd.struct_passwd) -> str:
    """Expand like sshd's AuthorizedKeysFile: %h, %u, %U, %%; relative to the home dir."""
    if not pattern or "\0" in pattern:
        raise Refused("bad_pattern", "empty pattern or NUL byte in pattern")
    out = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        spec = pattern[i + 1 : i + 2]
        if spec == "%":
            out.append("%")
        elif spec == "h":
            out.append(pw.pw_dir)
        elif spec == "u":
            out.append(pw.pw_name)
        elif spec == "U":
            out.append(str(pw.pw_uid))
        else:
            raise Refused("bad_pattern", f"unknown token %{spec} in pattern {pattern!r}")
        i += 2
    path = "".join(out)
    if not path.startswith("/"):
        if not pw.pw_dir.startswith("/"):
            raise Refused("home_missing", f"home directory of {pw.pw_name} is not an absolute path")
        path = f"{pw.pw_dir}/{path}"
    if len(path) > MAX_PATH or "\0" in path:
        raise Refused("bad_pattern", "expanded path is too long or contains NUL")
    return path


def _stat_fields(st: os.stat_result | None) -> dict[str, int | None]:
    if st is None:
        return {"uid": None, "gid": None, "mode": None, "nlink": None}
    return {
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mode": stat.S_IMODE(st.st_mode),
        "nlink": st.st_nlink,
    }


# ---------------------------------------------------------------------------------- read


def read_one(account: object, pattern: object) -> dict[str, Any]:
    result: dict[str, Any] = {
        "account": account,
        "path": None,
        "state": "error",
        "content_b64": None,
        "sha256": None,
        "uid": None,
        "gid": None,
        "mode": None,
        "nlink": None,
        "dir_ok": False,
        "owner_ok": True,
        "error": None,
    }
    try:
        target = Target(account, pattern)
        result["path"] = target.path
        target.check_home()
        with Walker() as walker:
            try:
                target.open_parent(walker)
            except Missing:
                result["state"] = "missing"
                return result
            result["dir_ok"] = target.dir_ok(walker)
            walker_parent_st = walker.top.st
            current = inspect_file(walker.top, target.name, target.path)
    except Refused as exc:
        result["error"] = exc.as_json()
        return result
    except OSError as exc:
        result["error"] = _os_refusal(exc, f"reading {result['path']}").as_json()
        return result
    result.update(_stat_fields(current.st))
    result["owner_ok"] = _owner_matches(target, walker_parent_st, current.st)
    if current.problem is not None:
        result["error"] = current.problem.as_json()
    elif current.data is None:
        result["state"] = "missing"
    else:
        result["state"] = "present"
        result["content_b64"] = base64.b64encode(current.data).decode("ascii")
        result["sha256"] = _sha256(current.data)
    return result


def _owner_matches(target: Target, parent_st: os.stat_result, st: os.stat_result | None) -> bool:
    """Whether the file already has the owner and mode a write would give it."""
    if st is None:
        return True
    if parent_st.st_uid == target.uid:
        wanted = (target.uid, target.gid, 0o600)
    elif parent_st.st_uid == 0:
        wanted = (0, 0, 0o644)
    else:
        return False
    return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == wanted


def op_read(req: dict[str, Any]) -> dict[str, Any]:
    files = req.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise BadRequest("files must be a list of {account, pattern} objects")
    return {"ok": True, "files": [read_one(f.get("account"), f.get("pattern")) for f in files]}


# --------------------------------------------------------------------------------- write


def _write_args(req: dict[str, Any]) -> tuple[bytes, str | None, bool]:
    content_b64 = req.get("content_b64")
    if not isinstance(content_b64, str):
        raise BadRequest("content_b64 must be a string")
    try:
        content = base64.b64decode(content_b64.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise BadRequest("content_b64 is not valid base64") from None
    expect = req.get("expect_sha256")
    if expect is not None:
        if not isinstance(expect, str):
            raise BadRequest("expect_sha256 must be a hex string, '*' or null")
        expect = expect.lower()
        if expect != "*" and not SHA256_RE.fullmatch(expect):
            raise BadRequest("expect_sha256 must be a hex string, '*' or null")
    create_dir = req.get("create_dir", False)
    if not isinstance(create_dir, bool):
        raise BadRequest("create_dir must be a boolean")
    return content, expect, create_dir


def _owner_for(target: Target, parent: _Dir) -> tuple[int, int, int]:
    """Owner and mode of the new file, from who owns the directory it lives in."""
    if parent.st.st_uid == target.uid:
        return target.uid, target.gid, 0o600
    if parent.st.st_uid == 0:
        return 0, 0, 0o644
    raise Refused(
        "bad_owner",
        f"directory {parent.path} is owned by uid {parent.st.st_uid}, "
        f"neither root nor {target.account}",
    )


def _check_expected(target: Target, current: Current, expect: str | None) -> None:
    if expect == "*":
        return
    if current.problem is not None:
        raise Refused(
            "changed",
            f"{current.problem.message}; its content was not compared "
            "(expect_sha256 '*' replaces it)",
        )
    found = None if current.data is None else _sha256(current.data)
    if found != expect:
        raise Refused(
            "changed",
            "{} changed since it was read: expected {}, found {}".format(
                target.path, expect or "no file", found or "no file"
            ),
        )


def remove_stale_temps(parent: _Dir, uid: int) -> int:
    """Remove ``.keyward-*.tmp`` files left by a crashed run (regular, ours or the user's)."""
    removed = 0
    try:
        names = os.listdir(parent.fd)
    except OSError as exc:
        raise _os_refusal(exc, f"cannot list {parent.path}") from None
    now = time.time()
    for name in names:
        if not TEMP_RE.fullmatch(name):
            continue
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            if (
                stat.S_ISREG(st.st_mode)
                and st.st_uid in (0, uid)
                and now - st.st_mtime > STALE_TEMP_AGE
            ):
                os.unlink(name, dir_fd=parent.fd)
                removed += 1
        except OSError:
            continue
    return removed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def replace_file(
    parent: _Dir, name: str, path: str, data: bytes, owner: tuple[int, int, int]
) -> None:
    """Write ``data`` to a fresh temp file and rename it over ``name``; all via ``parent.fd``."""
    for _ in range(32):
        tmp = f".keyward-{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, O_TEMP, 0o600, dir_fd=parent.fd)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _os_refusal(exc, f"cannot create a temporary file in {parent.path}") from None
        break
    else:
        raise Refused("io", f"cannot create a temporary file in {parent.path}")
    uid, gid, mode = owner
    step = "writing"
    try:
        _write_all(fd, data)
        step = "syncing"
        os.fsync(fd)
        step = "setting owner and mode of"
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        step = "closing"
        closing, fd = fd, -1
        os.close(closing)
        step = "renaming over"
        os.rename(tmp, name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
    except BaseException as exc:
        # The old file is untouched until the rename; only the temp file needs undoing.
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=parent.fd)
        if isinstance(exc, OSError):
            raise _os_refusal(exc, f"{step} a new {path}") from None
        raise
    try:
        os.fsync(parent.fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS, errno.ENOTSUP):
            raise _os_refusal(exc, f"syncing directory {parent.path}") from None


def op_write(req: dict[str, Any]) -> dict[str, Any]:
    content, expect, create_dir = _write_args(req)
    reply: dict[str, Any] = {
        "ok": False,
        "path": None,
        "sha256": None,
        "uid": None,
        "gid": None,
        "mode": None,
        "dir_ok": False,
        "fixed_dir_mode": False,
        "created_dir": False,
        "removed_temps": 0,
        "error": None,
    }
    try:
        target = Target(req.get("account"), req.get("pattern"))
        reply["path"] = target.path
        if len(content) > MAX_FILE_SIZE:
            raise Refused(
                "too_large", f"new content for {target.path} exceeds {MAX_FILE_SIZE} bytes"
            )
        target.check_home()
        with Walker() as walker:
            _write_in(target, walker, content, expect, create_dir, reply)
    except Refused as exc:
        reply["error"] = exc.as_json()
        return reply
    except OSError as exc:
        reply["error"] = _os_refusal(exc, f"writing {reply['path']}").as_json()
        return reply
    reply["ok"] = True
    return reply


def _write_in(
    target: Target,
    walker: Walker,
    content: bytes,
    expect: str | None,
    create_dir: bool,
    reply: dict[str, Any],
) -> None:
    try:
        target.open_parent(walker)
        current = None
    except Missing as exc:
        parent = walker.top
        creatable = (
            exc.last
            and target.home_ident is not None
            and _ident(parent.st) == target.home_ident
            and parent.st.st_uid == target.uid
        )
        if not create_dir or not creatable:
            why = "create_dir is false" if not create_dir else "only a directory in home is made"
            raise Refused("not_directory", f"directory {exc.path} does not exist ({why})") from None
        current = Current()
        _check_expected(target, current, expect)
        walker.make_dir(exc.path.rsplit("/", 1)[-1], target.uid, target.gid)
        reply["created_dir"] = True
    parent = walker.top
    owner = _owner_for(target, parent)
    if current is None:
        current = inspect_file(parent, target.name, target.path)
        if current.st is not None:
            reply["sha256"] = None if current.data is None else _sha256(current.data)
        if current.problem is not None and current.problem.code not in REPLACEABLE:
            raise current.problem
        _check_expected(target, current, expect)
    fixable = (
        parent.st.st_uid == target.uid
        and len(walker.stack) >= 2
        and target.home_ident is not None
        and _ident(walker.stack[-2].st) == target.home_ident
    )
    if fixable and parent.st.st_mode & 0o022:
        try:
            os.fchmod(parent.fd, 0o700)
            parent.st = os.fstat(parent.fd)
        except OSError as exc:
            raise _os_refusal(exc, f"cannot fix the mode of {parent.path}") from None
        reply["fixed_dir_mode"] = True
    reply["removed_temps"] = remove_stale_temps(parent, target.uid)
    replace_file(parent, target.name, target.path, content, owner)
    after = inspect_file(parent, target.name, target.path)
    reply.update({k: v for k, v in _stat_fields(after.st).items() if k != "nlink"})
    reply["dir_ok"] = target.dir_ok(walker)
    if after.problem is not None:
        raise after.problem
    if after.data is None:
        raise Refused("changed", f"{target.path} vanished right after it was written")
    reply["sha256"] = _sha256(after.data)
    if after.data != content:
        raise Refused("changed", f"{target.path} was changed by someone else right after the write")


# ---------------------------------------------------------------------------- sshd, hello


def op_hello(req: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": True,
        "protocol": PROTOCOL,
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "euid": os.geteuid(),
        "max_file_size": MAX_FILE_SIZE,
    }


def _find_sshd() -> str | None:
    for candidate in SSHD_CANDIDATES:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sshd")


def op_sshd_config(req: dict[str, Any]) -> dict[str, Any]:
    user = req.get("user")
    if user is not None and (not isinstance(user, str) or not ACCOUNT_RE.fullmatch(user)):
        raise BadRequest("user must be a valid account name")
    sshd = _find_sshd()
    if sshd is None:
        return {"ok": False, "error": {"code": "no_sshd", "message": "sshd not found"}}
    argv = [sshd, "-T"]
    if user is not None:
        argv += ["-C", f"user={user},host=localhost,addr=127.0.0.1"]
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=SSHD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "error": {"code": "sshd_failed", "message": _one_line(str(exc))}}
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        first = err[0] if err else ""
        message = f"{sshd} -T exited with {proc.returncode}: {first}"
        return {"ok": False, "error": {"code": "sshd_failed", "message": _one_line(message)}}
    settings: dict[str, str] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        key, _, value = line.strip().partition(" ")
        key = key.lower()
        if not key:
            continue
        settings[key] = settings[key] + "\n" + value if key in settings else value
    return {"ok": True, "sshd": sshd, "settings": settings}


# ---------------------------------------------------------------------------------- loop

OPS = {
    "hello": op_hello,
    "read": op_read,
    "write": op_write,
    "sshd_config": op_sshd_config,
}


def _error(rid: object, code: str, message: str) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": {"code": code, "message": _one_line(message)}}


def handle_request(req: object) -> tuple[dict[str, Any], bool]:
    """Reply to one decoded request; the flag says whether to stop serving."""
    if not isinstance(req, dict):
        return _error(None, "bad_request", "a request must be a JSON object"), False
    rid = req.get("id")
    op = req.get("op")
    if op == "bye":
        return {"id": rid, "ok": True}, True
    handler = OPS.get(op) if isinstance(op, str) else None
    if handler is None:
        return _error(rid, "unknown_op", f"unknown op {op!r}"), False
    try:
        reply = handler(req)
    except BadRequest as exc:
        return _error(rid, "bad_request", str(exc)), False
    except Exception as exc:
        return _error(rid, "internal", f"{type(exc).__name__}: {exc}"), False
    out: dict[str, Any] = {"id": rid}
    out.update(reply)
    return out, False


def handle_line(line: bytes) -> tuple[dict[str, Any], bool]:
    try:
        req = json.loads(line)
    except Exception as exc:
        return _error(None, "bad_json", f"malformed JSON: {exc}"), False
    return handle_request(req)


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    while True:
        line = inp.readline(MAX_LINE + 1)
        if not line:
            return 0
        stop = False
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while True:
                rest = inp.readline(MAX_LINE)
                if not rest or rest.endswith(b"\n"):
                    break
            reply = _error(None, "line_too_long", f"request line exceeds {MAX_LINE} bytes")
        elif not line.strip():
            continue
        else:
            reply, stop = handle_line(line)
        try:
            out.write(json.dumps(reply, separators=(",", ":")).encode("ascii") + b"\n")
            out.flush()
        except BrokenPipeError:
            return 0
        if stop:
            return 0


def main() -> int:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing printed by accident may corrupt the protocol stream
    os.umask(0o077)
    return serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
