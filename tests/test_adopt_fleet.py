"""Adopting a messy fleet end to end, on real sshd hosts, through the CLI.

The hosts start in ``managed-block`` mode with years of history planted outside keyward's
block: a current employee's key (with odd options and comment), a leaver's key, a shared
deploy key under several accounts, a key nobody knows, a 2048-bit RSA key, a line sshd does
not honour, and a symlink planted as one account's file. Then: scan, report, claim,
ignore/remove, the switch-over guard refusing one host, suggest --apply, switch to
exclusive, reconcile, and the real ``ssh`` client proving who still gets in.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.agent_env import AgentEnv

pytestmark = pytest.mark.fleet


def _fp(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


def _append(path: Path, text: str, owner: str) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    with path.open("a") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
    import pwd

    entry = pwd.getpwnam(owner)
    os.chown(path.parent, entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def test_adopt_a_messy_fleet(env: AgentEnv, tmp_path: Path) -> None:
    from dataclasses import replace

    kw = env.kw
    h0, h1, h2 = env.hosts
    deploy, app = env.deploy, env.app
    env.rewrite_inventory(replace(env.spec, mode="managed-block"))

    # People: bob is registered with a role; carol is registered, then leaves; alice is
    # staff whose key only the hosts know.
    env.person_with_key("bob", role="qa")
    kw.ok("role", "add", "devops")
    kw.ok("person", "add", "alice", "--name", "Alice")
    env.person_with_key("carol")
    kw.ok("reconcile")
    kw.ok("offboard", "carol", "--reason", "left (HR-1)")

    alice, leaver, shared, stranger = (env.pub(n) for n in ("alice", "carol", "ci", "stranger"))
    rsa = tmp_path / "keys" / "oldrsa"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "old@box", "-f", str(rsa)],
        check=True,
    )
    text = {p: p.read_text().strip() for p in (alice, leaver, shared, stranger)}
    odd = f'from="127.0.0.0/8",no-agent-forwarding {text[alice]} alice at home (2019)\n'
    _append(env.file(h0, "root"), odd, "root")
    _append(env.file(h1, deploy), f"{text[alice]}\n{text[shared]}\n", deploy)
    _append(env.file(h0, deploy), f"{text[shared]}\n{text[leaver]}\n", deploy)
    _append(env.file(h2, app), f"{text[shared]}\nbogus-option {text[stranger]}\n", app)
    _append(env.file(h2, "root"), f"{text[stranger]}\n", "root")
    _append(env.file(h1, app), Path(f"{rsa}.pub").read_text(), app)
    elsewhere = tmp_path / "planted"
    elsewhere.write_text(f"{text[stranger]}\n")
    symlink = env.file(h2, deploy)
    symlink.parent.mkdir(mode=0o700, exist_ok=True)
    symlink.unlink(missing_ok=True)
    symlink.symlink_to(elsewhere)

    # Today alice logs in with her old line; keyward collects the login.
    assert env.can_login(h0, "root", "alice")
    assert env.can_login(h0, deploy, "carol")  # the leaver still gets in: the finding
    assert kw("reconcile").code == 1  # managed-block: the symlink host fails, nothing else

    scan = kw.ok("adopt", "scan", "--json").json()
    assert scan["totals"]["failed"] == 0 and scan["totals"]["incomplete"] == 1
    h2_scan = next(h for h in scan["hosts"] if h["host"] == h2.name)
    assert h2_scan["files_not_read"][0]["account"] == deploy

    report = kw.ok("adopt", "report", "--json").json()
    keys = {k["fingerprint"]: k for k in report["keys"]}
    fp = {
        name: _fp(p)
        for name, p in (
            ("alice", alice),
            ("carol", leaver),
            ("ci", shared),
            ("stranger", stranger),
            ("rsa", Path(f"{rsa}.pub")),
        )
    }
    assert keys[fp["alice"]]["kind"] == "unknown"
    assert keys[fp["alice"]]["last_login"] is not None
    assert {p["options"][0] for p in keys[fp["alice"]]["places"] if p["options"]} == {
        'from="127.0.0.0/8"'
    }
    assert keys[fp["carol"]]["owner"] == "carol" and "offboarded" in keys[fp["carol"]]["flags"]
    assert "shared" in keys[fp["ci"]]["flags"]
    assert "never-used" in keys[fp["stranger"]]["flags"]
    assert "weak" in keys[fp["rsa"]]["flags"]
    assert any(u["reason"].startswith("bad key options") for u in report["unhonoured"])
    csv_out = kw.ok("adopt", "report", "--csv").out
    assert csv_out.splitlines()[0].startswith("fingerprint,type,bits,kind")
    human = kw.ok("adopt", "report").out
    assert "NOT ACCOUNTED FOR" in human

    # Claims go through key registration: one key, one person; weak keys refused.
    kw.ok("adopt", "claim", fp["alice"], "alice")
    assert "already registered" in kw.fails("adopt", "claim", fp["alice"], "bob").err
    assert "RSA key is 2048 bits" in kw.fails("adopt", "claim", fp["rsa"], "bob").err
    kw.ok("adopt", "ignore", fp["ci"], "--reason", "old CI deploy key, CI moved to OIDC")
    kw.ok("adopt", "remove", fp["rsa"], "--reason", "weak key, nobody claims it")

    # Switch over before the stranger is accounted for: that host is refused, by name.
    env.rewrite_inventory(replace(env.spec, mode="exclusive"))
    plan = kw("plan")
    assert plan.code == 1, str(plan)
    refused = [line for line in plan.out.splitlines() if "refusing to switch" in line]
    assert len(refused) == 1 and h2.name in refused[0] and fp["stranger"] in refused[0]
    assert "never logged in" in refused[0]
    assert f"{h0.name} (test): pending" in plan.out
    removal = next(line for line in plan.out.splitlines() if fp["alice"] in line)
    assert "drift" in removal and "(last login 20" in removal  # claimed, not yet granted
    assert env.file(h2, "root").read_text().count(text[stranger]) == 1
    planned = json.loads(kw("plan", "--json").out)  # the JSON says what the text says
    removals = {
        c["fingerprint"]: c
        for h in planned
        for f in h["files"]
        for c in f["changes"]
        if c["action"] == "remove"
    }
    assert removals[fp["alice"]]["last_login"].startswith("20")
    held = next(h for h in planned if h["host"] == h2.name)
    assert held["status"] == "error" and fp["stranger"] in held["error"]

    kw.ok("adopt", "remove", fp["stranger"], "--reason", "nobody knows it (SEC-9)")

    suggested = kw.ok("adopt", "suggest", "--json").json()
    assert [(g["person"], g["role"]) for g in suggested["grants"]] == [("alice", "devops")]
    kw.ok("adopt", "suggest", "--apply")
    log = kw.ok("audit", "log", "--person", "alice", "--json").json()
    assert any(
        e["action"] == "role.grant" and e["details"]["reason"] == "adopted from host state"
        for e in log
    )

    plan = kw("plan")
    assert plan.code == 3, str(plan)
    applied = kw.ok("reconcile", "--json").json()
    assert kw("plan").code == 0
    # Nothing was removed that the report did not list (a file replaced because it was a
    # symlink is listed among the files the scan could not read).
    listed = {
        (h["host"], r["account"], r["fingerprint"])
        for h in report["hosts"]
        for r in h["exclusive_would_remove"]
    }
    unread = {(h["host"], f["account"]) for h in report["hosts"] for f in h["files_not_read"]}
    for host_result in applied:
        for f in host_result["files"]:
            for c in f["changes"]:
                if c["action"] != "remove":
                    continue
                where = (host_result["host"], f["account"])
                assert (*where, c["fingerprint"]) in listed or where in unread, (where, c)

    assert env.can_login(h0, "root", "alice")
    assert env.can_login(h1, deploy, "alice")
    assert env.can_login(h2, app, "bob")
    assert not env.can_login(h0, deploy, "carol")
    assert not env.can_login(h2, "root", "stranger")
    assert not env.can_login(h2, deploy, "stranger")
    assert not env.can_login(h1, deploy, "ci")
    assert not env.can_login(h1, app, rsa)
    assert not env.file(h2, deploy).is_symlink()
    kw.ok("audit", "verify")
