"""The copy command: hand each new snapshot file to rclone, aws, cp... without a shell.

``{path}`` and ``{name}`` are quoted by keyward, the program runs in its own
session so a timeout kills all of it, and a failure is returned (for an
audit event and exit 1), never raised: the snapshot itself was written.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from keyward.errors import UsageError

COPY_ENV = "KEYWARD_BACKUP_COPY"
COPY_TIMEOUT = 600.0
"""Seconds a copy command may run before it is killed (and alerted on)."""


@dataclass(frozen=True)
class CopyFailure:
    file: str
    program: str
    exit_code: int | None
    timed_out: bool
    error: str

    def __str__(self) -> str:
        if self.timed_out:
            how = "timed out"
        elif self.exit_code is not None:
            how = f"exited {self.exit_code}"
        else:
            how = "could not run"
        tail = f": {self.error}" if self.error else ""
        return f"copy command {self.program} {how} for {self.file}{tail}"


def parse_copy_command(template: str) -> list[str]:
    """Check that a copy command template splits into words; return them."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise UsageError(f"the copy command does not parse: {exc}") from None
    if not words:
        raise UsageError("the copy command is empty")
    for placeholder in ("{path}", "{name}"):
        if f"'{placeholder}'" in template or f'"{placeholder}"' in template:
            raise UsageError(
                f"do not quote {placeholder} in the copy command: keyward quotes the value itself"
            )
    return words


def copy_argv(template: str, path: Path) -> list[str]:
    """The command for one file: ``{path}`` and ``{name}`` replaced by shell-quoted values."""
    parse_copy_command(template)
    filled = template.replace("{path}", shlex.quote(str(path))).replace(
        "{name}", shlex.quote(path.name)
    )
    return shlex.split(filled)


def run_copy(template: str, path: Path, timeout: float = COPY_TIMEOUT) -> CopyFailure | None:
    """Run the copy command for ``path`` (no shell); None on success."""
    argv = copy_argv(template, path)
    program = os.path.basename(argv[0])
    env = {**os.environ, "KEYWARD_BACKUP_PATH": str(path), "KEYWARD_BACKUP_NAME": path.name}
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return CopyFailure(path.name, program, None, False, exc.strerror or str(exc))
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return CopyFailure(path.name, program, None, True, f"killed after {timeout:g} s")
    if proc.returncode != 0:
        lines = [
            line.strip() for line in output.decode("utf-8", "replace").splitlines() if line.strip()
        ]
        return CopyFailure(
            path.name, program, proc.returncode, False, lines[-1][:200] if lines else ""
        )
    return None
