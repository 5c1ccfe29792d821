"""Hosts and their authorized_keys paths: ``[defaults]`` and ``[[hosts]]`` of an environment.

A host's file patterns decide which files keyward rewrites as root, so they
are checked as strictly as sshd would read them (``normalise_authorized_keys``),
and names and ``address:port`` must be unique fleet-wide (``SeenHosts``): two
entries for one machine would fight over its files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

from keyward.inventory.model import BECOME, MODES, Become, Hop, Host, Mode
from keyward.inventory.names import ACCOUNT_RE, NAME_RE, read_accounts, what_account
from keyward.inventory.reader import MISSING, Reader, has_unsafe_char, join, short

DEFAULT_LOGIN = "root"
DEFAULT_PORT = 22
DEFAULT_AUTHORIZED_KEYS = ("%h/.ssh/authorized_keys",)
DEFAULT_MODE: Mode = "exclusive"
DEFAULT_SSHD_CONFIG = "/etc/ssh/sshd_config"

_DEFAULT_FIELDS = (
    "login",
    "port",
    "authorized_keys",
    "mode",
    "accounts",
    "auth_log",
    "auth_log_trusted",
    "sshd_config",
    "become",
    "jump",
)
_HOST_FIELDS = (
    "name",
    "address",
    "port",
    "login",
    "authorized_keys",
    "mode",
    "groups",
    "accounts",
    "customer",
    "auth_log",
    "auth_log_trusted",
    "sshd_config",
    "become",
    "jump",
)
_JUMP_FIELDS = ("name", "address", "port", "login")


@dataclass
class SeenHosts:
    """Hosts defined so far, fleet-wide: where each name and ``address:port`` was defined."""

    names: dict[str, str] = field(default_factory=dict)
    endpoints: dict[tuple[str, int], str] = field(default_factory=dict)


def normalise_authorized_keys(pattern: str) -> str:
    """Check one ``AuthorizedKeysFile``-style pattern and return it as keyward stores it.

    Only sshd's tokens ``%h %u %U %%`` are allowed.  ``%h`` may only start
    the pattern (``%h/...``); a relative pattern means "relative to the home
    directory", as in sshd, and is stored with an explicit ``%h/``.  Blanks
    are refused because sshd splits ``AuthorizedKeysFile`` on them, and
    ``.``/``..``/empty components because a managed path must say plainly
    which file it is.  Raises ``ValueError`` with a reason.
    """
    if pattern == "":
        raise ValueError("must not be empty")
    if has_unsafe_char(pattern) or any(char.isspace() for char in pattern):
        raise ValueError("must not contain whitespace or control characters")
    index = 0
    while index < len(pattern):
        if pattern[index] == "%":
            sequence = pattern[index : index + 2]
            if sequence not in ("%h", "%u", "%U", "%%"):
                raise ValueError(f"unknown token {sequence!r}; only %h %u %U %% are expanded")
            if sequence == "%h" and (index != 0 or not pattern.startswith("%h/")):
                raise ValueError("%h may only start the pattern, as %h/...")
            index += 2
        else:
            index += 1
    if not pattern.startswith(("/", "%h/")):
        pattern = "%h/" + pattern
    components = pattern.split("/")[1:]
    if any(component in ("", ".", "..") for component in components):
        raise ValueError("must not contain empty, '.' or '..' path components")
    if pattern == "%h/":
        raise ValueError("must name a file")
    return pattern


def per_account(pattern: str) -> bool:
    """True if ``pattern`` expands differently per account (has %h, %u or %U)."""
    return any(token in pattern.replace("%%", "") for token in ("%h", "%u", "%U"))


def check_address(address: str) -> str | None:
    """Why ``address`` cannot be given to ssh as a host, or ``None`` if it can."""
    if any(char.isspace() for char in address):
        return "must not contain whitespace"
    if address.startswith("-"):
        return "must not start with '-'"
    if "@" in address:
        return "must not contain '@' (the account is the login field)"
    return None


def read_hosts(
    reader: Reader, data: Mapping[str, Any], env: str, customer: str | None, seen: SeenHosts
) -> list[Host]:
    """``[defaults]``, ``[[jump_hosts]]`` and ``[[hosts]]``; registers hosts fleet-wide.

    A host's ``jump`` names hops of this same file, each a ``[[jump_hosts]]`` entry or a
    ``[[hosts]]`` entry (reached at its own address, port and login), so that a host's whole
    path can be read in one file.
    """
    defaults = reader.table(data, "", "defaults") or {}
    reader.fields(defaults, "defaults", _DEFAULT_FIELDS)
    d_login = _login(reader, defaults, "defaults", DEFAULT_LOGIN)
    d_port = reader.integer(defaults, "defaults", "port", DEFAULT_PORT, 1, 65535)
    d_files = _authorized_keys(reader, defaults, "defaults", DEFAULT_AUTHORIZED_KEYS)
    d_mode = _mode(reader, defaults, "defaults", DEFAULT_MODE)
    d_accounts = read_accounts(reader, defaults, "defaults", required=False)
    d_auth_log = _auth_log(reader, defaults, "defaults", "auto")
    d_trusted = reader.boolean(defaults, "defaults", "auth_log_trusted", False)
    d_sshd_config = _sshd_config(reader, defaults, "defaults", DEFAULT_SSHD_CONFIG)
    d_become = _become(reader, defaults, "defaults", None)
    d_jump = reader.names(defaults, "defaults", "jump", NAME_RE, "host name") or ()
    jump_hosts = _jump_hosts(reader, data, d_port)

    hosts: list[Host] = []
    jumps: list[tuple[str, tuple[str, ...]]] = []
    for where, table in reader.tables(data, "hosts"):
        reader.fields(table, where, _HOST_FIELDS)
        name, address, port = _endpoint(reader, table, where, d_port)
        accounts = (
            read_accounts(reader, table, where, required=False)
            if "accounts" in table
            else d_accounts
        )
        host = Host(
            name=name or "",
            environment=env,
            address=address,
            port=port,
            login=_login(reader, table, where, d_login),
            authorized_keys=_authorized_keys(reader, table, where, d_files),
            mode=_mode(reader, table, where, d_mode),
            groups=reader.names(table, where, "groups", NAME_RE, "group name") or (),
            accounts=accounts,
            customer=reader.string(table, where, "customer", customer),
            auth_log=_auth_log(reader, table, where, d_auth_log),
            auth_log_trusted=reader.boolean(table, where, "auth_log_trusted", d_trusted),
            sshd_config=_sshd_config(reader, table, where, d_sshd_config),
            become=_become(reader, table, where, d_become),
        )
        hop_names = (
            reader.names(table, where, "jump", NAME_RE, "host name", allow_empty=True) or ()
            if "jump" in table
            else d_jump
        )
        if len(host.managed_accounts) > 1:
            for pattern in host.authorized_keys:
                if not per_account(pattern):
                    reader.add(
                        join(where, "authorized_keys"),
                        f"{short(pattern)} has no %h, %u or %U, so all "
                        f"{len(host.managed_accounts)} managed accounts would share one file",
                    )
        if name is None:
            continue
        if name in seen.names:
            reader.add(
                join(where, "name"),
                f"host {name!r} is already defined in {seen.names[name]}",
            )
            continue
        seen.names[name] = f"{reader.file}: {where}"
        endpoint = (address.lower(), port)
        if address and endpoint in seen.endpoints:
            reader.add(
                join(where, "address"),
                f"{address}:{port} is already used by {seen.endpoints[endpoint]}",
            )
        elif address:
            seen.endpoints[endpoint] = f"host {name!r} ({reader.file})"
        hosts.append(host)
        jumps.append((where, hop_names))
    return _with_jumps(reader, hosts, jumps, jump_hosts)


def _endpoint(
    reader: Reader, table: Mapping[str, Any], where: str, default_port: int
) -> tuple[str | None, str, int]:
    """A host's or jump host's name, address (default: the name) and port, each checked.

    The name is None when missing or invalid (the problem is recorded).
    """
    name = reader.string(table, where, "name", required=True)
    if name is not None and not NAME_RE.fullmatch(name):
        reader.add(join(where, "name"), f"{short(name)} is not a valid host name")
        name = None
    address = reader.string(table, where, "address", name) or ""
    problem = check_address(address) if address else None
    if problem:
        reader.add(join(where, "address"), problem)
    return name, address, reader.integer(table, where, "port", default_port, 1, 65535)


def _jump_hosts(reader: Reader, data: Mapping[str, Any], default_port: int) -> dict[str, Hop]:
    """``[[jump_hosts]]``: bastions that are only passed through, never managed."""
    hops: dict[str, Hop] = {}
    for where, table in reader.tables(data, "jump_hosts"):
        reader.fields(table, where, _JUMP_FIELDS)
        name, address, port = _endpoint(reader, table, where, default_port)
        login = _login(reader, table, where, DEFAULT_LOGIN)
        if name is None:
            continue
        if name in hops:
            reader.add(join(where, "name"), f"jump host {name!r} is defined twice")
            continue
        hops[name] = Hop(name=name, address=address, port=port, login=login)
    return hops


def _with_jumps(
    reader: Reader,
    hosts: list[Host],
    jumps: list[tuple[str, tuple[str, ...]]],
    jump_hosts: Mapping[str, Hop],
) -> list[Host]:
    """Each host with its hops resolved: a ``[[jump_hosts]]`` entry, else a host of the file."""
    by_name = {host.name: host for host in hosts}
    for name in jump_hosts:
        if name in by_name:
            reader.add("jump_hosts", f"{name!r} is both a jump host and a host; rename one")
    result: list[Host] = []
    for host, (where, names) in zip(hosts, jumps, strict=True):
        hops: list[Hop] = []
        for name in names:
            hop = jump_hosts.get(name)
            target = by_name.get(name)
            if hop is None and target is not None:
                hop = Hop(name=name, address=target.address, port=target.port, login=target.login)
            if hop is None:
                reader.add(
                    join(where, "jump"),
                    f"{name!r} is neither a [[jump_hosts]] entry nor a host of this file",
                )
            elif name == host.name or hop in hops:
                reader.add(join(where, "jump"), f"{name!r} would be passed through twice")
            else:
                hops.append(hop)
        result.append(replace(host, jump=tuple(hops)) if hops else host)
    return result


def _become(
    reader: Reader, table: Mapping[str, Any], where: str, default: Become | None
) -> Become | None:
    value = reader.string(table, where, "become")
    if value is None:
        return default
    if value == "none":
        return None
    if value not in BECOME:
        reader.add(join(where, "become"), f"{short(value)} is not one of none, sudo")
        return default
    return "sudo"


def _login(reader: Reader, table: Mapping[str, Any], where: str, default: str) -> str:
    value = reader.string(table, where, "login", default) or default
    if not ACCOUNT_RE.fullmatch(value):
        reader.add(join(where, "login"), f"{short(value)} is not a valid {what_account()}")
    return value


def _mode(reader: Reader, table: Mapping[str, Any], where: str, default: Mode) -> Mode:
    value = reader.string(table, where, "mode", default) or default
    if value not in MODES:
        reader.add(join(where, "mode"), f"{short(value)} is not one of {', '.join(MODES)}")
        return default
    return value


def _authorized_keys(
    reader: Reader, table: Mapping[str, Any], where: str, default: tuple[str, ...]
) -> tuple[str, ...]:
    """One pattern or a list of patterns; every listed file is managed."""
    value = table.get("authorized_keys", MISSING)
    key = join(where, "authorized_keys")
    if value is MISSING:
        return default
    if isinstance(value, str):
        raw: list[str] = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        raw = cast(list[str], value)
    else:
        reader.add(key, "must be a string or an array of strings")
        return default
    if not raw:
        reader.add(key, "must not be empty (leave the field out instead)")
        return default
    result: list[str] = []
    good = True
    for item in raw:
        try:
            normalised = normalise_authorized_keys(item)
        except ValueError as error:
            reader.add(key, f"{short(item)}: {error}")
            good = False
            continue
        if normalised not in result:
            result.append(normalised)
    return tuple(result) if good else default


def _auth_log(reader: Reader, table: Mapping[str, Any], where: str, default: str) -> str:
    value = reader.string(table, where, "auth_log", default) or default
    if value not in ("auto", "journal") and not (
        value.startswith("/") and not has_unsafe_char(value) and " " not in value
    ):
        reader.add(join(where, "auth_log"), "must be auto, journal or an absolute file path")
        return default
    return value


def _sshd_config(reader: Reader, table: Mapping[str, Any], where: str, default: str) -> str:
    value = reader.string(table, where, "sshd_config", default) or default
    if not value.startswith("/") or has_unsafe_char(value) or " " in value:
        reader.add(join(where, "sshd_config"), "must be an absolute file path")
        return default
    return value
