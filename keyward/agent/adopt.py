"""Reading hosts for ``keyward adopt scan``: every managed file, read-only, concurrently.

The same connections and the same safe helper ``read`` as a round (symlinks, hard links,
foreign owners and oversized files are refused by the helper and reported, never
followed), but nothing is planned or written. Each file read becomes sightings through
the pure ``keyward.adoption.lines``; a host that cannot be reached is a ``HostScan`` with
its error, never an exception, so one bad host never stops the scan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from keyward.adoption.lines import HostScan, Sighting, Unhonoured, Where, read_file
from keyward.agent.reconcile import HOST_FAILURES
from keyward.agent.transport import Connector, HostTransport
from keyward.errors import HostError
from keyward.inventory.model import Host
from keyward.logs import get_logger


def targets(host: Host) -> list[tuple[str, str]]:
    """Every managed file of ``host``: each managed account with each pattern."""
    return [
        (account, pattern) for account in host.managed_accounts for pattern in host.authorized_keys
    ]


async def scan_host(host: Host, connector: Connector) -> HostScan:
    """Read every managed file of ``host``; never raises for the host's own problems."""
    log = get_logger(host=host.name)
    conn: HostTransport | None = None
    try:
        conn = await connector.open(host)
        files = targets(host)
        replies = await conn.read(files)
    except HOST_FAILURES as exc:
        message = exc.message if isinstance(exc, HostError) else f"{type(exc).__name__}: {exc}"
        log.error("adopt_scan_host_failed", error=message)
        return HostScan(host.name, host.environment, host.mode, error=message)
    finally:
        if conn is not None:
            await conn.close()
    sightings: list[Sighting] = []
    unhonoured: list[Unhonoured] = []
    errors: list[tuple[str, str, str]] = []
    for (account, pattern), reply in zip(files, replies, strict=True):
        where = Where(host.name, account, pattern, reply.path)
        if reply.error is not None or reply.state == "error":
            why = reply.error.text if reply.error is not None else "unreadable"
            log.warning("adopt_file_unread", account=account, path=reply.path or pattern, error=why)
            errors.append((account, reply.path or pattern, why))
            continue
        if reply.content is None:
            continue
        found, skipped = read_file(where, reply.content)
        sightings += found
        unhonoured += skipped
    return HostScan(
        host.name,
        host.environment,
        host.mode,
        tuple(sightings),
        tuple(unhonoured),
        tuple(errors),
        files=len(files),
    )


async def scan_fleet(
    hosts: Sequence[Host],
    connector: Connector,
    concurrency: int,
    on_done: Callable[[HostScan], None] | None = None,
) -> list[HostScan]:
    """Scan every host with at most ``concurrency`` at once; results in host order."""
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(host: Host) -> HostScan:
        async with semaphore:
            result = await scan_host(host, connector)
        if on_done is not None:
            on_done(result)
        return result

    return list(await asyncio.gather(*(one(h) for h in hosts)))
