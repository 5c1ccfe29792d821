"""Time-driven notifications: access that expired, keys and grants about to.

Run by the daemon after each recompute (at most every ``SWEEP_EVERY`` seconds otherwise)
and by ``keyward notify reminders``; both may run, side by side, without telling anyone
twice:

- **Expired access.** An approved request whose ``until`` passed is recorded as ended
  (``ended_at`` = its ``until``, ``end_reason`` ``expired``, audit event ``access.expire``)
  and its requester told (``access_expired``). The access itself stopped counting at
  ``until`` whether or not this ran: this is the record and the notice.
- **Renewal reminders.** A key of an active person that expires within ``renewal_days``
  tells its owner (``key_expiring``), and so does a role grant with an ``until``
  (``grant_expiring``). Each is sent once per key (grant) and expiry date: the
  ``reminder`` table remembers it, so the next round does not repeat it, and a key whose
  expiry moves (renewed, rotated) is reminded again before its new date.

Both are recorded *before* they are delivered, in one transaction: a receiver that is down
misses the notice (logged as ``notification_failed``) rather than getting one every round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from keyward.clock import as_utc
from keyward.inventory.notify_settings import NotifySettings
from keyward.notify.deliver import Deliverer
from keyward.notify.message import Notification, access_notification, ts
from keyward.notify.recipients import recipient
from keyward.registry.access_rows import request_json
from keyward.registry.change_log import log_changes
from keyward.registry.models import AccessRequest, Membership, Person, Reminder, Role, SshKey
from keyward.registry.store import Registry
from keyward.registry.subjects import Subject

SWEEP_EVERY = 60.0


@dataclass
class SweepReport:
    expired: list[Notification] = field(default_factory=list)
    reminders: list[Notification] = field(default_factory=list)
    delivered: int = 0
    failed: int = 0

    @property
    def notifications(self) -> list[Notification]:
        return self.expired + self.reminders


def _expired(session: Session, now: datetime) -> list[tuple[AccessRequest, Person, Role]]:
    rows = session.exec(
        select(AccessRequest, Person, Role)
        .join(Person, col(Person.id) == col(AccessRequest.person_id))
        .join(Role, col(Role.id) == col(AccessRequest.role_id))
        .where(AccessRequest.status == "approved", col(AccessRequest.ended_at).is_(None))
        .order_by(col(AccessRequest.id))
    ).all()
    return [(a, p, r) for a, p, r in rows if a.until is not None and as_utc(a.until) <= now]


def _key_reminders(session: Session, now: datetime, horizon: datetime) -> list[Notification]:
    rows = session.exec(
        select(SshKey, Person)
        .join(Person, col(Person.id) == col(SshKey.person_id))
        .where(
            Person.status == "active",
            col(SshKey.revoked_at).is_(None),
            col(SshKey.expires_at) > now,
            col(SshKey.expires_at) <= horizon,
        )
    ).all()
    notes = []
    for key, person in rows:
        expires = as_utc(key.expires_at)
        if not now < expires <= horizon:
            continue
        days = max(1, round((expires - now).total_seconds() / 86400))
        label = f" ({key.comment})" if key.comment else ""
        notes.append(
            Notification(
                "key_expiring",
                now,
                (recipient(person),),
                f"{person.username}'s key {key.fingerprint}{label} expires at {ts(expires)} "
                f"(in {days} day{'s' if days != 1 else ''}): add a new one and rotate to it",
                {
                    "kind": "key",
                    "object_id": key.id,
                    "person": person.username,
                    "fingerprint": key.fingerprint,
                    "until": ts(expires),
                },
            )
        )
    return notes


def _grant_reminders(session: Session, now: datetime, horizon: datetime) -> list[Notification]:
    rows = session.exec(
        select(Membership, Person, Role)
        .join(Person, col(Person.id) == col(Membership.person_id))
        .join(Role, col(Role.id) == col(Membership.role_id))
        .where(
            Person.status == "active",
            col(Membership.ended_at).is_(None),
            col(Membership.until) > now,
            col(Membership.until) <= horizon,
        )
    ).all()
    notes = []
    for grant, person, role in rows:
        assert grant.until is not None
        until = as_utc(grant.until)
        if not now < until <= horizon:
            continue
        notes.append(
            Notification(
                "grant_expiring",
                now,
                (recipient(person),),
                f"{person.username}'s role {role.name} lapses at {ts(until)}: ask to have it "
                "renewed if it is still needed",
                {
                    "kind": "grant",
                    "object_id": grant.id,
                    "grant_id": grant.id,
                    "person": person.username,
                    "role": role.name,
                    "until": ts(until),
                },
            )
        )
    return notes


def _already_sent(session: Session, note: Notification) -> bool:
    due = note.details["until"]
    rows = session.exec(
        select(Reminder.due_at).where(
            Reminder.kind == note.details["kind"], Reminder.object_id == note.details["object_id"]
        )
    ).all()
    return any(ts(as_utc(d)) == due for d in rows)


def sweep(
    registry: Registry,
    settings: NotifySettings,
    deliverer: Deliverer | None,
    actor: str,
    now: datetime,
    dry_run: bool = False,
) -> SweepReport:
    """Record expired access and due reminders, then deliver them (see the module)."""
    report = SweepReport()
    reminders = settings.renewal_days > 0 and (deliverer is not None or dry_run)
    horizon = now + timedelta(days=settings.renewal_days)
    with registry.read() as session:
        expired = bool(_expired(session, now))
        due: list[Notification] = []
        if reminders:
            due = _key_reminders(session, now, horizon) + _grant_reminders(session, now, horizon)
            due = [n for n in due if not _already_sent(session, n)]
    if dry_run:
        with registry.read() as session:
            report.expired = [
                access_notification("access_expired", request_json(a, p, r), (recipient(p),), now)
                for a, p, r in _expired(session, now)
            ]
        report.reminders = due
        return report
    if not expired and not due:
        return report
    with registry.write(actor) as tx:
        for a, p, r in _expired(tx.session, now):  # again, under the writers' lock
            a.ended_at = a.until
            a.end_reason = "expired"
            tx.session.add(a)
            tx.audit(
                "access.expire",
                Subject.person(p.username),
                {
                    "request_id": a.id,
                    "role": r.name,
                    "environment": a.environment,
                    "until": ts(as_utc(a.until)) if a.until else None,
                },
            )
            row = request_json(a, p, r)
            report.expired.append(access_notification("access_expired", row, (recipient(p),), now))
        for note in due:
            if _already_sent(tx.session, note):  # another sweep sent it meanwhile
                continue
            tx.session.add(
                Reminder(
                    kind=note.details["kind"],
                    object_id=note.details["object_id"],
                    due_at=datetime.fromisoformat(note.details["until"]),
                    person=note.recipients[0].username,
                    sent_at=now,
                )
            )
            report.reminders.append(note)
    log_changes(tx, component="notify")
    if deliverer is not None:
        for note in report.notifications:
            if deliverer.deliver(note):
                report.delivered += 1
            else:
                report.failed += 1
    return report
