"""An Ansible inventory, as ``ansible-inventory --list`` prints it, turned into environment files.

Teams already keep their host lists in Ansible.  This module is the pure half of
``keyward inventory import ansible``: JSON in, environment specs and one line per
thing it could not map out; running ``ansible-inventory`` is the CLI's job.

The mapping (docs/inventory.md, "Importing an Ansible inventory"):

- an environment is one Ansible group and every host under it (children included):
  ``ENV=GROUP`` pairs, or by convention every top-level group (a child of ``all``
  other than ``ungrouped``) under its own name; ``ENV=all`` takes the whole inventory;
- a host's other groups (direct or inherited) become its keyward ``groups``;
- ``ansible_host``/``ansible_port``/``ansible_user`` (or their ``ansible_ssh_*``
  aliases) become ``address``/``port``/``login``;
- every imported environment is ``mode = "managed-block"``: keys already on the hosts
  stay until a host is switched to ``exclusive`` on purpose.

Nothing is dropped silently.  A host that cannot be imported faithfully (invalid name,
several environments, an address keyward would refuse, a template, a non-SSH
connection) is left out with its reason, and every variable keyward has no use for is
named, host by host: a careful administrator reads the list before trusting the files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from keyward.attestation import ATTESTATION_LEVELS
from keyward.errors import UsageError
from keyward.inventory.hosts import check_address
from keyward.inventory.names import ACCOUNT_RE, NAME_RE
from keyward.inventory.where import SETTINGS_FILE

ALL = "all"
UNGROUPED = "ungrouped"
MODE = "managed-block"
# Each keyward field and the Ansible variables that set it, preferred name first.
ADDRESS_VARS = ("ansible_host", "ansible_ssh_host")
PORT_VARS = ("ansible_port", "ansible_ssh_port")
LOGIN_VARS = ("ansible_user", "ansible_ssh_user")
CONNECTION_VAR = "ansible_connection"
# Connection plugins that log in with SSH to a Unix account's authorized_keys.
SSH_CONNECTIONS = frozenset(
    {
        "ssh",
        "smart",
        "paramiko",
        "paramiko_ssh",
        "ansible.builtin.ssh",
        "ansible.legacy.ssh",
        "ansible.builtin.paramiko_ssh",
        "ansible.legacy.paramiko_ssh",
    }
)
# Why some common variables have no keyward field (others get a generic line).
HINTS = {
    "ansible_become": "keyward logs in as the host's login and needs root there",
    "ansible_become_user": "keyward logs in as the host's login and needs root there",
    "ansible_become_method": "keyward logs in as the host's login and needs root there",
    "ansible_become_password": "not imported (a secret)",
    "ansible_password": "not imported (a secret); the agent logs in with its own key",
    "ansible_ssh_pass": "not imported (a secret); the agent logs in with its own key",
    "ansible_ssh_private_key_file": "the agent logs in with its own key ([agent] identity)",
    "ansible_private_key_file": "the agent logs in with its own key ([agent] identity)",
    "ansible_python_interpreter": "the agent's interpreter is fleet-wide ([agent] python)",
}


@dataclass(frozen=True)
class ImportProblem:
    """Something of the Ansible inventory that is not in the environment files."""

    where: str
    """``host NAME``, ``group NAME`` or ``environment NAME``."""
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class ImportedHost:
    """One ``[[hosts]]`` entry; ``None`` fields are left to keyward's defaults."""

    name: str
    address: str | None
    port: int | None
    login: str | None
    groups: tuple[str, ...]


@dataclass(frozen=True)
class ImportedEnvironment:
    """One environment file to write, ``NAME.toml``."""

    name: str
    group: str
    hosts: tuple[ImportedHost, ...]

    @property
    def file_name(self) -> str:
        return f"{self.name}.toml"


@dataclass(frozen=True)
class Conversion:
    """What ``convert`` made of an inventory: the environments and what was not mapped."""

    environments: tuple[ImportedEnvironment, ...]
    problems: tuple[ImportProblem, ...]
    left_out: tuple[str, ...]
    """Hosts of the Ansible inventory that are in no environment file."""


def parse_env_groups(pairs: Iterable[str]) -> dict[str, str]:
    """``ENV=GROUP`` options as a mapping; malformed or repeated ones raise ``UsageError``."""
    result: dict[str, str] = {}
    for pair in pairs:
        env, sep, group = pair.partition("=")
        if not sep or not env or not group:
            raise UsageError(f"--env-group {pair!r}: expected ENV=GROUP")
        if env in result:
            raise UsageError(f"--env-group: environment {env!r} given twice")
        if group in result.values():
            raise UsageError(f"--env-group: group {group!r} given for two environments")
        result[env] = group
    return result


def load_list_json(text: str) -> dict[str, Any]:
    """The JSON of ``ansible-inventory --list``, checked for its shape."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise UsageError(f"not ansible-inventory --list JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get(ALL, {}), dict):
        raise UsageError("not ansible-inventory --list JSON: expected an object of groups")
    return data


class _Groups:
    """The group tree of a ``--list`` document: members, parents, depth and variables."""

    def __init__(self, data: Mapping[str, Any], problems: list[ImportProblem]) -> None:
        self.hosts: dict[str, list[str]] = {}
        self.children: dict[str, list[str]] = {}
        self.vars: dict[str, dict[str, Any]] = {}
        for name, body in data.items():
            if name == "_meta":
                continue
            if not isinstance(body, dict):
                problems.append(ImportProblem(f"group {name}", "not an object; ignored"))
                continue
            self.hosts[name] = [str(h) for h in _list(body.get("hosts"))]
            self.children[name] = [str(c) for c in _list(body.get("children"))]
            group_vars = body.get("vars")
            self.vars[name] = dict(group_vars) if isinstance(group_vars, dict) else {}
        self.hosts.setdefault(ALL, [])
        self.children.setdefault(ALL, [])
        for name in [c for kids in list(self.children.values()) for c in kids]:
            self.hosts.setdefault(name, [])
            self.children.setdefault(name, [])
            self.vars.setdefault(name, {})
        self._members: dict[str, list[str]] = {}
        self._groups_of: dict[str, list[str]] | None = None
        self._depth: dict[str, int] = {}
        self.parents: dict[str, list[str]] = {name: [] for name in self.hosts}
        for name, kids in self.children.items():
            for kid in kids:
                self.parents[kid].append(name)

    def members(self, group: str) -> list[str]:
        """Every host under ``group``, its children's included, in inventory order."""
        if group in self._members:
            return self._members[group]
        seen_groups: set[str] = set()
        found: dict[str, None] = {}

        def walk(name: str) -> None:
            if name in seen_groups:
                return
            seen_groups.add(name)
            found.update(dict.fromkeys(self.hosts.get(name, ())))
            for kid in self.children.get(name, ()):
                walk(kid)

        walk(group)
        self._members[group] = list(found)
        return self._members[group]

    def groups_of(self, host: str) -> list[str]:
        """Every group ``host`` is in, directly or through a child group."""
        if self._groups_of is None:
            self._groups_of = {}
            for group in self.hosts:
                for member in self.members(group):
                    self._groups_of.setdefault(member, []).append(group)
        return self._groups_of.get(host, [])

    def depth(self, group: str, _stack: frozenset[str] = frozenset()) -> int:
        """Ansible's group depth: 0 for ``all``, one more than the deepest parent."""
        if group not in self._depth:
            parents = [p for p in self.parents.get(group, ()) if p not in _stack]
            self._depth[group] = 1 + max(
                (self.depth(p, _stack | {group}) for p in parents), default=-1
            )
        return self._depth[group]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def convert(data: Mapping[str, Any], env_groups: Mapping[str, str] | None = None) -> Conversion:
    """Environment specs for ``data`` (``ansible-inventory --list`` JSON) and what was not mapped.

    ``env_groups`` maps environment names to Ansible groups; empty or ``None`` means every
    top-level group under its own name.  Bad environment names or unknown groups raise
    ``UsageError``: nothing sensible can be written then.
    """
    problems: list[ImportProblem] = []
    groups = _Groups(data, problems)
    meta = data.get("_meta")
    hostvars_all = meta.get("hostvars") if isinstance(meta, dict) else None
    hostvars: dict[str, Any] = dict(hostvars_all) if isinstance(hostvars_all, dict) else {}
    every_host = list(dict.fromkeys([*groups.members(ALL), *hostvars]))

    chosen = _environments(groups, env_groups)

    env_of: dict[str, list[str]] = {}
    for env, group in chosen.items():
        for host in groups.members(group):
            env_of.setdefault(host, []).append(env)

    left_out: list[str] = []
    for host in every_host:
        envs = env_of.get(host, [])
        if not envs:
            problems.append(ImportProblem(f"host {host}", "in no environment's group; left out"))
            left_out.append(host)
        elif len(envs) > 1:
            problems.append(
                ImportProblem(
                    f"host {host}",
                    f"in several environments ({', '.join(sorted(envs))}); left out "
                    "(a keyward host belongs to one environment)",
                )
            )
            left_out.append(host)

    bad_groups: dict[str, list[str]] = {}
    endpoints: dict[tuple[str, int], str] = {}
    environments: list[ImportedEnvironment] = []
    for env, group in chosen.items():
        imported: list[ImportedHost] = []
        for host in groups.members(group):
            if env_of.get(host) != [env]:
                continue
            item = _host(host, group, groups, hostvars.get(host), problems, bad_groups)
            if item is None:
                left_out.append(host)
                continue
            endpoint = ((item.address or item.name).lower(), item.port or 22)
            if endpoint in endpoints:
                problems.append(
                    ImportProblem(
                        f"host {host}",
                        f"{endpoint[0]}:{endpoint[1]} is already used by host "
                        f"{endpoints[endpoint]}; left out (two names for one machine?)",
                    )
                )
                left_out.append(host)
                continue
            endpoints[endpoint] = host
            imported.append(item)
        if imported:
            environments.append(ImportedEnvironment(env, group, tuple(imported)))
        else:
            problems.append(
                ImportProblem(f"environment {env}", f"group {group!r}: no host to import; no file")
            )
    for name, hosts in bad_groups.items():
        problems.append(
            ImportProblem(
                f"group {name}",
                f"not a valid keyward group name; left off host(s) {_few(hosts)}",
            )
        )
    return Conversion(tuple(environments), tuple(problems), tuple(dict.fromkeys(left_out)))


def _environments(groups: _Groups, env_groups: Mapping[str, str] | None) -> dict[str, str]:
    """Environment name -> Ansible group: the ``ENV=GROUP`` pairs, or every top-level group."""
    if env_groups:
        chosen = dict(env_groups)
        for env, group in chosen.items():
            if group not in groups.hosts:
                known = _few(sorted(groups.hosts)) or "none"
                raise UsageError(f"--env-group {env}={group}: no group {group!r} (groups: {known})")
    else:
        chosen = {g: g for g in groups.children[ALL] if g != UNGROUPED}
        if not chosen:
            raise UsageError(
                "the inventory has no top-level group to make an environment of; "
                "name one with --env-group ENV=GROUP (ENV=all for the whole inventory)"
            )
    for env in chosen:
        if not NAME_RE.fullmatch(env):
            raise UsageError(f"{env!r} is not a valid environment name ({NAME_RE.pattern})")
        if f"{env}.toml" == SETTINGS_FILE:
            raise UsageError(f"environment {env!r} would be written to {SETTINGS_FILE}; rename it")
    return chosen


def _host(
    name: str,
    env_group: str,
    groups: _Groups,
    own_vars: Any,
    problems: list[ImportProblem],
    bad_groups: dict[str, list[str]],
) -> ImportedHost | None:
    """One host, or ``None`` (with its reason in ``problems``) if it cannot be imported."""
    where = f"host {name}"

    def leave(message: str) -> None:
        problems.append(ImportProblem(where, f"{message}; left out"))

    if not NAME_RE.fullmatch(name):
        leave(f"not a valid keyward host name ({NAME_RE.pattern})")
        return None
    member_of = groups.groups_of(name)
    # Group variables (``--export`` keeps them on the groups; ``--list`` has already merged
    # them into the host's) under the host's own, applied the way Ansible does: shallow
    # groups first, then by name.
    variables: dict[str, Any] = {}
    for group in sorted({ALL, *member_of}, key=lambda g: (groups.depth(g), g)):
        variables.update(groups.vars.get(group, {}))
    if isinstance(own_vars, dict):
        variables.update(own_vars)

    values: dict[str, Any] = {}
    for field, names in (("address", ADDRESS_VARS), ("port", PORT_VARS), ("login", LOGIN_VARS)):
        given = {var: variables.pop(var) for var in names if var in variables}
        distinct = {json.dumps(v, sort_keys=True, default=str) for v in given.values()}
        if len(distinct) > 1:
            shown = ", ".join(f"{var}={_shown(given[var])}" for var in given)
            leave(f"{shown} disagree (which one Ansible uses depends on precedence)")
            return None
        if given:
            var, value = next(iter(given.items()))
            if isinstance(value, str) and ("{{" in value or "{%" in value):
                leave(f"{var} {_shown(value)} is a Jinja2 template (only a playbook renders it)")
                return None
            values[field] = (var, value)

    connection = variables.pop(CONNECTION_VAR, None)
    if connection is not None and connection not in SSH_CONNECTIONS:
        leave(f"{CONNECTION_VAR} {_shown(connection)} is not SSH")
        return None

    address: str | None = None
    if "address" in values:
        var, value = values["address"]
        problem = "must be a string" if not isinstance(value, str) or not value else None
        problem = problem or check_address(value)
        if problem:
            leave(f"{var} {_shown(value)}: {problem}")
            return None
        address = None if value == name else value
    port: int | None = None
    if "port" in values:
        var, value = values["port"]
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str) and value.isascii() and value.isdigit():
            number = int(value)
        if number is None or not 1 <= number <= 65535:
            leave(f"{var} {_shown(value)}: must be a port number 1-65535")
            return None
        port = None if number == 22 else number
    login: str | None = None
    if "login" in values:
        var, value = values["login"]
        if not isinstance(value, str) or not ACCOUNT_RE.fullmatch(value):
            leave(f"{var} {_shown(value)}: not a POSIX login ({ACCOUNT_RE.pattern})")
            return None
        login = value

    host_groups: list[str] = []
    for group in member_of:
        if group in (ALL, UNGROUPED, env_group):
            continue
        if NAME_RE.fullmatch(group):
            host_groups.append(group)
        else:
            bad_groups.setdefault(group, []).append(name)
    for var in sorted(variables):
        hint = HINTS.get(var, "no keyward equivalent")
        problems.append(ImportProblem(where, f"variable {var} not imported: {hint}"))
    return ImportedHost(name, address, port, login, tuple(host_groups))


def _shown(value: Any) -> str:
    """A variable's value for a message: short strings and numbers as they are, nothing else.

    A vaulted value is a dict holding ciphertext; it has no place in a report.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        return f"(a {type(value).__name__} value)"
    text = repr(value)
    return text if len(text) <= 62 else text[:58] + "...'"


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# -- writing ------------------------------------------------------------------


def render(env: ImportedEnvironment, source: str, min_attestation: str = "proof") -> str:
    """The environment file for ``env``, as TOML that keyward's loader reads back.

    Fields every host shares (``login``, ``port``) go to ``[defaults]``; the rest per host.
    """
    if min_attestation not in ATTESTATION_LEVELS:
        raise UsageError(
            f"unknown attestation {min_attestation!r}; expected one of "
            f"{', '.join(ATTESTATION_LEVELS)}"
        )
    shared: dict[str, Any] = {}
    for field in ("login", "port"):
        values = {getattr(host, field) for host in env.hosts}
        if len(values) == 1 and None not in values:
            shared[field] = values.pop()
    lines = [
        f"# Imported from the Ansible inventory {_comment(source)}, group {_comment(env.group)},",
        "# by `keyward inventory import ansible`.  Review before use: min_attestation is a",
        "# security decision, and managed-block leaves the keys already on these hosts in",
        "# place until a host is switched to exclusive on purpose.",
        "",
        "[environment]",
        f"name = {_string(env.name)}",
        f"min_attestation = {_string(min_attestation)}",
        "",
        "[defaults]",
        f"mode = {_string(MODE)}",
    ]
    lines += [f"{field} = {_value(value)}" for field, value in shared.items()]
    for host in env.hosts:
        lines += ["", "[[hosts]]", f"name = {_string(host.name)}"]
        for field in ("address", "port", "login"):
            value = getattr(host, field)
            if value is not None and field not in shared:
                lines.append(f"{field} = {_value(value)}")
        if host.groups:
            lines.append(f"groups = [{', '.join(_string(g) for g in host.groups)}]")
    return "\n".join(lines) + "\n"


def _value(value: str | int) -> str:
    return str(value) if isinstance(value, int) else _string(value)


def _string(text: str) -> str:
    """A TOML basic string: JSON's escapes are all valid TOML escapes."""
    return json.dumps(text, ensure_ascii=False)


def _comment(text: str) -> str:
    """``text`` safe inside a one-line TOML comment."""
    return "".join(char if char.isprintable() else "?" for char in text)
