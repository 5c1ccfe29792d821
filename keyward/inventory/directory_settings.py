"""``[directory]`` in ``keyward.toml``: where the company directory is and how to read it.

``keyward directory sync`` takes people's names, e-mails and their leaving from
an LDAP directory (OpenLDAP, Active Directory). The section is optional; when it
is there, it is checked like the rest of the file, so a mistyped attribute name
or guard share is reported by ``inventory check`` before a sync acts on it.

The bind password is never in the file: ``password_file`` or ``password_env``
names where it is, and it is read only when a sync connects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from keyward.inventory.provisioning import DEFAULT_MASS_SHARE, group_roles, mass_offboard_share
from keyward.inventory.reader import Reader, short

DisabledRule = Literal["flag", "account-control", "present"]
"""How the ``disabled`` attribute says an account is disabled.

``flag``: a boolean-like value (``TRUE``, ``true``, ``yes``, ``1``), as OpenLDAP's
``nsAccountLock`` or ``pwdAccountLockedTime`` present; ``account-control``: Active
Directory's ``userAccountControl`` integer, disabled when bit 2 (``0x2``,
ACCOUNTDISABLE) is set; ``present``: disabled whenever the attribute has a value
(OpenLDAP ppolicy's ``pwdAccountLockedTime``).
"""
DISABLED_RULES: tuple[DisabledRule, ...] = ("flag", "account-control", "present")
AD_ACCOUNT_CONTROL = "userAccountControl"

DEFAULT_FILTER = "(objectClass=inetOrgPerson)"
DEFAULT_PAGE_SIZE = 500
DEFAULT_TIMEOUT = 30.0

_FIELDS = (
    "url",
    "bind_dn",
    "password_file",
    "password_env",
    "base_dn",
    "filter",
    "starttls",
    "ca_file",
    "create_people",
    "mass_offboard_share",
    "page_size",
    "timeout",
    "sync_interval",
    "attributes",
    "roles",
)
_ATTRIBUTE_FIELDS = ("username", "name", "email", "disabled", "disabled_rule", "groups")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ATTR_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


@dataclass(frozen=True)
class DirectoryAttributes:
    """Which LDAP attribute holds each fact about a person (OpenLDAP names by default)."""

    username: str = "uid"
    name: str = "cn"
    email: str = "mail"
    disabled: str | None = None
    disabled_rule: DisabledRule = "flag"
    groups: str = "memberOf"


@dataclass(frozen=True)
class DirectorySettings:
    """The ``[directory]`` section, checked."""

    url: str
    base_dn: str
    filter: str = DEFAULT_FILTER
    bind_dn: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    starttls: bool = False
    ca_file: Path | None = None
    create_people: bool = False
    mass_offboard_share: float = DEFAULT_MASS_SHARE
    page_size: int = DEFAULT_PAGE_SIZE
    timeout: float = DEFAULT_TIMEOUT
    attributes: DirectoryAttributes = field(default_factory=DirectoryAttributes)
    roles: Mapping[str, str] = field(default_factory=dict)
    """keyward role -> group DN: members of the group hold the role (one direction)."""
    sync_interval: float | None = None
    """Seconds between the syncs ``keyward daemon`` runs itself; None: only the timer."""

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted (LDAPS or StartTLS)."""
        return self.starttls or self.url.lower().startswith("ldaps://")


def read_directory(root: Path, reader: Reader, data: Mapping[str, Any]) -> DirectorySettings | None:
    """The ``[directory]`` table of ``keyward.toml``; None when there is none."""
    table = reader.table(data, "", "directory")
    if table is None:
        return None
    where = "directory"
    reader.fields(table, where, _FIELDS)
    url = reader.string(table, where, "url", required=True) or "ldap://invalid"
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname:
        reader.add("directory.url", f"{short(url)} must be ldap://HOST[:PORT] or ldaps://...")
    elif parts.path not in ("", "/") or parts.query:
        reader.add("directory.url", "must name only the server (the base DN is base_dn)")
    base_dn = reader.string(table, where, "base_dn", required=True) or ""
    password_file = reader.string(table, where, "password_file")
    password_env = reader.string(table, where, "password_env")
    if password_file and password_env:
        reader.add(where, "give password_file or password_env, not both")
    if password_env and not _ENV_RE.fullmatch(password_env):
        reader.add("directory.password_env", "must be an environment variable name")
    bind_dn = reader.string(table, where, "bind_dn")
    if bind_dn and not (password_file or password_env):
        reader.add(where, "bind_dn needs password_file or password_env")
    starttls = reader.boolean(table, where, "starttls", False)
    if starttls and url.lower().startswith("ldaps://"):
        reader.add("directory.starttls", "ldaps:// is already encrypted; leave starttls out")
    ca_file = reader.string(table, where, "ca_file")
    share = mass_offboard_share(reader, table, "directory")
    return DirectorySettings(
        url=url,
        base_dn=base_dn,
        filter=_filter(reader, table),
        bind_dn=bind_dn,
        password_file=_path(root, password_file),
        password_env=password_env,
        starttls=starttls,
        ca_file=_path(root, ca_file),
        create_people=reader.boolean(table, where, "create_people", False),
        mass_offboard_share=share,
        page_size=reader.integer(table, where, "page_size", DEFAULT_PAGE_SIZE, 1, 10000),
        timeout=reader.number(table, where, "timeout", DEFAULT_TIMEOUT, 0, 3600),
        attributes=_attributes(reader, table),
        roles=group_roles(reader, table, "directory"),
        sync_interval=_interval(reader, table),
    )


def _interval(reader: Reader, table: Mapping[str, Any]) -> float | None:
    """``sync_interval = "15m"``: at least 5 seconds, at most a day."""
    from keyward.errors import UsageError
    from keyward.timeparse import duration

    text = reader.string(table, "directory", "sync_interval")
    if text is None:
        return None
    try:
        seconds = duration(text, "directory.sync_interval").total_seconds()
    except UsageError:
        reader.add("directory.sync_interval", f"{short(text)} is not a duration like 15m or 1h")
        return None
    if not 5 <= seconds <= 86400:
        reader.add("directory.sync_interval", "must be between 5s and 24h")
        return None
    return seconds


def _filter(reader: Reader, table: Mapping[str, Any]) -> str:
    value = reader.string(table, "directory", "filter", DEFAULT_FILTER) or DEFAULT_FILTER
    if not (value.startswith("(") and value.endswith(")")):
        reader.add("directory.filter", "must be an LDAP filter in parentheses")
    return value


def _attributes(reader: Reader, parent: Mapping[str, Any]) -> DirectoryAttributes:
    table = reader.table(parent, "directory", "attributes") or {}
    where = "directory.attributes"
    reader.fields(table, where, _ATTRIBUTE_FIELDS)
    defaults = DirectoryAttributes()
    names: dict[str, str | None] = {}
    for name in ("username", "name", "email", "disabled", "groups"):
        value = reader.string(table, where, name, getattr(defaults, name))
        if value is not None and not _ATTR_RE.fullmatch(value):
            reader.add(f"{where}.{name}", f"{short(value)} is not an LDAP attribute name")
        names[name] = value
    disabled = names["disabled"]
    implied: DisabledRule = (
        "account-control" if disabled and disabled.lower() == AD_ACCOUNT_CONTROL.lower() else "flag"
    )
    rule = reader.string(table, where, "disabled_rule", implied) or implied
    if rule not in DISABLED_RULES:
        reader.add(f"{where}.disabled_rule", f"must be one of {', '.join(DISABLED_RULES)}")
        rule = implied
    if "disabled_rule" in table and disabled is None:
        reader.add(where, "disabled_rule needs the disabled attribute")
    return DirectoryAttributes(
        username=names["username"] or defaults.username,
        name=names["name"] or defaults.name,
        email=names["email"] or defaults.email,
        disabled=disabled,
        disabled_rule=rule,
        groups=names["groups"] or defaults.groups,
    )


def _path(root: Path, value: str | None) -> Path | None:
    """Relative paths are relative to the inventory directory, like the agent's."""
    if value is None:
        return None
    path = Path(value)
    return path if path.is_absolute() else root / path
