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
from keyward.inventory.model import AgentSettings
from keyward.inventory.notify_settings import NotifySettings, read_notify_settings
from keyward.inventory.policy import PolicySettings, read_policy
from keyward.inventory.reader import Problem, Reader, read_toml
from keyward.inventory.server import ServerSettings, read_server_settings
from keyward.inventory.where import SETTINGS_FILE

if TYPE_CHECKING:
    from keyward.inventory.directory_settings import DirectorySettings
    from keyward.inventory.scim_settings import ScimSettings

DEFAULT_IDENTITY = "/etc/keyward/agent_ed25519"
DEFAULT_KNOWN_HOSTS = "known_hosts"
DEFAULT_CONCURRENCY = 100
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_PYTHON = "python3"

_SETTINGS_FIELDS = ("agent", "policy", "directory", "server", "notify", "scim")
_AGENT_FIELDS = (
    "identity",
    "identity_pub",
    "known_hosts",
    "concurrency",
    "connect_timeout",
    "python",
)
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
    read_notify_settings(data, reader, root)  # likewise: its readers load it themselves
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

    policy = read_policy(reader, data)
    directory = None
    if "directory" in data:  # its reader (and urllib) only for inventories that sync people
        from keyward.inventory.directory_settings import read_directory

        directory = read_directory(root, reader, data)
    return agent_settings, policy, directory


def load_server_settings(root: Path) -> ServerSettings:
    """``[server]`` of ``root``'s ``keyward.toml`` (defaults without one); ``InventoryError``."""
    problems: list[Problem] = []
    path = root / SETTINGS_FILE
    data = (read_toml(path, problems) or {}) if path.exists() else {}
    settings = read_server_settings(data, Reader(SETTINGS_FILE, problems))
    if problems:
        raise InventoryError(str(problems[0]))
    return settings


def load_notify_settings(root: Path) -> NotifySettings:
    """``[notify]`` of ``root``'s ``keyward.toml`` (defaults without one); ``InventoryError``."""
    problems: list[Problem] = []
    path = root / SETTINGS_FILE
    data = (read_toml(path, problems) or {}) if path.exists() else {}
    settings = read_notify_settings(data, Reader(SETTINGS_FILE, problems), root)
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


def _path(root: Path, reader: Reader, table: Mapping[str, Any], field: str, default: str) -> Path:
    """A path setting; relative paths are relative to the inventory directory."""
    value = reader.string(table, "agent", field, default) or default
    path = Path(value)
    return path if path.is_absolute() else root / path
