"""Bulk onboarding: ``keyward import people.csv``.

One CSV row per person: ``username,name,email,key,roles``.  Everything is checked
and written in one registry transaction: either every row is imported, or nothing
is and every problem is listed with its line number (``people.csv:LINE: problem``),
so a file can be fixed in one go instead of one error per attempt.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from keyward.cli.common import MAX_INPUT_BYTES, key_policy, log_events
from keyward.cli.context import AppContext
from keyward.cli.output import emit_json
from keyward.errors import KeywardError, UsageError
from keyward.keys import (
    KNOWN_TYPES,
    KeyPolicy,
    PublicKey,
    from_pub_file,
    looks_like_private_key,
    parse_public_key,
)
from keyward.registry import ops
from keyward.registry.store import WriteTx

pass_app = click.make_pass_decorator(AppContext)

COLUMNS = ("username", "name", "email", "key", "roles")
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_ROWS = 10_000
MAX_KEY_FILE = MAX_INPUT_BYTES  # as 'key add'
_ROLE_SPLIT = re.compile(r"[;\s]+")


class ImportRefused(KeywardError):
    """The file had problems (each already printed with its line); nothing was imported."""


class _DryRun(Exception):
    """Raised inside the transaction to roll a --dry-run back after every check ran."""


@dataclass
class Row:
    line: int
    username: str
    name: str
    email: str | None
    key: str
    roles: list[str]
    public: PublicKey | None = None


@dataclass
class Outcome:
    people: list[dict[str, Any]] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)

    def problem(self, line: int, message: str) -> None:
        self.problems.append((line, " ".join(message.split())))


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"{path} is larger than {MAX_FILE_BYTES} bytes; split the file")
    return data


def _read_rows(data: bytes, label: str, outcome: Outcome) -> list[Row]:
    """The rows of the CSV; a row with the wrong number of fields goes to ``outcome``.

    A file that cannot be read as a whole (no header, not CSV) is one error.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{label}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise UsageError(
                "the file is empty; the first line must be the header " + ",".join(COLUMNS)
            )
        names = [h.strip().lower() for h in header]
        missing = [c for c in COLUMNS if c not in names]
        unknown = [h for h in names if h not in COLUMNS]
        if missing or unknown or len(set(names)) != len(names):
            raise UsageError(
                f"{label}:1: the first line must be the header {','.join(COLUMNS)} (any order)"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(repr(u[:40]) for u in unknown)}" if unknown else "")
            )
        rows: list[Row] = []
        last = reader.line_num
        for values in reader:
            line, last = last + 1, reader.line_num  # a quoted field may span lines: the first
            if not any(v.strip() for v in values):
                continue  # a blank line
            if len(rows) >= MAX_ROWS:
                raise UsageError(f"{label}:{line}: more than {MAX_ROWS} rows; split the file")
            if len(values) != len(names):
                outcome.problem(line, f"{len(values)} fields, the header has {len(names)}")
                continue
            cell = {n: v.strip() for n, v in zip(names, values, strict=True)}
            rows.append(
                Row(
                    line=line,
                    username=cell["username"],
                    name=cell["name"],
                    email=cell["email"] or None,
                    key=cell["key"],
                    roles=[r for r in _ROLE_SPLIT.split(cell["roles"]) if r],
                )
            )
    except csv.Error as exc:
        raise UsageError(f"{label}:{reader.line_num}: not valid CSV: {exc}") from None
    return rows


def _public_key(row: Row, base: Path, policy: KeyPolicy) -> PublicKey | None:
    """The row's key: the text itself if it starts with a key type, else a file next to the CSV."""
    if not row.key:
        return None
    if row.key.split(maxsplit=1)[0] in KNOWN_TYPES or looks_like_private_key(row.key):
        text = row.key  # a pasted private key is refused as one, never echoed as a "path"
    else:
        path = Path(row.key)
        try:
            with (path if path.is_absolute() else base / path).open("rb") as handle:
                data = handle.read(MAX_KEY_FILE + 1)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a file name"
            raise UsageError(f"cannot read key file {row.key[:60]!r}: {reason}") from None
        if len(data) > MAX_KEY_FILE:
            raise UsageError(f"key file {row.key[:60]!r} is larger than {MAX_KEY_FILE} bytes")
        text = data.decode("utf-8", errors="replace")
    return parse_public_key(from_pub_file(text), policy)


def _check_rows(rows: list[Row], base: Path, policy: KeyPolicy, outcome: Outcome) -> list[Row]:
    """Checks that need no registry: keys parse, no username or key twice in the file.

    A row whose key is refused stays (without its key), so that its person and
    roles are checked too and the one report lists every problem.
    """
    seen_user: dict[str, int] = {}
    seen_key: dict[str, int] = {}
    good: list[Row] = []
    for row in rows:
        if row.username in seen_user:
            outcome.problem(
                row.line,
                f"username {row.username[:40]!r} is also on line {seen_user[row.username]}",
            )
            continue
        seen_user[row.username] = row.line
        try:
            row.public = _public_key(row, base, policy)
        except KeywardError as exc:
            outcome.problem(row.line, f"key: {exc.message}")
        if row.public is not None:
            first = seen_key.setdefault(row.public.fingerprint, row.line)
            if first != row.line:
                outcome.problem(
                    row.line,
                    f"key {row.public.fingerprint} is also on line {first}; keys are personal",
                )
                row.public = None
        good.append(row)
    return good


@click.command("import")
@click.argument("csv_file", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check everything, change nothing.")
@click.option(
    "--attest",
    type=click.Choice(["admin"]),
    default=None,
    help="admin: you vouch for every key in the file (as 'key add --attest admin').",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def import_people(
    app: AppContext, csv_file: str, dry_run: bool, attest: str | None, as_json: bool
) -> None:
    """Onboard the people of a CSV file in one transaction: all rows, or none.

    \b
    The first line is the header: username,name,email,key,roles (any order).
    key:   the public key text, or the path of a .pub file (relative to FILE);
           empty for a person without a key yet.
    roles: existing roles separated by ';' or spaces, granted by you with the
           reason "import FILE" (nobody grants a role to themselves).
    Every problem is printed as FILE:LINE: problem, and nothing is imported.
    """
    path = Path(csv_file)
    label = csv_file
    data = _read_file(path)
    policy = key_policy(app)
    outcome = Outcome()
    rows = _check_rows(_read_rows(data, label, outcome), path.parent, policy, outcome)
    registry = app.registry()
    reason = f"import {path.name}"
    try:
        with registry.write(app.actor) as tx:
            expires_at = tx.now + timedelta(days=policy.max_key_age_days)
            claim = ops.KeyClaim(
                attest or "none", expires_at, attested_by=app.actor if attest else None
            )
            for row in rows:
                _import_row(tx, row, claim, reason, outcome)
            if outcome.problems:
                raise _DryRun
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    else:
        log_events(tx)
    _report(label, outcome, dry_run, as_json)


def _import_row(tx: WriteTx, row: Row, claim: ops.KeyClaim, reason: str, outcome: Outcome) -> None:
    """One person, their key and roles; a problem is noted and the rest of the row skipped."""
    try:
        ops.add_person(tx, row.username, row.name, row.email)
    except KeywardError as exc:
        outcome.problem(row.line, exc.message)
        return
    fingerprint = None
    if row.public is not None:
        try:
            ops.add_key(tx, row.username, row.public, claim)
            fingerprint = row.public.fingerprint
        except KeywardError as exc:
            outcome.problem(row.line, f"key: {exc.message}")
    granted: list[str] = []
    for role in row.roles:
        try:
            ops.grant_role(tx, role, row.username, reason, None)
            granted.append(role)
        except KeywardError as exc:
            outcome.problem(row.line, f"role {role[:64]!r}: {exc.message}")
    outcome.people.append(
        {"line": row.line, "username": row.username, "fingerprint": fingerprint, "roles": granted}
    )


def _report(label: str, outcome: Outcome, dry_run: bool, as_json: bool) -> None:
    problems = sorted(outcome.problems)
    if as_json:
        emit_json(
            {
                "file": label,
                "dry_run": dry_run,
                "imported": not problems and not dry_run,
                "people": [] if problems else outcome.people,
                "problems": [{"line": line, "problem": text} for line, text in problems],
            }
        )
    if problems:
        for line, text in problems:
            click.echo(f"{label}:{line}: {text}", err=True)
        noun = "problem" if len(problems) == 1 else "problems"
        raise ImportRefused(f"{label}: {len(problems)} {noun}; nothing was imported")
    if as_json:
        return
    verb = "would import" if dry_run else "imported"
    keys = sum(1 for p in outcome.people if p["fingerprint"])
    grants = sum(len(p["roles"]) for p in outcome.people)
    click.echo(
        f"{verb} {len(outcome.people)} people, {keys} keys, {grants} role grants from {label}"
        + (" (dry run: nothing changed)" if dry_run else "")
    )


def register(cli: click.Group) -> None:
    cli.add_command(import_people)
