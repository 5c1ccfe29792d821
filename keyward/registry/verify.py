"""Reading the stored audit chain and verifying it (``audit verify``, backups, restores)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from keyward.registry.audit import ChainProblem, ChainRecord, verify_chain
from keyward.registry.models import AuditEvent, AuditHead


def verify_session(session: Session) -> tuple[int, str, ChainProblem | None] | None:
    """(head seq, head hash, first problem or None); None when there is no chain head."""
    head = session.exec(select(AuditHead).where(AuditHead.id == 1)).first()
    if head is None:
        return None
    records = (
        ChainRecord(
            seq=e.seq,
            at=e.at,
            actor=e.actor,
            action=e.action,
            subject=e.subject,
            details=e.details,
            details_digest=e.details_digest,
            prev_hash=e.prev_hash,
            hash=e.hash,
            redacted=e.redacted,
        )
        for e in session.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))
    )
    _count, problem = verify_chain(records, head.seq, head.hash)
    return head.seq, head.hash, problem
