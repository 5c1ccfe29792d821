"""Connections to managed hosts: pinned host keys, one identity, and the remote helper.

The agent never trusts a host it has not pinned: host keys come only from the
inventory's known_hosts file (``hostkeys.host_key_options``), ``config=[]`` keeps a
user's ``~/.ssh/config`` from weakening anything, and no SSH agent is consulted.  Over
each connection one ``remote.py`` process serves every request for that host.

``HostConnection`` is the SSH implementation of ``keyward.agent.transport.HostTransport``:
it sends the helper's requests and reads its JSON replies into the transport's typed
replies, anything malformed becoming ``HostProtocolError``.  ``Credentials`` is its
``Connector``.

A host behind jump hosts (``Host.jump``) is reached through asyncssh tunnels, each hop
checked against its own pinned key exactly like a host.  ``Hops`` shares the hop
connections between the hosts of one ``Credentials`` (one bastion connection for a
round's hosts, or for the daemon's links) and closes each when its last user closes.
A host with ``become = "sudo"`` runs the helper through ``sudo -n``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from keyward.agent.bootstrap import remote_command
from keyward.agent.hostkeys import host_key_options
from keyward.agent.remote import MAX_LINE, MAX_WRITE_FILES
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
from keyward.errors import HostError, HostProtocolError
from keyward.inventory.model import Hop, Host

REQUEST_TIMEOUT = 60.0
# The helper gives each file of a request this long (``remote.FILE_TIMEOUT``) and then
# reports that file alone as timed out; a read waits for every file's share, so that a
# few files that never answer fail alone instead of failing the whole host.
FILE_TIMEOUT = 10.0
# asyncssh's own list with AES-GCM first: the same ciphers (every one an OpenSSH default),
# only the preference differs. asyncssh implements chacha20-poly1305 with two new cipher
# objects and a Poly1305 per packet, AES-GCM in one call: a daemon pushing to thousands of
# hosts spent more of its CPU encrypting than anything else (docs/benchmarks.md).
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


@dataclass(frozen=True)
class Credentials:
    """What every connection uses: the agent's private key and the pinned host keys."""

    client_key: asyncssh.SSHKey
    known_hosts: asyncssh.SSHKnownHosts
    known_hosts_text: str
    connect_timeout: float
    python: str = "python3"
    hops: Hops = field(default_factory=lambda: Hops(), compare=False, repr=False)

    @property
    def agent_fingerprint(self) -> str:
        """SHA256 fingerprint of the key the agent really logs in with."""
        return str(self.client_key.get_fingerprint("sha256"))

    @classmethod
    def load(
        cls, identity: Path, known_hosts: Path, connect_timeout: float, python: str = "python3"
    ) -> Credentials:
        try:
            key = asyncssh.read_private_key(str(identity))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise HostError(f"cannot load the agent identity {identity}: {exc}") from None
        try:
            text = known_hosts.read_text()
        except OSError as exc:
            raise HostError(
                f"cannot read known_hosts {known_hosts}: {exc.strerror}; "
                "run 'keyward hosts scan --write'"
            ) from None
        return cls(key, asyncssh.import_known_hosts(text), text, connect_timeout, python)

    async def open(self, host: Host, *, keepalive: float = 0) -> HostConnection:
        """The ``Connector`` for real hosts: an SSH connection with these credentials."""
        return await HostConnection.open(host, self, keepalive=keepalive)


def read_timeout(files: int) -> float:
    """How long a read of ``files`` files may take: every file's share, and then some."""
    return max(REQUEST_TIMEOUT, FILE_TIMEOUT * files + REQUEST_TIMEOUT / 2)


# How much of the helper's request line (``remote.MAX_LINE``) one write_many may fill: a
# batch is split before it would not fit (only files near the size limit ever are).
WRITE_BATCH_BYTES = MAX_LINE // 2


@functools.lru_cache(maxsize=256)
def content_b64(content: bytes) -> str:
    """``content`` in base64, encoded once per distinct content.

    A push sends byte-identical content to every host with the same access (and each
    host's accounts often share it too), so the daemon encodes each distinct file once
    per round instead of once per host and file (docs/benchmarks.md).
    """
    return base64.b64encode(content).decode("ascii")


def write_batches(files: Sequence[WriteRequest]) -> list[list[WriteRequest]]:
    """``files`` grouped into write_many requests: one request unless they would not fit
    the helper's line or count limits."""
    batches: list[list[WriteRequest]] = [[]]
    size = 0
    for f in files:
        # JSON may escape a character of the names as six; the rest is plain ASCII.
        cost = len(content_b64(f.content)) + 6 * (len(f.account) + len(f.pattern)) + 256
        if batches[-1] and (size + cost > WRITE_BATCH_BYTES or len(batches[-1]) >= MAX_WRITE_FILES):
            batches.append([])
            size = 0
        batches[-1].append(f)
        size += cost
    return batches


def encode_entry(f: WriteRequest) -> str:
    """One ``write_many`` file entry as JSON, with its base64 content placed as it is.

    ``json.dumps`` scans every character of a string for escapes; a round's contents are
    tens of kilobytes per host, all base64 (letters, digits, ``+/=``: nothing to escape),
    and that scan was a sixth of the daemon's push. The content is ``content_b64``'s,
    base64.b64encode's own output; the other fields go through ``json.dumps``.
    ``tests/test_reconcile.py`` checks the line decodes to the request.
    """
    rest = {
        "account": f.account,
        "pattern": f.pattern,
        "expect_sha256": f.expect_sha256,
        "create_dir": True,
    }
    return f'{json.dumps(rest)[:-1]}, "content_b64": "{content_b64(f.content)}"}}'


class RemoteHelper:
    """The JSON-lines conversation with ``remote.py`` on one host."""

    def __init__(self, process: asyncssh.SSHClientProcess[str], host: str) -> None:
        self._process = process
        self._host = host
        self._next_id = 0
        self._lock = asyncio.Lock()

    async def call(self, op: str, timeout: float = REQUEST_TIMEOUT, **args: Any) -> dict[str, Any]:
        """Send one request (``args`` as its fields) and return the helper's answer."""
        fields = json.dumps(args)[1:-1]  # the object's members, without its braces
        return await self.call_encoded(op, fields, timeout)

    async def call_encoded(
        self, op: str, fields: str, timeout: float = REQUEST_TIMEOUT
    ) -> dict[str, Any]:
        """``call`` with the request's fields already encoded as JSON object members."""
        async with self._lock:
            self._next_id += 1
            head = f'{{"id": {self._next_id}, "op": {json.dumps(op)}'
            self._process.stdin.write(f"{head}, {fields}}}\n" if fields else f"{head}}}\n")
            try:
                # Not ``wait_for``: that wraps every request in a task of its own.
                async with asyncio.timeout(timeout):
                    line = await self._process.stdout.readline()
            except TimeoutError:
                raise HostError(f"{self._host}: no answer to {op} within {timeout:.0f}s") from None
            except UnicodeDecodeError:
                raise HostProtocolError(f"{self._host}: the answer to {op} is not UTF-8") from None
            if not line:
                raise HostError(f"{self._host}: the remote helper exited (is python3 installed?)")
            try:
                reply = json.loads(line)
            except ValueError:
                raise HostProtocolError(f"{self._host}: the answer to {op} is not JSON") from None
            if not isinstance(reply, dict):
                raise HostProtocolError(f"{self._host}: the answer to {op} is not a JSON object")
            if reply.get("id") != self._next_id:
                raise HostError(f"{self._host}: remote helper answered out of order")
            return reply

    async def close(self) -> None:
        try:
            self._process.stdin.write(json.dumps({"id": 0, "op": "bye"}) + "\n")
            self._process.stdin.write_eof()
            await asyncio.wait_for(self._process.wait_closed(), 5)
        except (OSError, asyncssh.Error, TimeoutError):
            self._process.close()


def _error_text(reply: dict[str, Any]) -> str:
    error = reply.get("error")
    if not isinstance(error, dict):
        return str(error or "unknown error")
    return str(error.get("message") or error.get("code") or "unknown error")


class HostConnection:
    """One authenticated SSH connection to a host, with its remote helper."""

    def __init__(
        self,
        host: Host,
        conn: asyncssh.SSHClientConnection,
        helper: RemoteHelper,
        release: Callable[[], None] = lambda: None,
    ):
        self.host = host
        self._conn = conn
        self.helper = helper
        # Hands the jump-host tunnel back to ``Hops`` once this connection is closed.
        self._release = release

    @classmethod
    async def open(cls, host: Host, creds: Credentials, *, keepalive: float = 0) -> HostConnection:
        if host_key_options(creds.known_hosts_text, host) is None:
            raise HostError(
                f"{host.name}: host key for {host.address}:{host.port} is not pinned; "
                "run 'keyward hosts scan --write' and review it"
            )
        tunnel, release = await creds.hops.acquire(host, host.jump, creds, keepalive)
        try:
            conn = await _connect(host.name, host, host.login, creds, keepalive, tunnel)
        except BaseException:
            release()
            raise
        sudo = host.become == "sudo"
        try:
            process = await conn.create_process(
                remote_command(creds.python, sudo=sudo), encoding="utf-8"
            )
            helper = RemoteHelper(process, host.name)
            hello = await helper.call("hello", timeout=creds.connect_timeout * 3)
            if not hello.get("ok"):
                raise HostError(f"{host.name}: remote helper failed: {_error_text(hello)}")
        except (OSError, asyncssh.Error) as exc:
            conn.close()
            release()
            raise HostError(f"{host.name}: cannot start the remote helper: {exc}") from None
        except HostError as exc:
            conn.close()
            release()
            if sudo and "remote helper exited" in str(exc):
                raise HostError(await _sudo_refusal(host, process)) from None
            raise
        return cls(host, conn, helper, release)

    async def read(self, files: Sequence[tuple[str, str]]) -> list[FileRead]:
        reply = await self.helper.call(
            "read",
            timeout=read_timeout(len(files)),
            files=[{"account": account, "pattern": pattern} for account, pattern in files],
        )
        if not reply.get("ok"):
            raise HostError(f"{self.host.name}: read failed: {_error_text(reply)}")
        entries = reply.get("files")
        if (
            not isinstance(entries, list)
            or len(entries) != len(files)
            or not all(isinstance(item, dict) for item in entries)
        ):
            raise HostProtocolError(
                f"{self.host.name}: the answer to read does not list every file"
            )
        result: list[FileRead] = []
        for (account, _), entry in zip(files, entries, strict=True):
            try:
                result.append(file_read(entry))
            except (TypeError, ValueError):
                raise HostProtocolError(
                    f"{self.host.name}: the content read from {account}'s file is not base64"
                ) from None
        return result

    async def write(
        self, account: str, pattern: str, content: bytes, expect_sha256: str | None
    ) -> WriteResult:
        reply = await self.helper.call(
            "write",
            account=account,
            pattern=pattern,
            content_b64=content_b64(content),
            expect_sha256=expect_sha256,
            create_dir=True,
        )
        return write_result(reply)

    async def write_many(self, files: Sequence[WriteRequest]) -> list[WriteResult]:
        results: list[WriteResult] = []
        if not files:
            return results
        for batch in write_batches(files):
            fields = '"files": [' + ", ".join(map(encode_entry, batch)) + "]"
            reply = await self.helper.call_encoded("write_many", fields, read_timeout(len(batch)))
            try:
                results += write_results(reply, len(batch))
            except ValueError as exc:
                raise HostProtocolError(f"{self.host.name}: {exc}") from None
        return results

    async def auth_log(
        self,
        source: str,
        *,
        cursor: str | None,
        position: Mapping[str, Any] | None,
        match: Sequence[str],
    ) -> AuthLogRead:
        reply = await self.helper.call(
            "auth_log",
            source=source,
            cursor=cursor,
            position=None if position is None else dict(position),
            match=list(match),
        )
        try:
            return auth_log_read(reply)
        except ValueError as exc:
            raise HostProtocolError(f"{self.host.name}: {exc}") from None

    async def sshd_config(self, user: str, config: str | None) -> SshdConfig:
        reply = await self.helper.call("sshd_config", user=user, config=config)
        try:
            return sshd_config_read(reply)
        except ValueError as exc:
            raise HostProtocolError(f"{self.host.name}: {exc}") from None

    def abort(self) -> None:
        self._conn.close()
        self._done()

    async def wait_closed(self) -> None:
        await self._conn.wait_closed()

    async def close(self) -> None:
        await self.helper.close()
        self._conn.close()
        with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
            await asyncio.wait_for(self._conn.wait_closed(), 5)
        self._done()

    def _done(self) -> None:
        release, self._release = self._release, lambda: None
        release()


async def _sudo_refusal(host: Host, process: asyncssh.SSHClientProcess[str]) -> str:
    """The one-line error for a helper that sudo did not start, with sudo's own words."""
    said = ""
    with contextlib.suppress(OSError, asyncssh.Error, TimeoutError, UnicodeDecodeError):
        said = await asyncio.wait_for(process.stderr.read(), 2)
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    reason = lines[-1] if lines else "the helper did not start"
    return (
        f"{host.name}: sudo -n refused to run the helper as root for {host.login} "
        f"({reason[:200]}); grant the sudoers entry in docs/operations.md; nothing was written"
    )


async def _connect(
    name: str,
    endpoint: Host | Hop,
    login: str,
    creds: Credentials,
    keepalive: float,
    tunnel: asyncssh.SSHClientConnection | None,
) -> asyncssh.SSHClientConnection:
    """One SSH login to a host or a hop, trusting only the key pinned for its endpoint.

    ``name`` starts every error: the host's, or the host's and the hop's for a jump host.
    """
    host_keys = host_key_options(creds.known_hosts_text, endpoint)
    if host_keys is None:
        raise HostError(
            f"{name}: host key for {endpoint.address}:{endpoint.port} is not pinned; "
            "run 'keyward hosts scan --write' and review it"
        )
    try:
        return await asyncio.wait_for(
            asyncssh.connect(
                endpoint.address,
                port=endpoint.port,
                tunnel=tunnel,
                username=login,
                client_keys=[creds.client_key],
                **host_keys,
                config=[],
                agent_path=None,
                agent_forwarding=False,
                x11_forwarding=False,
                preferred_auth="publickey",
                encryption_algs=CIPHERS,
                connect_timeout=creds.connect_timeout,
                login_timeout=creds.connect_timeout,
                keepalive_interval=keepalive or None,
                keepalive_count_max=3,
            ),
            timeout=creds.connect_timeout * 2,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise HostError(
            f"{name}: host key of {endpoint.address}:{endpoint.port} does not match the pinned "
            "key (changed or spoofed); nothing was written"
        ) from None
    except asyncssh.PermissionDenied:
        raise HostError(
            f"{name}: the agent's key was refused for {login}@{endpoint.address}"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise HostError(
            f"{name}: cannot connect to {endpoint.address}:{endpoint.port}: {reason}"
        ) from None


class _Tunnel:
    """One shared hop connection, the tunnel it goes through, and how many use it."""

    def __init__(self, chain: tuple[Hop, ...]) -> None:
        self.chain = chain
        self.parent: _Tunnel | None = None
        self.task: asyncio.Future[asyncssh.SSHClientConnection] | None = None
        self.users = 0

    def stale(self) -> bool:
        """Failed to open, or its connection has since been lost: open a new one."""
        if self.task is None or not self.task.done():
            return False
        return not _usable(self.task) or self.task.result().is_closed()


class Hops:
    """The jump-host connections of one ``Credentials``, shared and counted per hop chain.

    A chain (``Host.jump``) and each of its prefixes is one connection, opened by the first
    host that needs it and closed when the last connection through it closes, so a round's
    concurrent hosts share their bastion and nothing outlives its users.
    """

    def __init__(self) -> None:
        self._tunnels: dict[tuple[Hop, ...], _Tunnel] = {}

    async def acquire(
        self, host: Host | Hop, chain: tuple[Hop, ...], creds: Credentials, keepalive: float
    ) -> tuple[asyncssh.SSHClientConnection | None, Callable[[], None]]:
        """The connection to the last hop of ``chain`` (None for no hop), and its release.

        ``host`` is what the connection is for (a host, or a hop ``hosts scan`` asks for
        its key); errors start with its name.
        """
        try:
            conn, tunnel = await self._take(chain, creds, keepalive)
        except HostError as exc:
            # A hop's failure is shared by every host waiting for it: name this one.
            raise HostError(f"{host.name}: {exc}") from None
        if tunnel is None:
            return conn, lambda: None
        return conn, functools.partial(self._release, tunnel)

    async def _take(
        self, chain: tuple[Hop, ...], creds: Credentials, keepalive: float
    ) -> tuple[asyncssh.SSHClientConnection | None, _Tunnel | None]:
        if not chain:
            return None, None
        tunnel = self._tunnels.get(chain)
        if tunnel is None or tunnel.stale():
            tunnel = self._tunnels[chain] = _Tunnel(chain)
            tunnel.task = asyncio.ensure_future(self._open(tunnel, creds, keepalive))
        tunnel.users += 1
        task = tunnel.task
        try:
            if task is None:
                raise HostError(f"jump host {chain[-1].name} was not opened")
            return await asyncio.shield(task), tunnel
        except BaseException:
            self._release(tunnel)
            raise

    async def _open(
        self, tunnel: _Tunnel, creds: Credentials, keepalive: float
    ) -> asyncssh.SSHClientConnection:
        hop = tunnel.chain[-1]
        parent, tunnel.parent = await self._take(tunnel.chain[:-1], creds, keepalive)
        try:
            return await _connect(f"jump host {hop.name}", hop, hop.login, creds, keepalive, parent)
        except BaseException:
            if tunnel.parent is not None:
                self._release(tunnel.parent)
                tunnel.parent = None
            raise

    def _release(self, tunnel: _Tunnel) -> None:
        """One user is done; the last one closes the hop and releases the hop before it."""
        tunnel.users -= 1
        if tunnel.users > 0:
            return
        if self._tunnels.get(tunnel.chain) is tunnel:
            del self._tunnels[tunnel.chain]
        if tunnel.task is None:
            return
        if not tunnel.task.done():
            tunnel.task.cancel()
        elif _usable(tunnel.task):
            tunnel.task.result().close()
            if tunnel.parent is not None:
                self._release(tunnel.parent)


def _usable(task: asyncio.Future[asyncssh.SSHClientConnection]) -> bool:
    return not task.cancelled() and task.exception() is None
