"""The program keyward runs on each managed host to read and rewrite authorized_keys files.

Self-contained on purpose: standard library only, Python 3.8+, no side effects at import. The
agent sends its source over SSH (see ``bootstrap.py``) and speaks JSON lines with it: one
request object per line on stdin, one reply object per line on stdout, until EOF or
``{"op": "bye"}``.

Every reply carries ``id`` (the request's) and ``ok``. Operations:

``hello``
    ``protocol``, ``python``, ``hostname``, ``euid``, ``max_file_size``, ``max_read_files``,
    ``max_write_files``, ``file_timeout``.
``read``
    ``files: [{account, pattern}, ...]`` (at most ``MAX_READ_FILES``, else ``bad_request``),
    optional ``timeout`` (seconds per file, default ``FILE_TIMEOUT``)
    -> ``files: [...]`` in the same order, each with ``account, path, state
    (present|missing|error), content_b64, sha256, uid, gid, mode, nlink, dir_ok, owner_ok,
    replaceable, error``. ``replaceable`` is true only for an error that lies in the final
    directory entry alone (codes ``hardlink``, ``too_large``, ``foreign_owner``, and a final
    entry that is a ``symlink``, ``fifo`` or a socket/device ``not_regular``, but not a
    directory), which a write with ``expect_sha256 "*"`` replaces by renaming over the entry
    without following or opening it. A file owned by neither the account nor the owner a write
    would give it is never read: ``foreign_owner``.
``write``
    ``account, pattern, content_b64, expect_sha256 (hex | null = expect missing | "*"),
    create_dir``, optional ``timeout`` -> ``ok, path, sha256, uid, gid, mode, dir_ok,
    fixed_dir_mode, created_dir, removed_temps, error``. Compare-and-swap: refused with code
    ``changed`` when the file is not what the caller last saw, checked again (inode, size,
    mtime, ctime) just before the rename. With a hash or null, a symlink, FIFO or other
    non-regular entry is refused with its own code, a hard link, oversized or foreign-owned
    file with ``changed``; ``"*"`` replaces every replaceable entry.
``write_many``
    ``files: [{account, pattern, content_b64, expect_sha256, create_dir}, ...]`` (at most
    ``MAX_WRITE_FILES``), optional ``timeout`` (seconds per file) -> ``files: [...]`` in the
    same order, each exactly the reply ``write`` gives for that file. One request for all of
    a host's changed files: each is still its own compare-and-swap, in order, and a file
    refused does not stop or undo the others. Every field of every file is checked before
    anything is written: one malformed file makes the whole request a ``bad_request``.
``sshd_config``
    ``sshd -T`` as ``settings: {lowercased key: value}`` (repeated keys joined by newlines);
    optional ``user`` evaluates Match blocks for that user (``-C``).

Every path is walked from ``/`` one component at a time through directory file descriptors
opened with ``O_NOFOLLOW``. A symbolic link is followed only when it sits in a directory owned
by root and not writable by group or others, and only while every directory entered so far in
the walk was such a directory; anywhere else it is refused (``symlink``). The file itself is
never followed, never read when it has more than one link, is not a regular file, is larger
than ``MAX_FILE_SIZE``, has a foreign owner or is a mount point, and never written in place: the new
content goes to a fresh temporary file in the same directory, gets its owner and mode through
its descriptor, and is renamed over the old entry. A directory created for the file is taken
over (chowned) only if it is still the empty root-owned 0700 directory just made (``race``).

Mounts. Each entry is first named with ``O_PATH``, which runs no file system code, and its
mount id (``mnt_id`` in ``/proc/self/fdinfo``) compared with its directory's; only then is it
opened, through that descriptor, or stat'ed. A FUSE file system (any ``fuse``/``fuseblk``
type in mountinfo; the root file system excepted) is never entered and a file on one never
read (``untrusted_fs``): its content and its answers (or their absence) come from a daemon,
perhaps the user's own. A directory that is a mount point is entered only while the walk has
been through root-owned directories closed to group and others (the rule for symlinks), so a
home directory may be a mount point (NFS, a dataset per user, systemd-homed) but nothing
below it may (``mount_point``): that is where fusermount lets a user mount, and where no
administrator puts a mount. The file itself is never a mount point (``mount_point``, not
replaceable: rename(2) cannot replace one), checked again on the descriptor it is read from.
Without ``/proc`` these checks are skipped.

Deadlines. Each file of a read or a write_many, and each write, runs on a worker thread that
the main thread waits for at most ``timeout`` seconds: a thread blocked in the kernel cannot be
stopped, and ``O_NONBLOCK`` does nothing for regular or FUSE files. A file that takes longer is
answered as failed (``timeout``) and the request goes on with the next file; the stuck worker
keeps the path claimed, so later requests get ``busy`` for it at once, and if it ever returns
it gives up before renaming anything. At exit the process does not wait for stuck workers.
"""

from __future__ import annotations

import _thread  # built in: threading would cost start-up time on every host
import base64
import contextlib
import errno
import json
import os
import posixpath
import pwd
import re
import stat
import sys
import time

# Start-up time is paid on every host at every connection, so modules needed only by rare
# requests (subprocess for sshd -T and journalctl) are imported where used, and typing is
# never imported at run time (mypy still sees it).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from hashlib import sha256 as _sha256_hash
    from typing import Any, BinaryIO
else:  # the interpreter's built-in SHA-256: importing hashlib (and OpenSSL) costs ~3 ms
    try:
        from _sha2 import sha256 as _sha256_hash  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256 as _sha256_hash  # Python 3.8 - 3.11
        except ImportError:  # a Python built without them
            from hashlib import sha256 as _sha256_hash

PROTOCOL = 2  # 2: write_many
MAX_FILE_SIZE = 1 << 20
MAX_LINE = 4 << 20
MAX_SYMLINK_HOPS = 40
MAX_PATH = 4096
STALE_TEMP_AGE = 60.0
MAX_SWEEP_SCAN = 10_000  # directory entries looked at per stale-temp sweep
MAX_SWEEP_UNLINK = 100  # stale temp files removed per sweep
MAX_READ_FILES = 1_000  # files per read request
MAX_WRITE_FILES = 1_000  # files per write_many request (the request line bounds their size)
MOUNTINFO = "/proc/self/mountinfo"
FDINFO = "/proc/self/fdinfo/%d"
FILE_TIMEOUT = 10.0  # seconds one file may take in a read or write request
MAX_FILE_TIMEOUT = 600.0
SSHD_TIMEOUT = 30.0

ACCOUNT_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
TEMP_RE = re.compile(r"\.keyward-[^/]*\.tmp")
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# An O_PATH descriptor names an inode without opening it: no file system code runs, so a
# FUSE daemon is not asked anything (0 where the platform has no O_PATH: no pre-check).
O_PATH = getattr(os, "O_PATH", 0)
O_ENTRY = O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY

# Problems that leave the content unread; a write expecting a hash or null sees "changed".
UNREAD = ("hardlink", "too_large", "foreign_owner")


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Refused(Exception):
    """A per-file failure with a protocol error code."""

    def __init__(self, code: str, message: str, replaceable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = _one_line(message)
        # Only the final directory entry is at fault; renaming over it replaces it safely.
        self.replaceable = replaceable

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
    return _sha256_hash(data).hexdigest()


def _untrusted_fs_type(fstype: str) -> bool:
    """A file system whose content a user-space daemon (perhaps the user's) makes up."""
    return fstype in ("fuse", "fuseblk") or fstype.startswith(("fuse.", "fuseblk."))


def read_mount_types(path: str | None = None) -> dict[int, str] | None:
    """Mount id -> file system type, from mountinfo; None when it cannot be read."""
    try:
        with open(path or MOUNTINFO, "rb") as fh:
            text = fh.read(16 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    types: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            mount_id = int(fields[0])
            fstype = fields[fields.index("-", 6) + 1]
        except (IndexError, ValueError):
            continue
        types[mount_id] = fstype
    return types


def mount_id(fd: int) -> int | None:
    """The id of the mount ``fd`` lies on (``mnt_id`` in fdinfo); None without /proc."""
    try:
        info = os.open(FDINFO % fd, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(info, 4096)
    except OSError:
        return None
    finally:
        os.close(info)
    for line in data.split(b"\n"):
        if line.startswith(b"mnt_id:"):
            try:
                return int(line[7:])
            except ValueError:
                return None
    return None


def _is_empty_dir(fd: int) -> bool:
    with os.scandir(fd) as entries:
        return next(iter(entries), None) is None


class _Dir:
    __slots__ = ("fd", "mnt", "path", "st")

    def __init__(self, fd: int, path: str, st: os.stat_result, mnt: int | None) -> None:
        self.fd = fd
        self.path = path
        self.st = st
        self.mnt = mnt  # mount id; None when /proc cannot tell


class Walker:
    """A stack of open directory descriptors from ``/`` down to the current directory."""

    def __init__(self) -> None:
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.stack = [_Dir(fd, "/", os.fstat(fd), mount_id(fd))]
        # Set for good once the walk has entered a directory a user may change.
        self.tainted = not _trusted_dir(self.stack[0].st)
        self.mount_types: dict[int, str] | None = None

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

    def _push(self, fd: int, path: str, mnt: int | None) -> None:
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if not _trusted_dir(st):
            self.tainted = True
        self.stack.append(_Dir(fd, path, st, mnt))

    def fs_type(self, mnt: int) -> str | None:
        """The file system type of mount ``mnt``, if mountinfo names it."""
        if self.mount_types is None or mnt not in self.mount_types:
            self.mount_types = read_mount_types()  # again: it may have been mounted since
        return None if self.mount_types is None else self.mount_types.get(mnt)

    def check_mount(self, parent: _Dir, mnt: int | None, path: str, what: str) -> None:
        """Refuse an entry of ``parent`` that is a mount point where none may be.

        FUSE is refused anywhere; any other mount point only once the walk has been through
        a directory its user can change (a home that is itself a mount point is fine).
        """
        if mnt is None or parent.mnt is None or mnt == parent.mnt:
            return
        fstype = self.fs_type(mnt)
        if fstype is not None and _untrusted_fs_type(fstype):
            raise Refused(
                "untrusted_fs", f"{path} is on a {fstype} file system; refusing to {what} it"
            )
        if self.tainted:
            raise Refused(
                "mount_point",
                f"{path} is a mount point ({fstype or 'unknown'} file system) inside a "
                f"directory its user can change; refusing to {what} it",
            )

    def open_dir(self, parent: _Dir, name: str, path: str) -> tuple[int, int | None]:
        """Open directory ``name`` of ``parent`` once its mount is known to be acceptable.

        The entry is first named with ``O_PATH`` (nothing asks its file system anything), its
        mount checked, and only then opened, through that same descriptor.
        """
        if not O_PATH:
            return os.open(name, O_DIR, dir_fd=parent.fd), None
        entry = os.open(name, O_ENTRY | os.O_DIRECTORY, dir_fd=parent.fd)
        try:
            mnt = mount_id(entry)
            self.check_mount(parent, mnt, path, "enter")
            return os.open(".", O_DIR, dir_fd=entry), mnt
        finally:
            os.close(entry)

    def walk(self, components: list[str], hops: int = 0) -> int:
        """Descend through directory ``components``, following only trusted symlinks.

        ``hops``: symlinks already followed by the walk this one continues; returns the count
        with this walk's (``MAX_SYMLINK_HOPS`` bounds the total).
        """
        queue = list(reversed(components))
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
                fd, mnt = self.open_dir(parent, name, path)
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
            self._push(fd, path, mnt)
        return hops

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
        if self.tainted:
            raise Refused(
                "symlink",
                f"{path} is a symbolic link reached through a directory that is not root-owned "
                "and closed to group and others; refusing to follow it",
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
            pass  # raced with someone: whatever is there now is checked after the open below
        except OSError as exc:
            raise _os_refusal(exc, f"cannot create directory {path}") from None
        try:
            fd, mnt = self.open_dir(parent, name, path)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise Refused("symlink", f"{path} was replaced while being created") from None
            raise _os_refusal(exc, f"cannot open directory {path}") from None
        try:
            self._push(fd, path, mnt)  # closed with the walker from here on
        except OSError as exc:
            raise _os_refusal(exc, f"cannot inspect new directory {path}") from None
        # The user can rename another directory into its place between the mkdir and the
        # open (setgid may come from the parent): only what root made, empty, is handed over.
        hand_over(self.top, uid, gid, "was replaced while being created")
        try:
            os.fsync(parent.fd)
        except OSError as exc:
            raise _os_refusal(exc, f"cannot set up directory {path}") from None


def hand_over(d: _Dir, uid: int, gid: int, problem: str) -> None:
    """Give an account the directory root made for it (mode 0700), only while it is empty.

    Only what root made may be handed over, and only with nothing in it: the user can
    rename another directory (root's, with something in it) into its place, and another
    writer sharing the home may already have written into it (``_settle_half_made``).
    Anything else is refused as a ``race``, with ``problem`` saying what was found.
    """
    try:
        empty = _is_empty_dir(d.fd)
    except OSError as exc:
        raise _os_refusal(exc, f"cannot inspect directory {d.path}") from None
    # Permission bits only: a setgid bit may come from the parent directory.
    if d.st.st_uid != 0 or d.st.st_mode & 0o777 != 0o700 or not empty:
        raise Refused(
            "race",
            f"{d.path} {problem} (found owner uid {d.st.st_uid}, mode "
            f"{stat.S_IMODE(d.st.st_mode):04o}, {'empty' if empty else 'not empty'}); "
            "not taking it over",
        )
    try:
        os.fchown(d.fd, uid, gid)
        os.fchmod(d.fd, 0o700)
        d.st = os.fstat(d.fd)
    except OSError as exc:
        raise _os_refusal(exc, f"cannot set up directory {d.path}") from None


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """What must not change between the compare-and-swap check and the rename."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Current:
    """What the final path component is now: missing, unusable (``problem``) or content.

    ``sig`` is the entry's :func:`_signature` as seen (None when it was absent).
    """

    __slots__ = ("data", "problem", "sig", "st")

    def __init__(
        self,
        st: os.stat_result | None = None,
        data: bytes | None = None,
        problem: Refused | None = None,
        sig: tuple[int, int, int, int] | None = None,
    ) -> None:
        self.st = st
        self.data = data
        self.problem = problem
        self.sig = sig

    @property
    def missing(self) -> bool:
        return self.st is None and self.problem is None


def _classify(st: os.stat_result, path: str) -> Refused | None:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return _classify_link(path)
    if stat.S_ISFIFO(mode):
        return Refused("fifo", f"{path} is a FIFO, not a regular file", replaceable=True)
    if stat.S_ISDIR(mode):
        # rename(2) cannot put a file in place of a directory: not replaceable.
        return Refused("not_regular", f"{path} is a directory, not a regular file")
    if not stat.S_ISREG(mode):
        return Refused("not_regular", f"{path} is not a regular file", replaceable=True)
    if st.st_nlink > 1:
        return Refused(
            "hardlink",
            f"{path} has {st.st_nlink} hard links; its content is not read",
            replaceable=True,
        )
    if st.st_size > MAX_FILE_SIZE:
        return Refused(
            "too_large",
            f"{path} is {st.st_size} bytes, more than the {MAX_FILE_SIZE} allowed",
            replaceable=True,
        )
    return None


def _check_owner(st: os.stat_result, path: str, owners: tuple[int, ...] | None) -> Refused | None:
    if owners is None or st.st_uid in owners:
        return None
    allowed = " or ".join(str(uid) for uid in owners)
    return Refused(
        "foreign_owner",
        f"{path} is owned by uid {st.st_uid}, not by the account or the owner a write would "
        f"give it (uid {allowed}); its content is not read",
        replaceable=True,
    )


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


def _entry_mount(parent: _Dir, name: str, path: str) -> int | None:
    """The mount id of entry ``name`` of ``parent``, found without asking its file system.

    Raises FileNotFoundError when there is no such entry; None when /proc cannot tell.
    """
    try:
        entry = os.open(name, O_ENTRY, dir_fd=parent.fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _os_refusal(exc, f"cannot inspect {path}") from None
    try:
        return mount_id(entry)
    finally:
        os.close(entry)


def _mount_problem(walker: Walker, parent: _Dir, mnt: int | None, path: str) -> Refused | None:
    """A file that is a mount point is neither read nor written (rename(2) cannot replace it)."""
    if mnt is None or parent.mnt is None or mnt == parent.mnt:
        return None
    fstype = walker.fs_type(mnt)
    code = "untrusted_fs" if fstype is not None and _untrusted_fs_type(fstype) else "mount_point"
    return Refused(
        code,
        f"{path} is a mount point ({fstype or 'unknown'} file system); its content is not read "
        "and it cannot be replaced",
    )


def inspect_file(
    parent: _Dir,
    name: str,
    path: str,
    owners: tuple[int, ...] | None = None,
    walker: Walker | None = None,
) -> Current:
    """Look at ``name`` in ``parent`` without following it; read it only if it is safe.

    ``owners``: the uids the file may belong to for its content to be read. With ``walker``
    the entry's mount is checked first, before anything (even ``lstat``) reaches a file
    system mounted on it, and again on the descriptor that is read.
    """
    if walker is not None and O_PATH:
        try:
            mnt = _entry_mount(parent, name, path)
        except FileNotFoundError:
            return Current()
        problem = _mount_problem(walker, parent, mnt, path)
        if problem is not None:
            return Current(None, None, problem)
    try:
        lst = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        return Current()
    except OSError as exc:
        raise _os_refusal(exc, f"cannot inspect {path}") from None
    problem = _classify(lst, path) or _check_owner(lst, path, owners)
    if problem is not None:
        st_out = None if problem.code == "symlink" else lst
        return Current(st_out, None, problem, _signature(lst))
    try:
        fd = os.open(name, O_READ, dir_fd=parent.fd)
    except FileNotFoundError:
        return Current()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Current(None, None, _classify_link(path))
        if exc.errno == errno.ENXIO:
            return Current(None, None, Refused("not_regular", f"{path} is a socket", True))
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return Current(lst, None, Refused("io", f"{path} is locked by a lease"))
        raise _os_refusal(exc, f"cannot open {path}") from None
    try:
        # The entry may have been swapped since the lstat: judge what was actually opened.
        if walker is not None:
            problem = _mount_problem(walker, parent, mount_id(fd), path)
            if problem is not None:
                return Current(None, None, problem)
        st = os.fstat(fd)
        problem = _classify(st, path) or _check_owner(st, path, owners)
        if problem is not None:
            return Current(st, None, problem, _signature(st))
        data = _read_bounded(fd, MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise _os_refusal(exc, f"cannot read {path}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:
        problem = Refused("too_large", f"{path} grew past {MAX_FILE_SIZE} bytes", True)
        return Current(st, None, problem, _signature(st))
    return Current(st, data, None, _signature(st))


def _classify_link(path: str) -> Refused:
    return Refused("symlink", f"{path} is a symbolic link; refusing to follow it", True)


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
        # The walker ``check_home`` left in the home, for ``open_parent`` to go on from there,
        # with the symlinks that walk followed.
        self._at_home: Walker | None = None
        self._hops = 0

    @property
    def uid(self) -> int:
        return self.pw.pw_uid

    @property
    def gid(self) -> int:
        return self.pw.pw_gid

    def check_home(self, walker: Walker | None = None) -> None:
        """Resolve the home directory (when the file lies under it) to its inode.

        Given the fresh ``walker`` that ``open_parent`` will then use, and a file whose
        directory path starts with the home's, the home is walked in it and ``open_parent``
        goes on from there: the walk a fresh one would make, done once per file instead of
        twice (every directory is still entered through the same checks, and the home the
        file's directory is compared with is the very descriptor walked through).
        """
        if not self.under_home:
            return
        home = self.home.split("/")
        shared = walker is not None and self.dir_components[: len(home)] == home
        with contextlib.ExitStack() as own:
            w = walker if walker is not None and shared else own.enter_context(Walker())
            try:
                hops = w.walk(home)
            except Missing:
                raise Refused(
                    "home_missing",
                    f"home directory {self.home} of {self.account} does not exist",
                ) from None
            self.home_ident = _ident(w.top.st)
            self.home_uid = w.top.st.st_uid
            if shared:
                self._at_home, self._hops = w, hops

    def open_parent(self, walker: Walker) -> None:
        if self.name in ("", ".", ".."):
            raise Refused("not_regular", f"{self.path} does not name a file")
        if walker is self._at_home:
            walker.walk(self.dir_components[len(self.home.split("/")) :], self._hops)
        else:
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


# ------------------------------------------------------------------------- per-file deadline

# A thread blocked in a system call cannot be stopped, so each file of a request is handled
# on a worker thread that the main thread waits for, at most the request's per-file timeout.
# A file that takes longer is answered as failed (``timeout``) and the others are handled by
# a new worker; the stuck thread keeps the file's path claimed (``busy`` to later requests)
# and, should it ever return, gives up before renaming anything. At exit the process does
# not wait for it (``main``).
_STATE = _thread.allocate_lock()  # guards _BUSY, _STUCK and every _Job's flags
_BUSY: set[str] = set()  # paths a worker is handling
_STUCK = [0]  # workers given up on that have not returned yet
_LOCAL = _thread._local()


class _Job:
    """One worker thread: whether it has been given up on, whether it began a rename."""

    __slots__ = ("abandoned", "committing")

    def __init__(self) -> None:
        self.abandoned = False
        self.committing = False


class _Slot:
    """One item of a request: released when its result (or exception) is in."""

    __slots__ = ("done", "error", "progress", "value")

    def __init__(self) -> None:
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.value: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.progress: dict[str, Any] = {}  # what the worker found out so far (``path``)


def _worker(
    job: _Job,
    work: Callable[[Any, dict[str, Any]], dict[str, Any]],
    items: list[Any],
    slots: list[_Slot],
) -> None:
    _LOCAL.job = job
    for i, item in enumerate(items):
        slot = slots[i]
        value: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            value = work(item, slot.progress)
        except BaseException as exc:  # handed to the main thread, which reports it
            error = exc
        with _STATE:
            if job.abandoned:
                _STUCK[0] -= 1
                return
            slot.value, slot.error = value, error
            slot.done.release()
        if error is not None:
            return  # the request ends with it: leave the other items alone


def run_with_deadline(
    items: list[Any],
    work: Callable[[Any, dict[str, Any]], dict[str, Any]],
    timeout: float,
    timed_out: Callable[[Any, dict[str, Any], bool], dict[str, Any]],
) -> list[dict[str, Any]]:
    """``work(item, progress)`` for each item in order, each allowed ``timeout`` seconds.

    An item that takes longer gets ``timed_out(item, progress, committing)`` instead.
    """
    out: list[dict[str, Any]] = []
    while len(out) < len(items):
        rest = items[len(out) :]
        slots = [_Slot() for _ in rest]
        job = _Job()
        _thread.start_new_thread(_worker, (job, work, rest, slots))
        for i, item in enumerate(rest):
            slot = slots[i]
            if not slot.done.acquire(True, timeout):
                with _STATE:
                    late = slot.done.acquire(False)
                    if not late:
                        job.abandoned = True
                        _STUCK[0] += 1
                if not late:
                    out.append(timed_out(item, dict(slot.progress), job.committing))
                    break
            value = slot.value
            if slot.error is not None or value is None:
                raise slot.error or RuntimeError("a worker returned nothing")
            out.append(value)
    return out


def may_commit() -> None:
    """Called right before a rename: refuse it once the request has stopped waiting."""
    job = getattr(_LOCAL, "job", None)
    if job is None:
        return
    with _STATE:
        if job.abandoned:
            raise Refused("timeout", "the request stopped waiting for this write")
        job.committing = True


@contextlib.contextmanager
def claimed(path: str) -> Iterator[None]:
    """Hold ``path`` for this worker: a worker stuck on it earlier means ``busy``."""
    with _STATE:
        if path in _BUSY:
            raise Refused(
                "busy",
                f"{path} is still held by an earlier request that timed out on it; "
                "left alone until that one returns",
            )
        _BUSY.add(path)
    try:
        yield
    finally:
        with _STATE:
            _BUSY.discard(path)


def stuck_workers() -> int:
    with _STATE:
        return _STUCK[0]


def _timeout_arg(req: dict[str, Any]) -> float:
    value = req.get("timeout")
    if value is None:
        return FILE_TIMEOUT
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value <= MAX_FILE_TIMEOUT
    ):
        raise BadRequest(
            f"timeout must be a number of seconds, above 0 and at most {MAX_FILE_TIMEOUT:g}"
        )
    return float(value)


# ---------------------------------------------------------------------------------- read


def _read_result(account: object) -> dict[str, Any]:
    return {
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
        "replaceable": False,
        "error": None,
    }


def read_one(
    account: object, pattern: object, progress: dict[str, Any] | None = None
) -> dict[str, Any]:
    result = _read_result(account)
    try:
        target = Target(account, pattern)
        result["path"] = target.path
        if progress is not None:
            progress["path"] = target.path
        with claimed(target.path), Walker() as walker:
            target.check_home(walker)
            try:
                target.open_parent(walker)
            except Missing:
                result["state"] = "missing"
                return result
            result["dir_ok"] = target.dir_ok(walker)
            walker_parent_st = walker.top.st
            owners = _allowed_owners(target, walker_parent_st)
            current = inspect_file(walker.top, target.name, target.path, owners, walker)
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
        result["replaceable"] = current.problem.replaceable
    elif current.data is None:
        result["state"] = "missing"
    else:
        result["state"] = "present"
        result["content_b64"] = base64.b64encode(current.data).decode("ascii")
        result["sha256"] = _sha256(current.data)
    return result


def _allowed_owners(target: Target, parent_st: os.stat_result) -> tuple[int, ...]:
    """Who may own a file whose content is read: the account, or who a write would make it."""
    if parent_st.st_uid == 0:
        return (target.uid, 0)
    return (target.uid,)


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
    if len(files) > MAX_READ_FILES:
        raise BadRequest(f"at most {MAX_READ_FILES} files per read request, got {len(files)}")
    timeout = _timeout_arg(req)

    def work(f: dict[str, Any], progress: dict[str, Any]) -> dict[str, Any]:
        return read_one(f.get("account"), f.get("pattern"), progress)

    def timed_out(f: dict[str, Any], progress: dict[str, Any], _: bool) -> dict[str, Any]:
        result = _read_result(f.get("account"))
        result["path"] = progress.get("path")
        what = progress.get("path") or f"the file of {f.get('account')!r}"
        result["error"] = Refused(
            "timeout", f"timed out after {timeout:g} s reading {what}; it was not read"
        ).as_json()
        return result

    return {"ok": True, "files": run_with_deadline(files, work, timeout, timed_out)}


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


def _settle_half_made(target: Target, walker: Walker, parent: _Dir, reply: dict[str, Any]) -> None:
    """A directory in the account's home that another writer is still creating.

    ``make_dir`` creates a directory as root (mode 0700) and hands it to the account
    right after. Two writers that share a home (hosts with one shared home, as in a test
    fleet) can meet in between: the second found the directory there, wrote its file into
    it, and the first, finding it no longer empty, refused to hand it over. The directory
    stayed root's, and sshd, which reads a user's keys as that user, could read none of
    them. So a root-owned 0700 directory right in the home of another account is
    finished here as ``make_dir`` finishes it (``hand_over``): handed over if it is empty,
    refused as a ``race`` otherwise (the next round retries).
    """
    if (
        parent.st.st_uid != 0
        or target.uid == 0
        or parent.st.st_mode & 0o777 != 0o700
        or len(walker.stack) < 2
        or target.home_ident is None
        or _ident(walker.stack[-2].st) != target.home_ident
        or walker.stack[-2].st.st_uid != target.uid
    ):
        return
    problem = f"is root's in {target.account}'s home: another writer may be creating it"
    hand_over(parent, target.uid, target.gid, problem)
    reply["fixed_dir_mode"] = True


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
    """Remove ``.keyward-*.tmp`` files left by a crashed run (regular, ours or the user's).

    Bounded: looks at most at ``MAX_SWEEP_SCAN`` entries and removes at most
    ``MAX_SWEEP_UNLINK`` files, so a directory stuffed by the user cannot stall a write.
    """
    removed = 0
    now = time.time()
    try:
        with os.scandir(parent.fd) as entries:
            for scanned, entry in enumerate(entries, 1):
                if scanned > MAX_SWEEP_SCAN or removed >= MAX_SWEEP_UNLINK:
                    break
                name = entry.name
                if not TEMP_RE.fullmatch(name):
                    continue
                try:
                    # Something mounted on the name would answer the stat, or never answer.
                    if O_PATH and _entry_mount(parent, name, name) not in (None, parent.mnt):
                        continue
                    st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
                    if (
                        stat.S_ISREG(st.st_mode)
                        and st.st_uid in (0, uid)
                        and now - st.st_mtime > STALE_TEMP_AGE
                    ):
                        os.unlink(name, dir_fd=parent.fd)
                        removed += 1
                except (OSError, Refused):
                    continue
    except OSError as exc:
        raise _os_refusal(exc, f"cannot list {parent.path}") from None
    return removed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def entry_unchanged(
    parent: _Dir, name: str, path: str, sig: tuple[int, int, int, int] | None
) -> None:
    """Refuse with ``changed`` unless ``name`` is still what the compare-and-swap saw."""
    try:
        lst = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        now = None
    except OSError as exc:
        raise _os_refusal(exc, f"cannot inspect {path}") from None
    else:
        now = _signature(lst)
    if now != sig:
        raise Refused("changed", f"{path} changed while the new content was being written")


def replace_file(
    parent: _Dir,
    name: str,
    path: str,
    data: bytes,
    owner: tuple[int, int, int],
    check: bool = False,
    sig: tuple[int, int, int, int] | None = None,
) -> None:
    """Write ``data`` to a fresh temp file and rename it over ``name``; all via ``parent.fd``.

    With ``check``, the entry must still have signature ``sig`` (None: still be absent) right
    before the rename; otherwise the temp file is removed and the write refused (``changed``).
    """
    for _ in range(32):
        tmp = f".keyward-{os.urandom(4).hex()}.tmp"
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
        step = "checking"
        if check:
            entry_unchanged(parent, name, path, sig)
        may_commit()
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
    timeout = _timeout_arg(req)

    def work(r: dict[str, Any], progress: dict[str, Any]) -> dict[str, Any]:
        return write_one(r, content, expect, create_dir, progress)

    def timed_out(r: dict[str, Any], progress: dict[str, Any], committing: bool) -> dict[str, Any]:
        return _write_timed_out(r, progress, committing, timeout)

    return run_with_deadline([req], work, timeout, timed_out)[0]


def write_many_args(
    req: dict[str, Any],
    file_args: Callable[[dict[str, Any]], tuple[bytes, str | None, bool]] | None = None,
) -> tuple[list[tuple[dict[str, Any], bytes, str | None, bool]], float]:
    """Each file of a write_many with its checked arguments, and the per-file timeout.

    ``file_args`` checks one file (default ``_write_args``); the simulated hosts pass one
    that decodes each distinct content once (``keyward.testing.simhost``)."""
    files = req.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise BadRequest(
            "files must be a list of {account, pattern, content_b64, expect_sha256, create_dir}"
            " objects"
        )
    if len(files) > MAX_WRITE_FILES:
        raise BadRequest(
            f"at most {MAX_WRITE_FILES} files per write_many request, got {len(files)}"
        )
    timeout = _timeout_arg(req)
    # Every file is checked before the first is written: a bad request writes nothing.
    items: list[tuple[dict[str, Any], bytes, str | None, bool]] = []
    for i, f in enumerate(files):
        try:
            items.append((f, *(file_args or _write_args)(f)))
        except BadRequest as exc:
            raise BadRequest(f"files[{i}]: {exc}") from None
    return items, timeout


def op_write_many(req: dict[str, Any]) -> dict[str, Any]:
    items, timeout = write_many_args(req)

    def work(item: tuple[Any, ...], progress: dict[str, Any]) -> dict[str, Any]:
        f, content, expect, create_dir = item
        return write_one(f, content, expect, create_dir, progress)

    def timed_out(
        item: tuple[Any, ...], progress: dict[str, Any], committing: bool
    ) -> dict[str, Any]:
        return _write_timed_out(item[0], progress, committing, timeout)

    return {"ok": True, "files": run_with_deadline(items, work, timeout, timed_out)}


def _write_timed_out(
    r: dict[str, Any], progress: dict[str, Any], committing: bool, timeout: float
) -> dict[str, Any]:
    """The reply for a write whose worker did not return within ``timeout`` seconds."""
    reply = _write_reply()
    reply["path"] = progress.get("path")
    what = progress.get("path") or f"the file of {r.get('account')!r}"
    outcome = (
        "the new content may be in place (the rename had begun)"
        if committing
        else "it was left as it was"
    )
    reply["error"] = Refused(
        "timeout", f"timed out after {timeout:g} s writing {what}; {outcome}"
    ).as_json()
    return reply


def _write_reply() -> dict[str, Any]:
    return {
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


def write_one(
    req: dict[str, Any],
    content: bytes,
    expect: str | None,
    create_dir: bool,
    progress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    reply = _write_reply()
    try:
        target = Target(req.get("account"), req.get("pattern"))
        reply["path"] = target.path
        if progress is not None:
            progress["path"] = target.path
        if len(content) > MAX_FILE_SIZE:
            raise Refused(
                "too_large", f"new content for {target.path} exceeds {MAX_FILE_SIZE} bytes"
            )
        with claimed(target.path), Walker() as walker:
            target.check_home(walker)
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
        _check_expected(target, Current(), expect)
        walker.make_dir(exc.path.rsplit("/", 1)[-1], target.uid, target.gid)
        reply["created_dir"] = True
    parent = walker.top
    _settle_half_made(target, walker, parent, reply)
    owner = _owner_for(target, parent)
    # Sweep first, so nothing slow sits between the compare-and-swap check and the rename.
    reply["removed_temps"] = remove_stale_temps(parent, target.uid)
    current = inspect_file(
        parent, target.name, target.path, _allowed_owners(target, parent.st), walker
    )
    if current.st is not None:
        reply["sha256"] = None if current.data is None else _sha256(current.data)
    problem = current.problem
    if problem is not None and (
        not problem.replaceable or (expect != "*" and problem.code not in UNREAD)
    ):
        raise problem
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
    # "*" replaces whatever the entry is by then; otherwise it must still be what was compared.
    replace_file(
        parent, target.name, target.path, content, owner, check=expect != "*", sig=current.sig
    )
    after = inspect_file(
        parent, target.name, target.path, _allowed_owners(target, parent.st), walker
    )
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
        "python": ".".join(str(part) for part in sys.version_info[:3]),
        "hostname": os.uname().nodename,
        "euid": os.geteuid(),
        "max_file_size": MAX_FILE_SIZE,
        "max_read_files": MAX_READ_FILES,
        "max_write_files": MAX_WRITE_FILES,
        "file_timeout": FILE_TIMEOUT,
    }


def _which(name: str) -> str | None:
    """``shutil.which`` without importing shutil (and its compression modules) at start-up."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _find_sshd() -> str | None:
    for candidate in SSHD_CANDIDATES:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return _which("sshd")


def op_sshd_config(req: dict[str, Any]) -> dict[str, Any]:
    import subprocess

    user = req.get("user")
    if user is not None and (not isinstance(user, str) or not ACCOUNT_RE.fullmatch(user)):
        raise BadRequest("user must be a valid account name")
    sshd = _find_sshd()
    if sshd is None:
        return {"ok": False, "error": {"code": "no_sshd", "message": "sshd not found"}}
    argv = [sshd, "-T"]
    config = req.get("config")
    if config is not None:
        if not isinstance(config, str) or not config.startswith("/") or "\0" in config:
            raise BadRequest("config must be an absolute path")
        argv += ["-f", config]
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


# ------------------------------------------------------------------------------ auth log

MAX_LOG_LINES = 50_000  # lines returned per auth_log request; the rest comes next time
MAX_LOG_BYTES = 16 << 20
AUTH_LOG_FILES = ("/var/log/auth.log", "/var/log/secure")
# Which journal entries are sshd's own (journalctl ORs values of one field, ANDs fields):
# logged through syslog(3) by a root process named sshd or sshd-session. _COMM alone can
# be chosen by any local user, and sshd's stderr (`sshd -e`) does not escape newlines, so
# a client-chosen certificate key ID could end one line and forge the next.
JOURNAL_MATCH = ("_COMM=sshd", "_COMM=sshd-session", "_TRANSPORT=syslog", "_UID=0")


def _journal_has_sshd() -> bool:
    import subprocess

    if _which("journalctl") is None:
        return False
    try:
        proc = subprocess.run(
            ["journalctl", "-q", "--no-pager", "-n", "1", "-o", "cat", *JOURNAL_MATCH],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _read_journal(cursor: object, match: tuple[bytes, ...] | None) -> dict[str, Any]:
    import subprocess

    argv = [
        "journalctl",
        "-q",
        "--no-pager",
        "-o",
        "json",
        "-n",
        str(MAX_LOG_LINES),
        "--show-cursor",
        *JOURNAL_MATCH,
    ]
    if isinstance(cursor, str) and cursor:
        argv = [a for a in argv if a not in ("-n", str(MAX_LOG_LINES))]
        argv += ["--after-cursor", cursor]
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Refused("io", "journalctl timed out") from None
    if proc.returncode != 0:
        raise Refused(
            "io", "journalctl failed: " + _one_line(proc.stderr.decode("utf-8", "replace"))
        )
    lines: list[dict[str, Any]] = []
    new_cursor = cursor if isinstance(cursor, str) else None
    shown_cursor = None
    last_skipped: bytes | None = None  # the newest entry not sent: its cursor is the position
    for raw in proc.stdout.splitlines()[: MAX_LOG_LINES + 1]:
        if raw.startswith(b"-- cursor: "):
            shown_cursor = raw[len(b"-- cursor: ") :].decode("utf-8", "replace").strip()
            continue
        if match is not None and not any(m in raw for m in match):
            last_skipped = raw
            continue
        last_skipped = None
        entry = _journal_entry(raw)
        message = entry.get("MESSAGE")
        pos = entry.get("__CURSOR")
        if isinstance(pos, str):
            new_cursor = pos
        if not isinstance(message, str):
            continue
        stamp = entry.get("__REALTIME_TIMESTAMP")
        ts = int(stamp) / 1e6 if isinstance(stamp, str) and stamp.isdigit() else None
        lines.append({"ts": ts, "text": message, "pos": pos})
    if shown_cursor:
        new_cursor = shown_cursor
    elif last_skipped is not None:
        skipped = _journal_entry(last_skipped).get("__CURSOR")
        new_cursor = skipped if isinstance(skipped, str) else new_cursor
    return {"ok": True, "source": "journal", "lines": lines, "cursor": new_cursor}


def _journal_entry(raw: bytes) -> dict[str, Any]:
    try:
        entry = json.loads(raw)
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}


def _read_file_from(
    path: str, offset: int, budget: int, limit: int, match: tuple[bytes, ...] | None
) -> tuple[list[dict[str, Any]], int]:
    """Whole lines of ``path`` from ``offset`` that contain one of ``match`` (all without it),
    at most ``limit`` of them, and the offset of the first line not yet looked at."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not_regular", f"{path} is not a regular file")
        os.lseek(fd, offset, os.SEEK_SET)
        data = b""
        while len(data) < budget:
            chunk = os.read(fd, min(1 << 20, budget - len(data)))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    lines: list[dict[str, Any]] = []
    pos = offset
    for raw in data[:end].split(b"\n"):
        if len(lines) >= limit:
            break  # the rest is read next time, from ``pos``
        if match is None or any(m in raw for m in match):
            lines.append({"ts": None, "text": raw.decode("utf-8", "replace"), "pos": f"{pos}"})
        pos += len(raw) + 1
    return lines, pos


def _read_auth_file(path: str, position: object, match: tuple[bytes, ...] | None) -> dict[str, Any]:
    """New lines since ``position`` ({inode, offset}), following one rotation."""
    saved = position if isinstance(position, dict) else {}
    inode = saved.get("inode")
    raw_offset = saved.get("offset")
    offset: int = raw_offset if isinstance(raw_offset, int) and raw_offset >= 0 else 0
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise Refused("missing", f"auth log {path} does not exist") from None
    lines: list[dict[str, Any]] = []
    if inode is not None and inode != st.st_ino:
        # Rotated: finish the old file (now path.1) from where we stopped, if it is there.
        rotated = path + ".1"
        try:
            old = os.stat(rotated, follow_symlinks=False)
            if old.st_ino == inode and old.st_size > offset:
                more, stop = _read_file_from(rotated, offset, MAX_LOG_BYTES, MAX_LOG_LINES, match)
                for line in more:
                    line["pos"] = f"{inode}:{line['pos']}"
                lines += more
                if stop < old.st_size:  # a limit was reached: go on in the old file next time
                    return {
                        "ok": True,
                        "source": "file",
                        "path": path,
                        "lines": lines,
                        "position": {"inode": inode, "offset": stop},
                    }
        except FileNotFoundError:
            pass
        offset = 0
    elif st.st_size < offset:
        offset = 0  # truncated in place
    more, new_offset = _read_file_from(
        path, offset, MAX_LOG_BYTES, MAX_LOG_LINES - len(lines), match
    )
    for line in more:
        line["pos"] = f"{st.st_ino}:{line['pos']}"
    lines += more
    return {
        "ok": True,
        "source": "file",
        "path": path,
        "lines": lines,
        "position": {"inode": st.st_ino, "offset": new_offset},
    }


def _match_arg(value: object) -> tuple[bytes, ...] | None:
    """The request's ``match``: substrings a line must contain to be sent (None: every line)."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= 16
        or not all(isinstance(m, str) and 0 < len(m) <= 200 for m in value)
    ):
        raise BadRequest("match must be a list of 1 to 16 non-empty strings")
    return tuple(m.encode("utf-8") for m in value)


def op_auth_log(req: dict[str, Any]) -> dict[str, Any]:
    """sshd's log lines since the last read: journald (cursor) or an auth log file (offset)."""
    source = req.get("source", "auto")
    if not isinstance(source, str):
        raise BadRequest("source must be a string")
    match = _match_arg(req.get("match"))
    try:
        if source == "journal" or (source == "auto" and _journal_has_sshd()):
            return _read_journal(req.get("cursor"), match)
        if source == "auto":
            for candidate in AUTH_LOG_FILES:
                if os.path.exists(candidate):
                    return _read_auth_file(candidate, req.get("position"), match)
            raise Refused("missing", "no journal with sshd entries and no auth log file")
        if not source.startswith("/"):
            raise BadRequest("source must be auto, journal or an absolute path")
        return _read_auth_file(source, req.get("position"), match)
    except Refused as exc:
        return {"ok": False, "error": exc.as_json()}
    except OSError as exc:
        return {"ok": False, "error": {"code": "io", "message": _one_line(str(exc))}}


OPS = {
    "hello": op_hello,
    "read": op_read,
    "write": op_write,
    "write_many": op_write_many,
    "sshd_config": op_sshd_config,
    "auth_log": op_auth_log,
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
    code = serve(sys.stdin.buffer, out)
    if stuck_workers():
        # Do not leave exit to how the interpreter treats a thread stuck in the kernel.
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
