"""Who actually logged in: attribution, multi-computer warnings, failed-login failure mode.

Real sshd hosts log with LogLevel VERBOSE to a file per host; logins are made with the real
ssh client from chosen loopback source addresses.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
from pathlib import Path

from keyward.testing.fleet import FleetHost
from keyward.testing.ssh_client import ssh_command
from tests.agent_env import AgentEnv
from tests.journal_standin import use_journal


def ssh_from(
    env: AgentEnv, host: FleetHost, user: str, key: str, source: str, command: str = "true"
) -> subprocess.Popen[bytes]:
    argv = ssh_command(host, user, env.key(key), env.inventory / "known_hosts", command)
    argv[1:1] = ["-o", f"BindAddress={source}"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def login(env: AgentEnv, host: FleetHost, user: str, key: str, source: str) -> int:
    return ssh_from(env, host, user, key, source).wait(timeout=30)


def logins(env: AgentEnv, *args: str) -> list[dict]:  # type: ignore[type-arg]
    return env.kw.ok("logins", "--json", *args).json()  # type: ignore[no-any-return]


def test_logins_are_attributed_and_collected_incrementally(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    h1, h2 = env.hosts[0], env.hosts[1]
    assert login(env, h1, env.deploy, "alice", "127.0.0.2") == 0
    assert login(env, h2, "root", "alice", "127.0.0.2") == 0
    assert login(env, h1, env.deploy, "mallory", "127.0.0.5") == 255
    env.kw.ok("reconcile")
    accepted = [e for e in logins(env) if e["outcome"] == "accepted" and e["person"] == "alice"]
    assert sorted((e["host"], e["account"], e["source"]) for e in accepted) == sorted(
        [
            (h1.name, env.deploy, "127.0.0.2"),
            (h2.name, "root", "127.0.0.2"),
        ]
    )
    assert all(e["session_end"] for e in accepted)  # paired with the disconnect
    failed = logins(env, "--failed")
    assert [(e["host"], e["account"], e["attribution"], e["source"]) for e in failed] == [
        (h1.name, env.deploy, "unknown key", "127.0.0.5")
    ]
    assert [e["host"] for e in logins(env, "--person", "alice", "--host", h2.name)] == [h2.name]
    people = [e for e in logins(env) if e["person"] != "keyward-agent"]
    assert {e["person"] for e in logins(env)} == {"alice", None}  # keyward's own: --all
    assert {e["person"] for e in logins(env, "--all")} == {"alice", "keyward-agent", None}
    env.kw.ok("reconcile")
    again = [e for e in logins(env) if e["person"] != "keyward-agent"]
    assert again == people  # a second collection stores no duplicates
    # The access review shows the last login per person, host and account.
    review = env.kw.ok("report", "access", "--format", "json").json()
    last = {(r["host"], r["account"]): r["last_login"] for r in review if r["person"] == "alice"}
    assert last[(h1.name, env.deploy)] is not None
    assert last[(env.hosts[2].name, env.deploy)] is None  # a grant nobody uses


def test_collection_survives_log_rotation(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    host = env.hosts[0]
    assert login(env, host, env.deploy, "alice", "127.0.0.2") == 0
    env.kw.ok("reconcile")
    assert len(logins(env, "--person", "alice")) == 1
    # Rotate: sshd keeps writing to the renamed file until it is restarted.
    log = host.log_file
    os.rename(log, f"{log}.1")
    log.write_text("")
    assert login(env, host, env.deploy, "alice", "127.0.0.3") == 0  # lands in sshd.log.1
    env.fleet.stop_host(host.name)
    env.fleet.start_host(host.name)
    assert login(env, host, env.deploy, "alice", "127.0.0.4") == 0  # lands in the new file
    env.kw.ok("reconcile")
    sources = sorted(e["source"] for e in logins(env, "--person", "alice"))
    assert sources == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def test_same_key_from_two_computers_at_once_raises_a_warning(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    host = env.hosts[0]
    first = ssh_from(env, host, env.deploy, "alice", "127.0.0.2", "sleep 3")
    second = ssh_from(env, host, env.deploy, "alice", "127.0.0.3", "sleep 1")
    assert second.wait(timeout=30) == 0 and first.wait(timeout=30) == 0
    env.kw.ok("reconcile")
    kinds = {a["kind"]: a for a in env.kw.ok("alerts", "--open", "--json").json()}
    assert "multi_source" in kinds
    assert kinds["multi_source"]["person"] == "alice"
    assert kinds["multi_source"]["details"]["addresses"] == ["127.0.0.2", "127.0.0.3"]
    # One after the other from two addresses is not "at the same time".
    env.kw.ok("person", "clear-alert", "alice", "--reason", "checked with alice")
    assert login(env, host, env.deploy, "alice", "127.0.0.2") == 0
    assert login(env, host, env.deploy, "alice", "127.0.0.3") == 0
    env.kw.ok("reconcile")
    assert [a["kind"] for a in env.kw.ok("alerts", "--open", "--json").json()] == []


def test_a_key_used_from_a_new_address_raises_one_alert(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    h1, h2 = env.hosts[0], env.hosts[1]
    assert login(env, h1, env.deploy, "alice", "127.0.0.2") == 0
    env.kw.ok("reconcile")
    assert env.kw.ok("alerts", "--open", "--json").json() == []  # a key's first address
    # Another host, same address: known. Then a new address, in a later collection.
    assert login(env, h2, env.deploy, "alice", "127.0.0.2") == 0
    env.kw.ok("reconcile")
    assert env.kw.ok("alerts", "--open", "--json").json() == []
    assert login(env, h2, "root", "alice", "127.0.0.6") == 0
    env.kw.ok("reconcile")
    alerts = env.kw.ok("alerts", "--open", "--json").json()
    assert [(a["kind"], a["person"], a["details"]["address"]) for a in alerts] == [
        ("new_source", "alice", "127.0.0.6")
    ]
    assert alerts[0]["details"]["known_addresses"] == ["127.0.0.2"]
    # The address is remembered: using it again raises nothing new.
    env.kw.ok("person", "clear-alert", "alice", "--reason", "alice's new laptop")
    assert login(env, h1, env.deploy, "alice", "127.0.0.6") == 0
    env.kw.ok("reconcile")
    assert env.kw.ok("alerts", "--open", "--json").json() == []


def test_failed_logins_alert_notify_and_suspend_until_cleared(
    env: AgentEnv, tmp_path: Path
) -> None:
    received = tmp_path / "alert.json"
    notifier = tmp_path / "notify.sh"
    notifier.write_text(f"#!/bin/sh\ncat >> {received}\n")
    notifier.chmod(notifier.stat().st_mode | stat.S_IXUSR)
    env.rewrite_inventory(
        dataclasses.replace(
            env.spec,
            policy=(
                "failed_login_threshold = 3",
                "failed_login_window_minutes = 10",
                'failure_mode = "suspend"',
                f'alert_command = "{notifier}"',
            ),
        )
    )
    env.person_with_key("bob", "devops")
    host = env.hosts[0]
    use_journal(env, host)  # failure mode is entered only on what the journal logged
    env.kw.ok("reconcile")
    assert login(env, host, env.deploy, "bob", "127.0.0.2") == 0
    for _ in range(5):  # bob's key on an account he was never granted
        assert login(env, host, env.app, "bob", "127.0.0.9") == 255
    result = env.kw("reconcile")
    assert result.code == 0, str(result)
    alerts = env.kw.ok("alerts", "--open", "--json").json()
    failed = [a for a in alerts if a["kind"] == "failed_logins"]
    assert len(failed) == 1 and failed[0]["person"] == "bob"
    assert failed[0]["notified_at"] and failed[0]["notify_error"] is None
    assert '"kind": "failed_logins"' in received.read_text()
    assert '"alert_raised"' in result.err  # and always in the structured log
    # Failure mode: bob's access is suspended on every host at once.
    for h in env.hosts:
        assert not env.can_login(h, env.deploy, "bob")
    actions = [e["action"] for e in env.kw.ok("audit", "log", "--json", "--person", "bob").json()]
    assert "alert.raise" in actions and "person.failure-mode" in actions
    env.kw.ok("person", "clear-alert", "bob", "--reason", "bob mistyped the account")
    env.kw.ok("reconcile")
    assert env.can_login(host, env.deploy, "bob")
    assert env.kw.ok("alerts", "--open", "--json").json() == []


def test_plan_warns_when_sshd_does_not_log_fingerprints(env: AgentEnv) -> None:
    plan = env.kw("plan", "--json").json()
    assert all(r["warnings"] == [] for r in plan)  # the fleet runs LogLevel VERBOSE
    quiet = env.hosts[0]
    config = Path(str(quiet.sshd_config) + ".info")
    config.write_text(quiet.sshd_config.read_text().replace("LogLevel VERBOSE", "LogLevel INFO"))
    inventory = env.inventory / "test.toml"
    inventory.write_text(
        inventory.read_text().replace(
            f'sshd_config = "{quiet.sshd_config}"', f'sshd_config = "{config}"'
        )
    )
    plan = {r["host"]: r for r in env.kw("plan", "--json").json()}
    assert any("LogLevel is INFO" in w for w in plan[quiet.name]["warnings"])
    assert plan[env.hosts[1].name]["warnings"] == []
    assert "warning: sshd LogLevel is INFO" in env.kw("plan").out
