"""Every registry change as a structured log line, after its transaction committed.

The audit chain is the record; the log line is what an operator's log pipeline sees.
One function, so the CLI and the server log the same event the same way.
"""

from __future__ import annotations

import json
from typing import Any

from keyward.logs import get_logger
from keyward.registry.store import WriteTx


def log_changes(tx: WriteTx, **bound: Any) -> None:
    """One ``registry_change`` line per audit event ``tx`` wrote (``bound`` added to each)."""
    log = get_logger(**bound)
    for event in tx.events:
        log.info(
            "registry_change",
            action=event.action,
            subject=event.subject,
            actor=event.actor,
            seq=event.seq,
            details=json.loads(event.details),
        )
