"""Fetching host keys for review and pinning them (``keyward hosts scan``).

Scanning trusts nothing: it reports what a host presents next to what the
inventory's known_hosts already pins for it, so an administrator can compare
fingerprints out of band before pinning them.

Which key is asked for: the host key algorithms of the keys already pinned for
the host (what the agent itself will negotiate), then ``ssh-ed25519``.  A host
that still has its pinned key therefore shows that key; a host that no longer
offers any pinned type shows its ed25519 key, which then differs from every
pin.  On first contact only ``ssh-ed25519`` is asked for, so exactly one key is
shown and only that key can be pinned.

A presented key is ``pinned`` if it is one of the host's pinned keys, ``new``
if the host has no pin at all, and ``changed`` otherwise (whatever its type).
Writing pins exactly the key object whose fingerprint this run printed: there
is no second connection that could be answered with another key.  A changed
key is never pinned next to the old one: ``--replace`` with ``--fingerprint``
naming the presented key replaces every pin of that host.

A host behind jump hosts is scanned *through* them, as the agent will reach it: its key
is asked for over a tunnel opened by logging in to each hop with the agent's key, and
every hop must already be pinned (a hop is trusted exactly like a host, so an unpinned
or changed hop is refused before anything goes through it).  The hops themselves are
scanned too, each through the hops before it, so a new bastion is pinned in one run and
the hosts behind it in the next.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncssh

from keyward.agent.connection import Credentials
from keyward.agent.hostkeys import known_hosts_name, pinned_keys
from keyward.errors import HostError, InventoryError, UsageError
from keyward.inventory.model import Hop, Host

FIRST_CONTACT_ALG = "ssh-ed25519"

Status = Literal["pinned", "new", "changed"]


Target = Host | Hop
"""What a scan asks for a key: a managed host, or a jump host on the way to one."""


@dataclass(frozen=True)
class Scanned:
    """One host's presented key, and how it compares with the host's pins."""

    host: Target
    line: str  # the known_hosts line for exactly the presented key
    fingerprint: str
    pinned: tuple[str, ...]  # fingerprints pinned for the host before this scan

    @property
    def status(self) -> Status:
        if self.fingerprint in self.pinned:
            return "pinned"
        return "changed" if self.pinned else "new"

    def describe(self) -> str:
        """The review line: ``# web-1: SHA256:new CHANGED (pinned SHA256:old)``."""
        if self.status == "changed":
            return (
                f"# {self.host.name}: {self.fingerprint} CHANGED (pinned {', '.join(self.pinned)})"
            )
        return f"# {self.host.name}: {self.fingerprint} ({self.status})"


def host_key_algs(pins: Sequence[asyncssh.SSHKey]) -> list[str]:
    """Algorithms to ask for: the pinned keys' ones (as the agent does), then ed25519."""
    algs: list[str] = []
    for key in pins:
        for alg in key.sig_algorithms:
            name = alg.decode("ascii")
            if name not in algs:
                algs.append(name)
    if FIRST_CONTACT_ALG not in algs:
        algs.append(FIRST_CONTACT_ALG)
    return algs


def with_jump_hosts(hosts: Sequence[Host]) -> list[tuple[Target, tuple[Hop, ...]]]:
    """What to scan for ``hosts``: every jump host they go through (first, each with the
    hops before it), then the hosts themselves with their chains; each name once."""
    hops: dict[str, tuple[Target, tuple[Hop, ...]]] = {}
    for host in hosts:
        for i, hop in enumerate(host.jump):
            hops.setdefault(hop.name, (hop, host.jump[:i]))
    targets = {host.name: (host, host.jump) for host in hosts if host.name not in hops}
    return [*hops.values(), *targets.values()]


def find_jump_host(hosts: Sequence[Host], name: str) -> tuple[Hop, tuple[Hop, ...]] | None:
    """The jump host called ``name`` and the hops before it, as the inventory's hosts use it."""
    for host in hosts:
        for i, hop in enumerate(host.jump):
            if hop.name == name:
                return hop, host.jump[:i]
    return None


async def scan_hosts(
    targets: Sequence[tuple[Target, tuple[Hop, ...]]],
    known_hosts_text: str,
    timeout: float,
    on_done: Callable[[bool], None] | None = None,
    credentials: Callable[[], Credentials] | None = None,
) -> tuple[list[Scanned], list[tuple[Target, str]]]:
    """Each target's presented key compared with its pins; failures apart (in input order).

    A target comes with the jump hosts it is reached through (first hop first; empty for
    a direct connection); ``credentials`` gives the agent's key and pins to log in to them
    (loaded once, when a target needs it).  ``on_done(failed)`` is called as each target
    is done (the CLI's progress bar).
    """
    found: dict[str, Scanned] = {}
    failed: dict[str, tuple[Target, str]] = {}
    loaded: list[Credentials] = []

    def creds() -> Credentials:
        if credentials is None:
            raise HostError("a jump host needs the agent's identity, and none was given")
        if not loaded:
            loaded.append(credentials())
        return loaded[0]

    async def one(host: Target, chain: tuple[Hop, ...]) -> None:
        await scan_one(host, chain)
        if on_done is not None:
            on_done(host.name in failed)

    async def scan_one(host: Target, chain: tuple[Hop, ...]) -> None:
        pins = pinned_keys(known_hosts_text, host)
        tunnel: asyncssh.SSHClientConnection | None = None
        release: Callable[[], None] | None = None
        try:
            if chain:
                agent = creds()
                tunnel, release = await agent.hops.acquire(host, chain, agent, 0)
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(
                    host.address,
                    host.port,
                    tunnel=tunnel,
                    config=[],
                    server_host_key_algs=host_key_algs(pins),
                ),
                timeout,
            )
        except HostError as exc:  # a hop: already named ("web-3: jump host b1: ...")
            reason = str(exc).removeprefix(f"{host.name}: ")
            failed[host.name] = (host, f"scan failed: {reason}")
            return
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            failed[host.name] = (host, f"scan failed: {exc or type(exc).__name__}")
            return
        finally:
            if release is not None:
                release()
        if key is None:
            failed[host.name] = (host, "no host key offered")
            return
        line = f"{known_hosts_name(host)} {key.export_public_key().decode().strip()}"
        pinned = tuple(dict.fromkeys(str(p.get_fingerprint("sha256")) for p in pins))
        found[host.name] = Scanned(host, line, str(key.get_fingerprint("sha256")), pinned)

    unique = list({h.name: (h, chain) for h, chain in targets}.values())
    await asyncio.gather(*(one(h, chain) for h, chain in unique))
    order = [h.name for h, _ in unique]
    return (
        [found[n] for n in order if n in found],
        [failed[n] for n in order if n in failed],
    )


def check_fingerprint(value: str) -> str:
    """A ``--fingerprint`` as printed by ``hosts scan``: ``SHA256:`` and 43 base64 chars."""
    text = value.strip()
    body = text.removeprefix("SHA256:")
    if (
        not text.startswith("SHA256:")
        or len(body) != 43
        or not body.replace("+", "").replace("/", "").isalnum()
    ):
        raise UsageError(
            f"--fingerprint {value!r} is not a SHA256:... fingerprint as hosts scan prints it"
        )
    return text


def select_pins(
    scanned: Sequence[Scanned], *, replace: bool, fingerprints: Sequence[str]
) -> list[Scanned]:
    """The scanned keys to write, or a UsageError naming the first refused one.

    Without ``--fingerprint`` every new host is pinned with the key shown (trust
    on first review) and any changed host refuses the whole write.  With
    ``--fingerprint`` every key written must be one of those named, and every
    name must match a presented key.
    """
    named = set(fingerprints)
    write: list[Scanned] = []
    for item in scanned:
        name, fp = item.host.name, item.fingerprint
        if item.status == "pinned":
            continue
        if item.status == "changed" and not replace:
            raise UsageError(
                f"{name}: host key CHANGED (pinned {', '.join(item.pinned)}, presented {fp}); "
                f"nothing written; if the change is legitimate, compare {fp} out of band and "
                f"rerun with --replace --fingerprint {fp}"
            )
        if named and fp not in named:
            raise UsageError(
                f"{name}: presented {fp}, which no --fingerprint names; nothing written"
            )
        write.append(item)
    presented = {item.fingerprint for item in scanned}
    for fp in fingerprints:
        if fp not in presented:
            raise UsageError(
                f"--fingerprint {fp}: no scanned host presented that key; nothing written"
            )
    endpoints: dict[str, str] = {}
    for item in write:
        endpoint = known_hosts_name(item.host)
        if endpoints.setdefault(endpoint, item.fingerprint) != item.fingerprint:
            raise UsageError(
                f"{endpoint}: hosts at this address presented different keys; nothing written"
            )
    return write


def _drop_endpoint(line: str, endpoint: str) -> str | None:
    """``line`` without ``endpoint`` in its host field (None: nothing left to pin)."""
    fields = line.split()
    if len(fields) < 3 or fields[0].startswith(("#", "@", "|")):
        return line
    names = fields[0].split(",")
    if endpoint not in names:
        return line
    kept = [n for n in names if n != endpoint]
    if not kept:
        return None
    head = line[: len(line) - len(line.lstrip())]
    return head + ",".join(kept) + line.lstrip()[len(fields[0]) :]


def updated_known_hosts(existing: str, write: Sequence[Scanned]) -> str:
    """``existing`` with the pins of changed hosts removed and the new lines appended."""
    replaced = {known_hosts_name(s.host) for s in write if s.status == "changed"}
    lines: list[str] = []
    for line in existing.splitlines():
        kept: str | None = line
        for endpoint in replaced:
            if kept is not None:
                kept = _drop_endpoint(kept, endpoint)
        if kept is not None:
            lines.append(kept)
    for line in dict.fromkeys(s.line for s in write):
        lines.append(line)
    return "".join(line + "\n" for line in lines)


def write_known_hosts(path: Path, text: str) -> None:
    """Replace ``path`` atomically (same directory, fsync, rename), keeping its mode."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    try:
        fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=path.parent)
    except OSError as exc:
        raise InventoryError(f"cannot write known_hosts {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InventoryError(f"cannot write known_hosts {path}: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
