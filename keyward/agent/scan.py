"""Fetching host keys for review (``keyward hosts scan``).

Scanning trusts nothing: it only reports what a host presents, so an
administrator can compare fingerprints out of band before pinning them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncssh

from keyward.agent.connection import known_hosts_name
from keyward.inventory.model import Host


async def scan_hosts(
    hosts: Sequence[Host], timeout: float
) -> tuple[list[tuple[Host, str, str]], list[tuple[Host, str]]]:
    """(host, known_hosts line, fingerprint) for each host that answered; failures apart."""
    found: list[tuple[Host, str, str]] = []
    failed: list[tuple[Host, str]] = []

    async def one(host: Host) -> None:
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(
                    host.address, host.port, config=[], server_host_key_algs=["ssh-ed25519"]
                ),
                timeout,
            )
            if key is None:
                failed.append((host, "no host key offered"))
                return
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            failed.append((host, f"scan failed: {exc or type(exc).__name__}"))
            return
        line = f"{known_hosts_name(host)} {key.export_public_key().decode().strip()}"
        found.append((host, line, key.get_fingerprint("sha256")))

    await asyncio.gather(*(one(h) for h in hosts))
    return found, failed
