"""Finding and stopping every process an ``sshd`` spawned, sessions included.

sshd's per-connection children call ``setsid``, so a process-group kill does not reach
them and they outlive their listener unless each one is found and signalled.  The tree
is read from ``/proc`` (Linux only, like the rest of the fleets).
"""

from __future__ import annotations

import contextlib
import os
import signal


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (so we find setsid'd sshd session children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                raw = fh.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ")".
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) < 2:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (not including ``pid``)."""
    tree = children_map()
    found: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, []))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            raw = fh.read()
    except OSError:
        return False
    fields = raw[raw.rfind(")") + 2 :].split()
    return bool(fields) and fields[0] != "Z"


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each pid, ignoring ones that are already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def freeze_tree(root: int) -> list[int]:
    """SIGSTOP ``root`` and all its descendants until no new ones appear; return them all.

    A stopped process cannot fork, so repeating the scan converges on the whole tree.
    """
    seen: list[int] = []
    for _ in range(100):
        new = [pid for pid in [root, *descendants(root)] if pid not in seen]
        if not new:
            break
        signal_all(new, signal.SIGSTOP)
        seen += new
    return seen


__all__ = ["alive", "children_map", "descendants", "freeze_tree", "signal_all"]
