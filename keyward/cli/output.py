"""Tables for people, stable JSON for programs.

The JSON shapes are documented in docs/cli.md and only ever grow: fields are
added, never renamed or removed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click


@dataclass
class Console:
    """What the global options say about the console, set once by ``cli()``.

    ``quiet`` (``-q``) drops chatter: progress, lock waits, "started ..." lines; the
    answer itself (tables, the plan, JSON) and errors are always printed.
    """

    quiet: bool = False


CONSOLE = Console()


def chatter(message: str, *, err: bool = False) -> None:
    """A line that is not the command's answer: printed unless ``-q``."""
    if not CONSOLE.quiet:
        click.echo(message, err=err)


def yes_no(value: bool | None) -> str:
    """Booleans for people: yes/no (JSON keeps true/false), ``-`` for unknown."""
    if value is None:
        return "-"
    return "yes" if value else "no"


def printable(text: str) -> str:
    """Show text from hosts safely: control and format characters become escapes."""
    return "".join(
        ch if ch.isprintable() and ch not in "\u2028\u2029" else ascii(ch)[1:-1] for ch in text
    )


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress(total: int, what: str) -> Iterator[Callable[[bool], None]]:
    """A progress bar on stderr while a long run lasts, only on a terminal and not with ``-q``.

    Yields ``advance(failed)``, called once per finished item (from any thread).
    Piped or redirected, nothing at all is printed: no bar, no escape codes.
    """
    if CONSOLE.quiet or total < 1 or not _stderr_is_terminal():
        yield lambda failed: None
        return
    from rich.console import Console as RichConsole
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    failures = 0
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        console=RichConsole(file=sys.stderr),
        transient=True,
    )
    task = bar.add_task(what, total=total, failed="")

    def advance(failed: bool) -> None:
        nonlocal failures
        failures += 1 if failed else 0
        bar.update(task, advance=1, failed=f"{failures} failed" if failures else "")

    with bar:
        yield advance


def ts(value: datetime | None) -> str | None:
    """A timestamp for JSON: ISO 8601 UTC with a Z, or null."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def short_ts(value: datetime | None) -> str:
    """A timestamp for tables."""
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M")


def emit_json(value: Any) -> None:
    import json  # not at import: `--version` and `--help` print no JSON

    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Print rows as an aligned text table; ``columns`` is (key, heading) pairs."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    headings = [heading for _, heading in columns]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headings)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headings, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, datetime):
        return short_ts(value)
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)
