"""Connections to managed hosts: pinned host keys, one identity, and the remote helper.

The agent never trusts a host it has not pinned: host keys come only from the
inventory's known_hosts file (``hostkeys.host_key_options``), ``config=[]`` keeps a
user's ``~/.ssh/config`` from weakening anything, and no SSH agent is consulted.  Over
each connection one ``remote.py`` process serves every request for that host.

``HostConnection`` is the SSH implementation of ``keyward.agent.transport.HostTransport``:
it sends the helper's requests and reads its JSON replies into the transport's typed
replies, anything malformed becoming ``HostProtocolError``.  ``Credentials`` is its
``Connector``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from keyward.agent.bootstrap import remote_command
from keyward.agent.hostkeys import host_key_options
from keyward.agent.transport import (
    AuthLogRead,
    FileRead,
    SshdConfig,
    WriteResult,
    auth_log_read,
    file_read,
    sshd_config_read,
    write_result,
)
from keyward.errors import HostError, HostProtocolError
from keyward.inventory.model import Host

REQUEST_TIMEOUT = 60.0
# The helper gives each file of a request this long (``remote.FILE_TIMEOUT``) and then
# reports that file alone as timed out; a read waits for every file's share, so that a
# few files that never answer fail alone instead of failing the whole host.
FILE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Credentials:
    """What every connection uses: the agent's private key and the pinned host keys."""

    client_key: asyncssh.SSHKey
    known_hosts: asyncssh.SSHKnownHosts
    known_hosts_text: str
    connect_timeout: float
    python: str = "python3"

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


class RemoteHelper:
    """The JSON-lines conversation with ``remote.py`` on one host."""

    def __init__(self, process: asyncssh.SSHClientProcess[str], host: str) -> None:
        self._process = process
        self._host = host
        self._next_id = 0
        self._lock = asyncio.Lock()

    async def call(self, op: str, timeout: float = REQUEST_TIMEOUT, **args: Any) -> dict[str, Any]:
        async with self._lock:
            self._next_id += 1
            request = {"id": self._next_id, "op": op, **args}
            self._process.stdin.write(json.dumps(request) + "\n")
            try:
                line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
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

    def __init__(self, host: Host, conn: asyncssh.SSHClientConnection, helper: RemoteHelper):
        self.host = host
        self._conn = conn
        self.helper = helper

    @classmethod
    async def open(cls, host: Host, creds: Credentials, *, keepalive: float = 0) -> HostConnection:
        host_keys = host_key_options(creds.known_hosts_text, host)
        if host_keys is None:
            raise HostError(
                f"{host.name}: host key for {host.address}:{host.port} is not pinned; "
                "run 'keyward hosts scan --write' and review it"
            )
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    host.address,
                    port=host.port,
                    username=host.login,
                    client_keys=[creds.client_key],
                    **host_keys,
                    config=[],
                    agent_path=None,
                    agent_forwarding=False,
                    x11_forwarding=False,
                    preferred_auth="publickey",
                    connect_timeout=creds.connect_timeout,
                    login_timeout=creds.connect_timeout,
                    keepalive_interval=keepalive or None,
                    keepalive_count_max=3,
                ),
                timeout=creds.connect_timeout * 2,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise HostError(
                f"{host.name}: host key of {host.address}:{host.port} does not match the pinned "
                "key (changed or spoofed); nothing was written"
            ) from None
        except asyncssh.PermissionDenied:
            raise HostError(
                f"{host.name}: the agent's key was refused for {host.login}@{host.address}"
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise HostError(
                f"{host.name}: cannot connect to {host.address}:{host.port}: {reason}"
            ) from None
        try:
            process = await conn.create_process(remote_command(creds.python), encoding="utf-8")
            helper = RemoteHelper(process, host.name)
            hello = await helper.call("hello", timeout=creds.connect_timeout * 3)
            if not hello.get("ok"):
                raise HostError(f"{host.name}: remote helper failed: {_error_text(hello)}")
        except (OSError, asyncssh.Error) as exc:
            conn.close()
            raise HostError(f"{host.name}: cannot start the remote helper: {exc}") from None
        except HostError:
            conn.close()
            raise
        return cls(host, conn, helper)

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
            content_b64=base64.b64encode(content).decode("ascii"),
            expect_sha256=expect_sha256,
            create_dir=True,
        )
        return write_result(reply)

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

    async def wait_closed(self) -> None:
        await self._conn.wait_closed()

    async def close(self) -> None:
        await self.helper.close()
        self._conn.close()
        with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
            await asyncio.wait_for(self._conn.wait_closed(), 5)
