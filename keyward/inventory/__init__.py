"""The TOML inventory: environments, hosts, accounts and who may reach them.

``load_inventory`` gives a checked, frozen ``Inventory`` or raises
``InventoryError``; ``check_inventory`` lists every located ``Problem``
(what ``keyward inventory check`` prints).  See docs/inventory.md.
"""

from __future__ import annotations

from keyward.inventory.load import (
    ACCOUNT_RE,
    DEFAULT_INVENTORY_DIR,
    NAME_RE,
    SETTINGS_FILE,
    Problem,
    check_inventory,
    find_inventory_dir,
    load_inventory,
    normalise_authorized_keys,
    summarize,
)
from keyward.inventory.model import (
    MODES,
    AccessRule,
    AgentSettings,
    BreakGlass,
    Environment,
    Host,
    Inventory,
    Mode,
    PolicySettings,
)

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
    "summarize",
]
