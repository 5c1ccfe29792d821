"""Prometheus metrics for the daemon, served on a loopback address only."""

from __future__ import annotations

import ipaddress
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from keyward.errors import UsageError


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

    def serve(self, address: str) -> tuple[str, int]:
        host, port = parse_loopback(address)
        start_http_server(port, addr=host, registry=self.registry)
        return host, port


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
