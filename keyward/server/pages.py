"""The web page's HTML: small server-rendered pages, every value escaped.

Nothing here is trusted: names, reasons and roles come from people, so every value
goes through ``esc`` (``html.escape`` with quotes) before it reaches the page; a
person called ``<script>`` is shown as that text.  No JavaScript at all: the sign-in
page refreshes itself with a meta refresh, and every action is a plain form.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:72em;padding:0 1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;"
    "text-align:left}header{display:flex;gap:1em;align-items:center;border-bottom:1px solid #ccc}"
    ".code{font:bold 2em monospace;letter-spacing:.2em}.error{color:#a00}"
    "form.inline{display:inline}"
)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(token)}">'


def layout(
    title: str,
    body: str,
    *,
    user: str | None = None,
    csrf: str | None = None,
    refresh: int | None = None,
) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    nav = ""
    if user is not None and csrf is not None:
        nav = (
            '<nav><a href="/web/">My access</a> · <a href="/web/request">Request access</a> · '
            '<a href="/web/queue">Approval queue</a> · <a href="/web/access">Who can log in</a>'
            ' · <a href="/web/offboarding">Offboarding</a>'
            f'</nav><span>signed in as <b id="user">{esc(user)}</b></span>'
            f'<form class="inline" method="post" action="/web/logout">{csrf_field(csrf)}'
            '<button id="logout">Sign out</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>keyward · {esc(title)}</title>{meta}<style>{STYLE}</style></head>"
        f"<body><header><b>keyward</b>{nav}</header><main><h1>{esc(title)}</h1>{body}"
        "</main></body></html>"
    )


def table(
    rows: Iterable[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    extra: str = "",
    row_id: str | None = None,
    actions: Any = None,
) -> str:
    """A table of ``rows``; ``actions(row)`` adds a last cell of raw HTML (already escaped)."""
    head = "".join(f"<th>{esc(label)}</th>" for _, label in columns)
    if actions is not None:
        head += f"<th>{esc(extra)}</th>"
    lines = []
    for row in rows:
        ident = f' id="{esc(row_id)}-{esc(row.get("id"))}"' if row_id else ""
        cells = "".join(f"<td>{esc(row.get(key))}</td>" for key, _ in columns)
        if actions is not None:
            cells += f"<td>{actions(row)}</td>"
        lines.append(f"<tr{ident}>{cells}</tr>")
    if not lines:
        return "<p>None.</p>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
