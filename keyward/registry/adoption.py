"""The registry side of adopting a fleet: scan records, decisions, claims, and the guard.

``record_scan`` stores what one ``adopt scan`` read (each host's latest lines replace its
earlier ones, keeping when each line and key was first seen) and writes one ``adopt.scan``
event; ``decide`` records ``adopt ignore``/``adopt remove`` and ``claim`` registers a found
key for a person through ``ops.add_key`` (so one key still belongs to one person), each
with its audit event. ``load_scan`` reads it all back as ``keyward.adoption`` values, and
``load_guard`` the little the switch-over guard needs for every round's snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert
from sqlmodel import Session, col, delete, select

from keyward.adoption.lines import HostScan, Sighting, Unhonoured, Where
from keyward.adoption.report import Decision, ScanData, ScannedHost, SeenKey
from keyward.clock import as_utc
from keyward.errors import RegistryError, UsageError
from keyward.keys import KeyPolicy, PublicKey, check_policy, decode_key
from keyward.registry import ops, validate
from keyward.registry.login_store import chunks
from keyward.registry.models import (
    AdoptDecision,
    AdoptHost,
    AdoptKey,
    AdoptLine,
    LoginEvent,
    SshKey,
)
from keyward.registry.store import WriteTx
from keyward.registry.subjects import FLEET, Subject
from keyward.state import AdoptionGuard

MAX_COMMENT = 500


def _comment(text: str) -> str:
    """A host line's comment as stored: at most 500 characters."""
    return text[:MAX_COMMENT]


def _line_identity(
    host: str, account: str, pattern: str, fp: str | None, extra: str
) -> tuple[str, ...]:
    return (host, account, pattern, fp or "", extra)


def last_logins(session: Session, fingerprints: Iterable[str]) -> dict[str, datetime]:
    """The newest accepted login with each key, from the collected sshd logs."""
    out: dict[str, datetime] = {}
    wanted = sorted(set(fingerprints))
    for chunk in chunks(wanted):
        rows = session.exec(
            select(LoginEvent.fingerprint, func.max(LoginEvent.at))
            .where(LoginEvent.outcome == "accepted", col(LoginEvent.fingerprint).in_(chunk))
            .group_by(col(LoginEvent.fingerprint))
        ).all()
        for fingerprint, at in rows:
            if fingerprint is not None and at is not None:
                out[fingerprint] = as_utc(at)
    return out


# The columns of an adopt_line row that say what the line is (all but id and first_seen).
_LINE_COLUMNS = (
    "host",
    "account",
    "pattern",
    "path",
    "lineno",
    "fingerprint",
    "options",
    "comment",
    "error",
)


def record_scan(
    tx: WriteTx, scans: Sequence[HostScan], selection: Mapping[str, str | None]
) -> dict[str, int]:
    """Store one scan's hosts; return (and audit as ``adopt.scan``) its counts.

    Each host read replaces its lines: rows that are exactly as before are left alone
    (a rescan of an unchanged fleet writes no line), others are deleted or inserted, a
    new row keeping the ``first_seen`` of an earlier row with the same key, options and
    file. A host that could not be read keeps its earlier lines; its row says the scan
    failed and is incomplete, so the guard holds back every unaccounted removal there.
    """
    session, now = tx.session, tx.now
    read = [s for s in scans if s.error is None]
    table = AdoptLine.__table__  # type: ignore[attr-defined]
    old: dict[tuple[Any, ...], list[int]] = {}
    first_line: dict[tuple[str, ...], datetime] = {}
    for chunk in chunks([s.host for s in read]):
        query = select(table.c.id, table.c.first_seen, *(table.c[c] for c in _LINE_COLUMNS))
        for row_id, first, *values in session.execute(query.where(table.c.host.in_(chunk))):
            old.setdefault(tuple(values), []).append(row_id)
            host, account, pattern, _, _, fingerprint, options, _, error = values
            ident = _line_identity(host, account, pattern, fingerprint, error or options)
            seen_at = as_utc(first)
            first_line[ident] = min(first_line.get(ident, seen_at), seen_at)
    rows: list[dict[str, Any]] = []
    found: dict[str, Sighting] = {}

    def keep_or_add(row: dict[str, Any], ident: tuple[str, ...]) -> None:
        same = old.get(tuple(row[c] for c in _LINE_COLUMNS))
        if same:
            same.pop()  # exactly this line is stored already: leave the row alone
            return
        rows.append({**row, "first_seen": first_line.get(ident, now)})

    for scan in read:
        for s in scan.sightings:
            options = json.dumps(list(s.options))
            w = s.where
            keep_or_add(
                _line_row(w, s.lineno, s.fingerprint, options, _comment(s.comment), None),
                _line_identity(w.host, w.account, w.pattern, s.fingerprint, options),
            )
            found.setdefault(s.fingerprint, s)
        for u in scan.unhonoured:
            reason = u.reason[:MAX_COMMENT]
            w = u.where
            keep_or_add(
                _line_row(w, u.lineno, None, "[]", "", reason),
                _line_identity(w.host, w.account, w.pattern, None, reason),
            )
    gone = sorted(row_id for ids in old.values() for row_id in ids)
    for ids in chunks(gone):
        session.execute(delete(table).where(table.c.id.in_(ids)))
    for batch in chunks(rows):
        session.execute(insert(AdoptLine), list(batch))
    logins = last_logins(session, found)
    known: dict[str, AdoptKey] = {}
    for chunk in chunks(sorted(found)):
        for key in session.exec(select(AdoptKey).where(col(AdoptKey.fingerprint).in_(chunk))):
            known[key.fingerprint] = key
    for fingerprint, s in found.items():
        seen = known.get(fingerprint)
        if seen is None:
            session.add(
                AdoptKey(
                    fingerprint=fingerprint,
                    key_type=s.key_type,
                    bits=s.bits,
                    blob=s.blob,
                    comment=_comment(s.comment),
                    first_seen=now,
                    last_seen=now,
                    last_login=logins.get(fingerprint),
                )
            )
        else:
            seen.last_seen = now
            seen.last_login = logins.get(fingerprint, seen.last_login)
            session.add(seen)
    stored: dict[str, AdoptHost] = {}
    for chunk in chunks([s.host for s in scans]):
        for row in session.exec(select(AdoptHost).where(col(AdoptHost.host).in_(chunk))):
            stored[row.host] = row
    for scan in scans:
        host = stored.get(scan.host)
        if host is None:
            host = AdoptHost(host=scan.host, scanned_at=now)
        host.environment = scan.environment
        host.mode = scan.mode
        host.scanned_at = now
        host.error = scan.error
        host.file_errors = json.dumps([list(e) for e in scan.file_errors])
        host.complete = scan.complete
        session.add(host)
    counts = {
        "hosts": len(scans),
        "failed": sum(1 for s in scans if s.error is not None),
        "incomplete": sum(1 for s in scans if s.error is None and not s.complete),
        "files": sum(s.files for s in read),
        "lines": sum(len(s.sightings) for s in read),
        "keys": len(found),
        "unhonoured": sum(len(s.unhonoured) for s in read),
    }
    tx.audit("adopt.scan", FLEET, {**counts, **selection})
    return counts


def _line_row(
    where: Where,
    lineno: int,
    fingerprint: str | None,
    options: str,
    comment: str,
    error: str | None,
) -> dict[str, Any]:
    return {
        "host": where.host,
        "account": where.account,
        "pattern": where.pattern,
        "path": where.path,
        "lineno": lineno,
        "fingerprint": fingerprint,
        "options": options,
        "comment": comment,
        "error": error,
    }


def load_scan(session: Session) -> ScanData:
    """Everything the scans recorded, as the pure report reads it."""
    keys = {k.fingerprint: k for k in session.exec(select(AdoptKey))}
    hosts = tuple(
        ScannedHost(
            h.host,
            h.environment,
            h.mode,
            as_utc(h.scanned_at),
            h.error,
            tuple((str(e[0]), str(e[1]), str(e[2])) for e in json.loads(h.file_errors)),
        )
        for h in session.exec(select(AdoptHost).order_by(col(AdoptHost.host)))
    )
    sightings: list[Sighting] = []
    unhonoured: list[Unhonoured] = []
    table = AdoptLine.__table__  # type: ignore[attr-defined]
    options_of: dict[str, tuple[str, ...]] = {}  # the same few option lists, parsed once
    for (
        host,
        account,
        pattern,
        path,
        lineno,
        fingerprint,
        options,
        comment,
        error,
    ) in session.execute(select(*(table.c[c] for c in _LINE_COLUMNS)).order_by(table.c.id)):
        where = Where(host, account, pattern, path)
        if fingerprint is None:
            unhonoured.append(Unhonoured(where, lineno, error or "not a key line"))
            continue
        key = keys.get(fingerprint)
        if key is None:
            continue
        if options not in options_of:
            options_of[options] = tuple(json.loads(options))
        sightings.append(
            Sighting(
                where,
                lineno,
                fingerprint,
                key.key_type,
                key.bits,
                key.blob,
                options_of[options],
                comment,
            )
        )
    seen = tuple(
        SeenKey(
            k.fingerprint, k.key_type, k.bits, k.comment, as_utc(k.first_seen), as_utc(k.last_seen)
        )
        for k in sorted(keys.values(), key=lambda k: k.fingerprint)
    )
    return ScanData(hosts, seen, tuple(sightings), tuple(unhonoured))


def load_decisions(session: Session) -> dict[str, Decision]:
    return {
        d.fingerprint: Decision(
            d.fingerprint,
            "remove" if d.decision == "remove" else "ignore",
            d.reason,
            d.decided_by,
            as_utc(d.decided_at),
        )
        for d in session.exec(select(AdoptDecision))
    }


def load_guard(session: Session, registered: Iterable[str]) -> AdoptionGuard:
    """What the switch-over guard needs; empty (one query) for a fleet never scanned."""
    hosts = session.exec(select(AdoptHost.host, AdoptHost.complete)).all()
    if not hosts:
        return AdoptionGuard()
    sighted: dict[str, set[str]] = {name: set() for name, _ in hosts}
    for host, fingerprint in session.exec(
        select(AdoptLine.host, AdoptLine.fingerprint)
        .where(col(AdoptLine.fingerprint).is_not(None))
        .distinct()
    ):
        if fingerprint is not None:
            sighted.setdefault(host, set()).add(fingerprint)
    decided = frozenset(session.exec(select(AdoptDecision.fingerprint)).all())
    mine = set(registered)
    open_keys = {fp for fps in sighted.values() for fp in fps} - mine - decided
    return AdoptionGuard(
        sighted={host: frozenset(fps) for host, fps in sighted.items()},
        complete=frozenset(name for name, complete in hosts if complete),
        decided=decided,
        last_login=last_logins(session, open_keys),
    )


def find_seen(session: Session, text: str) -> AdoptKey:
    """The scanned key ``text`` names: a full ``SHA256:`` fingerprint or at least 16 of its
    characters; a prefix that fits several keys is refused, naming them."""
    text = text.strip()
    body = text[7:] if text.startswith("SHA256:") else text
    if len(body) < ops.SHORT_FINGERPRINT or not all(c.isalnum() or c in "+/" for c in body):
        raise UsageError(
            f"{text!r} is not a fingerprint: give SHA256:... or at least "
            f"{ops.SHORT_FINGERPRINT} of its characters"
        )
    prefix = "SHA256:" + body
    rows = [
        k
        for k in session.exec(
            select(AdoptKey).where(col(AdoptKey.fingerprint).startswith(prefix, autoescape=True))
        )
        if k.fingerprint.startswith(prefix)
    ]
    if not rows:
        raise RegistryError(f"no key {prefix} was found by 'keyward adopt scan'")
    if len(rows) > 1:
        names = ", ".join(k.fingerprint for k in rows)
        raise UsageError(f"{prefix} matches {len(rows)} scanned keys: {names}; give more of it")
    return rows[0]


MAX_PLACES = 50  # places named in one audit event; the count is always there


def _places(session: Session, fingerprint: str) -> dict[str, Any]:
    """Where a key was found, for its audit event: a count and at most 50 ``account@host``."""
    every = sorted(
        {
            f"{account}@{host}"
            for host, account in session.exec(
                select(AdoptLine.host, AdoptLine.account).where(
                    AdoptLine.fingerprint == fingerprint
                )
            )
        }
    )
    return {"count": len(every), "first": every[:MAX_PLACES]}


def decide(tx: WriteTx, text: str, decision: str, reason: str) -> AdoptDecision:
    """Record that nobody will claim a scanned key: ``ignore`` it or ``remove`` it.

    Either accounts for its lines at the switch-over (which removes them). A registered
    key is the registry's: revoke it instead.
    """
    reason = validate.line("reason", reason)
    key = find_seen(tx.session, text)
    if tx.session.exec(select(SshKey).where(SshKey.fingerprint == key.fingerprint)).first():
        raise RegistryError(
            f"key {key.fingerprint} is registered to a person; to take it away, "
            "use 'keyward key revoke' instead"
        )
    row = tx.session.get(AdoptDecision, key.fingerprint)
    previous = None if row is None else {"decision": row.decision, "reason": row.reason}
    if row is None:
        row = AdoptDecision(
            fingerprint=key.fingerprint,
            decision=decision,
            reason=reason,
            decided_by=tx.actor,
            decided_at=tx.now,
        )
    row.decision, row.reason, row.decided_by, row.decided_at = decision, reason, tx.actor, tx.now
    tx.session.add(row)
    tx.audit(
        f"adopt.{decision}",
        FLEET,
        {
            "fingerprint": key.fingerprint,
            "reason": reason,
            "places": _places(tx.session, key.fingerprint),
            "previous": previous,
        },
    )
    return row


def claimable_key(key: AdoptKey, policy: KeyPolicy) -> PublicKey:
    """The public key of a scanned key, as it would be registered; refused under policy."""
    comment = key.comment
    if validate.has_control(comment):
        comment = ""
    public = decode_key(key.key_type, key.blob, comment)
    check_policy(public, policy)
    return public


def claim(
    tx: WriteTx, text: str, username: str, policy: KeyPolicy, expires_at: datetime
) -> tuple[AdoptKey, dict[str, Any]]:
    """Register a scanned key for ``username`` (attestation ``none``) through ``ops.add_key``.

    Weak keys are refused (the person registers a new one; ``adopt remove`` this one), so
    is a key registered to anyone already. An earlier ignore/remove decision is dropped.
    """
    key = find_seen(tx.session, text)
    public = claimable_key(key, policy)
    ops.add_key(tx, username, public, ops.KeyClaim("none", expires_at))
    decision = tx.session.get(AdoptDecision, key.fingerprint)
    dropped = None
    if decision is not None:
        dropped = {"decision": decision.decision, "reason": decision.reason}
        tx.session.delete(decision)
    places = _places(tx.session, key.fingerprint)
    tx.audit(
        "adopt.claim",
        Subject.person(username),
        {"fingerprint": key.fingerprint, "places": places, "dropped_decision": dropped},
    )
    return key, places
