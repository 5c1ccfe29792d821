"""The whole path with real processes and a real browser: CLI request, web approval, ssh.

rita (a member) requests two hours of ``devops`` on ``prod`` through the CLI signed with her
key; bob (an approver through the role ``security``) signs in to the web page in headless
Chromium with the terminal code (the real ``keyward auth browser CODE``) and clicks approve
in the approval queue; the ``keyward daemon`` deploys rita's key and the real ``ssh`` client
logs in within seconds; when the two hours run out the daemon removes the key and ``ssh`` is
refused.  The audit log names bob, the proven identity, as the approver.

The two hours are driven by the clock, not waited for: the server (and the people's CLI,
whose signatures must fall within the server's skew) run ``KEYWARD_CLOCK_SKEW`` seconds
behind, so that the ``until`` they compute at the approval, two hours on, falls ``WINDOW``
seconds after the approval in real time; the daemon and the hosts keep the real clock.  A
moving clock rather than a fixed ``KEYWARD_NOW`` keeps the window measured from the click,
however long Chromium takes to start.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keyward.clock import as_utc
from keyward.registry.models import AccessRequest
from keyward.registry.store import Registry
from tests.agent_env import AgentEnv
from tests.cli_runner import Keyward
from tests.server_env import _wait_listening, free_port, start_server, stop
from tests.test_daemon import Daemon, wait_until
from tests.test_notify_e2e import seconds_to_login
from tests.test_web import chromium, click, wait_for

pytestmark = pytest.mark.timeout(150)

HOST = "127.0.0.27"
TWO_HOURS = 2 * 3600
WINDOW = 15.0  # seconds from the approval to the end of the approved two hours
DEPLOY_BOUND = 15.0  # seconds from the approval to a working ssh login (generous)
SKEW = str(-(TWO_HOURS - WINDOW))  # the server's and the people's clock, behind real time


def test_cli_request_browser_approval_ssh_login_and_refusal_after_two_hours(
    env: AgentEnv, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    (env.inventory / f"{env.spec.environment}.toml").unlink()
    env.rewrite_inventory(replace(env.spec, environment="prod", min_attestation="admin"))
    settings = env.inventory / "keyward.toml"
    settings.write_text(
        settings.read_text()
        + '\n[server]\nmin_attestation = "admin"\n\n[server.approvers]\n'
        + 'devops = ["role:security"]\n'
    )
    host = env.hosts[0]
    env.person_with_key("rita")
    env.person_with_key("bob", "security")
    env.kw.ok("role", "add", "devops")

    daemon = Daemon(env, tmp_path / "daemon.log", "--verify-interval", "60")
    daemon.start()
    server = None
    try:
        wait_until(lambda: "daemon_started" in daemon.logs(), what="the daemon")
        port = free_port(HOST)
        server, server_log = start_server(
            tmp_path,
            env.kw.db_url,
            env.inventory,
            HOST,
            port,
            environ={"KEYWARD_CLOCK_SKEW": SKEW},
        )
        _wait_listening(HOST, port, server, server_log)
        url = f"http://{HOST}:{port}"

        def as_person(person: str) -> Keyward:
            """Their shell: no database, the server, their key; the actor variable lies."""
            return Keyward(
                "sqlite:////nonexistent/no-database.db",
                str(env.inventory),
                env={
                    "KEYWARD_URL": url,
                    "KEYWARD_KEY": str(env.key(person)),
                    "KEYWARD_STATE_DIR": str(tmp_path / "home" / person),
                    "KEYWARD_ACTOR": "mallory",
                    "KEYWARD_CLOCK_SKEW": SKEW,
                },
            )

        asked = as_person("rita").ok(
            "access",
            "request",
            "devops",
            "--env",
            "prod",
            "--for",
            "2h",
            "--reason",
            "INC-42",
            "--json",
        )
        rid = asked.json()["id"]
        assert not env.can_login(host, env.deploy, "rita")  # pending: no access yet

        with chromium(tmp_path / "bob") as bob:
            bob.get(url + "/web/")
            command = wait_for(bob, "code").text
            assert re.fullmatch(r"keyward auth browser [A-Z2-7]{4}-[A-Z2-7]{4}", command)
            signed_in = as_person("bob").ok("auth", "browser", command.split()[-1]).out
            assert " as bob with key SHA256:" in signed_in
            assert wait_for(bob, "user").text == "bob"
            bob.get(url + "/web/queue")
            assert "rita" in wait_for(bob, f"request-{rid}").text
            clicked = time.monotonic()
            click(bob, f"approve-{rid}")
            approved = time.monotonic()
            wait_for(bob, "user")
            assert not bob.find_elements(By.ID, f"request-{rid}")  # decided: gone

        # The key arrives on the host and the real ssh client logs in.
        login = seconds_to_login(env, host, "rita", approved, DEPLOY_BOUND, daemon)
        print(f"\nclick {approved - clicked:.2f} s; approval -> ssh login {login:.2f} s")

        (row,) = [r for r in env.kw.ok("access", "list", "--json").json() if r["id"] == rid]
        assert (row["status"], row["decided_by"], row["environment"]) == ("approved", "bob", "prod")
        registry = Registry.open(env.kw.db_url)
        try:
            with registry.read() as session:
                stored = session.get(AccessRequest, rid)
                assert stored is not None and stored.until and stored.decided_at
                until, decided = as_utc(stored.until), as_utc(stored.decided_at)
        finally:
            registry.dispose()
        assert (until - decided).total_seconds() == TWO_HOURS
        # Two hours on from the server's clock at the click: real time on this side.
        left = (until - datetime.now(UTC)).total_seconds()
        assert 0 < left <= WINDOW, f"{left:.1f} s left: the machine was too slow for WINDOW"

        # The two hours run out by the clock: the daemon removes the key, ssh is refused.
        assert env.can_login(host, env.deploy, "rita")
        wait_until(
            lambda: not env.can_login(host, env.deploy, "rita"),
            timeout=WINDOW + 20,
            what="the expired access to be removed",
        )
        late = (datetime.now(UTC) - until).total_seconds()
        print(f"until -> ssh refused {late:.2f} s")
        assert 0 < late < 10  # not before the two hours ended, and soon after
        assert daemon.alive()
    finally:
        if server is not None:
            stop(server)
        daemon.stop()

    events = env.kw.ok("audit", "log", "--json").json()
    mine = [e for e in events if e["details"].get("request_id") == rid]
    assert [(e["action"], e["actor"]) for e in mine][:2] == [
        ("access.request", "rita"),
        ("access.approve", "bob"),  # the signed-in browser's proven identity
    ]
    assert "access.expire" in [e["action"] for e in mine[2:]]
    assert "mallory" not in {e["actor"] for e in events}
