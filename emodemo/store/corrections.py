"""`CorrectionStore`: people's corrections of emodemo predictions, with the audio they refer to.

Usage::

    from emodemo.store import CorrectionStore
    store = CorrectionStore("sqlite:///data/corrections.db")   # any SQLAlchemy URL
    cid = store.add("clip.wav", "happy", annotator="ana", prediction=pred, transcript="fixed text")
    store.corrections()          # newest first
    store.export("out.csv")      # or out.jsonl

The audio file is on disk (`media`) before the database row that refers to it commits, so a
row never references a half-written file; the same audio added twice gives one ``media`` row and
two ``corrections`` rows. Writes to a read-only database, a full disk or an unreachable server
raise a StoreError that says which, with nothing half-stored. Records (`Record`) are dicts whose
keys can also be read as attributes (``rec["label"] == rec.label``).
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from . import media as M
from . import transfer
from .agreement import clip_agreement
from .db import Database, default_url, normalize_url, redact_url
from .labelstudio import import_labelstudio
from .records import NOT_STORED, ImportResult, Record, StoreError
from .schema import Correction, Media
from .validate import (MAX_ANNOTATOR_CHARS, MAX_TEXT_CHARS, LabelSet, check_span, clean_field,
                       loads, prediction_fields, short)

_UNSET: Any = object()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(dt: Optional[datetime]) -> Optional[datetime]:
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


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
        self.url = normalize_url(url) if url is not None else default_url()
        self._labels = LabelSet(labels)
        self.labels = self._labels.labels
        self._db = Database(self.url, echo=echo)
        self.media_dir = Path(media_dir if media_dir is not None
                              else M.default_media_dir(self._db.db_file)).expanduser().resolve()

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def engine(self):
        return self._db.engine

    @property
    def is_sqlite(self) -> bool:
        return self._db.is_sqlite

    @property
    def db_file(self) -> Optional[Path]:
        """The SQLite database file (None for a server or an in-memory database)."""
        return self._db.db_file

    @property
    def read_only(self) -> bool:
        """True when the database can be read but not written: add() and update() then raise a
        StoreError that says so, and everything else works."""
        return self._db.read_only

    @property
    def database(self) -> Database:
        """The opened database (engines, sessions, retries): for the store's own modules."""
        return self._db

    def __repr__(self) -> str:
        return f"CorrectionStore({redact_url(self.url)!r}, media_dir={str(self.media_dir)!r})"

    def __enter__(self) -> "CorrectionStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._db.dispose()

    def schema_revision(self) -> Optional[str]:
        """The Alembic revision the database is at."""
        return self._db.schema_revision()

    # -- media ---------------------------------------------------------------------------------
    def media_path(self, sha256: str) -> Path:
        """Absolute path of the stored audio for a media hash (StoreError if unknown)."""
        sha = str(sha256).strip().lower()
        with self._db.read() as s:
            media = s.get(Media, sha)
        if media is None:
            raise StoreError(f"no stored audio with hash {short(sha256, 70)}")
        return self._abs_media(media.path)

    def _abs_media(self, rel: str) -> Path:
        return M.resolve(self.media_dir, rel)

    def _store_media_file(self, clip: M.MediaClip) -> str:
        """Make sure the clip's bytes are on disk; returns the path relative to media_dir."""
        with self._db.read() as s:
            known = s.get(Media, clip.sha256)
            rel = known.path if known is not None else clip.relative_path
        M.ensure_file(self._abs_media(rel), clip.data)
        return rel

    # -- writing -------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError("Could not save the correction: the corrections database is "
                             f"read-only. {NOT_STORED}")

    def add(self, audio: Any, label: str, annotator: Optional[str] = None,
            transcript: Optional[str] = None, prediction: Any = None, note: Optional[str] = None,
            start: Optional[float] = None, end: Optional[float] = None,
            account: Optional[str] = None) -> int:
        """Store one correction and return its id.

        audio: a file path (kept byte for byte) or a ``(waveform, sample_rate)`` pair (stored as
            16 kHz 16-bit WAV). Raises `emodemo.errors.AudioError` if it is not usable audio.
        label: one of `labels`, or ``"none"`` ("none of these"); StoreError otherwise.
        transcript: the corrected transcript; the shown one comes from `prediction`.
        prediction: dict or object with label, audio, text, fused, transcript, bundle,
            bundle_version (whatever is present is stored).
        start, end: the span of the audio the correction is about, in seconds.
        account: the signed-in account (e.g. the Hugging Face user name) that made it; where
            given, agreement and fine-tuning count one vote per account instead of per
            `annotator` name (which is free text anyone can type).
        """
        self._check_writable()
        values = dict(
            label=self._labels.check(label),
            annotator=clean_field(annotator, "annotator", MAX_ANNOTATOR_CHARS, strip=True),
            annotator_account=clean_field(account, "account", MAX_ANNOTATOR_CHARS, strip=True),
            transcript_corrected=clean_field(transcript, "transcript", MAX_TEXT_CHARS),
            note=clean_field(note, "note", MAX_TEXT_CHARS),
            **prediction_fields(prediction),
        )
        s0, e0 = check_span(start, end, None)  # cheap checks before decoding
        clip = M.ingest(audio)
        values["start"], values["end"] = check_span(s0, e0, clip.duration)
        try:
            rel = self._store_media_file(clip)  # on disk before any row refers to it
        except OSError as exc:  # disk full, read-only folder ...: say so, store nothing
            raise M.media_write_error(exc) from exc

        def insert() -> int:
            now = _now()
            with self._db.write() as s, s.begin():
                self._insert_media(s, clip, rel, now)
                row = Correction(media_sha256=clip.sha256, created_at=now, updated_at=now, **values)
                s.add(row)
                s.flush()
                return row.id

        return self._db.retry_write(insert)

    def _insert_media(self, s: Session, clip: M.MediaClip, rel: str, now: datetime) -> None:
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
               transcript: Any = _UNSET, annotator: Any = _UNSET) -> Record:
        """Change fields of an existing correction (only those given); bumps updated_at."""
        self._check_writable()
        changes: dict[str, Any] = {}
        if label is not _UNSET:
            changes["label"] = self._labels.check(label)
        if note is not _UNSET:
            changes["note"] = clean_field(note, "note", MAX_TEXT_CHARS)
        if transcript is not _UNSET:
            changes["transcript_corrected"] = clean_field(transcript, "transcript", MAX_TEXT_CHARS)
        if annotator is not _UNSET:
            changes["annotator"] = clean_field(annotator, "annotator", MAX_ANNOTATOR_CHARS, strip=True)

        def apply() -> None:
            with self._db.write() as s, s.begin():
                row = s.get(Correction, int(cid))
                if row is None:
                    raise StoreError(f"no correction with id {cid}")
                for k, v in changes.items():
                    setattr(row, k, v)
                row.updated_at = _now()

        self._db.retry_write(apply)
        rec = self.get(cid)
        assert rec is not None
        return rec

    # -- reading -------------------------------------------------------------------------------
    def _record(self, c: Correction, m: Media) -> Record:
        return Record(
            id=c.id, created_at=_utc(c.created_at), updated_at=_utc(c.updated_at),
            label=c.label, annotator=c.annotator, annotator_account=c.annotator_account,
            note=c.note,
            transcript_shown=c.transcript_shown, transcript_corrected=c.transcript_corrected,
            predicted_label=c.predicted_label, prob_audio=loads(c.prob_audio),
            prob_text=loads(c.prob_text), prob_fused=loads(c.prob_fused),
            bundle_name=c.bundle_name, bundle_version=c.bundle_version,
            media_sha256=m.sha256, media_path=str(self._abs_media(m.path)),
            duration=m.duration, sample_rate=m.sample_rate, start=c.start, end=c.end,
        )

    def _select(self, label: Optional[str] = None, annotator: Optional[str] = None,
                account: Optional[str] = None):
        stmt = select(Correction, Media).join(Media, Correction.media_sha256 == Media.sha256)
        if label is not None:
            stmt = stmt.where(Correction.label == self._labels.check(label))
        if annotator is not None:
            stmt = stmt.where(Correction.annotator == annotator)
        if account is not None:
            stmt = stmt.where(Correction.annotator_account == account)
        return stmt.order_by(Correction.created_at.desc(), Correction.id.desc())

    def iter_records(self, label: Optional[str] = None, annotator: Optional[str] = None,
                     limit: Optional[int] = None, offset: int = 0,
                     account: Optional[str] = None) -> Iterator[Record]:
        """Like `corrections`, but one record at a time (for exports of any size)."""
        stmt = self._select(label, annotator, account)
        if offset:
            stmt = stmt.offset(int(offset))
        if limit is not None:
            stmt = stmt.limit(int(limit))
        with self._db.read() as s:
            for c, m in s.execute(stmt.execution_options(yield_per=500)):
                yield self._record(c, m)

    def corrections(self, limit: Optional[int] = None, offset: int = 0,
                    label: Optional[str] = None, annotator: Optional[str] = None,
                    account: Optional[str] = None) -> list[Record]:
        """Corrections as `Record` dicts (attribute access works too), newest first; filtered by
        label, typed annotator name or signed-in account when given."""
        return list(self.iter_records(label, annotator, limit, offset, account))

    def get(self, cid: int) -> Optional[Record]:
        """One correction by id, or None."""
        with self._db.read() as s:
            row = s.execute(select(Correction, Media).join(Media).where(
                Correction.id == int(cid))).first()
            return self._record(*row) if row else None

    def stats(self) -> dict[str, Any]:
        """{"corrections": n, "media": n, "by_label": {...}, "by_annotator": {...}} (counts,
        largest first; anonymous corrections are counted under the key None)."""
        with self._db.read() as s:
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
        """Inter-annotator agreement per clip; see `emodemo.store.agreement.clip_agreement`."""
        return clip_agreement(self, min_annotators)

    # -- import / export / backup (emodemo.store.transfer) -------------------------------------
    def export(self, path: Union[str, os.PathLike], format: Optional[str] = None,
               audio_url: Optional[str] = None) -> int:
        """Write all corrections to CSV or JSONL (chosen by the suffix), or with `format` as a
        Hugging Face "audiofolder" or "labelstudio" JSON; returns the number of rows (tasks for
        Label Studio). See `emodemo.store.transfer.export`."""
        return transfer.export(self, path, format=format, audio_url=audio_url)

    def import_csv(self, path: Union[str, os.PathLike], annotator: Optional[str] = None) -> ImportResult:
        """Add corrections from a manifest CSV (``path,label[,transcript][,annotator]``, or a CSV
        written by `export`); bad rows are skipped and reported. See
        `emodemo.store.transfer.import_csv`."""
        return transfer.import_csv(self, path, annotator)

    def import_labelstudio(self, path: Union[str, os.PathLike],
                           audio_root: Union[str, os.PathLike, None] = None,
                           annotator: Optional[str] = None) -> ImportResult:
        """Add the annotations of a Label Studio JSON export; bad tasks are skipped and
        reported. See `emodemo.store.labelstudio.import_labelstudio`."""
        return import_labelstudio(self, path, audio_root=audio_root, annotator=annotator)

    def backup(self, path: Union[str, os.PathLike]) -> Path:
        """Consistent copy of a SQLite database written atomically to `path` (the media folder is
        not included). See `emodemo.store.transfer.backup`."""
        return transfer.backup(self, path)
