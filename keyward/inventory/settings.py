"""``keyward.toml``: the fleet-wide settings, how the agent connects and the key policy.

The file is optional (every setting has a default), but what is there is
checked like the environment files: a mistyped policy field must not leave
a weaker default in force unnoticed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyward.errors import InventoryError
from keyward.inventory.model import AgentSettings, PolicySettings
from keyward.inventory.reader import Problem, Reader, read_toml, short
from keyward.inventory.server import ServerSettings, read_server_settings
from keyward.keys import DSA, KNOWN_TYPES

if TYPE_CHECKING:
    from keyward.inventory.directory_settings import DirectorySettings
    from keyward.inventory.scim_settings import ScimSettings

SETTINGS_FILE = "keyward.toml"

DEFAULT_IDENTITY = "/etc/keyward/agent_ed25519"
DEFAULT_KNOWN_HOSTS = "known_hosts"
DEFAULT_CONCURRENCY = 100
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_PYTHON = "python3"
DEFAULT_MAX_KEY_AGE_DAYS = 365
DEFAULT_MIN_RSA_BITS = 3072
DEFAULT_PROOF_MAX_AGE_DAYS = 30

_SETTINGS_FIELDS = ("agent", "policy", "directory", "server", "scim")
_AGENT_FIELDS = (
    "identity",
    "identity_pub",
    "known_hosts",
    "concurrency",
    "connect_timeout",
    "python",
)
_POLICY_FIELDS = (
    "max_key_age_days",
    "min_rsa_bits",
    "allowed_key_types",
    "proof_max_age_days",
    "failed_login_threshold",
    "failed_login_window_minutes",
    "multi_source_window_minutes",
    "failure_mode",
    "alert_command",
    "purge_after_days",
)
FAILURE_MODES = ("off", "suspend", "restrict")
_PYTHON_RE = re.compile(r"[A-Za-z0-9_./+-]+")


def read_settings(
    root: Path, problems: list[Problem]
) -> tuple[AgentSettings, PolicySettings, DirectorySettings | None]:
    """``keyward.toml`` in ``root``: the agent's connection settings, the key policy, and
    the directory to sync people from (None without a ``[directory]`` section)."""
    path = root / SETTINGS_FILE
    data: dict[str, Any] = {}
    if path.exists():
        data = read_toml(path, problems) or {}
    reader = Reader(SETTINGS_FILE, problems)
    reader.fields(data, "", _SETTINGS_FIELDS)
    read_server_settings(data, reader)  # checked with the rest; `keyward server` reads it again
    if "scim" in data:  # likewise: only `keyward server` uses it (load_scim_settings)
        from keyward.inventory.scim_settings import read_scim

        read_scim(root, reader, data)
    agent = reader.table(data, "", "agent") or {}
    reader.fields(agent, "agent", _AGENT_FIELDS)
    identity = _path(root, reader, agent, "identity", DEFAULT_IDENTITY)
    pub_default = str(identity) + ".pub"
    identity_pub = _path(root, reader, agent, "identity_pub", pub_default)
    known_hosts = _path(root, reader, agent, "known_hosts", DEFAULT_KNOWN_HOSTS)
    concurrency = reader.integer(agent, "agent", "concurrency", DEFAULT_CONCURRENCY, 1, 10000)
    timeout = reader.number(agent, "agent", "connect_timeout", DEFAULT_CONNECT_TIMEOUT, 0, 3600)
    python = reader.string(agent, "agent", "python", DEFAULT_PYTHON) or DEFAULT_PYTHON
    if not _PYTHON_RE.fullmatch(python):
        reader.add("agent.python", "must be a command name or absolute path, no spaces")
    agent_settings = AgentSettings(
        identity=identity,
        identity_pub=identity_pub,
        known_hosts=known_hosts,
        concurrency=concurrency,
        connect_timeout=timeout,
        python=python,
    )

    policy = reader.table(data, "", "policy") or {}
    reader.fields(policy, "policy", _POLICY_FIELDS)
    types = reader.strings(policy, "policy", "allowed_key_types")
    for key_type in types or ():
        if key_type == DSA:
            reader.add("policy.allowed_key_types", "ssh-dss (DSA) keys cannot be allowed")
        elif key_type not in KNOWN_TYPES:
            known = ", ".join(sorted(KNOWN_TYPES - {DSA}))
            reader.add(
                "policy.allowed_key_types",
                f"unknown key type {short(key_type)} (known: {known})",
            )
    directory = None
    if "directory" in data:  # its reader (and urllib) only for inventories that sync people
        from keyward.inventory.directory_settings import read_directory

        directory = read_directory(root, reader, data)
    return (
        agent_settings,
        PolicySettings(
            max_key_age_days=reader.integer(
                policy, "policy", "max_key_age_days", DEFAULT_MAX_KEY_AGE_DAYS, 1, 36500
            ),
            min_rsa_bits=reader.integer(
                policy, "policy", "min_rsa_bits", DEFAULT_MIN_RSA_BITS, 2048, 16384
            ),
            allowed_key_types=types,
            proof_max_age_days=reader.integer(
                policy, "policy", "proof_max_age_days", DEFAULT_PROOF_MAX_AGE_DAYS, 0, 3650
            ),
            failed_login_threshold=reader.integer(
                policy, "policy", "failed_login_threshold", 5, 1, 100000
            ),
            failed_login_window_minutes=reader.integer(
                policy, "policy", "failed_login_window_minutes", 10, 1, 10080
            ),
            multi_source_window_minutes=reader.integer(
                policy, "policy", "multi_source_window_minutes", 60, 1, 10080
            ),
            failure_mode=_failure_mode(reader, policy),
            alert_command=reader.string(policy, "policy", "alert_command"),
            purge_after_days=reader.integer(policy, "policy", "purge_after_days", 365, 0, 36500),
        ),
        directory,
    )


def load_policy(root: Path) -> PolicySettings:
    """``[policy]`` of ``root``'s ``keyward.toml`` (defaults without one); ``InventoryError``.

    All a key command needs: the environment files are not read, so ``key check`` and
    ``key add`` neither pay for nor depend on checking the whole fleet's inventory.
    """
    problems: list[Problem] = []
    _, policy, _ = read_settings(root, problems)
    if problems:
        raise InventoryError(str(problems[0]))
    return policy


def load_server_settings(root: Path) -> ServerSettings:
    """``[server]`` of ``root``'s ``keyward.toml`` (defaults without one); ``InventoryError``."""
    problems: list[Problem] = []
    path = root / SETTINGS_FILE
    data = (read_toml(path, problems) or {}) if path.exists() else {}
    settings = read_server_settings(data, Reader(SETTINGS_FILE, problems))
    if problems:
        raise InventoryError(str(problems[0]))
    return settings


def load_scim_settings(root: Path) -> ScimSettings | None:
    """``[scim]`` of ``root``'s ``keyward.toml`` (None without one); ``InventoryError``."""
    from keyward.inventory.scim_settings import read_scim

    problems: list[Problem] = []
    path = root / SETTINGS_FILE
    data = (read_toml(path, problems) or {}) if path.exists() else {}
    reader = Reader(SETTINGS_FILE, problems)
    settings = read_scim(root, reader, data)
    if problems:
        raise InventoryError(str(problems[0]))
    return settings


def _failure_mode(reader: Reader, policy: Mapping[str, Any]) -> str:
    value = reader.string(policy, "policy", "failure_mode", "off") or "off"
    if value not in FAILURE_MODES:
        reader.add("policy.failure_mode", f"must be one of {', '.join(FAILURE_MODES)}")
        return "off"
    return value


def _path(root: Path, reader: Reader, table: Mapping[str, Any], field: str, default: str) -> Path:
    """A path setting; relative paths are relative to the inventory directory."""
    value = reader.string(table, "agent", field, default) or default
    path = Path(value)
    return path if path.is_absolute() else root / path
