"""A real fleet for agent tests: sshd hosts on loopback, real local accounts, an inventory.

Each test gets fresh accounts (deploy and app, with unique names), three sshd
hosts whose AuthorizedKeysFile lives in the users' own home directories (so
the traps a user can plant are real), a registry, and the CLI.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from keyward.testing.fleet import FleetHost, safe_base_dir
from keyward.testing.inventory import AccessSpec, InventorySpec, write_inventory
from keyward.testing.keypairs import make_ed25519
from keyward.testing.localfleet import LocalFleet
from keyward.testing.ssh_client import can_login
from tests.accounts import ensure_account, remove_account
from tests.cli_runner import Keyward


@dataclass
class AgentEnv:
    fleet: LocalFleet
    base: Path
    inventory: Path
    keys: Path
    deploy: str
    app: str
    kw: Keyward
    agent_key: Path
    spec: InventorySpec

    @property
    def hosts(self) -> list[FleetHost]:
        return self.fleet.hosts

    def key(self, name: str) -> Path:
        """A user key pair made on first use; returns the private key path."""
        path = self.keys / name
        if not path.exists():
            make_ed25519(path, comment=f"{name}@laptop")
        return path

    def pub(self, name: str) -> Path:
        return Path(f"{self.key(name)}.pub")

    def can_login(self, host: FleetHost, user: str, key: str | Path) -> bool:
        identity = key if isinstance(key, Path) else self.key(key)
        return can_login(host, user, identity, self.inventory / "known_hosts")

    def file(self, host: FleetHost, user: str) -> Path:
        return host.authorized_keys_path(user)

    def rewrite_inventory(self, spec: InventorySpec) -> None:
        self.spec = spec
        write_inventory(self.inventory, self.hosts, spec, self.agent_key)

    def person_with_key(self, username: str, role: str | None = None) -> str:
        """Register a person with an admin-attested key (and a role); return the fingerprint."""
        self.kw.ok("person", "add", username, "--name", username.title())
        out = self.kw.ok("key", "add", username, str(self.pub(username)), "--attest", "admin").out
        if role:
            self.kw("role", "add", role)
            self.kw.ok("role", "grant", role, username, "--reason", "test", actor="security")
        return out.split()[3]


def default_spec(deploy: str, app: str) -> InventorySpec:
    return InventorySpec(
        environment="test",
        login="root",
        accounts=(deploy, app),
        access=(
            AccessSpec(roles=("devops",), accounts=(deploy, "root")),
            AccessSpec(roles=("qa",), accounts=(app,), options=("no-port-forwarding",)),
        ),
    )


def agent_env(db_url: str, tmp_path: Path, hosts: int = 3) -> Iterator[AgentEnv]:
    tag = secrets.token_hex(3)
    base = safe_base_dir(f"keyward-test-{tag}-")
    deploy, app = f"kwd{tag}", f"kwa{tag}"
    ensure_account(deploy, base / "home")
    ensure_account(app, base / "home")
    prefix = f"t{tag}h"
    fleet = LocalFleet(
        base / "fleet",
        hosts,
        authorized_keys_file=".ssh/authorized_keys_{name}",
        name_prefix=prefix,
    )
    try:
        fleet.start()
        keys = tmp_path / "keys"
        agent_key = make_ed25519(keys / "agent", comment="keyward-agent")
        inventory = tmp_path / "inventory"
        spec = default_spec(deploy, app)
        write_inventory(inventory, fleet.hosts, spec, agent_key)
        # Bootstrap: the agent's key must be on root's file once, as an operator would do.
        for host in fleet.hosts:
            path = host.authorized_keys_path("root")
            path.parent.mkdir(mode=0o700, exist_ok=True)
            path.write_text(Path(f"{agent_key}.pub").read_text())
            os.chmod(path, 0o600)
        kw = Keyward(db_url, str(inventory))
        kw.ok("init")
        yield AgentEnv(fleet, base, inventory, keys, deploy, app, kw, agent_key, spec)
    finally:
        fleet.stop()
        for host in fleet.hosts:
            with contextlib.suppress(OSError):
                host.authorized_keys_path("root").unlink()
        remove_account(deploy)
        remove_account(app)
        shutil.rmtree(base, ignore_errors=True)
