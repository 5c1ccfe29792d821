"""Access rules and break-glass keys: ``[[access]]`` and ``[[break_glass]]`` of an environment.

A rule is checked against the hosts of its own environment: every group and
host it names must exist there, it must match some host, every matched host
must manage its accounts, and it must not cross customers.  A rule that
silently matches nothing, or more than meant, is how access goes wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyward.errors import KeyPolicyError
from keyward.inventory.model import AccessRule, BreakGlass, Host
from keyward.inventory.names import NAME_RE, read_accounts
from keyward.inventory.policy import PolicySettings
from keyward.inventory.reader import Reader, join
from keyward.keys import PublicKey, parse_public_key
from keyward.options import validate_option, validate_options

_ACCESS_FIELDS = ("roles", "accounts", "groups", "hosts", "options")
_BREAK_GLASS_FIELDS = ("accounts", "key", "groups", "hosts", "options")


def read_rules(
    reader: Reader,
    data: Mapping[str, Any],
    name: str,
    hosts: list[Host],
    policy: PolicySettings,
    fleet_hosts: Mapping[str, str],
) -> tuple[list[AccessRule], list[BreakGlass]]:
    """The environment ``name``'s rules and break-glass keys, checked against its ``hosts``.

    ``fleet_hosts`` (host name -> where it is defined) only improves the message
    for a rule that names another environment's host.
    """
    file = reader.file
    env_host_names = {host.name for host in hosts}
    env_groups = {group for host in hosts for group in host.groups}
    access: list[AccessRule] = []
    for where, table in reader.tables(data, "access"):
        reader.fields(table, where, _ACCESS_FIELDS)
        roles = reader.names(table, where, "roles", NAME_RE, "role name", required=True)
        rule = AccessRule(
            environment=name,
            roles=roles or (),
            accounts=read_accounts(reader, table, where),
            groups=reader.names(table, where, "groups", NAME_RE, "group name"),
            hosts=reader.names(table, where, "hosts", NAME_RE, "host name"),
            options=read_options(reader, table, where),
            source=f"{file}: {where}",
        )
        check_targets(reader, where, rule, hosts, env_host_names, env_groups, fleet_hosts)
        access.append(rule)

    break_glass: list[BreakGlass] = []
    for where, table in reader.tables(data, "break_glass"):
        reader.fields(table, where, _BREAK_GLASS_FIELDS)
        key = read_key(reader, table, where, policy)
        # Targets are checked through an equivalent rule so that a bad key
        # does not hide problems with the rest of the entry.
        target = AccessRule(
            environment=name,
            roles=(),
            accounts=read_accounts(reader, table, where),
            groups=reader.names(table, where, "groups", NAME_RE, "group name"),
            hosts=reader.names(table, where, "hosts", NAME_RE, "host name"),
            options=read_options(reader, table, where),
            source=f"{file}: {where}",
        )
        check_targets(reader, where, target, hosts, env_host_names, env_groups, fleet_hosts)
        if key is not None:
            break_glass.append(
                BreakGlass(
                    environment=name,
                    accounts=target.accounts,
                    key=key,
                    groups=target.groups,
                    hosts=target.hosts,
                    options=target.options,
                    source=target.source,
                )
            )
    return access, break_glass


def read_options(reader: Reader, table: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """Options through the ``keyward.options`` allowlist, every bad one reported."""
    values = reader.strings(table, where, "options")
    if values is None:
        return ()
    key = join(where, "options")
    good = True
    for text in values:
        try:
            validate_option(text)
        except ValueError as error:
            reader.add(key, str(error))
            good = False
    if not good:
        return ()
    try:
        return validate_options(values)
    except ValueError as error:
        reader.add(key, str(error))
        return ()


def read_key(
    reader: Reader, table: Mapping[str, Any], where: str, policy: PolicySettings
) -> PublicKey | None:
    """A break-glass key under the fleet's key policy; messages never quote the key."""
    text = reader.string(table, where, "key", required=True)
    if text is None:
        return None
    try:
        return parse_public_key(text, policy.key_policy())
    except KeyPolicyError as error:
        message = error.message
        # Belt and braces: never echo anything that looks like key material.
        if any(len(token) >= 16 and token in message for token in text.split()):
            message = "not a valid public key"
        reader.add(join(where, "key"), message)
        return None


def check_targets(
    reader: Reader,
    where: str,
    rule: AccessRule,
    hosts: list[Host],
    host_names: set[str],
    groups: set[str],
    fleet_hosts: Mapping[str, str],
) -> None:
    """Named groups/hosts must exist here; every matched host must manage the accounts."""
    dangling = False
    for group in rule.groups or ():
        if group not in groups:
            known = ", ".join(sorted(groups)) or "none"
            reader.add(
                join(where, "groups"),
                f"no host of this environment is in group {group!r} (groups: {known})",
            )
            dangling = True
    for host in rule.hosts or ():
        if host not in host_names:
            elsewhere = fleet_hosts.get(host)
            hint = f" (it is defined in {elsewhere})" if elsewhere else ""
            reader.add(join(where, "hosts"), f"host {host!r} is not in this environment{hint}")
            dangling = True
    matched = [host for host in hosts if rule.applies_to(host)]
    if not matched:
        if not dangling:
            reader.add(where, "matches no host")
        return
    # Hosts without a customer are the fleet owner's own; only two different named
    # customers behind one rule is a crossing.
    customers = sorted({host.customer for host in matched if host.customer})
    if len(customers) > 1 and isinstance(rule, AccessRule):
        reader.add(
            where,
            f"crosses customers ({', '.join(customers)}): one rule would give the same "
            "people access to several customers' hosts; split it with groups/hosts",
        )
    for account in rule.accounts:
        missing = [host.name for host in matched if account not in host.managed_accounts]
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            reader.add(
                join(where, "accounts"),
                f"account {account!r} is not managed on host(s) {shown}; add it to their "
                "accounts or narrow the rule with groups/hosts",
            )
