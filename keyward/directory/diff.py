"""Directory entries + registry people -> the planned changes (pure).

The directory is the truth about who works here, in one direction only:

- an enabled entry whose username is an active person links them (once) and
  updates their name and e-mail where the directory has a different value;
- an enabled entry with no person creates one, when ``create_people`` is on;
- a disabled entry, or a linked person whose entry is gone (deleted, moved out of
  the base DN, no longer matching the filter), offboards that person with the
  reason ``directory: <what changed>``;
- a mapped role is granted to members of its group and revoked from active
  people who hold it but are not (only mapped roles are touched).

People never seen in the directory (service owners, contractors kept by hand)
are left alone; an offboarded person whose entry is enabled again is noted, not
re-hired: that stays a human decision (``person rehire``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from keyward.directory.model import (
    Create,
    DirectoryRead,
    Link,
    Offboard,
    RegistryPerson,
    RoleChange,
    SyncPlan,
    Update,
)

ACTIVE = "active"
MAX_REASON = 500  # the offboarding case's reason column


def _reason(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def plan_sync(
    read: DirectoryRead,
    people: Iterable[RegistryPerson],
    *,
    create_people: bool,
    roles: Mapping[str, str] | None = None,
) -> SyncPlan:
    """What a sync changes in the registry to match ``read``."""
    by_name = {person.username: person for person in people}
    groups = {role: group.lower() for role, group in (roles or {}).items()}
    creates: list[Create] = []
    links: list[Link] = []
    updates: list[Update] = []
    offboards: list[Offboard] = []
    role_changes: list[RoleChange] = []
    notes: list[str] = []
    seen: set[str] = set(read.ambiguous)
    for entry in read.entries:
        seen.add(entry.username)
        person = by_name.get(entry.username)
        if entry.disabled is not None:
            if person is not None and person.status == ACTIVE:
                offboards.append(
                    Offboard(
                        entry.username, entry.dn, _reason(f"directory: disabled ({entry.disabled})")
                    )
                )
            continue
        if person is None:
            if create_people:
                creates.append(Create(entry))
                role_changes.extend(
                    RoleChange(entry.username, entry.dn, role, group, grant=True)
                    for role, group in sorted(groups.items())
                    if group in entry.groups
                )
            continue
        if person.status != ACTIVE:
            notes.append(
                f"{entry.username} is {person.status} in the registry but enabled in the "
                f"directory ({entry.dn}); 'keyward person rehire' if they are back"
            )
            continue
        if (person.dn or "").lower() != entry.dn.lower():
            links.append(Link(entry.username, entry.dn))
        update = _update(person, entry.dn, entry.name, entry.email)
        if update is not None:
            updates.append(update)
        for role, group in sorted(groups.items()):
            member = group in entry.groups
            if member != (role in person.roles):
                role_changes.append(RoleChange(entry.username, entry.dn, role, group, member))
    for person in by_name.values():
        if person.username in seen or person.dn is None or person.status != ACTIVE:
            continue
        offboards.append(
            Offboard(
                person.username,
                person.dn,
                _reason(
                    f"directory: entry gone ({person.dn} no longer under {read.base_dn} "
                    "or no longer matches the filter)"
                ),
            )
        )
    return SyncPlan(
        creates=tuple(creates),
        links=tuple(links),
        updates=tuple(updates),
        offboards=tuple(sorted(offboards, key=lambda o: o.username)),
        roles=tuple(role_changes),
        notes=(*notes, *(f"skipped {why}" for why in read.skipped)),
    )


def _update(person: RegistryPerson, dn: str, name: str | None, email: str | None) -> Update | None:
    """Name and e-mail where the directory has a value that differs from the registry's."""
    changes: dict[str, dict[str, str | None]] = {}
    if name is not None and name != person.full_name:
        changes["full_name"] = {"from": person.full_name, "to": name}
    if email is not None and email != person.email:
        changes["email"] = {"from": person.email, "to": email}
    if not changes:
        return None
    return Update(
        person.username,
        dn,
        full_name=name if "full_name" in changes else None,
        email=email if "email" in changes else None,
        changes=changes,
    )
