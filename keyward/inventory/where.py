"""Where the inventory is: the one rule every command follows to find it.

Its own small module so that finding the inventory (every command that has one does)
loads none of the loader (``load.py``) and its checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

DEFAULT_INVENTORY_DIR = Path("/etc/keyward/inventory")
SETTINGS_FILE = "keyward.toml"  # the fleet-wide settings, beside the environment files


def find_inventory_dir(explicit: str | None, env: Mapping[str, str]) -> Path:
    """Where the inventory is: ``--inventory``, ``$KEYWARD_INVENTORY``, ``./inventory``, /etc.

    The first one given wins even if it does not exist, so a mistyped path
    fails loudly instead of silently falling through to another inventory.
    """
    if explicit:
        return Path(explicit)
    from_env = env.get("KEYWARD_INVENTORY")
    if from_env:
        return Path(from_env)
    local = Path("inventory")
    if local.is_dir():
        return local.absolute()
    return DEFAULT_INVENTORY_DIR
