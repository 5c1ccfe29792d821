"""Where OpenSSH's ``sshd`` is: one answer for the demo's choice of fleet and for the fleet.

``keyward demo`` picks real ``sshd`` hosts when it finds ``sshd`` and ``LocalFleet``
then starts that same binary; when the two looked in different places, a machine with
``sshd`` only in ``/usr/local/sbin`` chose the OpenSSH demo and then failed to start it.
``sbin`` directories are searched after ``$PATH`` because an ordinary user's ``$PATH``
rarely has them.  Only the standard library is used (the demo imports this at once).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

SSHD_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
"""Where sshd is installed when it is not on ``$PATH``, in the order they are tried."""


def find_sshd(path: str | None = None, dirs: Sequence[str] = SSHD_DIRS) -> str | None:
    """The absolute path of an executable ``sshd`` on ``path`` then in ``dirs``, or None.

    ``path`` is a ``$PATH``-style list (default: this process's ``$PATH``).  The result is
    absolute because sshd re-executes itself by that path for every connection.
    """
    search = os.environ.get("PATH", os.defpath) if path is None else path
    # An empty $PATH entry means the current directory to shutil.which: never look there.
    places = [place for place in [*search.split(os.pathsep), *dirs] if place]
    found = shutil.which("sshd", path=os.pathsep.join(places))
    return os.path.abspath(found) if found is not None else None


__all__ = ["SSHD_DIRS", "find_sshd"]
