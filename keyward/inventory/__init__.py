"""The TOML inventory: environments, hosts, accounts and who may reach them.

``load_inventory`` gives a checked, frozen ``Inventory`` or raises
``InventoryError``; ``check_inventory`` lists every located ``Problem``
(what ``keyward inventory check`` prints).  See docs/inventory.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyward.inventory.hosts import normalise_authorized_keys
    from keyward.inventory.load import check_inventory, load_inventory
    from keyward.inventory.model import (
        MODES,
        AccessRule,
        AgentSettings,
        BreakGlass,
        Environment,
        Host,
        Inventory,
        Mode,
    )
    from keyward.inventory.names import ACCOUNT_RE, NAME_RE
    from keyward.inventory.policy import PolicySettings
    from keyward.inventory.reader import Problem
    from keyward.inventory.where import DEFAULT_INVENTORY_DIR, SETTINGS_FILE, find_inventory_dir

# Imported on first use (PEP 562), not with the package: a command that needs one small
# part (where the inventory is, its key policy) does not load the whole loader.
_WHERE = {
    "normalise_authorized_keys": "hosts",
    "check_inventory": "load",
    "load_inventory": "load",
    "DEFAULT_INVENTORY_DIR": "where",
    "find_inventory_dir": "where",
    "MODES": "model",
    "AccessRule": "model",
    "AgentSettings": "model",
    "BreakGlass": "model",
    "Environment": "model",
    "Host": "model",
    "Inventory": "model",
    "Mode": "model",
    "PolicySettings": "policy",
    "ACCOUNT_RE": "names",
    "NAME_RE": "names",
    "Problem": "reader",
    "SETTINGS_FILE": "where",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'keyward.inventory' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"keyward.inventory.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ACCOUNT_RE",
    "DEFAULT_INVENTORY_DIR",
    "MODES",
    "NAME_RE",
    "SETTINGS_FILE",
    "AccessRule",
    "AgentSettings",
    "BreakGlass",
    "Environment",
    "Host",
    "Inventory",
    "Mode",
    "PolicySettings",
    "Problem",
    "check_inventory",
    "find_inventory_dir",
    "load_inventory",
    "normalise_authorized_keys",
]
