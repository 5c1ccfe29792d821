"""SIMULATED managed hosts: SSH servers that answer the host helper's protocol from memory.

A simulation, not a host: it exists to measure the *controller* (the daemon) at fleet sizes
this machine cannot hold with real OpenSSH sshd (about 10 MB per real host). Every simulated
host is a real SSH endpoint (asyncssh) on its own loopback address, with its own ed25519 host
key that the agent pins from known_hosts like any host, and it admits only the public keys in
its login account's in-memory authorized_keys file. The agent's connection, the helper's exec
request and the JSON-lines conversation are the real ones; what is simulated is the far end
of the channel: instead of running ``remote.py`` on a file system, the request is answered by
``keyward.testing.fakehost.FakeHost`` (the in-memory model of the helper that
``tests/test_fakehost.py`` compares field by field with ``remote.py``). So the daemon's CPU,
memory, SSH and protocol costs are real; the hosts' costs (sshd, a Python helper per
connection, file system work) are not, and nothing measured here says anything about them.

Many hosts share one process (one asyncio loop). ``python -m keyward.testing.simhost SPEC``
serves the hosts a JSON spec describes in a separate process, so a benchmark measures the
daemon's own CPU and RSS apart from the simulators'; it writes the hosts' known_hosts lines
to ``SPEC.known_hosts`` and then ``SPEC.ready``, and answers a small control protocol (JSON
lines on a Unix socket) that lets the benchmark time when every simulated file holds, or no
longer holds, a key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from keyward import event_loop
from keyward.agent import remote
from keyward.authorized_keys import parse_authorized_keys
from keyward.testing.fakehost import FakeHost

DEFAULT_PATTERN = "%h/.ssh/authorized_keys"
LOGIN_TIMEOUT = 30.0
MEMO_CONTENTS = 256
"""Distinct file contents a simulator process keeps decoded (``Simulator._write_args``)."""


@dataclass
class SimHost:
    """One simulated host: where it listens, its host key, and its in-memory state."""

    name: str
    address: str
    port: int
    host_key: asyncssh.SSHKey
    fake: FakeHost
    login: str = "root"
    pattern: str = DEFAULT_PATTERN
    acceptor: asyncssh.SSHAcceptor | None = None

    def known_hosts_line(self) -> str:
        """The known_hosts line pinning this host (bracketed form unless on port 22)."""
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        kind, blob = self.host_key.export_public_key("openssh").decode().split()[:2]
        return f"{name} {kind} {blob}"

    def admits(self, username: str, key: asyncssh.SSHKey) -> bool:
        """sshd's decision: the login account, a key listed in its (first) file."""
        if username != self.login:
            return False
        content = self.fake.content(self.login, self.pattern)
        if content is None:
            return False
        wanted = str(key.get_fingerprint("sha256"))
        return any(
            line.key is not None and line.key.fingerprint == wanted
            for line in parse_authorized_keys(content)
        )


@dataclass
class Watch:
    """Which watched files do not yet satisfy "``needle`` is present" (or absent)."""

    needle: bytes
    present: bool
    remaining: set[tuple[str, str]] = field(default_factory=set)  # (host name, path)
    done_at: float | None = None  # time.monotonic() (system-wide) when the last one did

    def check(self, host: str, path: str, content: bytes | None) -> None:
        if (host, path) not in self.remaining:
            return
        if (content is not None and self.needle in content) == self.present:
            self.remaining.discard((host, path))
            if not self.remaining:
                self.done_at = time.monotonic()


class Simulator:
    """The simulated hosts of one process, their listeners and the control watches."""

    def __init__(self, hosts: Sequence[SimHost]) -> None:
        self.hosts = {h.name: h for h in hosts}
        self.watches: list[Watch] = []
        self.requests = 0
        self.connections = 0
        # base64 text -> content, for ``_write_args`` (bounded: cleared when full).
        self.contents: dict[str, bytes] = {}

    # -- the helper's protocol, answered from memory

    def answer(self, host: SimHost, line: bytes) -> tuple[dict[str, Any], bool]:
        """The reply to one request line, as ``remote.serve`` frames it."""
        self.requests += 1
        try:
            req = json.loads(line)
        except ValueError as exc:
            return remote._error(None, "bad_json", f"malformed JSON: {exc}"), False
        if not isinstance(req, dict):
            return remote._error(None, "bad_request", "a request must be a JSON object"), False
        rid, op = req.get("id"), req.get("op")
        if op == "bye":
            return {"id": rid, "ok": True}, True
        try:
            if op == "hello":
                reply = remote.op_hello(req)
                reply["hostname"] = host.name
            elif op == "read":
                reply = self._read(host, req)
            elif op == "write":
                reply = self._write(host, req)
            elif op == "write_many":
                reply = self._write_many(host, req)
            elif op == "auth_log":
                reply = self._auth_log(host, req)
            elif op == "sshd_config":
                reply = host.fake.sshd_config()
            else:
                return remote._error(rid, "unknown_op", f"unknown op {op!r}"), False
        except remote.BadRequest as exc:
            return remote._error(rid, "bad_request", str(exc)), False
        out: dict[str, Any] = {"id": rid}
        out.update(reply)
        return out, False

    def _read(self, host: SimHost, req: dict[str, Any]) -> dict[str, Any]:
        files = req.get("files")
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise remote.BadRequest("files must be a list of {account, pattern} objects")
        if len(files) > remote.MAX_READ_FILES:
            raise remote.BadRequest(
                f"at most {remote.MAX_READ_FILES} files per read request, got {len(files)}"
            )
        remote._timeout_arg(req)
        return {
            "ok": True,
            "files": [host.fake.read_one(f.get("account"), f.get("pattern")) for f in files],
        }

    def _write(self, host: SimHost, req: dict[str, Any]) -> dict[str, Any]:
        content, expect, _ = self._write_args(req)
        remote._timeout_arg(req)
        reply = host.fake.write_one(req.get("account"), req.get("pattern"), content, expect)
        self._written(host, reply)
        return reply

    def _write_many(self, host: SimHost, req: dict[str, Any]) -> dict[str, Any]:
        items, _ = remote.write_many_args(req, self._write_args)
        replies = []
        for f, content, expect, _create in items:
            reply = host.fake.write_one(f.get("account"), f.get("pattern"), content, expect)
            self._written(host, reply)
            replies.append(reply)
        return {"ok": True, "files": replies}

    def _write_args(self, f: dict[str, Any]) -> tuple[bytes, str | None, bool]:
        """``remote._write_args``, with each distinct content decoded once per process.

        The daemon sends the same file to thousands of hosts, and decoding (and validating)
        its base64 for every one was a fifth of a simulator's CPU: a cost of the simulation,
        which a real host pays on its own CPU, taken from the two the daemon runs on. A
        content seen before is checked as an empty one (every other field as sent) and then
        handed back; a new one goes through whole, and is kept only once it passed.
        """
        text = f.get("content_b64")
        known = self.contents.get(text) if isinstance(text, str) else None
        if known is not None:
            _, expect, create_dir = remote._write_args({**f, "content_b64": ""})
            return known, expect, create_dir
        content, expect, create_dir = remote._write_args(f)
        if len(self.contents) >= MEMO_CONTENTS:
            self.contents.clear()
        self.contents[f["content_b64"]] = content
        return content, expect, create_dir

    def _written(self, host: SimHost, reply: dict[str, Any]) -> None:
        """Tell the watches what the file written (or refused) holds now."""
        path = reply.get("path")
        if isinstance(path, str):
            now = host.fake.entries.get(path)
            for watch in self.watches:
                watch.check(host.name, path, None if now is None else now.content)

    def _auth_log(self, host: SimHost, req: dict[str, Any]) -> dict[str, Any]:
        source = req.get("source", "auto")
        cursor = req.get("cursor")
        position = req.get("position")
        match = req.get("match") or ()
        return host.fake.auth_log(
            source if isinstance(source, str) else "auto",
            cursor if isinstance(cursor, str) else None,
            position if isinstance(position, dict) else None,
            [m for m in match if isinstance(m, str)],
        )

    # -- SSH

    async def _session(self, host: SimHost, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """The exec request that would start ``remote.py``: answered here, line by line."""
        try:
            while True:
                line = await process.stdin.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                reply, stop = self.answer(host, line)
                process.stdout.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
                if stop:
                    break
        except (OSError, asyncssh.Error, asyncio.IncompleteReadError):
            pass
        finally:
            process.exit(0)

    async def listen(self, host: SimHost) -> None:
        sim = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                sim.connections += 1

            def connection_lost(self, exc: Exception | None) -> None:
                sim.connections -= 1

            def begin_auth(self, username: str) -> bool:
                return True

            def public_key_auth_supported(self) -> bool:
                return True

            def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
                return host.admits(username, key)

        host.acceptor = await asyncssh.create_server(
            Server,
            host.address,
            host.port,
            server_host_keys=[host.host_key],
            process_factory=lambda process: self._session(host, process),
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
            keepalive_interval=0,
        )
        host.port = host.acceptor.get_port()

    async def start(self) -> None:
        for host in self.hosts.values():
            await self.listen(host)

    async def stop(self) -> None:
        for host in self.hosts.values():
            if host.acceptor is not None:
                host.acceptor.close()
        for host in self.hosts.values():
            if host.acceptor is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(host.acceptor.wait_closed(), 5)
                host.acceptor = None

    # -- the control protocol (benchmarks)

    def watch(self, needle: bytes, present: bool, accounts: Iterable[str]) -> Watch:
        watch = Watch(needle, present)
        for host in self.hosts.values():
            for account in accounts:
                path = host.fake.path_of(account, host.pattern)
                watch.remaining.add((host.name, path))
                entry = host.fake.entries.get(path)
                watch.check(host.name, path, None if entry is None else entry.content)
        if not watch.remaining and watch.done_at is None:
            watch.done_at = time.monotonic()
        self.watches = [watch]
        return watch

    def control(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "watch":
            made = self.watch(
                base64.b64decode(req["needle_b64"]), bool(req["present"]), req["accounts"]
            )
            return {"ok": True, "remaining": len(made.remaining)}
        if op == "status":
            watch = self.watches[0] if self.watches else None
            return {
                "ok": True,
                "hosts": len(self.hosts),
                "connections": self.connections,
                "requests": self.requests,
                "remaining": None if watch is None else len(watch.remaining),
                "done_at": None if watch is None else watch.done_at,
            }
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError, binascii.Error):
            while line := await reader.readline():
                writer.write(json.dumps(self.control(json.loads(line))).encode() + b"\n")
                await writer.drain()
        writer.close()


def build_host(
    name: str,
    address: str,
    port: int,
    agent_key_line: str,
    accounts: Sequence[str],
    login: str = "root",
    content: bytes = b"",
) -> SimHost:
    """A simulated host whose login account lets the agent in; other files start empty."""
    fake = FakeHost(name)
    for uid, account in enumerate(accounts, start=1000):
        if account != "root":
            fake.add_account(account, uid)
    for account in dict.fromkeys((*accounts, login)):
        path = fake.path_of(account, DEFAULT_PATTERN)
        if account == login:
            fake.put(path, agent_key_line.strip().encode() + b"\n" + content)
        elif content:
            fake.put(path, content)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    return SimHost(name, address, port, host_key, fake, login)


def address_of(index: int, second: int = 77) -> str:
    """127.<second>.<hi>.<lo> for ``index`` 0..65023, skipping .0 and .255 in the last byte."""
    hi, lo = divmod(index, 254)
    return f"127.{second}.{hi}.{lo + 1}"


async def serve(spec_path: Path) -> int:
    """Serve the hosts of a JSON spec until SIGTERM (the benchmark's simulator process)."""
    spec = json.loads(spec_path.read_text())
    hosts = [
        build_host(
            f"{spec['prefix']}{i + 1}",
            address_of(i, spec.get("second", 77)),
            spec["port"],
            spec["agent_key"],
            spec["accounts"],
            spec.get("login", "root"),
        )
        for i in range(spec["first"], spec["first"] + spec["count"])
    ]
    sim = Simulator(hosts)
    await sim.start()
    control = await asyncio.start_unix_server(sim._control_client, str(spec["control"]))
    known = "".join(h.known_hosts_line() + "\n" for h in hosts)
    Path(f"{spec_path}.known_hosts").write_text(known)
    Path(f"{spec_path}.ready").write_text(str(len(hosts)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    control.close()
    await sim.stop()
    return 0


def main(argv: list[str]) -> int:
    # Words after the spec are ignored: a benchmark marks its processes with one, so
    # that its clean-up can tell them from anyone else's.
    if not argv:
        print("usage: python -m keyward.testing.simhost SPEC.json [MARKER...]", file=sys.stderr)
        return 2
    return event_loop.run(serve(Path(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
