"""The kinds of alert keyward raises, named once for the CLI's ``--kind`` and the server.

Plain names with no imports, so the command line can offer them as choices without loading
the registry, and a new kind added where it is raised cannot be missing from either filter
(``tests/test_server_api.py`` checks the server refuses an unknown kind).
"""

from __future__ import annotations

ALERT_KINDS: tuple[str, ...] = (
    "multi_source",  # one key used from several addresses within a window
    "new_source",  # a key used from an address never seen for it
    "failed_logins",  # a burst of failed logins
    "login_after_offboarding",  # a login with an offboarded person's key
    "directory_guard",  # a directory sync that would offboard too many people
    "scim_guard",  # SCIM deactivations over the allowed share per window
)
