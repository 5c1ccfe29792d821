"""Reading the stored audit chain and verifying it (``audit verify``, backups, restores)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from keyward.registry.audit import ChainProblem, ChainRecord, verify_chain
from keyward.registry.checkpoint import Checkpoint, Watch
from keyward.registry.models import AuditEvent, AuditHead


def verify_session(
    session: Session, checkpoints: Sequence[Checkpoint] = ()
) -> tuple[int, str, ChainProblem | None] | None:
    """(head seq, head hash, first problem or None); None when there is no chain head.

    The chain must hold together on its own and agree with every signed checkpoint
    (kept outside the database): a writer who deleted the newest events or re-hashed
    the chain after an edit passes the first test but not the second.
    """
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
    watch = Watch(checkpoints)
    _count, problem = verify_chain(watch.tap(records), head.seq, head.hash)
    if problem is None:
        problem = watch.problem(head.seq)
    return head.seq, head.hash, problem
