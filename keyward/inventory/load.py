"""Read and validate the TOML inventory into frozen ``Inventory`` values.

The inventory decides who can log in as root where, and it is edited by hand
in version control, so the loader is strict and exhaustive: unknown fields,
wrong types, dangling group or host names, unsafe options and paths are all
refused, and ``check_inventory`` reports *every* problem, each located as
``file: key: message``, so one review round fixes them all.  Nothing here
touches hosts, the registry or logging.

Layout: ``keyward.toml`` holds fleet settings (optional: defaults apply);
every other ``*.toml`` file in the directory is one environment.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from keyward.attestation import ATTESTATION_LEVELS
from keyward.errors import InventoryError, KeyPolicyError
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
from keyward.keys import DSA, KNOWN_TYPES, PublicKey, parse_public_key
from keyward.options import validate_option, validate_options

SETTINGS_FILE = "keyward.toml"
DEFAULT_INVENTORY_DIR = Path("/etc/keyward/inventory")

DEFAULT_IDENTITY = "/etc/keyward/agent_ed25519"
DEFAULT_KNOWN_HOSTS = "known_hosts"
DEFAULT_CONCURRENCY = 100
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_PYTHON = "python3"
DEFAULT_MAX_KEY_AGE_DAYS = 365
DEFAULT_MIN_RSA_BITS = 3072
DEFAULT_PROOF_MAX_AGE_DAYS = 30
DEFAULT_LOGIN = "root"
DEFAULT_PORT = 22
DEFAULT_AUTHORIZED_KEYS = ("%h/.ssh/authorized_keys",)
DEFAULT_MODE: Mode = "exclusive"

# POSIX portable login names, as useradd accepts them by default (lowercase).
ACCOUNT_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
# Environment, host, group and role names: they appear on command lines, in
# the registry and in audit events, so they stay plain.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

_SETTINGS_FIELDS = ("agent", "policy")
_AGENT_FIELDS = (
    "identity",
    "identity_pub",
    "known_hosts",
    "concurrency",
    "connect_timeout",
    "python",
)
_POLICY_FIELDS = (
    "max_key_age_days",
    "min_rsa_bits",
    "allowed_key_types",
    "proof_max_age_days",
    "failed_login_threshold",
    "failed_login_window_minutes",
    "multi_source_window_minutes",
    "failure_mode",
    "alert_command",
    "purge_after_days",
)
FAILURE_MODES = ("off", "suspend", "restrict")
DEFAULT_SSHD_CONFIG = "/etc/ssh/sshd_config"
_ENV_FILE_FIELDS = ("environment", "defaults", "hosts", "access", "break_glass")
_ENV_FIELDS = ("name", "min_attestation", "customer")
_DEFAULT_FIELDS = (
    "login",
    "port",
    "authorized_keys",
    "mode",
    "accounts",
    "auth_log",
    "auth_log_trusted",
    "sshd_config",
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
)
_ACCESS_FIELDS = ("roles", "accounts", "groups", "hosts", "options")
_BREAK_GLASS_FIELDS = ("accounts", "key", "groups", "hosts", "options")

_TOML_ERROR_RE = re.compile(
    r"^(?P<msg>.*?) \(at (?P<where>line \d+, column \d+|end of document)\)$"
)
_PYTHON_RE = re.compile(r"[A-Za-z0-9_./+-]+")
_MISSING = object()


@dataclass(frozen=True)
class Problem:
    """One located inventory problem: ``production.toml: hosts[2].port: must be ...``."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key, self.message) if part)


def _join(where: str, field: str) -> str:
    """``hosts[0]`` + ``port`` -> ``hosts[0].port``; a top-level field stays bare."""
    return f"{where}.{field}" if where else field


def _has_unsafe_char(text: str) -> bool:
    """Control, format and line-separator characters; never wanted in names or paths."""
    return any(unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"} for char in text)


def _type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for "must be X, not Y" messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


class _Reader:
    """Typed access to one parsed TOML file that records problems instead of raising.

    Every getter returns ``default`` when the field is absent *or* invalid;
    an invalid value has already been recorded, and no ``Inventory`` is built
    from a file with problems, so the fallback only keeps later checks going.
    """

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems

    def add(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.file, key, message))

    def fields(self, table: Mapping[str, Any], where: str, allowed: Collection[str]) -> None:
        """Report every field of ``table`` not in ``allowed`` (typos must not be ignored)."""
        for name in table:
            if name not in allowed:
                close = difflib.get_close_matches(name, list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.add(where, f"unknown field {name!r}{hint}")

    def table(self, parent: Mapping[str, Any], where: str, field: str) -> dict[str, Any] | None:
        value = parent.get(field)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.add(_join(where, field), f"must be a table [{field}], not {_type_name(value)}")
            return None
        return cast(dict[str, Any], value)

    def tables(self, parent: Mapping[str, Any], field: str) -> list[tuple[str, dict[str, Any]]]:
        """An array of tables (``[[hosts]]``) as (location, table) pairs."""
        value = parent.get(field)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.add(field, f"must be an array of tables [[{field}]]")
            return []
        return [(f"{field}[{index}]", item) for index, item in enumerate(value)]

    def string(
        self,
        table: Mapping[str, Any],
        where: str,
        field: str,
        default: str | None = None,
        *,
        required: bool = False,
    ) -> str | None:
        value = table.get(field, _MISSING)
        key = _join(where, field)
        if value is _MISSING:
            if required:
                self.add(where, f"missing required field {field!r}")
            return default
        if not isinstance(value, str):
            self.add(key, f"must be a string, not {_type_name(value)}")
            return default
        if value == "":
            self.add(key, "must not be empty")
            return default
        if _has_unsafe_char(value):
            self.add(key, "must not contain control characters")
            return default
        return value

    def integer(
        self, table: Mapping[str, Any], where: str, field: str, default: int, low: int, high: int
    ) -> int:
        value = table.get(field, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.add(_join(where, field), f"must be an integer {low}-{high}")
            return default
        return value

    def boolean(self, table: Mapping[str, Any], where: str, field: str, default: bool) -> bool:
        value = table.get(field, _MISSING)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.add(_join(where, field), f"must be true or false, not {_type_name(value)}")
            return default
        return value

    def number(
        self,
        table: Mapping[str, Any],
        where: str,
        field: str,
        default: float,
        low: float,
        high: float,
    ) -> float:
        value = table.get(field, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
            self.add(
                _join(where, field), f"must be a number of seconds above {low:g} up to {high:g}"
            )
            return default
        return float(value)

    def strings(
        self,
        table: Mapping[str, Any],
        where: str,
        field: str,
        *,
        required: bool = False,
        allow_empty: bool = False,
    ) -> tuple[str, ...] | None:
        """An array of strings, de-duplicated in order; ``None`` if absent.

        Empty arrays are refused unless ``allow_empty``: for ``groups`` or
        ``hosts`` an empty list would silently match nothing.
        """
        value = table.get(field, _MISSING)
        key = _join(where, field)
        if value is _MISSING:
            if required:
                self.add(where, f"missing required field {field!r}")
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.add(key, "must be an array of strings")
            return None
        if not value and not allow_empty:
            self.add(key, "must not be empty (leave the field out instead)")
            return None
        return tuple(dict.fromkeys(cast(list[str], value)))

    def names(
        self,
        table: Mapping[str, Any],
        where: str,
        field: str,
        pattern: re.Pattern[str],
        what: str,
        *,
        required: bool = False,
        allow_empty: bool = False,
    ) -> tuple[str, ...] | None:
        """``strings`` whose every element matches ``pattern``; bad elements are reported."""
        values = self.strings(table, where, field, required=required, allow_empty=allow_empty)
        if values is None:
            return None
        bad = [value for value in values if not pattern.fullmatch(value)]
        for value in bad:
            self.add(_join(where, field), f"{_short(value)} is not a valid {what}")
        return None if bad else values


def _short(text: str) -> str:
    """A bounded, escaped rendering of inventory text for a message."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _what_account() -> str:
    return "account name (POSIX login: [a-z_][a-z0-9_.-]{0,31})"


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
    if _has_unsafe_char(pattern) or any(char.isspace() for char in pattern):
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


def _per_account(pattern: str) -> bool:
    """True if ``pattern`` expands differently per account (has %h, %u or %U)."""
    return any(token in pattern.replace("%%", "") for token in ("%h", "%u", "%U"))


def _check_address(address: str) -> str | None:
    """Why ``address`` cannot be given to ssh as a host, or ``None`` if it can."""
    if any(char.isspace() for char in address):
        return "must not contain whitespace"
    if address.startswith("-"):
        return "must not start with '-'"
    if "@" in address:
        return "must not contain '@' (the account is the login field)"
    return None


class _Loader:
    """Holds state shared across files: problems, and names that must be unique fleet-wide."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self.host_names: dict[str, str] = {}
        self.endpoints: dict[tuple[str, int], str] = {}
        self.env_names: dict[str, str] = {}
        self.policy = PolicySettings(DEFAULT_MAX_KEY_AGE_DAYS, DEFAULT_MIN_RSA_BITS, None)

    def read(self, path: Path) -> dict[str, Any] | None:
        """Parse one file; syntax errors become problems located by line and column."""
        file = path.name
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            self.problems.append(Problem(file, "", "is not valid UTF-8"))
            return None
        except OSError as error:
            self.problems.append(Problem(file, "", f"cannot be read: {error.strerror}"))
            return None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            match = _TOML_ERROR_RE.match(str(error))
            message = match.group("msg") if match else str(error)
            where = match.group("where") if match else ""
            self.problems.append(Problem(file, where, f"TOML syntax error: {message}"))
            return None

    def settings(self) -> tuple[AgentSettings, PolicySettings]:
        """``keyward.toml``: the agent's connection settings and the key policy."""
        path = self.root / SETTINGS_FILE
        data: dict[str, Any] = {}
        if path.exists():
            data = self.read(path) or {}
        reader = _Reader(SETTINGS_FILE, self.problems)
        reader.fields(data, "", _SETTINGS_FIELDS)
        agent = reader.table(data, "", "agent") or {}
        reader.fields(agent, "agent", _AGENT_FIELDS)
        identity = self._path(reader, agent, "identity", DEFAULT_IDENTITY)
        pub_default = str(identity) + ".pub"
        identity_pub = self._path(reader, agent, "identity_pub", pub_default)
        known_hosts = self._path(reader, agent, "known_hosts", DEFAULT_KNOWN_HOSTS)
        concurrency = reader.integer(agent, "agent", "concurrency", DEFAULT_CONCURRENCY, 1, 10000)
        timeout = reader.number(agent, "agent", "connect_timeout", DEFAULT_CONNECT_TIMEOUT, 0, 3600)
        python = reader.string(agent, "agent", "python", DEFAULT_PYTHON) or DEFAULT_PYTHON
        if not _PYTHON_RE.fullmatch(python):
            reader.add("agent.python", "must be a command name or absolute path, no spaces")
        agent_settings = AgentSettings(
            identity=identity,
            identity_pub=identity_pub,
            known_hosts=known_hosts,
            concurrency=concurrency,
            connect_timeout=timeout,
            python=python,
        )

        policy = reader.table(data, "", "policy") or {}
        reader.fields(policy, "policy", _POLICY_FIELDS)
        types = reader.strings(policy, "policy", "allowed_key_types")
        for key_type in types or ():
            if key_type == DSA:
                reader.add("policy.allowed_key_types", "ssh-dss (DSA) keys cannot be allowed")
            elif key_type not in KNOWN_TYPES:
                known = ", ".join(sorted(KNOWN_TYPES - {DSA}))
                reader.add(
                    "policy.allowed_key_types",
                    f"unknown key type {_short(key_type)} (known: {known})",
                )
        self.policy = PolicySettings(
            max_key_age_days=reader.integer(
                policy, "policy", "max_key_age_days", DEFAULT_MAX_KEY_AGE_DAYS, 1, 36500
            ),
            min_rsa_bits=reader.integer(
                policy, "policy", "min_rsa_bits", DEFAULT_MIN_RSA_BITS, 2048, 16384
            ),
            allowed_key_types=types,
            proof_max_age_days=reader.integer(
                policy, "policy", "proof_max_age_days", DEFAULT_PROOF_MAX_AGE_DAYS, 0, 3650
            ),
            failed_login_threshold=reader.integer(
                policy, "policy", "failed_login_threshold", 5, 1, 100000
            ),
            failed_login_window_minutes=reader.integer(
                policy, "policy", "failed_login_window_minutes", 10, 1, 10080
            ),
            multi_source_window_minutes=reader.integer(
                policy, "policy", "multi_source_window_minutes", 60, 1, 10080
            ),
            failure_mode=self._failure_mode(reader, policy),
            alert_command=reader.string(policy, "policy", "alert_command"),
            purge_after_days=reader.integer(policy, "policy", "purge_after_days", 365, 0, 36500),
        )
        return agent_settings, self.policy

    def _failure_mode(self, reader: _Reader, policy: Mapping[str, Any]) -> str:
        value = reader.string(policy, "policy", "failure_mode", "off") or "off"
        if value not in FAILURE_MODES:
            reader.add("policy.failure_mode", f"must be one of {', '.join(FAILURE_MODES)}")
            return "off"
        return value

    def _auth_log(self, reader: _Reader, table: Mapping[str, Any], where: str, default: str) -> str:
        value = reader.string(table, where, "auth_log", default) or default
        if value not in ("auto", "journal") and not (
            value.startswith("/") and not _has_unsafe_char(value) and " " not in value
        ):
            reader.add(_join(where, "auth_log"), "must be auto, journal or an absolute file path")
            return default
        return value

    def _sshd_config(
        self, reader: _Reader, table: Mapping[str, Any], where: str, default: str
    ) -> str:
        value = reader.string(table, where, "sshd_config", default) or default
        if not value.startswith("/") or _has_unsafe_char(value) or " " in value:
            reader.add(_join(where, "sshd_config"), "must be an absolute file path")
            return default
        return value

    def _path(self, reader: _Reader, table: Mapping[str, Any], field: str, default: str) -> Path:
        """A path setting; relative paths are relative to the inventory directory."""
        value = reader.string(table, "agent", field, default) or default
        path = Path(value)
        return path if path.is_absolute() else self.root / path

    def environment(self, path: Path) -> Environment | None:
        """One environment file: hosts first, then rules checked against those hosts."""
        data = self.read(path)
        if data is None:
            return None
        file = path.name
        reader = _Reader(file, self.problems)
        reader.fields(data, "", _ENV_FILE_FIELDS)

        env_table = reader.table(data, "", "environment")
        if env_table is None:
            if "environment" not in data:
                reader.add("", "missing table [environment] (needs at least min_attestation)")
            env_table = {}
        reader.fields(env_table, "environment", _ENV_FIELDS)
        name = reader.string(env_table, "environment", "name", path.stem) or path.stem
        if not NAME_RE.fullmatch(name):
            reader.add("environment.name", f"{_short(name)} is not a valid environment name")
        elif name in self.env_names:
            reader.add(
                "environment.name",
                f"environment {name!r} is already defined in {self.env_names[name]}",
            )
        else:
            self.env_names[name] = file
        min_attestation = reader.string(
            env_table, "environment", "min_attestation", required="environment" in data
        )
        if min_attestation is not None and min_attestation not in ATTESTATION_LEVELS:
            reader.add(
                "environment.min_attestation",
                f"{_short(min_attestation)} is not one of {', '.join(ATTESTATION_LEVELS)}",
            )
        customer = reader.string(env_table, "environment", "customer")

        hosts = self._hosts(reader, data, name, customer)
        env_host_names = {host.name for host in hosts}
        env_groups = {group for host in hosts for group in host.groups}
        access: list[AccessRule] = []
        for where, table in reader.tables(data, "access"):
            reader.fields(table, where, _ACCESS_FIELDS)
            roles = reader.names(table, where, "roles", NAME_RE, "role name", required=True)
            rule = AccessRule(
                environment=name,
                roles=roles or (),
                accounts=self._accounts(reader, table, where),
                groups=reader.names(table, where, "groups", NAME_RE, "group name"),
                hosts=reader.names(table, where, "hosts", NAME_RE, "host name"),
                options=self._options(reader, table, where),
                source=f"{file}: {where}",
            )
            self._check_targets(reader, where, rule, hosts, env_host_names, env_groups)
            access.append(rule)

        break_glass: list[BreakGlass] = []
        for where, table in reader.tables(data, "break_glass"):
            reader.fields(table, where, _BREAK_GLASS_FIELDS)
            key = self._key(reader, table, where)
            # Targets are checked through an equivalent rule so that a bad key
            # does not hide problems with the rest of the entry.
            target = AccessRule(
                environment=name,
                roles=(),
                accounts=self._accounts(reader, table, where),
                groups=reader.names(table, where, "groups", NAME_RE, "group name"),
                hosts=reader.names(table, where, "hosts", NAME_RE, "host name"),
                options=self._options(reader, table, where),
                source=f"{file}: {where}",
            )
            self._check_targets(reader, where, target, hosts, env_host_names, env_groups)
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

        return Environment(
            name=name,
            min_attestation=min_attestation or "none",
            customer=customer,
            hosts=tuple(hosts),
            access=tuple(access),
            break_glass=tuple(break_glass),
            source_file=file,
        )

    def _hosts(
        self, reader: _Reader, data: Mapping[str, Any], env: str, customer: str | None
    ) -> list[Host]:
        """``[defaults]`` and ``[[hosts]]``; registers names and endpoints fleet-wide."""
        defaults = reader.table(data, "", "defaults") or {}
        reader.fields(defaults, "defaults", _DEFAULT_FIELDS)
        d_login = self._login(reader, defaults, "defaults", DEFAULT_LOGIN)
        d_port = reader.integer(defaults, "defaults", "port", DEFAULT_PORT, 1, 65535)
        d_files = self._authorized_keys(reader, defaults, "defaults", DEFAULT_AUTHORIZED_KEYS)
        d_mode = self._mode(reader, defaults, "defaults", DEFAULT_MODE)
        d_accounts = self._accounts(reader, defaults, "defaults", required=False)
        d_auth_log = self._auth_log(reader, defaults, "defaults", "auto")
        d_trusted = reader.boolean(defaults, "defaults", "auth_log_trusted", False)
        d_sshd_config = self._sshd_config(reader, defaults, "defaults", DEFAULT_SSHD_CONFIG)

        hosts: list[Host] = []
        for where, table in reader.tables(data, "hosts"):
            reader.fields(table, where, _HOST_FIELDS)
            name = reader.string(table, where, "name", required=True)
            if name is not None and not NAME_RE.fullmatch(name):
                reader.add(_join(where, "name"), f"{_short(name)} is not a valid host name")
                name = None
            address = reader.string(table, where, "address", name) or ""
            problem = _check_address(address) if address else None
            if problem:
                reader.add(_join(where, "address"), problem)
            port = reader.integer(table, where, "port", d_port, 1, 65535)
            accounts = (
                self._accounts(reader, table, where, required=False)
                if "accounts" in table
                else d_accounts
            )
            host = Host(
                name=name or "",
                environment=env,
                address=address,
                port=port,
                login=self._login(reader, table, where, d_login),
                authorized_keys=self._authorized_keys(reader, table, where, d_files),
                mode=self._mode(reader, table, where, d_mode),
                groups=reader.names(table, where, "groups", NAME_RE, "group name") or (),
                accounts=accounts,
                customer=reader.string(table, where, "customer", customer),
                auth_log=self._auth_log(reader, table, where, d_auth_log),
                auth_log_trusted=reader.boolean(table, where, "auth_log_trusted", d_trusted),
                sshd_config=self._sshd_config(reader, table, where, d_sshd_config),
            )
            if len(host.managed_accounts) > 1:
                for pattern in host.authorized_keys:
                    if not _per_account(pattern):
                        reader.add(
                            _join(where, "authorized_keys"),
                            f"{_short(pattern)} has no %h, %u or %U, so all "
                            f"{len(host.managed_accounts)} managed accounts would share one file",
                        )
            if name is None:
                continue
            if name in self.host_names:
                reader.add(
                    _join(where, "name"),
                    f"host {name!r} is already defined in {self.host_names[name]}",
                )
                continue
            self.host_names[name] = f"{reader.file}: {where}"
            endpoint = (address.lower(), port)
            if address and endpoint in self.endpoints:
                reader.add(
                    _join(where, "address"),
                    f"{address}:{port} is already used by {self.endpoints[endpoint]}",
                )
            elif address:
                self.endpoints[endpoint] = f"host {name!r} ({reader.file})"
            hosts.append(host)
        return hosts

    def _login(self, reader: _Reader, table: Mapping[str, Any], where: str, default: str) -> str:
        value = reader.string(table, where, "login", default) or default
        if not ACCOUNT_RE.fullmatch(value):
            reader.add(_join(where, "login"), f"{_short(value)} is not a valid {_what_account()}")
        return value

    def _accounts(
        self, reader: _Reader, table: Mapping[str, Any], where: str, *, required: bool = True
    ) -> tuple[str, ...]:
        """Account names; required (non-empty) for rules, optional (may be ``[]``) for hosts."""
        found = reader.names(
            table,
            where,
            "accounts",
            ACCOUNT_RE,
            _what_account(),
            required=required,
            allow_empty=not required,
        )
        return found or ()

    def _mode(self, reader: _Reader, table: Mapping[str, Any], where: str, default: Mode) -> Mode:
        value = reader.string(table, where, "mode", default) or default
        if value not in MODES:
            reader.add(_join(where, "mode"), f"{_short(value)} is not one of {', '.join(MODES)}")
            return default
        return value

    def _authorized_keys(
        self, reader: _Reader, table: Mapping[str, Any], where: str, default: tuple[str, ...]
    ) -> tuple[str, ...]:
        """One pattern or a list of patterns; every listed file is managed."""
        value = table.get("authorized_keys", _MISSING)
        key = _join(where, "authorized_keys")
        if value is _MISSING:
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
                reader.add(key, f"{_short(item)}: {error}")
                good = False
                continue
            if normalised not in result:
                result.append(normalised)
        return tuple(result) if good else default

    def _options(self, reader: _Reader, table: Mapping[str, Any], where: str) -> tuple[str, ...]:
        """Options through the ``keyward.options`` allowlist, every bad one reported."""
        values = reader.strings(table, where, "options")
        if values is None:
            return ()
        key = _join(where, "options")
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

    def _key(self, reader: _Reader, table: Mapping[str, Any], where: str) -> PublicKey | None:
        """A break-glass key under the fleet's key policy; messages never quote the key."""
        text = reader.string(table, where, "key", required=True)
        if text is None:
            return None
        try:
            return parse_public_key(text, self.policy.key_policy())
        except KeyPolicyError as error:
            message = error.message
            # Belt and braces: never echo anything that looks like key material.
            if any(len(token) >= 16 and token in message for token in text.split()):
                message = "not a valid public key"
            reader.add(_join(where, "key"), message)
            return None

    def _check_targets(
        self,
        reader: _Reader,
        where: str,
        rule: AccessRule,
        hosts: list[Host],
        host_names: set[str],
        groups: set[str],
    ) -> None:
        """Named groups/hosts must exist here; every matched host must manage the accounts."""
        dangling = False
        for group in rule.groups or ():
            if group not in groups:
                known = ", ".join(sorted(groups)) or "none"
                reader.add(
                    _join(where, "groups"),
                    f"no host of this environment is in group {group!r} (groups: {known})",
                )
                dangling = True
        for host in rule.hosts or ():
            if host not in host_names:
                elsewhere = self.host_names.get(host)
                hint = f" (it is defined in {elsewhere})" if elsewhere else ""
                reader.add(_join(where, "hosts"), f"host {host!r} is not in this environment{hint}")
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
                    _join(where, "accounts"),
                    f"account {account!r} is not managed on host(s) {shown}; add it to their "
                    "accounts or narrow the rule with groups/hosts",
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
    loader = _Loader(root)
    agent, policy = loader.settings()
    env_files = sorted(
        path
        for path in root.glob("*.toml")
        if path.name != SETTINGS_FILE and not path.name.startswith(".") and path.is_file()
    )
    if not env_files:
        loader.problems.append(
            Problem(str(root), "", f"no environment files (*.toml other than {SETTINGS_FILE})")
        )
    environments = [loader.environment(path) for path in env_files]
    if loader.problems:
        return None, loader.problems
    inventory = Inventory(
        root=root,
        agent=agent,
        policy=policy,
        environments=tuple(env for env in environments if env is not None),
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


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def summarize(inventory: Inventory) -> str:
    """A few lines for ``keyward inventory check``: totals, then one line per environment."""
    hosts = inventory.hosts()
    accounts = sum(len(host.managed_accounts) for host in hosts)
    rules = sum(len(env.access) for env in inventory.environments)
    glass = sum(len(env.break_glass) for env in inventory.environments)
    lines = [
        f"inventory {inventory.root}: {_count(len(inventory.environments), 'environment')}, "
        f"{_count(len(hosts), 'host')}, {_count(accounts, 'managed account')}, "
        f"{_count(rules, 'access rule')}, {_count(glass, 'break-glass key')}"
    ]
    for env in inventory.environments:
        customer = f", customer {env.customer}" if env.customer else ""
        roles = sorted({role for rule in env.access for role in rule.roles})
        lines.append(
            f"  {env.name} ({env.source_file}): min_attestation {env.min_attestation}{customer}; "
            f"{_count(len(env.hosts), 'host')}, "
            f"{_count(sum(len(h.managed_accounts) for h in env.hosts), 'managed account')}, "
            f"{_count(len(env.access), 'access rule')}, "
            f"{_count(len(env.break_glass), 'break-glass key')}; "
            f"roles: {', '.join(roles) or 'none'}"
        )
    return "\n".join(lines)
