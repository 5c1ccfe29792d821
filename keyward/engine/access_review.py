"""The access review: who can log in where, by which grant, confirmed on the host when.

What ``keyward report access`` prints and the server's web page shows: computed from the
same desired state a round deploys (``engine.inputs``), with each file's last confirmed
content and last login from the registry. A library, so the CLI and the server share it
without one importing the other.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyward.desired import FileTarget
    from keyward.registry.models import HostState
    from keyward.registry.store import Registry


def ts(value: datetime | None) -> str | None:
    """A timestamp for the rows: ISO 8601 UTC with a Z, or null (as the CLI's JSON)."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def access_rows(
    registry: Registry, inventory_dir: Path, env: str | None, customer: str | None = None
) -> list[dict[str, Any]]:
    """The access review's rows (``report access`` and the server's web page)."""
    from sqlmodel import col, select

    from keyward.engine.inputs import load_inputs
    from keyward.registry.models import HostState, LoginEvent

    prepared = load_inputs(registry, registry.clock, inventory_dir, env, None)
    snapshot = prepared.snapshot
    from sqlalchemy import func

    with registry.read() as session:
        states = {s.host: s for s in session.exec(select(HostState))}
        last_logins = {
            (person, host, account): at
            for person, host, account, at in session.exec(
                select(
                    LoginEvent.person,
                    LoginEvent.host,
                    LoginEvent.account,
                    func.max(LoginEvent.at),
                )
                .where(LoginEvent.outcome == "accepted", col(LoginEvent.person).is_not(None))
                .group_by(col(LoginEvent.person), col(LoginEvent.host), col(LoginEvent.account))
            )
        }
    hosts = {h.name: h for h in prepared.hosts}
    grants: dict[tuple[str, str], list[Any]] = {}
    for grant in snapshot.grants:
        grants.setdefault((grant.username, grant.role), []).append(grant)
    rows: list[dict[str, Any]] = []
    for target, desired in sorted(
        prepared.desired.items(), key=lambda i: (i[0].host, i[0].account, i[0].pattern)
    ):
        host = hosts[target.host]
        if customer is not None and host.customer != customer:
            continue
        confirmed = _confirmed_at(
            states.get(target.host),
            target,
            desired.exclusive_content() if desired.mode == "exclusive" else None,
        )
        for line in desired.lines:
            if line.kind != "person":
                continue
            record = snapshot.by_fingerprint.get(line.key.fingerprint)
            for role in line.roles:
                for grant in grants.get((line.owner, role), []):
                    if not grant.active_at(prepared.now):
                        continue
                    rows.append(
                        {
                            "environment": host.environment,
                            "customer": host.customer,
                            "host": target.host,
                            "account": target.account,
                            "person": line.owner,
                            "role": role,
                            "via": "access request" if grant.request_id else "grant",
                            "granted_by": grant.granted_by,
                            "granted_at": ts(grant.granted_at),
                            "until": ts(grant.until),
                            "reason": grant.reason,
                            "fingerprint": line.key.fingerprint,
                            "attestation": record.attestation if record else None,
                            "key_expires_at": ts(record.expires_at) if record else None,
                            "line_expires_at": ts(line.expires_at),
                            "confirmed_on_host_at": confirmed,
                            "last_login": ts(
                                last_logins.get((line.owner, target.host, target.account))
                            ),
                        }
                    )
    return rows


def _confirmed_at(state: HostState | None, target: FileTarget, content: bytes | None) -> str | None:
    """When the agent last confirmed this exact file content on the host."""
    from keyward.plan import sha256

    if state is None or content is None or state.last_success is None:
        return None
    files = json.loads(state.files or "{}")
    entry = files.get(f"{target.account}:{target.pattern}")
    if entry and entry.get("sha256") == sha256(content):
        return ts(state.last_success)
    return None
