"""A throwaway local PostgreSQL server for tests, benchmarks and ``make run``.

``LocalPostgres`` creates a temporary directory, runs ``initdb`` (trust auth, no fsync), starts the
server with ``pg_ctl -w`` on a free TCP port bound to 127.0.0.1 only (its unix socket lives inside
the temporary directory), creates a database and exposes a libpq ``dsn``. On exit it stops the
server and removes the directory. ``initdb`` and ``postgres`` refuse to run as root: when the
current user is root, every server-side command runs as the ``postgres`` OS user via ``runuser``,
and the directory is handed to that user.

    with LocalPostgres() as pg:
        store = PriceStore(pg.dsn)
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn

logger = logging.getLogger(__name__)

PG_BIN_ENV = "ENSEMBLE_PG_BIN"
_DEBIAN_GLOB = "/usr/lib/postgresql/*/bin"
_SERVER_TOOLS: tuple[str, ...] = ("initdb", "pg_ctl", "postgres")
_PORT_RETRIES = 3


def _has_tools(directory: Path, tools: tuple[str, ...] = _SERVER_TOOLS) -> bool:
    return all(os.access(directory / t, os.X_OK) for t in tools)


def _version_key(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); non-numeric versions sort lowest
    part = Path(path).parent.name
    return tuple(int(x) for x in re.findall(r"\d+", part)) or (-1,)


def find_pg_bin() -> Path:
    """Directory holding initdb, pg_ctl and postgres.

    Looks at ``$ENSEMBLE_PG_BIN``, then ``/usr/lib/postgresql/*/bin`` (highest version), then PATH.
    Raises RuntimeError naming the missing binaries and the places searched.
    """
    env = os.environ.get(PG_BIN_ENV)
    if env:
        d = Path(env)
        if not _has_tools(d):
            missing = [t for t in _SERVER_TOOLS if not os.access(d / t, os.X_OK)]
            raise RuntimeError(f"${PG_BIN_ENV}={env} does not hold the PostgreSQL server binaries {missing}")
        return d
    for cand in sorted(glob.glob(_DEBIAN_GLOB), key=_version_key, reverse=True):
        if _has_tools(Path(cand)):
            return Path(cand)
    on_path = shutil.which("pg_ctl")
    if on_path and _has_tools(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    raise RuntimeError(
        f"PostgreSQL server binaries {list(_SERVER_TOOLS)} not found: looked in ${PG_BIN_ENV} (unset), "
        f"{_DEBIAN_GLOB} and PATH. Install the PostgreSQL server or set {PG_BIN_ENV} to its bin directory."
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """Context manager for a throwaway PostgreSQL server on 127.0.0.1 (see the module docstring).

    Attributes after ``start()``: ``dsn`` (libpq string for ``dbname``), ``host``, ``port``, ``user``,
    ``dbname``, ``bin_dir``, ``data_dir``. ``stop()`` is idempotent and also runs at interpreter exit.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        dbname: str = "ensemble",
        user: str = "postgres",
        bin_dir: str | os.PathLike[str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        os_user: str = "postgres",
        start_timeout_s: int = 60,
    ) -> None:
        self.dbname = dbname
        self.user = user
        self.bin_dir = Path(bin_dir) if bin_dir is not None else find_pg_bin()
        if not _has_tools(self.bin_dir):
            raise RuntimeError(
                f"{self.bin_dir} does not hold the PostgreSQL server binaries {list(_SERVER_TOOLS)}"
            )
        self.base_dir = base_dir
        self.os_user = os_user
        self.start_timeout_s = start_timeout_s
        self.port: int = 0
        self.root: Path | None = None
        self._running = False

    # ------------------------------------------------------------------ paths and commands
    @property
    def data_dir(self) -> Path:
        return self._root() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._root() / "sock"

    @property
    def log_file(self) -> Path:
        return self._root() / "server.log"

    @property
    def dsn(self) -> str:
        """libpq DSN of the database ``dbname`` over TCP on 127.0.0.1 (no password: trust auth)."""
        return self.dsn_for(self.dbname)

    def dsn_for(self, dbname: str) -> str:
        if not self._running:
            raise RuntimeError("LocalPostgres is not running: use it as a context manager or call start()")
        return make_dsn(host=self.host, port=self.port, user=self.user, dbname=dbname)

    def tool(self, name: str) -> Path:
        """Path of a client or server binary next to the server (e.g. ``psql``)."""
        return self.bin_dir / name

    def _root(self) -> Path:
        if self.root is None:
            raise RuntimeError("LocalPostgres has not been started")
        return self.root

    def _as_server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        runuser = shutil.which("runuser")
        if runuser is None:
            raise RuntimeError(
                "running as root needs 'runuser' to start PostgreSQL as another user; not found"
            )
        return [runuser, "-u", self.os_user, "--"]

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self._as_server_user(), *args]
        logger.debug("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, cwd=self._root(), capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
                + self._log_tail()
            )
        return proc

    def _log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return "\nserver log:\n" + "\n".join(lines) if lines else ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalPostgres:
        """initdb, start the server, create the database. Returns self."""
        if self._running:
            return self
        self.root = Path(tempfile.mkdtemp(prefix="ensemble-pg-", dir=self.base_dir))
        try:
            if os.geteuid() == 0:
                try:
                    pw = pwd.getpwnam(self.os_user)
                except KeyError:
                    raise RuntimeError(
                        f"running as root: PostgreSQL must run as OS user {self.os_user!r}, which does not exist"
                    ) from None
                os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._run(
                str(self.tool("initdb")),
                "-D", str(self.data_dir),
                "-A", "trust",
                "-U", self.user,
                "-E", "UTF8",
                "--no-locale",
                "--no-sync",
            )  # fmt: skip
            self.socket_dir.mkdir(mode=0o700)
            if os.geteuid() == 0:
                pw = pwd.getpwnam(self.os_user)
                os.chown(self.socket_dir, pw.pw_uid, pw.pw_gid)
            self._start_server()
            self._running = True
            atexit.register(self.stop)
            self._create_database()
        except BaseException:
            self.stop()
            raise
        logger.info("local PostgreSQL running on %s:%d (data in %s)", self.host, self.port, self.root)
        return self

    def _write_config(self, port: int) -> None:
        conf = self.data_dir / "postgresql.auto.conf"
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_wal_size": "'2GB'",
            "checkpoint_timeout": "'30min'",
            "temp_buffers": "'64MB'",
        }
        text = "".join(f"{k} = {v}\n" for k, v in settings.items())
        # postgresql.auto.conf is owned by the server user; rewrite it in place (root may write it).
        with open(conf, "w") as fh:
            fh.write("# written by ensemble.data.pgserver.LocalPostgres\n" + text)

    def _start_server(self) -> None:
        last = ""
        for _ in range(_PORT_RETRIES):
            self.port = free_port(self.host)
            self._write_config(self.port)
            proc = self._run(
                str(self.tool("pg_ctl")),
                "-D", str(self.data_dir),
                "-l", str(self.log_file),
                "-w", "-t", str(self.start_timeout_s),
                "start",
                check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                return
            last = (proc.stderr or proc.stdout).strip() + self._log_tail()
            if "Address already in use" not in last and "could not bind" not in last:
                break
            logger.warning("port %d was taken before PostgreSQL could bind it; retrying", self.port)
        raise RuntimeError(f"pg_ctl start failed: {last}")

    def _create_database(self) -> None:
        conn = psycopg2.connect(self.dsn_for("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory. Safe to call twice."""
        atexit.unregister(self.stop)
        root, self.root = self.root, None
        if root is None:
            return
        self.root = root  # paths still needed while stopping
        try:
            if (self.data_dir / "postmaster.pid").exists():
                proc = self._run(
                    str(self.tool("pg_ctl")),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                    check=False,
                )
                if proc.returncode != 0:
                    logger.warning("fast shutdown failed (%s); trying immediate", proc.stderr.strip())
                    self._run(
                        str(self.tool("pg_ctl")),
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                        check=False,
                    )
        finally:
            self._running = False
            self.root = None
            for attempt in range(3):
                try:
                    shutil.rmtree(root)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:  # a file still being written by a dying process
                    if attempt == 2:
                        logger.warning("could not remove %s: %s", root, exc)
                    time.sleep(0.2)
            logger.info("local PostgreSQL on port %d stopped", self.port)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.host}:{self.port}" if self._running else "stopped"
        return f"LocalPostgres(dbname={self.dbname!r}, {state})"
