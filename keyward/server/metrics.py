"""Prometheus metrics of ``keyward server``, served on a loopback-only listener of their own.

Not on the main listener: behind a reverse proxy every request comes from loopback, so
"loopback only" could not be told apart there, and Prometheus cannot sign requests as
a person.  ``--metrics-listen 127.0.0.1:9465`` serves them with the daemon's bounded
responder (``keyward.daemon.metrics.MetricsServer``: few connections, short timeouts,
small requests), on the server's own event loop.

- ``keyward_server_requests_total{route,method,status}``: every request, the route as
  its template (``/api/v1/people/{username}``; ``other`` for no route), so the label
  set stays bounded whatever paths clients send;
- ``keyward_server_request_seconds{route}``: latency histogram;
- ``keyward_server_signin_failures_total{reason}``: 401 answers of the API by a fixed
  set of reasons (``REASONS``), never a name or fingerprint;
- ``keyward_server_active_sessions``: sessions this process issued (``auth login`` and
  browser sign-ins) that have neither expired nor been signed out of; a restart forgets
  them, as it forgets the replay store;
- ``keyward_server_pending_signin_codes``: browser sign-in codes waiting for a terminal.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from keyward.clock import Clock, system_clock

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# (words in the refusal, reason label): first match wins; anything else is "other".
REASONS: tuple[tuple[str, str], ...] = (
    ("replayed", "replay"),
    ("too many recent", "replay_store_full"),
    ("timestamp", "timestamp"),
    ("unknown key", "unknown_key"),
    ("does not verify", "bad_signature"),
    ("signing key is not", "bad_signature"),
    ("is revoked", "key_revoked"),
    ("session has expired", "session_expired"),
    ("has expired", "key_expired"),
    ("attested", "attestation"),
    ("person '", "person_not_active"),
    ("session token", "bad_session"),
    ("sign the request", "no_credentials"),
)
MAX_SESSIONS = 100_000
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def reason_of(message: str) -> str:
    """The bounded label for a 401's reason (``REASONS``)."""
    for words, label in REASONS:
        if words in message:
            return label
    return "malformed" if "malformed" in message or "header" in message else "other"


class ServerMetrics:
    """The server's collectors, in a registry of their own (not the process-global one)."""

    def __init__(self, clock: Clock = system_clock) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self._sessions: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self.requests = Counter(
            "keyward_server_requests_total",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keyward_server_request_seconds",
            "Time to answer a request, by route template",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.signin_failures = Counter(
            "keyward_server_signin_failures_total",
            "Requests refused with 401, by reason",
            ["reason"],
            registry=self.registry,
        )
        active = Gauge(
            "keyward_server_active_sessions",
            "Sessions issued by this process that have not expired or been signed out of",
            registry=self.registry,
        )
        active.set_function(self.active_sessions)
        self.pending_codes = Gauge(
            "keyward_server_pending_signin_codes",
            "Browser sign-in codes waiting to be confirmed or redeemed",
            registry=self.registry,
        )

    def signin_failed(self, message: str) -> None:
        self.signin_failures.labels(reason_of(message)).inc()

    def session_started(self, token: str, expires_at: datetime) -> None:
        with self._lock:
            self._forget_expired()
            if len(self._sessions) < MAX_SESSIONS:
                self._sessions[_digest(token)] = expires_at

    def session_ended(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(_digest(token), None)

    def active_sessions(self) -> float:
        with self._lock:
            self._forget_expired()
            return float(len(self._sessions))

    def _forget_expired(self) -> None:
        now = self._clock()
        for key in [k for k, until in self._sessions.items() if until <= now]:
            del self._sessions[key]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class CountRequests:
    """ASGI middleware: one count and one latency observation per HTTP request.

    ``route_of`` names the route template of a request scope (``other`` for none).
    """

    def __init__(self, app: App, metrics: ServerMetrics, route_of: Callable[[Scope], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = self.route_of(scope)
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            self.metrics.requests.labels(route, method, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
