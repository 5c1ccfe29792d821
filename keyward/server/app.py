"""The HTTP API: a Starlette application over the registry.

Each request is authenticated (``identity``) and authorized (``authz``) before its
handler runs; the handlers call the same registry operations as the CLI
(``keyward.registry.lifecycle``), in a write transaction whose actor is the proven
username, so every audit event names who really acted.

Errors are one-line JSON objects (``{"error": "..."}``) with the status the docs give:
401 for credentials that prove no one, 403 for a proven caller asking too much, 404,
409 for a decision on a request already decided, 400 for bad input, 413 for a body
over 64 KiB, 503 while the registry cannot be reached.  An unexpected failure is logged
on the server and answered with a plain 500, never a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import select
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from keyward.auth import tokens
from keyward.auth.browser import BrowserCodes, CodeRefused, TooManyCodes
from keyward.auth.ended import EndedSessions
from keyward.auth.signing import AuthError
from keyward.clock import Clock
from keyward.errors import KeywardError, RegistryError, RegistryUnavailable, UsageError
from keyward.inventory.model import Inventory
from keyward.inventory.server import ServerSettings
from keyward.logs import get_logger
from keyward.registry import lifecycle, ops
from keyward.registry.access_rows import list_requests, request_json
from keyward.registry.change_log import log_changes
from keyward.registry.models import AccessRequest, Person, Role
from keyward.registry.store import Registry, WriteTx
from keyward.server.authz import Caller, Forbidden, caller_for
from keyward.server.body import BodyTooLarge, read_body
from keyward.server.identity import RequestFacts, Verifier, authenticate
from keyward.server.metrics import CountRequests, ServerMetrics

if TYPE_CHECKING:
    from keyward.notify.server_side import ServerNotifier

MAX_BODY = 64 * 1024


class NotFound(KeywardError):
    """The thing named does not exist (404)."""


class Conflict(KeywardError):
    """The thing named is not in a state that allows this (409)."""


_STATUS: tuple[tuple[type[KeywardError], int], ...] = (
    (AuthError, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (BodyTooLarge, 413),
    (TooManyCodes, 429),
    (RegistryUnavailable, 503),
)


def status_for(exc: KeywardError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 400


@dataclass(frozen=True)
class ServerState:
    """Everything the handlers use, built once by ``keyward server``."""

    registry: Registry
    settings: ServerSettings
    verifier: Verifier
    clock: Clock
    inventory: Inventory | None
    """For the same environment check as ``keyward access request``; None without one."""
    codes: BrowserCodes = field(default_factory=BrowserCodes)
    """Browser sign-in codes waiting for ``keyward auth browser``."""
    ended: EndedSessions = field(default_factory=EndedSessions)
    """Web sessions signed out of before their expiry."""
    inventory_dir: Path | None = None
    """For the web page's access review (``keyward report access``); None without one."""
    notifier: ServerNotifier | None = None
    """Tells approvers and requesters (``[notify]``), in the background; None: nobody."""
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    """Prometheus collectors (``--metrics-listen``)."""
    proxies: frozenset[str] = frozenset()
    """``--trusted-proxy``: peers whose X-Forwarded-For names the client (``clients``)."""


@dataclass(frozen=True)
class Call:
    """One authenticated request, as a handler sees it."""

    state: ServerState
    caller: Caller
    facts: RequestFacts
    params: dict[str, str]
    query: dict[str, str]
    now: datetime

    def json(self) -> dict[str, Any]:
        if not self.facts.body:
            return {}
        try:
            value = json.loads(self.facts.body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise UsageError("the request body is not JSON") from None
        if not isinstance(value, dict):
            raise UsageError("the request body must be a JSON object")
        return value


Result = tuple[int, Any]
Handler = Callable[[Call], Result]


def _field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise UsageError(f"field {name!r} must be a {kind.__name__}")
    return value


def _log_changes(tx: WriteTx) -> None:
    log_changes(tx, component="server")


# -- handlers ---------------------------------------------------------------------


def whoami(call: Call) -> Result:
    caller = call.caller
    expires = caller.identity.session_expires_at
    return 200, {
        "username": caller.username,
        "fingerprint": caller.identity.fingerprint,
        "via": caller.identity.via,
        "roles": sorted(caller.roles),
        "admin": caller.admin,
        "auditor": caller.auditor,
        "approves": sorted(caller.approves),
        "session_expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ") if expires else None,
    }


def login(call: Call) -> Result:
    identity = call.caller.identity
    if identity.via != "signature":
        raise Forbidden("a session cannot start another one; sign in with your key")
    lifetime = timedelta(hours=call.state.settings.session_hours)
    token = tokens.issue(
        call.state.verifier.secret, identity.username, identity.fingerprint, call.now, lifetime
    )
    get_logger(component="server").info(
        "session_start",
        person=identity.username,
        fingerprint=identity.fingerprint,
        hours=call.state.settings.session_hours,
    )
    call.state.metrics.session_started(token, call.now + lifetime)
    return 200, {
        "token": token,
        "username": identity.username,
        "fingerprint": identity.fingerprint,
        "expires_at": (call.now + lifetime).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def browser_confirm(call: Call) -> Result:
    """``keyward auth browser CODE``: the signed-in terminal vouches for a browser's code."""
    identity = call.caller.identity
    if identity.via != "signature":
        raise Forbidden("confirm a browser sign-in with a request signed by your key")
    code = _field(call.json(), "code", str)
    try:
        call.state.codes.confirm(code, identity.username, identity.fingerprint, call.now)
    except CodeRefused as exc:
        raise UsageError(exc.message) from None
    get_logger(component="server").info(
        "browser_code_confirmed", person=identity.username, fingerprint=identity.fingerprint
    )
    return 200, {"username": identity.username, "fingerprint": identity.fingerprint}


def access_list(call: Call) -> Result:
    only_open = call.query.get("open", "") in ("1", "true", "yes")
    mine = None if call.caller.reads_everything else call.caller.username
    with call.state.registry.read() as session:
        return 200, list_requests(session, call.now, only_open, person=mine)


def access_request(call: Call) -> Result:
    body = call.json()
    role = _field(body, "role", str)
    environment = _field(body, "environment", str)
    seconds = _field(body, "duration_seconds", int)
    reason = _field(body, "reason", str)
    return 201, file_request(call.state, call.caller, role, environment, seconds, reason)


def file_request(
    state: ServerState, caller: Caller, role: str, environment: str, seconds: int, reason: str
) -> dict[str, Any]:
    """A new access request of ``caller``: the API's and the web page's one path."""
    if not 0 < seconds <= lifecycle.MAX_REQUEST.total_seconds():  # before timedelta can overflow
        raise UsageError("duration_seconds must be between 1 minute and 7 days")
    if state.inventory is not None:
        state.inventory.environment(environment)
    with state.registry.write(caller.username) as tx:
        request = lifecycle.request_access(
            tx, role, environment, timedelta(seconds=seconds), reason
        )
        result = request_json(
            request,
            ops.find_person(tx.session, caller.username),
            ops.find_role(tx.session, role),
        )
    _log_changes(tx)
    if state.notifier is not None:
        state.notifier.request_filed(int(result["id"]))
    return result


def _decide(call: Call, approve: bool) -> Result:
    note = _field(call.json(), "note", str, "")
    return 200, decide(call.state, call.caller, call.params["id"], approve, note)


def decide(
    state: ServerState, caller: Caller, text: str, approve: bool, note: str
) -> dict[str, Any]:
    """Approve or deny request ``text`` as ``caller``: the API's and the web page's one path,
    so the two-person rule and the approvers of the role hold for both."""
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise NotFound(f"no access request {text[:20]!r}")
    request_id = int(text)
    with state.registry.read() as session:
        request = session.get(AccessRequest, request_id)
        if request is None:
            raise NotFound(f"no access request {request_id}")
        requester = session.get(Person, request.person_id)
        role = session.get(Role, request.role_id)
        assert requester is not None and role is not None
    # The two-person rule first: even an approver of the role cannot decide their own.
    if requester.username == caller.username:
        raise Forbidden("a request must be approved by someone other than the requester")
    if not caller.may_decide(role.name):
        raise Forbidden(
            f"{caller.username!r} may not decide requests for role {role.name!r} "
            "(see [server.approvers] in keyward.toml)"
        )
    if request.status != "pending":
        raise Conflict(f"access request {request_id} is {request.status}, not pending")
    with state.registry.write(caller.username) as tx:
        try:
            decided = lifecycle.decide_access(tx, request_id, approve=approve, note=note)
        except RegistryError as exc:
            if "not pending" in exc.message:  # decided by someone else meanwhile
                raise Conflict(exc.message) from None
            raise
        result = request_json(decided, requester, role)
    _log_changes(tx)
    if state.notifier is not None:
        state.notifier.request_decided(request_id)
    return result


def access_approve(call: Call) -> Result:
    return _decide(call, approve=True)


def access_deny(call: Call) -> Result:
    return _decide(call, approve=False)


def people(call: Call) -> Result:
    if not (call.caller.admin or call.caller.auditor):
        raise Forbidden("only administrators and auditors may list people")
    from keyward.registry.views import person_json

    with call.state.registry.read() as session:
        rows = session.exec(select(Person).order_by(Person.username)).all()
        return 200, [person_json(p) for p in rows]


# -- plumbing ---------------------------------------------------------------------


def _serve(
    state: ServerState,
    handler: Handler,
    facts: RequestFacts,
    params: dict[str, str],
    query: dict[str, str],
    who: list[str],
) -> Result:
    """Authenticate, authorize and run ``handler`` (in a worker thread: the ORM blocks).

    ``who`` receives the proven username, for the request's log line.
    """
    now = state.clock()
    with state.registry.read() as session:
        identity = authenticate(session, facts, now, state.verifier)
        if identity is None:
            raise AuthError(
                "sign the request with your registered key, or run 'keyward auth login'"
            )
        caller = caller_for(session, identity, state.settings, now)
    who.append(caller.username)
    call = Call(state, caller, facts, params, query, now)
    return handler(call)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def endpoint(state: ServerState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        started = time.perf_counter()
        # The path exactly as sent (not percent-decoded): that is what the client signed.
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        path_query = raw_path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        log = get_logger(component="server")
        who: list[str] = []
        try:
            facts = RequestFacts(
                method=request.method,
                path_query=path_query,
                body=await read_body(request, MAX_BODY),
                headers={k.lower(): v for k, v in request.headers.items()},
            )
            params = {k: str(v) for k, v in request.path_params.items()}
            status, payload = await run_in_threadpool(
                _serve, state, handler, facts, params, dict(request.query_params), who
            )
            response: Response = JSONResponse(payload, status_code=status)
        except KeywardError as exc:
            status = status_for(exc)
            response = _error(status, exc.message)
            if status == 401:
                log.warning(
                    "api_refused", method=request.method, path=request.url.path, reason=exc.message
                )
                state.metrics.signin_failed(exc.message)
        except Exception as exc:
            status = 500
            log.error(
                "api_internal_error",
                method=request.method,
                path=request.url.path,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=True,
            )
            response = _error(500, "internal error (see the server's log)")
        log.info(
            "api_request",
            method=request.method,
            path=request.url.path,
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 1),
            user=who[0] if who else None,
        )
        return response

    return run


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/v1/whoami", whoami),
    ("POST", "/api/v1/auth/login", login),
    ("POST", "/api/v1/auth/browser", browser_confirm),
    ("GET", "/api/v1/access-requests", access_list),
    ("POST", "/api/v1/access-requests", access_request),
    ("POST", "/api/v1/access-requests/{id}/approve", access_approve),
    ("POST", "/api/v1/access-requests/{id}/deny", access_deny),
    ("GET", "/api/v1/people", people),
)

# The everyday commands' routes live in their own modules (imported here, after the
# names they use are defined): people, keys and roles; reports, audit and offboarding;
# logins and alerts.
from keyward.server import routes_logins, routes_people, routes_reports  # noqa: E402

ROUTES += routes_people.ROUTES + routes_reports.ROUTES + routes_logins.ROUTES


async def _http_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, str(exc.detail))
    return _error(500, "internal error (see the server's log)")


def build_app(state: ServerState) -> Starlette:
    """The application serving ``ROUTES`` (the endpoints of ``authz.MATRIX``)."""
    from keyward.server import scim, web

    routes = [
        Route(path, endpoint(state, handler), methods=[method]) for method, path, handler in ROUTES
    ]
    routes += web.routes(state)
    routes += scim.routes(state)  # /scim/v2, when keyward.toml has [scim]
    state.metrics.pending_codes.set_function(lambda: float(len(state.codes)))

    def route_of(scope: MutableMapping[str, Any]) -> str:
        for route in routes:
            if route.matches(scope)[0] != Match.NONE:
                return route.path
        return "other"

    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        middleware=[Middleware(CountRequests, metrics=state.metrics, route_of=route_of)],
    )
