"""Which client a request comes from, for per-client limits (browser sign-in codes).

The peer address of the connection, unless that peer is a reverse proxy named with
``--trusted-proxy``: then the nearest address in ``X-Forwarded-For`` that is not itself
a trusted proxy (the header's earlier entries are whatever the client wrote).  Used
only to bound what one client can make the server hold, never to authorize anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from keyward.errors import UsageError


def trusted(addresses: Iterable[str]) -> frozenset[str]:
    """``--trusted-proxy`` values as normalized IP addresses; ``UsageError`` otherwise."""
    out = set()
    for text in addresses:
        try:
            out.add(str(ipaddress.ip_address(text.strip())))
        except ValueError:
            raise UsageError(f"--trusted-proxy must be an IP address, not {text!r}") from None
    return frozenset(out)


def client_address(peer: str, headers: Mapping[str, str], proxies: frozenset[str]) -> str:
    """The client's address as far as it can be told (``headers``: lower-case names)."""
    if peer not in proxies:
        return peer
    hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return peer  # a hop the proxy did not write: do not trust the rest
        if address not in proxies:
            return address
    return peer
