"""SCIM 2.0 on ``keyward server``: ``/scim/v2/Users``, ``/Groups`` and discovery.

An identity provider (Okta, Entra ID) creates, updates, deactivates and deletes users
here.  It proves itself with the bearer token of ``[scim] token_file``, nothing else:
the people's SSH-key authentication of ``/api`` plays no part, and no SCIM token opens
``/api``.  Parsing, validation, error bodies, ``ListResponse``, ``PatchOp``, filters
and sorting are scim2-models'; this module maps HTTP onto them and onto the registry
(``keyward.registry.scim_store``).

Deactivating (``active: false``) or deleting a user offboards the linked person on
the path of a directory leaver: the registry change (every key revoked, roles ended,
a case opened over every managed file) is committed before the answer, under the
SCIM guard; then, after the answer, the engine's confirming round reconciles every
host under the writers' lock (``keyward.engine.offboarding.confirm_round``), so the
identity provider does not wait for the fleet.  A host that is down stays
unconfirmed, and every later reconcile retries it.

Every answer is SCIM JSON (``application/scim+json``); an error is an ``Error``
message, never a traceback (an unexpected failure is logged with its traceback).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from scim2_models import (
    Context,
    Error,
    InvalidSyntaxException,
    ListResponse,
    PatchOp,
    ResponseParameters,
    SCIMException,
    ScimProvider,
    SearchRequest,
)
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keyward.errors import KeywardError, RegistryUnavailable
from keyward.inventory.scim_settings import ScimSettings
from keyward.logs import get_logger
from keyward.registry import scim_store
from keyward.registry.change_log import log_changes
from keyward.registry.models import ScimResource
from keyward.server.body import BodyTooLarge, read_body
from keyward.server.scim_protocol import (
    KINDS,
    MAX_RESULTS,
    MODELS,
    ScimToken,
    build_provider,
    facts_of,
)

PREFIX = "/scim/v2"
MEDIA_TYPE = "application/scim+json"
MAX_BODY = 256 * 1024  # a group of a few thousand members still fits
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

if TYPE_CHECKING:
    from keyward.server.app import ServerState


class ScimNotFound(KeywardError):
    """No such resource or endpoint (404)."""


class ScimUnauthorized(KeywardError):
    """No token, or not the identity provider's (401)."""


@dataclass
class Scim:
    """The SCIM service of one server process."""

    state: ServerState
    settings: ScimSettings
    token: ScimToken
    provider: ScimProvider = field(default_factory=build_provider)


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    after: Callable[[], None] | None = None


def routes(state: ServerState) -> list[Route]:
    """The SCIM routes, when ``keyward.toml`` has a ``[scim]`` section; else none.

    The token file is read now: a missing or loose one stops the server's start.
    """
    from keyward.inventory.settings import load_scim_settings

    root = getattr(state, "inventory_dir", None)  # tests build the app without a state
    if root is None:
        return []
    settings = load_scim_settings(root)
    if settings is None:
        return []
    scim = Scim(state, settings, ScimToken.load(settings.token_file))
    get_logger(component="server").info(
        "scim_enabled",
        path=PREFIX,
        token_file=str(settings.token_file),
        mass_offboard_share=settings.mass_offboard_share,
        mass_offboard_window_s=settings.mass_offboard_window.total_seconds(),
        roles=sorted(settings.roles),
    )
    handler = _endpoint(scim)
    return [
        Route(PREFIX, handler, methods=METHODS),
        Route(PREFIX + "/{rest:path}", handler, methods=METHODS),
    ]


# -- HTTP -----------------------------------------------------------------------------


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    if body is None:
        return Response(status_code=status, headers=headers, media_type=MEDIA_TYPE)
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def _error(status: int, detail: str, scim_type: str | None = None) -> dict[str, Any]:
    error = Error(status=status, scim_type=scim_type, detail=" ".join(detail.split())[:1000])
    return error.model_dump()


def _endpoint(scim: Scim) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        started = time.perf_counter()
        log = get_logger(component="server")
        path = request.url.path
        headers: dict[str, str] = {}
        try:
            _authenticate(scim, request.headers.get("authorization", ""))
            body = await read_body(request, MAX_BODY)
            base = str(request.base_url).rstrip("/") + PREFIX
            answer = await run_in_threadpool(
                dispatch,
                scim,
                request.method,
                path,
                dict(request.query_params),
                body,
                base,
                request.headers.get("if-match"),
            )
            status, payload, headers = answer.status, answer.body, answer.headers
            response = _json(status, payload, headers)
            if answer.after is not None:
                response.background = BackgroundTask(answer.after)
        except ScimUnauthorized as exc:
            status = 401
            log.warning("scim_refused", method=request.method, path=path, reason=exc.message)
            response = _json(
                401, _error(401, exc.message), {"WWW-Authenticate": 'Bearer realm="keyward-scim"'}
            )
        except Exception as exc:  # every failure is a SCIM error body, never a traceback
            status, payload = _failure(exc, request.method, path)
            response = _json(status, payload)
        log.info(
            "scim_request",
            method=request.method,
            path=path,
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return response

    return run


def _authenticate(scim: Scim, header: str) -> None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ScimUnauthorized("send the identity provider's token: Authorization: Bearer ...")
    if not scim.token.matches(token.strip()):
        raise ScimUnauthorized("the bearer token is not the one in [scim] token_file")


class MethodNotAllowed(KeywardError):
    """A method the endpoint does not serve (405)."""


class PreconditionFailed(KeywardError):
    """``If-Match`` names another version (412)."""


class Unavailable(KeywardError):
    """The offboarding cannot be prepared now (the inventory does not load): 503, retry."""


class Conflict(KeywardError):
    """A userName or displayName already taken (409, uniqueness)."""


def _failure(exc: Exception, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """The status and SCIM ``Error`` for ``exc``; unexpected ones are logged."""
    if isinstance(exc, SCIMException):
        error = exc.to_error()
        return int(error.status or 400), error.model_dump()
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        error = Error.from_validation_error(errors[0]) if errors else Error(status=400)
        return int(error.status or 400), error.model_dump()
    known: tuple[tuple[type[KeywardError], int, str | None], ...] = (
        (ScimNotFound, 404, None),
        (MethodNotAllowed, 405, None),
        (Conflict, 409, "uniqueness"),
        (PreconditionFailed, 412, None),
        (BodyTooLarge, 413, None),
        (scim_store.GuardRefused, 503, None),
        (Unavailable, 503, None),
        (RegistryUnavailable, 503, None),
    )
    if isinstance(exc, KeywardError):
        for kind, status, scim_type in known:
            if isinstance(exc, kind):
                return status, _error(status, exc.message, scim_type)
        return 400, _error(400, exc.message, "invalidValue")
    get_logger(component="server").error(
        "scim_internal_error",
        method=method,
        path=path,
        error=f"{type(exc).__name__}: {exc}",
        exc_info=True,
    )
    return 500, _error(500, "internal error (see the server's log)")


# -- dispatch -------------------------------------------------------------------------


def dispatch(
    scim: Scim,
    method: str,
    path: str,
    query: dict[str, str],
    body: bytes,
    base: str,
    if_match: str | None,
) -> Answer:
    """Route one authenticated request (in a worker thread: the ORM blocks)."""
    parts = [p for p in path[len(PREFIX) :].split("/") if p]
    if not parts:
        raise ScimNotFound(f"no SCIM endpoint {path[:100]!r}")
    head, rest = parts[0], parts[1:]
    if head in ("ServiceProviderConfig", "ResourceTypes", "Schemas"):
        if method != "GET":
            raise MethodNotAllowed(f"{head} is read-only (GET)")
        return _discovery(scim, head, rest)
    if head == ".search" and not rest:
        if method != "POST":
            raise MethodNotAllowed("/.search takes POST")
        return _search_all(scim, _parse(body), base)
    if head not in MODELS or len(rest) > 1:
        raise ScimNotFound(f"no SCIM endpoint {path[:100]!r}")
    resources = Resources(scim, head, base, if_match)
    search_model: Any = SearchRequest[resources.model]  # type: ignore[name-defined]
    if not rest:
        if method == "GET":
            return resources.search(search_model.model_validate(query), query)
        if method == "POST":
            return resources.create(_parse(body), query)
        raise MethodNotAllowed(f"{method} /{head}: use GET or POST")
    if rest[0] == ".search":
        if method != "POST":
            raise MethodNotAllowed("/.search takes POST")
        request = search_model.model_validate(_parse(body), scim_ctx=Context.SEARCH_REQUEST)
        return resources.search(request, {}, Context.SEARCH_RESPONSE)
    handlers = {
        "GET": resources.read,
        "PUT": resources.replace,
        "PATCH": resources.patch,
        "DELETE": resources.delete,
    }
    if method not in handlers:
        raise MethodNotAllowed(f"{method} /{head}/ID: use GET, PUT, PATCH or DELETE")
    return handlers[method](rest[0], body, query)


def _parse(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InvalidSyntaxException(detail="the request body is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidSyntaxException(detail="the request body must be a JSON object")
    return value


def _discovery(scim: Scim, head: str, rest: list[str]) -> Answer:
    provider = scim.provider
    if head == "ServiceProviderConfig":
        if rest:
            raise ScimNotFound("ServiceProviderConfig has no sub-resources")
        assert provider.config is not None
        return Answer(200, provider.config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
    items: list[Any] = list(provider.schemas if head == "Schemas" else provider.resource_types)
    if rest:
        for item in items:
            if str(item.id) == rest[0]:
                return Answer(200, item.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
        raise ScimNotFound(f"no {head[:-1]} {rest[0][:100]!r}")
    model = type(items[0]) if items else Any
    listing = ListResponse[model](  # type: ignore[valid-type]
        total_results=len(items), start_index=1, items_per_page=len(items), resources=items
    )
    return Answer(200, listing.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


def _search_all(scim: Scim, payload: dict[str, Any], base: str) -> Answer:
    """``POST /.search``: one query over users and groups (RFC 7644 3.4.3)."""
    user, group = MODELS["Users"], MODELS["Groups"]
    either: Any = user | group
    request = SearchRequest[either].model_validate(payload, scim_ctx=Context.SEARCH_REQUEST)
    found: list[Any] = []
    with scim.state.registry.read() as session:
        for endpoint in ("Users", "Groups"):
            resources = Resources(scim, endpoint, base, None)
            found += [resources.load(row) for row in scim_store.live(session, resources.kind)]
    return _page(found, request, either, Context.SEARCH_RESPONSE)


def _page(found: list[Any], request: Any, model: Any, ctx: Context) -> Answer:
    """Filter, sort and page ``found`` as ``request`` asks; a ``ListResponse``."""
    if request.filter:
        found = [item for item in found if request.filter.match(item)]
    if request.sort_by:
        found = request.sort(found)
    start = request.start_index_0 or 0
    stop = request.stop_index_0
    stop = start + MAX_RESULTS if stop is None else min(stop, start + MAX_RESULTS)
    page = found[start:stop]
    listing = ListResponse[model](
        total_results=len(found),
        start_index=request.start_index or 1,
        items_per_page=len(page),
        resources=page,
    )
    return Answer(200, listing.model_dump(scim_ctx=ctx, response_parameters=request))


# -- resources ------------------------------------------------------------------------


@dataclass
class Resources:
    """Users or Groups: the stored documents, through scim2-models, in the registry."""

    scim: Scim
    endpoint: str
    base: str
    if_match: str | None

    @property
    def model(self) -> Any:
        return MODELS[self.endpoint]

    @property
    def kind(self) -> str:
        return KINDS[self.endpoint]

    # reading

    def load(self, row: ScimResource) -> Any:
        document = scim_store.document(row)
        document["meta"] = {
            "resourceType": self.kind,
            "created": row.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastModified": row.changed_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "location": f"{self.base}/{self.endpoint}/{row.id}",
            "version": _etag(row),
        }
        document["id"] = row.id
        return self.model.model_validate(document)

    def _row(self, session: Any, scim_id: str) -> ScimResource:
        row = scim_store.find(session, self.kind, scim_id)
        if row is None:
            raise ScimNotFound(f"no {self.kind} {scim_id[:100]!r}")
        return row

    def _respond(self, status: int, resource: Any, ctx: Context, query: dict[str, str]) -> Answer:
        params: Any = ResponseParameters.model_validate(query)
        headers = {"ETag": str(resource.meta.version)} if resource.meta else {}
        if status == 201 and resource.meta:
            headers["Location"] = str(resource.meta.location)
        return Answer(
            status, resource.model_dump(scim_ctx=ctx, response_parameters=params), headers
        )

    def read(self, scim_id: str, body: bytes, query: dict[str, str]) -> Answer:
        with self.scim.state.registry.read() as session:
            resource = self.load(self._row(session, scim_id))
        return self._respond(200, resource, Context.RESOURCE_QUERY_RESPONSE, query)

    def search(
        self, request: Any, query: dict[str, str], ctx: Context = Context.RESOURCE_QUERY_RESPONSE
    ) -> Answer:
        named = _equality_on_name(self.kind, str(request.filter or ""))
        with self.scim.state.registry.read() as session:
            rows = scim_store.live(session, self.kind, named)
            found = [self.load(row) for row in rows]
        return _page(found, request, self.model, ctx)

    # writing

    def create(self, payload: dict[str, Any], query: dict[str, str]) -> Answer:
        resource = self.model.model_validate(payload, scim_ctx=Context.RESOURCE_CREATION_REQUEST)
        return self._store(None, resource, query, Context.RESOURCE_CREATION_RESPONSE, 201)

    def replace(self, scim_id: str, body: bytes, query: dict[str, str]) -> Answer:
        payload = _parse(body)
        with self.scim.state.registry.read() as session:
            existing = self.load(self._row(session, scim_id))
        self._check_version(existing)
        replacement = self.model.model_validate(
            payload, scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST
        )
        replacement.replace(existing)
        return self._store(scim_id, replacement, query, Context.RESOURCE_REPLACEMENT_RESPONSE, 200)

    def patch(self, scim_id: str, body: bytes, query: dict[str, str]) -> Answer:
        payload = _parse(body)
        with self.scim.state.registry.read() as session:
            resource = self.load(self._row(session, scim_id))
        self._check_version(resource)
        operations = PatchOp[self.model].model_validate(  # type: ignore[name-defined]
            payload, scim_ctx=Context.RESOURCE_PATCH_REQUEST
        )
        operations.patch(resource)
        return self._store(scim_id, resource, query, Context.RESOURCE_PATCH_RESPONSE, 200)

    def delete(self, scim_id: str, body: bytes, query: dict[str, str]) -> Answer:
        with self.scim.state.registry.read() as session:
            self._check_version(self.load(self._row(session, scim_id)))
        after = self._change(scim_id, None)
        return Answer(204, None, after=after)

    def _check_version(self, resource: Any) -> None:
        if self.if_match is None or self.if_match.strip() == "*":
            return
        tags = [tag.strip() for tag in self.if_match.split(",")]
        if resource.meta is None or str(resource.meta.version) not in tags:
            raise PreconditionFailed("If-Match names another version of this resource")

    def _store(
        self, scim_id: str | None, resource: Any, query: dict[str, str], ctx: Context, status: int
    ) -> Answer:
        resource.id = scim_id or str(uuid.uuid4())
        after = self._change(resource.id, resource, create=scim_id is None)
        with self.scim.state.registry.read() as session:
            stored = self.load(self._row(session, resource.id))
        answer = self._respond(status, stored, ctx, query)
        answer.after = after
        return answer

    def _change(
        self, scim_id: str, resource: Any | None, create: bool = False
    ) -> Callable[[], None] | None:
        """Store ``resource`` (None: delete) and apply it to the people, in one transaction.

        Returns the confirming round to run after the answer when someone was offboarded.
        """
        state = self.scim.state
        settings = self.scim.settings
        is_user = self.kind == "User"
        facts = facts_of(resource) if is_user and resource is not None else None
        name = self._name(resource)
        targets = None
        with state.registry.read() as session:
            row = None if create else self._row(session, scim_id)
            if name is not None and scim_store.name_taken(session, self.kind, name, scim_id):
                raise Conflict(f"a {self.kind} named {name[:100]!r} already exists")
            offboarding = is_user and scim_store.would_offboard(session, row, facts)
            person = row.person if row is not None else None
        if offboarding and person is not None:
            targets = self._targets(person)
        refused: scim_store.GuardRefused | None = None
        effect = scim_store.Effect()
        with state.registry.write(scim_store.ACTOR) as tx:
            try:
                if offboarding:
                    scim_store.check_guard(
                        tx, settings.mass_offboard_share, settings.mass_offboard_window
                    )
                current = None if create else scim_store.find(tx.session, self.kind, scim_id)
                if not create and current is None:
                    raise ScimNotFound(f"no {self.kind} {scim_id[:100]!r}")
                if name is not None and scim_store.name_taken(tx.session, self.kind, name, scim_id):
                    raise Conflict(f"a {self.kind} named {name[:100]!r} already exists")
                if resource is None:
                    assert current is not None
                    if is_user:
                        effect = self._apply(tx, current, None, targets)
                    scim_store.delete(tx, current)
                else:
                    row = scim_store.save(
                        tx, current, scim_id, self.kind, name or "", _document(resource)
                    )
                    if is_user:
                        effect = self._apply(tx, row, facts, targets)
                if settings.roles:
                    deleted = current.name if resource is None and current is not None else None
                    effect.notes += scim_store.sync_roles(
                        tx, settings.roles, deleted if not is_user else None
                    )
            except scim_store.GuardRefused as exc:
                refused = exc  # the alert is committed; nothing else was changed
        log_changes(tx, component="server")
        if refused is not None:
            self._alert(refused)
            raise refused
        log = get_logger(component="server")
        for note in effect.notes:
            log.warning("scim_note", scim_id=scim_id, note=note)
        if effect.offboarded is None:
            return None
        username, case_id = effect.offboarded, effect.case_id
        log.info("scim_offboarded", person=username, scim_id=scim_id, case_id=case_id)
        return lambda: self._confirm(username, case_id)

    def _apply(self, tx: Any, row: ScimResource, facts: Any, targets: Any) -> scim_store.Effect:
        return scim_store.apply_user(
            tx, row, facts, create_people=self.scim.settings.create_people, targets=targets
        )

    def _name(self, resource: Any | None) -> str | None:
        if resource is None:
            return None
        if self.kind == "User":
            return str(resource.user_name or "").lower()
        return str(resource.display_name or "").lower() or None

    def _targets(self, username: str) -> list[scim_store.CaseTarget] | None:
        """The case's files, from the inventory and registry before the change."""
        from keyward.engine.inputs import load_inputs
        from keyward.engine.offboarding import case_targets

        state = self.scim.state
        if state.inventory_dir is None:
            return None
        try:
            before = load_inputs(state.registry, state.clock, state.inventory_dir, None, None)
        except KeywardError as exc:  # as for a directory sync: nothing changes, retry later
            raise Unavailable(
                f"cannot read the inventory for the offboarding: {exc.message}"
            ) from None
        return case_targets(before, username)

    def _alert(self, refused: scim_store.GuardRefused) -> None:
        from keyward.registry.attribution import notify

        state = self.scim.state
        get_logger(component="server").error("scim_guard_refused", message=refused.message)
        if refused.alert_id is not None and state.inventory is not None:
            try:
                notify(
                    state.registry,
                    scim_store.ACTOR,
                    (refused.alert_id,),
                    state.inventory.policy.alert_command,
                )
            except KeywardError as exc:
                get_logger(component="server").error("scim_alert_failed", error=exc.message)

    def _confirm(self, username: str, case_id: int | None) -> None:
        """After the answer: every host reconciled under the writers' lock, the case confirmed."""
        confirm_offboarding(self.scim.state, username, case_id)


def confirm_offboarding(state: ServerState, username: str, case_id: int | None) -> None:
    """The engine's confirming round for a SCIM leaver; failures are logged, not raised."""
    from keyward.engine.inputs import load_inputs
    from keyward.engine.offboarding import confirm_round
    from keyward.engine.round import Surroundings

    log = get_logger(component="server")
    if state.inventory_dir is None:
        return
    try:
        around = Surroundings(state.registry, scim_store.ACTOR, state.clock, time.sleep)
        before = load_inputs(state.registry, state.clock, state.inventory_dir, None, None)
        results = confirm_round(
            around,
            before,
            "keyward server (scim)",
            lambda holder: log.info("lock_wait", holder=holder),
        )
        log.info(
            "scim_offboarding_round",
            person=username,
            case_id=case_id,
            hosts=len(results),
            failed=sum(1 for r in results if not r.ok),
        )
    except Exception as exc:  # the case stays open; every later reconcile retries it
        log.error(
            "scim_offboarding_round_failed",
            person=username,
            case_id=case_id,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=True,
        )


_NAME_FILTER = {"User": "username", "Group": "displayname"}


def _equality_on_name(kind: str, text: str) -> str | None:
    """The name of ``userName eq "x"`` (``displayName`` for groups), the lookup identity
    providers make before every creation: read by the indexed column, not by loading
    every resource.  The filter itself is still applied to what is read."""
    attribute, _, rest = text.strip().partition(" ")
    operator, _, value = rest.strip().partition(" ")
    value = value.strip()
    if attribute.lower() != _NAME_FILTER[kind] or operator.lower() != "eq":
        return None
    if len(value) < 2 or not value.startswith('"') or not value.endswith('"'):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return parsed.lower() if isinstance(parsed, str) else None


def _etag(row: ScimResource) -> str:
    return f'W/"{row.version}"'


def _document(resource: Any) -> str:
    """The resource to store: everything the provider sent but its password, id and meta."""
    value = resource.model_dump()
    for key in ("password", "meta", "id"):
        value.pop(key, None)
    return json.dumps(value, sort_keys=True)
