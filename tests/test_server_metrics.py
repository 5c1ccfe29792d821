"""``keyward server --metrics-listen``: Prometheus metrics on a loopback listener of their
own; and the per-client bound on browser sign-in codes (429 beyond it).

A second real server process on the registry of tests/server_env.py, with its metrics
listener; the metrics are read over HTTP as Prometheus would.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyward.auth.browser import BrowserCodes, TooManyCodes
from keyward.server.clients import client_address, trusted
from keyward.server.metrics import reason_of
from tests.server_env import (
    ServerEnv,
    _wait_listening,
    free_port,
    server_env,
    start_server,
    stop,
)

HOST = "127.0.0.27"
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    with server_env(tmp_path_factory.mktemp("server-metrics"), host=HOST) as env:
        yield env


@pytest.fixture(scope="module")
def metered(server: ServerEnv) -> Iterator[tuple[str, str]]:
    """(API URL, metrics URL) of a second server with ``--metrics-listen``."""
    port, metrics_port = free_port(HOST), free_port(HOST)
    process, log = start_server(
        server.base,
        server.db_url,
        server.inventory,
        HOST,
        port,
        "--metrics-listen",
        f"{HOST}:{metrics_port}",
    )
    try:
        _wait_listening(HOST, port, process, log)
        yield f"http://{HOST}:{port}", f"http://{HOST}:{metrics_port}/metrics"
    finally:
        stop(process)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return 0.0


def test_requests_failures_sessions_and_latency_are_counted(
    server: ServerEnv, metered: tuple[str, str]
) -> None:
    url, metrics = metered
    path = "/api/v1/whoami"
    for _ in range(2):
        assert get(url + path, server.signed("alice", "GET", path))[0] == 200
    assert get(url + path)[0] == 401  # no credentials
    stale = server.signed("alice", "GET", path, when=datetime.now(UTC) - timedelta(seconds=400))
    assert get(url + path, stale)[0] == 401
    assert (
        get(url + "/api/v1/people/rita", server.signed("alice", "GET", "/api/v1/people/rita"))[0]
        == 403
    )
    assert get(url + "/no/such/path")[0] == 404
    login = "/api/v1/auth/login"
    request = urllib.request.Request(
        url + login, data=b"{}", method="POST", headers=server.signed("bob", "POST", login, b"{}")
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    status, body = get(metrics)
    assert status == 200
    text = body.decode()
    requests = "keyward_server_requests_total"
    assert sample(text, requests, route="/api/v1/whoami", method="GET", status="200") == 2
    assert sample(text, requests, route="/api/v1/whoami", method="GET", status="401") == 2
    assert (
        sample(text, requests, route="/api/v1/people/{username}", method="GET", status="403") == 1
    )
    assert sample(text, requests, route="other", method="GET", status="404") == 1
    failures = "keyward_server_signin_failures_total"
    assert sample(text, failures, reason="no_credentials") == 1
    assert sample(text, failures, reason="timestamp") == 1
    assert sample(text, "keyward_server_active_sessions") == 1
    assert sample(text, "keyward_server_request_seconds_count", route="/api/v1/whoami") == 4
    assert "alice" not in text and "SHA256" not in text  # no names or keys in labels
    # Not on the main listener: there /metrics is just an unknown path.
    assert get(url + "/metrics")[0] == 404


def test_one_client_gets_a_bounded_number_of_sign_in_codes(
    server: ServerEnv, metered: tuple[str, str]
) -> None:
    url, metrics = metered
    # Each request without a cookie is a new browser asking for a new code.
    statuses = [get(url + "/web/")[0] for _ in range(21)]
    assert statuses == [200] * 20 + [429]
    text = get(metrics)[1].decode()
    assert sample(text, "keyward_server_pending_signin_codes") == 20


def test_the_metrics_listener_is_loopback_only(server: ServerEnv, tmp_path: Path) -> None:
    from tests.cli_runner import Keyward

    result = Keyward(server.db_url, str(server.inventory))(
        "server", "--listen", f"{HOST}:1", "--metrics-listen", "0.0.0.0:9465"
    )
    assert result.code == 2 and "loopback" in result.err


def test_codes_per_client_and_in_all() -> None:
    codes = BrowserCodes(max_entries=3, per_client=2)
    first = codes.code_for("a", NOW, "10.0.0.1")
    codes.code_for("b", NOW, "10.0.0.1")
    with pytest.raises(TooManyCodes, match="from your address"):
        codes.code_for("c", NOW, "10.0.0.1")
    assert codes.code_for("a", NOW, "10.0.0.1") == first  # a refresh keeps its code
    codes.code_for("d", NOW, "10.0.0.2")
    with pytest.raises(TooManyCodes, match="in progress; try again"):
        codes.code_for("e", NOW, "10.0.0.3")
    assert codes.code_for("c", NOW + timedelta(minutes=5), "10.0.0.1")  # expired: room again


def test_the_client_behind_a_trusted_proxy() -> None:
    proxies = trusted(["127.0.0.1"])
    forwarded = {"x-forwarded-for": "203.0.113.9, 198.51.100.7"}
    assert client_address("127.0.0.1", forwarded, proxies) == "198.51.100.7"
    assert client_address("192.0.2.1", forwarded, proxies) == "192.0.2.1"  # not a proxy
    assert client_address("127.0.0.1", {}, proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", {"x-forwarded-for": "junk"}, proxies) == "127.0.0.1"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("replayed request (this nonce was already used)", "replay"),
        ("key SHA256:abc is revoked", "key_revoked"),
        ("person 'frank' is offboarded", "person_not_active"),
        ("session has expired; run 'keyward auth login' again", "session_expired"),
        ("incomplete signature headers", "malformed"),
    ],
)
def test_refusal_reasons_are_a_fixed_set(message: str, reason: str) -> None:
    assert reason_of(message) == reason
