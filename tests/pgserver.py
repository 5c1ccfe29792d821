"""A real, throwaway PostgreSQL server for the test suite.

The registry must behave the same on PostgreSQL as on SQLite, so tests run against a
real server rather than skipping: CI installs the binaries, and a missing install is an
error, not a skip.  If ``KEYWARD_TEST_PG_URL`` is set we use that server instead (and
never start or stop anything).

Otherwise we ``initdb`` a fresh cluster owned by the ``postgres`` system user (postgres
refuses to run as root), listening only on 127.0.0.1 on a free port with its unix socket
in the cluster's own directory, with trust authentication on loopback only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

ENV_URL = "KEYWARD_TEST_PG_URL"
"""An existing server to use instead of starting one (e.g. a CI service container)."""

DEFAULT_DB = "keyward_test"
_DROP = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
"""FORCE: a test that leaked a connection must not make the next test's setup fail."""
START_TIMEOUT = 60
"""Seconds ``pg_ctl start -w`` may take (slow CI disks)."""


def find_pg_bindir() -> Path:
    """The directory with ``initdb``/``pg_ctl``/``postgres``; a clear error if absent.

    Debian keeps server binaries out of PATH, so ask ``pg_config`` and fall back to
    the highest ``/usr/lib/postgresql/*/bin``.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        done = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        if done.returncode == 0 and done.stdout.strip():
            candidates.append(Path(done.stdout.strip()))

    def version(path: str) -> float:
        with contextlib.suppress(ValueError):
            return float(Path(path).parent.name)
        return 0.0

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    ]
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).parent)
    for cand in candidates:
        if all((cand / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return cand
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via pg_config, "
        "/usr/lib/postgresql/*/bin or PATH; install the postgresql package or set "
        f"{ENV_URL} to an existing server"
    )


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL without its driver suffix, as psycopg/libpq accepts it."""
    scheme, sep, rest = url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead (query string preserved)."""
    base, qmark, query = url.partition("?")
    head = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    return f"{head}/{name}{qmark}{query}"


class PgServer:
    """Context manager yielding a PostgreSQL URL (``postgresql+psycopg://...``)."""

    def __init__(self, database: str = DEFAULT_DB) -> None:
        self.database = database
        self.url = ""
        self.port = 0
        self.dir: Path | None = None
        self._external = False
        self._bindir: Path | None = None
        self._started = False
        self._options = ""  # the server's -o settings, for resume()

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        assert self.dir is not None
        return self.dir / "data"

    def _as_postgres(self, argv: list[str]) -> list[str]:
        """Run ``argv`` as the ``postgres`` system user when we are root."""
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run(self, argv: list[str], what: str) -> None:
        done = subprocess.run(
            self._as_postgres(argv),
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT + 30,
            cwd="/",
        )
        if done.returncode != 0:
            log = ""
            if self.dir is not None and (self.dir / "postgres.log").exists():
                log = (self.dir / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{what} failed: {done.stderr.strip()} {done.stdout.strip()} {log}")

    def start(self) -> None:
        """Use ``$KEYWARD_TEST_PG_URL`` or initdb and start a private loopback server."""
        external = os.environ.get(ENV_URL)
        if external:
            self._external = True
            self.url = external
            self.database = external.partition("?")[0].rsplit("/", 1)[-1] or DEFAULT_DB
            return
        self._bindir = find_pg_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="keyward-pg-"))
        try:
            self._init_and_start()
        except BaseException:
            self.stop()
            raise

    def _init_and_start(self) -> None:
        assert self.dir is not None and self._bindir is not None
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")  # KeyError is clear enough: no postgres user
            os.chown(self.dir, pg.pw_uid, pg.pw_gid)
        self.dir.chmod(0o700)
        self._run(
            [
                str(self._bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
        # Loopback only, trust only there: nothing but this machine can connect.
        hba = "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        hba_path = self.data_dir / "pg_hba.conf"
        hba_path.write_text(hba)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(hba_path, pg.pw_uid, pg.pw_gid)
        for attempt in range(3):
            self.port = _free_port()
            options = " ".join(
                [
                    "-c listen_addresses=127.0.0.1",
                    f"-c port={self.port}",
                    f"-c unix_socket_directories={self.dir}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=200",
                ]
            )
            self._options = options
            try:
                self._run(
                    [
                        str(self._bindir / "pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.dir / "postgres.log"),
                        "-w",
                        "-t",
                        str(START_TIMEOUT),
                        "-o",
                        options,
                        "start",
                    ],
                    "pg_ctl start",
                )
                break
            except RuntimeError as exc:
                if attempt == 2 or "already in use" not in str(exc):
                    raise
        self._started = True
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"
        self.create_database(self.database)

    def stop(self) -> None:
        """Stop the private server (immediate mode) and delete its directory; idempotent."""
        if self._external or self.dir is None:
            return
        assert self._bindir is not None
        if self._started or (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(
                    [str(self._bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                     "-w", "-t", "30", "stop"],
                    "pg_ctl stop",
                )  # fmt: skip
            self._kill_leftover()
        self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def halt(self) -> None:
        """Stop the server (fast: sessions are ended) and keep its data, for :meth:`resume`."""
        assert not self._external and self._bindir is not None
        self._run(
            [str(self._bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            "pg_ctl stop",
        )

    def resume(self) -> None:
        """Start the halted server again, on the same port with the same settings."""
        assert self._bindir is not None and self.dir is not None
        self._run(
            [str(self._bindir / "pg_ctl"), "-D", str(self.data_dir), "-l",
             str(self.dir / "postgres.log"), "-w", "-t", str(START_TIMEOUT), "-o",
             self._options, "start"],
            "pg_ctl start",
        )  # fmt: skip

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (None for an external server)."""
        if self._external or self.dir is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        return None

    def _kill_leftover(self) -> None:
        """SIGKILL the postmaster if ``pg_ctl stop`` did not get rid of it."""
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def admin_url(self) -> str:
        """A libpq URL to the ``postgres`` maintenance database (for CREATE/DROP DATABASE)."""
        return libpq_url(with_database(self.url, "postgres"))

    def url_for(self, name: str) -> str:
        """The SQLAlchemy URL for database ``name`` on this server."""
        return with_database(self.url, name)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (dropping a stale one first) and return its URL."""
        with psycopg.connect(self.admin_url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` even if sessions are still connected."""
        with psycopg.connect(self.admin_url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
