"""The API's login log and alerts: ``keyward logins`` and ``keyward alerts`` over HTTP.

- ``logins``: administrators and auditors read everyone's; every other person reads
  their own (asking for nobody in particular reads their own);
- ``alerts``: administrators and auditors read them; administrators clear one (and the
  failure mode it started), recorded as the proven caller.

Every answer is the JSON the CLI prints (``keyward.registry.login_views``).
"""

from __future__ import annotations

from keyward.alert_kinds import ALERT_KINDS
from keyward.errors import UsageError
from keyward.registry import login_views
from keyward.server.app import Call, Handler, Result, _field, _log_changes
from keyward.server.authz import Forbidden
from keyward.server.routes_reports import _customer_hosts, _reader
from keyward.timeparse import start_of_day


def _limit(text: str | None) -> int:
    if text is None:
        return 1000
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise UsageError("limit must be between 1 and 1000000")
    return int(text)


def logins(call: Call) -> Result:
    caller, query = call.caller, call.query
    username = query.get("person") or None
    if not (caller.admin or caller.auditor):
        if username not in (None, caller.username):
            raise Forbidden("only administrators and auditors may read other people's logins")
        username = caller.username
    since = query.get("since")
    customer = query.get("customer")
    show_all = bool(query.get("all"))
    inventory = call.state.inventory
    with call.state.registry.read() as session:
        rows = login_views.login_rows(
            session,
            username=username,
            host=query.get("host") or None,
            since=start_of_day(since, "--since") if since else None,
            failed=bool(query.get("failed")),
            hosts=_customer_hosts(call.state, customer) if customer else None,
            limit=_limit(query.get("limit")),
            show_all=show_all,
            agent_keys=(login_views.agent_keys(inventory) if inventory and not show_all else set()),
        )
    return 200, rows


def alerts(call: Call) -> Result:
    _reader(call.caller, "alerts")
    kind = call.query.get("kind") or None
    if kind is not None and kind not in ALERT_KINDS:
        raise UsageError(f"no alert kind {kind!r}")
    with call.state.registry.read() as session:
        rows = login_views.alert_rows(
            session,
            only_open=bool(call.query.get("open")),
            kind=kind,
            username=call.query.get("person") or None,
            host=call.query.get("host") or None,
        )
    return 200, rows


def alert_clear(call: Call) -> Result:
    if not call.caller.admin:
        raise Forbidden("only administrators may clear alerts")
    text = call.params["id"]
    if not (text.isdigit() and len(text) <= 18):
        raise UsageError("an alert id is a number")
    reason = _field(call.json(), "reason", str)
    with call.state.registry.write(call.caller.username) as tx:
        result = login_views.clear_alert(tx, int(text), reason)
    _log_changes(tx)
    return 200, result


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/v1/logins", logins),
    ("GET", "/api/v1/alerts", alerts),
    ("POST", "/api/v1/alerts/{id}/clear", alert_clear),
)
