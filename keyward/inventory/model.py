"""The inventory as frozen values: what exists, and who may reach which account where.

Everything here is immutable (frozen dataclasses, tuples) so that one loaded
inventory can be shared by the planner, the agent and the CLI without any of
them changing what the others see.  Validation lives in ``load.py`` and the
readers it calls; these classes assume they were built from a checked inventory.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from keyward.errors import UsageError
from keyward.inventory.policy import PolicySettings
from keyward.keys import PublicKey

if TYPE_CHECKING:
    # Only an annotation here; the settings reader imports it when keyward.toml has one.
    from keyward.inventory.directory_settings import DirectorySettings

Mode = Literal["exclusive", "managed-block"]
MODES: tuple[Mode, ...] = ("exclusive", "managed-block")
Become = Literal["sudo"]
BECOME: tuple[Become, ...] = ("sudo",)


@dataclass(frozen=True)
class AgentSettings:
    """How the agent connects (``[agent]`` in ``keyward.toml``).

    ``identity_pub`` is the agent's own public key: the planner keeps it on
    every login account, so no plan can lock the agent out.
    """

    identity: Path
    identity_pub: Path
    known_hosts: Path
    concurrency: int
    connect_timeout: float
    python: str


@dataclass(frozen=True)
class Hop:
    """One jump host on the way to a managed host: only logged in to, never managed.

    Its host key is pinned in the same known_hosts file as every host's, for exactly
    ``address`` and ``port``; ``login`` only has to be allowed to open a TCP tunnel.
    """

    name: str
    address: str
    port: int
    login: str


@dataclass(frozen=True)
class Host:
    """One SSH endpoint and the accounts keyward manages on it.

    ``authorized_keys`` holds sshd ``AuthorizedKeysFile`` patterns (tokens
    ``%h %u %U %%``), each either absolute or starting with ``%h/``; every
    listed file is managed for every managed account.
    """

    name: str
    environment: str
    address: str
    port: int
    login: str
    authorized_keys: tuple[str, ...]
    mode: Mode
    groups: tuple[str, ...]
    accounts: tuple[str, ...]
    customer: str | None = None
    auth_log: str = "auto"  # where sshd logs: auto, journal, or an absolute file path
    # Whether logins read from a log *file* may be attributed and alerted on. Any local user
    # can write sshd-looking lines into a syslog file (logger -t 'sshd[1]' ...), so a file
    # is not evidence of who logged in unless the operator vouches for it here; the journal
    # (filtered to what a root sshd logged through syslog) is always used. Even a trusted
    # file never puts anyone into failure mode.
    auth_log_trusted: bool = False
    sshd_config: str = "/etc/ssh/sshd_config"  # what `keyward plan` checks with sshd -T
    # How a non-root ``login`` becomes root to run the helper: None (the login is root) or
    # "sudo" (``sudo -n``, never a password prompt).
    become: Become | None = None
    # The jump hosts to tunnel through, first hop first; empty for a direct connection.
    jump: tuple[Hop, ...] = ()

    @property
    def managed_accounts(self) -> tuple[str, ...]:
        """``accounts`` plus the login account, without duplicates, in order.

        The login account is always managed because the agent's own key must
        survive there; an account is never managed just because a rule names it.
        """
        return tuple(dict.fromkeys((*self.accounts, self.login)))


@dataclass(frozen=True)
class AccessRule:
    """``[[access]]``: members of ``roles`` may log in to ``accounts`` on matching hosts.

    ``groups`` and ``hosts`` are both ``None`` for "every host of the
    environment"; otherwise a host matches if it is named in ``hosts`` or is in
    one of ``groups``.  ``source`` locates the rule for messages and audit,
    e.g. ``production.toml: access[0]``.
    """

    environment: str
    roles: tuple[str, ...]
    accounts: tuple[str, ...]
    groups: tuple[str, ...] | None
    hosts: tuple[str, ...] | None
    options: tuple[str, ...]
    source: str

    def applies_to(self, host: Host) -> bool:
        """True when this rule covers ``host`` (same environment, and group/host match)."""
        return _matches(self.environment, self.groups, self.hosts, host)


@dataclass(frozen=True)
class BreakGlass:
    """``[[break_glass]]``: a key kept on ``accounts`` of matching hosts, outside the registry.

    Typically an escrowed key whose private half sits in a vault, so that
    someone can still log in when the registry or the agent is broken.
    """

    environment: str
    accounts: tuple[str, ...]
    key: PublicKey
    groups: tuple[str, ...] | None
    hosts: tuple[str, ...] | None
    options: tuple[str, ...]
    source: str

    def applies_to(self, host: Host) -> bool:
        """True when this key belongs on ``host`` (same rule as ``AccessRule.applies_to``)."""
        return _matches(self.environment, self.groups, self.hosts, host)


def _matches(
    environment: str,
    groups: tuple[str, ...] | None,
    hosts: tuple[str, ...] | None,
    host: Host,
) -> bool:
    """Shared matching of access and break-glass rules against one host."""
    if host.environment != environment:
        return False
    if groups is None and hosts is None:
        return True
    if hosts is not None and host.name in hosts:
        return True
    return groups is not None and any(group in groups for group in host.groups)


@dataclass(frozen=True)
class Environment:
    """One environment file: its hosts, access rules and break-glass keys."""

    name: str
    min_attestation: str
    customer: str | None
    hosts: tuple[Host, ...]
    access: tuple[AccessRule, ...]
    break_glass: tuple[BreakGlass, ...]
    source_file: str

    @property
    def groups(self) -> tuple[str, ...]:
        """Every group named by a host of this environment, sorted."""
        return tuple(sorted({group for host in self.hosts for group in host.groups}))


@dataclass(frozen=True)
class Inventory:
    """The whole checked inventory; ``root`` is the directory it was read from."""

    root: Path
    agent: AgentSettings
    policy: PolicySettings
    environments: tuple[Environment, ...]
    directory: DirectorySettings | None = None
    """``[directory]`` of ``keyward.toml``: where ``directory sync`` reads people from."""

    def hosts(self) -> tuple[Host, ...]:
        """Every host, environment by environment, in file order."""
        return tuple(host for env in self.environments for host in env.hosts)

    def environment(self, name: str) -> Environment:
        """The environment called ``name``; ``UsageError`` if there is none."""
        for env in self.environments:
            if env.name == name:
                return env
        known = ", ".join(env.name for env in self.environments) or "none"
        raise UsageError(f"unknown environment {name!r} (known: {known})")

    def host(self, name: str) -> Host:
        """The host called ``name`` (names are unique fleet-wide); ``UsageError`` if none."""
        for host in self.hosts():
            if host.name == name:
                return host
        names = [host.name for host in self.hosts()]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(
            f"unknown host {name!r}{hint}; the inventory has {len(names)} hosts "
            "(see 'keyward inventory show')"
        )

    def select_hosts(self, env: str | None = None, host: str | None = None) -> tuple[Host, ...]:
        """Hosts named by the CLI's ``--env``/``--host``: all, one environment, or one host.

        With both, the host must be in that environment, so a typo cannot
        silently widen or move the target.
        """
        if host is not None:
            found = self.host(host)
            if env is not None:
                self.environment(env)
                if found.environment != env:
                    raise UsageError(
                        f"host {host!r} is in environment {found.environment!r}, not {env!r}"
                    )
            return (found,)
        if env is not None:
            return self.environment(env).hosts
        return self.hosts()

    def access_for(self, host: Host) -> tuple[AccessRule, ...]:
        """The access rules that cover ``host``, in file order."""
        return tuple(
            rule for rule in self.environment(host.environment).access if rule.applies_to(host)
        )

    def break_glass_for(self, host: Host) -> tuple[BreakGlass, ...]:
        """The break-glass keys that belong on ``host``, in file order."""
        return tuple(
            entry
            for entry in self.environment(host.environment).break_glass
            if entry.applies_to(host)
        )
