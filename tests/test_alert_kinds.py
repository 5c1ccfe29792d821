"""Every kind of alert keyward raises can be filtered on (``alerts --kind``, the API)."""

from __future__ import annotations

import typing

from keyward.alert_kinds import ALERT_KINDS
from keyward.logins import Alert
from keyward.registry import directory, scim_store


def test_every_raised_kind_is_a_filter_choice() -> None:
    raised = set(typing.get_args(typing.get_type_hints(Alert)["kind"]))
    raised |= {directory.ALERT_KIND, scim_store.ALERT_KIND}
    assert raised == set(ALERT_KINDS)
