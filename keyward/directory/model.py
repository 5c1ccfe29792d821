"""The plain values a directory sync works with: what the directory says, what the
registry holds, and the changes planned from the difference."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DirectoryEntry:
    """One person as the directory describes them."""

    dn: str
    username: str
    name: str | None = None
    email: str | None = None
    disabled: str | None = None
    """Why the directory says the account is disabled (``nsAccountLock=TRUE``), or None."""
    groups: frozenset[str] = frozenset()
    """The entry's group DNs, lower-cased (DNs compare case-insensitively)."""


@dataclass(frozen=True)
class DirectoryRead:
    """The result of one search: the entries, and whether the result is the whole answer.

    ``error`` is set when the search failed before any entry (nothing to act on);
    ``complete`` is False when a paged search was cut short (a size or time limit,
    a lost connection): a partial list looks exactly like a wave of deleted users.
    """

    base_dn: str
    entries: tuple[DirectoryEntry, ...] = ()
    complete: bool = True
    error: str | None = None
    skipped: tuple[str, ...] = ()
    """Entries that could not be used (no or an invalid username, a duplicate): why."""
    ambiguous: frozenset[str] = frozenset()
    """Usernames on more than one entry: left alone, neither updated nor offboarded."""


@dataclass(frozen=True)
class RegistryPerson:
    """A person in the registry as the sync sees them."""

    username: str
    full_name: str
    email: str | None
    status: str
    dn: str | None = None
    """The directory entry this person was linked to by an earlier sync, if any: only
    linked people are offboarded when their entry disappears."""
    roles: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Create:
    entry: DirectoryEntry


@dataclass(frozen=True)
class Link:
    """An active person found in the directory for the first time."""

    username: str
    dn: str


@dataclass(frozen=True)
class Update:
    username: str
    dn: str
    full_name: str | None = None
    email: str | None = None
    changes: dict[str, dict[str, str | None]] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Offboard:
    username: str
    dn: str
    reason: str


@dataclass(frozen=True)
class RoleChange:
    username: str
    dn: str
    role: str
    group: str
    grant: bool


@dataclass(frozen=True)
class SyncPlan:
    """Everything a sync would change, and what it noticed but leaves to a human."""

    creates: tuple[Create, ...] = ()
    links: tuple[Link, ...] = ()
    updates: tuple[Update, ...] = ()
    offboards: tuple[Offboard, ...] = ()
    roles: tuple[RoleChange, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.creates or self.links or self.updates or self.offboards or self.roles)

    def counts(self) -> dict[str, int]:
        return {
            "create": len(self.creates),
            "link": len(self.links),
            "update": len(self.updates),
            "offboard": len(self.offboards),
            "grant": sum(1 for r in self.roles if r.grant),
            "revoke": sum(1 for r in self.roles if not r.grant),
        }
