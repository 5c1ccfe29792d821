"""What an administrator's terminal shows: the answer on stdout, a quiet stderr, yes/no,
a plan that reads as changes, progress only on a terminal, and who holds the writers' lock.

The real CLI throughout (in-process via tests/cli_runner.py, or as a subprocess where a
closed pipe or a terminal is the point).
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyward.cli.output import table
from keyward.daemon.support import WriterLock
from keyward.logs import human_value
from keyward.plan import LineChange, shown_changes
from keyward.registry.lock import Holder, LockBusy, reconcile_lock
from keyward.registry.store import Registry
from tests.agent_env import AgentEnv
from tests.cli_runner import Keyward, Result

ROOT = Path(__file__).resolve().parent.parent


def json_events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


# -- the log policy -------------------------------------------------------------


@pytest.fixture
def kw_sqlite(sqlite_url: str, tmp_path: Path) -> Keyward:
    runner = Keyward(sqlite_url, str(tmp_path / "no-inventory"))
    runner.ok("init")
    return runner


def test_a_change_prints_its_answer_and_nothing_on_stderr(kw_sqlite: Keyward) -> None:
    result = kw_sqlite.ok("person", "add", "alice", "--name", "Alice A")
    assert result.out == "added person alice\n"
    assert result.err == ""


def test_json_log_format_keeps_every_change_at_info(kw_sqlite: Keyward) -> None:
    result = kw_sqlite.ok("--log-format", "json", "person", "add", "alice", "--name", "A")
    events = json_events(result.err)
    assert len(events) == len(result.err.splitlines())  # nothing but JSON lines
    changes = [e for e in events if e["event"] == "registry_change"]
    assert [(e["action"], e["level"]) for e in changes] == [("person.add", "info")]
    # The same through the environment (what a cron job or a unit drop-in can set).
    env = {"KEYWARD_LOG_FORMAT": "json"}
    again = kw_sqlite.ok("person", "add", "bob", "--name", "B", env=env)
    assert [e["action"] for e in json_events(again.err)] == ["person.add"]


@pytest.mark.parametrize(
    ("args", "levels"),
    [
        ((), None),
        (("-v",), {"info"}),
        (("-q", "--log-format", "json"), None),
        (("-v", "--log-format", "human"), {"info"}),
    ],
)
def test_verbosity_table(
    kw_sqlite: Keyward, args: tuple[str, ...], levels: set[str] | None
) -> None:
    result = kw_sqlite.ok(*args, "person", "add", "carol", "--name", "C")
    if levels is None:
        assert result.err == ""
        return
    lines = result.err.splitlines()
    assert lines, str(result)
    if "human" in args:
        assert lines[0].startswith("info: registry_change action=person.add")
        assert "{'" not in result.err  # no Python dict reprs: mappings are JSON
        assert '"full_name": "C"' in result.err
    else:
        assert {str(e["level"]) for e in json_events(result.err)} == levels


def test_verbose_and_quiet_together_is_bad_input(kw_sqlite: Keyward) -> None:
    result = kw_sqlite.fails("-v", "-q", "status")
    assert result.err == "keyward: error: -v and -q contradict each other; give one\n"


def test_a_closed_pipe_is_not_an_error(kw_sqlite: Keyward, sqlite_url: str) -> None:
    """``keyward audit log | head -1``: the reader went away; exit 0, nothing on stderr."""
    for n in range(5):
        kw_sqlite.ok("person", "add", f"p{n}", "--name", "P")
    env = {**os.environ, "KEYWARD_DB": sqlite_url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyward", "audit", "log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as head does after its line
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert err == b""
    shell = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m keyward audit log | head -1"],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert shell.returncode == 0 and shell.stderr == b"", shell
    assert shell.stdout.count(b"\n") == 1


# -- booleans -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "yes"),
        (False, "no"),
        (None, "-"),
        (["a", "b"], "a,b"),
        ([], "-"),
        ({"k": True}, '{"k": true}'),
        ("two words", '"two words"'),
        ("plain", "plain"),
        (3, "3"),
    ],
)
def test_human_values(value: object, shown: str) -> None:
    assert human_value(value) == shown


def test_tables_say_yes_and_no(capsys: pytest.CaptureFixture[str]) -> None:
    table([{"a": True, "b": False, "c": None}], [("a", "A"), ("b", "B"), ("c", "C")])
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["yes", "no", "-"]


# -- the fleet: plan, progress, lock waits ----------------------------------------


def run_in_terminal(env: AgentEnv, *args: str) -> tuple[int, str, str]:
    """The CLI as a subprocess whose stderr is a terminal (a pty) and stdout a pipe."""
    leader, follower = pty.openpty()
    environ = {
        **os.environ,
        "KEYWARD_DB": env.kw.db_url,
        "KEYWARD_INVENTORY": env.kw.inventory,
        "KEYWARD_ACTOR": "admin",
        "PYTHONPATH": str(ROOT),
        "TERM": "xterm",
        "COLUMNS": "100",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyward", *args],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=environ,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    code = proc.wait(timeout=60)
    return code, out, b"".join(chunks).decode(errors="replace")


def test_reconcile_shows_progress_on_a_terminal_only(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    code, out, terminal = run_in_terminal(env, "reconcile")
    assert code == 0, terminal
    assert "reconcile" in terminal and "3/3" in terminal, terminal
    assert out == "3 hosts: 3 changed, 0 failed\n"
    # -q: no progress on the terminal either.
    code, out, terminal = run_in_terminal(env, "-q", "reconcile")
    assert code == 0 and "3/3" not in terminal and "\x1b" not in terminal, terminal
    # Piped (the runner's stderr is not a terminal): no bar, no escape codes, no log lines.
    piped = env.kw.ok("reconcile")
    assert piped.err == "" and "\x1b" not in piped.out


def test_hosts_scan_piped_has_no_progress(env: AgentEnv) -> None:
    result = env.kw.ok("hosts", "scan", *(h.name for h in env.hosts))
    assert result.err == ""
    assert "\x1b" not in result.out and "hosts scan" not in result.out


def test_offboard_and_evidence_say_yes_and_no(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    offboard = env.kw("-q", "offboard", "alice", "--reason", "left")
    assert offboard.code == 0, str(offboard)
    assert "revoked in the registry" not in offboard.out  # -q: no chatter
    assert "confirmed on every host" in offboard.out  # the answer stays
    log = env.kw.ok("audit", "log").out
    assert "=True" not in log and "=False" not in log and "['" not in log
    report = env.kw.ok("report", "offboarding", "alice").out
    assert "| True |" not in report and "| yes |" in report
    assert env.kw.ok("offboard", "status", "alice", "--json").json()["targets"][0]["removed"] in (
        True,
        False,
    )


def test_plan_shows_a_changed_expiry_as_one_update_and_ends_with_a_summary(
    env: AgentEnv,
) -> None:
    env.person_with_key("alice", "devops")
    env.kw.ok("reconcile")
    env.kw.ok("role", "revoke", "devops", "alice", "--reason", "shorter")
    until = (datetime.now(UTC) + timedelta(days=30)).date()
    env.kw.ok("role", "grant", "devops", "alice", "--reason", "t", "--until", str(until), actor="s")
    result = env.kw("--log-format", "json", "plan")
    assert result.code == 3, str(result)
    lines = result.out.splitlines()
    updates = [ln for ln in lines if ln.lstrip().startswith("~ alice")]
    assert len(updates) == 6, result.out  # deploy and root on 3 hosts
    ends = until + timedelta(days=1)  # a grant "until" a day lasts through that day
    assert all(f"-> {ends} 00:00 UTC" in ln for ln in updates), updates
    assert not [ln for ln in lines if ln.lstrip().startswith(("+ ", "- "))], result.out
    summary = "plan: 3 hosts, 3 to change (0 additions, 0 removals, 6 updates), 0 in sync, 0 failed"
    assert lines[-1] == summary
    # The log says what the screen said.
    events = json_events(result.err)
    planned = [e for e in events if e["event"] == "change_planned"]
    assert len(planned) == 6 and {e["action"] for e in planned} == {"update"}
    assert {e["new_expiry"] for e in planned} == {f"{ends:%Y%m%d}000000Z"}
    finished = [e for e in events if e["event"] == "plan_finished"]
    assert len(finished) == 1
    assert {k: finished[0][k] for k in ("hosts", "to_change", "updates", "additions")} == {
        "hosts": 3,
        "to_change": 3,
        "updates": 6,
        "additions": 0,
    }
    assert not [e for e in events if e["event"] == "run_finished" and "changes" in e]
    # The JSON plan stays the diff the agent applies: a removal and an addition each.
    diff = env.kw("plan", "--json").json()
    actions = sorted(c["action"] for r in diff for f in r["files"] for c in f["changes"])
    assert actions == ["add"] * 6 + ["remove"] * 6
    # Applying it is unchanged, and the full log keeps every line written and removed.
    applied = env.kw.ok("--log-format", "json", "reconcile")
    written = [
        e["event"] for e in json_events(applied.err) if e["event"] in ("key_added", "key_removed")
    ]
    assert sorted(written) == ["key_added"] * 6 + ["key_removed"] * 6
    clean = env.kw("plan")
    assert clean.code == 0, str(clean)
    assert clean.out.splitlines()[-1] == (
        "plan: 3 hosts, 0 to change (0 additions, 0 removals, 0 updates), 3 in sync, 0 failed"
    )


def while_locked(env: AgentEnv, *args: str) -> Result:
    """Run the CLI while another writer ("keyward offboard" by carol) holds the lock ~1.5 s."""
    registry = Registry.open(env.kw.db_url)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with reconcile_lock(registry, holder=Holder("keyward offboard", "carol")):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        threading.Timer(1.5, release.set).start()
        return env.kw(*args)
    finally:
        release.set()
        holder.join(30)
        registry.dispose()


def test_reconcile_says_whom_it_waits_for(env_any_db: AgentEnv) -> None:
    result = while_locked(env_any_db, "reconcile")
    assert result.code == 0, str(result)
    assert result.err.startswith("waiting for the writers' lock held by keyward offboard ("), (
        result.err
    )
    assert "actor=carol" in result.err or "actor carol" in result.err
    assert f"pid {os.getpid()}" in result.err or f"pid={os.getpid()}" in result.err
    assert len(result.err.splitlines()) == 1


def test_offboard_says_whom_it_waits_for(env: AgentEnv) -> None:
    env.person_with_key("alice", "devops")
    result = while_locked(env, "offboard", "alice", "--reason", "left")
    assert result.code == 0, str(result)
    assert result.err.splitlines() == [
        line
        for line in result.err.splitlines()
        if line.startswith("waiting for the writers' lock held by keyward offboard (pid ")
    ]
    assert len(result.err.splitlines()) == 1
    assert "confirmed on every host" in result.out


def test_quiet_reconcile_waits_silently(env: AgentEnv) -> None:
    result = while_locked(env, "-q", "reconcile")
    assert result.code == 0 and result.err == "", str(result)


def test_a_busy_lock_names_the_daemon(db_url: str, tmp_path: Path) -> None:
    Keyward(db_url, str(tmp_path / "inv")).ok("init")
    registry = Registry.open(db_url)
    lock = WriterLock(registry)

    async def held_by_daemon() -> str:
        await lock.acquire()
        try:
            with pytest.raises(LockBusy) as busy, reconcile_lock(registry, wait=0.0):
                pass
            return str(busy.value.message)
        finally:
            await lock.release()

    try:
        message = asyncio.run(held_by_daemon())
    finally:
        lock.close()
        registry.dispose()
    assert message.startswith("another keyward writer is running: keyward daemon ("), message
    assert str(os.getpid()) in message


# -- the plan as people read it (pure) ----------------------------------------------

E1, E2 = 'expiry-time="20270101000000Z"', 'expiry-time="20270301000000Z"'


def rm(fp: str | None, *options: str, reason: str = "replaced") -> LineChange:
    return LineChange("remove", fp, "alice", reason, tuple(options))


def add(fp: str, *options: str) -> LineChange:
    return LineChange("add", fp, "alice", "granted", tuple(options))


@pytest.mark.parametrize(
    ("changes", "shown"),
    [
        # only the expiry differs: one update, old -> new
        ([rm("A", E1), add("A", E2)], [("update", "A", "20270101000000Z", "20270301000000Z")]),
        # other options too: a real replacement, shown as it is
        (
            [rm("A", E1), add("A", "no-pty", E2)],
            [("remove", "A", None, None), ("add", "A", None, None)],
        ),
        # another key: not an update
        ([rm("A", E1), add("B", E2)], [("remove", "A", None, None), ("add", "B", None, None)]),
        # an expiry appears or goes away: still one update
        ([rm("A", "no-pty"), add("A", "no-pty", E2)], [("update", "A", None, "20270301000000Z")]),
        # option names are case-insensitive in sshd
        (
            [rm("A", E1.upper()), add("A", E2)],
            [("update", "A", "20270101000000Z", "20270301000000Z")],
        ),
        # a duplicate line stays a removal; the update takes the first removal's place
        (
            [rm("A", E1), rm("A", E1, reason="duplicate"), add("A", E2)],
            [("update", "A", "20270101000000Z", "20270301000000Z"), ("remove", "A", None, None)],
        ),
        # nothing to pair: unparsable line, plain addition
        ([rm(None), add("C", E2)], [("remove", None, None, None), ("add", "C", None, None)]),
    ],
)
def test_shown_changes(
    changes: list[LineChange], shown: list[tuple[str, str | None, str | None, str | None]]
) -> None:
    got = shown_changes(changes)
    assert [(c.action, c.fingerprint, c.old_expiry, c.new_expiry) for c in got] == shown
