"""Signed checkpoints: the audit chain checked against heads signed outside the database.

A writer with SQL access can delete the newest events and move the head, or rewrite an
old event and re-hash the rest; the chain alone still verifies.  These tests do exactly
that on both backends and expect ``audit verify`` to fail naming what was done.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, col, select

from keyward.registry import checkpoint as cp
from keyward.registry import schema
from keyward.registry.audit import event_hash
from keyward.registry.db import make_engine, sqlite_path
from keyward.registry.models import AuditEvent, AuditHead
from tests.cli_runner import Keyward, Result

AT = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def checkpoint_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "checkpoints"
    monkeypatch.setenv(cp.DIR_ENV, str(directory))
    return directory


def last_line(result: Result) -> str:
    return result.err.strip().splitlines()[-1]


def add_people(kw: Keyward, *names: str) -> None:
    for name in names:
        kw.ok("person", "add", name, "--name", name.title())


def truncate(url: str, keep: int) -> None:
    """Delete every event after ``keep`` and move the head back, as a SQL writer could."""
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq > :k"), {"k": keep})
        head = conn.execute(text("SELECT hash FROM audit_event WHERE seq = :k"), {"k": keep})
        conn.execute(
            text("UPDATE audit_head SET seq = :k, hash = :h WHERE id = 1"),
            {"k": keep, "h": head.scalar_one()},
        )
    engine.dispose()


def rewrite_and_rehash(url: str, seq: int, actor: str) -> None:
    """Change event ``seq``'s actor and re-hash it and every later event, and the head."""
    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        events = list(session.exec(select(AuditEvent).order_by(col(AuditEvent.seq))))
        prev = events[seq - 2].hash if seq > 1 else "0" * 64
        for event in events[seq - 1 :]:
            if event.seq == seq:
                event.actor = actor
            event.prev_hash = prev
            event.hash = event_hash(
                seq=event.seq,
                at=event.at,
                actor=event.actor,
                action=event.action,
                subject=event.subject,
                digest=event.details_digest,
                prev_hash=prev,
            )
            prev = event.hash
            session.add(event)
        head = session.exec(select(AuditHead)).one()
        head.hash = prev
        session.add(head)
    engine.dispose()


# -- the attacks of the issue, on both backends ---------------------------------------------


def test_deleting_the_newest_events_fails_verify_naming_them(kw: Keyward) -> None:
    add_people(kw, "alice", "bob", "carol", "dave")  # events 2..5
    ok = kw.ok("audit", "verify")
    assert "checkpoint written: event 5" in ok.out
    truncate(kw.db_url, 3)
    # The chain itself is intact: only the signed checkpoint can tell.
    result = kw.fails("audit", "verify", code=1)
    line = last_line(result)
    assert "audit chain broken at audit event 4: missing: events 4 to 5 were deleted" in line
    assert "(the head is at 3, the checkpoint signed " in line
    assert "is at 5)" in line
    data = kw.fails("audit", "verify", "--json", code=1).json()
    assert data["ok"] is False
    assert data["first_bad_event"] == 4
    # A writer cannot get a new checkpoint past the hole either.
    kw.fails("audit", "checkpoint", code=1)
    kw.fails("backup", "create", str(Path(kw.inventory).parent / "b"), code=1)


def test_rewriting_an_old_event_and_rehashing_fails_verify_naming_the_range(kw: Keyward) -> None:
    add_people(kw, "alice")  # event 2
    kw.ok("audit", "checkpoint")  # at 2
    add_people(kw, "bob", "carol")  # events 3, 4
    kw.ok("audit", "verify")  # at 4
    add_people(kw, "dave")  # event 5, after the newest checkpoint
    rewrite_and_rehash(kw.db_url, 3, "nobody")
    result = kw.fails("audit", "verify", code=1)
    assert last_line(result) == (
        "keyward: error: audit chain broken at audit event 4: hash differs from the "
        f"checkpoint signed {checkpoint_time(kw, 4)}: the chain was rewritten between "
        "event 3 and event 4"
    )


def test_rewriting_the_first_event_is_found_by_any_checkpoint(kw: Keyward) -> None:
    add_people(kw, "alice")
    kw.ok("audit", "verify")
    rewrite_and_rehash(kw.db_url, 1, "mallory")
    line = last_line(kw.fails("audit", "verify", code=1))
    assert "audit event 2: hash differs from the checkpoint" in line
    assert "rewritten between event 1 and event 2" in line


def checkpoint_time(kw: Keyward, seq: int) -> str:
    directory = Path(os.environ[cp.DIR_ENV])
    (found,) = directory.glob(f"registry-*/{seq:012d}.checkpoint")
    return cp.Checkpoint.parse(found.read_bytes()).when


def test_events_after_the_newest_checkpoint_are_the_documented_window(kw: Keyward) -> None:
    """What is not covered: deleting events nobody has checkpointed yet goes unnoticed."""
    add_people(kw, "alice")
    kw.ok("audit", "verify")  # at 2
    add_people(kw, "bob", "carol")
    truncate(kw.db_url, 2)
    assert kw.ok("audit", "verify").out.startswith("audit chain ok: 2 events")


# -- the checkpoint files themselves --------------------------------------------------------


def test_a_forged_or_moved_checkpoint_is_reported(kw: Keyward, checkpoint_dir: Path) -> None:
    add_people(kw, "alice")
    kw.ok("audit", "verify")
    (statement,) = checkpoint_dir.glob("registry-*/*.checkpoint")
    original = statement.read_bytes()
    statement.write_bytes(original.replace(b"seq: 2", b"seq: 1"))
    line = last_line(kw.fails("audit", "verify", code=1))
    assert f"{statement.name} is not signed by a trusted checkpoint key" in line
    statement.write_bytes(original)
    assert kw.ok("audit", "verify").out.startswith("audit chain ok")
    signature = statement.with_name(statement.name + ".sig")
    signed = signature.read_bytes()
    signature.unlink()
    assert f"{signature} is missing" in last_line(kw.fails("audit", "verify", code=1))
    signature.write_bytes(signed)
    # A genuine checkpoint of another registry dropped into this one's directory.
    other = cp.Store(cp.open_keyring(checkpoint_dir), "sqlite:/elsewhere.db")
    moved = other.write(7, "a" * 64, AT)
    assert moved.path is not None
    os.replace(moved.path, statement.with_name("000000000007.checkpoint"))
    os.replace(
        moved.path.with_name(moved.path.name + ".sig"),
        statement.with_name("000000000007.checkpoint.sig"),
    )
    assert "it was moved here" in last_line(kw.fails("audit", "verify", code=1))


def test_a_pinned_key_is_all_that_is_trusted(
    kw: Keyward, checkpoint_dir: Path, tmp_path: Path
) -> None:
    add_people(kw, "alice")
    kw.ok("audit", "verify")
    genuine = checkpoint_dir / "checkpoint_ed25519.pub"
    assert kw.ok("audit", "verify", "--trusted-key", str(genuine)).out.startswith("audit chain ok")
    # Someone replaced the key and re-signed: a pinned copy of the old key catches it.
    stranger = cp.open_keyring(tmp_path / "stranger")
    (checkpoint_dir / "checkpoint_ed25519").unlink()
    (checkpoint_dir / "checkpoint_ed25519").write_bytes(stranger.signing_pem or b"")
    (statement,) = checkpoint_dir.glob("registry-*/*.checkpoint")
    resigned = stranger.sign(cp.Checkpoint.parse(statement.read_bytes()))
    statement.with_name(statement.name + ".sig").write_bytes(resigned)
    line = last_line(kw.fails("audit", "verify", "--trusted-key", str(genuine), code=1))
    assert "is not signed by a trusted checkpoint key" in line
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-rsa AAAAB3NzaC1yc2E= x\n")
    assert "ssh-ed25519" in last_line(kw.fails("audit", "verify", "--trusted-key", str(bad)))


def test_an_unusable_checkpoint_directory_is_one_line_exit_2(kw: Keyward, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = kw.fails("audit", "verify", "--checkpoint-dir", str(blocker / "sub"))
    assert "cannot use the checkpoint directory" in last_line(result)
    assert "--checkpoint-dir" in last_line(result)


def test_reset_starts_again_and_is_an_audit_event(kw: Keyward, checkpoint_dir: Path) -> None:
    add_people(kw, "alice", "bob")
    kw.ok("audit", "verify")
    truncate(kw.db_url, 2)  # say, the registry was rebuilt by hand from an old copy
    kw.fails("audit", "verify", code=1)
    reset = kw.ok("audit", "checkpoint", "--reset")
    assert "earlier checkpoints set aside in " in reset.err
    assert "checkpoint written: event 3" in reset.out
    (event,) = kw.ok("audit", "log", "--action", "audit.checkpoint-reset", "--json").json()
    assert event["details"]["newest_retired_seq"] == 3
    assert "event 3 was deleted" in event["details"]["disagreement"]
    assert kw.ok("audit", "verify").out.startswith("audit chain ok: 3 events")
    assert len(list(checkpoint_dir.glob("registry-*.retired-*"))) == 1


# -- pure parts ------------------------------------------------------------------------------


def at(seq: int, head: str) -> cp.Checkpoint:
    return cp.Checkpoint("sqlite:/r.db", seq, head, AT)


@pytest.mark.parametrize(
    ("checkpoints", "seen", "head", "expected"),
    [
        ([], {}, 5, None),
        ([at(0, "0" * 64)], {}, 0, None),
        ([at(3, "c" * 64)], {3: "c" * 64}, 5, None),
        ([at(3, "c" * 64)], {3: "c" * 64}, 3, None),
        ([at(5, "e" * 64)], {}, 3, (4, "missing: events 4 to 5 were deleted")),
        ([at(4, "d" * 64)], {}, 3, (4, "missing: event 4 was deleted")),
        ([at(4, "d" * 64)], {4: "x" * 64}, 9, (4, "rewritten between event 1 and event 4")),
        (
            [at(2, "b" * 64), at(6, "f" * 64), at(9, "i" * 64)],
            {2: "b" * 64, 6: "x" * 64, 9: "y" * 64},
            9,
            (6, "rewritten between event 3 and event 6"),
        ),
        (
            [at(2, "b" * 64), at(6, "f" * 64)],
            {2: "x" * 64},
            3,
            (2, "rewritten between event 1 and event 2"),
        ),
    ],
)
def test_compare_cases(
    checkpoints: list[cp.Checkpoint],
    seen: dict[int, str],
    head: int,
    expected: tuple[int, str] | None,
) -> None:
    problem = cp.compare(checkpoints, seen, head)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.seq == expected[0]
        assert expected[1] in problem.reason


GOOD = (
    b"keyward audit checkpoint\nregistry: sqlite:/r.db\nseq: 3\nhead: " + b"a" * 64 + b"\n"
    b"at: 2026-12-01T12:00:00Z\n"
)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        GOOD.replace(b"keyward audit checkpoint", b"keyward proof of possession"),
        GOOD.replace(b"seq: 3", b"seq: -3"),
        GOOD.replace(b"seq: 3", b"seq: 3\nseq: 4"),
        GOOD.replace(b"a" * 64, b"A" * 64),
        GOOD.replace(b"2026-12-01T12:00:00Z", b"yesterday"),
        GOOD + b"snapshot: x.sqlite\n",
        GOOD + b"extra: field\n",
        GOOD.rstrip(b"\n"),
        GOOD.replace(b"registry: sqlite:/r.db", b"registry: a\x1bb"),
        b"\xff" + GOOD,
    ],
)
def test_malformed_statements_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        cp.Checkpoint.parse(data)


def test_statement_round_trip() -> None:
    parsed = cp.Checkpoint.parse(GOOD)
    assert parsed == at(3, "a" * 64)
    assert parsed.statement() == GOOD
    snap = cp.Checkpoint("r", 1, "b" * 64, AT, "keyward-registry-x.sqlite", "c" * 64)
    assert cp.Checkpoint.parse(snap.statement()) == snap


@pytest.mark.parametrize(
    ("url", "identity"),
    [
        ("postgresql+psycopg://keyward:secret@db:5433/keyward", "postgresql://db:5433/keyward"),
        ("postgresql+psycopg://other@db:5433/keyward", "postgresql://db:5433/keyward"),
        ("postgresql://db/keyward", "postgresql://db:5432/keyward"),
    ],
)
def test_registry_identity_ignores_role_and_password(url: str, identity: str) -> None:
    assert cp.registry_identity(url) == identity


def test_sqlite_identity_is_the_real_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert cp.registry_identity(f"sqlite:///{tmp_path / 'link' / 'r.db'}") == (
        f"sqlite:{tmp_path / 'real' / 'r.db'}"
    )


# -- private from the first byte -------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_sqlite_registry_is_private_from_the_first_byte(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'registry.db'}"
    path = sqlite_path(url)
    assert path is not None
    old = os.umask(0o022)
    try:
        engine = make_engine(url, create_dir=True)
        assert mode(path) == 0o600  # before SQLite wrote anything
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
            seen = {p.name: mode(p) for p in path.parent.iterdir()}
        engine.dispose()
    finally:
        os.umask(old)
    assert seen == {"registry.db": 0o600, "registry.db-wal": 0o600, "registry.db-shm": 0o600}
    assert mode(path.parent) == 0o700


def test_init_never_leaves_the_registry_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is private while the schema is being written, not only once init is done."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    path = tmp_path / "registry.db"
    modes: list[int] = []
    real_upgrade = schema.upgrade

    def watching(engine: object) -> tuple[str | None, str]:
        result = real_upgrade(engine)  # type: ignore[arg-type]
        modes.append(mode(path))  # before init's final chmod
        return result

    monkeypatch.setattr(schema, "upgrade", watching)
    old = os.umask(0o022)
    try:
        Keyward(url, str(tmp_path / "no-inventory")).ok("init")
    finally:
        os.umask(old)
    assert modes == [0o600]
    assert mode(path) == 0o600


def test_checkpoint_files_are_private_under_a_loose_umask(
    kw: Keyward, checkpoint_dir: Path
) -> None:
    old = os.umask(0o000)
    try:
        kw.ok("audit", "checkpoint")
    finally:
        os.umask(old)
    files = list(checkpoint_dir.rglob("*"))
    names = sorted(p.name for p in files)
    (registry_dir,) = [n for n in names if n.startswith("registry-")]
    assert names == sorted(
        [
            "checkpoint_ed25519",
            "checkpoint_ed25519.pub",
            registry_dir,
            ".lock",
            "000000000001.checkpoint",
            "000000000001.checkpoint.sig",
        ]
    )
    for path in files:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert mode(checkpoint_dir) == 0o700
