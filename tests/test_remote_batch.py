"""The helper's ``write_many``: all of a host's writes in one request, each its own
compare-and-swap, against real accounts and real files (as tests/test_remote.py).

A stale file is refused and left untouched while the others are written; a malformed request
writes nothing at all; a trap in one file is refused for that file alone; a file given up on
(deadline) never renames, and the files after it are still written.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from keyward.agent import remote
from tests import test_remote
from tests.test_remote import (
    DEFAULT,
    KEY,
    Account,
    Agent,
    b64,
    new_account,
    raw_call,
    root_file,
    sha,
    snapshot,
    temps,
    wait_until,
)

# The fixtures of tests/test_remote.py: real accounts under /srv, the helper as a process.
base = test_remote.base
account = test_remote.account
agent = test_remote.agent
blind = test_remote.blind

pytestmark = [
    pytest.mark.fleet,  # root: creates local accounts
    pytest.mark.timeout(120),
]


def entry(acct: Account, content: bytes, expect: str | None, **more: Any) -> dict[str, Any]:
    return {
        "account": acct.name,
        "pattern": DEFAULT,
        "content_b64": b64(content),
        "expect_sha256": expect,
        "create_dir": False,
        **more,
    }


def test_hello_announces_the_batch(agent: Agent) -> None:
    hello = agent.call("hello")
    assert hello["protocol"] == remote.PROTOCOL == 2
    assert hello["max_write_files"] == remote.MAX_WRITE_FILES


def test_a_stale_file_is_refused_alone_and_the_others_are_written(
    agent: Agent, account: Account, base: Path
) -> None:
    with new_account(base) as other:
        account.setup_keys()
        other.setup_keys(b"other\n")
        before = snapshot(other.keys)
        # The stale one first: a refusal must not stop the file after it.
        reply = agent.call(
            "write_many",
            files=[
                entry(other, b"new other\n", sha(b"what this daemon saw before\n")),
                entry(account, b"new\n", sha(KEY)),
            ],
        )
        assert reply["ok"] is True, reply
        stale, right = reply["files"]
        assert stale["ok"] is False
        assert stale["error"]["code"] == "changed"
        assert stale["sha256"] == sha(b"other\n")  # what the host found
        assert stale["path"] == str(other.keys)
        assert snapshot(other.keys) == before
        assert right["ok"] is True, right
        assert right["sha256"] == sha(b"new\n")
        assert account.keys.read_bytes() == b"new\n"
        assert temps(account.ssh, other.ssh) == []
        # Each entry is exactly the reply a single write gives.
        single = agent.call("write", **entry(account, b"new\n", sha(b"new\n")))
        assert set(single) - {"id"} == set(right)
        assert {k: v for k, v in single.items() if k != "id"} == right


def test_a_malformed_batch_writes_nothing(agent: Agent, account: Account) -> None:
    account.setup_keys()
    before = snapshot(account.keys)
    good = entry(account, b"new\n", sha(KEY))
    bad_requests = [
        {"files": "nope"},
        {"files": [good, "not an object"]},
        {"files": [good] * (remote.MAX_WRITE_FILES + 1)},
        {"files": [good, {**good, "content_b64": "!!"}]},
        {"files": [good, {**good, "content_b64": 7}]},
        {"files": [good, {**good, "expect_sha256": "not-hex"}]},
        {"files": [good, {**good, "create_dir": "yes"}]},
        {"files": [good], "timeout": 0},
        {},
    ]
    for fields in bad_requests:
        reply = raw_call(agent, op="write_many", **fields)
        assert reply["ok"] is False, fields
        assert reply["error"]["code"] == "bad_request", reply
        assert "files" not in reply
        assert snapshot(account.keys) == before, fields
    assert (
        "files[1]: content_b64 is not valid base64"
        in (
            agent.call("write_many", files=[good, {**good, "content_b64": "!!"}])["error"][
                "message"
            ]
        )
    )
    assert temps(account.ssh) == []
    assert raw_call(agent, op="write_many", files=[]) == {"id": "raw", "ok": True, "files": []}
    assert snapshot(account.keys) == before


def test_a_trap_in_one_file_is_refused_for_that_file_alone(
    agent: Agent, account: Account, base: Path
) -> None:
    with new_account(base) as other:
        secret = root_file(base)
        account.setup_keys()
        account.keys.unlink()
        account.keys.symlink_to(secret)
        secret_before = snapshot(secret)
        other.setup_keys(b"other\n")
        reply = agent.call(
            "write_many",
            files=[
                entry(account, b"pwned\n", None),  # a hash or null never replaces a symlink
                entry(account, b"pwned\n", sha(KEY)),
                entry(other, b"new other\n", sha(b"other\n")),
                entry(other, b"x\n", None, account="kwnosuchuser"),
            ],
        )
        assert reply["ok"] is True, reply
        codes = [f["error"]["code"] if f["error"] else None for f in reply["files"]]
        assert codes == ["symlink", "symlink", None, "no_such_account"]
        assert snapshot(secret) == secret_before
        assert account.keys.is_symlink()
        assert other.keys.read_bytes() == b"new other\n"
        assert temps(account.ssh, other.ssh) == []


def test_a_file_given_up_on_never_renames_and_the_next_is_written(
    account: Account, base: Path, monkeypatch: pytest.MonkeyPatch, blind: None
) -> None:
    with new_account(base) as other:
        account.setup_keys()
        other.setup_keys(b"other\n")
        release = threading.Event()
        real = remote.entry_unchanged

        def slow_check(parent: Any, name: str, path: str, sig: Any) -> None:
            real(parent, name, path, sig)
            if path == str(account.keys):
                release.wait(30)  # a check that takes longer than the deadline

        monkeypatch.setattr(remote, "entry_unchanged", slow_check)
        reply = remote.op_write_many(
            {"files": [entry(account, b"new\n", sha(KEY)), entry(other, b"o2\n", sha(b"other\n"))]}
        )
        late, written = reply["files"]
        assert late["ok"] is False
        assert late["error"] == {
            "code": "timeout",
            "message": f"timed out after 1 s writing {account.keys}; it was left as it was",
        }
        assert written["ok"] is True, written
        assert other.keys.read_bytes() == b"o2\n"
        release.set()
        wait_until(lambda: remote.stuck_workers() == 0)
        assert account.keys.read_bytes() == KEY
        assert temps(account.ssh, other.ssh) == []
