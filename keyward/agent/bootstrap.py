"""The shell command that starts ``remote.py`` on a managed host from its embedded source.

Every connection starts the helper afresh, so its start-up is paid per host per run:
compiling ~1,300 lines of source costs a host about 10 ms of CPU, more than the
interpreter's own start. The command therefore also carries the helper already compiled
by the agent's Python (``marshal``), used only when the host's bytecode format is the
same (its ``.pyc`` magic number); any other Python compiles the source, as before.
"""

from __future__ import annotations

import base64
import functools
import marshal
import shlex
import zlib
from importlib import resources
from importlib.util import MAGIC_NUMBER


@functools.cache
def remote_source() -> bytes:
    """The source of ``remote.py`` as shipped next to this module (read once)."""
    return resources.files(__package__ or "keyward.agent").joinpath("remote.py").read_bytes()


def _pack(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 9)).decode("ascii")


@functools.cache
def _payload() -> str:
    return _pack(remote_source())


@functools.cache
def _compiled() -> str:
    # optimize=2 drops docstrings (the helper has no asserts): a shorter command line.
    code = compile(remote_source(), "keyward-remote", "exec", dont_inherit=True, optimize=2)
    return _pack(marshal.dumps(code))


def remote_command(
    python: str = "python3", magic: bytes = MAGIC_NUMBER, *, sudo: bool = False
) -> str:
    """A POSIX shell command line that runs remote.py with ``python`` (an executable name).

    ``-I`` isolates the interpreter from PYTHON* variables, user site-packages and the current
    directory; ``-S`` skips the ``site`` module (the helper is stdlib-only), which saves a few
    milliseconds of CPU on every host at every connection. The source, and the code compiled
    for interpreters whose ``.pyc`` magic number is ``magic``, travel zlib-compressed and
    base64-encoded inside single quotes.

    With ``sudo`` the same interpreter line runs through ``sudo -n``: never a password
    prompt (a sudo that wants one fails at once), and always exactly
    ``PYTHON -I -S -c CODE`` after ``sudo -n --``, so the sudoers entry that allows it can
    name the interpreter and its options (``docs/operations.md``).  What it allows is root.
    """
    code = (
        "import base64,marshal,zlib,_frozen_importlib_external as b;"
        "d=lambda s:zlib.decompress(base64.b64decode(s));"
        f'exec(marshal.loads(d("{_compiled()}"))if b.MAGIC_NUMBER.hex()=="{magic.hex()}"'
        f'else compile(d("{_payload()}"),"keyward-remote","exec",dont_inherit=True))'
    )
    prefix = "exec sudo -n -- " if sudo else "exec "
    return f"{prefix}{shlex.quote(python)} -I -S -c {shlex.quote(code)}"
