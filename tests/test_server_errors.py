"""What the server answers when something fails inside it: one JSON line, never a traceback.

The application is called directly as ASGI (no network): the failure is injected where
the registry work happens.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from keyward.errors import RegistryUnavailable
from keyward.server import app as server_app


def unreached_state() -> Any:
    """What ``build_app`` reads of the state when it builds (the metrics and the sign-in
    codes, for the metrics); the handlers, which would read the rest, are never reached."""
    from types import SimpleNamespace

    from keyward.auth.browser import BrowserCodes
    from keyward.server.metrics import ServerMetrics

    return SimpleNamespace(metrics=ServerMetrics(), codes=BrowserCodes())


def call(application: Any, method: str, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8443),
    }
    asyncio.run(application(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), body


@pytest.mark.parametrize(
    ("failure", "status", "error"),
    [
        (
            RuntimeError("secret detail from deep inside"),
            500,
            "internal error (see the server's log)",
        ),
        (RegistryUnavailable("registry is locked"), 503, "registry is locked"),
    ],
)
def test_failures_inside_answer_one_json_line(
    monkeypatch: pytest.MonkeyPatch, failure: Exception, status: int, error: str
) -> None:
    def broken(*_args: object) -> object:
        raise failure

    monkeypatch.setattr(server_app, "_serve", broken)
    application = server_app.build_app(unreached_state())
    got, body = call(application, "GET", "/api/v1/whoami")
    assert got == status
    assert b"\n" not in body and b"Traceback" not in body and b"secret" not in body
    assert json.loads(body) == {"error": error}


def test_unknown_paths_and_methods_answer_json() -> None:
    application = server_app.build_app(unreached_state())
    assert call(application, "GET", "/nothing") == (404, b'{"error":"Not Found"}')
    status, body = call(application, "DELETE", "/api/v1/whoami")
    assert status == 405 and json.loads(body) == {"error": "Method Not Allowed"}
