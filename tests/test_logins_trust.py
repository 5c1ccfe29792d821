"""Which logs keyward believes, and logins after an offboarding, on the real sshd fleet.

Anyone with a shell on a host can write sshd-looking lines into a syslog file (``logger -t
'sshd[1]' 'Accepted publickey for root ...'``); here such lines are appended to the host's
log file, which is what rsyslog would do with them.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from tests.agent_env import AgentEnv
from tests.journal_standin import use_journal
from tests.test_logins import login, logins

SUSPEND = ("failed_login_threshold = 3", 'failure_mode = "suspend"')


def forge(env: AgentEnv, fingerprint: str, failures: int = 6) -> None:
    """Lines a local user could have logger write: a root login and failures with a
    colleague's key fingerprint, from an address of their choosing."""
    stamp = datetime.now(UTC).strftime("%b %e %H:%M:%S")
    prefix = f"{stamp} {env.hosts[0].name} sshd[1]: "
    lines = [f"Accepted publickey for root from 198.51.100.7 port 4242 ssh2: ED25519 {fingerprint}"]
    lines += [
        f"Failed publickey for {env.deploy} from 198.51.100.7 port {5000 + n} ssh2: "
        f"ED25519 {fingerprint}"
        for n in range(failures)
    ]
    with open(env.hosts[0].log_file, "a") as log:
        log.write("".join(prefix + line + "\n" for line in lines))


def audit_actions(env: AgentEnv, person: str) -> list[str]:
    events = env.kw.ok("audit", "log", "--json", "--person", person).json()
    return [e["action"] for e in events]


def test_forged_lines_in_an_untrusted_file_are_not_attributed(env: AgentEnv) -> None:
    env.rewrite_inventory(dataclasses.replace(env.spec, policy=SUSPEND, auth_logs_trusted=False))
    fingerprint = env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    forge(env, fingerprint)
    result = env.kw("reconcile")
    assert result.code == 0, str(result)
    assert logins(env) == []  # not stored: not even alice's name next to a forged login
    assert env.kw.ok("alerts", "--json").json() == []
    assert "person.failure-mode" not in audit_actions(env, "alice")
    assert env.can_login(env.hosts[0], env.deploy, "alice")
    assert '"logins_untrusted_source"' in result.err and "file:" in result.err
    # The file's position moved on: marking it trusted later does not replay what was read.
    env.rewrite_inventory(dataclasses.replace(env.spec, auth_logs_trusted=True))
    env.kw.ok("reconcile")
    assert "198.51.100.7" not in {e["source"] for e in logins(env)}


def test_a_trusted_file_is_attributed_but_never_triggers_failure_mode(env: AgentEnv) -> None:
    env.rewrite_inventory(dataclasses.replace(env.spec, policy=SUSPEND))  # files trusted
    fingerprint = env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    forge(env, fingerprint)
    env.kw.ok("reconcile")
    mine = logins(env, "--person", "alice")
    assert ("accepted", "root", "198.51.100.7") in {
        (e["outcome"], e["account"], e["source"]) for e in mine
    }
    kinds = [a["kind"] for a in env.kw.ok("alerts", "--open", "--json").json()]
    assert "failed_logins" in kinds  # the operator vouched for the file: alerts are raised
    assert "person.failure-mode" not in audit_actions(env, "alice")
    for host in env.hosts:
        assert env.can_login(host, env.deploy, "alice")


def test_forged_journal_text_is_still_a_failure_only_when_sshd_logged_it(
    env: AgentEnv,
) -> None:
    """The journal path end to end: real failures logged by sshd put bob into failure mode,
    while the same number of failures forged into another host's untrusted file do not."""
    env.rewrite_inventory(dataclasses.replace(env.spec, policy=SUSPEND, auth_logs_trusted=False))
    fingerprint = env.person_with_key("alice", "devops")
    env.person_with_key("bob", "devops")
    journal_host = env.hosts[1]
    use_journal(env, journal_host)
    env.kw.ok("reconcile")
    forge(env, fingerprint)  # into hosts[0]'s file, not trusted
    for _ in range(5):
        assert login(env, journal_host, env.app, "bob", "127.0.0.9") == 255
    env.kw.ok("reconcile")
    assert {(e["person"], e["host"]) for e in logins(env, "--failed")} == {
        ("bob", journal_host.name)
    }
    assert "person.failure-mode" in audit_actions(env, "bob")
    assert "person.failure-mode" not in audit_actions(env, "alice")
    assert not env.can_login(env.hosts[0], env.deploy, "bob")
    assert env.can_login(env.hosts[0], env.deploy, "alice")


def test_a_login_after_offboarding_is_alerted_and_in_the_evidence(env_any_db: AgentEnv) -> None:
    env = env_any_db
    fingerprint = env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    before = env.hosts[0]
    assert login(env, before, env.deploy, "alice", "127.0.0.2") == 0
    env.kw.ok("reconcile")  # collected while she still worked here
    down = env.hosts[2]
    env.fleet.stop_host(down.name)
    assert env.kw("offboard", "alice", "--reason", "left").code == 1  # down is unconfirmed
    env.fleet.start_host(down.name)
    # The host came back with her key still on it, before the agent reached it again.
    assert login(env, down, env.deploy, "alice", "127.0.0.3") == 0
    env.kw.ok("reconcile")
    assert not env.can_login(down, env.deploy, "alice")
    alerts = [
        a
        for a in env.kw.ok("alerts", "--open", "--json").json()
        if a["kind"] == "login_after_offboarding"
    ]
    assert [(a["person"], a["host"], a["account"]) for a in alerts] == [
        ("alice", down.name, env.deploy)
    ]
    assert alerts[0]["details"]["addresses"] == ["127.0.0.3"]
    evidence = env.kw.ok("report", "offboarding", "alice", "--format", "json").json()
    assert [
        (e["host"], e["account"], e["address"], e["fingerprint"])
        for e in evidence["logins_after_offboarding"]
    ] == [(down.name, env.deploy, "127.0.0.3", fingerprint)]
    report = env.kw.ok("report", "offboarding", "alice").out
    assert "## Logins after the offboarding began" in report
    assert f"| {down.name} | {env.deploy} | 127.0.0.3 |" in report


def test_restrict_allows_only_addresses_the_journal_saw(env_any_db: AgentEnv) -> None:
    """A trusted file can still not widen a failure mode: a forged login from an address
    of the forger's choosing does not land in bob's from= list."""
    env = env_any_db
    env.rewrite_inventory(
        dataclasses.replace(
            env.spec, policy=("failed_login_threshold = 3", 'failure_mode = "restrict"')
        )
    )
    fingerprint = env.person_with_key("bob", "devops")
    journal_host = env.hosts[1]
    use_journal(env, journal_host)
    env.kw.ok("reconcile")
    assert login(env, journal_host, env.deploy, "bob", "127.0.0.2") == 0
    forge(env, fingerprint, failures=0)  # "bob" from 198.51.100.7, in hosts[0]'s trusted file
    env.kw.ok("reconcile")
    assert {e["source"] for e in logins(env, "--person", "bob")} == {"127.0.0.2", "198.51.100.7"}
    for _ in range(5):
        assert login(env, journal_host, env.app, "bob", "127.0.0.9") == 255
    env.kw.ok("reconcile")
    (mode,) = [
        e["details"]
        for e in env.kw.ok("audit", "log", "--json", "--person", "bob").json()
        if e["action"] == "person.failure-mode"
    ]
    assert (mode["mode"], mode["addresses"]) == ("restrict", ["127.0.0.2"])
    assert 'from="127.0.0.2"' in env.file(journal_host, env.deploy).read_text()
