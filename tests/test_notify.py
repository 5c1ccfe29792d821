"""Notifications: webhook signature, Slack payload, bounded retries, the command hook,
the [notify] settings, and renewal reminders / expired access sent once each."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyward.errors import UsageError
from keyward.inventory.notify_settings import NotifySettings, read_notify_settings
from keyward.inventory.reader import Problem, Reader
from keyward.notify.deliver import Deliverer, read_secret
from keyward.notify.message import Notification, Recipient
from tests.cli_runner import Keyward
from tests.server_env import ENVIRONMENT
from tests.webhook_receiver import Receiver, receiver

SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver("127.0.0.1") as r:
        yield r


def note(text: str = "rita requests devops in prod for 2h: <!channel> & co") -> Notification:
    return Notification(
        "access_requested",
        datetime(2026, 12, 4, 10, 0, tzinfo=UTC),
        (Recipient("bob", "bob@example.com"),),
        text,
        {"request_id": 7, "person": "rita", "role": "devops"},
    )


def deliverer(url: str, **settings: Any) -> tuple[Deliverer, list[float]]:
    slept: list[float] = []
    d = Deliverer(NotifySettings(webhooks=(url,), **settings), SECRET, slept.append)
    return d, slept


def test_a_webhook_post_is_signed_so_the_receiver_can_verify_it(hook: Receiver) -> None:
    d, _ = deliverer(hook.url)
    assert d.deliver(note()) is True
    (post,) = hook.posts
    body = post.json()
    assert body["event"] == "access_requested"
    assert body["recipients"] == [{"username": "bob", "email": "bob@example.com"}]
    assert body["details"]["request_id"] == 7
    assert post.headers["X-Keyward-Event"] == "access_requested"
    assert post.headers["X-Keyward-Delivery"] == body["id"]
    # The receiver's check, exactly as docs/server.md gives it.
    timestamp = post.headers["X-Keyward-Timestamp"]
    expected = hmac.new(SECRET, timestamp.encode() + b"." + post.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(post.headers["X-Keyward-Signature"], "sha256=" + expected)
    assert abs(int(timestamp) - time.time()) < 60


def test_slack_format_is_one_escaped_text(hook: Receiver) -> None:
    d, _ = deliverer(hook.url, format="slack")
    assert d.deliver(note())
    assert hook.posts[0].json() == {
        "text": "keyward: rita requests devops in prod for 2h: &lt;!channel&gt; &amp; co (for bob)"
    }


def test_retries_are_bounded_and_only_for_temporary_failures(hook: Receiver) -> None:
    from structlog.testing import capture_logs

    d, slept = deliverer(hook.url, retries=2)
    hook.statuses = [500, 503]
    assert d.deliver(note()) is True
    assert len(hook.posts) == 3 and slept == [0.5, 1.0]
    hook.posts.clear()
    hook.statuses = [500, 500, 500, 500]
    assert d.deliver(note()) is False  # 1 + 2 retries, then given up
    assert len(hook.posts) == 3
    hook.posts.clear()
    hook.statuses = [404]
    assert d.deliver(note()) is False
    assert len(hook.posts) == 1  # a refusal is not retried
    hook.posts.clear()
    hook.statuses = [302]
    with capture_logs() as logs:
        assert d.deliver(note()) is False  # the body is never re-sent elsewhere
    assert len(hook.posts) == 1
    (line,) = logs
    assert line["event"] == "notification_failed" and line["error"] == "HTTP 302"
    assert line["url"] == hook.url.removesuffix("/hook")  # the path (Slack's secret) is not logged
    assert line["recipients"] == ["bob"] and line["request_id"] == 7


def test_a_hanging_receiver_costs_at_most_the_timeout(hook: Receiver) -> None:
    hook.delay = 3.0
    d, _ = deliverer(hook.url, timeout=0.5, retries=0)
    started = time.monotonic()
    assert d.deliver(note()) is False
    assert time.monotonic() - started < 2.0


def test_the_command_hook_gets_the_json_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    script = tmp_path / "hook.py"
    script.write_text(
        "import os, sys\n"
        f"open({str(out)!r}, 'w').write(os.environ['KEYWARD_EVENT'] + '\\n' + sys.stdin.read())\n"
    )
    d = Deliverer(NotifySettings(command=f"{sys.executable} {script} '$(touch pwned)'"))
    assert d.deliver(note())
    event, payload = out.read_text().split("\n", 1)
    assert event == "access_requested"
    assert json.loads(payload)["details"]["person"] == "rita"
    assert not (Path.cwd() / "pwned").exists()  # argv, never a shell
    failing = Deliverer(NotifySettings(command=f"{sys.executable} -c 'import sys; sys.exit(3)'"))
    assert failing.deliver(note()) is False


def test_notify_settings_are_checked(tmp_path: Path) -> None:
    problems: list[Problem] = []
    settings = read_notify_settings(
        {
            "notify": {
                "webhook": ["ftp://x", "https://hooks.example.com/a b", "https://ok.example/h"],
                "format": "teams",
                "renewal_days": 0,
                "retries": 9,
                "secret_file": "webhook.secret",
                "comand": "x",
            }
        },
        Reader("keyward.toml", problems),
        tmp_path,
    )
    text = "\n".join(map(str, problems))
    assert "unknown field 'comand' (did you mean 'command'?)" in text
    assert "not an http(s) URL" in text and "spaces" in text
    assert "notify.format: must be one of json, slack" in text
    assert "notify.retries: must be an integer 0-5" in text
    assert settings.webhooks == ("https://ok.example/h",)
    assert settings.renewal_days == 0 and settings.secret_file == tmp_path / "webhook.secret"


def test_the_secret_file_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o644)
    with pytest.raises(UsageError, match="readable by others"):
        read_secret(secret)
    secret.chmod(0o600)
    assert read_secret(secret) == SECRET


def days(n: float) -> str:
    return (datetime.now(UTC) + timedelta(days=n)).strftime("%Y-%m-%d")


def test_reminders_and_expired_access_are_sent_once(
    tmp_path: Path, sqlite_url: str, hook: Receiver
) -> None:
    from tests.keygen import make_key

    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "keyward.toml").write_text(
        f'[notify]\nwebhook = "{hook.url}"\nrenewal_days = 14\n'
    )
    (inventory / "prod.toml").write_text(ENVIRONMENT)
    kw = Keyward(sqlite_url, str(inventory))
    kw.ok("init")
    for person in ("rita", "bob"):
        kw.ok("person", "add", person, "--name", person.title(), "--email", f"{person}@ex.com")
    _, soon = make_key(tmp_path / "keys", "ed25519", name="soon", comment="rita@laptop")
    _, later = make_key(tmp_path / "keys", "ed25519", name="later", comment="rita@desk")
    kw.ok("key", "add", "rita", str(soon), "--expires", days(10))
    kw.ok("key", "add", "rita", str(later))
    kw.ok("role", "add", "devops")
    kw.ok("role", "grant", "devops", "bob", "--reason", "oncall", "--until", days(3))
    # An approved hour of access that ran out an hour ago.
    two_hours_ago = {
        "KEYWARD_NOW": (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    }
    rid = kw.ok(
        "access",
        "request",
        "devops",
        "--env",
        "prod",
        "--for",
        "1h",
        "--reason",
        "INC-9",
        "--json",
        actor="rita",
        env=two_hours_ago,
    ).json()["id"]
    kw.ok("access", "approve", str(rid), actor="bob", env=two_hours_ago)

    dry = kw.ok("notify", "reminders", "--dry-run", "--json").json()
    assert sorted(n["event"] for n in dry["notifications"]) == [
        "access_expired",
        "grant_expiring",
        "key_expiring",
    ]
    assert hook.posts == []  # a dry run sends nothing and records nothing

    sent = kw.ok("notify", "reminders", "--json").json()
    assert sent["delivered"] == 3 and sent["failed"] == 0
    by_event = {p.json()["event"]: p.json() for p in hook.posts}
    assert set(by_event) == {"access_expired", "grant_expiring", "key_expiring"}
    assert by_event["key_expiring"]["recipients"] == [{"username": "rita", "email": "rita@ex.com"}]
    assert "rita@laptop" in by_event["key_expiring"]["text"]
    assert by_event["grant_expiring"]["recipients"][0]["username"] == "bob"
    assert by_event["access_expired"]["details"]["request_id"] == rid

    again = kw.ok("notify", "reminders", "--json").json()
    assert again["notifications"] == [] and len(hook.posts) == 3  # once each

    events = kw.ok("audit", "log", "--json", "--action", "access.expire").json()
    assert [e["details"]["request_id"] for e in events] == [rid]
    row = kw.ok("access", "list", "--json").json()[0]
    assert row["ended_at"] == row["until"]


def test_a_failed_delivery_exits_1_and_is_not_repeated(tmp_path: Path, sqlite_url: str) -> None:
    from tests.keygen import make_key

    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "keyward.toml").write_text(
        '[notify]\nwebhook = "http://127.0.0.1:9/nothing"\nretries = 0\ntimeout = 2\n'
    )
    (inventory / "prod.toml").write_text(ENVIRONMENT)
    kw = Keyward(sqlite_url, str(inventory))
    kw.ok("init")
    kw.ok("person", "add", "rita", "--name", "Rita")
    _, soon = make_key(tmp_path / "keys", "ed25519", name="soon", comment="rita@laptop")
    kw.ok("key", "add", "rita", str(soon), "--expires", days(5))
    result = kw("notify", "reminders", "--json")
    assert result.code == 1 and result.json()["failed"] == 1
    assert kw.ok("notify", "reminders", "--json").json()["notifications"] == []


def test_the_server_notifies_in_the_background(
    tmp_path: Path, sqlite_url: str, hook: Receiver
) -> None:
    """A slow receiver never holds the request: ``request_filed`` only queues the work.
    The approvers are resolved as authz does: by person, by a role held, never the
    requester, never someone offboarded."""
    from keyward.clock import system_clock
    from keyward.notify.server_side import ServerNotifier
    from keyward.registry import lifecycle
    from keyward.registry.store import Registry

    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "prod.toml").write_text(ENVIRONMENT)
    kw = Keyward(sqlite_url, str(inventory))
    kw.ok("init")
    for person in ("rita", "bob", "carol", "dave", "frank"):
        kw.ok("person", "add", person, "--name", person.title())
    kw.ok("role", "add", "security")
    kw.ok("role", "add", "devops")
    for person in ("bob", "rita", "frank"):
        kw.ok("role", "grant", "security", person, "--reason", "t")
    registry = Registry.open(sqlite_url)
    with registry.write("admin") as tx:
        lifecycle.offboard(tx, "frank", "left", [])
    rid = kw.ok(
        "access",
        "request",
        "devops",
        "--env",
        "prod",
        "--for",
        "1h",
        "--reason",
        "x",
        "--json",
        actor="rita",
    ).json()["id"]
    hook.delay = 1.0
    notifier = ServerNotifier(
        registry,
        Deliverer(NotifySettings(webhooks=(hook.url,), timeout=5)),
        {"devops": ("role:security", "person:carol")},
        system_clock,
    )
    started = time.monotonic()
    notifier.request_filed(rid)
    assert time.monotonic() - started < 0.5
    kw.ok("access", "deny", str(rid), "--note", "not now", actor="bob")
    notifier.request_decided(rid)
    assert time.monotonic() - started < 0.5
    notifier.close()
    asked, denied = (p.json() for p in hook.posts)
    assert [r["username"] for r in asked["recipients"]] == ["bob", "carol"]
    assert denied["event"] == "access_denied"
    assert [r["username"] for r in denied["recipients"]] == ["rita"]
    assert denied["text"] == f"bob denied rita's devops in prod (request {rid})"

    # A stopping server is not held by a dead receiver: past the grace, the queue is dropped.
    hook.posts.clear()
    stopping = ServerNotifier(
        registry,
        Deliverer(NotifySettings(webhooks=(hook.url,), timeout=5)),
        {"devops": ("person:carol",)},
        system_clock,
    )
    for _ in range(4):
        stopping.request_filed(rid)
    started = time.monotonic()
    stopping.close(grace=0.5)
    registry.dispose()
    assert time.monotonic() - started < 2.5
    assert len(hook.posts) == 1


def test_notify_test_reaches_every_channel(tmp_path: Path, sqlite_url: str, hook: Receiver) -> None:
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "prod.toml").write_text(ENVIRONMENT)
    kw = Keyward(sqlite_url, str(inventory))
    assert "no [notify] command or webhook" in kw.fails("notify", "test").err
    (inventory / "keyward.toml").write_text(f'[notify]\nwebhook = "{hook.url}"\nformat = "slack"\n')
    kw.ok("notify", "test", "--to", "bob")
    assert hook.posts[0].json() == {
        "text": "keyward: test notification from keyward notify test (for bob)"
    }
    hook.statuses = [410]
    assert kw("notify", "test").code == 1
