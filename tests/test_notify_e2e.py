"""End to end with real processes: ``keyward server``, ``keyward daemon``, real sshd hosts.

rita (a member) requests ``devops`` through the CLI signed with her key; bob (an approver
through the role ``security``) gets the webhook and approves through the CLI; rita gets the
webhook; the daemon deploys her key and the real ``ssh`` client logs in within seconds of
the approval; when the approved minute runs out the daemon removes the key (``ssh``
refused), records ``access.expire`` and rita gets that webhook too. A key of hers that
expires in five days gets her one renewal reminder from the daemon, however many rounds run.

The server runs with a fixed clock (``KEYWARD_NOW``) set so that the shortest duration it
allows (one minute) from the approval ends ``WINDOW`` seconds after the server started: the
expiry is driven by the clock, not by waiting a minute. On both registry backends: SQLite
(the daemon polls the chain head) and PostgreSQL (LISTEN/NOTIFY).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from keyward.testing.fleet import FleetHost
from keyward.testing.ssh_client import can_login
from tests.agent_env import AgentEnv
from tests.cli_runner import Keyward
from tests.server_env import _wait_listening, free_port, start_server, stop
from tests.test_daemon import Daemon, wait_until
from tests.webhook_receiver import Received, receiver

HOST = "127.0.0.26"
WINDOW = 15.0  # seconds from the server's start to the end of the approved minute
DEPLOY_BOUND = 10.0  # seconds from the approval to a working ssh login (generous)
SECRET = b"e2e-webhook-secret-0123456789abcdef"


def seconds_to_login(
    env: AgentEnv, host: FleetHost, person: str, since: float, bound: float, daemon: Daemon
) -> float:
    """Seconds from ``since`` (monotonic) until ``person``'s key logs in to ``host`` with the
    real ssh client, polled every 50 ms (finer than ``wait_until``: this is a measurement);
    fails with the daemon's log after ``bound`` seconds."""
    while time.monotonic() - since < bound:
        if can_login(host, env.deploy, env.key(person), env.inventory / "known_hosts"):
            return time.monotonic() - since
        time.sleep(0.05)
    raise AssertionError(f"no login within {bound}s:\n{daemon.logs()}")


def verified(post: Received) -> dict[str, Any]:
    timestamp = post.headers["X-Keyward-Timestamp"]
    mac = hmac.new(SECRET, timestamp.encode() + b"." + post.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(post.headers["X-Keyward-Signature"], "sha256=" + mac)
    value: dict[str, Any] = json.loads(post.body)
    return value


def event_for(event: str, person: str) -> Callable[[Received], bool]:
    def match(post: Received) -> bool:
        body = post.json()
        return bool(
            body["event"] == event and [r["username"] for r in body["recipients"]] == [person]
        )

    return match


def test_request_approve_login_and_expiry_with_real_processes(
    env_any_db: AgentEnv, tmp_path: Path
) -> None:
    env = env_any_db
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    host = env.hosts[0]
    with receiver("127.0.0.1") as hook:
        settings = env.inventory / "keyward.toml"
        settings.write_text(
            settings.read_text()
            + '\n[server]\nmin_attestation = "admin"\n\n[server.approvers]\n'
            + 'devops = ["role:security"]\n\n'
            + f'[notify]\nwebhook = "{hook.url}"\nsecret_file = "{secret}"\n'
        )
        env.person_with_key("rita")
        # A second key of rita's that expires in 5 days: the daemon reminds her, once.
        soon = (datetime.now(UTC) + timedelta(days=5)).strftime("%Y-%m-%d")
        env.kw.ok("key", "add", "rita", str(env.pub("rita-old")), "--expires", soon)
        env.person_with_key("bob", "security")
        env.kw.ok("role", "add", "devops")
        assert not env.can_login(host, env.deploy, "rita")

        daemon = Daemon(env, tmp_path / "daemon.log", "--verify-interval", "60")
        daemon.start()
        server = None
        try:
            wait_until(lambda: "daemon_started" in daemon.logs(), what="the daemon")
            port = free_port(HOST)
            started = datetime.now(UTC)
            fixed = started - timedelta(seconds=60) + timedelta(seconds=WINDOW)
            server, server_log = start_server(
                tmp_path,
                env.kw.db_url,
                env.inventory,
                HOST,
                port,
                environ={"KEYWARD_NOW": fixed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
            )
            _wait_listening(HOST, port, server, server_log)

            def as_person(person: str) -> Keyward:
                return Keyward(
                    "sqlite:////nonexistent/no-database.db",
                    str(env.inventory),
                    env={
                        "KEYWARD_URL": f"http://{HOST}:{port}",
                        "KEYWARD_KEY": str(env.key(person)),  # a private key file
                        "KEYWARD_STATE_DIR": str(tmp_path / "home" / person),
                    },
                )

            rid = (
                as_person("rita")
                .ok(
                    "access",
                    "request",
                    "devops",
                    "--env",
                    "test",
                    "--for",
                    "1m",
                    "--reason",
                    "INC-42",
                    "--json",
                )
                .json()["id"]
            )
            asked = verified(hook.wait_for(event_for("access_requested", "bob")))
            wanted = {"request_id": rid, "person": "rita", "role": "devops"}
            wanted |= {"environment": "test", "reason": "INC-42", "status": "pending"}
            assert wanted.items() <= asked["details"].items()

            as_person("bob").ok("access", "approve", str(rid))
            approved_at = time.monotonic()
            told = verified(hook.wait_for(event_for("access_approved", "rita")))
            assert told["details"]["decided_by"] == "bob"

            # The key arrives on the host and the real ssh client logs in.
            deploy = seconds_to_login(env, host, "rita", approved_at, DEPLOY_BOUND, daemon)
            print(f"\napproval -> ssh login: {deploy:.2f} s ({env.kw.db_url.split(':')[0]})")
            until = fixed + timedelta(seconds=60)
            assert datetime.now(UTC) < until, "the machine was too slow for WINDOW"

            # The approved minute runs out by the clock: the daemon removes the key.
            refused = wait_until(
                lambda: not env.can_login(host, env.deploy, "rita"),
                timeout=WINDOW + 20,
                what="the expired access to be removed",
            )
            late = (datetime.now(UTC) - until).total_seconds()
            print(f"refused {late:.2f} s after until (waited {refused:.1f} s)")
            assert late < 10
            expired = verified(hook.wait_for(event_for("access_expired", "rita"), timeout=20))
            assert expired["details"]["request_id"] == rid
            events = env.kw.ok("audit", "log", "--json", "--action", "access.expire").json()
            assert [e["details"]["request_id"] for e in events] == [rid]
            reminded = verified(hook.wait_for(event_for("key_expiring", "rita")))
            assert reminded["details"]["fingerprint"] in reminded["text"]
            assert daemon.alive()
        finally:
            if server is not None:
                stop(server)
            daemon.stop()
    sent = [
        json.loads(line)
        for line in (server_log.read_text() + daemon.logs()).splitlines()
        if line.startswith("{") and "notification_" in line
    ]
    assert {(e["event"], e["notify_event"]) for e in sent} == {
        ("notification_sent", "access_requested"),
        ("notification_sent", "access_approved"),
        ("notification_sent", "access_expired"),
        ("notification_sent", "key_expiring"),
    }
    # Many sweeps ran (one per recompute): each notification went out exactly once.
    assert len(sent) == 4, sent
    assert len([p for p in hook.posts if p.json()["event"] == "key_expiring"]) == 1
