"""The registry's tables.

Rows are never deleted by normal operations: a key is revoked, a grant is
ended, a person is offboarded.  History stays queryable, and the audit chain
refers to rows that still exist.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from keyward.registry.types import UTCDateTime


def _ts(nullable: bool = False) -> Column[datetime]:
    return Column(UTCDateTime(), nullable=nullable)


class Person(SQLModel, table=True):
    """A member of staff: the one owner of their keys."""

    __tablename__ = "person"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True, max_length=32)
    full_name: str = Field(max_length=200)
    email: str | None = Field(default=None, max_length=254)
    status: str = Field(default="active", max_length=16)  # active | offboarded
    created_at: datetime = Field(sa_column=_ts())
    changed_at: datetime = Field(sa_column=_ts())


class SshKey(SQLModel, table=True):
    """One personal public key, owned by exactly one person.

    The fingerprint is unique across the registry: a key is personal, so the
    same key under two people is refused.
    """

    __tablename__ = "ssh_key"

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    key_type: str = Field(max_length=64)
    blob: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    fingerprint: str = Field(index=True, unique=True, max_length=64)
    comment: str = Field(default="", max_length=500)
    added_by: str = Field(max_length=64)
    added_at: datetime = Field(sa_column=_ts())
    expires_at: datetime = Field(sa_column=_ts())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    revoked_by: str | None = Field(default=None, max_length=64)
    revoke_reason: str | None = Field(default=None, max_length=500)
    attestation: str = Field(default="none", max_length=16)  # none | admin | proof | sk
    attested_by: str | None = Field(default=None, max_length=64)
    proof_date: str | None = Field(default=None, max_length=10)
    rotated_to_id: int | None = Field(default=None, foreign_key="ssh_key.id")


class Role(SQLModel, table=True):
    """A named set of people (devops, qa, ...) that inventory access rules refer to."""

    __tablename__ = "role"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    description: str = Field(default="", max_length=500)
    created_by: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=_ts())


class Membership(SQLModel, table=True):
    """A person in a role: who granted it, when, why, and until when.

    Ended memberships keep their row (``ended_at`` set) for the record.
    """

    __tablename__ = "membership"

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    role_id: int = Field(foreign_key="role.id", index=True)
    granted_by: str = Field(max_length=64)
    granted_at: datetime = Field(sa_column=_ts())
    reason: str = Field(max_length=500)
    until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    customer: str | None = Field(default=None, max_length=64)
    ended_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    ended_by: str | None = Field(default=None, max_length=64)
    end_reason: str | None = Field(default=None, max_length=500)


class AuditEvent(SQLModel, table=True):
    """One link of the tamper-evident audit chain.

    ``hash`` covers ``prev_hash`` and this event's content; the details are
    covered through ``details_digest`` so that personal details can later be
    redacted (and the redaction recorded) without breaking the chain.
    """

    __tablename__ = "audit_event"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = Field(sa_column=_ts())
    actor: str = Field(max_length=64)
    action: str = Field(index=True, max_length=64)
    subject: str = Field(index=True, max_length=200)
    details: str = Field(sa_column=Column(Text, nullable=False))
    details_digest: str = Field(max_length=64)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)
    redacted: bool = Field(default=False)


class AuditHead(SQLModel, table=True):
    """The single-row head of the audit chain.

    Every registry write updates it in the same transaction, which makes it a
    lock that serialises writers, a cheap change marker that watchers can poll,
    and a check that the newest events were not cut off.
    """

    __tablename__ = "audit_head"
    __table_args__ = (UniqueConstraint("id"),)

    id: int = Field(default=1, primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = Field(default=0)
    hash: str = Field(default="0" * 64, max_length=64)


class HostState(SQLModel, table=True):
    """What the agent last saw and did on a host (``keyward status``)."""

    __tablename__ = "host_state"

    host: str = Field(primary_key=True, max_length=255)
    environment: str = Field(default="", max_length=64)
    last_attempt: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_success: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_run_id: str | None = Field(default=None, max_length=32)
    last_changes: int = Field(default=0)
    drift_found: int = Field(default=0)
    files: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class AccessRequest(SQLModel, table=True):
    """Short-lived access to a role in one environment, asked for by a person.

    It grants nothing until someone other than the requester approves it; from
    approval it counts for ``duration_seconds`` (``until``).
    """

    __tablename__ = "access_request"

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    role_id: int = Field(foreign_key="role.id")
    environment: str = Field(max_length=64)
    duration_seconds: int
    reason: str = Field(max_length=500)
    requested_at: datetime = Field(sa_column=_ts())
    status: str = Field(default="pending", max_length=16)  # pending|approved|denied|ended
    decided_by: str | None = Field(default=None, max_length=64)
    decided_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    ended_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    end_reason: str | None = Field(default=None, max_length=500)


class OffboardingCase(SQLModel, table=True):
    """A person who left: open until every managed file is confirmed free of their keys."""

    __tablename__ = "offboarding_case"

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    requested_by: str = Field(max_length=64)
    reason: str = Field(max_length=500)
    started_at: datetime = Field(sa_column=_ts())
    fingerprints: str = Field(sa_column=Column(Text, nullable=False))  # JSON list
    status: str = Field(default="open", max_length=16)  # open | confirmed
    closed_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class OffboardingTarget(SQLModel, table=True):
    """One managed file that must be confirmed free of the person's keys (the evidence)."""

    __tablename__ = "offboarding_target"
    __table_args__ = (UniqueConstraint("case_id", "host", "account", "pattern"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="offboarding_case.id", index=True)
    host: str = Field(max_length=255)
    account: str = Field(max_length=64)
    pattern: str = Field(max_length=1024)
    path: str | None = Field(default=None, max_length=4096)
    had_access: bool = Field(default=False)
    removed: int = Field(default=0)
    confirmed_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    confirmed_by_run: str | None = Field(default=None, max_length=32)
    last_attempt: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class DaemonStatus(SQLModel, table=True):
    """The daemon's heartbeat and what it holds, for ``keyward status``.

    One row per daemon instance (``host:pid``); not a registry change, so it
    is written without an audit event.
    """

    __tablename__ = "daemon_status"

    id: str = Field(primary_key=True, max_length=300)
    started_at: datetime = Field(sa_column=_ts())
    heartbeat_at: datetime = Field(sa_column=_ts())
    hosts_total: int = Field(default=0)
    hosts_connected: int = Field(default=0)
    last_push_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_lag_ms: float | None = Field(default=None)
    last_verify_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    stopped_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    hosts: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class DaemonMember(SQLModel, table=True):
    """A running daemon of a fleet shared by several (PostgreSQL only).

    ``heartbeat_at`` is the database's clock (``clock_timestamp()``), never the daemon's:
    a daemon whose clock is off cannot look alive or dead to the others because of it.
    See ``keyward.daemon.membership``.
    """

    __tablename__ = "daemon_member"

    id: str = Field(primary_key=True, max_length=300)
    hostname: str = Field(max_length=255)
    pid: int
    started_at: datetime = Field(sa_column=_ts())
    heartbeat_at: datetime = Field(sa_column=_ts())
    stopped_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class ShardLease(SQLModel, table=True):
    """Which daemon may write the hosts of one shard, until when, under which fencing token.

    ``token`` grows by one whenever the holder changes; a write is made only after the
    database confirmed holder and token (``keyward.daemon.leases``).
    """

    __tablename__ = "shard_lease"

    shard: int = Field(primary_key=True)
    holder: str = Field(max_length=300)
    token: int = Field(sa_column=Column(BigInteger, nullable=False))
    acquired_at: datetime = Field(sa_column=_ts())
    expires_at: datetime = Field(sa_column=_ts())


class LoginEvent(SQLModel, table=True):
    """One sshd authentication event on a managed host, attributed to a person by fingerprint."""

    __tablename__ = "login_event"
    __table_args__ = (
        UniqueConstraint("host", "pos"),
        # The multi-computer check reads only sessions still open or closed recently.
        Index("ix_login_event_open", "outcome", "session_end", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    host: str = Field(index=True, max_length=255)
    account: str = Field(max_length=64)
    at: datetime = Field(sa_column=_ts())
    outcome: str = Field(max_length=16)  # accepted | failed | disconnected | invalid_user
    addr: str = Field(max_length=64)
    port: int
    fingerprint: str | None = Field(default=None, index=True, max_length=64)
    person: str | None = Field(default=None, index=True, max_length=32)
    pos: str = Field(max_length=300)
    ordinal: int = Field(default=0)
    session_end: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    session_end_ordinal: int | None = Field(default=None)
    collected_at: datetime = Field(sa_column=_ts())


class LoginSource(SQLModel, table=True):
    """Every source address a key has logged in from: the memory of the new-address alert.

    Kept apart from ``login_event`` so that checking a batch of logins costs one lookup
    per key and address, however long the login history grows.
    """

    __tablename__ = "login_source"

    fingerprint: str = Field(primary_key=True, max_length=64)
    addr: str = Field(primary_key=True, max_length=64)
    person: str | None = Field(default=None, index=True, max_length=32)
    first_seen: datetime = Field(sa_column=_ts())
    last_seen: datetime = Field(sa_column=_ts())


class AuthLogPosition(SQLModel, table=True):
    """Where reading a host's sshd log stopped (journal cursor or file inode and offset)."""

    __tablename__ = "auth_log_position"

    host: str = Field(primary_key=True, max_length=255)
    source: str = Field(max_length=16)
    position: str = Field(sa_column=Column(Text, nullable=False))  # JSON
    updated_at: datetime = Field(sa_column=_ts())


class Alert(SQLModel, table=True):
    """Something an administrator must look at: multi-computer use, new source, failed logins."""

    __tablename__ = "alert"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    person: str | None = Field(default=None, index=True, max_length=32)
    host: str | None = Field(default=None, max_length=255)
    account: str | None = Field(default=None, max_length=64)
    summary: str = Field(sa_column=Column(Text, nullable=False))
    details: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=_ts())
    status: str = Field(default="open", max_length=16)  # open | cleared
    cleared_by: str | None = Field(default=None, max_length=64)
    cleared_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    clear_reason: str | None = Field(default=None, max_length=500)
    notified_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    notify_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class FailureMode(SQLModel, table=True):
    """A person whose keys are deployed with stricter options (or not at all) until cleared."""

    __tablename__ = "failure_mode"

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    mode: str = Field(max_length=16)  # suspend | restrict
    addresses: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    alert_id: int | None = Field(default=None, foreign_key="alert.id")
    since: datetime = Field(sa_column=_ts())
    cleared_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    cleared_by: str | None = Field(default=None, max_length=64)


class Reminder(SQLModel, table=True):
    """A renewal reminder sent: one per key (or grant) and expiry date, never repeated.

    A key whose expiry moves (rotation, renewal) is a new ``due_at`` and gets its own.
    """

    __tablename__ = "reminder"
    __table_args__ = (UniqueConstraint("kind", "object_id", "due_at", name="uq_reminder_due"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # key | grant
    object_id: int
    due_at: datetime = Field(sa_column=_ts())
    person: str = Field(max_length=32)
    sent_at: datetime = Field(sa_column=_ts())


class ScimResource(SQLModel, table=True):
    """A user or group an identity provider pushed over SCIM, as it sent it.

    ``name`` is the userName (users) or displayName (groups), lower-cased, for the
    uniqueness check; ``person`` the keyward username the user is linked to (None
    when its userName is no valid keyward username, or it never was active).
    """

    __tablename__ = "scim_resource"
    __table_args__ = (Index("ix_scim_resource_kind_name", "kind", "name"),)

    id: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)  # User | Group
    name: str = Field(max_length=512)
    person: str | None = Field(default=None, index=True, max_length=32)
    document: str = Field(sa_column=Column(Text, nullable=False))  # the resource, JSON
    version: int = Field(default=1)
    created_at: datetime = Field(sa_column=_ts())
    changed_at: datetime = Field(sa_column=_ts())
    deleted_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class AdoptHost(SQLModel, table=True):
    """A host's latest ``keyward adopt scan``: when, in which mode, and what it could not read.

    A host with a row here is under the switch-over guard (``keyward/adoption/guard.py``).
    """

    __tablename__ = "adopt_host"

    host: str = Field(primary_key=True, max_length=255)
    environment: str = Field(default="", max_length=64)
    mode: str = Field(default="", max_length=16)
    scanned_at: datetime = Field(sa_column=_ts())
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    file_errors: str = Field(default="[]", sa_column=Column(Text, nullable=False))  # JSON
    complete: bool = Field(default=False)


class AdoptKey(SQLModel, table=True):
    """A public key an adoption scan found anywhere: the key itself and when it was seen."""

    __tablename__ = "adopt_key"

    fingerprint: str = Field(primary_key=True, max_length=64)
    key_type: str = Field(max_length=64)
    bits: int = Field(default=0)
    blob: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    comment: str = Field(default="", max_length=500)
    first_seen: datetime = Field(sa_column=_ts())
    last_seen: datetime = Field(sa_column=_ts())
    last_login: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class AdoptLine(SQLModel, table=True):
    """One line of a managed file as the host's latest scan found it.

    A key line has a ``fingerprint``; a line sshd would not honour has none and ``error``
    says why. Never the line's text.
    """

    __tablename__ = "adopt_line"

    id: int | None = Field(default=None, primary_key=True)
    host: str = Field(index=True, max_length=255)
    account: str = Field(max_length=64)
    pattern: str = Field(max_length=1024)
    path: str | None = Field(default=None, max_length=4096)
    lineno: int
    fingerprint: str | None = Field(default=None, index=True, max_length=64)
    options: str = Field(default="[]", sa_column=Column(Text, nullable=False))  # JSON
    comment: str = Field(default="", max_length=500)
    error: str | None = Field(default=None, max_length=500)
    first_seen: datetime = Field(sa_column=_ts())


class AdoptDecision(SQLModel, table=True):
    """An administrator's decision about a key nobody claimed: ignore it, or remove it."""

    __tablename__ = "adopt_decision"

    fingerprint: str = Field(primary_key=True, max_length=64)
    decision: str = Field(max_length=16)  # ignore | remove
    reason: str = Field(max_length=500)
    decided_by: str = Field(max_length=64)
    decided_at: datetime = Field(sa_column=_ts())
