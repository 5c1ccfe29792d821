"""The web page: sign in with a terminal code, see one's access, request, approve, review.

Every page is rendered on the server (``keyward.server.pages``); no JavaScript.  A
browser signs in without a password (``keyward.auth.browser``): the sign-in page shows a
one-time code bound to that browser by a random pre-session cookie, the person confirms
it with ``keyward auth browser CODE`` (signed with their key), and the page's next
refresh trades it for a session cookie.

The session cookie is a session token (``keyward.auth.tokens``) with a short lifetime,
HttpOnly, SameSite=Strict, Secure when served over TLS, limited to ``/web``.  Every
request re-checks the key and the person in the registry exactly as the API does
(``identity.authenticate_token``), so revoking the key or offboarding the person ends
the browser's session at its next click.  Every form carries a CSRF token bound to the
session (an HMAC of the session token with the server's secret), checked on every POST
before anything else is done.

Actions go through the same functions as the API (``app.file_request``, ``app.decide``),
so the validation and the two-person rule are the same whichever way one comes in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from keyward.auth import browser, tokens
from keyward.auth.signing import AuthError
from keyward.clock import as_utc
from keyward.errors import KeywardError, UsageError
from keyward.logs import get_logger
from keyward.registry.access_rows import list_requests
from keyward.registry.models import Person, SshKey
from keyward.server import app as api
from keyward.server.authz import Caller, Forbidden, caller_for
from keyward.server.body import read_body
from keyward.server.clients import client_address
from keyward.server.identity import authenticate_token
from keyward.server.pages import csrf_field, esc, layout, table

SESSION_COOKIE = "kw_session"
PRE_COOKIE = "kw_pre"
LIFETIME = timedelta(hours=1)
"""A browser session is short: one hour, then a new code."""
REFRESH_SECONDS = 2

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class WebRequest:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    form: dict[str, str]
    cookies: dict[str, str]
    secure: bool
    client: str = ""
    """The client's address (``keyward.server.clients``), for the sign-in codes' limit."""


@dataclass
class Page:
    """What a handler answers: HTML (or a redirect) and cookies to set or clear."""

    status: int = 200
    html: str = ""
    redirect: str | None = None
    cookies: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (value, max_age)


@dataclass(frozen=True)
class Visit:
    """A signed-in page view."""

    state: api.ServerState
    request: WebRequest
    caller: Caller
    csrf: str
    now: datetime

    def page(self, title: str, body: str, status: int = 200) -> Page:
        return Page(status, layout(title, body, user=self.caller.username, csrf=self.csrf))


def csrf_for(secret: bytes, session_token: str) -> str:
    mac = hmac.new(secret, b"csrf\0" + session_token.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


# -- sign-in -------------------------------------------------------------------------


def sign_in(state: api.ServerState, request: WebRequest, now: datetime) -> Page:
    """Not signed in: redeem a confirmed code, or show this browser's code."""
    page = Page()
    pre = request.cookies.get(PRE_COOKIE, "")
    if len(pre) != 43:  # 32 random bytes, base64url
        pre = secrets.token_urlsafe(32)
        page.cookies[PRE_COOKIE] = (pre, int(browser.LIFETIME.total_seconds()) * 2)
    confirmed = state.codes.redeem(pre, now)
    if confirmed is not None:
        token = tokens.issue(
            state.verifier.secret, confirmed.username, confirmed.fingerprint, now, LIFETIME
        )
        with state.registry.read() as session:  # the key may have been revoked meanwhile
            authenticate_token(session, token, now, state.verifier, via="browser")
        get_logger(component="server").info(
            "session_start",
            person=confirmed.username,
            fingerprint=confirmed.fingerprint,
            via="browser",
        )
        state.metrics.session_started(token, now + LIFETIME)
        page.cookies[SESSION_COOKIE] = (token, int(LIFETIME.total_seconds()))
        page.cookies[PRE_COOKIE] = ("", 0)
        page.redirect = "/web/"
        return page
    code, expires = state.codes.code_for(pre, now, request.client)
    shown = browser.display(code)
    page.html = layout(
        "Sign in",
        "<p>Run this in your terminal, where your registered key is:</p>"
        f'<p><kbd class="code" id="code">keyward auth browser {esc(shown)}</kbd></p>'
        f"<p>This page continues by itself once you have. The code works once, for this "
        f"browser only, until {esc(expires.strftime('%H:%M:%S UTC'))}.</p>"
        '<p><a id="continue" href="/web/">Continue</a></p>',
        refresh=REFRESH_SECONDS,
    )
    return page


def signed_in(state: api.ServerState, request: WebRequest, now: datetime) -> Visit | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    if state.ended.ended(token):
        raise AuthError("signed out")
    with state.registry.read() as session:
        identity = authenticate_token(session, token, now, state.verifier, via="browser")
        caller = caller_for(session, identity, state.settings, now)
    return Visit(state, request, caller, csrf_for(state.verifier.secret, token), now)


# -- pages ---------------------------------------------------------------------------

REQUEST_COLUMNS = (
    ("id", "#"),
    ("person", "Person"),
    ("role", "Role"),
    ("environment", "Env"),
    ("duration", "For"),
    ("reason", "Reason"),
    ("requested_at", "Requested"),
    ("status", "Status"),
    ("decided_by", "Decided by"),
    ("until", "Until"),
)


def _hours(row: dict[str, Any]) -> dict[str, Any]:
    seconds = int(row["duration_seconds"])
    text = f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m"
    return {**row, "duration": text}


def home(visit: Visit) -> Page:
    caller = visit.caller
    with visit.state.registry.read() as session:
        keys = session.exec(
            select(SshKey)
            .join(Person, col(Person.id) == col(SshKey.person_id))
            .where(Person.username == caller.username)
            .order_by(col(SshKey.id))
        ).all()
        key_rows = [
            {
                "fingerprint": k.fingerprint,
                "type": k.key_type,
                "attestation": k.attestation,
                "expires": as_utc(k.expires_at).strftime("%Y-%m-%d"),
                "state": "revoked" if k.revoked_at else "active",
                "this": "this session" if k.fingerprint == caller.identity.fingerprint else "",
            }
            for k in keys
        ]
        requests = list_requests(session, visit.now, False, person=caller.username)
        person = session.exec(select(Person).where(Person.username == caller.username)).one()
    body = (
        f"<p><span id='full-name'>{esc(person.full_name)}</span>. "
        f"Roles: {esc(', '.join(sorted(caller.roles)) or '-')}. "
        f"Approves requests for: {esc(', '.join(sorted(caller.approves)) or '-')}."
        f"{' Administrator.' if caller.admin else ''}{' Auditor.' if caller.auditor else ''}</p>"
        "<h2>My keys</h2>"
        + table(
            key_rows,
            (
                ("fingerprint", "Fingerprint"),
                ("type", "Type"),
                ("attestation", "Attestation"),
                ("expires", "Expires"),
                ("state", "State"),
                ("this", ""),
            ),
        )
        + "<h2>My access requests</h2>"
        + table([_hours(r) for r in reversed(requests)], REQUEST_COLUMNS, row_id="request")
    )
    return visit.page("My access", body)


def request_form(visit: Visit, error: str = "", status: int = 200) -> Page:
    form = visit.request.form
    body = (
        (f'<p class="error" id="error">{esc(error)}</p>' if error else "")
        + '<form method="post" action="/web/request">'
        + csrf_field(visit.csrf)
        + '<p><label>Role <input name="role" id="role" '
        + f'value="{esc(form.get("role"))}"></label></p>'
        + '<p><label>Environment <input name="environment" id="environment" '
        + f'value="{esc(form.get("environment"))}"></label></p>'
        + '<p><label>For <input name="duration" id="duration" placeholder="2h" '
        + f'value="{esc(form.get("duration"))}"></label> (30m, 4h, 2d; at most 7 days)</p>'
        + '<p><label>Reason <input name="reason" id="reason" size="60" '
        + f'value="{esc(form.get("reason"))}"></label></p>'
        + '<p><button id="submit">Request access</button></p></form>'
    )
    return visit.page("Request access", body, status)


def request_submit(visit: Visit) -> Page:
    from keyward.timeparse import duration

    form = visit.request.form
    try:
        seconds = int(duration(form.get("duration", ""), "For").total_seconds())
        api.file_request(
            visit.state,
            visit.caller,
            form.get("role", "").strip(),
            form.get("environment", "").strip(),
            seconds,
            form.get("reason", "").strip(),
        )
    except KeywardError as exc:
        status = api.status_for(exc)
        if status != 400:
            raise
        return request_form(visit, exc.message, 400)
    return Page(redirect="/web/")


def queue(visit: Visit) -> Page:
    caller = visit.caller
    with visit.state.registry.read() as session:
        pending = [
            _hours(r)
            for r in list_requests(session, visit.now, True)
            if r["status"] == "pending" and r["role"] in caller.approves
        ]

    def buttons(row: dict[str, Any]) -> str:
        if row["person"] == caller.username:
            return "your own request: someone else approves it"
        forms = []
        for verb in ("approve", "deny"):
            forms.append(
                f'<form class="inline" method="post" action="/web/requests/{esc(row["id"])}/'
                f'{verb}">{csrf_field(visit.csrf)}<button id="{verb}-{esc(row["id"])}">'
                f"{verb.title()}</button></form>"
            )
        return " ".join(forms)

    if not caller.approves:
        body = "<p>You approve requests for no role (see [server.approvers]).</p>"
    else:
        body = f"<p>Pending requests for: {esc(', '.join(sorted(caller.approves)))}.</p>" + table(
            pending, REQUEST_COLUMNS, extra="Decision", row_id="request", actions=buttons
        )
    return visit.page("Approval queue", body)


def decide(visit: Visit) -> Page:
    verb = visit.request.params["verb"]
    api.decide(
        visit.state,
        visit.caller,
        visit.request.params["id"],
        verb == "approve",
        visit.request.form.get("note", ""),
    )
    return Page(redirect="/web/queue")


ACCESS_FILTERS = ("environment", "customer", "role", "person")
ACCESS_COLUMNS = (
    ("environment", "Env"),
    ("customer", "Customer"),
    ("host", "Host"),
    ("account", "Account"),
    ("person", "Person"),
    ("role", "Role"),
    ("via", "Via"),
    ("granted_by", "Granted by"),
    ("until", "Until"),
    ("fingerprint", "Key"),
    ("last_login", "Last login"),
)


def access(visit: Visit) -> Page:
    """``keyward report access`` as a page; admins and auditors see all, others themselves."""
    from keyward.engine.access_review import access_rows

    query = {k: visit.request.query.get(k, "").strip() for k in ACCESS_FILTERS}
    everyone = visit.caller.admin or visit.caller.auditor
    if not everyone:
        query["person"] = visit.caller.username
    if visit.state.inventory_dir is None:
        rows: list[dict[str, Any]] = []
    else:
        rows = access_rows(
            visit.state.registry,
            visit.state.inventory_dir,
            query["environment"] or None,
            query["customer"] or None,
        )
    rows = [
        r for r in rows if all(not query[k] or r.get(k) == query[k] for k in ("role", "person"))
    ]
    inputs = "".join(
        f'<label>{esc(k.title())} <input name="{k}" id="filter-{k}" value="{esc(query[k])}"'
        f"{'' if everyone or k != 'person' else ' disabled'}></label> "
        for k in ACCESS_FILTERS
    )
    body = (
        ("" if everyone else "<p>Your own access (administrators and auditors see everyone's).</p>")
        + f'<form method="get" action="/web/access">{inputs}<button>Filter</button></form>'
        + f"<p>{len(rows)} rows.</p>"
        + table(rows, ACCESS_COLUMNS)
    )
    return visit.page("Who can log in where", body)


def logout(visit: Visit) -> Page:
    expires = visit.caller.identity.session_expires_at
    assert expires is not None  # a browser visit is always a session
    visit.state.ended.end(visit.request.cookies[SESSION_COOKIE], expires, visit.now)
    visit.state.metrics.session_ended(visit.request.cookies[SESSION_COOKIE])
    get_logger(component="server").info("session_end", person=visit.caller.username, via="browser")
    page = Page(redirect="/web/")
    page.cookies[SESSION_COOKIE] = ("", 0)
    return page


# -- plumbing ------------------------------------------------------------------------

Handler = Callable[[Visit], Page]

ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/web/", home),
    ("GET", "/web/request", request_form),
    ("POST", "/web/request", request_submit),
    ("GET", "/web/queue", queue),
    ("POST", "/web/requests/{id}/{verb:str}", decide),
    ("GET", "/web/access", access),
    ("POST", "/web/logout", logout),
)


def _serve(state: api.ServerState, handler: Handler, request: WebRequest, who: list[str]) -> Page:
    now = state.clock()
    try:
        visit = signed_in(state, request, now)
    except AuthError:
        visit = None  # expired, revoked or offboarded: sign in again
        if request.method == "GET":
            page = sign_in(state, request, now)
            page.cookies.setdefault(SESSION_COOKIE, ("", 0))  # unless signed in again just now
            return page
        raise
    if visit is None:
        if request.method == "GET" and request.path == "/web/":
            return sign_in(state, request, now)
        if request.method == "GET":
            return Page(redirect="/web/")
        raise AuthError("sign in first")
    who.append(visit.caller.username)
    if request.method == "POST":
        sent = request.form.get("csrf", "")
        if not hmac.compare_digest(sent.encode(), visit.csrf.encode()):
            raise Forbidden("missing or wrong CSRF token; reload the page and try again")
        if handler is decide and request.params.get("verb") not in ("approve", "deny"):
            raise api.NotFound("no such action")
    return handler(visit)


def _form(body: bytes) -> dict[str, str]:
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=50)
    except ValueError:  # not UTF-8 (UnicodeDecodeError), or too many fields
        raise UsageError("the form is not UTF-8 or has too many fields") from None
    return {k: v[0] for k, v in fields.items()}


def _cookie(response: Response, name: str, value: str, max_age: int, secure: bool) -> None:
    if max_age == 0:
        response.delete_cookie(name, path="/web", secure=secure, httponly=True, samesite="strict")
        return
    response.set_cookie(
        name, value, max_age=max_age, path="/web", secure=secure, httponly=True, samesite="strict"
    )


def endpoint(state: api.ServerState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        started = time.perf_counter()
        log = get_logger(component="server")
        who: list[str] = []
        secure = request.url.scheme == "https"
        try:
            body = await read_body(request, api.MAX_BODY) if request.method == "POST" else b""
            facts = WebRequest(
                method=request.method,
                path=request.url.path,
                params={k: str(v) for k, v in request.path_params.items()},
                query={k: v for k, v in request.query_params.items()},
                form=_form(body),
                cookies=dict(request.cookies),
                secure=secure,
                client=client_address(
                    request.client.host if request.client else "",
                    {k.lower(): v for k, v in request.headers.items()},
                    state.proxies,
                ),
            )
            page = await run_in_threadpool(_serve, state, handler, facts, who)
        except KeywardError as exc:
            status = api.status_for(exc)
            text = "Sign in again" if status == 401 else "Refused" if status == 403 else "Error"
            page = Page(
                status,
                layout(
                    text,
                    f'<p class="error" id="error">{esc(exc.message)}</p>'
                    '<p><a href="/web/">Back</a></p>',
                ),
            )
        except Exception as exc:
            log.error(
                "web_internal_error",
                method=request.method,
                path=request.url.path,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=True,
            )
            page = Page(500, layout("Error", "<p>internal error (see the server's log)</p>"))
        response: Response
        if page.redirect is not None:
            response = RedirectResponse(page.redirect, status_code=303)
        else:
            response = HTMLResponse(page.html, status_code=page.status)
        response.headers.update(SECURITY_HEADERS)
        for name, (value, max_age) in page.cookies.items():
            _cookie(response, name, value, max_age, secure)
        log.info(
            "web_request",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 1),
            user=who[0] if who else None,
        )
        return response

    return run


def routes(state: api.ServerState) -> list[Route]:
    from keyward.server import web_offboarding  # its pages use this module's Visit and Page

    every = ROUTES + web_offboarding.ROUTES
    return [Route(path, endpoint(state, h), methods=[m]) for m, path, h in every]
