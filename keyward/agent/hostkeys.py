"""The host-key check: a host is trusted only with the keys pinned for its exact address and port.

The agent connects to managed hosts with it; the demo's and the tests' asyncssh client
(``keyward.testing.asyncssh_client``) uses the same one, so what the tests prove about
pinning is what the agent does.  ``hosts scan`` reads the pins with ``pinned_keys`` to
compare them with what a host presents.

Only plain known_hosts lines whose host field names ``known_hosts_name(endpoint)`` count:
no wildcard patterns, no fallback from a custom port to port 22, no match by resolved IP
address, no hashed names, no ``@cert-authority`` or ``@revoked`` lines, no X.509.  A host is
trusted for what the inventory says it is, nothing wider.
"""

from __future__ import annotations

import functools
from typing import Protocol, TypedDict

import asyncssh


class Endpoint(Protocol):
    """Where a host listens: an inventory ``Host`` or a local fleet's ``FleetHost``."""

    @property
    def address(self) -> str: ...

    @property
    def port(self) -> int: ...


class HostKeyOptions(TypedDict):
    """The ``asyncssh.connect`` options that make it accept exactly the pinned keys."""

    known_hosts: tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]
    x509_trusted_certs: None
    x509_trusted_cert_paths: list[str]


def known_hosts_name(endpoint: Endpoint) -> str:
    """How OpenSSH names this endpoint in known_hosts: ``addr`` or ``[addr]:port``."""
    return endpoint.address if endpoint.port == 22 else f"[{endpoint.address}]:{endpoint.port}"


@functools.lru_cache(maxsize=8)
def _pins_by_name(known_hosts_text: str) -> dict[str, tuple[str, ...]]:
    """Host field name -> the ``"type blob"`` of each line naming it, in file order.

    Built once per known_hosts text: a daemon connecting 10,000 hosts used to split the
    whole file again for each of them (quadratic in the fleet).
    """
    pins: dict[str, list[str]] = {}
    for raw in known_hosts_text.splitlines():
        fields = raw.split()
        if len(fields) < 3 or fields[0].startswith(("#", "@", "|")):
            continue
        key = f"{fields[1]} {fields[2]}"
        for name in dict.fromkeys(fields[0].split(",")):
            pins.setdefault(name, []).append(key)
    return {name: tuple(keys) for name, keys in pins.items()}


def pinned_keys(known_hosts_text: str, endpoint: Endpoint) -> list[asyncssh.SSHKey]:
    """The host keys ``known_hosts_text`` pins for exactly this address and port.

    A line whose key cannot be read pins nothing (it is skipped, not an error).
    """
    keys: list[asyncssh.SSHKey] = []
    for text in _pins_by_name(known_hosts_text).get(known_hosts_name(endpoint), ()):
        try:
            keys.append(asyncssh.import_public_key(text))
        except (asyncssh.KeyImportError, ValueError):
            continue
    return keys


def host_key_options(known_hosts_text: str, endpoint: Endpoint) -> HostKeyOptions | None:
    """Options for ``asyncssh.connect(**options)`` trusting only this endpoint's pinned keys.

    None when nothing is pinned for it: the caller must refuse to connect, there is nothing
    to check the host against.  A host presenting any other key fails the handshake with
    ``asyncssh.HostKeyNotVerifiable`` before anything is sent to it.
    """
    trusted = pinned_keys(known_hosts_text, endpoint)
    if not trusted:
        return None
    return HostKeyOptions(
        known_hosts=(trusted, [], []), x509_trusted_certs=None, x509_trusted_cert_paths=[]
    )


__all__ = ["Endpoint", "HostKeyOptions", "host_key_options", "known_hosts_name", "pinned_keys"]
