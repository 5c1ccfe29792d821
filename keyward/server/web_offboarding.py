"""The web page's offboarding evidence: ``keyward report offboarding`` for a browser.

``/web/offboarding`` lists the offboarding cases, newest first; ``/web/offboarding/USER``
shows the latest case of one person as the report does: who asked and why, the keys
revoked, each managed file with the time its removal was confirmed by read-back (or
what is still open), accepted logins with the person's keys after the case opened,
and the audit events with their chain hashes.

Administrators and auditors only (403 for others): the evidence names hosts, accounts
and addresses of the whole fleet.  The person concerned cannot see it here: once
offboarded their keys are revoked, so they cannot sign in at all.  Read-only: no forms.
"""

from __future__ import annotations

from urllib.parse import quote

from sqlmodel import col, select

from keyward.errors import RegistryError
from keyward.registry import views
from keyward.registry.models import OffboardingCase, OffboardingTarget, Person
from keyward.server import app as api
from keyward.server.authz import Forbidden
from keyward.server.pages import esc, table
from keyward.server.web import Handler, Page, Visit


def _reader(visit: Visit) -> None:
    if not (visit.caller.admin or visit.caller.auditor):
        raise Forbidden("only administrators and auditors may see offboarding evidence")


def cases(visit: Visit) -> Page:
    _reader(visit)
    with visit.state.registry.read() as session:
        found = session.exec(
            select(OffboardingCase, Person)
            .join(Person, col(Person.id) == col(OffboardingCase.person_id))
            .order_by(col(OffboardingCase.id).desc())
        ).all()
        open_files = {
            case.id: len(
                session.exec(
                    select(OffboardingTarget.id).where(
                        OffboardingTarget.case_id == case.id,
                        col(OffboardingTarget.confirmed_at).is_(None),
                    )
                ).all()
            )
            for case, _ in found
        }
    rows = [
        {
            "id": case.id,
            "person": person.username,
            "name": person.full_name,
            "started": views.ts(case.started_at),
            "requested_by": case.requested_by,
            "status": case.status,
            "open": open_files[case.id],
        }
        for case, person in found
    ]
    body = table(
        rows,
        (
            ("id", "Case"),
            ("person", "Person"),
            ("name", "Name"),
            ("started", "Started"),
            ("requested_by", "Requested by"),
            ("status", "Status"),
            ("open", "Files still open"),
        ),
        extra="Evidence",
        row_id="case",
        actions=lambda r: (
            f'<a href="/web/offboarding/{esc(quote(r["person"], safe=""))}">evidence</a>'
        ),
    )
    return visit.page("Offboarding", body)


def evidence(visit: Visit) -> Page:
    _reader(visit)
    username = visit.request.params["username"]
    with visit.state.registry.read() as session:
        try:
            data = views.offboarding_evidence(session, username)
        except RegistryError as exc:
            raise api.NotFound(exc.message) from None
    case, person = data["case"], data["person"]
    still_open = [h for h in data["hosts"] if h["confirmed_at"] is None]
    summary = (
        "<ul>"
        f"<li>Person: <span id='person'>{esc(person['full_name'])} ({esc(person['username'])})"
        f"</span>, {esc(person['status'])}</li>"
        f"<li>Requested by: {esc(case['requested_by'])}</li>"
        f"<li>Reason: {esc(case['reason'])}</li>"
        f"<li>Started: {esc(case['started_at'])}</li>"
        f"<li>Status: <b id='case-status'>{esc(case['status'])}</b>"
        + (f" (closed {esc(case['closed_at'])})" if case["closed_at"] else "")
        + "</li>"
        f"<li>Managed files checked: {len(data['hosts'])}; still open: "
        f"<b id='still-open'>{len(still_open)}</b></li></ul>"
    )
    body = (
        summary
        + "<h2>Keys revoked</h2>"
        + table(
            data["keys"],
            views.EVIDENCE_KEY_COLUMNS,
        )
        + "<h2>Removal confirmed per host and account</h2>"
        "<p>Each row was confirmed by reading the file back from the host after the change "
        "and checking that none of the fingerprints above remain.</p>"
        + table(
            [{**h, "id": f"{h['host']}-{h['account']}"} for h in data["hosts"]],
            views.EVIDENCE_TARGET_COLUMNS,
            row_id="target",
        )
        + "<h2>Logins after the offboarding began</h2>"
        + table(
            data["logins_after_offboarding"],
            views.EVIDENCE_LOGIN_COLUMNS,
        )
        + "<h2>Audit trail</h2>"
        + table(
            data["audit_events"],
            views.EVIDENCE_AUDIT_COLUMNS,
        )
        + '<p><a href="/web/offboarding">All offboarding cases</a></p>'
    )
    return visit.page(f"Offboarding evidence: {username}", body)


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/web/offboarding", cases),
    ("GET", "/web/offboarding/{username}", evidence),
)
