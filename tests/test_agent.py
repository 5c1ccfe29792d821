"""The reconciliation agent against real sshd hosts, proven with a real ssh client."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from keyward.testing.inventory import AccessSpec
from tests.agent_env import AgentEnv


def reconcile(agent: AgentEnv, *args: str, code: int = 0, **kwargs: object) -> list[dict]:  # type: ignore[type-arg]
    result = agent.kw("reconcile", "--json", *args, **kwargs)  # type: ignore[arg-type]
    assert result.code == code, str(result)
    return result.json()  # type: ignore[no-any-return]


def test_granted_key_logs_in_and_others_are_refused(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env.person_with_key("bob")  # registered, but holds no role
    env.person_with_key("carol", "qa")
    results = reconcile(env)
    assert {r["status"] for r in results} == {"pending"} or all(r["error"] is None for r in results)
    for host in env.hosts:
        assert env.can_login(host, env.deploy, "alice")
        assert env.can_login(host, "root", "alice")
        assert not env.can_login(host, env.app, "alice")
        assert not env.can_login(host, env.deploy, "bob")
        assert env.can_login(host, env.app, "carol")
        assert not env.can_login(host, env.deploy, "carol")
        # The agent keeps its own access.
        assert env.can_login(host, "root", env.agent_key)
    line = env.file(env.hosts[0], env.app).read_text().splitlines()[-1]
    assert line.startswith('no-port-forwarding,expiry-time="')
    assert line.endswith(":carol:" + line.split(":carol:")[1])
    assert "carol@laptop" not in line  # user comments never reach servers


def test_second_reconcile_writes_nothing_and_plan_says_in_sync(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    reconcile(env)
    before = {h.name: env.file(h, env.deploy).stat().st_mtime_ns for h in env.hosts}
    second = reconcile(env)
    assert all(not f["written"] for r in second for f in r["files"])
    assert {r["status"] for r in second} == {"in-sync"}
    after = {h.name: env.file(h, env.deploy).stat().st_mtime_ns for h in env.hosts}
    assert before == after
    assert env.kw("plan").code == 0


def test_plan_shows_pending_changes_and_changes_nothing(env: AgentEnv) -> None:
    fp = env.person_with_key("alice", "devops")
    result = env.kw("plan", "--json")
    assert result.code == 3, str(result)
    adds = [c for r in result.json() for f in r["files"] for c in f["changes"]]
    assert {(c["owner"], c["fingerprint"]) for c in adds if c["owner"] == "alice"} == {
        ("alice", fp)
    }
    assert not env.file(env.hosts[0], env.deploy).exists()
    text = env.kw("plan").out
    assert f"+ alice          {fp}  granted" in text


def test_revoked_key_is_removed_and_refused(env: AgentEnv) -> None:
    fp = env.person_with_key("alice", "devops")
    reconcile(env)
    assert env.can_login(env.hosts[0], env.deploy, "alice")
    env.kw.ok("key", "revoke", fp, "--reason", "laptop lost")
    results = reconcile(env)
    reasons = {c["reason"] for r in results for f in r["files"] for c in f["changes"]}
    assert reasons == {"revoked"}
    for host in env.hosts:
        assert not env.can_login(host, env.deploy, "alice")
    events = env.kw.ok("audit", "log", "--json", "--action", "host.remove").json()
    assert {e["details"]["reason"] for e in events} == {"revoked"}
    assert {e["details"]["person"] for e in events} == {"alice"}


def test_lapsed_grant_and_expired_key_are_removed(env: AgentEnv) -> None:
    env.kw.ok("person", "add", "alice", "--name", "Alice")
    env.kw.ok(
        "key",
        "add",
        "alice",
        str(env.pub("alice")),
        "--expires",
        "2099-01-01",
        env={"KEYWARD_NOW": "2098-06-01T00:00:00Z"},
    )
    env.kw.ok("role", "add", "devops")
    env.kw.ok(
        "role",
        "grant",
        "devops",
        "alice",
        "--reason",
        "t",
        "--until",
        "2098-07-01",
        actor="security",
        env={"KEYWARD_NOW": "2098-06-01T00:00:00Z"},
    )
    # Real time is before the (future) "now" used to add the key: run at a simulated time.
    reconcile(env, env={"KEYWARD_NOW": "2098-06-02T00:00:00Z"})
    content = env.file(env.hosts[0], env.deploy).read_text()
    assert 'expiry-time="20980702000000Z"' in content  # the grant's until, earlier than the key's
    lapsed = reconcile(env, env={"KEYWARD_NOW": "2098-07-03T00:00:00Z"})
    reasons = {c["reason"] for r in lapsed for f in r["files"] for c in f["changes"]}
    assert reasons == {"access-ended"}
    assert "alice" not in env.file(env.hosts[0], env.deploy).read_text()


def test_hand_added_key_is_removed_as_drift(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    reconcile(env)
    target = env.file(env.hosts[1], env.deploy)
    with target.open("a") as handle:
        handle.write(env.pub("mallory").read_text())
    assert env.can_login(env.hosts[1], env.deploy, "mallory")
    results = reconcile(env)
    drift = [
        (r["host"], c)
        for r in results
        for f in r["files"]
        for c in f["changes"]
        if c["action"] == "remove"
    ]
    assert [(h, c["reason"], c["owner"]) for h, c in drift] == [(env.hosts[1].name, "drift", None)]
    assert not env.can_login(env.hosts[1], env.deploy, "mallory")
    assert env.can_login(env.hosts[1], env.deploy, "alice")
    events = env.kw.ok("audit", "log", "--json", "--action", "host.drift-removed").json()
    assert len(events) == 1 and events[0]["subject"] == env.hosts[1].name
    status = {s["host"]: s for s in env.kw.ok("status", "--json").json()["hosts"]}
    assert status[env.hosts[1].name]["drift_found"] == 1


def test_changed_host_key_is_refused_and_nothing_written(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    victim = env.hosts[0]
    known = env.inventory / "known_hosts"
    other = env.hosts[1].host_key_pub
    known.write_text(known.read_text().replace(victim.host_key_pub, other, 1))
    results = reconcile(env, code=1)
    by_host = {r["host"]: r for r in results}
    assert "does not match the pinned key" in by_host[victim.name]["error"]
    assert not env.file(victim, env.deploy).exists()
    # The others were still reconciled.
    assert env.can_login(env.hosts[1], env.deploy, "alice")
    assert env.can_login(env.hosts[2], env.deploy, "alice")


def test_unreachable_host_does_not_stop_the_others(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    down = env.hosts[2]
    env.fleet.stop_host(down.name)
    result = env.kw("reconcile")
    assert result.code == 1
    assert f"{down.name}:" in result.out and "cannot connect" in result.out
    assert env.can_login(env.hosts[0], env.deploy, "alice")
    status = {s["host"]: s for s in env.kw.ok("status", "--json").json()["hosts"]}
    assert status[down.name]["last_success"] is None
    assert status[down.name]["last_error"]
    assert status[env.hosts[0].name]["last_success"] is not None
    env.fleet.start_host(down.name)
    reconcile(env)
    assert env.can_login(down, env.deploy, "alice")


def test_planted_symlinks_are_not_followed(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    target = env.base / "root-owned-target"
    target.write_text("precious\n")
    os.chmod(target, 0o644)
    before = target.stat()
    # deploy plants authorized_keys -> a root-owned file; app plants .ssh -> a root-owned dir.
    deploy_file = env.file(env.hosts[0], env.deploy)
    deploy_file.parent.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(deploy_file.parent, env.deploy, env.deploy)
    deploy_file.symlink_to(target)
    app_home = Path(os.path.expanduser(f"~{env.app}"))
    (app_home / ".ssh").symlink_to(env.base)
    env.rewrite_inventory(
        env.spec.__class__(
            **{
                **env.spec.__dict__,
                "access": (*env.spec.access, AccessSpec(roles=("devops",), accounts=(env.app,))),
            }
        )
    )
    results = reconcile(env, code=1)
    errors = [
        (r["host"], f["account"], f["error_code"])
        for r in results
        for f in r["files"]
        if f["error"]
    ]
    # A symlinked .ssh directory is refused and reported; nothing is written through it.
    assert {(a, e) for _, a, e in errors if a == env.app} == {(env.app, "symlink")}
    assert (env.hosts[0].name, env.deploy, "symlink") not in errors
    # A symlink as the file itself is replaced by a real file (rename over the entry, never
    # following it), so sshd cannot keep reading keys through it.
    assert deploy_file.is_file() and not deploy_file.is_symlink()
    assert env.can_login(env.hosts[0], env.deploy, "alice")
    replaced = [
        c
        for r in results
        if r["host"] == env.hosts[0].name
        for f in r["files"]
        if f["account"] == env.deploy
        for c in f["changes"]
    ]
    assert replaced[0]["reason"] == "symlink"
    assert target.read_text() == "precious\n"
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in env.base.iterdir() if p.name.startswith("authorized")) == []
    # Hosts without traps were still reconciled.
    assert env.can_login(env.hosts[1], env.deploy, "alice")


def test_break_glass_and_agent_keys_survive(env: AgentEnv) -> None:
    glass = env.pub("vault").read_text().split()
    spec = env.spec.__class__(
        **{
            **env.spec.__dict__,
            "break_glass": ((("root",), f"{glass[0]} {glass[1]} vault-escrow"),),
        }
    )
    env.rewrite_inventory(spec)
    reconcile(env)
    for host in env.hosts:
        assert env.can_login(host, "root", "vault")
        assert env.can_login(host, "root", env.agent_key)
        root_file = env.file(host, "root").read_text()
        assert ":break-glass:" in root_file and ":agent:" in root_file
    # Nobody holds a role: only those two lines exist on root.
    lines = [
        ln
        for ln in env.file(env.hosts[0], "root").read_text().splitlines()
        if not ln.startswith("#")
    ]
    assert len(lines) == 2


def test_reconcile_on_each_backend_records_status(env_any_db: AgentEnv) -> None:
    env = env_any_db
    env.person_with_key("alice", "devops")
    reconcile(env)
    status = env.kw.ok("status", "--json").json()["hosts"]
    assert {s["host"] for s in status} == {h.name for h in env.hosts}
    assert all(s["last_error"] is None and s["last_success"] for s in status)
    files = status[0]["files"]
    assert any(v["sha256"] for v in files.values())
    assert env.kw.ok("audit", "verify").code == 0
    adds = env.kw.ok("audit", "log", "--json", "--action", "host.add").json()
    assert {e["details"]["person"] for e in adds} >= {"alice"}
    assert all(e["details"]["run_id"] for e in adds)
    json.dumps(adds)


def test_wrong_mode_is_fixed_and_audited(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    reconcile(env)
    path = env.file(env.hosts[0], env.deploy)
    os.chmod(path, 0o666)
    results = reconcile(env)
    actions = {(r["host"], f["account"]): f["action"] for r in results for f in r["files"]}
    assert actions[(env.hosts[0].name, env.deploy)] == "fix-mode"
    assert path.stat().st_mode & 0o777 == 0o600
    assert env.kw.ok("audit", "log", "--json", "--action", "host.fix-mode").json()


def test_hosts_scan_prints_and_pins_host_keys(env: AgentEnv) -> None:
    known = env.inventory / "known_hosts"
    known.write_text("")
    names = [h.name for h in env.hosts]
    refused = env.kw("plan", "--host", names[0])
    assert refused.code == 1 and "not pinned" in refused.out
    out = env.kw.ok("hosts", "scan", *names).out
    for host in env.hosts:
        assert host.known_hosts_line() in out
    assert known.read_text() == ""  # printing alone pins nothing
    env.kw.ok("hosts", "scan", "--write", *names)
    assert sorted(known.read_text().splitlines()) == sorted(h.known_hosts_line() for h in env.hosts)
    assert "pinned" in env.kw.ok("hosts", "scan", names[0]).out
    assert env.kw("plan").code == 3


def test_inventory_check_through_the_cli(env: AgentEnv) -> None:
    summary = env.kw.ok("inventory", "check").out
    assert "1 environment" in summary and "3 hosts" in summary
    (env.inventory / "test.toml").write_text(
        (env.inventory / "test.toml").read_text().replace("port =", "portt =", 1)
    )
    bad = env.kw("inventory", "check")
    assert bad.code == 2
    assert "test.toml: hosts[0]" in bad.err and "portt" in bad.err
    assert "Traceback" not in bad.err
    # Commands that need the inventory refuse with the first problem, changing nothing.
    refused = env.kw("reconcile")
    assert refused.code == 2 and "unknown field 'portt'" in refused.err


def test_pins_are_per_address_and_port(env: AgentEnv) -> None:
    """A key pinned for port 22 or for another port of the same address does not pin this one."""
    victim = env.hosts[0]
    known = env.inventory / "known_hosts"
    lines = [
        ln for ln in known.read_text().splitlines() if not ln.startswith(f"[{victim.address}]")
    ]
    lines.append(f"{victim.address} {victim.host_key_pub}")  # port-22 entry
    lines.append(f"[{victim.address}]:{victim.port + 1} {victim.host_key_pub}")  # other port
    known.write_text("\n".join(lines) + "\n")
    result = env.kw("plan", "--json", "--host", victim.name)
    assert result.code == 1
    assert "not pinned" in result.json()[0]["error"]


def test_agent_identity_must_match_its_public_key(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    other = env.key("not-the-agent")
    (env.inventory / "keyward.toml").write_text(
        (env.inventory / "keyward.toml")
        .read_text()
        .replace(
            f'identity = "{env.agent_key}"',
            f'identity = "{other}"\nidentity_pub = "{env.agent_key}.pub"',
        )
    )
    result = env.kw("reconcile")
    assert result.code == 2 and "does not match" in result.err
    assert not env.file(env.hosts[0], env.deploy).exists()


def test_hostile_options_in_a_hand_edited_file_are_shown_escaped(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    target = env.file(env.hosts[0], env.deploy)
    evil = 'command="\x1b[2K\x1b[1A + alice fake granted" ' + env.pub("eve").read_text()
    with target.open("a") as handle:
        handle.write(evil)
    out = env.kw("plan").out
    assert "\x1b" not in out
    assert "\\x1b[2K" in out
