"""Load the TOML inventory into a checked, frozen ``Inventory``, or every problem it has.

The inventory decides who can log in as root where, and it is edited by hand
in version control, so the loader is strict and exhaustive: unknown fields,
wrong types, dangling group or host names, unsafe options and paths are all
refused, and ``check_inventory`` reports *every* problem, each located as
``file: key: message``, so one review round fixes them all.  Nothing here
touches hosts, the registry or logging.

Layout: ``keyward.toml`` holds fleet settings (optional: defaults apply,
``settings.py``); every other ``*.toml`` file in the directory is one
environment: its hosts (``hosts.py``), then its rules checked against those
hosts (``rules.py``), all read through ``reader.py``.
"""

from __future__ import annotations

from pathlib import Path

from keyward.attestation import ATTESTATION_LEVELS
from keyward.errors import InventoryError
from keyward.inventory.hosts import SeenHosts, read_hosts
from keyward.inventory.model import Environment, Inventory
from keyward.inventory.names import NAME_RE
from keyward.inventory.policy import PolicySettings
from keyward.inventory.reader import Problem, Reader, read_toml, short
from keyward.inventory.rules import read_rules
from keyward.inventory.settings import read_settings
from keyward.inventory.where import SETTINGS_FILE

_ENV_FILE_FIELDS = ("environment", "defaults", "jump_hosts", "hosts", "access", "break_glass")
_ENV_FIELDS = ("name", "min_attestation", "customer")


def read_environment(
    path: Path,
    problems: list[Problem],
    policy: PolicySettings,
    seen: SeenHosts,
    env_names: dict[str, str],
) -> Environment | None:
    """One environment file: hosts first, then rules checked against those hosts.

    ``seen`` and ``env_names`` carry what earlier files defined, because host
    names, endpoints and environment names must be unique fleet-wide.
    """
    data = read_toml(path, problems)
    if data is None:
        return None
    file = path.name
    reader = Reader(file, problems)
    reader.fields(data, "", _ENV_FILE_FIELDS)

    env_table = reader.table(data, "", "environment")
    if env_table is None:
        if "environment" not in data:
            reader.add("", "missing table [environment] (needs at least min_attestation)")
        env_table = {}
    reader.fields(env_table, "environment", _ENV_FIELDS)
    name = reader.string(env_table, "environment", "name", path.stem) or path.stem
    if not NAME_RE.fullmatch(name):
        reader.add("environment.name", f"{short(name)} is not a valid environment name")
    elif name in env_names:
        reader.add(
            "environment.name",
            f"environment {name!r} is already defined in {env_names[name]}",
        )
    else:
        env_names[name] = file
    min_attestation = reader.string(
        env_table, "environment", "min_attestation", required="environment" in data
    )
    if min_attestation is not None and min_attestation not in ATTESTATION_LEVELS:
        reader.add(
            "environment.min_attestation",
            f"{short(min_attestation)} is not one of {', '.join(ATTESTATION_LEVELS)}",
        )
    customer = reader.string(env_table, "environment", "customer")

    hosts = read_hosts(reader, data, name, customer, seen)
    access, break_glass = read_rules(reader, data, name, hosts, policy, seen.names)

    return Environment(
        name=name,
        min_attestation=min_attestation or "none",
        customer=customer,
        hosts=tuple(hosts),
        access=tuple(access),
        break_glass=tuple(break_glass),
        source_file=file,
    )


def check_inventory(root: Path) -> tuple[Inventory | None, list[Problem]]:
    """Load and validate the inventory at ``root``, collecting every problem.

    Returns the ``Inventory`` only when there are no problems at all; a
    partially valid inventory is never handed out, because acting on half a
    description of who may log in where is worse than acting on none.
    """
    root = Path(root).absolute()
    if not root.exists():
        return None, [Problem(str(root), "", "inventory directory does not exist")]
    if not root.is_dir():
        return None, [Problem(str(root), "", "is not a directory")]
    problems: list[Problem] = []
    agent, policy, directory = read_settings(root, problems)
    seen = SeenHosts()
    env_names: dict[str, str] = {}
    env_files = sorted(
        path
        for path in root.glob("*.toml")
        if path.name != SETTINGS_FILE and not path.name.startswith(".") and path.is_file()
    )
    if not env_files:
        problems.append(
            Problem(str(root), "", f"no environment files (*.toml other than {SETTINGS_FILE})")
        )
    environments = [read_environment(path, problems, policy, seen, env_names) for path in env_files]
    if problems:
        return None, problems
    inventory = Inventory(
        root=root,
        agent=agent,
        policy=policy,
        environments=tuple(env for env in environments if env is not None),
        directory=directory,
    )
    return inventory, []


def load_inventory(root: Path) -> Inventory:
    """The checked inventory at ``root``, or ``InventoryError`` naming the first problem."""
    inventory, problems = check_inventory(root)
    if inventory is None:
        first = str(problems[0]) if problems else f"{root}: inventory did not load"
        more = len(problems) - 1
        if more > 0:
            noun = "problem" if more == 1 else "problems"
            first += f" (and {more} more {noun}; run keyward inventory check)"
        raise InventoryError(first)
    return inventory
