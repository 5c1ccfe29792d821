"""Reports an auditor can read without knowing keyward: offboarding evidence and access review."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, ts

if TYPE_CHECKING:
    pass

pass_app = click.make_pass_decorator(AppContext)
FORMATS = click.Choice(["md", "json", "csv"])


@click.group()
def report() -> None:
    """Evidence and reviews for auditors."""


def _md_escape(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"  # a report is for people; its JSON keeps true/false
    text = "-" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    out = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        out.append("| " + " | ".join(_md_escape(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(out)


# -- offboarding evidence -----------------------------------------------------


def offboarding_evidence(app: AppContext, username: str) -> dict[str, Any]:
    from sqlmodel import col, select

    from keyward.registry import ops, subjects
    from keyward.registry.login_store import source_of_pos
    from keyward.registry.models import (
        AuditEvent,
        LoginEvent,
        OffboardingCase,
        OffboardingTarget,
        SshKey,
    )
    from keyward.registry.subjects import Subject

    with app.registry().read() as session:
        person = ops.find_person(session, username)
        cases = session.exec(
            select(OffboardingCase)
            .where(OffboardingCase.person_id == person.id)
            .order_by(col(OffboardingCase.id))
        ).all()
        if not cases:
            from keyward.errors import RegistryError

            raise RegistryError(f"{username!r} has no offboarding case")
        case = cases[-1]
        keys = session.exec(select(SshKey).where(SshKey.person_id == person.id)).all()
        targets = session.exec(
            select(OffboardingTarget)
            .where(OffboardingTarget.case_id == case.id)
            .order_by(col(OffboardingTarget.host), col(OffboardingTarget.account))
        ).all()
        subject = Subject.person(username)
        events = subjects.about(
            session,
            session.exec(
                select(AuditEvent)
                .where(subjects.matches(subject), AuditEvent.at >= case.started_at)
                .order_by(col(AuditEvent.seq))
            ),
            subject,
        )
        # Logins with the person's keys at or after the case opened: a host that was down
        # during the offboarding kept the key until the agent reached it again.
        fingerprints = [str(fp) for fp in json.loads(case.fingerprints or "[]")]
        late_logins = session.exec(
            select(LoginEvent)
            .where(
                LoginEvent.outcome == "accepted",
                col(LoginEvent.at) >= case.started_at,
                (col(LoginEvent.person) == username)
                | col(LoginEvent.fingerprint).in_(fingerprints),
            )
            .order_by(col(LoginEvent.at), col(LoginEvent.id))
        ).all()
        return {
            "person": {
                "username": person.username,
                "full_name": person.full_name,
                "status": person.status,
            },
            "case": {
                "id": case.id,
                "requested_by": case.requested_by,
                "reason": case.reason,
                "started_at": ts(case.started_at),
                "status": case.status,
                "closed_at": ts(case.closed_at),
            },
            "keys": [
                {
                    "fingerprint": k.fingerprint,
                    "type": k.key_type,
                    "revoked_at": ts(k.revoked_at),
                    "revoked_by": k.revoked_by,
                    "revoke_reason": k.revoke_reason,
                }
                for k in keys
            ],
            "hosts": [
                {
                    "host": t.host,
                    "account": t.account,
                    "path": t.path or t.pattern,
                    "had_access": t.had_access,
                    "keys_removed": t.removed,
                    "confirmed_at": ts(t.confirmed_at),
                    "confirmed_by_run": t.confirmed_by_run,
                    "open_issue": None if t.confirmed_at else (t.last_error or "not yet checked"),
                }
                for t in targets
            ],
            "audit_events": [
                {"seq": e.seq, "at": ts(e.at), "actor": e.actor, "action": e.action, "hash": e.hash}
                for e in events
            ],
            "logins_after_offboarding": [
                {
                    "at": ts(e.at),
                    "host": e.host,
                    "account": e.account,
                    "address": e.addr,
                    "fingerprint": e.fingerprint,
                    "session_end": ts(e.session_end),
                    "log_source": source_of_pos(e.pos),
                }
                for e in late_logins
            ],
        }


@report.command("offboarding")
@click.argument("username")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@pass_app
def report_offboarding(app: AppContext, username: str, fmt: str) -> None:
    """The evidence that USERNAME's access is gone: who asked, what was revoked, per-host proof."""
    data = offboarding_evidence(app, username)
    if fmt == "json":
        emit_json(data)
        return
    case, person = data["case"], data["person"]
    open_items = [h for h in data["hosts"] if h["confirmed_at"] is None]
    lines = [
        f"# Offboarding evidence: {person['full_name']} ({person['username']})",
        "",
        f"- Requested by: {case['requested_by']}",
        f"- Reason: {case['reason']}",
        f"- Started: {case['started_at']}",
        f"- Status: {case['status']}"
        + (f" (closed {case['closed_at']})" if case["closed_at"] else ""),
        f"- Managed files checked: {len(data['hosts'])}; still open: {len(open_items)}",
        "",
        "## Keys revoked",
        "",
        _md_table(
            data["keys"],
            [
                ("fingerprint", "Fingerprint"),
                ("type", "Type"),
                ("revoked_at", "Revoked at"),
                ("revoked_by", "By"),
                ("revoke_reason", "Reason"),
            ],
        ),
        "",
        "## Removal confirmed per host and account",
        "",
        "Each row was confirmed by reading the file back from the host after the change "
        "and checking that none of the fingerprints above remain.",
        "",
        _md_table(
            data["hosts"],
            [
                ("host", "Host"),
                ("account", "Account"),
                ("path", "File"),
                ("had_access", "Had access"),
                ("keys_removed", "Keys removed"),
                ("confirmed_at", "Confirmed at"),
                ("open_issue", "Open issue"),
            ],
        ),
        "",
        "## Still open",
        "",
        "\n".join(f"- {h['host']} {h['account']}: {h['open_issue']}" for h in open_items)
        or "Nothing: every managed file is confirmed.",
        "",
        "## Logins after the offboarding began",
        "",
        "Accepted logins with the person's keys that sshd logged at or after the case opened "
        "(a host that was unreachable kept the key until the agent reached it again).",
        "",
        _md_table(
            data["logins_after_offboarding"],
            [
                ("at", "At"),
                ("host", "Host"),
                ("account", "Account"),
                ("address", "From"),
                ("fingerprint", "Key"),
                ("session_end", "Session ended"),
                ("log_source", "Log"),
            ],
        )
        if data["logins_after_offboarding"]
        else "None seen in the collected logs.",
        "",
        "## Audit trail",
        "",
        _md_table(
            data["audit_events"],
            [
                ("seq", "#"),
                ("at", "At"),
                ("actor", "Actor"),
                ("action", "Action"),
                ("hash", "Chain hash"),
            ],
        ),
        "",
    ]
    click.echo("\n".join(lines))


# -- access review ------------------------------------------------------------


ACCESS_COLUMNS = [
    ("environment", "Env"),
    ("host", "Host"),
    ("account", "Account"),
    ("person", "Person"),
    ("role", "Role"),
    ("via", "Via"),
    ("granted_by", "Granted by"),
    ("granted_at", "Since"),
    ("until", "Until"),
    ("fingerprint", "Key"),
    ("attestation", "Attestation"),
    ("key_expires_at", "Key expires"),
    ("confirmed_on_host_at", "Confirmed on host"),
    ("last_login", "Last login"),
]


@report.command("access")
@click.option("--env", default=None, help="Only this environment.")
@click.option("--customer", default=None, help="Only this customer's hosts.")
@click.option("--format", "fmt", type=FORMATS, default="md", show_default=True)
@pass_app
def report_access(app: AppContext, env: str | None, customer: str | None, fmt: str) -> None:
    """Access review: who can reach which account on which host, how, since and until when."""
    from keyward.engine.access_review import access_rows

    rows = access_rows(app.registry(), app.inventory_dir(), env, customer)
    if fmt == "json":
        emit_json(rows)
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=[k for k, _ in ACCESS_COLUMNS] + ["reason"], extrasaction="ignore"
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        click.echo(buffer.getvalue().rstrip("\n"))
    else:
        now = app.registry().clock()
        scope = f"environment {env}" if env else "all environments"
        if customer:
            scope += f", customer {customer}"
        click.echo(
            f"# Access review ({scope})\n\nGenerated {ts(now)}. One row per person, "
            "role, host and account that keyward deploys a key to.\n"
        )
        click.echo(_md_table(rows, ACCESS_COLUMNS))


def register(cli: click.Group) -> None:
    cli.add_command(report)
