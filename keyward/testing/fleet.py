"""What every local fleet is made of, whichever SSH server runs it.

A fleet is a few SSH hosts on their own 127.0.0.x addresses and free ports, each with its
own directory, host key and ``AuthorizedKeysFile``.  ``FleetHost`` describes one host,
``FleetBase`` is the surface the demo and the tests use on both kinds of fleet
(``LocalFleet``: real OpenSSH ``sshd``; ``EmbeddedFleet``: asyncssh servers in this
process), and the helpers here find addresses, ports and directories sshd accepts.

Only the standard library is used: ``keyward demo`` imports this on every machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from keyward.errors import KeywardError


class FleetError(KeywardError):
    """A local fleet host could not be set up, started or stopped.

    A ``KeywardError`` (exit code 1) so ``keyward demo`` reports it like any other
    operational failure.
    """

    exit_code = 1


@dataclass(frozen=True)
class FleetHost:
    """One running (or stoppable) loopback sshd and everything needed to reach it."""

    name: str
    address: str
    port: int
    host_key_pub: str
    """The public host key as ``"ssh-ed25519 AAAA..."`` (no comment)."""
    sshd_config: Path
    dir: Path
    authorized_keys_file: str
    """The ``AuthorizedKeysFile`` value written into this host's sshd_config."""

    def known_hosts_line(self) -> str:
        """The known_hosts line pinning this host (bracketed form, as the port is not 22)."""
        return f"[{self.address}]:{self.port} {self.host_key_pub}"

    @property
    def log_file(self) -> Path:
        """Where sshd's stderr (its log) goes; tests read authentication lines from it."""
        return self.dir / "sshd.log"

    @property
    def keys_dir(self) -> Path:
        """The root-owned central ``keys`` directory (used by the default template)."""
        return self.dir / "keys"

    def authorized_keys_path(self, user: str, home: Path | None = None) -> Path:
        """Expand this host's ``AuthorizedKeysFile`` for ``user`` as sshd would.

        Supports ``%u``, ``%h`` (needs ``home`` or a local account) and ``%%``; a relative
        result is relative to the home directory, like sshd.
        """
        if home is None and ("%h" in self.authorized_keys_file or not self._absolute()):
            home = Path(pwd.getpwnam(user).pw_dir)
        out: list[str] = []
        i = 0
        text = self.authorized_keys_file
        while i < len(text):
            ch = text[i]
            if ch == "%" and i + 1 < len(text):
                spec = text[i + 1]
                if spec == "u":
                    out.append(user)
                elif spec == "h":
                    out.append(str(home))
                elif spec == "%":
                    out.append("%")
                else:
                    raise FleetError(f"unsupported token %{spec} in AuthorizedKeysFile")
                i += 2
                continue
            out.append(ch)
            i += 1
        path = Path("".join(out))
        if not path.is_absolute():
            assert home is not None  # guaranteed above for relative templates
            path = home / path
        return path

    def _absolute(self) -> bool:
        """Whether the template is absolute before expansion (``%h`` counts as absolute)."""
        return self.authorized_keys_file.startswith(("/", "%h"))


def is_root() -> bool:
    """Whether we run as root: decides accounts, ``/run/sshd`` and where base dirs go."""
    return os.geteuid() == 0


def strict_modes_problem(path: Path) -> str | None:
    """Why sshd's StrictModes would reject files under ``path``, or None if it would not.

    sshd requires every component from ``/`` down to be owned by root or the user and
    not group/world-writable; ``/tmp`` (1777) is the usual culprit.
    """
    uid = os.geteuid()
    current = path.resolve()
    for part in [current, *current.parents]:
        st = part.stat()
        if st.st_uid not in (0, uid):
            return f"{part} is owned by uid {st.st_uid}"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{part} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def safe_base_dir(prefix: str = "keyward-fleet-") -> Path:
    """Make a fresh 0755 directory that passes sshd's StrictModes path check.

    As root it lives under ``/srv`` (or ``/var/lib``), never ``/tmp`` whose 1777 mode makes
    sshd ignore central authorized keys files beneath it.  As another user it lives under
    ``~/.cache``.  The caller removes it (``shutil.rmtree``) when done.
    """
    if is_root():
        candidates = [Path("/srv"), Path("/var/lib")]
    else:
        # The account's real home, not $HOME: after su/runuser $HOME may still be root's.
        home = Path(pwd.getpwuid(os.geteuid()).pw_dir)
        cache = home / ".cache"
        with contextlib.suppress(OSError):
            cache.mkdir(mode=0o755, parents=True, exist_ok=True)
        candidates = [cache, home]
    reasons: list[str] = []
    for parent in candidates:
        if not parent.is_dir():
            reasons.append(f"{parent} does not exist")
            continue
        problem = strict_modes_problem(parent)
        if problem is not None:
            reasons.append(problem)
            continue
        made = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        made.chmod(0o755)
        return made
    raise FleetError("no directory passes sshd StrictModes: " + "; ".join(reasons))


def free_port(address: str) -> int:
    """A TCP port that is free on ``address`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def fleet_address(index: int) -> str:
    """Loopback address number ``index`` (1-based): 127.0.0.index, wrapping into 127.0.x.y.

    Octets 0 and 255 are skipped so every address is an ordinary host address; this
    allows 254 * 256 hosts, far more than a fleet needs.
    """
    if index < 1:
        raise FleetError(f"address index must be >= 1, got {index}")
    third, fourth = divmod(index - 1, 254)
    if third > 255:
        raise FleetError(f"address index {index} is beyond 127.0.255.254")
    return f"127.0.{third}.{fourth + 1}"


class FleetBase:
    """What every local fleet offers: context management, pins, and clean-up at exit.

    Subclasses provide ``start``, ``stop`` and ``hosts``.
    """

    _atexit_registered = False

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def hosts(self) -> list[FleetHost]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def known_hosts_text(self) -> str:
        """A known_hosts file pinning every host's real key."""
        return "".join(host.known_hosts_line() + "\n" for host in self.hosts)

    def write_known_hosts(self, path: Path) -> Path:
        """Write ``known_hosts_text()`` to ``path`` (0644) and return ``path``."""
        path = Path(path)
        path.write_text(self.known_hosts_text())
        path.chmod(0o644)
        return path

    def _register_atexit(self) -> None:
        """Stop the fleet even if the interpreter exits without calling ``stop()``."""
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

    def _unregister_atexit(self) -> None:
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False


__all__ = [
    "FleetBase",
    "FleetError",
    "FleetHost",
    "fleet_address",
    "free_port",
    "is_root",
    "safe_base_dir",
    "strict_modes_problem",
]
