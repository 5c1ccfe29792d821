"""Reports an auditor can read without knowing keyward: offboarding evidence and access review."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.context import AppContext
from keyward.cli.output import emit_json

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


def _md_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    out = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        out.append("| " + " | ".join(_md_escape(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(out)


# -- offboarding evidence -----------------------------------------------------


def offboarding_evidence(app: AppContext, username: str) -> dict[str, Any]:
    """``keyward.registry.views.offboarding_evidence``, from the server when one is set."""
    api = app.api()
    if api is not None:
        from urllib.parse import quote

        data: dict[str, Any] = api.call(
            "GET", f"/api/v1/reports/offboarding/{quote(username, safe='')}"
        )
        return data
    from keyward.registry import views

    with app.registry().read() as session:
        return views.offboarding_evidence(session, username)


@report.command("offboarding")
@click.argument("username")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@pass_app
def report_offboarding(app: AppContext, username: str, fmt: str) -> None:
    """The evidence that USERNAME's access is gone: who asked, what was revoked, per-host proof."""
    from keyward.registry import views

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
            views.EVIDENCE_KEY_COLUMNS,
        ),
        "",
        "## Removal confirmed per host and account",
        "",
        "Each row was confirmed by reading the file back from the host after the change "
        "and checking that none of the fingerprints above remain.",
        "",
        _md_table(
            data["hosts"],
            views.EVIDENCE_TARGET_COLUMNS,
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
            views.EVIDENCE_LOGIN_COLUMNS,
        )
        if data["logins_after_offboarding"]
        else "None seen in the collected logs.",
        "",
        "## Audit trail",
        "",
        _md_table(
            data["audit_events"],
            views.EVIDENCE_AUDIT_COLUMNS,
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
    """Access review: who can reach which account on which host, how, since and until when.

    The Markdown report ends with the direct database writes: audit events the CLI wrote
    into the registry itself (actor ``local:<unix user>``) rather than through keyward
    server.  Through a server, people other than administrators and auditors see only
    their own rows.
    """
    review = access_review(app, env, customer)
    rows = review["rows"]
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
        scope = f"environment {env}" if env else "all environments"
        if customer:
            scope += f", customer {customer}"
        click.echo(
            f"# Access review ({scope})\n\nGenerated {review['generated_at']}. One row per "
            "person, role, host and account that keyward deploys a key to.\n"
        )
        click.echo(_md_table(rows, ACCESS_COLUMNS))
        direct = review["direct_database_writes"]
        if direct is not None:
            click.echo(
                "\n## Direct database writes\n\nAudit events written into the registry "
                "directly by the CLI, not through keyward server (bootstrap or break-glass); "
                "the actor is the unix user, with any name it claimed.\n"
            )
            click.echo(_md_table(direct, DIRECT_COLUMNS) if direct else "None.")


DIRECT_COLUMNS = [
    ("seq", "#"),
    ("at", "At"),
    ("actor", "Actor"),
    ("action", "Action"),
    ("subject", "Subject"),
]


def access_review(app: AppContext, env: str | None, customer: str | None) -> dict[str, Any]:
    """Rows, generation time and direct database writes (None: not the caller's to see)."""
    api = app.api()
    if api is not None:
        from urllib.parse import urlencode

        wanted = urlencode({k: v for k, v in (("env", env), ("customer", customer)) if v})
        review: dict[str, Any] = api.call(
            "GET", "/api/v1/reports/access" + (f"?{wanted}" if wanted else "")
        )
        return review
    from keyward.engine.access_review import access_rows
    from keyward.registry import views

    registry = app.registry()
    rows = access_rows(registry, app.inventory_dir(), env, customer)
    with registry.read() as session:
        direct = views.direct_writes(session)
    if env or customer:
        direct = views.in_scope(direct, rows)
    return {
        "generated_at": views.ts(registry.clock()),
        "rows": rows,
        "direct_database_writes": direct,
    }


def register(cli: click.Group) -> None:
    cli.add_command(report)
