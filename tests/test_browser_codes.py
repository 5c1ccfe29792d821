"""One-time browser sign-in codes: bound to one browser, five minutes, used once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keyward.auth.browser import BrowserCodes, CodeRefused, Confirmed, display, normalize

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_a_code_is_redeemed_once_by_its_own_browser() -> None:
    codes = BrowserCodes()
    code, expires = codes.code_for("browser-a", NOW)
    assert len(code) == 8 and expires == NOW + timedelta(minutes=5)
    assert codes.code_for("browser-a", NOW) == (code, expires)  # the page refreshes: same code
    assert codes.redeem("browser-a", NOW) is None  # nobody confirmed yet
    codes.confirm(display(code).lower(), "alice", "SHA256:x", NOW)
    with pytest.raises(CodeRefused):
        codes.confirm(code, "mallory", "SHA256:m", NOW)  # already confirmed
    assert codes.redeem("browser-b", NOW) is None  # another browser gets nothing
    assert codes.redeem("browser-a", NOW) == Confirmed("alice", "SHA256:x")
    assert codes.redeem("browser-a", NOW) is None  # once
    assert len(codes) == 0


def test_a_code_expires_after_five_minutes() -> None:
    codes = BrowserCodes()
    code, _ = codes.code_for("browser-a", NOW)
    with pytest.raises(CodeRefused, match="no such sign-in code"):
        codes.confirm(code, "alice", "SHA256:x", NOW + timedelta(minutes=5))
    assert codes.code_for("browser-a", NOW + timedelta(minutes=5))[0] != code


def test_the_store_is_bounded() -> None:
    codes = BrowserCodes(max_entries=2)
    codes.code_for("a", NOW)
    codes.code_for("b", NOW)
    with pytest.raises(CodeRefused, match="too many"):
        codes.code_for("c", NOW)
    assert codes.code_for("c", NOW + timedelta(minutes=6))  # the old ones expired


def test_normalize() -> None:
    assert normalize(" abcd-efgh ") == normalize("ABCD EFGH") == "ABCDEFGH"


def test_a_session_signed_out_of_stays_ended_until_it_expires() -> None:
    from keyward.auth.ended import EndedSessions

    ended = EndedSessions()
    ended.end("kws1.a", NOW + timedelta(hours=1), NOW)
    assert ended.ended("kws1.a") and not ended.ended("kws1.b")
    ended.end("kws1.b", NOW + timedelta(hours=2), NOW + timedelta(hours=1))
    assert not ended.ended("kws1.a")  # expired anyway: forgotten
