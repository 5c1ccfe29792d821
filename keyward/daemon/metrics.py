"""Prometheus metrics for the daemon, served on a loopback address only.

The endpoint is served by a small HTTP responder on the daemon's own event loop, not by
``prometheus_client.start_http_server``: that one starts a thread per connection with no
limit, so any local user could make the daemon hold thousands of threads by opening
connections and never finishing a request. Here at most ``MAX_CONNECTIONS`` requests are
served at once (more are closed at once), each must arrive within ``REQUEST_TIMEOUT``
seconds and ``MAX_REQUEST_BYTES``, and every answer closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from keyward.errors import UsageError

MAX_CONNECTIONS = 8
REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 8192
SD_LISTEN_FDS_START = 3  # the first socket systemd passes (sd_listen_fds(3))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.hosts_total = Gauge("keyward_hosts", "Managed hosts", registry=self.registry)
        self.hosts_connected = Gauge(
            "keyward_hosts_connected", "Hosts with an open connection", registry=self.registry
        )
        self.pending = Gauge(
            "keyward_pending_changes",
            "Files whose desired content is not yet confirmed",
            registry=self.registry,
        )
        self.propagation = Histogram(
            "keyward_propagation_seconds",
            "From a registry commit to read-back confirmation on every connected host",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.failures = Counter(
            "keyward_push_failures_total", "Host syncs that failed", registry=self.registry
        )
        self.last_verification = 0.0
        age = Gauge(
            "keyward_last_full_verification_age_seconds",
            "Seconds since the last full verification pass finished",
            registry=self.registry,
        )
        age.set_function(
            lambda: time.time() - self.last_verification if self.last_verification else float("nan")
        )


class ClusterMetrics:
    """Per daemon and per shard, when several daemons share a fleet (PostgreSQL).

    Every daemon serves its own endpoint, so each series is this daemon's; ``member``
    on ``keyward_cluster_member_info`` says which daemon it is. Per-shard series exist
    only for the shards this daemon holds (at most a few hundred, of 1,024).
    """

    def __init__(self, registry: CollectorRegistry, member: str) -> None:
        info = Gauge(
            "keyward_cluster_member_info",
            "This daemon's member id (always 1)",
            ["member"],
            registry=registry,
        )
        info.labels(member=member).set(1)
        self.members_live = Gauge(
            "keyward_cluster_members_live", "Live daemons, as this one sees them", registry=registry
        )
        self.shards_held = Gauge(
            "keyward_cluster_shards_held", "Shards whose lease this daemon holds", registry=registry
        )
        self.shard_hosts = Gauge(
            "keyward_shard_hosts",
            "Hosts in a shard this daemon holds",
            ["shard"],
            registry=registry,
        )
        self.shard_token = Gauge(
            "keyward_shard_lease_token",
            "Fencing token of a lease this daemon holds",
            ["shard"],
            registry=registry,
        )
        self.shard_pushes = Counter(
            "keyward_shard_host_syncs",
            "Host syncs in a shard this daemon holds, by outcome",
            ["shard", "outcome"],
            registry=registry,
        )
        self.acquired = Counter("keyward_lease_acquired", "Shard leases taken", registry=registry)
        self.lost = Counter(
            "keyward_lease_lost",
            "Shard leases found lost (taken over or expired)",
            registry=registry,
        )
        self.released = Counter(
            "keyward_lease_released", "Shard leases handed over", registry=registry
        )
        self.fenced = Counter(
            "keyward_writes_fenced",
            "File writes not made because the lease was not confirmed",
            registry=registry,
        )
        self.heartbeat_failures = Counter(
            "keyward_cluster_heartbeat_failures",
            "Heartbeats the registry did not take",
            registry=registry,
        )

    def forget_shard(self, shard: int) -> None:
        for gauge in (self.shard_hosts, self.shard_token):
            with contextlib.suppress(KeyError):
                gauge.remove(str(shard))


def parse_loopback(address: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` -> (host, port); anything but a loopback address is refused."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit():
        raise UsageError("--metrics must be ADDRESS:PORT, e.g. 127.0.0.1:9464")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError("--metrics must use a loopback IP address") from None
    if not ip.is_loopback:
        raise UsageError("--metrics only listens on loopback (127.0.0.0/8 or ::1)")
    port = int(port_text)
    if not 0 < port < 65536:
        raise UsageError("--metrics port must be 1-65535")
    return str(ip), port


def bind_loopback(address: str) -> socket.socket:
    """A listening socket on the loopback ``address``; ``OSError`` if it cannot be bound."""
    host, port = parse_loopback(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Only lets us re-bind past TIME_WAIT after a restart; on Linux it never lets two
        # sockets listen on one port, so a squatter still makes this fail (and is reported).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(MAX_CONNECTIONS * 2)
    except OSError:
        sock.close()
        raise
    return sock


def inherited_listener() -> socket.socket | None:
    """The listening socket systemd passed us (socket activation), if there is one.

    A ``.socket`` unit binds the port when the machine starts, before any user could take
    it, and hands it over on every restart, so nobody can squat it while the daemon is down.
    The socket must be a listening TCP socket on a loopback address; anything else is
    refused (``UsageError``), since metrics must not be reachable from the network.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for the ssh children we start
    if count < 1:
        return None
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise UsageError(f"the socket passed by systemd is not usable: {exc.strerror}") from None
    problem = None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        problem = "is not a listening TCP socket"
    elif (
        sock.family not in (socket.AF_INET, socket.AF_INET6)
        or not ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    ):
        problem = "is not on a loopback address"
    if problem is not None:
        sock.close()
        raise UsageError(f"the metrics socket passed by systemd {problem}")
    os.set_inheritable(sock.fileno(), False)
    return sock


def address_of(sock: socket.socket) -> str:
    """``127.0.0.1:9464`` or ``[::1]:9464`` for a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HasCollectors(Protocol):
    """What the endpoint serves: the daemon's ``Metrics``, or the server's."""

    registry: CollectorRegistry


class MetricsServer:
    """The ``/metrics`` endpoint, bounded in connections, time and request size."""

    def __init__(
        self,
        metrics: HasCollectors,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._metrics = metrics
        self._max = max_connections
        self._timeout = timeout
        self._active = 0
        self._server: asyncio.Server | None = None
        self.refused = 0  # connections closed unanswered because all slots were taken

    async def start(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._server = await asyncio.start_server(self._handle, sock=sock, limit=MAX_REQUEST_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= self._max:
            self.refused += 1
            writer.transport.abort()
            return
        self._active += 1
        try:
            await asyncio.wait_for(self._answer(reader, writer), self._timeout)
            writer.close()
        except (
            TimeoutError,
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            # Slow, oversized or broken request: drop it, nothing is owed to this client.
            writer.transport.abort()
        finally:
            self._active -= 1

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")  # at most MAX_REQUEST_BYTES
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method not in (b"GET", b"HEAD"):
            status, body, kind = "405 Method Not Allowed", b"", "text/plain"
        elif path not in (b"/", b"/metrics"):
            status, body, kind = "404 Not Found", b"", "text/plain"
        else:
            status, body, kind = (
                "200 OK",
                generate_latest(self._metrics.registry),
                CONTENT_TYPE_LATEST,
            )
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(header.encode() + (body if method == b"GET" else b""))
        await writer.drain()
