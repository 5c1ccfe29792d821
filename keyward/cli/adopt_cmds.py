"""``keyward adopt``: take over a fleet that already has keys (scan, report, claim, ignore,
remove, suggest). The runbook is docs/adoption.md."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from keyward.cli.common import key_policy, log_events
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json, printable, progress, short_ts, table, ts
from keyward.cli.rounds import EXIT_FAILED, surroundings

if TYPE_CHECKING:
    from keyward.adoption.report import KeyFinding, Removal, Report
    from keyward.adoption.suggest import Suggestions

pass_app = click.make_pass_decorator(AppContext)


@click.group()
def adopt() -> None:
    """Take over a fleet's existing keys: scan, report, claim or ignore, then switch over."""


@adopt.command("scan")
@click.option("--env", default=None, help="Only this environment.")
@click.option("--host", default=None, help="Only this host.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 2000),
    default=None,
    help="Hosts at once (default: [agent] concurrency).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@click.pass_context
def adopt_scan(
    ctx: click.Context,
    app: AppContext,
    env: str | None,
    host: str | None,
    concurrency: int | None,
    as_json: bool,
) -> None:
    """Read every managed authorized_keys file (read-only) and record each key found.

    Exit 0: every host read; 1: some host could not be read (the others were recorded).
    """
    from keyward.engine import adoption

    outcome = adoption.scan(
        surroundings(app), app.inventory_dir(), env, host, concurrency, progress
    )
    failed = [h for h in outcome.hosts if h.error is not None]
    if as_json:
        emit_json(
            {
                "run_id": outcome.run_id,
                "totals": outcome.counts,
                "read_seconds": outcome.read_seconds,
                "record_seconds": outcome.record_seconds,
                "hosts": [
                    {
                        "host": h.host,
                        "error": h.error,
                        "keys": len(h.sightings),
                        "unhonoured": len(h.unhonoured),
                        "files_not_read": [
                            {"account": a, "path": p, "error": e} for a, p, e in h.file_errors
                        ],
                    }
                    for h in outcome.hosts
                ],
            }
        )
    else:
        c = outcome.counts
        click.echo(
            f"scanned {c['hosts']} hosts: {c['lines']} key lines ({c['keys']} distinct keys), "
            f"{c['unhonoured']} lines sshd does not honour, {c['failed']} hosts failed, "
            f"{c['incomplete']} with files not read"
        )
        for h in outcome.hosts:
            if h.error:
                click.echo(f"  {h.host}: {printable(h.error)}")
            for account, path, error in h.file_errors:
                click.echo(f"  {h.host}: {account} {printable(path)}: not read: {printable(error)}")
        click.echo("next: keyward adopt report")
    ctx.exit(EXIT_FAILED if failed else 0)


def _places(finding: KeyFinding) -> str:
    hosts = {p.host for p in finding.places}
    accounts = sorted({p.account for p in finding.places})
    return f"{len(finding.places)} lines, {len(hosts)} hosts ({','.join(accounts)})"


def _finding_json(f: KeyFinding) -> dict[str, Any]:
    return {
        "fingerprint": f.fingerprint,
        "type": f.key_type,
        "bits": f.bits,
        "comment": f.comment,
        "kind": f.kind,
        "owner": f.owner,
        "owner_status": f.owner_status,
        "flags": list(f.flags),
        "weak_reason": f.weak_reason,
        "accounted": f.accounted,
        "decision": f.decision.decision if f.decision else None,
        "decision_reason": f.decision.reason if f.decision else None,
        "decided_by": f.decision.decided_by if f.decision else None,
        "first_seen": ts(f.first_seen),
        "last_seen": ts(f.last_seen),
        "last_login": ts(f.last_login),
        "places": [
            {
                "host": p.host,
                "account": p.account,
                "path": p.path,
                "line": p.lineno,
                "options": list(p.options),
            }
            for p in f.places
        ],
    }


def _removal_json(r: Removal) -> dict[str, Any]:
    return {
        "account": r.account,
        "path": r.path,
        "line": r.lineno,
        "fingerprint": r.fingerprint,
        "what": r.what,
        "accounted": r.accounted,
        "last_login": ts(r.last_login),
    }


def report_json(rep: Report) -> dict[str, Any]:
    return {
        "keys": [_finding_json(f) for f in rep.keys],
        "hosts": [
            {
                "host": h.host.host,
                "environment": h.host.environment,
                "mode": h.host.mode,
                "scanned_at": ts(h.host.scanned_at),
                "error": h.host.error,
                "files_not_read": [
                    {"account": a, "path": p, "error": e} for a, p, e in h.host.file_errors
                ],
                "exclusive_would_remove": [_removal_json(r) for r in h.removals],
                "unaccounted": h.unaccounted,
            }
            for h in rep.hosts
        ],
        "unhonoured": [
            {
                "host": u.where.host,
                "account": u.where.account,
                "path": u.where.path or u.where.pattern,
                "line": u.lineno,
                "reason": u.reason,
            }
            for u in rep.unhonoured
        ],
    }


CSV_COLUMNS = (
    "fingerprint",
    "type",
    "bits",
    "kind",
    "owner",
    "flags",
    "accounted",
    "decision",
    "decision_reason",
    "places",
    "first_seen",
    "last_seen",
    "last_login",
    "comment",
)


def _print_csv(rep: Report) -> None:
    import csv
    import sys

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for f in rep.keys:
        row = _finding_json(f)
        writer.writerow(
            [
                f.fingerprint,
                f.key_type,
                f.bits,
                f.kind,
                f.owner or "",
                " ".join(f.flags),
                "yes" if f.accounted else "no",
                row["decision"] or "",
                printable(row["decision_reason"] or ""),
                " ".join(f"{p.account}@{p.host}" for p in f.places),
                row["first_seen"],
                row["last_seen"],
                row["last_login"] or "",
                printable(f.comment),
            ]
        )


def _print_report(rep: Report) -> None:
    open_keys = sum(1 for f in rep.keys if not f.accounted)
    click.echo(f"keys: {len(rep.keys)} found, {open_keys} not accounted for")
    rows = []
    for f in rep.keys:
        who = f.owner or f.kind
        if f.decision is not None:
            state = f"{f.decision.decision}d: {printable(f.decision.reason)}"
        else:
            state = "ok" if f.accounted else "NOT ACCOUNTED FOR"
        rows.append(
            {
                "fingerprint": f.fingerprint,
                "type": f"{f.key_type} {f.bits}",
                "who": who,
                "flags": ",".join(f.flags) or "-",
                "where": _places(f),
                "login": short_ts(f.last_login) if f.last_login else "never",
                "comment": printable(f.comment)[:40],
                "state": state,
            }
        )
    table(
        rows,
        [
            ("fingerprint", "FINGERPRINT"),
            ("type", "TYPE"),
            ("who", "OWNER/KIND"),
            ("flags", "FINDINGS"),
            ("where", "WHERE"),
            ("login", "LAST LOGIN"),
            ("comment", "COMMENT"),
            ("state", "STATE"),
        ],
    )
    click.echo("")
    click.echo("switching to exclusive would remove:")
    for h in rep.hosts:
        scanned = short_ts(h.host.scanned_at)
        head = f"{h.host.host} ({h.host.environment}, {h.host.mode}, scanned {scanned})"
        if h.host.error:
            click.echo(f"{head}: scan failed: {printable(h.host.error)}")
            continue
        click.echo(f"{head}: {len(h.removals)} lines, {h.unaccounted} not accounted for")
        for account, path, error in h.host.file_errors:
            click.echo(f"  ! {account} {printable(path)}: not read: {printable(error)}")
        for r in h.removals:
            login = f"last login {short_ts(r.last_login)}" if r.last_login else "never logged in"
            mark = "" if r.accounted else "  NOT ACCOUNTED FOR"
            click.echo(
                f"  - {r.account} {printable(r.path)}:{r.lineno} "
                f"{r.fingerprint or '(no key)'} {printable(r.what)}  {login}{mark}"
            )


@adopt.command("report")
@click.option("--env", default=None, help="Only this environment's hosts.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--csv", "as_csv", is_flag=True, help="One CSV row per key.")
@pass_app
def adopt_report(app: AppContext, env: str | None, as_json: bool, as_csv: bool) -> None:
    """Keys found by adopt scan, grouped by fingerprint, and what exclusive mode would remove."""
    from keyward.engine import adoption
    from keyward.errors import UsageError

    if as_json and as_csv:
        raise UsageError("give either --json or --csv, not both")
    rep = adoption.report(surroundings(app), app.inventory_dir(), env)
    if as_json:
        emit_json(report_json(rep))
    elif as_csv:
        _print_csv(rep)
    else:
        _print_report(rep)


@adopt.command("claim")
@click.argument("fingerprint")
@click.argument("username")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def adopt_claim(app: AppContext, fingerprint: str, username: str, as_json: bool) -> None:
    """Register the scanned key FINGERPRINT as USERNAME's (attestation none until proven)."""
    from keyward.registry.adoption import claim

    policy = key_policy(app)
    registry = app.registry()
    expires_at = registry.clock() + timedelta(days=policy.max_key_age_days)
    with registry.write(app.actor) as tx:
        key, places = claim(tx, fingerprint, username, policy, expires_at)
    log_events(tx)
    if as_json:
        emit_json(
            {
                "fingerprint": key.fingerprint,
                "owner": username,
                "attestation": "none",
                "expires_at": ts(expires_at),
                "places": places["count"],
            }
        )
        return
    click.echo(
        f"claimed {key.fingerprint} for {username} (attestation none, expires "
        f"{short_ts(expires_at)} UTC; found in {places['count']} places); "
        f"raise it with 'keyward key attest' or a proof"
    )


def _decide(app: AppContext, fingerprint: str, decision: str, reason: str) -> None:
    from keyward.registry.adoption import decide

    with app.registry().write(app.actor) as tx:
        row = decide(tx, fingerprint, decision, reason)
    log_events(tx)
    verb = "ignored" if decision == "ignore" else "confirmed for removal"
    click.echo(f"{row.fingerprint} {verb}")


@adopt.command("ignore")
@click.argument("fingerprint")
@click.option("--reason", required=True, help="Why nobody claims it (recorded).")
@pass_app
def adopt_ignore(app: AppContext, fingerprint: str, reason: str) -> None:
    """Account for an unclaimed key without an owner (it goes at the switch-over)."""
    _decide(app, fingerprint, "ignore", reason)


@adopt.command("remove")
@click.argument("fingerprint")
@click.option("--reason", required=True, help="Why it must go (recorded).")
@pass_app
def adopt_remove(app: AppContext, fingerprint: str, reason: str) -> None:
    """Confirm an unclaimed key for removal at the switch-over."""
    _decide(app, fingerprint, "remove", reason)


def suggestions_json(s: Suggestions) -> dict[str, Any]:
    return {
        "grants": [
            {
                "person": g.person,
                "role": g.role,
                "covers": [{"host": h, "account": a} for h, a in g.places],
                "also_opens": g.beyond,
            }
            for g in s.grants
        ],
        "uncovered": [
            {"person": u.person, "host": u.host, "account": u.account, "why": u.why}
            for u in s.uncovered
        ],
    }


@adopt.command("suggest")
@click.option("--apply", "do_apply", is_flag=True, help="Grant every suggested role now.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def adopt_suggest(app: AppContext, do_apply: bool, as_json: bool) -> None:
    """Role grants that keep claimed people where their keys are today; --apply grants them.

    Every grant --apply makes carries the reason "adopted from host state".
    """
    from keyward.engine import adoption

    around = surroundings(app)
    found = adoption.suggestions(around, app.inventory_dir())
    granted = 0
    if do_apply and found.grants:
        granted = adoption.apply(around, found.grants)
    if as_json:
        emit_json({**suggestions_json(found), "applied": granted})
        return
    if not found.grants:
        click.echo("no grants to suggest")
    for g in found.grants:
        where = ", ".join(f"{a}@{h}" for h, a in g.places)
        extra = f" (also opens {g.beyond} other places)" if g.beyond else ""
        verb = "granted" if granted else "grant"
        click.echo(f"{verb} role {g.role} to {g.person}: keeps {where}{extra}")
    for u in found.uncovered:
        click.echo(f"uncovered: {u.person} {u.account}@{u.host}: {printable(u.why)}")
    if found.grants and not granted:
        click.echo("review, then: keyward adopt suggest --apply")


def register(cli: click.Group) -> None:
    cli.add_command(adopt)
