"""Offboarding evidence from what a run already read or wrote, as a table of cases.

``confirm_removal`` is pure; the end-to-end proof (real sshd, a real ssh client
refused) is ``tests/test_lifecycle.py``.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from keyward.agent.reconcile import FileResult, confirm_removal
from keyward.desired import DesiredFile, FileTarget
from keyward.keys import ED25519, PublicKey, encode_string
from keyward.plan import FilePlan, LineChange, Observed

TARGET = FileTarget("web-1", "deploy", "%h/.ssh/authorized_keys")
PATH = "/home/deploy/.ssh/authorized_keys"


def key() -> PublicKey:
    blob = encode_string(ED25519.encode()) + encode_string(secrets.token_bytes(32))
    return PublicKey(ED25519, blob)


LEAVER, OTHER, LEAVER_2ND = key(), key(), key()
CASE = frozenset({LEAVER.fingerprint, LEAVER_2ND.fingerprint})


def content(*keys: PublicKey) -> bytes:
    return b"".join(f"{k.openssh()} x\n".encode() for k in keys)


def removal(k: PublicKey) -> LineChange:
    return LineChange("remove", k.fingerprint, "leaver", "offboarded")


BEFORE = content(OTHER, LEAVER)
AFTER = content(OTHER)


def present(data: bytes) -> Observed:
    return Observed(TARGET, "present", PATH, data)


UNREADABLE = Observed(TARGET, "error", PATH, None, error_code="symlink", error_message="a symlink")
WRITTEN = FilePlan(TARGET, "update", PATH, (removal(LEAVER),), AFTER)
IN_SYNC = FilePlan(TARGET, "in-sync", PATH)


@pytest.mark.parametrize(
    ("case", "observed", "result", "clean", "removed", "error"),
    [
        (
            "written and read back",
            present(BEFORE),
            FileResult(WRITTEN, written=True),
            True,
            1,
            None,
        ),
        ("already clean, left alone", present(AFTER), FileResult(IN_SYNC), True, 0, None),
        ("no file at all", Observed(TARGET, "missing", PATH), FileResult(IN_SYNC), True, 0, None),
        (
            "key still there (nothing written)",
            present(BEFORE),
            FileResult(IN_SYNC),
            False,
            0,
            "1 of the person's keys still present",
        ),
        (
            "write failed: the old read proves nothing",
            present(BEFORE),
            FileResult(WRITTEN, error="changed by someone else"),
            False,
            0,
            "changed by someone else",
        ),
        (
            "write failed on a file that looked clean",
            present(AFTER),
            FileResult(FilePlan(TARGET, "fix-mode", PATH, (), AFTER), error="permission denied"),
            False,
            0,
            "permission denied",
        ),
        (
            "unsafe file the plan refused",
            UNREADABLE,
            FileResult(FilePlan(TARGET, "error", PATH, error="a symlink"), error="a symlink"),
            False,
            0,
            "a symlink",
        ),
        (
            "replaceable entry written over",
            UNREADABLE,
            FileResult(WRITTEN, written=True),
            True,
            1,
            None,
        ),
        (
            "dry run kept the key: not evidence",
            present(BEFORE),
            FileResult(WRITTEN),
            False,
            0,
            "1 of the person's keys still present",
        ),
    ],
)
def test_evidence_per_file(
    case: str,
    observed: Observed,
    result: FileResult,
    clean: bool,
    removed: int,
    error: str | None,
) -> None:
    desired = DesiredFile(TARGET, "exclusive", ())
    (confirmation,) = confirm_removal([desired], {TARGET: observed}, [result], {7: CASE})
    assert (confirmation.clean, confirmation.removed, confirmation.error) == (clean, removed, error)
    assert (confirmation.case_id, confirmation.account, confirmation.path) == (7, "deploy", PATH)


def test_each_open_case_gets_its_own_evidence() -> None:
    desired = DesiredFile(TARGET, "exclusive", ())
    other_case = frozenset({OTHER.fingerprint})
    out = confirm_removal(
        [desired],
        {TARGET: present(BEFORE)},
        [FileResult(WRITTEN, written=True)],
        {1: CASE, 2: other_case},
    )
    assert [(c.case_id, c.clean, c.removed) for c in out] == [(1, True, 1), (2, False, 0)]
    assert out[1].error == "1 of the person's keys still present"


class _Host:
    """Answers the ``auth_log`` request as a host's helper would, with a chosen source."""

    def __init__(self, host: object, reply: dict[str, object]) -> None:
        self.host = host
        self.reply = reply

    async def auth_log(self, source: str, **args: object) -> object:
        from keyward.agent.transport import auth_log_read

        return auth_log_read(self.reply)


JOURNAL_REPLY = {
    "ok": True,
    "source": "journal",
    "cursor": "s=1",
    "lines": [{"text": "sshd[1]: Accepted publickey for root", "ts": None, "pos": None}],
}


@pytest.mark.parametrize(
    ("asked", "kind", "lines"),
    [("auto", "journal", 1), ("journal", "journal", 1), ("/var/log/auth.log", None, 0)],
)
def test_a_batch_is_journal_only_where_the_inventory_asked_for_it(
    asked: str, kind: str | None, lines: int
) -> None:
    """A host told to read a file cannot make its lines count as the trusted journal."""
    import asyncio
    from types import SimpleNamespace
    from typing import Any, cast

    from keyward.agent.reconcile import collect_auth_log
    from keyward.inventory.model import Host

    host = Host("h1", "prod", "127.0.0.1", 22, "root", ("%h/.ssh/authorized_keys",),
                "exclusive", (), ("root",), auth_log=asked)  # fmt: skip
    conn = _Host(host, JOURNAL_REPLY)
    ctx = SimpleNamespace(auth_positions={}, log=SimpleNamespace(bind=lambda **_: _Quiet()))
    batch = asyncio.run(collect_auth_log(cast(Any, conn), cast(Any, ctx)))
    assert len(batch.lines) == lines
    assert (batch.kind if batch.error is None else None) == kind


class _Quiet:
    def warning(self, *args: object, **kwargs: object) -> None:
        pass


class _Wire:
    """The JSON side of a helper: answers each op with a canned reply."""

    def __init__(self, replies: dict[str, dict[str, object]]) -> None:
        self.replies = replies
        self.asked: list[tuple[str, dict[str, object]]] = []

    async def call(self, op: str, timeout: float = 0, **args: object) -> dict[str, object]:
        self.asked.append((op, args))
        return self.replies[op]

    async def call_encoded(self, op: str, fields: str, timeout: float = 0) -> dict[str, object]:
        """The request as the helper decodes it from the line (members already encoded)."""
        import json

        return await self.call(op, timeout, **json.loads("{" + fields + "}"))


def _over_ssh(replies: dict[str, dict[str, object]]) -> tuple[Any, _Wire]:
    """A ``HostConnection`` whose helper is ``_Wire``: the SSH transport minus SSH."""
    from typing import cast

    from keyward.agent.connection import HostConnection
    from keyward.inventory.model import Host

    host = Host(
        "h1",
        "prod",
        "127.0.0.1",
        22,
        "root",
        ("%h/.ssh/authorized_keys",),
        "exclusive",
        (),
        ("root",),
    )
    wire = _Wire(replies)
    return HostConnection(host, cast(Any, None), cast(Any, wire)), wire


def test_the_ssh_transport_reads_the_helpers_replies_into_typed_ones() -> None:
    import asyncio
    import base64

    from keyward.agent.transport import FileRead, HelperError

    present = {
        "account": "root",
        "path": "/root/.ssh/authorized_keys",
        "state": "present",
        "content_b64": base64.b64encode(b"k\n").decode(),
        "sha256": "ab",
        "owner_ok": False,
        "replaceable": False,
        "error": None,
    }
    linked = {
        "account": "root",
        "path": "/p",
        "state": "error",
        "error": {"code": "hardlink", "message": "/p has 2 hard links"},
    }
    conn, wire = _over_ssh(
        {
            "read": {"ok": True, "files": [present, linked]},
            "write": {
                "ok": False,
                "path": "/p",
                "sha256": None,
                "error": {"code": "changed", "message": "/p changed"},
            },
            "sshd_config": {"ok": True, "settings": {"loglevel": "INFO"}},
        }
    )
    files = asyncio.run(conn.read([("root", "%h/.ssh/authorized_keys"), ("root", "/p")]))
    assert files == [
        FileRead("/root/.ssh/authorized_keys", "present", b"k\n", "ab", False, False, None),
        # An older helper that does not say: a hard link is replaceable.
        FileRead(
            "/p", "error", None, None, True, True, HelperError("hardlink", "/p has 2 hard links")
        ),
    ]
    written = asyncio.run(conn.write("root", "/p", b"new\n", "ab"))
    assert not written.ok and written.error == HelperError("changed", "/p changed")
    assert wire.asked[1] == (
        "write",
        {
            "account": "root",
            "pattern": "/p",
            "content_b64": "bmV3Cg==",
            "expect_sha256": "ab",
            "create_dir": True,
        },
    )
    assert asyncio.run(conn.sshd_config("root", None)).settings == {"loglevel": "INFO"}


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ({"ok": False, "error": {"code": "bad_request", "message": "no"}}, "h1: read failed: no"),
        ({"ok": True, "files": [{"state": "present", "content_b64": "abc"}]}, "not base64"),
        ({"ok": True}, "h1: the answer to read does not list every file"),
        ({"ok": True, "files": []}, "h1: the answer to read does not list every file"),
    ],
)
def test_a_read_reply_that_makes_no_sense_fails_the_host(
    reply: dict[str, object], message: str
) -> None:
    import asyncio

    from keyward.errors import HostError

    conn, _ = _over_ssh({"read": reply})
    with pytest.raises(HostError, match=message):
        asyncio.run(conn.read([("root", "%h/.ssh/authorized_keys")]))


def test_the_ssh_transport_sends_a_hosts_writes_in_one_request() -> None:
    """``write_many``: one helper call for every file, each content encoded once, each reply
    typed as a write's; a request refused as a whole is every file's error; a reply that
    does not answer every file fails the host."""
    import asyncio

    from keyward.agent import connection
    from keyward.agent.transport import HelperError, WriteRequest
    from keyward.errors import HostProtocolError

    ok = {"ok": True, "path": "/a", "sha256": "s1", "fixed_dir_mode": True, "error": None}
    changed = {"ok": False, "path": "/b", "sha256": "s0",
               "error": {"code": "changed", "message": "/b changed"}}  # fmt: skip
    conn, wire = _over_ssh({"write_many": {"ok": True, "files": [ok, changed]}})
    files = [
        WriteRequest("root", "/a", b"same\n", "x"),
        WriteRequest("deploy", "/b", b"same\n", None),
    ]
    results = asyncio.run(conn.write_many(files))
    assert [r.error for r in results] == [None, HelperError("changed", "/b changed")]
    assert results[0].fixed_dir_mode and results[0].sha256 == "s1"
    assert [op for op, _ in wire.asked] == ["write_many"]
    sent = wire.asked[0][1]["files"]
    assert sent == [
        {"account": "root", "pattern": "/a", "content_b64": "c2FtZQo=", "expect_sha256": "x",
         "create_dir": True},
        {"account": "deploy", "pattern": "/b", "content_b64": "c2FtZQo=", "expect_sha256": None,
         "create_dir": True},
    ]  # fmt: skip
    assert asyncio.run(conn.write_many([])) == [] and len(wire.asked) == 1
    refused = {"ok": False, "error": {"code": "bad_request", "message": "no"}}
    conn, _ = _over_ssh({"write_many": refused})
    assert [r.error for r in asyncio.run(conn.write_many(files))] == [
        HelperError("bad_request", "no")
    ] * 2
    conn, _ = _over_ssh({"write_many": {"ok": True, "files": [ok]}})
    with pytest.raises(HostProtocolError, match="h1: the answer to write_many does not list"):
        asyncio.run(conn.write_many(files))
    # Contents near the size limit are split so that no request line is too long.
    big = b"k" * (connection.WRITE_BATCH_BYTES // 3)
    batches = connection.write_batches([WriteRequest("root", "/a", big + bytes([i]), None)
                                        for i in range(4)])  # fmt: skip
    assert [len(b) for b in batches] == [2, 2]
