"""Logging in with the real OpenSSH client: what a user's ``ssh`` would be allowed to do.

Tests prove access with the real ``ssh`` binary against the fleets' hosts; the argv is
built so that nothing on this machine (a config file, an SSH agent, a global
known_hosts) can change the answer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from keyward.testing.fleet import FleetHost


def ssh_command(
    host: FleetHost, user: str, identity: Path, known_hosts: Path, command: str = "true"
) -> list[str]:
    """The exact real-``ssh`` argv ``ssh_login`` runs: no config, no agent, strict pinning."""
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(identity),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=20",
        "-p",
        str(host.port),
        f"{user}@{host.address}",
        command,
    ]


def ssh_login(
    host: FleetHost,
    user: str,
    identity: Path,
    known_hosts: Path,
    command: str = "true",
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Log in with the real OpenSSH client and run ``command``.

    Return code 0 means logged in (and the command succeeded), 255 means ssh itself
    failed (refused key, unknown host key, unreachable).  Raises
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds: a hang is a bug, not a refusal.
    """
    return subprocess.run(
        ssh_command(host, user, identity, known_hosts, command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def can_login(
    host: FleetHost,
    user: str,
    identity: Path,
    known_hosts: Path,
    command: str = "true",
    timeout: float = 60,
) -> bool:
    """Whether the real ``ssh`` client logs in and ``command`` exits 0."""
    return ssh_login(host, user, identity, known_hosts, command, timeout).returncode == 0


__all__ = ["can_login", "ssh_command", "ssh_login"]
