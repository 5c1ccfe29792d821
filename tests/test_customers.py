"""Customer separation, disclosure on request, and purging an offboarded person's details."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from keyward.testing.inventory import AccessSpec
from tests.agent_env import AgentEnv


def two_customers(env: AgentEnv) -> None:
    acme, globex, _own = env.hosts
    env.rewrite_inventory(
        dataclasses.replace(
            env.spec,
            customers=((acme.name, "acme"), (globex.name, "globex")),
            access=tuple(
                AccessSpec(("devops",), (env.deploy, "root"), hosts=(h.name,)) for h in env.hosts
            ),
        )
    )


def test_customer_scoped_grant_reaches_only_that_customers_hosts(env: AgentEnv) -> None:
    two_customers(env)
    acme, globex, own = env.hosts
    env.kw.ok("person", "add", "alice", "--name", "Alice")
    env.kw.ok("key", "add", "alice", str(env.pub("alice")))
    env.kw.ok("person", "add", "bob", "--name", "Bob")
    env.kw.ok("key", "add", "bob", str(env.pub("bob")))
    env.kw.ok("role", "add", "devops")
    env.kw.ok(
        "role",
        "grant",
        "devops",
        "alice",
        "--reason",
        "ACME project",
        "--customer",
        "acme",
        actor="security",
    )
    env.kw.ok("role", "grant", "devops", "bob", "--reason", "ops", actor="security")
    env.kw.ok("reconcile")
    assert env.can_login(acme, env.deploy, "alice")
    assert not env.can_login(globex, env.deploy, "alice")
    assert not env.can_login(own, env.deploy, "alice")
    for host in env.hosts:
        assert env.can_login(host, env.deploy, "bob")

    # The disclosure for ACME names ACME's hosts only, and who can reach them.
    rows = env.kw.ok("report", "access", "--customer", "acme", "--format", "json").json()
    assert {r["host"] for r in rows} == {acme.name}
    assert {r["person"] for r in rows} == {"alice", "bob"}
    assert {r["customer"] for r in rows} == {"acme"}
    md = env.kw.ok("report", "access", "--customer", "acme").out
    assert globex.name not in md and own.name not in md and "globex" not in md

    events = env.kw.ok("audit", "log", "--customer", "acme", "--json").json()
    assert {e["subject"] for e in events if e["action"].startswith("host.")} == {acme.name}
    assert any(e["action"] == "role.grant" and e["subject"] == "alice" for e in events)
    assert not any(e["subject"] in (globex.name, own.name) for e in events)

    env.kw.ok("reconcile")  # collects the logins made above
    seen = {r["host"] for r in env.kw.ok("logins", "--customer", "acme", "--json").json()}
    assert seen == {acme.name}


def test_inventory_check_reports_a_rule_crossing_customers(env: AgentEnv) -> None:
    acme, globex, _ = env.hosts
    env.rewrite_inventory(
        dataclasses.replace(
            env.spec,
            customers=((acme.name, "acme"), (globex.name, "globex")),
        )
    )
    result = env.kw("inventory", "check")
    assert result.code == 2
    assert "crosses customers (acme, globex)" in result.err


def test_purged_person_leaves_the_audit_chain_verifiable(env: AgentEnv) -> None:
    env.person_with_key("carol", "devops")
    env.kw.ok("reconcile")
    assert env.kw("offboard", "carol", "--reason", "left").code == 0
    early = env.kw("person", "purge", "carol")
    assert early.code == 2 and "kept for 365 days" in early.err
    later = (datetime.now(UTC) + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")
    env.kw.ok("person", "purge", "carol", env={"KEYWARD_NOW": later})
    shown = env.kw.ok("person", "show", "carol", "--json").json()
    assert shown["full_name"] == "(purged)" and shown["email"] is None
    events = env.kw.ok("audit", "log", "--person", "carol", "--json").json()
    redacted = [e for e in events if e["details"] == {"redacted": True}]
    assert {e["action"] for e in redacted} >= {"person.add", "key.add", "person.offboard"}
    assert "Carol" not in env.kw.ok("audit", "log", "--json").out
    assert env.kw.ok("audit", "verify").out.startswith("audit chain ok")
    # The evidence that carol's access was removed survives the purge.
    assert env.kw.ok("offboard", "status", "carol", "--json").json()["status"] == "confirmed"
