"""The database under the store: URLs, the engine, SQLite pragmas, retries and migrations.

* A bare file path means SQLite; `redact_url` hides the password wherever a URL is shown.
* SQLite runs in WAL mode with foreign keys on and a 30 s busy timeout on every connection;
  writes take the write lock up front (``BEGIN IMMEDIATE``) and are retried with backoff on
  "database is locked", so many threads and processes can write at once.
* A SQLite file that cannot be written (read-only volume, no write permission) is opened
  read-only (`Database.read_only`) rather than refused.
* Opening reads the schema revision first (no lock: many processes open at once without
  queueing behind writers); only a database behind Alembic's head is upgraded, and concurrent
  upgrades are serialised (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-level
  advisory lock), re-checking the revision once the lock is held.
"""
from __future__ import annotations

import functools
import os
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from ..settings import VARIABLES, read_env
from .records import NOT_STORED, StoreError
from .schema import VERSION_TABLE

DEFAULT_URL = "sqlite:///data/corrections.db"
DB_ENV = VARIABLES["db"][0]              # EMODEMO_DB, read by emodemo.settings
SQLITE_BUSY_TIMEOUT_MS = 30_000
RETRY_SECONDS = 180.0                    # total time to keep retrying a locked write (a
                                         # correction is not dropped while the machine is busy)
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
PG_MIGRATION_LOCK = 0x656D6F64656D6F     # "emodemo": key for pg_advisory_xact_lock

T = TypeVar("T")


class DatabaseBusy(StoreError):
    """The database stayed locked by other writers for all of RETRY_SECONDS."""


# ---- URLs ------------------------------------------------------------------------------------
def default_url() -> str:
    """The database URL when none is given: ``$EMODEMO_DB`` if set (a URL or a plain SQLite file
    path; read through emodemo.settings), else ``sqlite:///data/corrections.db`` (relative to the
    current directory)."""
    return normalize_url(read_env("db") or DEFAULT_URL)


def normalize_url(url: Union[str, URL, os.PathLike]) -> str:
    """A SQLAlchemy URL as a string (password kept); a bare file path becomes a SQLite URL."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=False)
    url = os.fspath(url)
    if "://" not in url:  # a bare file path means SQLite
        return "sqlite:///" + Path(url).expanduser().as_posix()
    return url


def redact_url(url: Union[str, URL]) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only used for messages
        return "<database>"


def alembic_config(url: Union[str, URL, None] = None, connection: Any = None):
    """An Alembic `Config` for the store's migrations (absolute paths, no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.lru_cache(maxsize=1)
def head_revision() -> Optional[str]:
    """The newest revision in emodemo/migrations (read once per process)."""
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


# ---- SQLite ----------------------------------------------------------------------------------
def sqlite_in_memory(url: URL) -> bool:
    db = url.database or ""
    return db in ("", ":memory:") or db.startswith("file::memory:") or \
        url.query.get("mode") == "memory"


def sqlite_target(url: URL) -> tuple[URL, Optional[Path], bool]:
    """(URL to connect with, absolute database file or None in memory, read_only) for SQLite.

    The file's folder is created; a file that exists but cannot be written (or whose folder
    cannot) is opened read-only, as immutable when SQLite could not even create its WAL files."""
    if sqlite_in_memory(url):
        return url, None, False
    db = url.database or ""
    db_file = Path(db[5:] if db.startswith("file:") else db).expanduser().resolve()
    if not db_file.parent.is_dir():
        db_file.parent.mkdir(parents=True, exist_ok=True)
    if db.startswith("file:"):
        return url, db_file, url.query.get("mode") == "ro"
    if db_file.exists() and not (os.access(db_file, os.W_OK) and os.access(db_file.parent, os.W_OK)):
        # Open it read-only instead of failing: predictions and the history keep working.
        query = {"mode": "ro", "uri": "true"}
        if not os.access(db_file.parent, os.W_OK):
            query["immutable"] = "1"
        return url.set(database=f"file:{db_file}").update_query_dict(query), db_file, True
    return url.set(database=str(db_file)), db_file, False  # immune to later chdir


def make_engine(url: URL, echo: bool = False) -> Engine:
    """An engine; for SQLite with the busy timeout, WAL, foreign keys and explicit BEGINs (a
    connection with execution option ``emodemo_sqlite_begin="IMMEDIATE"`` takes the write lock
    up front)."""
    if url.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True)
    memory = sqlite_in_memory(url)
    if memory:
        engine = create_engine(url, echo=echo, poolclass=StaticPool,
                               connect_args={"check_same_thread": False})
    else:
        engine = create_engine(url, echo=echo,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # every new DBAPI connection
        dbapi_conn.isolation_level = None   # SQLAlchemy emits BEGIN itself (see _on_begin)
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_MS)}")
            cur.execute("PRAGMA foreign_keys = ON")
            if not memory:
                try:
                    cur.execute("PRAGMA journal_mode = WAL")  # persistent once set
                except sqlite3.OperationalError:
                    pass  # another connection is switching it right now
                cur.execute("PRAGMA synchronous = NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get("emodemo_sqlite_begin")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    return engine


# ---- errors ----------------------------------------------------------------------------------
def is_transient(exc: BaseException) -> bool:
    """Lock contention / serialisation failures / dropped connections: worth retrying."""
    if getattr(exc, "connection_invalidated", False):
        return True
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in ("40001", "40P01", "55P03"):
        return True
    msg = str(orig if orig is not None else exc).lower()
    return "locked" in msg or "busy" in msg


def db_write_error(exc: BaseException) -> Optional[StoreError]:
    """A readable StoreError for a database that cannot take writes (disk full, read-only,
    gone); None for anything else (a bug, a constraint: those are not the person's to fix)."""
    orig = getattr(exc, "orig", None)
    code = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
    msg = str(orig if orig is not None else exc).lower()
    if code == "53100" or "disk is full" in msg or "no space left" in msg or \
            "database or disk is full" in msg:
        why = "the disk holding the corrections database is full"
    elif code in ("25006", "42501") or "readonly database" in msg or "read-only" in msg or \
            "read only" in msg or "permission denied" in msg:
        why = "the corrections database is read-only or not writable"
    elif "disk i/o error" in msg or "unable to open database file" in msg or \
            code.startswith(("08", "53", "57P")):
        why = "the corrections database is not reachable or cannot be written right now"
    else:
        return None
    return StoreError(f"Could not save the correction: {why}. {NOT_STORED}")


def first_line(exc: BaseException) -> str:
    """The first line of a database error's message (the driver's own, when there is one)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ---- the database ----------------------------------------------------------------------------
class Database:
    """An opened, migrated database: engines for reading and writing, sessions, retries.

    url: a SQLAlchemy URL string (see `normalize_url`). Raises StoreError when it is not a URL,
    cannot be reached, or is read-only at an older schema revision."""

    def __init__(self, url: str, echo: bool = False):
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise StoreError(f"not a database URL: {redact_url(url)} ({exc})") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        #: True when the database can be read but not written (a SQLite file on a read-only
        #: volume or without write permission, or a ``?mode=ro`` URL).
        self.read_only = False
        self.db_file: Optional[Path] = None
        if self.is_sqlite:
            parsed, self.db_file, self.read_only = sqlite_target(parsed)
        try:
            self.engine = make_engine(parsed, echo)
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot open corrections database {redact_url(url)}: {exc}") from None
        # SQLite writers take the write lock up front so the busy timeout applies to them.
        self.write_engine = (self.engine.execution_options(emodemo_sqlite_begin="IMMEDIATE")
                             if self.is_sqlite else self.engine)
        self._pid = os.getpid()
        self._pid_lock = threading.Lock()
        try:
            self.retry(self.migrate)
        except StoreError:
            self.engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open corrections database {redact_url(url)}: "
                             f"{first_line(exc)}") from exc

    def dispose(self) -> None:
        self.engine.dispose()

    def check_fork(self) -> None:
        """In a forked child, drop the parent's pooled connections (never share a socket)."""
        if os.getpid() != self._pid:
            with self._pid_lock:
                if os.getpid() != self._pid:
                    self.engine.dispose(close=False)
                    self._pid = os.getpid()

    def read(self) -> Session:
        self.check_fork()
        return Session(self.engine, expire_on_commit=False)

    def write(self) -> Session:
        self.check_fork()
        return Session(self.write_engine, expire_on_commit=False)

    def raw_connection(self):
        self.check_fork()
        return self.engine.raw_connection()

    def has_upsert(self) -> bool:
        return self.engine.dialect.name in ("sqlite", "postgresql")

    def retry(self, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying with backoff while the database is busy (up to RETRY_SECONDS)."""
        delay, deadline = 0.02, time.monotonic() + RETRY_SECONDS
        while True:
            try:
                return fn()
            except (OperationalError, IntegrityError) as exc:
                transient = is_transient(exc) or (
                    isinstance(exc, IntegrityError) and not self.has_upsert())
                if not transient or time.monotonic() > deadline:
                    if isinstance(exc, OperationalError) and is_transient(exc):
                        raise DatabaseBusy(f"database stayed busy for {RETRY_SECONDS:.0f} s: "
                                           f"{exc.orig}") from exc
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    def retry_write(self, fn: Callable[[], T]) -> T:
        """`retry` for writes: a database that cannot take writes (disk full, read-only,
        unreachable) becomes a StoreError that says so; the transaction was rolled back."""
        try:
            return self.retry(fn)
        except DatabaseBusy as exc:
            raise StoreError(f"Could not save the correction: the corrections database stayed "
                             f"busy for {RETRY_SECONDS:.0f} s (other writers held it). "
                             f"{NOT_STORED}") from exc
        except SQLAlchemyError as exc:
            err = db_write_error(exc)
            if err is None:
                raise
            raise err from exc

    def migrate(self) -> None:
        """Upgrade the schema to the head revision (a read-only database must be there already).
        A database already at the head is only read: no write lock is taken."""
        from alembic import command

        head = head_revision()
        current = self.schema_revision()
        if current == head:
            return
        if self.read_only:  # nothing can be upgraded: it must already be current
            raise StoreError(f"the corrections database {redact_url(self.url)} is read-only "
                             f"and at schema revision {current}, not {head}: open it once "
                             "with write access to upgrade it")
        with self.write_engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE serialises openers
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
            command.upgrade(alembic_config(self.url, connection=conn), "head")  # no-op if done

    def schema_revision(self) -> Optional[str]:
        """The Alembic revision the database is at."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
