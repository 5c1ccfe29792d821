"""Everyday login review: one alert cleared by id, alert filters, keyward's own sessions hidden.

Real sshd hosts and the real ssh client, as in test_logins.py.
"""

from __future__ import annotations

import dataclasses

from tests.agent_env import AgentEnv
from tests.journal_standin import use_journal
from tests.test_logins import login, logins


def test_one_alert_cleared_by_id_and_its_failure_mode_with_it(env: AgentEnv) -> None:
    env.rewrite_inventory(
        dataclasses.replace(
            env.spec,
            policy=(
                "failed_login_threshold = 3",
                "failed_login_window_minutes = 10",
                'failure_mode = "suspend"',
            ),
        )
    )
    env.person_with_key("bob", "devops")
    host = env.hosts[0]
    use_journal(env, host)
    env.kw.ok("reconcile")
    for _ in range(5):  # bob's key on an account he was never granted
        assert login(env, host, env.app, "bob", "127.0.0.9") == 255
    for _ in range(5):  # a key nobody registered
        assert login(env, host, env.deploy, "mallory", "127.0.0.5") == 255
    env.kw.ok("reconcile")
    assert not env.can_login(host, env.deploy, "bob")  # failure mode: suspended

    bursts = env.kw.ok("alerts", "--open", "--kind", "failed_logins", "--json").json()
    unknown = [a for a in bursts if a["person"] is None]
    bobs = [a for a in bursts if a["person"] == "bob"]
    assert len(unknown) == 1 and unknown[0]["host"] == host.name and len(bobs) == 1
    assert env.kw.ok("alerts", "--person", "bob", "--json").json() == bobs
    # --host finds both: the unknown key's alert by its host, bob's by the hosts it spans.
    on_host = env.kw.ok("alerts", "--kind", "failed_logins", "--host", host.name, "--json")
    assert sorted(a["id"] for a in on_host.json()) == sorted(a["id"] for a in bursts)
    assert env.kw.ok("alerts", "--host", env.hosts[2].name, "--json").json() == []

    # The unknown key's alert, which 'person clear-alert' cannot reach, is cleared by id;
    # bob's failure mode belongs to his own alert and stays.
    out = env.kw.ok("alerts", "clear", str(unknown[0]["id"]), "--reason", "a scanner", "--json")
    assert out.json()["status"] == "cleared" and out.json()["failure_mode_cleared"] is False
    assert out.json()["clear_reason"] == "a scanner"
    env.kw.ok("reconcile")
    assert not env.can_login(host, env.deploy, "bob")
    again = env.kw.fails("alerts", "clear", str(unknown[0]["id"]), "--reason", "twice")
    assert "already cleared" in again.err
    assert "no alert 999" in env.kw.fails("alerts", "clear", "999", "--reason", "x").err

    out = env.kw.ok("alerts", "clear", str(bobs[0]["id"]), "--reason", "bob mistyped")
    assert "failure mode ended" in out.out
    env.kw.ok("reconcile")
    assert env.can_login(host, env.deploy, "bob")
    assert env.kw.ok("alerts", "--open", "--kind", "failed_logins", "--json").json() == []
    cleared = env.kw.ok("audit", "log", "--action", "alert.clear", "--json").json()
    assert [(e["subject_kind"], e["subject"]) for e in cleared] == [
        ("host", host.name),
        ("person", "bob"),
    ]
    assert cleared[1]["details"]["failure_mode_cleared"] is True


def test_logins_hides_keyward_own_sessions_unless_all(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    assert login(env, env.hosts[0], env.deploy, "alice", "127.0.0.2") == 0
    env.kw.ok("reconcile")
    env.kw.ok("reconcile")
    everything = logins(env, "--all")
    assert {e["person"] for e in everything} == {"alice", "keyward-agent"}
    shown = logins(env)
    assert [e["person"] for e in shown] == ["alice"]
    assert "keyward-agent" not in env.kw.ok("logins").out


def test_rehire_keeps_history_and_old_keys_revoked(env_any_db: AgentEnv) -> None:
    env = env_any_db
    old_fp = env.person_with_key("carol", "devops")
    host = env.hosts[0]
    env.kw.ok("reconcile")
    assert env.kw("offboard", "carol", "--reason", "left (HR-1)").code == 0
    assert not env.can_login(host, env.deploy, "carol")
    err = env.kw.fails("person", "add", "carol", "--name", "Carol").err
    assert "person rehire carol" in err  # the username is taken, and the error says what to do

    out = env.kw.ok("person", "rehire", "carol", "--reason", "back (HR-9)", "--json").json()
    assert out["status"] == "active"
    assert [p["ended_at"] is None for p in out["periods"]] == [False, True]
    assert "is active" in env.kw.fails("person", "rehire", "carol", "--reason", "x").err
    # The earlier period's key stays revoked: it cannot be added back, and deploys nowhere.
    assert "already registered" in env.kw.fails("key", "add", "carol", str(env.pub("carol"))).err
    env.kw.ok("reconcile")
    assert not env.can_login(host, env.deploy, "carol")
    # A new key and a new grant, as for a new person.
    env.kw.ok("key", "add", "carol", str(env.pub("dave")), "--attest", "admin")
    env.kw.ok("role", "grant", "devops", "carol", "--reason", "back", actor="security")
    env.kw.ok("reconcile")
    assert env.can_login(host, env.deploy, "dave")
    env.kw.ok("reconcile")  # collects that login
    mine = [e for e in logins(env, "--person", "carol") if e["outcome"] == "accepted"]
    assert mine and all(e["fingerprint"] != old_fp for e in mine)
    # A login with the new key is not "after offboarding": that was the earlier period.
    kinds = {a["kind"] for a in env.kw.ok("alerts", "--person", "carol", "--json").json()}
    assert "login_after_offboarding" not in kinds

    shown = env.kw.ok("person", "show", "carol", "--json").json()
    assert len(shown["periods"]) == 2 and shown["periods"][0]["ended_at"] is not None
    assert [k["status"] for k in shown["keys"]].count("revoked") == 1
    assert "employed: " in env.kw.ok("person", "show", "carol").out
    actions = [e["action"] for e in env.kw.ok("audit", "log", "--person", "carol", "--json").json()]
    assert actions.index("person.add") < actions.index("person.offboard")
    assert actions.index("person.offboard") < actions.index("person.rehire")
    env.kw.ok("audit", "verify")


def test_hosts_scan_and_inventory_check_json(env: AgentEnv) -> None:
    known = env.inventory / "known_hosts"
    a, b = env.hosts[0], env.hosts[1]
    pinned_b = [ln for ln in known.read_text().splitlines() if b.name in ln or str(b.port) in ln]
    known.write_text("\n".join(pinned_b) + "\n")  # a is seen for the first time, b is pinned
    out = env.kw.ok("hosts", "scan", "--write", "--json", a.name, b.name)
    report = {h["host"]: h for h in out.json()["hosts"]}  # stdout is the JSON alone
    assert report[a.name]["status"] == "new" and report[a.name]["written"] is True
    assert report[a.name]["line"] == a.known_hosts_line()
    assert report[b.name]["status"] == "pinned" and report[b.name]["written"] is False
    assert out.json()["failures"] == []
    assert "added 1 host keys" in out.err
    assert a.known_hosts_line() in known.read_text()

    check = env.kw.ok("inventory", "check", "--json").json()
    assert check["ok"] is True and check["problems"] == []
    assert [(e["name"], sorted(e["hosts"])) for e in check["environments"]] == [
        ("test", sorted(h.name for h in env.hosts))
    ]
    broken = next(env.inventory.glob("*.toml"))
    for path in env.inventory.glob("*.toml"):
        if "[[hosts]]" in path.read_text():
            broken = path
    broken.write_text(broken.read_text() + "\n[[hosts]]\nport = 'x'\n")
    bad = env.kw.fails("inventory", "check", "--json")
    assert bad.json()["ok"] is False and bad.json()["environments"] == []
    assert all(p["file"] and p["message"] for p in bad.json()["problems"])
    assert str(bad.json()["problems"][0]["message"]) in bad.err
