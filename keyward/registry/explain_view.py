"""``keyward explain`` as one document, for the CLI on the database and the server alike.

Both paths call ``explain_report`` so the text and JSON through ``keyward server`` are
exactly what the registry machine prints: the JSON document plus the human lines, both
rendered here from the same ``Place`` values (``keyward.explain``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from keyward.errors import KeywardError
from keyward.explain import HostSync, RecordedFile, describe, explain, place_json
from keyward.inventory.model import Inventory
from keyward.keys import PublicKey
from keyward.registry.models import HostState
from keyward.registry.snapshot import load_snapshot


def host_syncs(rows: list[HostState]) -> dict[str, HostSync]:
    """``host_state`` rows as the frozen values ``keyward.explain`` reads."""
    out: dict[str, HostSync] = {}
    for row in rows:
        try:
            files: dict[str, Any] = json.loads(row.files or "{}")
        except ValueError:
            files = {}
        recorded = {
            name: RecordedFile(
                entry.get("sha256"),
                frozenset(str(k[0]) for k in entry.get("keys", ()) if k and k[0]),
            )
            for name, entry in files.items()
            if isinstance(entry, dict)
        }
        out[row.host] = HostSync(
            row.host, row.last_success, row.last_attempt, row.last_error, recorded
        )
    return out


def inventory_agent_key(inventory: Inventory) -> PublicKey | None:
    """The agent's key; unreadable only makes the login account's sync check less exact."""
    from keyward.engine.inputs import load_agent_key

    try:
        return load_agent_key(inventory)
    except KeywardError:
        return None


def explain_report(
    session: Session,
    inventory: Inventory,
    username: str,
    now: datetime,
    host: str | None = None,
    account: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The ``--json`` document and the lines the CLI prints without ``--json``."""
    snapshot = load_snapshot(session)
    states = host_syncs(list(session.exec(select(HostState))))
    agent_key = inventory_agent_key(inventory)
    places = explain(snapshot, inventory, username, states, now, host, account, agent_key)
    document = {
        "person": username,
        "status": snapshot.people[username].status,
        "places": [place_json(p) for p in places],
    }
    lines = [describe(place) for place in places]
    able = sum(1 for p in places if p.can_login)
    if not places:
        lines.append(f"{username}: no access rule covers any account here")
    elif host is None or account is None:
        lines.append(f"{username} can log in at {able} of {len(places)} places")
    return document, lines
