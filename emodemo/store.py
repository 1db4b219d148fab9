"""Corrections store: people's corrections of emodemo predictions, with the audio they refer to.

Usage::

    from emodemo.store import CorrectionStore
    store = CorrectionStore("sqlite:///data/corrections.db")   # any SQLAlchemy URL
    cid = store.add("clip.wav", "happy", annotator="ana", prediction=pred, transcript="fixed text")
    store.corrections()          # newest first
    store.export("out.csv")      # or out.jsonl

Design:

* Audio is content-addressed. A path is kept byte for byte (SHA-256 of the file bytes) as
  ``<media_dir>/<sha[:2]>/<sha><suffix>``; the suffix comes from the detected format or a
  whitelist of audio suffixes, never from the caller's file name. A ``(waveform, sr)`` pair is
  stored as the 16 kHz mono 16-bit PCM WAV that `emodemo.audio.load_audio` makes of it. The file
  is written atomically (temp file + ``os.replace``) before the database row commits, so a row
  never references a half-written file. The same audio added twice gives one ``media`` row and
  two ``corrections`` rows.
* The schema is managed by Alembic (``emodemo/migrations``); opening a store upgrades an older
  database to the current revision. Concurrent first opens are serialised (SQLite:
  ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-level advisory lock).
* SQLite runs in WAL mode with foreign keys on and a 30 s busy timeout on every connection;
  writes take the write lock up front (``BEGIN IMMEDIATE``) and are retried with backoff on
  "database is locked", so many threads and processes can add at once.
* A SQLite file that cannot be written (read-only volume, no write permission) is opened
  read-only (``store.read_only``) rather than refused. Writes to a read-only database, a full
  disk or an unreachable server raise a StoreError that says which, with nothing half-stored.
* Records (`Record`) are dicts whose keys can also be read as attributes
  (``rec["label"] == rec.label``); `corrections`, `get` and `agreement` return them.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

from sqlalchemy import (DateTime, Float, ForeignKey, Index, Integer, String, Text, create_engine,
                        event, func, select, text)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from .errors import EmodemoError

__all__ = [
    "CorrectionStore", "Record", "ImportResult", "StoreError", "default_url", "alembic_config",
    "main_corrections", "DEFAULT_URL", "DEFAULT_LABELS", "NONE_LABEL",
]

# ---- settings ------------------------------------------------------------------------------
DEFAULT_URL = "sqlite:///data/corrections.db"
DB_ENV = "EMODEMO_DB"
MEDIA_ENV = "EMODEMO_MEDIA_DIR"
DEFAULT_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
NONE_LABEL = "none"                      # "none of these"

MAX_TEXT_CHARS = 10_000                  # transcript, note
MAX_ANNOTATOR_CHARS = 200
MAX_LABEL_CHARS = 64                     # labels and predicted label
MAX_BUNDLE_CHARS = 200
MAX_BUNDLE_VERSION_CHARS = 100
MAX_MEDIA_BYTES = 512 * 1024 * 1024      # refuse to copy larger files into the store
SPAN_TOLERANCE_S = 0.1                   # start/end may overshoot the clip by this much

SQLITE_BUSY_TIMEOUT_MS = 30_000
RETRY_SECONDS = 60.0                     # total time to keep retrying a locked write

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "emodemo_alembic_version"
_PG_MIGRATION_LOCK = 0x656D6F64656D6F    # "emodemo": key for pg_advisory_xact_lock

# Suffixes a stored media file may carry (lower case). Anything else gets the suffix of the
# format soundfile detects, or ".bin".
AUDIO_SUFFIXES = frozenset({
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".aiff", ".aif",
    ".au", ".caf", ".w64", ".wma", ".mp4",
})
_SF_FORMAT_SUFFIX = {
    "WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac", "OGG": ".ogg", "AIFF": ".aiff", "AU": ".au",
    "CAF": ".caf", "W64": ".w64", "MP3": ".mp3", "MPEG": ".mp3",
}

EXPORT_FIELDS = (
    "id", "created_at", "updated_at", "label", "annotator", "note",
    "transcript_shown", "transcript_corrected", "predicted_label",
    "prob_audio", "prob_text", "prob_fused", "bundle_name", "bundle_version",
    "media_sha256", "media_path", "duration", "sample_rate", "start", "end",
)
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PATH_COLUMNS = ("path", "media_path", "file", "audio")
_PREDICTION_COLUMNS = ("predicted_label", "prob_audio", "prob_text", "prob_fused",
                       "transcript_shown", "bundle_name", "bundle_version")


class StoreError(EmodemoError):
    """A correction could not be stored or read: bad label, text too long, unusable database."""


# ---- schema (head revision; history lives in emodemo/migrations/versions) --------------------
class Base(DeclarativeBase):
    pass


class Media(Base):
    __tablename__ = "media"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(300))          # relative to media_dir, '/'-separated
    duration: Mapped[Optional[float]] = mapped_column(Float)
    sample_rate: Mapped[Optional[int]] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Correction(Base):
    __tablename__ = "corrections"
    __table_args__ = (
        Index("ix_corrections_created_at", "created_at"),
        Index("ix_corrections_media_sha256", "media_sha256"),
        Index("ix_corrections_annotator", "annotator"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    media_sha256: Mapped[str] = mapped_column(
        String(64), ForeignKey("media.sha256", name="fk_corrections_media_sha256",
                               ondelete="RESTRICT"))
    label: Mapped[str] = mapped_column(String(64))
    annotator: Mapped[Optional[str]] = mapped_column(String(200))
    note: Mapped[Optional[str]] = mapped_column(Text)
    transcript_shown: Mapped[Optional[str]] = mapped_column(Text)
    transcript_corrected: Mapped[Optional[str]] = mapped_column(Text)
    predicted_label: Mapped[Optional[str]] = mapped_column(String(64))
    prob_audio: Mapped[Optional[str]] = mapped_column(Text)      # JSON {label: p}
    prob_text: Mapped[Optional[str]] = mapped_column(Text)
    prob_fused: Mapped[Optional[str]] = mapped_column(Text)
    bundle_name: Mapped[Optional[str]] = mapped_column(String(200))
    bundle_version: Mapped[Optional[str]] = mapped_column(String(100))
    start: Mapped[Optional[float]] = mapped_column("start_sec", Float)   # "end" is an SQL keyword
    end: Mapped[Optional[float]] = mapped_column("end_sec", Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))


# ---- records -------------------------------------------------------------------------------
class Record(dict):
    """A plain dict whose keys can also be read as attributes: ``rec.label == rec["label"]``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {k for k in self if isinstance(k, str)})


class ImportResult(NamedTuple):
    """What `CorrectionStore.import_csv` did: rows imported, and one message per bad row."""
    imported: int
    errors: list


class _Clip(NamedTuple):
    sha256: str
    data: bytes
    suffix: str
    duration: float
    sample_rate: int


_UNSET: Any = object()


# ---- helpers -------------------------------------------------------------------------------
def default_url() -> str:
    """The database URL: ``$EMODEMO_DB`` if set (a URL or a plain SQLite file path), else
    ``sqlite:///data/corrections.db`` (relative to the current directory)."""
    return _normalize_url(os.environ.get(DB_ENV, "").strip() or DEFAULT_URL)


def _normalize_url(url: Union[str, URL, os.PathLike]) -> str:
    if isinstance(url, URL):
        return url.render_as_string(hide_password=False)
    url = os.fspath(url)
    if "://" not in url:  # a bare file path means SQLite
        return "sqlite:///" + Path(url).expanduser().as_posix()
    return url


def _redact(url: Union[str, URL]) -> str:
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
        cfg.set_main_option("sqlalchemy.url", _normalize_url(url).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _sqlite_in_memory(url: URL) -> bool:
    db = url.database or ""
    return db in ("", ":memory:") or db.startswith("file::memory:") or \
        url.query.get("mode") == "memory"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(dt: Optional[datetime]) -> Optional[datetime]:
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _clean_text(value: Any, field: str, limit: int, strip: bool = False) -> Optional[str]:
    """Text as stored: verbatim except undecodable bytes/surrogates -> U+FFFD and NUL -> U+FFFD
    (PostgreSQL text cannot hold NUL); None stays None; over `limit` characters is an error."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", errors="replace")
    elif not isinstance(value, str):
        raise StoreError(f"{field} must be text, got {type(value).__name__}")
    value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\x00", "\ufffd")
    if strip:
        value = value.strip()
        if not value:
            return None
    if len(value) > limit:
        raise StoreError(f"{field} is too long ({len(value)} characters; the limit is {limit})")
    return value


def _short(value: Any, n: int = 40) -> str:
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def _probs(value: Any, field: str) -> Optional[str]:
    """{label: probability} as JSON text; non-finite probabilities become null."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        try:
            value = dict(value)
        except (TypeError, ValueError):
            raise StoreError(f"prediction {field} must be a mapping of label -> probability, "
                             f"got {type(value).__name__}") from None
    out: dict[str, Optional[float]] = {}
    for k, v in value.items():
        key = _clean_text(k if isinstance(k, (str, bytes)) else str(k), f"prediction {field} label",
                          MAX_LABEL_CHARS)
        try:
            p = float(v)
        except (TypeError, ValueError):
            raise StoreError(f"prediction {field}[{key!r}] is not a number: {_short(v)}") from None
        out[key] = p if math.isfinite(p) else None
    return json.dumps(out, ensure_ascii=False, allow_nan=False)


def _loads(value: Optional[str]) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def _pred_get(pred: Any, *names: str) -> Any:
    for name in names:
        if isinstance(pred, Mapping):
            if name in pred:
                return pred[name]
        elif hasattr(pred, name):
            return getattr(pred, name)
    return None


def _prediction_fields(pred: Any) -> dict[str, Any]:
    """Column values from a prediction dict or object (label, audio, text, fused, transcript,
    bundle / bundle_name, bundle_version); whatever is missing is stored as NULL."""
    if pred is None:
        return {}
    if isinstance(pred, (str, bytes, int, float)):
        raise StoreError("prediction must be a dict or a Prediction object, "
                         f"got {type(pred).__name__}")
    bundle = _pred_get(pred, "bundle_name", "bundle")
    version = _pred_get(pred, "bundle_version")
    if bundle is not None and not isinstance(bundle, (str, bytes)):  # a bundle object
        version = version if version is not None else getattr(bundle, "version", None)
        bundle = getattr(bundle, "name", None)
    if version is not None and not isinstance(version, (str, bytes)):
        version = str(version)
    predicted = _pred_get(pred, "label")
    if predicted is not None and not isinstance(predicted, (str, bytes)):
        predicted = str(predicted)
    # start/end/confidence of a Prediction are not taken over: pass start/end to add() explicitly.
    return {
        "predicted_label": _clean_text(predicted, "predicted label", MAX_LABEL_CHARS),
        "prob_audio": _probs(_pred_get(pred, "audio", "prob_audio"), "audio"),
        "prob_text": _probs(_pred_get(pred, "text", "prob_text"), "text"),
        "prob_fused": _probs(_pred_get(pred, "fused", "prob_fused"), "fused"),
        "transcript_shown": _clean_text(_pred_get(pred, "transcript"), "predicted transcript",
                                        MAX_TEXT_CHARS),
        "bundle_name": _clean_text(bundle, "bundle name", MAX_BUNDLE_CHARS, strip=True),
        "bundle_version": _clean_text(version, "bundle version", MAX_BUNDLE_VERSION_CHARS,
                                      strip=True),
    }


def _seconds(value: Any, name: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool):
        raise StoreError(f"{name} must be a number of seconds, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise StoreError(f"{name} must be a number of seconds, got {_short(value)}") from None
    if not math.isfinite(x) or x < 0:
        raise StoreError(f"{name} must be a finite, non-negative number of seconds, got {x}")
    return x


def _check_span(start: Any, end: Any, duration: Optional[float]) -> tuple[Optional[float], Optional[float]]:
    s, e = _seconds(start, "start"), _seconds(end, "end")
    if s is not None and e is not None and e <= s:
        raise StoreError(f"end ({e:g} s) must be after start ({s:g} s)")
    if duration:
        if s is not None and s >= duration + SPAN_TOLERANCE_S:
            raise StoreError(f"start ({s:g} s) is past the end of the audio ({duration:.3f} s)")
        if e is not None and e > duration + SPAN_TOLERANCE_S:
            raise StoreError(f"end ({e:g} s) is past the end of the audio ({duration:.3f} s)")
    return s, e


@contextlib.contextmanager
def _atomic_path(path: Path, suffix: str = ".part") -> Iterator[str]:
    """A temp file name next to `path`: on success it is os.replace'd onto `path`, on any error
    removed, so `path` is either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def _atomic_open(path: Path, mode: str = "wb", **kw: Any) -> Iterator[Any]:
    """Open a temp file next to `path`; on success fsync it and move it onto `path` (see
    `_atomic_path`)."""
    with _atomic_path(path) as tmp:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `_atomic_open`)."""
    with _atomic_open(path) as f:
        f.write(data)


def _is_transient(exc: BaseException) -> bool:
    """Lock contention / serialisation failures / dropped connections: worth retrying."""
    if getattr(exc, "connection_invalidated", False):
        return True
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in ("40001", "40P01", "55P03"):
        return True
    msg = str(orig if orig is not None else exc).lower()
    return "locked" in msg or "busy" in msg


_NOT_STORED = "Nothing was stored; please try again later or tell whoever runs this service."


def _media_write_error(exc: OSError) -> "StoreError":
    """A readable StoreError for a failure to write an audio file into the media folder."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk holding the media folder is full (no space left on device)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the media folder is read-only or not writable"
    else:
        why = f"the audio file could not be written ({exc.strerror or exc})"
    return StoreError(f"Could not save the correction: {why}. {_NOT_STORED}")


def _db_write_error(exc: BaseException) -> Optional["StoreError"]:
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
    return StoreError(f"Could not save the correction: {why}. {_NOT_STORED}")


def _formula_like(value: str) -> bool:
    """True when a spreadsheet would run `value` as a formula, also behind our own guard
    quotes (so that guarding is reversible: "'=x" is exported as "''=x")."""
    while value.startswith("'"):
        value = value[1:]
        if not value.startswith(("'",) + _FORMULA_PREFIXES):
            return False
    return value.startswith(_FORMULA_PREFIXES)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and _formula_like(value):
        return "'" + value  # keep spreadsheets from evaluating it as a formula
    return value


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


# ---- the store -----------------------------------------------------------------------------
class CorrectionStore:
    """Corrections plus the audio they refer to, in SQLite or any SQLAlchemy database.

    url: SQLAlchemy URL (or a plain SQLite file path); None -> `default_url()`.
    media_dir: where audio files go; None -> ``$EMODEMO_MEDIA_DIR``, else ``<db folder>/media``
        for a SQLite file, else ``./data/media``.
    labels: the accepted labels (``"none"`` = "none of these" is always accepted too).
    """

    def __init__(self, url: Union[str, URL, os.PathLike, None] = None,
                 media_dir: Union[str, os.PathLike, None] = None,
                 labels: Optional[Sequence[str]] = None, *, echo: bool = False):
        self.url = _normalize_url(url) if url is not None else default_url()
        try:
            parsed = make_url(self.url)
        except ArgumentError as exc:
            raise StoreError(f"not a database URL: {_redact(self.url)} ({exc})") from None
        self.labels = tuple(labels) if labels is not None else DEFAULT_LABELS
        if not self.labels:
            raise StoreError("labels must not be empty")
        self._label_lookup = {str(l).strip().lower(): str(l) for l in self.labels}
        self._label_lookup.setdefault(NONE_LABEL, NONE_LABEL)

        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        db_file: Optional[Path] = None
        memory = self.is_sqlite and _sqlite_in_memory(parsed)
        #: True when the database can be read but not written (a SQLite file on a read-only
        #: volume or without write permission, or a ``?mode=ro`` URL): add() and update()
        #: then raise a StoreError that says so, and everything else works.
        self.read_only = False
        if self.is_sqlite:
            db = parsed.database or ""
            if not memory:
                db_file = Path(db[5:] if db.startswith("file:") else db).expanduser().resolve()
                if not db_file.parent.is_dir():
                    db_file.parent.mkdir(parents=True, exist_ok=True)
                if db.startswith("file:"):
                    self.read_only = parsed.query.get("mode") == "ro"
                elif db_file.exists() and not (os.access(db_file, os.W_OK) and
                                               os.access(db_file.parent, os.W_OK)):
                    # Open it read-only instead of failing: predictions and the history keep
                    # working. Without a writable folder SQLite cannot create the WAL side
                    # files, so the file is read as immutable (nobody can write it here).
                    self.read_only = True
                    query = {"mode": "ro", "uri": "true"}
                    if not os.access(db_file.parent, os.W_OK):
                        query["immutable"] = "1"
                    parsed = parsed.set(database=f"file:{db_file}").update_query_dict(query)
                else:
                    parsed = parsed.set(database=str(db_file))  # immune to later chdir
        self.db_file = db_file

        if media_dir is None:
            env = os.environ.get(MEDIA_ENV, "").strip()
            media_dir = env or (db_file.parent / "media" if db_file else Path("data") / "media")
        self.media_dir = Path(media_dir).expanduser().resolve()

        try:
            self.engine = self._make_engine(parsed, echo, memory)
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot open corrections database {_redact(self.url)}: {exc}") from None
        # SQLite writers take the write lock up front so the busy timeout applies to them.
        self._write_engine = (self.engine.execution_options(emodemo_sqlite_begin="IMMEDIATE")
                              if self.is_sqlite else self.engine)
        self._pid = os.getpid()
        self._pid_lock = threading.Lock()
        try:
            self._retry(self._migrate)
        except StoreError:
            self.engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open corrections database {_redact(self.url)}: "
                             f"{str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]}") from exc

    # -- plumbing ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"CorrectionStore({_redact(self.url)!r}, media_dir={str(self.media_dir)!r})"

    def __enter__(self) -> "CorrectionStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _make_engine(url: URL, echo: bool, memory: bool) -> Engine:
        if url.get_backend_name() != "sqlite":
            return create_engine(url, echo=echo, pool_pre_ping=True)
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

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # forked child: never reuse the parent's connections
            with self._pid_lock:
                if os.getpid() != self._pid:
                    self.engine.dispose(close=False)
                    self._pid = os.getpid()

    def _read(self) -> Session:
        self._check_fork()
        return Session(self.engine, expire_on_commit=False)

    def _write(self) -> Session:
        self._check_fork()
        return Session(self._write_engine, expire_on_commit=False)

    def _retry(self, fn):
        delay, deadline = 0.02, time.monotonic() + RETRY_SECONDS
        while True:
            try:
                return fn()
            except (OperationalError, IntegrityError) as exc:
                transient = _is_transient(exc) or (
                    isinstance(exc, IntegrityError) and not self._has_upsert())
                if not transient or time.monotonic() > deadline:
                    if isinstance(exc, OperationalError) and _is_transient(exc):
                        raise StoreError(f"database stayed busy for {RETRY_SECONDS:.0f} s: "
                                         f"{exc.orig}") from exc
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    def _retry_write(self, fn):
        """`_retry` for writes: a database that cannot take writes (disk full, read-only,
        unreachable) becomes a StoreError that says so; the transaction was rolled back."""
        try:
            return self._retry(fn)
        except SQLAlchemyError as exc:
            err = _db_write_error(exc)
            if err is None:
                raise
            raise err from exc

    def _has_upsert(self) -> bool:
        return self.engine.dialect.name in ("sqlite", "postgresql")

    def _migrate(self) -> None:
        from alembic import command

        if self.read_only:  # nothing can be upgraded: it must already be current
            from alembic.script import ScriptDirectory
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            current = self.schema_revision()
            if current != head:
                raise StoreError(f"the corrections database {_redact(self.url)} is read-only "
                                 f"and at schema revision {current}, not {head}: open it once "
                                 "with write access to upgrade it")
            return
        with self._write_engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE serialises openers
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            command.upgrade(alembic_config(self.url, connection=conn), "head")

    def schema_revision(self) -> Optional[str]:
        """The Alembic revision the database is at."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}).get_current_revision()

    # -- media ---------------------------------------------------------------------------------
    def media_path(self, sha256: str) -> Path:
        """Absolute path of the stored audio for a media hash (StoreError if unknown)."""
        sha = str(sha256).strip().lower()
        with self._read() as s:
            media = s.get(Media, sha)
        if media is None:
            raise StoreError(f"no stored audio with hash {_short(sha256, 70)}")
        return self._abs_media(media.path)

    def _abs_media(self, rel: str) -> Path:
        path = (self.media_dir / Path(*rel.split("/"))).resolve()
        if not path.is_relative_to(self.media_dir):
            raise StoreError(f"media path {rel!r} points outside the media folder")
        return path

    @staticmethod
    def _ingest(audio: Any) -> _Clip:
        """Validate the audio (via load_audio) and produce the bytes to store."""
        import soundfile as sf

        from .audio import SAMPLE_RATE, load_audio  # imported lazily: pulls in torch

        if isinstance(audio, (str, os.PathLike)):
            path = Path(audio)
            if path.is_file() and path.stat().st_size > MAX_MEDIA_BYTES:
                raise StoreError(f"{path.name} is too large to store "
                                 f"({path.stat().st_size / 2**20:.0f} MiB; the limit is "
                                 f"{MAX_MEDIA_BYTES // 2**20} MiB)")
            wav = load_audio(path)  # AudioError with a readable message if unusable
            data = path.read_bytes()
            sample_rate, duration, suffix = SAMPLE_RATE, wav.size / SAMPLE_RATE, None
            try:
                info = sf.info(io.BytesIO(data))
                if info.samplerate > 0 and info.frames > 0:
                    sample_rate, duration = int(info.samplerate), info.frames / info.samplerate
                suffix = _SF_FORMAT_SUFFIX.get(str(info.format).upper())
            except Exception:  # noqa: BLE001 - decoded by ffmpeg: keep 16 kHz figures
                pass
            if suffix is None:
                user = path.suffix.lower()
                suffix = user if user in AUDIO_SUFFIXES else ".bin"
        else:
            wav = load_audio(audio)
            buf = io.BytesIO()
            sf.write(buf, wav, SAMPLE_RATE, format="WAV", subtype="PCM_16")
            data, suffix = buf.getvalue(), ".wav"
            sample_rate, duration = SAMPLE_RATE, wav.size / SAMPLE_RATE
        return _Clip(hashlib.sha256(data).hexdigest(), data, suffix, float(duration), int(sample_rate))

    def _store_media_file(self, clip: _Clip) -> str:
        """Make sure the clip's bytes are on disk; returns the path relative to media_dir."""
        with self._read() as s:
            known = s.get(Media, clip.sha256)
            rel = known.path if known is not None else f"{clip.sha256[:2]}/{clip.sha256}{clip.suffix}"
        target = self._abs_media(rel)
        try:
            if target.stat().st_size == len(clip.data):
                return rel
        except FileNotFoundError:
            pass
        _atomic_write(target, clip.data)
        return rel

    # -- writing -------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError("Could not save the correction: the corrections database is "
                             f"read-only. {_NOT_STORED}")

    def _check_label(self, label: Any) -> str:
        if isinstance(label, (bytes, bytearray)):
            label = bytes(label).decode("utf-8", errors="replace")
        if not isinstance(label, str) or label.strip().lower() not in self._label_lookup:
            allowed = ", ".join(self.labels)
            raise StoreError(f"unknown label {_short(label)}; expected one of {allowed}, "
                             f"or {NONE_LABEL!r} (none of these)")
        return self._label_lookup[label.strip().lower()]

    def add(self, audio: Any, label: str, annotator: Optional[str] = None,
            transcript: Optional[str] = None, prediction: Any = None, note: Optional[str] = None,
            start: Optional[float] = None, end: Optional[float] = None) -> int:
        """Store one correction and return its id.

        audio: a file path (kept byte for byte) or a ``(waveform, sample_rate)`` pair (stored as
            16 kHz 16-bit WAV). Raises `emodemo.errors.AudioError` if it is not usable audio.
        label: one of `labels`, or ``"none"`` ("none of these"); StoreError otherwise.
        transcript: the corrected transcript; the shown one comes from `prediction`.
        prediction: dict or object with label, audio, text, fused, transcript, bundle,
            bundle_version (whatever is present is stored).
        start, end: the span of the audio the correction is about, in seconds.
        """
        self._check_writable()
        values = dict(
            label=self._check_label(label),
            annotator=_clean_text(annotator, "annotator", MAX_ANNOTATOR_CHARS, strip=True),
            transcript_corrected=_clean_text(transcript, "transcript", MAX_TEXT_CHARS),
            note=_clean_text(note, "note", MAX_TEXT_CHARS),
            **_prediction_fields(prediction),
        )
        s0, e0 = _check_span(start, end, None)  # cheap checks before decoding
        clip = self._ingest(audio)
        values["start"], values["end"] = _check_span(s0, e0, clip.duration)
        try:
            rel = self._store_media_file(clip)  # on disk before any row refers to it
        except OSError as exc:  # disk full, read-only folder ...: say so, store nothing
            raise _media_write_error(exc) from exc

        def insert() -> int:
            now = _now()
            with self._write() as s, s.begin():
                self._insert_media(s, clip, rel, now)
                row = Correction(media_sha256=clip.sha256, created_at=now, updated_at=now, **values)
                s.add(row)
                s.flush()
                return row.id

        return self._retry_write(insert)

    def _insert_media(self, s: Session, clip: _Clip, rel: str, now: datetime) -> None:
        values = dict(sha256=clip.sha256, path=rel, duration=clip.duration,
                      sample_rate=clip.sample_rate, created_at=now)
        name = s.get_bind().dialect.name
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            if s.get(Media, clip.sha256) is None:  # a race ends in IntegrityError -> retried
                s.add(Media(**values))
                s.flush()
            return
        s.execute(insert(Media).values(**values).on_conflict_do_nothing(index_elements=["sha256"]))

    def update(self, cid: int, *, label: Any = _UNSET, note: Any = _UNSET,
               transcript: Any = _UNSET, annotator: Any = _UNSET) -> "Record":
        """Change fields of an existing correction (only those given); bumps updated_at."""
        self._check_writable()
        changes: dict[str, Any] = {}
        if label is not _UNSET:
            changes["label"] = self._check_label(label)
        if note is not _UNSET:
            changes["note"] = _clean_text(note, "note", MAX_TEXT_CHARS)
        if transcript is not _UNSET:
            changes["transcript_corrected"] = _clean_text(transcript, "transcript", MAX_TEXT_CHARS)
        if annotator is not _UNSET:
            changes["annotator"] = _clean_text(annotator, "annotator", MAX_ANNOTATOR_CHARS, strip=True)

        def apply() -> None:
            with self._write() as s, s.begin():
                row = s.get(Correction, int(cid))
                if row is None:
                    raise StoreError(f"no correction with id {cid}")
                for k, v in changes.items():
                    setattr(row, k, v)
                row.updated_at = _now()

        self._retry_write(apply)
        rec = self.get(cid)
        assert rec is not None
        return rec

    # -- reading -------------------------------------------------------------------------------
    def _record(self, c: Correction, m: Media) -> Record:
        return Record(
            id=c.id, created_at=_utc(c.created_at), updated_at=_utc(c.updated_at),
            label=c.label, annotator=c.annotator, note=c.note,
            transcript_shown=c.transcript_shown, transcript_corrected=c.transcript_corrected,
            predicted_label=c.predicted_label, prob_audio=_loads(c.prob_audio),
            prob_text=_loads(c.prob_text), prob_fused=_loads(c.prob_fused),
            bundle_name=c.bundle_name, bundle_version=c.bundle_version,
            media_sha256=m.sha256, media_path=str(self._abs_media(m.path)),
            duration=m.duration, sample_rate=m.sample_rate, start=c.start, end=c.end,
        )

    def _select(self, label: Optional[str] = None, annotator: Optional[str] = None):
        stmt = select(Correction, Media).join(Media, Correction.media_sha256 == Media.sha256)
        if label is not None:
            stmt = stmt.where(Correction.label == self._check_label(label))
        if annotator is not None:
            stmt = stmt.where(Correction.annotator == annotator)
        return stmt.order_by(Correction.created_at.desc(), Correction.id.desc())

    def _iter_records(self, stmt) -> Iterator[Record]:
        with self._read() as s:
            for c, m in s.execute(stmt.execution_options(yield_per=500)):
                yield self._record(c, m)

    def corrections(self, limit: Optional[int] = None, offset: int = 0,
                    label: Optional[str] = None, annotator: Optional[str] = None) -> list[Record]:
        """Corrections as `Record` dicts (attribute access works too), newest first."""
        stmt = self._select(label, annotator)
        if offset:
            stmt = stmt.offset(int(offset))
        if limit is not None:
            stmt = stmt.limit(int(limit))
        return list(self._iter_records(stmt))

    def get(self, cid: int) -> Optional[Record]:
        """One correction by id, or None."""
        with self._read() as s:
            row = s.execute(select(Correction, Media).join(Media).where(
                Correction.id == int(cid))).first()
            return self._record(*row) if row else None

    def stats(self) -> dict[str, Any]:
        """{"corrections": n, "media": n, "by_label": {...}, "by_annotator": {...}} (counts,
        largest first; anonymous corrections are counted under the key None)."""
        with self._read() as s:
            total = s.scalar(select(func.count(Correction.id))) or 0
            media = s.scalar(select(func.count(Media.sha256))) or 0
            by_label = s.execute(select(Correction.label, func.count(Correction.id))
                                 .group_by(Correction.label)).all()
            by_ann = s.execute(select(Correction.annotator, func.count(Correction.id))
                               .group_by(Correction.annotator)).all()

        def ordered(rows: Iterable) -> dict:
            return dict(sorted(((k, int(n)) for k, n in rows),
                               key=lambda kv: (-kv[1], "" if kv[0] is None else str(kv[0]))))

        return {"corrections": int(total), "media": int(media),
                "by_label": ordered(by_label), "by_annotator": ordered(by_ann)}

    def agreement(self, min_annotators: int = 2) -> list[Record]:
        """Inter-annotator agreement per clip (same audio hash and the same start/end).

        Each annotator counts once, with their latest label; each anonymous correction counts as
        a separate annotator. Returns clips with at least `min_annotators` annotators, least
        agreement first: media_sha256, media_path, start, end, n_annotators, n_corrections,
        labels ({label: votes}), majority_label, majority_count, agreement (majority share of
        annotators), tie (True when several labels share the top count; the majority_label is
        then the alphabetically first of them).
        """
        stmt = (select(Correction.id, Correction.media_sha256, Correction.start, Correction.end,
                       Correction.annotator, Correction.label, Media.path)
                .join(Media).order_by(Correction.id))
        clips: dict[tuple, dict[str, Any]] = {}
        with self._read() as s:
            for cid, sha, start, end, annotator, label, rel in s.execute(stmt):
                clip = clips.setdefault((sha, start, end), {"rel": rel, "votes": {}, "n": 0})
                clip["n"] += 1
                clip["votes"][annotator if annotator is not None else f"\x00anon{cid}"] = label
        out = []
        for (sha, start, end), clip in clips.items():
            votes = clip["votes"]
            if len(votes) < max(1, min_annotators):
                continue
            counts = Counter(votes.values())
            top = max(counts.values())
            leaders = sorted(l for l, n in counts.items() if n == top)
            out.append(Record(
                media_sha256=sha, media_path=str(self._abs_media(clip["rel"])), start=start, end=end,
                n_annotators=len(votes), n_corrections=clip["n"],
                labels=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
                majority_label=leaders[0], majority_count=top, agreement=top / len(votes),
                tie=len(leaders) > 1))
        out.sort(key=lambda r: (r.agreement, -r.n_annotators, r.media_sha256,
                                -1.0 if r.start is None else r.start))
        return out

    # -- import / export / backup ----------------------------------------------------------------
    def export(self, path: Union[str, os.PathLike]) -> int:
        """Write all corrections (newest first) to CSV or JSONL, chosen by the suffix
        (.csv / .jsonl / .ndjson); returns the number of rows. CSV cells that a spreadsheet would
        run as a formula (starting with = + - @ tab CR) get a leading single quote; JSONL is
        verbatim. Probabilities are JSON objects (JSON text inside CSV cells)."""
        path = Path(path)
        kind = path.suffix.lower()
        if kind not in (".csv", ".jsonl", ".ndjson"):
            raise StoreError(f"cannot export to {path.name}: use a .csv or .jsonl file name")
        n = 0
        with _atomic_open(path, "w", encoding="utf-8", newline="") as f:
            if kind == ".csv":
                writer = csv.writer(f)
                writer.writerow(EXPORT_FIELDS)
                for rec in self._iter_records(self._select()):
                    writer.writerow([_csv_cell(rec[k]) for k in EXPORT_FIELDS])
                    n += 1
            else:
                for rec in self._iter_records(self._select()):
                    f.write(json.dumps({k: _json_value(rec[k]) for k in EXPORT_FIELDS},
                                       ensure_ascii=False) + "\n")
                    n += 1
        return n

    def import_csv(self, path: Union[str, os.PathLike], annotator: Optional[str] = None) -> ImportResult:
        """Add corrections from a manifest CSV with rows ``path,label[,transcript][,annotator]``.

        A header row is optional (recognised when its first cell is "path"/"media_path"/"file",
        or when it names a path column and a "label" column; named columns may then come in any
        order). A CSV written by `export` is read back as it was written: its formula guard
        quotes are removed and the model's prediction columns are kept. Relative audio paths
        are resolved against the CSV's folder. `annotator` is used for rows without one. Bad
        rows are skipped and reported: returns ImportResult(imported, errors) with errors like
        "line 3: file not found: ...".
        """
        path = Path(path)
        try:
            f = open(path, encoding="utf-8-sig", errors="replace", newline="")
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
        base = path.resolve().parent
        imported, errors = 0, []
        with f:
            reader = csv.reader(f)
            columns: Optional[dict[str, int]] = None
            exported = False
            for row in reader:
                line = reader.line_num
                if not row or not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
                    continue
                lowered = [c.strip().lower() for c in row]
                if columns is None and imported == 0 and not errors and (
                        lowered[0] in _PATH_COLUMNS or
                        ("label" in lowered and set(lowered) & set(_PATH_COLUMNS))):
                    names = lowered
                    exported = {"id", "media_sha256", "label"} <= set(names)
                    columns = {}
                    for want, aliases in (("path", ("path", "media_path", "file", "audio")),
                                          ("label", ("label",)),
                                          ("transcript", ("transcript", "transcript_corrected")),
                                          ("annotator", ("annotator",)), ("note", ("note",)),
                                          ("start", ("start",)), ("end", ("end",)),
                                          *((k, (k,)) for k in _PREDICTION_COLUMNS)):
                        for a in aliases:
                            if a in names:
                                columns[want] = names.index(a)
                                break
                    if "label" not in columns:
                        errors.append(f"line {line}: the header has no 'label' column")
                        return ImportResult(0, errors)
                    continue
                if columns is None:
                    columns = {"path": 0, "label": 1, "transcript": 2, "annotator": 3}

                def cell(name: str) -> Optional[str]:
                    i = columns.get(name)  # type: ignore[union-attr]
                    if i is None or i >= len(row):
                        return None
                    value = row[i]
                    if exported and value.startswith("'") and _formula_like(value[1:]):
                        value = value[1:]  # undo export()'s formula guard
                    return value if value.strip() else None

                try:
                    audio = cell("path")
                    label = cell("label")
                    if audio is None or label is None:
                        raise StoreError("each row needs a path and a label")
                    audio_path = Path(audio.strip()).expanduser()
                    if not audio_path.is_absolute():
                        audio_path = base / audio_path
                    prediction = None
                    if any(cell(k) is not None for k in _PREDICTION_COLUMNS):
                        prediction = {k: _loads(cell(k)) if k.startswith("prob_") else cell(k)
                                      for k in _PREDICTION_COLUMNS}
                        prediction["label"] = prediction.pop("predicted_label")
                        prediction["transcript"] = prediction.pop("transcript_shown")
                    self.add(audio_path, label.strip(), annotator=cell("annotator") or annotator,
                             transcript=cell("transcript"), note=cell("note"),
                             start=cell("start"), end=cell("end"), prediction=prediction)
                    imported += 1
                except (EmodemoError, OSError) as exc:
                    errors.append(f"line {line}: {exc}")
        return ImportResult(imported, errors)

    def backup(self, path: Union[str, os.PathLike]) -> Path:
        """Consistent copy of a SQLite database (sqlite3 backup API) written atomically to `path`.
        The media folder is not included."""
        if not self.is_sqlite or self.db_file is None:
            raise StoreError("backup() works for SQLite database files only; "
                             "use the server's own tools (e.g. pg_dump) otherwise")
        path = Path(path).expanduser().resolve()
        if path == self.db_file:
            raise StoreError("the backup must not overwrite the database itself")
        self._check_fork()
        raw = self.engine.raw_connection()
        try:
            with _atomic_path(path, ".db") as tmp:
                dest = sqlite3.connect(tmp)
                try:
                    raw.driver_connection.backup(dest)
                    dest.execute("PRAGMA journal_mode = DELETE")  # a self-contained single file
                finally:
                    dest.close()
        finally:
            raw.close()
        return path


# ---- command line --------------------------------------------------------------------------
def _one_line(value: Any, width: int = 0) -> str:
    s = "" if value is None else str(value)
    s = "".join(ch if ch.isprintable() else " " for ch in s)  # no terminal control sequences
    return s if not width or len(s) <= width else s[: width - 1] + "…"


def main_corrections(argv: Optional[Sequence[str]] = None) -> int:
    """``emodemo corrections {list,export,import,stats,agreement,backup}``; returns an exit code."""
    def db_options(p: argparse.ArgumentParser, default: Any) -> argparse.ArgumentParser:
        p.add_argument("--db", default=default,
                       help=f"database URL or SQLite file (default: ${DB_ENV} or {DEFAULT_URL})")
        p.add_argument("--media-dir", default=default,
                       help=f"audio folder (default: ${MEDIA_ENV} or <db folder>/media)")
        return p

    # --db / --media-dir work before or after the command name
    common = db_options(argparse.ArgumentParser(add_help=False), argparse.SUPPRESS)
    parser = db_options(argparse.ArgumentParser(
        prog="emodemo corrections", description="Inspect and move the stored corrections."), None)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    p = command("list", help="show corrections, newest first")
    p.add_argument("--limit", type=int, default=50, help="at most this many (0 = all; default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = command("export", help="write all corrections to OUT (.csv or .jsonl)")
    p.add_argument("out")
    p = command("import", help="add corrections from a CSV: path,label[,transcript][,annotator]")
    p.add_argument("csv")
    p.add_argument("--annotator", default=None, help="annotator for rows without one")
    p = command("stats", help="counts per label and annotator")
    p.add_argument("--json", action="store_true")
    command("agreement", help="inter-annotator agreement per clip")
    p = command("backup", help="copy the SQLite database to OUT")
    p.add_argument("out")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, (int, type(None))) else 2

    out = sys.stdout
    try:
        store = CorrectionStore(args.db, media_dir=args.media_dir)
        try:
            if args.cmd == "list":
                recs = store.corrections(limit=args.limit or None)
                for r in recs:
                    if args.json:
                        out.write(json.dumps({k: _json_value(r[k]) for k in EXPORT_FIELDS},
                                             ensure_ascii=False) + "\n")
                    else:
                        out.write("\t".join([
                            str(r.id), r.created_at.isoformat(timespec="seconds"),
                            _one_line(r.label), "pred=" + _one_line(r.predicted_label or "-"),
                            _one_line(r.annotator or "-", 30),
                            _one_line(r.transcript_corrected or r.transcript_shown or "", 60),
                        ]) + "\n")
                if not recs and not args.json:
                    print("no corrections yet", file=sys.stderr)
            elif args.cmd == "export":
                n = store.export(args.out)
                print(f"exported {n} corrections to {args.out}")
            elif args.cmd == "import":
                res = store.import_csv(args.csv, annotator=args.annotator)
                for err in res.errors:
                    print(_one_line(err, 300), file=sys.stderr)
                print(f"imported {res.imported} corrections, {len(res.errors)} rows with errors")
                return 0 if not res.errors else 1
            elif args.cmd == "stats":
                st = store.stats()
                if args.json:
                    st = dict(st, by_annotator={("" if k is None else k): v
                                                for k, v in st["by_annotator"].items()})
                    out.write(json.dumps(st, ensure_ascii=False) + "\n")
                else:
                    out.write(f"corrections\t{st['corrections']}\nmedia\t{st['media']}\n")
                    for k, v in st["by_label"].items():
                        out.write(f"label\t{_one_line(k)}\t{v}\n")
                    for k, v in st["by_annotator"].items():
                        out.write(f"annotator\t{_one_line('(anonymous)' if k is None else k, 60)}\t{v}\n")
            elif args.cmd == "agreement":
                for r in store.agreement():
                    span = "" if r.start is None and r.end is None else f" [{r.start}-{r.end}]"
                    out.write(f"{r.media_sha256[:12]}{span}\t{r.n_annotators} annotators\t"
                              f"{_one_line(r.majority_label)}\t{r.agreement:.2f}"
                              f"{' (tie)' if r.tie else ''}\n")
            elif args.cmd == "backup":
                dest = store.backup(args.out)
                print(f"backed up {_redact(store.url)} to {dest}")
        finally:
            store.close()
    except (EmodemoError, OSError, SQLAlchemyError) as exc:
        msg = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        print(f"error: {_one_line(msg[0] if msg else type(exc).__name__, 300)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_corrections())
