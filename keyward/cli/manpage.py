"""keyward(1): the manual page, generated from the click commands themselves.

Why ours and not ``click-man``: that writes one page per subcommand and is not in the
package index the project builds from; an administrator wants one ``man keyward`` with every
command, its arguments and options, and the exit codes. The page is written from the same
click objects that parse the command line, so it cannot describe options that do not exist.

``man/keyward.1`` in the source tree is this module's output, checked in (a wheel installs it
as ``share/man/man1/keyward.1``) and kept current by a test. Regenerate it with::

    python3 -m keyward.cli.manpage -o man/keyward.1
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import IO

import click

from keyward import __version__

EXIT_STATUS = (
    ("0", "success (plan: everything in sync)"),
    (
        "1",
        "operational failure: a host failed, the audit chain is broken, a lock stayed held, "
        "an offboarding is not yet confirmed, a backup or restore check failed",
    ),
    ("2", "bad input or a refused operation; nothing was changed"),
    ("3", "plan only: changes are pending"),
    ("70", "internal error (a bug); KEYWARD_DEBUG=1 prints the traceback"),
    ("130", "interrupted"),
)

DOCS = (
    "docs/cli.md (commands, exit codes, JSON output), docs/operations.md (the agent, the "
    "daemon, systemd units, backups), docs/inventory.md, docs/security.md"
)


def escape(text: str) -> str:
    """``text`` as literal troff: backslashes, dashes, and leading control characters."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [("\\&" + line if line[:1] in (".", "'") else line) for line in text.split("\n")]
    return "\n".join(lines)


def paragraphs(help_text: str | None) -> Iterator[str]:
    """A command's help as troff paragraphs; click's ``\\b`` blocks stay as written."""
    if not help_text:
        return
    text = inspect.cleandoc(help_text).split("\f", 1)[0]
    for block in text.split("\n\n"):
        block = block.strip("\n")
        if not block.strip():
            continue
        if block.startswith("\b"):
            yield ".nf\n" + escape(block[1:].strip("\n")) + "\n.fi"
        else:
            yield escape(" ".join(block.split()))


def walk(
    command: click.Command, ctx: click.Context
) -> Iterator[tuple[click.Command, click.Context]]:
    """Every visible command under ``command`` (itself included), depth first, sorted."""
    yield command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            sub_ctx = click.Context(sub, info_name=name, parent=ctx, **sub.context_settings)
            yield from walk(sub, sub_ctx)


def options(command: click.Command, ctx: click.Context) -> Iterator[str]:
    """``.TP`` entries for the options, worded exactly as ``--help`` words them.

    ``--help`` itself is left out: the page says once that every command takes it.
    """
    help_option = command.get_help_option(ctx)
    for param in command.get_params(ctx):
        record = None if param is help_option else param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        yield f".TP\n.B {escape(names)}\n{escape(' '.join(help_text.split()) or names)}"


def render(root: click.Command, name: str = "keyward") -> str:
    """The whole page for ``root`` as troff (man macros)."""
    ctx = click.Context(root, info_name=name, **root.context_settings)
    summary = (root.help or name).split("\n", 1)[0].split(":", 1)[-1].strip().rstrip(".")
    out = [
        f'.TH {name.upper()} 1 "" "{name} {__version__}" "User Commands"',
        ".nh\n.ad l",  # no hyphenation, ragged right: option names and paths stay whole
        ".SH NAME",
        f"{name} \\- {escape(summary)}",
        ".SH SYNOPSIS",
        f".B {name}\n[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        *paragraphs(root.help),
        ".PP\nEvery command takes \\fB\\-h\\fR/\\fB\\-\\-help\\fR. Results go to stdout; "
        "errors are one line on stderr; structured log lines go to stderr.",
        ".SH OPTIONS",
        *options(root, ctx),
        ".SH COMMANDS",
    ]
    for command, sub_ctx in walk(root, ctx):
        if command is root:
            continue
        usage = " ".join(command.collect_usage_pieces(sub_ctx))
        out.append(f'.SS "{escape(sub_ctx.command_path)} {escape(usage)}"')
        out.extend(paragraphs(command.help or command.short_help))
        if not isinstance(command, click.Group):
            out.extend(options(command, sub_ctx))
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        out.append(f".TP\n.B {code}\n{escape(meaning)}")
    out += [
        ".SH SHELL COMPLETION",
        "Add to ~/.bashrc (bash), ~/.zshrc (zsh) or fish's config:",
        ".PP\n.nf",
        escape('eval "$(_KEYWARD_COMPLETE=bash_source keyward)"'),
        escape('eval "$(_KEYWARD_COMPLETE=zsh_source keyward)"'),
        escape("_KEYWARD_COMPLETE=fish_source keyward | source"),
        ".fi",
        ".SH SEE ALSO",
        f"{escape(DOCS)}; \\fBsshd\\fR(8), \\fBsshd_config\\fR(5), \\fBsystemd.service\\fR(5)",
    ]
    return "\n".join(out) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-o",
    "--output",
    type=click.File("w"),
    default="-",
    show_default=True,
    help="Where to write the page.",
)
def generate(output: IO[str]) -> None:
    """Write keyward(1) from the click commands."""
    from keyward.cli.main import cli

    output.write(render(cli))


if __name__ == "__main__":  # pragma: no cover - python -m keyward.cli.manpage
    generate()
