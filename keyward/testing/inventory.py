"""Throw-away inventories over local fleets: used by the demo, tests and benchmarks.

``write_inventory`` writes the TOML files and the known_hosts pins an operator would, from
an ``InventorySpec`` and a running fleet's hosts.  Nothing here is used in production
paths; it lives in the package so that ``keyward demo`` works on a machine with nothing
set up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keyward.testing.fleet import FleetHost


@dataclass(frozen=True)
class AccessSpec:
    roles: tuple[str, ...]
    accounts: tuple[str, ...]
    options: tuple[str, ...] = ()
    hosts: tuple[str, ...] | None = None


@dataclass(frozen=True)
class InventorySpec:
    """A one-environment inventory over a local fleet."""

    environment: str
    login: str
    accounts: tuple[str, ...]
    access: tuple[AccessSpec, ...]
    break_glass: tuple[tuple[tuple[str, ...], str], ...] = ()  # (accounts, public key line)
    min_attestation: str = "none"
    mode: str = "exclusive"
    concurrency: int = 50
    connect_timeout: int = 10
    extra_hosts: tuple[str, ...] = field(default_factory=tuple)  # raw [[hosts]] TOML blocks
    auth_logs: bool = True  # read each host's sshd log from the fleet's log file
    # ... and attribute the logins in it: the fleet's sshd runs with -e into a file only
    # this process writes (no journald here), so the sandbox vouches for it.
    auth_logs_trusted: bool = True
    policy: tuple[str, ...] = ()  # extra [policy] lines, e.g. 'failure_mode = "suspend"'
    customers: tuple[tuple[str, str], ...] = ()  # (host name, customer)
    # The hosts' interpreter: an absolute path skips the login shell's PATH (and, on
    # machines with pyenv, its shims, which cost more than the work done over SSH).
    python: str = field(default_factory=lambda: _system_python())


def _system_python() -> str:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return "python3"


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def host_pattern(host: FleetHost) -> str:
    """The inventory ``authorized_keys`` pattern matching the host's sshd AuthorizedKeysFile."""
    pattern = host.authorized_keys_file
    if not pattern.startswith(("/", "%h")):
        pattern = "%h/" + pattern
    return pattern


def write_inventory(
    root: Path, hosts: Sequence[FleetHost], spec: InventorySpec, identity: Path
) -> Path:
    """Write ``keyward.toml``, ``<environment>.toml`` and ``known_hosts`` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "keyward.toml").write_text(
        "[agent]\n"
        f"identity = {_toml_str(str(identity))}\n"
        'known_hosts = "known_hosts"\n'
        f"concurrency = {spec.concurrency}\n"
        f"connect_timeout = {spec.connect_timeout}\n"
        f"python = {_toml_str(spec.python)}\n"
        "\n[policy]\nmax_key_age_days = 365\n" + "".join(line + "\n" for line in spec.policy)
    )
    (root / "known_hosts").write_text("".join(h.known_hosts_line() + "\n" for h in hosts))
    lines = [
        "[environment]",
        f"name = {_toml_str(spec.environment)}",
        f"min_attestation = {_toml_str(spec.min_attestation)}",
        "",
        "[defaults]",
        f"login = {_toml_str(spec.login)}",
        f"mode = {_toml_str(spec.mode)}",
        "",
    ]
    for host in hosts:
        lines += [
            "[[hosts]]",
            f"name = {_toml_str(host.name)}",
            f"address = {_toml_str(host.address)}",
            f"port = {host.port}",
            f"authorized_keys = {_toml_str(host_pattern(host))}",
            f"accounts = {_toml_list(spec.accounts)}",
        ]
        customer = dict(spec.customers).get(host.name)
        if customer:
            lines.append(f"customer = {_toml_str(customer)}")
        if spec.auth_logs:
            lines.append(f"auth_log = {_toml_str(str(host.log_file))}")
            if spec.auth_logs_trusted:
                lines.append("auth_log_trusted = true")
            lines.append(f"sshd_config = {_toml_str(str(host.sshd_config))}")
        lines.append("")
    for block in spec.extra_hosts:
        lines += [block, ""]
    for rule in spec.access:
        lines += [
            "[[access]]",
            f"roles = {_toml_list(rule.roles)}",
            f"accounts = {_toml_list(rule.accounts)}",
        ]
        if rule.options:
            lines.append(f"options = {_toml_list(rule.options)}")
        if rule.hosts is not None:
            lines.append(f"hosts = {_toml_list(rule.hosts)}")
        lines.append("")
    for accounts, key in spec.break_glass:
        lines += [
            "[[break_glass]]",
            f"accounts = {_toml_list(accounts)}",
            f"key = {_toml_str(key)}",
            "",
        ]
    (root / f"{spec.environment}.toml").write_text("\n".join(lines))
    return root
