"""The tamper-evident audit chain.

Each event's hash is ``sha256(canonical(seq, at, actor, action, subject,
details_digest, prev_hash))``.  Editing, deleting or reordering any past event
changes a hash that a later event (or the chain head) depends on, so
``verify`` finds the first bad one.

Details are covered by their digest rather than directly: a later redaction of
personal details replaces the text but keeps the digest, marks the row
``redacted``, and is itself an ``audit.redact`` event listing the redacted
events — so the chain still verifies, and a row marked redacted without such
an event is reported as tampering.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

GENESIS_HASH = "0" * 64
REDACT_ACTION = "audit.redact"


def _redacted_seqs(details: str) -> list[int]:
    try:
        seqs = json.loads(details).get("seqs", [])
    except (ValueError, AttributeError):
        return []
    return [s for s in seqs if isinstance(s, int)]


def canonical_json(value: Any) -> str:
    """Stable JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def details_digest(details_json: str) -> str:
    return hashlib.sha256(details_json.encode("utf-8")).hexdigest()


def timestamp_text(at: datetime) -> str:
    """Microsecond ISO text, identical whichever backend stored the value."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    digest: str,
    prev_hash: str,
) -> str:
    body = canonical_json(
        {
            "seq": seq,
            "at": timestamp_text(at),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details_digest": digest,
            "prev": prev_hash,
        }
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChainRecord:
    """An audit event as read back, for verification."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: str
    details_digest: str
    prev_hash: str
    hash: str
    redacted: bool


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"audit event {self.seq}: {self.reason}"


def verify_chain(
    records: Iterable[ChainRecord], head_seq: int, head_hash: str
) -> tuple[int, ChainProblem | None]:
    """Walk the chain in ``seq`` order; return (events checked, first problem or None)."""
    prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    redacted: list[int] = []
    authorised: set[int] = set()
    for record in records:
        count += 1
        if record.redacted:
            redacted.append(record.seq)
        if record.action == REDACT_ACTION and not record.redacted:
            authorised.update(_redacted_seqs(record.details))
        if record.seq != expected_seq:
            return count, ChainProblem(
                expected_seq, f"missing (found event {record.seq} next): events were deleted"
            )
        if record.prev_hash != prev:
            return count, ChainProblem(
                record.seq, "does not follow the previous event: events were deleted or reordered"
            )
        if not record.redacted and details_digest(record.details) != record.details_digest:
            return count, ChainProblem(record.seq, "details were edited")
        recomputed = event_hash(
            seq=record.seq,
            at=record.at,
            actor=record.actor,
            action=record.action,
            subject=record.subject,
            digest=record.details_digest,
            prev_hash=record.prev_hash,
        )
        if recomputed != record.hash:
            return count, ChainProblem(record.seq, "content was edited (hash mismatch)")
        prev = record.hash
        expected_seq += 1
    for seq in redacted:
        if seq not in authorised:
            return count, ChainProblem(
                seq, "is marked redacted but no later audit.redact event records that"
            )
    last_seq = expected_seq - 1
    if last_seq != head_seq or prev != head_hash:
        return count, ChainProblem(
            last_seq + 1 if head_seq > last_seq else head_seq,
            f"chain head says {head_seq} events but {last_seq} verify: the newest were removed"
            if head_seq != last_seq
            else "chain head hash does not match the last event",
        )
    return count, None


def details_text(details: Mapping[str, Any]) -> str:
    return canonical_json(dict(details))
