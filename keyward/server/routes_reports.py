"""The API's reads for administrators and auditors, and offboarding.

- ``status``, ``audit log``, ``audit verify``, ``offboard status`` and ``report
  offboarding``: administrators and auditors (read-only);
- ``report access``: everyone; administrators and auditors see every row and the
  direct database writes, others only their own rows (as on the web page);
- ``offboard``: administrators, never themselves.  The server **records** the
  offboarding (keys revoked, roles ended, a case over every managed file) in one
  transaction; it does not connect to hosts itself.  The daemon pushes the change
  within a second, or the next ``keyward reconcile`` does, and either confirms the
  case by reading each file back; ``offboard status`` shows where it stands.

Every answer is the JSON the CLI prints (``keyward.registry.views``).
"""

from __future__ import annotations

from typing import Any

from keyward.errors import UsageError
from keyward.registry import lifecycle, views
from keyward.server.app import Call, Handler, Result, ServerState, _field, _log_changes
from keyward.server.authz import Caller, Forbidden
from keyward.timeparse import start_of_day


def _reader(caller: Caller, what: str) -> None:
    if not (caller.admin or caller.auditor):
        raise Forbidden(f"only administrators and auditors may read {what}")


def status(call: Call) -> Result:
    _reader(call.caller, "the fleet's status")
    with call.state.registry.read() as session:
        return 200, views.status_view(session, call.now)


def _customer_hosts(state: ServerState, customer: str) -> set[str]:
    if state.inventory is None:
        raise UsageError("the server has no inventory: no customers to filter on")
    return {h.name for h in state.inventory.hosts() if h.customer == customer}


def audit_events(call: Call) -> Result:
    _reader(call.caller, "the audit trail")
    since = call.query.get("since")
    customer = call.query.get("customer")
    with call.state.registry.read() as session:
        rows = views.audit_rows(
            session,
            start_of_day(since, "--since") if since else None,
            call.query.get("person") or None,
            call.query.get("action") or None,
        )
    if customer:
        hosts = _customer_hosts(call.state, customer)
        rows = [
            r
            for r in rows
            if (r["subject_kind"] == "host" and r["subject"] in hosts)
            or r["details"].get("customer") == customer
        ]
    return 200, rows


def audit_verify(call: Call) -> Result:
    """The chain checked on the server, against itself (signed checkpoints live where
    ``keyward audit checkpoint`` runs, outside the registry and this server)."""
    _reader(call.caller, "the audit trail")
    from keyward.registry.verify import verify_session

    with call.state.registry.read() as session:
        verified = verify_session(session)
    if verified is None:
        raise UsageError("the registry has no audit chain")
    head_seq, head_hash, problem = verified
    return 200, {
        "ok": problem is None,
        "events": head_seq,
        "head": head_hash,
        "first_bad_event": problem.seq if problem else None,
        "problem": str(problem) if problem else None,
        "checkpoints_checked": 0,
        "newest_checkpoint": None,
        "checkpoint_written": None,
        "checkpoint_key": None,
    }


def report_access(call: Call) -> Result:
    from keyward.engine.access_review import access_rows

    caller = call.caller
    everyone = caller.admin or caller.auditor
    state = call.state
    rows: list[dict[str, Any]] = []
    if state.inventory_dir is not None:
        rows = access_rows(
            state.registry,
            state.inventory_dir,
            call.query.get("env") or None,
            call.query.get("customer") or None,
        )
    if not everyone:
        rows = [r for r in rows if r.get("person") == caller.username]
    direct: list[dict[str, Any]] | None = None
    if everyone:
        with state.registry.read() as session:
            direct = views.direct_writes(session)
        if call.query.get("env") or call.query.get("customer"):
            direct = views.in_scope(direct, rows)
    return 200, {
        "generated_at": views.ts(call.now),
        "rows": rows,
        "direct_database_writes": direct,
    }


def report_offboarding(call: Call) -> Result:
    _reader(call.caller, "offboarding evidence")
    with call.state.registry.read() as session:
        return 200, views.offboarding_evidence(session, call.params["username"])


def offboard_status(call: Call) -> Result:
    _reader(call.caller, "offboarding cases")
    with call.state.registry.read() as session:
        return 200, views.offboarding_case(session, call.params["username"])


def offboard(call: Call) -> Result:
    if not call.caller.admin:
        raise Forbidden("only administrators may offboard people")
    body = call.json()
    username, reason = _field(body, "username", str), _field(body, "reason", str)
    if username == call.caller.username:
        raise Forbidden("nobody offboards themselves: ask another administrator")
    state = call.state
    if state.inventory_dir is None:
        raise UsageError("the server has no inventory: it cannot list the files to confirm")
    from keyward.engine.inputs import load_inputs
    from keyward.engine.offboarding import case_targets

    before = load_inputs(state.registry, state.clock, state.inventory_dir, None, None)
    targets = case_targets(before, username)
    with state.registry.write(call.caller.username) as tx:
        lifecycle.offboard(tx, username, reason, targets)
    _log_changes(tx)
    with state.registry.read() as session:
        return 200, views.offboarding_case(session, username)


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/v1/status", status),
    ("GET", "/api/v1/audit/events", audit_events),
    ("GET", "/api/v1/audit/verify", audit_verify),
    ("GET", "/api/v1/reports/access", report_access),
    ("GET", "/api/v1/reports/offboarding/{username}", report_offboarding),
    ("POST", "/api/v1/offboard", offboard),
    ("GET", "/api/v1/offboard/{username}", offboard_status),
)
