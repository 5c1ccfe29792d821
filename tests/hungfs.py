"""A FUSE mount whose daemon never answers: every access to it blocks until it is aborted.

It is what a managed account can put over its own ``authorized_keys`` with fusermount and a
file system that never replies. The test process opens ``/dev/fuse`` and mounts it (as root,
through mount(2)) but never reads the device, so the kernel's first request is never
answered and every later one waits behind it. Leaving the block closes the device, which
aborts the connection (blocked calls fail with ENOTCONN), then detaches the mount.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@contextmanager
def hung_fuse(path: Path, subtype: str = "hang") -> Iterator[None]:
    """Mount a never-answering FUSE file system on ``path`` (a file or a directory)."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        pytest.skip(f"no FUSE here: {exc}")
    rootmode = "40000" if path.is_dir() else "100000"
    opts = f"fd={fd},rootmode={rootmode},user_id=0,group_id=0"
    libc = _libc()
    if libc.mount(b"hung", str(path).encode(), f"fuse.{subtype}".encode(), 0, opts.encode()):
        err = ctypes.get_errno()
        os.close(fd)
        pytest.skip(f"cannot mount FUSE here: {os.strerror(err)}")
    try:
        yield
    finally:
        os.close(fd)  # aborts the connection: whatever is blocked on it returns
        libc.umount2(str(path).encode(), MNT_DETACH)
