"""Real OpenSSH ``sshd`` processes on loopback: a fleet for the demo, the tests and benchmarks.

keyward's claims are about what a real ``sshd`` accepts, so the demo and the tests run
real ones instead of mocks.  Each host is one ``sshd -D -e`` (the binary ``find_sshd``
names) on its own 127.0.0.x address and free port, with its own ed25519 host key and
config, logging to ``{dir}/sshd.log`` so tests can read the VERBOSE authentication lines.

Only the standard library and ``subprocess`` are used: this module ships in the package
(``keyward demo`` needs it) and must not drag in test or logging dependencies.

Processes are torn down reliably: ``stop()`` signals every descendant of each listener
(per-connection children call ``setsid`` and so escape a process-group kill), escalates
from SIGTERM to SIGKILL, and is also registered with ``atexit`` while the fleet runs.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path

from keyward.testing.fleet import (
    FleetBase,
    FleetError,
    FleetHost,
    fleet_address,
    free_port,
    is_root,
    strict_modes_problem,
)
from keyward.testing.processes import alive, freeze_tree, signal_all
from keyward.testing.sshd import SSHD_DIRS, find_sshd

START_TIMEOUT = 10.0
"""Seconds to wait for one sshd to listen before giving up with its log tail."""

STOP_TIMEOUT = 5.0
"""Seconds to wait after SIGTERM before SIGKILL."""

_QUIET_LEVELS = frozenset({"QUIET", "FATAL", "ERROR"})
"""Log levels at which sshd does not log "Server listening on", so we probe TCP instead."""


def sshd_binary() -> str:
    """The ``sshd`` to start: ``find_sshd()``'s answer, or a FleetError saying where it looked."""
    sshd = find_sshd()
    if sshd is None:
        raise FleetError(
            "OpenSSH's sshd is not installed (looked on $PATH and in "
            + ", ".join(SSHD_DIRS)
            + "; Debian/Ubuntu: apt-get install openssh-server)"
        )
    return sshd


def _tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages (empty if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])


class _Server:
    """One host's static setup plus its (possibly absent) running process."""

    def __init__(self, host: FleetHost) -> None:
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self.known_children: set[int] = set()


class LocalFleet(FleetBase):
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
        self._sshd = ""  # found by start()

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Set up and start every host; on any failure stop what was started and re-raise."""
        if self._servers:
            raise FleetError("fleet already started")
        self._sshd = sshd_binary()
        if "{dir}" in self.authorized_keys_template:
            self.base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            problem = strict_modes_problem(self.base_dir)
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
            [self._sshd, "-t", "-f", str(host.sshd_config)],
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
                [self._sshd, "-D", "-e", "-f", str(host.sshd_config)],
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
        pids = freeze_tree(proc.pid) if proc.poll() is None else []
        signal_all(pids, signal.SIGTERM)
        signal_all(pids, signal.SIGCONT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            proc.poll()
            if proc.returncode is not None and not any(alive(p) for p in pids):
                break
            time.sleep(0.02)
        else:
            signal_all([p for p in pids if alive(p)], signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        server.proc = None


__all__ = ["LocalFleet", "sshd_binary"]
