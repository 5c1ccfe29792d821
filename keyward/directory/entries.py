"""LDAP attributes -> ``DirectoryEntry``: the mapping and the disabled-account rules (pure).

Attribute names compare case-insensitively, as in LDAP. Values arrive as lists
(every LDAP attribute may be multi-valued); the first value is used for single
facts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from keyward.directory.model import DirectoryEntry, DirectoryRead
from keyward.inventory.directory_settings import DirectoryAttributes
from keyward.registry.validate import EMAIL_RE, USERNAME_RE, has_control

ACCOUNTDISABLE = 0x2
"""Active Directory's ``userAccountControl`` bit for a disabled account."""
TRUE_WORDS = frozenset({"true", "yes", "1", "on", "locked", "disabled"})

MAX_NAME = 200  # the person's full_name column
MAX_EMAIL = 254

Values = Sequence[str | bytes | int]


def _text(value: str | bytes | int) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _first(attrs: Mapping[str, Values], name: str) -> str | None:
    values = attrs.get(name.lower())
    if not values:
        return None
    text = _text(values[0]).strip()
    return text or None


def disabled_reason(attrs: Mapping[str, Values], mapping: DirectoryAttributes) -> str | None:
    """Why the entry counts as disabled, as ``attribute=value``; None if it is not."""
    if mapping.disabled is None:
        return None
    value = _first(attrs, mapping.disabled)
    if value is None:
        return None
    if mapping.disabled_rule == "present":
        return f"{mapping.disabled}={value}"
    if mapping.disabled_rule == "account-control":
        try:
            flags = int(value, 0)
        except ValueError:
            return f"{mapping.disabled}={value} (not a number; treated as disabled)"
        return f"{mapping.disabled}={flags} (ACCOUNTDISABLE)" if flags & ACCOUNTDISABLE else None
    return f"{mapping.disabled}={value}" if value.lower() in TRUE_WORDS else None


def to_entry(
    dn: str, attributes: Mapping[str, Values], mapping: DirectoryAttributes
) -> DirectoryEntry | str:
    """The entry, or why it cannot be used (no or an invalid username)."""
    attrs = {name.lower(): values for name, values in attributes.items()}
    username = _first(attrs, mapping.username)
    if username is None:
        return f"{dn}: no {mapping.username}"
    if not USERNAME_RE.fullmatch(username):
        return f"{dn}: {mapping.username} {username[:40]!r} is not a valid username"
    # The registry refuses control characters; one odd entry must not stop a whole sync,
    # so they become spaces in a name, and an address with any is not copied.
    raw_name = _first(attrs, mapping.name) or ""
    printable = "".join(" " if has_control(char) else char for char in raw_name)
    name = " ".join(printable.split())[:MAX_NAME] or None
    email = _first(attrs, mapping.email)
    if email is not None and (
        len(email) > MAX_EMAIL or has_control(email) or not EMAIL_RE.fullmatch(email)
    ):
        email = None  # not an address the registry accepts: left as it is there
    return DirectoryEntry(
        dn=dn,
        username=username,
        name=name,
        email=email,
        disabled=disabled_reason(attrs, mapping),
        groups=frozenset(_text(g).strip().lower() for g in attrs.get(mapping.groups.lower(), ())),
    )


def collect(
    base_dn: str,
    found: Iterable[tuple[str, Mapping[str, Values]]],
    mapping: DirectoryAttributes,
    *,
    complete: bool = True,
) -> DirectoryRead:
    """Every usable entry of a search.

    A username seen on two entries is ambiguous: neither entry is used, and the
    sync leaves that person alone (it neither updates nor offboards them).
    """
    entries: dict[str, DirectoryEntry] = {}
    skipped: list[str] = []
    twice: set[str] = set()
    for dn, attributes in found:
        entry = to_entry(dn, attributes, mapping)
        if isinstance(entry, str):
            skipped.append(entry)
        elif entry.username in entries:
            twice.add(entry.username)
            skipped.append(
                f"{dn}: username {entry.username!r} also at {entries[entry.username].dn}"
            )
        else:
            entries[entry.username] = entry
    for username in twice:
        del entries[username]
    return DirectoryRead(
        base_dn=base_dn,
        entries=tuple(entries.values()),
        complete=complete,
        skipped=tuple(skipped),
        ambiguous=frozenset(twice),
    )
