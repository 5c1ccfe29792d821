"""Logging in with an asyncssh client: the demo's and the tests' check where ``ssh`` is missing.

It trusts a host exactly as the agent does (``keyward.agent.hostkeys``): only the keys
known_hosts pins for the host's exact ``[address]:port``.  Only the given identity is
offered; no SSH agent and no config file are consulted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh

from keyward.agent.hostkeys import host_key_options
from keyward.testing.fleet import FleetHost


async def _login(
    host: FleetHost, user: str, identity: Path, known_hosts_text: str, command: str
) -> bool:
    host_keys = host_key_options(known_hosts_text, host)
    if host_keys is None:
        return False
    key = asyncssh.read_private_key(str(identity))
    try:
        async with asyncssh.connect(
            host.address,
            port=host.port,
            username=user,
            client_keys=[key],
            **host_keys,
            config=[],
            agent_path=None,
            agent_forwarding=False,
            x11_forwarding=False,
            preferred_auth="publickey",
            connect_timeout=5,
            login_timeout=10,
        ) as conn:
            result = await conn.run(command, check=False, timeout=10)
            return result.exit_status == 0
    except (OSError, asyncssh.Error, TimeoutError):
        return False


def asyncssh_can_login(
    host: FleetHost,
    user: str,
    identity: Path,
    known_hosts: Path,
    command: str = "true",
    timeout: float = 15,
) -> bool:
    """Like ``ssh_client.can_login`` without the ``ssh`` binary: an asyncssh client.

    The host key is pinned from ``known_hosts`` (exact ``[address]:port`` lines only), only
    ``identity`` is offered, no SSH agent or config file is consulted, and ``command`` must
    exit 0.  A refusal, an unknown host key or an unreachable host gives False; a hang
    raises ``TimeoutError`` after ``timeout`` seconds.
    """
    text = Path(known_hosts).read_text()

    async def bounded() -> bool:
        return await asyncio.wait_for(_login(host, user, identity, text, command), timeout)

    return asyncio.run(bounded())


__all__ = ["asyncssh_can_login"]
