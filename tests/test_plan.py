"""The plan, as tables of cases: desired file + what is on the host -> changes and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyward.desired import HEADER, DesiredFile, DesiredLine, FileTarget
from keyward.keys import PublicKey, parse_public_key
from keyward.plan import Observed, PlanMemo, plan_file, plan_host, render, sha256
from keyward.state import KeyRecord, PersonRecord, RegistrySnapshot
from keyward.testing.keypairs import make_ed25519

NOW = datetime(2026, 6, 1, tzinfo=UTC)
T = FileTarget("web-1", "deploy", "%h/.ssh/authorized_keys")


@pytest.fixture(scope="module")
def k(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PublicKey]:
    base = tmp_path_factory.mktemp("keys")
    return {
        name: parse_public_key(Path(f"{make_ed25519(base / name)}.pub").read_text())
        for name in ("agent", "alice", "bob", "carol", "dave", "eve")
    }


@pytest.fixture(scope="module")
def snap(k: dict[str, PublicKey]) -> RegistrySnapshot:
    later, earlier = NOW + timedelta(days=30), NOW - timedelta(days=1)
    return RegistrySnapshot(
        people={
            "alice": PersonRecord("alice", "A", "active"),
            "bob": PersonRecord("bob", "B", "active"),
            "carol": PersonRecord("carol", "C", "active"),
            "dave": PersonRecord("dave", "D", "offboarded"),
        },
        keys=(
            KeyRecord(k["alice"], "alice", "none", earlier, later),
            KeyRecord(k["bob"], "bob", "none", earlier, later, revoked_at=earlier),
            KeyRecord(k["carol"], "carol", "none", earlier, earlier),
            KeyRecord(k["dave"], "dave", "none", earlier, later),
        ),
        grants=(),
    )


def alice_line(k: dict[str, PublicKey], options: tuple[str, ...] = ()) -> DesiredLine:
    return DesiredLine(k["alice"], options, "alice", "person")


def desired(
    lines: tuple[DesiredLine, ...], mode: str = "exclusive", login: bool = False
) -> DesiredFile:
    return DesiredFile(T, mode, lines, is_login=login)  # type: ignore[arg-type]


def present(content: bytes, owner_ok: bool = True) -> Observed:
    return Observed(
        T, "present", "/home/deploy/.ssh/authorized_keys", content, sha256(content), owner_ok
    )


def raw(key: PublicKey, comment: str = "hand", options: str = "") -> bytes:
    prefix = f"{options} " if options else ""
    return f"{prefix}{key.openssh()} {comment}\n".encode()


@pytest.mark.parametrize(
    ("extra", "reason", "owner"),
    [
        ("eve", "drift", None),
        ("bob", "revoked", "bob"),
        ("carol", "expired", "carol"),
        ("dave", "offboarded", "dave"),
    ],
)
def test_removal_reasons(
    k: dict[str, PublicKey], snap: RegistrySnapshot, extra: str, reason: str, owner: str | None
) -> None:
    d = desired((alice_line(k),))
    content = d.exclusive_content() + raw(k[extra])
    plan = plan_file(d, present(content), snap, NOW)
    assert plan.action == "update"
    assert [(c.action, c.reason, c.owner, c.fingerprint) for c in plan.changes] == [
        ("remove", reason, owner, k[extra].fingerprint)
    ]
    assert plan.new_content == d.exclusive_content()
    assert plan.expect_sha256 == sha256(content)


def test_access_ended_replaced_duplicate_unparsable(
    k: dict[str, PublicKey], snap: RegistrySnapshot
) -> None:
    d = desired((alice_line(k, ("no-pty",)),))
    content = (
        HEADER.encode()
        + raw(k["alice"], "keyward:alice:x")  # same key, old options
        + d.lines[0].render().encode()
        + b"\n"
        + d.lines[0].render().encode()
        + b"\n"  # twice
        + b"ssh-ed25519 AAAAnotbase64!! junk\n"
    )
    plan = plan_file(d, present(content), snap, NOW)
    assert sorted(c.reason for c in plan.changes) == ["duplicate", "replaced", "unparsable"]


def test_access_ended_for_our_line(k: dict[str, PublicKey], snap: RegistrySnapshot) -> None:
    d = desired(())
    content = HEADER.encode() + raw(k["alice"], "keyward:alice:abc")
    (change,) = plan_file(d, present(content), snap, NOW).changes
    assert (change.reason, change.owner) == ("access-ended", "alice")


@pytest.mark.parametrize(
    ("observed", "action"),
    [
        ("missing", "create"),
        ("in-sync", "in-sync"),
        ("bad-mode", "fix-mode"),
        ("symlink", "error"),
        ("hardlink", "update"),
    ],
)
def test_file_actions(
    k: dict[str, PublicKey], snap: RegistrySnapshot, observed: str, action: str
) -> None:
    d = desired((alice_line(k),))
    facts = {
        "missing": Observed(T, "missing", "/p"),
        "in-sync": present(d.exclusive_content()),
        "bad-mode": present(d.exclusive_content(), owner_ok=False),
        "symlink": Observed(T, "error", "/p", error_code="symlink", error_message="is a link"),
        "hardlink": Observed(T, "error", "/p", error_code="hardlink", replaceable=True),
    }[observed]
    plan = plan_file(d, facts, snap, NOW)
    assert plan.action == action
    if action == "update":
        assert plan.expect_sha256 == "*"


def test_managed_block_keeps_foreign_lines_and_refuses_blind_replace(
    k: dict[str, PublicKey], snap: RegistrySnapshot
) -> None:
    d = desired((alice_line(k),), mode="managed-block")
    own = raw(k["eve"], "ops-team")
    first = plan_file(d, present(own), snap, NOW)
    assert first.action == "update" and first.new_content is not None
    assert first.new_content.startswith(own)
    assert [c.action for c in first.changes] == ["add"]
    assert render(d, first.new_content) == first.new_content  # stable
    blind = Observed(T, "error", "/p", error_code="hardlink", replaceable=True)
    assert plan_file(d, blind, snap, NOW).action == "error"


def test_offboarding_purges_outside_the_block_even_with_carriage_returns(
    k: dict[str, PublicKey], snap: RegistrySnapshot
) -> None:
    d = desired((), mode="managed-block")
    sneaky = b'command="/bin/sh -i ;\r" ' + k["dave"].openssh().encode() + b" x\n"
    content = raw(k["eve"], "ops") + sneaky
    plan = plan_file(d, present(content), snap, NOW, purge=frozenset({k["dave"].fingerprint}))
    assert plan.new_content is not None
    assert k["dave"].base64.encode() not in plan.new_content
    assert k["eve"].base64.encode() in plan.new_content
    assert [(c.reason, c.owner) for c in plan.changes] == [("offboarded", "dave")]


def test_plan_without_the_agent_key_on_the_login_account_is_refused(
    k: dict[str, PublicKey], snap: RegistrySnapshot
) -> None:
    login = desired((alice_line(k),), login=True)
    host = plan_host(
        "web-1", [login], {T: Observed(T, "missing", "/p")}, snap, NOW, k["agent"].fingerprint
    )
    assert host.refused is not None and "lockout" in host.refused
    with_agent = desired((DesiredLine(k["agent"], (), "agent", "agent"), alice_line(k)), login=True)
    ok = plan_host(
        "web-1", [with_agent], {T: Observed(T, "missing", "/p")}, snap, NOW, k["agent"].fingerprint
    )
    assert ok.refused is None and ok.pending


def _memo_cases(k: dict[str, PublicKey]) -> list[tuple[DesiredFile, Observed]]:
    """Files two hosts may share: each desired/observed pair, then the same under another
    host's target and path."""
    lines = (DesiredLine(k["agent"], (), "agent", "agent"), alice_line(k))
    cases = []
    for mode in ("exclusive", "managed-block"):
        d = DesiredFile(T, mode, lines, is_login=True)  # type: ignore[arg-type]
        synced = render(d, None)
        for observed in (
            Observed(T, "missing", "/p"),
            present(synced),
            present(synced, owner_ok=False),
            present(synced + raw(k["bob"], "revoked one") + raw(k["eve"], "drift")),
            present(raw(k["dave"], "offboarded") + raw(k["alice"], "alice", "no-pty")),
            Observed(T, "error", "/p", error_code="hardlink", replaceable=True),
            Observed(T, "error", "/p", error_code="symlink", error_message="is a link"),
        ):
            cases.append((d, observed))
    return cases


def test_a_memo_gives_every_equal_file_the_plan_it_would_get_alone(
    k: dict[str, PublicKey], snap: RegistrySnapshot
) -> None:
    other = FileTarget("web-2", "deploy", "%h/.ssh/authorized_keys")
    purge = frozenset({k["dave"].fingerprint})
    for cut in (frozenset(), purge):
        memo = PlanMemo()
        for d, observed in _memo_cases(k):
            for target, path in ((T, observed.path), (other, "/srv/web-2/deploy")):
                d2 = DesiredFile(target, d.mode, d.lines, is_login=True)
                o2 = Observed(target, observed.state, path, observed.content, observed.sha256,
                              observed.owner_ok, observed.error_code, observed.error_message,
                              observed.replaceable)  # fmt: skip
                alone = plan_host("h", [d2], {target: o2}, snap, NOW, k["agent"].fingerprint, cut)
                shared = plan_host(
                    "h", [d2], {target: o2}, snap, NOW, k["agent"].fingerprint, cut, memo
                )
                assert shared == alone, (d.mode, observed.state, target)
                assert shared.files[0].target == target and shared.files[0].path == path


def test_a_memo_never_answers_for_another_snapshot_moment_or_lines(
    k: dict[str, PublicKey], snap: RegistrySnapshot
) -> None:
    memo = PlanMemo()
    d = desired((alice_line(k),))
    observed = present(raw(k["carol"], "carol") + d.exclusive_content())
    before = plan_host("h", [d], {T: observed}, snap, NOW - timedelta(days=5), None, memo=memo)
    # Five days later carol's key has expired: the same file is planned anew, not recalled.
    after = plan_host("h", [d], {T: observed}, snap, NOW, None, memo=memo)
    assert [c.reason for c in before.files[0].changes] == ["drift"]
    assert [c.reason for c in after.files[0].changes] == ["expired"]
    # Equal lines in another tuple are planned for themselves (identity, not equality, and
    # a tuple freed and replaced at the same address can never match the one held).
    other = desired((alice_line(k, ("no-pty",)),))
    again = plan_host("h", [other], {T: observed}, snap, NOW, None, memo=memo)
    assert again == plan_host("h", [other], {T: observed}, snap, NOW, None)
