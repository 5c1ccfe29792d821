"""SSH servers inside this process: a fleet for ``keyward demo`` where OpenSSH's sshd is missing.

``EmbeddedFleet`` offers the part of ``LocalFleet``'s surface the demo uses (``hosts``,
``host(name)``, ``start()``, ``stop()``, context manager, ``known_hosts_text()``) but runs
``count`` asyncssh servers on a background thread with its own asyncio loop, so synchronous
code and its subprocesses (the keyward CLI, the agent) can reach them.  Each host listens on
its own 127.0.0.x address and a kernel-chosen port, with its own ed25519 host key.

What a host accepts is what its authorized_keys file says, read again on every
authentication attempt:

* only the OS user running this process may log in, only with a public key;
* the file is the host's ``AuthorizedKeysFile`` (central layout ``{dir}/keys/%u`` by default,
  so ``FleetHost.authorized_keys_path(user)`` names it);
* its lines are honoured as sshd would honour them (``embedded_keys``).

An exec request runs ``/bin/sh -c COMMAND`` as the current user with stdin, stdout and stderr
relayed unbuffered in both directions (the agent's remote helper speaks JSON lines this way)
and the exit status returned.  Shells, subsystems, ptys and forwarding are refused.
Authentication results are appended to ``{dir}/sshd.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from keyward.testing.embedded_keys import FileAuthorizedKeys
from keyward.testing.fleet import FleetBase, FleetError, FleetHost, fleet_address

START_TIMEOUT = 15.0
"""Seconds to wait for the loop thread and every listener to come up."""

STOP_TIMEOUT = 5.0
"""Seconds to wait for sessions and the loop thread to end on ``stop()``."""

LOGIN_TIMEOUT = 15.0
"""Seconds a client has to authenticate before the server drops it."""

_CHUNK = 65536

T = TypeVar("T")


class _HostServer(asyncssh.SSHServer):
    """Per-connection server object: public key auth for the current user only."""

    def __init__(self, runtime: _HostRuntime) -> None:
        self._runtime = runtime
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = "?"
        self._user = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        if peer:
            self._peer = f"{peer[0]} port {peer[1]}"
        self._runtime.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._runtime.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        self._user = username
        assert self._conn is not None
        if username == self._runtime.user:
            path = self._runtime.host.authorized_keys_path(username)
            self._conn.set_authorized_keys(FileAuthorizedKeys(path))
        else:
            self._runtime.log(f"Invalid user {username} from {self._peer}")
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Only reached when the authorized keys did not accept the key.
        self._runtime.log(
            f"Refused publickey for {username} from {self._peer}: {key.get_fingerprint('sha256')}"
        )
        return False

    def auth_completed(self) -> None:
        self._runtime.log(f"Accepted publickey for {self._user} from {self._peer}")


class _HostRuntime:
    """Everything one embedded host needs at run time (touched only on the loop thread)."""

    def __init__(self, host: FleetHost, host_key: asyncssh.SSHKey, user: str) -> None:
        self.host = host
        self.host_key = host_key
        self.user = user
        self.acceptor: asyncssh.SSHAcceptor | None = None
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.children: set[asyncio.subprocess.Process] = set()

    def log(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with contextlib.suppress(OSError), open(self.host.log_file, "a") as fh:
            fh.write(f"{stamp} {self.host.name}: {text}\n")

    def session_env(self) -> dict[str, str]:
        pw = pwd.getpwnam(self.user)
        return {
            "HOME": pw.pw_dir,
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": pw.pw_shell or "/bin/sh",
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }

    async def handle_process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command
        if command is None:
            process.stderr.write(b"this embedded SSH server only runs commands (no shell)\n")
            process.exit(1)
            return
        home = pwd.getpwnam(self.user).pw_dir
        try:
            child = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.session_env(),
                cwd=home if os.path.isdir(home) else "/",
                start_new_session=True,
            )
        except OSError as exc:
            process.stderr.write(f"cannot run /bin/sh: {exc}\n".encode())
            process.exit(127)
            return
        self.children.add(child)
        feeder = asyncio.ensure_future(_feed_stdin(process, child))
        try:
            assert child.stdout is not None and child.stderr is not None
            await asyncio.gather(
                _relay(child.stdout, process.stdout),
                _relay(child.stderr, process.stderr),
            )
            status = await child.wait()
            if status < 0:
                process.exit(128 - status)
            else:
                process.exit(status)
        except (OSError, asyncssh.Error):
            pass  # the client went away; the child is killed below
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            await _kill_child(child)
            self.children.discard(child)


async def _feed_stdin(
    process: asyncssh.SSHServerProcess[bytes], child: asyncio.subprocess.Process
) -> None:
    """Channel stdin -> the child's stdin, chunk by chunk as it arrives; EOF closes it."""
    assert child.stdin is not None
    try:
        while True:
            data = await process.stdin.read(_CHUNK)
            if not data:
                break
            child.stdin.write(data)
            await child.stdin.drain()
    except (OSError, asyncssh.Error):
        pass
    finally:
        with contextlib.suppress(OSError):
            child.stdin.close()


async def _relay(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
    """The child's output -> the channel, forwarding each chunk as soon as it is read."""
    while True:
        data = await source.read(_CHUNK)
        if not data:
            return
        sink.write(data)
        await sink.drain()


async def _kill_child(child: asyncio.subprocess.Process) -> None:
    """Kill a session's process group if it is still running, and reap it."""
    if child.returncode is None:
        with contextlib.suppress(OSError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            child.kill()
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(child.wait(), STOP_TIMEOUT)


class EmbeddedFleet(FleetBase):
    """``count`` in-process asyncssh servers on loopback, started by ``start()``.

    The surface mirrors ``LocalFleet`` for what the demo needs.  ``authorized_keys_file``
    is a template like LocalFleet's: ``{dir}`` and ``{name}`` are replaced per host and
    ``%u`` / ``%h`` / ``%%`` are expanded for the user at each login.
    """

    def __init__(
        self,
        base_dir: Path,
        count: int,
        *,
        authorized_keys_file: str = "{dir}/keys/%u",
        first_address: int = 10,
        name_prefix: str = "h",
    ) -> None:
        if count < 0:
            raise FleetError(f"fleet size must be >= 0, got {count}")
        self.base_dir = Path(base_dir)
        self.count = count
        self.authorized_keys_template = authorized_keys_file
        self.first_address = first_address
        self.name_prefix = name_prefix
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self._runtimes: dict[str, _HostRuntime] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Set up every host and start listening; on failure stop everything and re-raise."""
        if self._loop is not None:
            raise FleetError("fleet already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="keyward-embedded-ssh", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            self.stop()
            raise FleetError("the embedded SSH loop did not start")
        self._register_atexit()
        try:
            self.base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            for i in range(self.count):
                runtime = self._setup_host(i)
                self._runtimes[runtime.host.name] = runtime
                self._call(self._listen(runtime), START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close every listener and session, kill session processes, end the loop; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown(), STOP_TIMEOUT * 3)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT)
        if loop is not None and (thread is None or not thread.is_alive()):
            loop.close()
        self._loop = None
        self._thread = None
        self._unregister_atexit()

    # -- queries --------------------------------------------------------------------

    @property
    def hosts(self) -> list[FleetHost]:
        """All hosts in address order."""
        return [runtime.host for runtime in self._runtimes.values()]

    def host(self, name: str) -> FleetHost:
        """The host called ``name``."""
        try:
            return self._runtimes[name].host
        except KeyError:
            raise FleetError(f"no fleet host named {name!r}") from None

    # -- internals ------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the fleet's loop and wait for its result."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise FleetError(f"embedded SSH operation did not finish within {timeout:g}s") from None

    def _setup_host(self, i: int) -> _HostRuntime:
        name = f"{self.name_prefix}{i + 1}"
        address = fleet_address(self.first_address + i)
        hdir = self.base_dir / name
        hdir.mkdir(mode=0o755, parents=True, exist_ok=True)
        hdir.chmod(0o755)
        keys = hdir / "keys"
        keys.mkdir(mode=0o755, exist_ok=True)
        keys.chmod(0o755)
        key_path = hdir / "ssh_host_ed25519_key"
        if key_path.exists():
            host_key = asyncssh.read_private_key(str(key_path))
        else:
            host_key = asyncssh.generate_private_key("ssh-ed25519")
            host_key.write_private_key(str(key_path))
            key_path.chmod(0o600)
            host_key.write_public_key(f"{key_path}.pub")
        pub_fields = host_key.export_public_key("openssh").decode().split()
        akf = self.authorized_keys_template.replace("{dir}", str(hdir)).replace("{name}", name)
        host = FleetHost(
            name=name,
            address=address,
            port=0,  # replaced once the listener has its kernel-chosen port
            host_key_pub=f"{pub_fields[0]} {pub_fields[1]}",
            sshd_config=hdir / "sshd_config",  # never written: nothing reads it
            dir=hdir,
            authorized_keys_file=akf,
        )
        return _HostRuntime(host, host_key, self.user)

    async def _listen(self, runtime: _HostRuntime) -> None:
        host = runtime.host
        try:
            acceptor = await asyncssh.create_server(
                lambda: _HostServer(runtime),
                host.address,
                0,
                server_host_keys=[runtime.host_key],
                process_factory=runtime.handle_process,
                encoding=None,
                config=[],
                password_auth=False,
                kbdint_auth=False,
                host_based_auth=False,
                gss_host=None,
                allow_pty=False,
                agent_forwarding=False,
                x11_forwarding=False,
                allow_scp=False,
                login_timeout=LOGIN_TIMEOUT,
            )
        except OSError as exc:
            raise FleetError(f"cannot listen on {host.address} for {host.name}: {exc}") from None
        runtime.acceptor = acceptor
        port = acceptor.get_port()
        runtime.host = FleetHost(
            name=host.name,
            address=host.address,
            port=port,
            host_key_pub=host.host_key_pub,
            sshd_config=host.sshd_config,
            dir=host.dir,
            authorized_keys_file=host.authorized_keys_file,
        )
        runtime.log(f"Server listening on {host.address} port {port}.")

    async def _shutdown(self) -> None:
        for runtime in self._runtimes.values():
            if runtime.acceptor is not None:
                runtime.acceptor.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(runtime.acceptor.wait_closed(), STOP_TIMEOUT)
                runtime.acceptor = None
        for runtime in self._runtimes.values():
            for conn in list(runtime.connections):
                conn.abort()
            await asyncio.gather(
                *(_kill_child(child) for child in list(runtime.children)),
                return_exceptions=True,
            )
        # Let the aborted connections' tasks finish before the loop stops.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT)


__all__ = ["EmbeddedFleet"]
