"""`StoreBase`: an opened corrections store and everything that only reads it.

The layer under the `CorrectionStore` facade: the export / import / agreement modules and the
writing half (`writes.WritableStore`) build on it, so imports go one way (base <- writes <-
transfer, labelstudio, audiofolder, agreement <- corrections).

Records (`Record`) are dicts whose keys can also be read as attributes; the columns a person
looks at first (file name, span, label, the model's label) come first.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from sqlalchemy import func, select
from sqlalchemy.engine import URL

from . import media as M
from .db import Database, default_url, normalize_url, redact_url
from .records import Record, StoreError
from .schema import Correction, Media
from .validate import LabelSet, loads, short

__all__ = ["StoreBase", "now_utc", "as_utc", "LIVE", "DELETED", "ALL"]

#: `iter_records(deleted=...)`: live corrections only (the default), deleted ones only, or all
LIVE, DELETED, ALL = False, True, None


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(dt: Optional[datetime]) -> Optional[datetime]:
    """A database time as an aware UTC datetime (SQLite hands back naive ones)."""
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


class StoreBase:
    """Corrections plus the audio they refer to, in SQLite or any SQLAlchemy database: opening
    and reading. See `emodemo.store.CorrectionStore` for the arguments."""

    def __init__(self, url: Union[str, URL, os.PathLike, None] = None,
                 media_dir: Union[str, os.PathLike, None] = None,
                 labels: Optional[Sequence[str]] = None, *, echo: bool = False):
        self.url = normalize_url(url) if url is not None else default_url()
        self.label_set = LabelSet(labels)
        self.labels = self.label_set.labels
        self.database = Database(self.url, echo=echo)
        self.media_dir = Path(media_dir if media_dir is not None
                              else M.default_media_dir(self.database.db_file)).expanduser().resolve()

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def engine(self):
        return self.database.engine

    @property
    def is_sqlite(self) -> bool:
        return self.database.is_sqlite

    @property
    def db_file(self) -> Optional[Path]:
        """The SQLite database file (None for a server or an in-memory database)."""
        return self.database.db_file

    @property
    def read_only(self) -> bool:
        """True when the database can be read but not written: writes then raise a StoreError
        that says so, and everything else works."""
        return self.database.read_only

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r}, media_dir={str(self.media_dir)!r})"

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.database.dispose()

    def schema_revision(self) -> Optional[str]:
        """The Alembic revision the database is at."""
        return self.database.schema_revision()

    # -- media ---------------------------------------------------------------------------------
    def media_path(self, sha256: str) -> Path:
        """Absolute path of the stored audio for a media hash (StoreError if unknown)."""
        sha = str(sha256).strip().lower()
        with self.database.read() as s:
            media = s.get(Media, sha)
        if media is None:
            raise StoreError(f"no stored audio with hash {short(sha256, 70)}")
        return self.abs_media(media.path)

    def abs_media(self, rel: str) -> Path:
        """The absolute path of a media file given relative to the media folder."""
        return M.resolve(self.media_dir, rel)

    # -- reading -------------------------------------------------------------------------------
    def record(self, c: Correction, m: Media) -> Record:
        """One correction row (and its media row) as a `Record`, useful columns first."""
        return Record(
            id=c.id, file_name=c.file_name or Path(m.path).name, start=c.start, end=c.end,
            label=c.label, predicted_label=c.predicted_label, annotator=c.annotator,
            annotator_account=c.annotator_account, created_at=as_utc(c.created_at),
            updated_at=as_utc(c.updated_at), note=c.note,
            transcript_shown=c.transcript_shown, transcript_corrected=c.transcript_corrected,
            language=c.language, language_probability=c.language_probability,
            translation=c.translation, prob_audio=loads(c.prob_audio),
            prob_text=loads(c.prob_text), prob_fused=loads(c.prob_fused),
            bundle_name=c.bundle_name, bundle_version=c.bundle_version,
            media_sha256=m.sha256, media_file=m.path, media_path=str(self.abs_media(m.path)),
            duration=m.duration, sample_rate=m.sample_rate, queue_item_id=c.queue_item_id,
            speaker=c.speaker, deleted_at=as_utc(c.deleted_at), deleted_by=c.deleted_by,
        )

    def select_records(self, label: Optional[str] = None, annotator: Optional[str] = None,
                       account: Optional[str] = None, deleted: Optional[bool] = LIVE):
        """The SELECT behind `iter_records` (newest first)."""
        stmt = select(Correction, Media).join(Media, Correction.media_sha256 == Media.sha256)
        if label is not None:
            stmt = stmt.where(Correction.label == self.label_set.check(label))
        if annotator is not None:
            stmt = stmt.where(Correction.annotator == annotator)
        if account is not None:
            stmt = stmt.where(Correction.annotator_account == account)
        if deleted is LIVE:
            stmt = stmt.where(Correction.deleted_at.is_(None))
        elif deleted is DELETED:
            stmt = stmt.where(Correction.deleted_at.is_not(None))
        return stmt.order_by(Correction.created_at.desc(), Correction.id.desc())

    def iter_records(self, label: Optional[str] = None, annotator: Optional[str] = None,
                     limit: Optional[int] = None, offset: int = 0,
                     account: Optional[str] = None,
                     deleted: Optional[bool] = LIVE) -> Iterator[Record]:
        """Like `corrections`, but one record at a time (for exports of any size)."""
        stmt = self.select_records(label, annotator, account, deleted)
        if offset:
            stmt = stmt.offset(int(offset))
        if limit is not None:
            stmt = stmt.limit(int(limit))
        with self.database.read() as s:
            for c, m in s.execute(stmt.execution_options(yield_per=500)):
                yield self.record(c, m)

    def corrections(self, limit: Optional[int] = None, offset: int = 0,
                    label: Optional[str] = None, annotator: Optional[str] = None,
                    account: Optional[str] = None,
                    deleted: Optional[bool] = LIVE) -> list[Record]:
        """Corrections as `Record` dicts (attribute access works too), newest first; filtered by
        label, typed annotator name or signed-in account when given. `deleted`: False (the
        default) = live ones only, True = the soft-deleted ones only, None = all."""
        return list(self.iter_records(label, annotator, limit, offset, account, deleted))

    def history(self, limit: Optional[int] = 5000, label: Optional[str] = None,
                deleted: Optional[bool] = LIVE) -> list[Record]:
        """The History tab's rows: `corrections`, whose records start with file_name, start,
        end, label, predicted_label, annotator (the columns to show first)."""
        return self.corrections(limit=limit, label=label, deleted=deleted)

    def get(self, cid: int) -> Optional[Record]:
        """One correction by id (deleted ones too: see its ``deleted_at``), or None."""
        with self.database.read() as s:
            row = s.execute(select(Correction, Media).join(Media).where(
                Correction.id == int(cid))).first()
            return self.record(*row) if row else None

    def stats(self) -> dict[str, Any]:
        """{"corrections": n, "media": n, "by_label": {...}, "by_annotator": {...}, "deleted": n}
        (live corrections, largest first; anonymous ones are counted under the key None)."""
        live = Correction.deleted_at.is_(None)
        with self.database.read() as s:
            total = s.scalar(select(func.count(Correction.id)).where(live)) or 0
            deleted = s.scalar(select(func.count(Correction.id)).where(~live)) or 0
            media = s.scalar(select(func.count(Media.sha256))) or 0
            by_label = s.execute(select(Correction.label, func.count(Correction.id))
                                 .where(live).group_by(Correction.label)).all()
            by_ann = s.execute(select(Correction.annotator, func.count(Correction.id))
                               .where(live).group_by(Correction.annotator)).all()

        def ordered(rows: Iterable) -> dict:
            return dict(sorted(((k, int(n)) for k, n in rows),
                               key=lambda kv: (-kv[1], "" if kv[0] is None else str(kv[0]))))

        return {"corrections": int(total), "media": int(media),
                "by_label": ordered(by_label), "by_annotator": ordered(by_ann),
                "deleted": int(deleted)}
