"""Real OpenSSH ``sshd`` processes on loopback: a fleet for the demo, the tests and benchmarks.

keyward's claims are about what a real ``sshd`` accepts, so the demo and the tests run
real ones instead of mocks.  Each host is one ``sshd -D -e`` on its own 127.0.0.x address
and free port, with its own ed25519 host key and config, logging to ``{dir}/sshd.log``
so tests can read the VERBOSE authentication lines.

Only the standard library and ``subprocess`` are used: this module ships in the package
(``keyward demo`` needs it) and must not drag in test or logging dependencies.

Processes are torn down reliably: ``stop()`` signals every descendant of each listener
(per-connection children call ``setsid`` and so escape a process-group kill), escalates
from SIGTERM to SIGKILL, and is also registered with ``atexit`` while the fleet runs.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from keyward.errors import KeywardError

SSHD = "/usr/sbin/sshd"
"""sshd must be started by absolute path (it re-executes itself for each connection)."""

START_TIMEOUT = 10.0
"""Seconds to wait for one sshd to listen before giving up with its log tail."""

STOP_TIMEOUT = 5.0
"""Seconds to wait after SIGTERM before SIGKILL."""

_QUIET_LEVELS = frozenset({"QUIET", "FATAL", "ERROR"})
"""Log levels at which sshd does not log "Server listening on", so we probe TCP instead."""


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


def _strict_modes_problem(path: Path) -> str | None:
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
        problem = _strict_modes_problem(parent)
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


def _tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages (empty if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])


def _children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (so we find setsid'd sshd session children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                raw = fh.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ")".
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) < 2:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (not including ``pid``)."""
    tree = _children_map()
    found: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            raw = fh.read()
    except OSError:
        return False
    fields = raw[raw.rfind(")") + 2 :].split()
    return bool(fields) and fields[0] != "Z"


def _signal(pids: list[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each pid, ignoring ones that are already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _freeze_tree(root: int) -> list[int]:
    """SIGSTOP ``root`` and all its descendants until no new ones appear; return them all.

    A stopped process cannot fork, so repeating the scan converges on the whole tree.
    """
    seen: list[int] = []
    for _ in range(100):
        new = [pid for pid in [root, *_descendants(root)] if pid not in seen]
        if not new:
            break
        _signal(new, signal.SIGSTOP)
        seen += new
    return seen


class _Server:
    """One host's static setup plus its (possibly absent) running process."""

    def __init__(self, host: FleetHost) -> None:
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self.known_children: set[int] = set()


class _FleetBase:
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


class LocalFleet(_FleetBase):
    """``count`` real sshd processes on loopback, set up on ``start()`` and killed on ``stop()``.

    Use as a context manager.  ``authorized_keys_file`` is a template: ``{dir}`` is the
    host's directory and ``{name}`` its name; sshd tokens (``%u``, ``%h``, ``%%``) pass
    through.  The default is the central layout ``{dir}/keys/%u`` with a root-owned 0755
    ``keys`` directory, which requires ``base_dir`` to pass StrictModes (see
    ``safe_base_dir``).
    """

    def __init__(
        self,
        base_dir: Path,
        count: int,
        *,
        authorized_keys_file: str = "{dir}/keys/%u",
        first_address: int = 10,
        name_prefix: str = "h",
        log_level: str = "VERBOSE",
        extra_config: str = "",
    ) -> None:
        if count < 0:
            raise FleetError(f"fleet size must be >= 0, got {count}")
        self.base_dir = Path(base_dir)
        self.count = count
        self.authorized_keys_template = authorized_keys_file
        self.first_address = first_address
        self.name_prefix = name_prefix
        self.log_level = log_level
        self.extra_config = extra_config
        self._servers: dict[str, _Server] = {}

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Set up and start every host; on any failure stop what was started and re-raise."""
        if self._servers:
            raise FleetError("fleet already started")
        if "{dir}" in self.authorized_keys_template:
            self.base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            problem = _strict_modes_problem(self.base_dir)
            if problem is not None:
                raise FleetError(
                    f"base_dir {self.base_dir} fails sshd StrictModes ({problem}); "
                    "use safe_base_dir()"
                )
        if is_root():
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        self._register_atexit()
        try:
            for i in range(self.count):
                server = _Server(self._setup_host(i))
                self._servers[server.host.name] = server
                self._launch(server, retry_port=True)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every host (SIGTERM, then SIGKILL); idempotent and safe after partial starts."""
        errors: list[str] = []
        for server in self._servers.values():
            try:
                self._kill(server)
            except Exception as exc:  # keep stopping the others; report at the end
                errors.append(f"{server.host.name}: {exc}")
        self._servers.clear()
        self._unregister_atexit()
        if errors:
            raise FleetError("could not stop fleet cleanly: " + "; ".join(errors))

    def stop_host(self, name: str) -> None:
        """Stop one host's sshd (and its sessions); its port, key and config are kept."""
        self._kill(self._server(name))

    def start_host(self, name: str) -> None:
        """Start a stopped host again with the same address, port and host key."""
        server = self._server(name)
        if server.proc is not None and server.proc.poll() is None:
            return
        self._launch(server, retry_port=False)

    def is_running(self, name: str) -> bool:
        """Whether the host's listener process is alive."""
        proc = self._server(name).proc
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int | None:
        """The listener pid of a running host (for tests that inspect processes)."""
        proc = self._server(name).proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # -- queries --------------------------------------------------------------------

    @property
    def hosts(self) -> list[FleetHost]:
        """All hosts in address order (running or stopped)."""
        return [server.host for server in self._servers.values()]

    def host(self, name: str) -> FleetHost:
        """The host called ``name``."""
        return self._server(name).host

    # -- internals ------------------------------------------------------------------

    def _server(self, name: str) -> _Server:
        try:
            return self._servers[name]
        except KeyError:
            raise FleetError(f"no fleet host named {name!r}") from None

    def _setup_host(self, i: int) -> FleetHost:
        """Create the host's directory, host key and sshd_config (not yet started)."""
        name = f"{self.name_prefix}{i + 1}"
        address = fleet_address(self.first_address + i)
        hdir = self.base_dir / name
        hdir.mkdir(mode=0o755, parents=True, exist_ok=True)
        hdir.chmod(0o755)
        keys = hdir / "keys"
        keys.mkdir(mode=0o755, exist_ok=True)
        keys.chmod(0o755)  # root- (or our-) owned 0755: StrictModes accepts it
        key = hdir / "ssh_host_ed25519_key"
        if not key.exists():
            done = subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            if done.returncode != 0:
                raise FleetError(f"ssh-keygen failed for {name}: {done.stderr.strip()}")
        pub_fields = (hdir / "ssh_host_ed25519_key.pub").read_text().split()
        akf = self.authorized_keys_template.replace("{dir}", str(hdir)).replace("{name}", name)
        return FleetHost(
            name=name,
            address=address,
            port=free_port(address),
            host_key_pub=f"{pub_fields[0]} {pub_fields[1]}",
            sshd_config=hdir / "sshd_config",
            dir=hdir,
            authorized_keys_file=akf,
        )

    def _config_text(self, host: FleetHost) -> str:
        """The sshd_config for ``host``: hardened, key-only, verbose auth logging."""
        lines = [
            f"ListenAddress {host.address}:{host.port}",
            f"HostKey {host.dir / 'ssh_host_ed25519_key'}",
            f"PidFile {host.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {host.authorized_keys_file}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes yes",
            "PermitRootLogin prohibit-password",
            f"LogLevel {self.log_level}",
            "SyslogFacility AUTH",
            "MaxStartups 200:30:400",
            "MaxSessions 50",
        ]
        text = "\n".join(lines) + "\n"
        if self.extra_config:
            text += self.extra_config.rstrip("\n") + "\n"
        return text

    def _launch(self, server: _Server, *, retry_port: bool) -> None:
        """Start one sshd and wait until it listens; pick a new port once if ours was taken."""
        attempts = 3 if retry_port else 1
        for attempt in range(attempts):
            try:
                self._launch_once(server)
                return
            except FleetError as exc:
                if attempt + 1 == attempts or "Address already in use" not in str(exc):
                    raise
                host = server.host
                new = FleetHost(
                    name=host.name,
                    address=host.address,
                    port=free_port(host.address),
                    host_key_pub=host.host_key_pub,
                    sshd_config=host.sshd_config,
                    dir=host.dir,
                    authorized_keys_file=host.authorized_keys_file,
                )
                server.host = new

    def _launch_once(self, server: _Server) -> None:
        host = server.host
        host.sshd_config.write_text(self._config_text(host))
        host.sshd_config.chmod(0o644)
        test = subprocess.run(
            [SSHD, "-t", "-f", str(host.sshd_config)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if test.returncode != 0:
            raise FleetError(f"sshd rejects config for {host.name}: {test.stderr.strip()}")
        log_path = host.log_file
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            server.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(host.sshd_config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a ^C in the terminal must not reach sshd half-way
                close_fds=True,
            )
        try:
            self._wait_listening(server, log_path, offset)
        except BaseException:
            self._kill(server)
            raise

    def _wait_listening(self, server: _Server, log_path: Path, offset: int) -> None:
        """Block until sshd listens (its log says so, or TCP connects), bounded in time."""
        host = server.host
        proc = server.proc
        assert proc is not None
        marker = f"Server listening on {host.address} port {host.port}".encode()
        probe_tcp = self.log_level.upper() in _QUIET_LEVELS
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise FleetError(
                    f"sshd for {host.name} on {host.address}:{host.port} exited with "
                    f"{proc.returncode}: {_tail(log_path)}"
                )
            if probe_tcp:
                with contextlib.suppress(OSError):
                    socket.create_connection((host.address, host.port), timeout=0.5).close()
                    return
            else:
                with contextlib.suppress(OSError), open(log_path, "rb") as fh:
                    fh.seek(offset)
                    if marker in fh.read():
                        return
            if time.monotonic() > deadline:
                raise FleetError(
                    f"sshd for {host.name} did not listen on {host.address}:{host.port} "
                    f"within {START_TIMEOUT:g}s: {_tail(log_path)}"
                )
            time.sleep(0.02)

    def _kill(self, server: _Server) -> None:
        """Stop a host's listener and every process it spawned (sessions included).

        The tree is frozen with SIGSTOP first: a session child that forks while we signal
        its parent would otherwise be reparented to PID 1 and escape (connection children
        call ``setsid``, so a process-group kill would not reach them either).
        """
        proc = server.proc
        if proc is None:
            return
        pids = _freeze_tree(proc.pid) if proc.poll() is None else []
        _signal(pids, signal.SIGTERM)
        _signal(pids, signal.SIGCONT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            proc.poll()
            if proc.returncode is not None and not any(_alive(p) for p in pids):
                break
            time.sleep(0.02)
        else:
            _signal([p for p in pids if _alive(p)], signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        server.proc = None


# -- accounts -----------------------------------------------------------------------


def ensure_account(name: str, home_base: Path) -> pwd.struct_passwd:
    """Create (or keep) the local account ``name`` with home ``home_base/name``; root only.

    The password field is set to ``*``: with ``UsePAM no`` OpenSSH refuses *key* logins to
    accounts whose password starts with ``!`` (locked), which is what ``useradd`` leaves.
    """
    if not is_root():
        raise FleetError(f"creating account {name!r} needs root")
    try:
        pwd.getpwnam(name)
    except KeyError:
        home_base = Path(home_base)
        home_base.mkdir(mode=0o755, parents=True, exist_ok=True)
        done = subprocess.run(
            ["useradd", "-m", "-d", str(home_base / name), "-s", "/bin/sh", name],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise FleetError(f"useradd {name} failed: {done.stderr.strip()}") from None
    done = subprocess.run(
        ["usermod", "-p", "*", name], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise FleetError(f"usermod -p '*' {name} failed: {done.stderr.strip()}")
    return pwd.getpwnam(name)


def remove_account(name: str) -> None:
    """Delete the local account ``name`` and its home; a missing account is fine."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    done = subprocess.run(
        ["userdel", "-r", "-f", name], capture_output=True, text=True, check=False, timeout=60
    )
    # 6: no such user (raced); 12: home could not be removed (already gone).
    if done.returncode not in (0, 6, 12):
        raise FleetError(f"userdel {name} failed: {done.stderr.strip()}")


# -- client -------------------------------------------------------------------------


def ssh_command(
    host: FleetHost, user: str, identity: Path, known_hosts: Path, command: str = "true"
) -> list[str]:
    """The exact real-``ssh`` argv ``ssh_login`` runs: no config, no agent, strict pinning."""
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(identity),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=20",
        "-p",
        str(host.port),
        f"{user}@{host.address}",
        command,
    ]


def ssh_login(
    host: FleetHost,
    user: str,
    identity: Path,
    known_hosts: Path,
    command: str = "true",
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Log in with the real OpenSSH client and run ``command``.

    Return code 0 means logged in (and the command succeeded), 255 means ssh itself
    failed (refused key, unknown host key, unreachable).  Raises
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds: a hang is a bug, not a refusal.
    """
    return subprocess.run(
        ssh_command(host, user, identity, known_hosts, command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def can_login(
    host: FleetHost,
    user: str,
    identity: Path,
    known_hosts: Path,
    command: str = "true",
    timeout: float = 60,
) -> bool:
    """Whether the real ``ssh`` client logs in and ``command`` exits 0."""
    return ssh_login(host, user, identity, known_hosts, command, timeout).returncode == 0


__all__ = [
    "FleetError",
    "FleetHost",
    "LocalFleet",
    "can_login",
    "ensure_account",
    "fleet_address",
    "free_port",
    "is_root",
    "remove_account",
    "safe_base_dir",
    "ssh_command",
    "ssh_login",
]
