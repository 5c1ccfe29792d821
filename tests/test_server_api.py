"""The everyday commands through ``keyward server``: same output as on the database, the
server's authorization, the proven actor, and no quiet fall-back to the database.

A real server process (tests/server_env.py) and the real CLI with ``KEYWARD_URL`` set
and no database of its own (``remote``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_runner import Keyward
from tests.keygen import make_key, ssh_sign
from tests.server_env import ServerEnv, server_env
from tests.test_server_cli import remote


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    with server_env(tmp_path_factory.mktemp("server-api"), host="127.0.0.28") as env:
        yield env


def actors(server: ServerEnv, action: str) -> list[str]:
    return [e["actor"] for e in server.kw.ok("audit", "log", "--action", action, "--json").json()]


def test_reads_print_what_they_print_locally(server: ServerEnv) -> None:
    erin = remote(server, "erin")
    for args in (
        ("person", "list"),
        ("person", "list", "--json"),
        ("person", "show", "rita"),
        ("person", "show", "frank", "--json"),
        ("status",),
        ("status", "--json"),
        ("audit", "log", "--person", "grace"),
        ("audit", "log", "--action", "key.revoke", "--json"),
        ("report", "offboarding", "frank"),
        ("report", "access", "--format", "json"),
        ("report", "access", "--format", "csv"),
    ):
        assert erin.ok(*args).out == server.kw.ok(*args).out, args
    # The auditor reads as well; the Markdown review differs only in its timestamp.
    generated = re.compile(r"Generated \S+\.")
    through = remote(server, "dave").ok("report", "access").out
    assert generated.sub("", through) == generated.sub("", server.kw.ok("report", "access").out)
    assert remote(server, "dave").ok("audit", "verify").out.startswith("audit chain ok: ")


def test_key_list_prints_what_it_prints_locally_and_members_see_their_own(
    server: ServerEnv,
) -> None:
    for who in ("erin", "dave"):
        through = remote(server, who)
        for args in (
            ("key", "list"),
            ("key", "list", "--all", "--json"),
            ("key", "list", "rita"),
            ("key", "list", "--expiring", "400d"),
            ("key", "list", "--expiring", "400d", "--json"),
        ):
            assert through.ok(*args).out == server.kw.ok(*args).out, (who, args)
    alice = remote(server, "alice")
    own = server.kw.ok("key", "list", "alice", "--all", "--json").json()
    assert alice.ok("key", "list", "--all", "--json").json() == own
    assert alice.ok("key", "list", "alice").out == server.kw.ok("key", "list", "alice").out
    refused = alice.fails("key", "list", "rita")
    assert refused.err == (
        "keyward: error: only administrators and auditors may list other people's keys\n"
    )
    assert alice.fails("key", "list", "--expiring", "soon").code == 2


def test_roles_are_listed_to_everyone_and_added_by_administrators(server: ServerEnv) -> None:
    for who in ("alice", "dave"):
        for args in (("role", "list"), ("role", "list", "--json")):
            assert remote(server, who).ok(*args).out == server.kw.ok(*args).out, (who, args)
    erin = remote(server, "erin")
    assert erin.ok("role", "add", "sre", "--description", "Site reliability").out == (
        "added role sre\n"
    )
    added = erin.ok("role", "add", "oncall", "--json").json()
    assert (added["name"], added["created_by"]) == ("oncall", "erin")
    assert "sre" in [r["name"] for r in remote(server, "alice").ok("role", "list", "--json").json()]
    refused = remote(server, "dave").fails("role", "add", "auditors2")
    assert refused.err == "keyward: error: only administrators may add roles\n"
    assert actors(server, "role.add")[-2:] == ["erin", "erin"]


def test_alerts_are_read_by_auditors_and_cleared_by_administrators(server: ServerEnv) -> None:
    first, second = server.alert_for("rita"), server.alert_for("grace", host=None)
    for who in ("erin", "dave"):
        for args in (
            ("alerts",),
            ("alerts", "--json"),
            ("alerts", "--open", "--person", "rita"),
            ("alerts", "--kind", "new_source", "--host", "prod-web-1", "--json"),
        ):
            assert remote(server, who).ok(*args).out == server.kw.ok(*args).out, (who, args)
    assert "only administrators and auditors" in remote(server, "alice").fails("alerts").err
    refused = remote(server, "dave").fails("alerts", "clear", str(first), "--reason", "x")
    assert refused.err == "keyward: error: only administrators may clear alerts\n"
    erin = remote(server, "erin")
    assert erin.ok("alerts", "clear", str(first), "--reason", "checked").out == (
        f"cleared alert {first}\n"
    )
    cleared = erin.ok("alerts", "clear", str(second), "--reason", "ok", "--json").json()
    assert (cleared["status"], cleared["cleared_by"]) == ("cleared", "erin")
    again = erin.fails("alerts", "clear", str(first), "--reason", "x")
    assert again.err == server.kw.fails("alerts", "clear", str(first), "--reason", "x").err
    assert actors(server, "alert.clear")[-2:] == ["erin", "erin"]


def test_logins_print_what_they_print_locally_and_members_see_their_own(
    server: ServerEnv,
) -> None:
    server.login_for("alice")
    server.login_for("rita", outcome="failed")
    server.login_for("keyward-agent")
    for who in ("erin", "dave"):
        for args in (
            ("logins",),
            ("logins", "--json"),
            ("logins", "--all", "--json"),
            ("logins", "--failed", "--host", "prod-web-1"),
            ("logins", "--person", "rita", "--limit", "1", "--json"),
            ("logins", "--since", "2000-01-01", "--customer", "acme"),
        ):
            assert remote(server, who).ok(*args).out == server.kw.ok(*args).out, (who, args)
    alice = remote(server, "alice")
    own = server.kw.ok("logins", "--person", "alice", "--json").json()
    assert own and alice.ok("logins", "--json").json() == own
    refused = alice.fails("logins", "--person", "rita")
    assert refused.err == (
        "keyward: error: only administrators and auditors may read other people's logins\n"
    )


def test_key_attest_is_for_administrators_never_on_their_own_key(
    server: ServerEnv, tmp_path: Path
) -> None:
    fingerprints = []
    for name in ("rita-a", "rita-b"):
        _, public = make_key(tmp_path, "ed25519", name=name)
        added = server.kw.ok("key", "add", "rita", str(public), "--json").json()
        fingerprints.append(added["fingerprint"])
    through, local = fingerprints
    erin = remote(server, "erin")
    out = erin.ok("key", "attest", through, "--attest", "admin").out
    expected = server.kw.ok("key", "attest", local, "--attest", "admin").out
    assert (
        out
        == expected.replace(local, through)
        == (f"key {through} of rita: attestation none -> admin\n")
    )
    again = erin.fails("key", "attest", through, "--attest", "admin")
    assert again.err == server.kw.fails("key", "attest", local, "--attest", "admin").err.replace(
        local, through
    )
    assert actors(server, "key.attest")[-2] == "erin"
    own = server.signer("erin").public.fingerprint
    refused = erin.fails("key", "attest", own, "--attest", "admin")
    assert refused.err == "keyward: error: nobody attests their own key\n"
    dave = remote(server, "dave").fails("key", "attest", through, "--attest", "sk")
    assert dave.err == "keyward: error: only administrators may attest keys\n"


def test_rehire_and_clear_alert_are_for_administrators(server: ServerEnv) -> None:
    erin = remote(server, "erin")
    for name in ("yara", "zeno"):
        server.kw.ok("person", "add", name, "--name", name.title())
        server.mark_offboarded(name)
        server.alert_for(name)
    out = erin.ok("person", "rehire", "yara", "--reason", "HR-1").out
    assert out == server.kw.ok("person", "rehire", "zeno", "--reason", "HR-1").out.replace(
        "zeno", "yara"
    )
    assert out.startswith("rehired yara: employment period ")
    refused = remote(server, "dave").fails("person", "clear-alert", "yara", "--reason", "x")
    assert refused.err == "keyward: error: only administrators may clear alerts\n"
    out = erin.ok("person", "clear-alert", "yara", "--reason", "checked").out
    assert out == "cleared 1 alert(s) for yara\n"
    assert out == server.kw.ok("person", "clear-alert", "zeno", "--reason", "checked").out.replace(
        "zeno", "yara"
    )
    nothing = erin.fails("person", "clear-alert", "yara", "--reason", "x")
    assert "has no open alert" in nothing.err
    assert actors(server, "person.rehire")[-2] == "erin"
    assert actors(server, "person.clear-alert")[-2] == "erin"
    assert (
        "only administrators"
        in remote(server, "dave").fails("person", "rehire", "zeno", "--reason", "x").err
    )


def test_explain_prints_what_it_prints_locally_and_members_explain_themselves(
    server: ServerEnv,
) -> None:
    for who, args in (
        ("alice", ("explain", "alice")),
        ("alice", ("explain", "alice", "prod-web-1", "deploy")),
        ("dave", ("explain", "rita")),
        ("dave", ("explain", "bob", "--json")),
    ):
        assert remote(server, who).ok(*args).out == server.kw.ok(*args).out, (who, args)
    refused = remote(server, "alice").fails("explain", "rita")
    assert refused.err == (
        "keyward: error: only administrators and auditors may explain other people\n"
    )
    unknown = remote(server, "dave").fails("explain", "rita", "nowhere")
    assert unknown.err == server.kw.fails("explain", "rita", "nowhere").err


def test_person_purge_is_for_administrators_with_the_servers_policy(server: ServerEnv) -> None:
    for name in ("quinn", "ursula"):
        server.kw.ok("person", "add", name, "--name", name.title())
        server.mark_offboarded(name)
    refused = remote(server, "dave").fails("person", "purge", "quinn")
    assert refused.err == "keyward: error: only administrators may purge people\n"
    out = remote(server, "erin").ok("person", "purge", "quinn").out
    assert out == server.kw.ok("person", "purge", "ursula").out.replace("ursula", "quinn")
    assert out.startswith("purged quinn: ")
    again = remote(server, "erin").fails("person", "purge", "quinn")
    assert again.err == "keyward: error: 'quinn' is already purged\n"
    assert actors(server, "person.purge")[-2] == "erin"


def test_person_add_and_edit_record_the_proven_administrator(server: ServerEnv) -> None:
    erin = remote(server, "erin")
    assert erin.ok("person", "add", "paula", "--name", "Paula").out == "added person paula\n"
    out = erin.ok("person", "edit", "paula", "--email", "paula@example.com").out
    assert out == "changed email of paula\n"
    assert erin.ok("person", "show", "paula", "--json").json()["email"] == "paula@example.com"
    assert actors(server, "person.edit")[-1] == "erin"  # not KEYWARD_ACTOR=mallory
    result = remote(server, "alice").fails("person", "add", "quentin", "--name", "Q")
    assert result.err == "keyward: error: only administrators may add people\n"


def test_everyone_sees_themselves_only(server: ServerEnv) -> None:
    alice = remote(server, "alice")
    assert alice.ok("person", "show", "alice", "--json").json()["username"] == "alice"
    assert "only administrators and auditors" in alice.fails("person", "show", "rita").err
    assert "only administrators and auditors" in alice.fails("status").err
    assert "only administrators and auditors" in alice.fails("audit", "log").err
    # The access review: their own rows, no direct database writes.
    out = alice.ok("report", "access").out
    assert "Direct database writes" not in out
    assert alice.ok("report", "access", "--format", "json").json() == [
        r
        for r in server.kw.ok("report", "access", "--format", "json").json()
        if r["person"] == "alice"
    ]


def test_adding_your_own_key_needs_a_proof_of_possession(server: ServerEnv, tmp_path: Path) -> None:
    alice = remote(server, "alice")
    private, public = make_key(tmp_path, "ed25519", name="alice-new")
    refused = alice.fails("key", "add", "alice", str(public))
    assert "needs a proof of possession" in refused.err
    vouched = alice.fails("key", "add", "alice", str(public), "--attest", "admin")
    assert "nobody vouches" in vouched.err
    statement = alice.ok("key", "statement", "alice", str(public)).out.encode()
    sig = tmp_path / "statement.sig"
    sig.write_bytes(ssh_sign(private, statement))
    out = alice.ok("key", "add", "alice", str(public), "--proof", str(sig)).out
    assert re.fullmatch(
        r"added ssh-ed25519 key SHA256:\S+ for alice \(attestation proof, expires "
        r"\d{4}-\d\d-\d\d \d\d:\d\d UTC\)\n",
        out,
    ), out
    # A proof made for someone else's name does not verify; nor may a member add for others.
    assert alice.fails("key", "add", "rita", str(public), "--proof", str(sig)).code == 2
    _, other = make_key(tmp_path, "ed25519", name="rita-new")
    assert "only administrators" in alice.fails("key", "add", "rita", str(other)).err
    added = remote(server, "erin").ok("key", "add", "rita", str(other), "--attest", "admin")
    assert "attestation admin" in added.out
    assert actors(server, "key.add")[-2:] == ["alice", "erin"]


def test_rotate_and_revoke_your_own_key(server: ServerEnv, tmp_path: Path) -> None:
    erin = remote(server, "erin")
    erin.ok("person", "add", "uma", "--name", "Uma")
    _, first = make_key(tmp_path, "ed25519", name="uma1")
    erin.ok("key", "add", "uma", str(first), "--attest", "admin")
    private, second = make_key(tmp_path, "ed25519", name="uma2")
    # uma signs in with her key (added to the agent) and rotates to a key she proves.
    uma = Keyward(
        "sqlite:////nonexistent/no-database.db",
        str(server.inventory),
        env={**server.cli_env("erin"), "KEYWARD_KEY": str(tmp_path / "uma1")},
    )
    statement = uma.ok("key", "statement", "uma", str(second)).out.encode()
    sig = tmp_path / "uma2.sig"
    sig.write_bytes(ssh_sign(private, statement))
    out = uma.ok("key", "rotate", "uma", str(second), "--proof", str(sig), "--grace", "1h").out
    assert out.startswith("rotated uma: new key SHA256:") and "valid until" in out
    new = uma.ok("person", "show", "uma", "--json").json()["keys"]
    fingerprint = next(k["fingerprint"] for k in new if k["attestation"] == "proof")
    rita_key = server.signer("rita").public.fingerprint
    assert "only administrators" in uma.fails("key", "revoke", rita_key, "--reason", "x").err
    out = uma.ok("key", "revoke", fingerprint, "--reason", "lost").out
    assert out == f"revoked key {fingerprint} of uma\n"
    assert actors(server, "key.revoke")[-1] == "uma"


def test_roles_are_granted_by_administrators_never_to_themselves(server: ServerEnv) -> None:
    erin = remote(server, "erin")
    assert erin.ok("role", "grant", "dba", "alice", "--reason", "T-1").out == (
        "granted role dba to alice\n"
    )
    refused = erin.fails("role", "grant", "dba", "erin", "--reason", "T-2")
    assert refused.err == "keyward: error: a person cannot grant a role to themselves\n"
    assert (
        "only administrators"
        in remote(server, "dave").fails("role", "grant", "dba", "rita", "--reason", "x").err
    )
    assert erin.ok("role", "revoke", "dba", "alice", "--reason", "done").out == (
        "revoked role dba from alice\n"
    )
    assert actors(server, "role.grant")[-1] == "erin"


def test_offboarding_through_the_server_is_recorded_for_the_daemon(server: ServerEnv) -> None:
    erin = remote(server, "erin")
    erin.ok("person", "add", "victor", "--name", "Victor")
    result = erin("offboard", "victor", "--reason", "left")
    # Recorded, not yet confirmed on the host: exit 1 until a round reads the file back.
    assert result.code == 1, str(result)
    assert f"victor revoked in the registry by {server.url}" in result.out
    assert "UNCONFIRMED on 1 host(s): prod-web-1" in result.out
    assert erin("offboard", "status", "victor").out == server.kw("offboard", "status", "victor").out
    assert actors(server, "person.offboard")[-1] == "erin"
    assert "nobody offboards themselves" in erin.fails("offboard", "erin", "--reason", "x").err


def test_a_command_without_a_route_fails_naming_itself(server: ServerEnv) -> None:
    before = server.head()
    for args in (("plan",), ("reconcile",), ("audit", "checkpoint"), ("adopt", "report")):
        result = remote(server, "erin").fails(*args)
        assert result.err == (
            f"keyward: error: 'keyward {' '.join(args)}' is machine-local and has no route in "
            "the keyward server's API; run it on the registry machine without KEYWARD_URL "
            "(and --url)\n"
        ), args
    assert server.head() == before


def test_show_and_status_through_the_server_load_no_orm(server: ServerEnv, tmp_path: Path) -> None:
    from tests.test_startup import REGISTRY, SSH, imported_by, loaded

    heavy = (*REGISTRY, *SSH, "keyward.registry.store", "keyward.server")
    for args in (("person", "show", "rita"), ("status",)):
        modules = imported_by(tmp_path, *args, env=server.cli_env("erin"))
        assert "keyward.auth.client" in modules, args
        assert loaded(modules, heavy) == [], args


# -- direct database writes ----------------------------------------------------------


def test_local_actor_names_the_unix_user_and_keeps_the_claim() -> None:
    from keyward.cli.context import local_actor

    assert local_actor("root", "root") == "local:root"
    assert local_actor("root", "alice") == "local:root (claims alice)"


def test_the_access_review_flags_direct_database_writes(server: ServerEnv) -> None:
    from keyward.cli.context import unix_user

    remote(server, "erin").ok("person", "add", "wanda", "--name", "Wanda")
    server.kw.ok("person", "add", "xavier", "--name", "Xavier", actor="bob")
    review = server.kw.ok("report", "access").out
    section = review.split("## Direct database writes", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    claimed = f"local:{unix_user()} (claims bob)"
    assert any(claimed in r and "person.add" in r and "person:xavier" in r for r in rows)
    assert not any("wanda" in r for r in rows)  # written through the server, by erin
    assert actors(server, "person.add")[-2:] == ["erin", claimed]
    # Through the server, administrators and auditors see the same section.
    assert "## Direct database writes" in remote(server, "dave").ok("report", "access").out


def test_the_agent_and_the_daemon_keep_their_own_actor(server: ServerEnv) -> None:
    """Rounds and the daemon write with the actor as given; a command's change does not."""
    from keyward.cli.context import AppContext, unix_user

    app = AppContext(db=server.db_url, actor="keyward-agent", inventory=None)
    try:
        assert app.registry(agent=True).recorded_as is None
        assert app.registry(service=True).recorded_as is None
        assert app.registry().recorded_as == f"local:{unix_user()} (claims keyward-agent)"
        with app.registry(agent=True).write(app.actor) as tx:
            assert tx.recorded_as == "keyward-agent"
    finally:
        app.close()


def test_explain_on_a_server_without_an_inventory_is_a_one_line_400() -> None:
    from types import SimpleNamespace
    from typing import cast

    from keyward.errors import KeywardError
    from keyward.server.app import Call, status_for
    from keyward.server.routes_people import explain

    call = SimpleNamespace(
        state=SimpleNamespace(inventory=None),
        caller=SimpleNamespace(admin=False, auditor=True, username="dave"),
        params={"username": "rita"},
        query={},
    )
    with pytest.raises(KeywardError) as refused:
        explain(cast(Call, call))
    assert status_for(refused.value) == 400
    assert str(refused.value) == (
        "this keyward server has no inventory (--inventory); explain needs one"
    )
