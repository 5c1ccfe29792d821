"""Backups: consistent snapshots under load, checksums, restore rules, retention, copies.

Most tests run on both registry backends (``kw`` is parametrised over SQLite and a real
PostgreSQL); the systemd units are checked with ``systemd-analyze`` like the reconcile ones.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from keyward.cli import backup_cmds
from keyward.cli import main as cli_main
from keyward.registry.backup.files import (
    check_checksum,
    checkpoint_file,
    parse_name,
    sha256_file,
    signature_file,
    write_checksum,
)
from keyward.registry.backup.postgres import pg_dump
from keyward.registry.backup.restore import registry_contents
from keyward.registry.backup.retention import list_snapshots, prune_plan
from keyward.registry.backup.signing import write_snapshot_checkpoint
from keyward.registry.backup.sqlite import sqlite_snapshot
from keyward.registry.backup.verify import Verified
from keyward.registry.checkpoint import open_keyring
from keyward.registry.db import make_engine
from tests.cli_runner import Keyward, Result
from tests.pgserver import PgServer
from tests.test_systemd import keyward_script, parse_unit

if "backup" not in cli_main.cli.commands:  # until keyward.cli.main registers it itself
    backup_cmds.register(cli_main.cli)

UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
SERVICE = "keyward-backup.service"
TIMER = "keyward-backup.timer"
DOCUMENTED_EXEC = "/usr/local/bin/keyward"

FreshUrl = Callable[[str], str]


@pytest.fixture(autouse=True)
def checkpoint_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own checkpoint directory and key, never /var/lib/keyward's."""
    directory = tmp_path / "checkpoints"
    monkeypatch.setenv("KEYWARD_CHECKPOINT_DIR", str(directory))
    return directory


@pytest.fixture
def fresh_url(kw: Keyward, request: pytest.FixtureRequest, tmp_path: Path) -> FreshUrl:
    """Another empty registry URL on the same backend as ``kw`` (nothing created for SQLite)."""

    def make(label: str) -> str:
        if kw.db_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path / label / 'registry.db'}"
        server: PgServer = request.getfixturevalue("pg_server")
        name = f"kw_{label}_{uuid.uuid4().hex[:8]}"
        url = server.create_database(name)
        request.addfinalizer(lambda: server.drop_database(name))
        return url

    return make


def other(kw: Keyward, url: str) -> Keyward:
    return Keyward(url, kw.inventory, kw.env)


def subprocess_env(kw: Keyward) -> dict[str, str]:
    return {
        **os.environ,
        "KEYWARD_DB": kw.db_url,
        "KEYWARD_INVENTORY": kw.inventory,
        "KEYWARD_ACTOR": "admin",
    }


def create(kw: Keyward, directory: Path, *args: str, env: dict[str, str] | None = None) -> Path:
    result = kw.ok("backup", "create", str(directory), "--json", *args, env=env)
    return Path(result.json()["path"])


def usernames(cli: Keyward) -> list[str]:
    return [p["username"] for p in cli.ok("person", "list", "--json").json()]


def actions(cli: Keyward, action: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = cli.ok("audit", "log", "--action", action, "--json").json()
    return rows


def last_line(result: Result) -> str:
    return result.err.strip().splitlines()[-1]


# -- create and restore under load ----------------------------------------------------


WRITER = (
    "import sys\n"
    "from keyward.cli.main import main\n"
    "for i in range(30):\n"
    "    try:\n"
    "        main(['person', 'add', f'p{i:02d}', '--name', f'Person {i}'])\n"
    "    except SystemExit as exc:\n"
    "        assert exc.code == 0, exc.code\n"
)


def test_backup_during_concurrent_writes_restores_a_consistent_registry(
    kw: Keyward, fresh_url: FreshUrl, tmp_path: Path
) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER],
        env=subprocess_env(kw),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while len(usernames(kw)) < 3 and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        snapshot = create(kw, tmp_path / "backups")
        snapshot_again = create(kw, tmp_path / "backups", env={"KEYWARD_NOW": "2099-01-01"})
    finally:
        _, err = writer.communicate(timeout=180)
    assert writer.returncode == 0, err.decode()
    assert len(usernames(kw)) == 30
    assert kw.ok("audit", "verify").out.startswith("audit chain ok")
    assert [e["subject"] for e in actions(kw, "backup.create")] == [
        snapshot.name,
        snapshot_again.name,
    ]

    for label, path in (("first", snapshot), ("second", snapshot_again)):
        target = other(kw, fresh_url(label))
        restored = target.ok("backup", "restore", str(path))
        assert "audit chain ok" in restored.out
        assert target.ok("audit", "verify").out.startswith("audit chain ok")
        people = usernames(target)
        # A prefix of the writer's sequence: no later person without every earlier one.
        assert len(people) >= 3
        assert people == [f"p{i:02d}" for i in range(len(people))]
        added = [e["subject"] for e in actions(target, "person.add")]
        assert added == people
        # The snapshot does not contain its own backup.create event ...
        assert actions(target, "backup.create") == (
            [] if label == "first" else [{**actions(kw, "backup.create")[0]}]
        )
        # ... and the restore is recorded in the restored registry.
        (event,) = actions(target, "backup.restore")
        assert event["subject"] == path.name
        assert event["details"]["forced"] is False  # type: ignore[index]


def test_snapshot_files_are_private_named_by_time_checksummed_and_signed(
    kw: Keyward, tmp_path: Path, checkpoint_dir: Path
) -> None:
    directory = tmp_path / "b"
    old_umask = os.umask(0o022)  # what a careless shell or unit would have
    try:
        result = kw.ok(
            "backup", "create", str(directory), "--json",
            env={"KEYWARD_NOW": "2026-11-23T18:45:12Z"},
        )  # fmt: skip
    finally:
        os.umask(old_umask)
    data = result.json()
    suffix = "sqlite" if kw.db_url.startswith("sqlite") else "pgdump"
    name = f"keyward-registry-20261123T184512Z.{suffix}"
    assert data["name"] == name
    path = directory / name
    sidecar = directory / f"{name}.sha256"
    statement = directory / f"{name}.checkpoint"
    signature = directory / f"{name}.checkpoint.sig"
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [name, sidecar.name, statement.name, signature.name]
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar.read_text() == f"{digest}  {name}\n"
    assert data["sha256"] == digest
    assert data["events_verified"] == 1
    assert data["checkpoint_file"] == str(statement)
    lines = statement.read_text().splitlines()
    assert lines[0] == "keyward audit checkpoint"
    assert "seq: 1" in lines
    assert f"snapshot: {name}" in lines
    assert f"snapshot-sha256: {digest}" in lines
    assert "at: 2026-11-23T18:45:12Z" in lines
    for p in (path, sidecar, statement, signature):
        assert p.stat().st_mode & 0o777 == 0o600, p
    assert directory.stat().st_mode & 0o777 == 0o700
    # An auditor checks the signature with OpenSSH alone.
    public = (checkpoint_dir / "checkpoint_ed25519.pub").read_text()
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"keyward-checkpoint {public}")
    with open(statement, "rb") as stdin:
        check = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "keyward-checkpoint",
             "-n", "keyward-checkpoint", "-s", str(signature)],
            stdin=stdin, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    for p in checkpoint_dir.rglob("*"):
        assert p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600), p
    check = subprocess.run(
        ["sha256sum", "-c", sidecar.name], cwd=directory, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    if suffix == "pgdump":
        assert path.read_bytes().startswith(b"PGDMP")
    # The same second again: refused, nothing overwritten.
    again = kw.fails(
        "backup", "create", str(directory), code=1, env={"KEYWARD_NOW": "2026-11-23T18:45:12Z"}
    )
    assert "already exists" in last_line(again)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_default_directory_is_under_the_state_directory(kw: Keyward, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"KEYWARD_STATE_DIR": str(state)}
    path = Path(kw.ok("backup", "create", "--json", env=env).json()["path"])
    assert path.parent == state / "backups"
    listed = kw.ok("backup", "list", "--json", env=env).json()
    assert [row["name"] for row in listed] == [path.name]


def test_a_broken_live_chain_keeps_no_snapshot(kw: Keyward, tmp_path: Path) -> None:
    kw.ok("person", "add", "alice", "--name", "Alice")
    engine = make_engine(kw.db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET subject = 'mallory' WHERE seq = 2"))
    engine.dispose()
    result = kw.fails("backup", "create", str(tmp_path / "b"), code=1)
    assert last_line(result).startswith("keyward: error: no snapshot kept: snapshot ")
    assert "audit event 2" in last_line(result)
    assert "backup_verify_failed" in result.err
    assert list((tmp_path / "b").iterdir()) == []


# -- restore rules ----------------------------------------------------------------------


def test_restore_refuses_a_snapshot_that_fails_its_checksum(
    kw: Keyward, fresh_url: FreshUrl, tmp_path: Path
) -> None:
    kw.ok("person", "add", "alice", "--name", "Alice")
    path = create(kw, tmp_path / "b")
    target = other(kw, fresh_url("t"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "b" / "copy" / path.name
    tampered.parent.mkdir()
    tampered.write_bytes(bytes(data))
    shutil.copy(path.with_name(path.name + ".sha256"), tampered.parent)
    result = target.fails("backup", "restore", str(tampered))
    assert "does not match its checksum" in last_line(result)
    assert "nothing was restored" in last_line(result)

    (tampered.parent / f"{path.name}.sha256").unlink()
    result = target.fails("backup", "restore", str(tampered))
    assert "no checksum file" in last_line(result)

    result = target.fails("backup", "restore", str(tmp_path / "b" / "nothing.sqlite"))
    assert "no snapshot file" in last_line(result)

    if kw.db_url.startswith("sqlite"):
        assert not Path(target.db_url.removeprefix("sqlite:///")).exists()
    # The intact snapshot still restores.
    target.ok("backup", "restore", str(path))
    assert usernames(target) == ["alice"]


def test_restore_into_a_non_empty_registry_needs_force(
    kw: Keyward, fresh_url: FreshUrl, tmp_path: Path
) -> None:
    kw.ok("person", "add", "alice", "--name", "Alice")
    kw.ok("role", "add", "devops")
    path = create(kw, tmp_path / "b")

    # Initialised but otherwise empty: allowed without --force.
    initialised = other(kw, fresh_url("init"))
    initialised.ok("init")
    initialised.ok("backup", "restore", str(path))
    assert usernames(initialised) == ["alice"]
    assert initialised.ok("audit", "verify").out.startswith("audit chain ok")

    busy = other(kw, fresh_url("busy"))
    busy.ok("init")
    busy.ok("person", "add", "bob", "--name", "Bob")
    refused = busy.fails("backup", "restore", str(path))
    assert "is not empty (1 people, 0 keys, 0 roles, 1 audit events" in last_line(refused)
    assert "--force" in last_line(refused)
    assert usernames(busy) == ["bob"]

    forced = busy.ok("backup", "restore", str(path), "--force", "--json").json()
    assert forced["replaced"].startswith("1 people")
    assert usernames(busy) == ["alice"]
    assert busy.ok("audit", "verify").out.startswith("audit chain ok")
    (event,) = actions(busy, "backup.restore")
    assert event["details"]["forced"] is True  # type: ignore[index]
    assert event["details"]["replaced"]["people"] == 1  # type: ignore[index]


@pytest.mark.postgres  # the sqlite variant makes a PostgreSQL registry to restore into
def test_restore_refuses_a_snapshot_of_the_other_backend(
    kw: Keyward, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = create(kw, tmp_path / "b")
    if kw.db_url.startswith("sqlite"):
        server: PgServer = request.getfixturevalue("pg_server")
        name = f"kw_cross_{uuid.uuid4().hex[:8]}"
        url = server.create_database(name)
        request.addfinalizer(lambda: server.drop_database(name))
    else:
        url = f"sqlite:///{tmp_path / 'cross.db'}"
    result = other(kw, url).fails("backup", "restore", str(path))
    assert "restore it into a registry of the same kind" in last_line(result)


def test_restore_verifies_the_audit_chain_of_the_snapshot(
    kw: Keyward, fresh_url: FreshUrl, tmp_path: Path, checkpoint_dir: Path
) -> None:
    """A snapshot of an edited chain, even checksummed and signed, is refused with exit 1."""
    kw.ok("person", "add", "alice", "--name", "Alice")
    engine = make_engine(kw.db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET actor = 'nobody' WHERE seq = 2"))
    engine.dispose()
    # "backup create" refuses such a snapshot; take one without its verification.
    directory = tmp_path / "b"
    directory.mkdir()
    if kw.db_url.startswith("sqlite"):
        path = directory / "keyward-registry-20260101T000000Z.sqlite"
        sqlite_snapshot(Path(kw.db_url.removeprefix("sqlite:///")), path)
    else:
        path = directory / "keyward-registry-20260101T000000Z.pgdump"
        pg_dump(kw.db_url, path)
    digest = sha256_file(path)
    write_checksum(path, digest)
    target = other(kw, fresh_url("t"))
    unsigned = target.fails("backup", "restore", str(path))
    assert "refusing an unauthenticated snapshot" in last_line(unsigned)
    # Signed by the real checkpoint key (as if the key holder signed a doctored file).
    keyring = open_keyring(checkpoint_dir)
    head = Verified(2, "0" * 64, None)
    write_snapshot_checkpoint(keyring, path, "sqlite:/elsewhere", head, digest, datetime.now(UTC))
    result = target.fails("backup", "restore", str(path), code=1)
    assert "audit chain broken at audit event 2" in last_line(result)
    assert "content was edited" in last_line(result)
    if kw.db_url.startswith("sqlite"):
        assert not Path(target.db_url.removeprefix("sqlite:///")).exists()
    else:
        assert registry_contents(target.db_url).empty
        engine = create_engine(target.db_url)
        assert "audit_event" not in inspect(engine).get_table_names()
        engine.dispose()


# -- list and prune -----------------------------------------------------------------------


def test_list_json(kw: Keyward, tmp_path: Path) -> None:
    directory = tmp_path / "b"
    assert kw.ok("backup", "list", str(directory), "--json").json() == []
    first = create(kw, directory, env={"KEYWARD_NOW": "2026-01-02T03:04:05Z"})
    second = create(kw, directory, env={"KEYWARD_NOW": "2026-01-03T03:04:05Z"})
    (directory / "unrelated.txt").write_text("x")
    rows = kw.ok("backup", "list", str(directory), "--json").json()
    assert [r["name"] for r in rows] == [first.name, second.name]
    assert rows[0]["taken_at"] == "2026-01-02T03:04:05Z"
    assert rows[0]["path"] == str(first)
    assert rows[0]["bytes"] == first.stat().st_size
    assert rows[0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert rows[0]["kind"] == first.suffix.lstrip(".")
    assert {r["checksum"] for r in rows} == {"unchecked"}
    checked = kw.ok("backup", "list", str(directory), "--check", "--json").json()
    assert {r["checksum"] for r in checked} == {"ok"}

    with open(second, "ab") as handle:
        handle.write(b"x")
    checked = kw.ok("backup", "list", str(directory), "--check", "--json").json()
    assert [r["checksum"] for r in checked] == ["ok", "mismatch"]
    table = kw.fails("backup", "list", str(directory), "--check", code=1)
    assert "mismatch" in table.out


def stamp(at: datetime) -> str:
    return at.strftime("%Y%m%dT%H%M%SZ")


def test_prune_keeps_exactly_the_retention_period(kw: Keyward, tmp_path: Path) -> None:
    now = datetime(2026, 3, 31, 12, 0, 0, tzinfo=UTC)
    directory = tmp_path / "b"
    directory.mkdir()
    ages = {
        "fresh": timedelta(hours=1),
        "day29": timedelta(days=29),
        "boundary": timedelta(days=30),
        "just_over": timedelta(days=30, seconds=1),
        "old": timedelta(days=45),
        "older_pg": timedelta(days=400),
    }
    names = {}
    for label, age in ages.items():
        ext = "pgdump" if label.endswith("_pg") else "sqlite"
        name = f"keyward-registry-{stamp(now - age)}.{ext}"
        names[label] = name
        (directory / name).write_bytes(b"snapshot")
        (directory / f"{name}.sha256").write_text(f"{'0' * 64}  {name}\n")
    foreign = [
        "keyward-registry-20200101T000000Z.sqlite.bak",
        "keyward-registry-old.sqlite",
        "registry-20200101T000000Z.sqlite",
        "notes.txt",
    ]
    for name in foreign:
        (directory / name).write_text("not ours")
    # Half-written files of a crashed run: removed once a day old, whatever their name says.
    crashed = directory / ".keyward-registry-20260330T000000Z.sqlite.tmp-0123abcd"
    running = directory / ".keyward-registry-20260101T000000Z.pgdump.tmp-89abcdef"
    crashed.write_bytes(b"half")
    running.write_bytes(b"half")
    os.utime(crashed, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    foreign.append(running.name)

    env = {"KEYWARD_NOW": now.isoformat()}
    dry = kw.ok(
        "backup", "prune", str(directory), "--keep-days", "30", "--dry-run", "--json", env=env
    ).json()
    expected_deleted = [names["older_pg"], names["old"], names["just_over"]]
    assert dry["deleted"] == expected_deleted
    assert len(list(directory.iterdir())) == 2 * len(ages) + len(foreign) + 1  # + crashed

    result = kw.ok("backup", "prune", str(directory), "--keep-days", "30", "--json", env=env)
    assert result.json()["deleted"] == expected_deleted
    assert result.json()["half_written_deleted"] == [crashed.name]
    kept = {names[label] for label in ("fresh", "day29", "boundary")}
    assert {p.name for p in directory.iterdir()} == (
        kept | {f"{n}.sha256" for n in kept} | set(foreign)
    )
    (event,) = actions(kw, "backup.prune")
    assert event["details"] == {
        "directory": str(directory),
        "keep_days": 30,
        "deleted": expected_deleted,
        "kept": 3,
        "half_written": [crashed.name],
    }

    # Much later: everything is past retention, but the newest snapshot is never deleted.
    later = {"KEYWARD_NOW": (now + timedelta(days=365)).isoformat()}
    result = kw.ok("backup", "prune", str(directory), "--keep-days", "7", "--json", env=later)
    assert result.json()["kept"] == [names["fresh"]]
    assert {p.name for p in directory.iterdir()} == (
        {names["fresh"], f"{names['fresh']}.sha256"} | set(foreign)
    )
    assert kw.ok("audit", "verify").out.startswith("audit chain ok")


def test_prune_rejects_a_bad_retention(kw: Keyward, tmp_path: Path) -> None:
    result = kw.fails("backup", "prune", str(tmp_path), "--keep-days", "0")
    assert "Traceback" not in result.err
    result = kw.fails("backup", "prune", str(tmp_path), "--keep-days", "soon")


def test_prune_plan_edge_cases() -> None:
    assert prune_plan([], datetime(2026, 1, 1, tzinfo=UTC), 30) == ([], [])
    assert parse_name("keyward-registry-20261301T000000Z.sqlite") is None  # month 13
    assert parse_name("keyward-registry-20261123T184512Z.pgdump") == (
        datetime(2026, 11, 23, 18, 45, 12, tzinfo=UTC),
        "pgdump",
    )
    assert list_snapshots(Path("/nonexistent/keyward/backups")) == []


# -- copy command ---------------------------------------------------------------------------


def test_a_failing_copy_command_is_an_alert(kw: Keyward, tmp_path: Path) -> None:
    directory = tmp_path / "b"
    result = kw.fails(
        "backup", "create", str(directory), env={"KEYWARD_BACKUP_COPY": "false"}, code=1
    )
    line = last_line(result)
    assert line.startswith("keyward: error: snapshot keyward-registry-")
    assert "copy command false exited 1" in line
    assert '"event": "backup_copy_failed"' in result.err
    assert '"level": "error"' in result.err
    (snapshot,) = list_snapshots(directory)  # the local snapshot is kept
    (failed,) = actions(kw, "backup.copy-failed")
    assert failed["subject"] == snapshot.name
    assert failed["details"]["exit_code"] == 1  # type: ignore[index]
    assert failed["details"]["program"] == "false"  # type: ignore[index]
    (created,) = actions(kw, "backup.create")
    assert created["details"]["copied"] is False  # type: ignore[index]
    assert kw.ok("audit", "verify").out.startswith("audit chain ok")


def test_a_copy_command_that_hangs_is_killed_and_alerted(kw: Keyward, tmp_path: Path) -> None:
    started = time.monotonic()
    result = kw.fails(
        "backup", "create", str(tmp_path / "b"), "--copy-command", "sleep 60",
        "--copy-timeout", "1", code=1,
    )  # fmt: skip
    assert time.monotonic() - started < 30
    assert "copy command sleep timed out" in last_line(result)
    (failed,) = actions(kw, "backup.copy-failed")
    assert failed["details"]["timed_out"] is True  # type: ignore[index]


def test_a_missing_copy_program_is_an_alert(kw: Keyward, tmp_path: Path) -> None:
    result = kw.fails(
        "backup", "create", str(tmp_path / "b"), "--copy-command",
        "/nonexistent/rclone copyto {path} remote:{name}", code=1,
    )  # fmt: skip
    assert "copy command rclone could not run" in last_line(result)
    assert len(actions(kw, "backup.copy-failed")) == 1


def test_an_unparsable_copy_command_is_refused_before_the_snapshot(
    kw: Keyward, tmp_path: Path
) -> None:
    result = kw.fails("backup", "create", str(tmp_path / "b"), "--copy-command", "cp '{path}")
    assert "the copy command does not parse" in last_line(result)
    result = kw.fails("backup", "create", str(tmp_path / "b"), "--copy-command", "cp '{path}' /x")
    assert "do not quote {path}" in last_line(result)
    assert not (tmp_path / "b").exists()
    assert actions(kw, "backup.create") == []


def test_a_copy_command_copies_the_snapshot_and_its_checksum(kw: Keyward, tmp_path: Path) -> None:
    directory = tmp_path / "local backups; rm -rf x"  # quoted, never given to a shell
    offsite = tmp_path / "off site"
    offsite.mkdir()
    result = kw.ok(
        "backup", "create", str(directory), "--copy-command", f"cp {{path}} '{offsite}/'"
    )
    assert "copied keyward-registry-" in result.out
    assert "with its .sha256, .checkpoint and .checkpoint.sig" in result.out
    (snapshot,) = list_snapshots(directory)
    assert sorted(p.name for p in offsite.iterdir()) == [
        snapshot.name,
        f"{snapshot.name}.checkpoint",
        f"{snapshot.name}.checkpoint.sig",
        f"{snapshot.name}.sha256",
    ]
    assert (offsite / snapshot.name).read_bytes() == snapshot.path.read_bytes()
    check = subprocess.run(
        ["sha256sum", "-c", f"{snapshot.name}.sha256"], cwd=offsite, capture_output=True
    )
    assert check.returncode == 0
    (created,) = actions(kw, "backup.create")
    assert created["details"]["copied"] is True  # type: ignore[index]
    assert actions(kw, "backup.copy-failed") == []


# -- systemd units --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analyze() -> str:
    path = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not os.access(path, os.X_OK):
        pytest.fail("systemd-analyze not found: install the Debian package 'systemd'")
    return path


def backup_unit_copies(tmp_path: Path, service_extra: str = "") -> Path:
    text_ = (UNIT_DIR / SERVICE).read_text()
    assert f"ExecStart={DOCUMENTED_EXEC} " in text_
    text_ = text_.replace(f"ExecStart={DOCUMENTED_EXEC} ", f"ExecStart={keyward_script()} ")
    (tmp_path / SERVICE).write_text(text_ + service_extra)
    shutil.copy(UNIT_DIR / TIMER, tmp_path / TIMER)
    return tmp_path


def verify_units(analyze: str, directory: Path) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", SERVICE, TIMER],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    lines = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "keyward-backup" in line or "ExecStart" in line
    ]
    return proc.returncode, lines


def test_backup_units_verify_cleanly(analyze: str, tmp_path: Path) -> None:
    code, complaints = verify_units(analyze, backup_unit_copies(tmp_path))
    assert code == 0, complaints
    assert complaints == []
    bad = tmp_path / "bad"
    bad.mkdir()
    # systemd only warns (exit 0) on unknown keys: the no-complaints check must see them.
    code, complaints = verify_units(analyze, backup_unit_copies(bad, "ProtectSytem=strict\n"))
    assert any("ProtectSytem" in line for line in complaints)


def test_backup_service_creates_then_prunes(analyze: str) -> None:
    service = parse_unit((UNIT_DIR / SERVICE).read_text())["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == [
        f"{DOCUMENTED_EXEC} --log-format json backup create",
        f"{DOCUMENTED_EXEC} --log-format json backup prune --keep-days 30",
    ]
    assert "KEYWARD_ACTOR=keyward-backup" in service["Environment"]
    for key, wanted in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "UMask": "0077",
        "StateDirectory": "keyward",
    }.items():
        assert service[key][-1] == wanted, key
    assert " ".join(service["ReadWritePaths"]).split() == ["/var/lib/keyward"]
    assert service["CapabilityBoundingSet"] == [""]


def test_backup_timer_is_daily(analyze: str) -> None:
    timer = parse_unit((UNIT_DIR / TIMER).read_text())
    (calendar,) = timer["Timer"]["OnCalendar"]
    proc = subprocess.run(
        [analyze, "calendar", "--iterations=5", "--base-time=2024-01-01 12:00:00 UTC", calendar],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC"},
    )
    assert proc.returncode == 0, proc.stderr
    times = [
        datetime.strptime(m, "%Y-%m-%d %H:%M:%S")
        for m in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", proc.stdout)
    ]
    assert len(times) == 5, proc.stdout
    assert {b - a for a, b in pairwise(times)} == {timedelta(days=1)}
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Timer"].get("Unit", [SERVICE]) == [SERVICE]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


# -- the database's own writer ----------------------------------------------------------------

SQLITE_UNREVOKE = (
    "CREATE TRIGGER unrevoke AFTER UPDATE OF revoked_at ON ssh_key "
    "WHEN NEW.revoked_at IS NOT NULL "
    "BEGIN UPDATE ssh_key SET revoked_at = NULL WHERE id = NEW.id; END"
)
PG_UNREVOKE = [
    "CREATE FUNCTION unrevoke() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN NEW.revoked_at := NULL; RETURN NEW; END $$",
    "CREATE TRIGGER unrevoke BEFORE UPDATE ON ssh_key FOR EACH ROW EXECUTE FUNCTION unrevoke()",
]


def add_unrevoke_trigger(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for statement in [SQLITE_UNREVOKE] if url.startswith("sqlite") else PG_UNREVOKE:
            conn.execute(text(statement))
    engine.dispose()


def triggers(url: str) -> list[str]:
    engine = make_engine(url)
    with engine.connect() as conn:
        if url.startswith("sqlite"):
            query = "SELECT name FROM sqlite_master WHERE type IN ('trigger', 'view')"
        else:
            query = (
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal UNION ALL "
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'public'"
            )
        names = sorted(str(row[0]) for row in conn.execute(text(query)))
    engine.dispose()
    return names


def key_statuses(cli: Keyward) -> list[str]:
    return [k["status"] for k in cli.ok("key", "list", "alice", "--all", "--json").json()]


def test_restore_leaves_behind_a_trigger_added_to_the_registry(
    kw: Keyward, fresh_url: FreshUrl, tmp_path: Path
) -> None:
    """Only table rows are restored: an un-revoking trigger in the database stays behind."""
    from tests.keygen import make_key

    kw.ok("person", "add", "alice", "--name", "Alice")
    _, pub = make_key(tmp_path / "keys", "ed25519")
    kw.ok("key", "add", "alice", str(pub), "--attest", "admin")
    fingerprint = kw.ok("key", "list", "alice", "--json").json()[0]["fingerprint"]
    add_unrevoke_trigger(kw.db_url)
    kw.ok("key", "revoke", fingerprint, "--reason", "the trigger undoes this")
    assert key_statuses(kw) == ["active"]  # the trigger works on the live registry
    assert "unrevoke" in triggers(kw.db_url)
    # The trigger is in the live database, so it is in its (genuinely signed) snapshot too.
    path = create(kw, tmp_path / "b")
    target = other(kw, fresh_url("t"))
    target.ok("backup", "restore", str(path))
    assert triggers(target.db_url) == []
    assert key_statuses(target) == ["active"]
    target.ok("key", "revoke", fingerprint, "--reason", "stolen")
    assert key_statuses(target) == ["revoked"]
    assert target.ok("audit", "verify").out.startswith("audit chain ok")
    # Restored over the live registry itself, the trigger is gone there as well.
    kw.ok("backup", "restore", str(path), "--force")
    assert triggers(kw.db_url) == []
    kw.ok("key", "revoke", fingerprint, "--reason", "stolen")
    assert key_statuses(kw) == ["revoked"]


def test_restore_refuses_a_doctored_snapshot_with_a_rewritten_checksum(
    kw: Keyward, fresh_url: FreshUrl, tmp_path: Path
) -> None:
    kw.ok("person", "add", "alice", "--name", "Alice")
    path = create(kw, tmp_path / "b")
    if kw.db_url.startswith("sqlite"):
        conn = sqlite3.connect(path)
        conn.execute(SQLITE_UNREVOKE)
        conn.commit()
        conn.close()
    else:
        with open(path, "ab") as handle:
            handle.write(b"\0" * 64)
    write_checksum(path, sha256_file(path))  # what a writer of the backup dir can do
    assert check_checksum(path)  # the .sha256 alone says fine
    target = other(kw, fresh_url("t"))
    result = target.fails("backup", "restore", str(path))
    assert "is not the snapshot its signed checkpoint names" in last_line(result)
    assert "nothing was restored" in last_line(result)
    assert registry_contents(target.db_url).empty
    # A signature that is not the checkpoint key's is refused the same way.
    stranger = open_keyring(tmp_path / "stranger")
    statement = checkpoint_file(path).read_bytes()
    from keyward.registry.checkpoint import Checkpoint

    signature_file(path).write_bytes(stranger.sign(Checkpoint.parse(statement)))
    result = target.fails("backup", "restore", str(path))
    assert "is not signed by a trusted checkpoint key" in last_line(result)
    checkpoint_file(path).unlink()
    result = target.fails("backup", "restore", str(path))
    assert "refusing an unauthenticated snapshot" in last_line(result)


def test_a_restore_drill_on_another_machine_needs_the_pinned_key(
    kw: Keyward, fresh_url: FreshUrl, tmp_path: Path, checkpoint_dir: Path
) -> None:
    kw.ok("person", "add", "alice", "--name", "Alice")
    path = create(kw, tmp_path / "b")
    target = other(kw, fresh_url("drill"))
    elsewhere = {"KEYWARD_CHECKPOINT_DIR": str(tmp_path / "drill-checkpoints")}
    refused = target.fails("backup", "restore", str(path), env=elsewhere)
    assert "is not signed by a trusted checkpoint key" in last_line(refused)
    assert "pass --trusted-key checkpoint_ed25519.pub" in last_line(refused)
    assert registry_contents(target.db_url).empty
    pinned = tmp_path / "pinned.pub"
    shutil.copy(checkpoint_dir / "checkpoint_ed25519.pub", pinned)
    target.ok("backup", "restore", str(path), "--trusted-key", str(pinned), env=elsewhere)
    assert usernames(target) == ["alice"]


def test_restoring_an_older_snapshot_starts_the_checkpoints_again(
    kw: Keyward, tmp_path: Path
) -> None:
    kw.ok("person", "add", "alice", "--name", "Alice")
    path = create(kw, tmp_path / "b")  # checkpoint at 2
    kw.ok("person", "add", "bob", "--name", "Bob")
    kw.ok("person", "add", "carol", "--name", "Carol")
    kw.ok("audit", "verify")  # checkpoint at 5
    result = kw.ok("backup", "restore", str(path), "--force")
    assert "audit chain ok: 2 events" in result.out
    (event,) = actions(kw, "backup.restore")
    assert ".retired-" in event["details"]["checkpoints_retired"]  # type: ignore[index]
    verified = kw.ok("audit", "verify").out
    assert verified.startswith("audit chain ok: 3 events")
    assert usernames(kw) == ["alice"]


def test_a_truncated_live_chain_gets_no_snapshot(kw: Keyward, tmp_path: Path) -> None:
    kw.ok("person", "add", "alice", "--name", "Alice")
    kw.ok("person", "add", "bob", "--name", "Bob")
    kw.ok("audit", "verify")  # checkpoint at 3
    engine = make_engine(kw.db_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))
        conn.execute(
            text(
                "UPDATE audit_head SET seq = 2, "
                "hash = (SELECT hash FROM audit_event WHERE seq = 2) WHERE id = 1"
            )
        )
    engine.dispose()
    result = kw.fails("backup", "create", str(tmp_path / "b"), code=1)
    assert "no snapshot kept" in last_line(result)
    assert "event 3 was deleted" in last_line(result)
    assert list((tmp_path / "b").iterdir()) == []
