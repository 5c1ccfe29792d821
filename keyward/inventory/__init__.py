"""The TOML inventory: environments, hosts, accounts and who may reach them.

``load_inventory`` gives a checked, frozen ``Inventory`` or raises
``InventoryError``; ``check_inventory`` lists every located ``Problem``
(what ``keyward inventory check`` prints).  See docs/inventory.md.
"""

from __future__ import annotations

from keyward.inventory.hosts import normalise_authorized_keys
from keyward.inventory.load import (
    DEFAULT_INVENTORY_DIR,
    check_inventory,
    find_inventory_dir,
    load_inventory,
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
from keyward.inventory.names import ACCOUNT_RE, NAME_RE
from keyward.inventory.reader import Problem
from keyward.inventory.settings import SETTINGS_FILE

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
