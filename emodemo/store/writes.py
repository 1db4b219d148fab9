"""`WritableStore`: adding, changing, deleting (softly) and restoring corrections.

* The audio file is on disk (`media`) before the row that refers to it commits, so a row never
  references a half-written file; the same audio added twice gives one ``media`` row.
* A write holds the database's write lock only for its own few statements, and is retried with
  backoff while the database is busy (`db.Database.retry_write`); a database that cannot take
  it (read-only, full, unreachable, busy for minutes) raises a StoreError that says so, with
  nothing half-stored, so the UI can show it and keep the form.
* A double submit (same clip and span, label, voter, transcript, note and speaker within
  `DUPLICATE_WINDOW_S`) stores one row: the second `add` returns the first row's id as a
  `CorrectionId` with ``duplicate=True``.
* Delete is soft: the row stays with who deleted it and when, is left out of votes, agreement,
  fine-tuning and exports, and `restore` brings it back. Annotators delete their own
  corrections; an admin (``admin=True``) any.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping, Optional, TypedDict, Unpack

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from . import media as M
from .base import StoreBase, now_utc
from .records import NOT_STORED, Record, StoreError
from .schema import Correction, Media
from .validate import (MAX_ANNOTATOR_CHARS, MAX_TEXT_CHARS, check_language, check_span,
                       clean_field, prediction_fields)

__all__ = ["WritableStore", "CorrectionId", "DUPLICATE_WINDOW_S", "UNSET", "MAX_SPEAKER_CHARS",
           "clean_speaker"]

DUPLICATE_WINDOW_S = 30.0        # a second identical submit within this is a double submit
MAX_SPEAKER_CHARS = 200          # schema: String(200) on corrections and queue_items
UNSET: Any = object()            # "not given" for update() and add(file_name=...)


class Details(TypedDict, total=False):
    """What `WritableStore.add` takes by keyword beyond the correction itself."""
    language: Any                    # a code ("pl") or {"code", "probability"}
    translation: Optional[str]       # the English text the model read
    file_name: Any                   # the name to show (default: the audio file's name)
    queue_item_id: Optional[int]     # the annotation-queue item this correction is a vote on
    speaker: Optional[str]           # who speaks (or the session): see `clean_speaker`
# the columns that make two submits "the same correction"
_SAME = ("media_sha256", "start", "end", "label", "annotator", "annotator_account",
         "transcript_corrected", "note", "queue_item_id", "speaker")


def clean_speaker(value: Any) -> Optional[str]:
    """A speaker (or session / recording setup) as stored: free text, stripped, empty -> None.
    Fine-tuning keeps each speaker's clips on one side of its held-out check
    (`emodemo.finetune.dataset.Clip.group`), so the same voice must be spelt the same way."""
    return clean_field(value, "speaker", MAX_SPEAKER_CHARS, strip=True)


class CorrectionId(int):
    """The id `add` returns: an int, with ``duplicate`` True when the submit repeated one made
    moments before (the id is then that first row's)."""
    duplicate: bool

    def __new__(cls, value: int, duplicate: bool = False) -> "CorrectionId":
        obj = super().__new__(cls, value)
        obj.duplicate = duplicate
        return obj

    def __str__(self) -> str:              # f"{cid}", str(cid): the number, as for an int
        return int.__repr__(self)

    def __repr__(self) -> str:
        return f"CorrectionId({int(self)}{', duplicate=True' if self.duplicate else ''})"


def _file_name(audio: Any, given: Any) -> Optional[str]:
    if given is not UNSET:
        return clean_field(given, "file name", 300, strip=True)
    if isinstance(audio, (str, Path)):
        return clean_field(Path(audio).name[-300:], "file name", 300, strip=True)
    return None


def _lock_key(values: Mapping[str, Any]) -> int:
    """A 63-bit key for PostgreSQL's advisory lock that serialises identical submits."""
    digest = hashlib.sha256(repr([values.get(k) for k in _SAME]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class WritableStore(StoreBase):
    """`StoreBase` plus the writes: add, update, delete, restore."""

    def check_writable(self) -> None:
        if self.read_only:
            raise StoreError("Could not save the correction: the corrections database is "
                             f"read-only. {NOT_STORED}")

    def _store_media_file(self, clip: M.MediaClip) -> str:
        """Make sure the clip's bytes are on disk; returns the path relative to media_dir."""
        with self.database.read() as s:
            known = s.get(Media, clip.sha256)
            rel = known.path if known is not None else clip.relative_path
        if known is not None and not clip.data:   # `stored`: on disk already, nothing to write
            return rel
        M.ensure_file(self.abs_media(rel), clip.data)
        return rel

    def stored(self, sha256: str) -> M.MediaClip:
        """A file already in the media folder as a `MediaClip` without its bytes: `add` takes it
        as `audio` and neither decodes nor rewrites anything (a vote on a span of a queued hour-
        long recording read and hashed the whole file before). StoreError if it is not there."""
        with self.database.read() as s:
            row = s.get(Media, str(sha256))
        if row is None or not self.abs_media(row.path).is_file():
            raise StoreError(f"the audio {str(sha256)[:12]}... is no longer in the media folder")
        return M.MediaClip(row.sha256, b"", Path(row.path).suffix, float(row.duration or 0.0),
                           int(row.sample_rate or 0))

    def store_media(self, audio: Any) -> M.MediaClip:
        """Keep `audio` (a path or a (waveform, sr) pair) in the media folder and its ``media``
        row, without a correction (the annotation queue's clips); returns what was stored."""
        self.check_writable()
        clip = M.ingest(audio)
        try:
            rel = self._store_media_file(clip)
        except OSError as exc:
            raise M.media_write_error(exc) from exc

        def insert() -> None:
            with self.database.write() as s, s.begin():
                self._insert_media(s, clip, rel, now_utc())

        self.database.retry_write(insert)
        return clip

    def add(self, audio: Any, label: str, annotator: Optional[str] = None,
            transcript: Optional[str] = None, prediction: Any = None, note: Optional[str] = None,
            start: Optional[float] = None, end: Optional[float] = None,
            account: Optional[str] = None, **details: Unpack[Details]) -> CorrectionId:
        """Store one correction and return its id.

        audio: a file path (kept byte for byte), a ``(waveform, sample_rate)`` pair (stored as
            16 kHz 16-bit WAV), or `stored(sha256)`: a file already in the media folder.
            Raises `emodemo.errors.AudioError` if it is not usable audio.
        label: one of `labels`, or ``"none"`` ("none of these"); StoreError otherwise.
        transcript: the corrected transcript; the shown one comes from `prediction`.
        prediction: dict or object with label, audio, text, fused, transcript, bundle,
            bundle_version, language, translation (whatever is present is stored).
        start, end: the span of the audio the correction is about, in seconds.
        account: the signed-in account (e.g. the Hugging Face user name) that made it; where
            given, agreement and fine-tuning count one vote per account instead of per
            `annotator` name (which is free text anyone can type).
        details (keyword only, see `Details`): language: the speaker's language, a code ("pl") or the recognizer's dict with
            "code" and "probability"; translation: the English text the model read.
        file_name: the name to show (default: the audio file's name).
        queue_item_id: the annotation-queue item this correction is a vote on.
        speaker: who speaks in the clip (or the session / recording setup): fine-tuning keeps
            each speaker's clips on one side of its held-out check.

        A double submit (same clip/span, label, voter, transcript, note, speaker within
        `writes.DUPLICATE_WINDOW_S` seconds) stores nothing new: the returned `CorrectionId` is
        the first row's, with ``duplicate=True``.
        """
        unknown = set(details) - set(Details.__annotations__)
        if unknown:
            raise TypeError(f"add() got unexpected keyword argument(s) {sorted(unknown)}")
        language, translation = details.get("language"), details.get("translation")
        file_name, queue_item_id = details.get("file_name", UNSET), details.get("queue_item_id")
        self.check_writable()
        values = dict(
            label=self.label_set.check(label),
            annotator=clean_field(annotator, "annotator", MAX_ANNOTATOR_CHARS, strip=True),
            annotator_account=clean_field(account, "account", MAX_ANNOTATOR_CHARS, strip=True),
            transcript_corrected=clean_field(transcript, "transcript", MAX_TEXT_CHARS),
            note=clean_field(note, "note", MAX_TEXT_CHARS),
            file_name=_file_name(audio, file_name),
            queue_item_id=None if queue_item_id is None else int(queue_item_id),
            speaker=clean_speaker(details.get("speaker")),
            **prediction_fields(prediction),
        )
        if language is not None:
            values.update(check_language(language))
        if translation is not None:
            values["translation"] = clean_field(translation, "translation", MAX_TEXT_CHARS)
        s0, e0 = check_span(start, end, None)  # cheap checks before decoding
        clip = audio if isinstance(audio, M.MediaClip) else M.ingest(audio)
        values["start"], values["end"] = check_span(s0, e0, clip.duration)
        values["media_sha256"] = clip.sha256
        try:
            rel = self._store_media_file(clip)  # on disk before any row refers to it
        except OSError as exc:  # disk full, read-only folder ...: say so, store nothing
            raise M.media_write_error(exc) from exc

        def insert() -> CorrectionId:
            now = now_utc()
            with self.database.write() as s, s.begin():
                first = self._same_recent(s, values, now)
                if first is not None:
                    return CorrectionId(first, duplicate=True)
                self._insert_media(s, clip, rel, now)
                row = Correction(created_at=now, updated_at=now, **values)
                s.add(row)
                s.flush()
                return CorrectionId(row.id)

        return self.database.retry_write(insert)

    def _same_recent(self, s: Session, values: Mapping[str, Any], now: datetime) -> Optional[int]:
        """The id of a live correction identical to `values` made within DUPLICATE_WINDOW_S."""
        if s.get_bind().dialect.name == "postgresql":  # SQLite: BEGIN IMMEDIATE serialises
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(values)})
        stmt = select(Correction.id).where(
            Correction.deleted_at.is_(None),
            Correction.created_at >= now - timedelta(seconds=DUPLICATE_WINDOW_S),
            *(getattr(Correction, k).is_not_distinct_from(values.get(k)) for k in _SAME))
        return s.scalar(stmt.order_by(Correction.id).limit(1))

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

    def update(self, cid: int, *, label: Any = UNSET, note: Any = UNSET,
               transcript: Any = UNSET, annotator: Any = UNSET, speaker: Any = UNSET) -> Record:
        """Change fields of an existing correction (only those given); bumps updated_at.
        speaker: who speaks (`clean_speaker`; None or blank clears it)."""
        self.check_writable()
        changes: dict[str, Any] = {}
        if label is not UNSET:
            changes["label"] = self.label_set.check(label)
        if note is not UNSET:
            changes["note"] = clean_field(note, "note", MAX_TEXT_CHARS)
        if transcript is not UNSET:
            changes["transcript_corrected"] = clean_field(transcript, "transcript", MAX_TEXT_CHARS)
        if annotator is not UNSET:
            changes["annotator"] = clean_field(annotator, "annotator", MAX_ANNOTATOR_CHARS, strip=True)
        if speaker is not UNSET:
            changes["speaker"] = clean_speaker(speaker)
        self._change(cid, lambda row: changes)
        return self._get_existing(cid)

    def _get_existing(self, cid: int) -> Record:
        rec = self.get(cid)
        if rec is None:
            raise StoreError(f"no correction with id {cid}")
        return rec

    def _change(self, cid: int, changes_for) -> None:
        """Apply `changes_for(row)` (a dict of column values) to row `cid` in one transaction."""
        try:
            cid = int(cid)
        except (TypeError, ValueError):
            raise StoreError(f"not a correction id: {cid!r}") from None

        def apply() -> None:
            with self.database.write() as s, s.begin():
                row = s.get(Correction, cid)
                if row is None:
                    raise StoreError(f"no correction with id {cid}")
                for k, v in changes_for(row).items():
                    setattr(row, k, v)
                row.updated_at = now_utc()

        self.database.retry_write(apply)

    def _permitted(self, by: Any, admin: bool, what: str):
        who = clean_field(by, "by", MAX_ANNOTATOR_CHARS, strip=True)
        if who is None and not admin:
            raise StoreError(f"say who {what} the correction (an annotator name or account)")

        def check(row: Correction) -> str:
            if not admin and who not in (row.annotator_account, row.annotator):
                raise StoreError(f"correction {row.id} was made by someone else; only its "
                                 f"annotator or an admin can {what.rstrip('s')} it")
            return who or "admin"
        return check

    def delete(self, cid: int, by: Optional[str], admin: bool = False) -> Record:
        """Soft-delete correction `cid` on behalf of `by` (their annotator name or account; an
        admin may delete anyone's). The row stays, with ``deleted_at`` / ``deleted_by``, and is
        left out of votes, agreement, fine-tuning and exports until `restore`d. Deleting a
        deleted correction changes nothing. Returns the record."""
        self.check_writable()
        check = self._permitted(by, admin, "deletes")

        def changes(row: Correction) -> dict:
            who = check(row)
            if row.deleted_at is not None:
                return {}
            return {"deleted_at": now_utc(), "deleted_by": who}

        self._change(cid, changes)
        return self._get_existing(cid)

    def restore(self, cid: int, by: Optional[str], admin: bool = False) -> Record:
        """Undo `delete`: the correction counts again (same permission rule). Returns it."""
        self.check_writable()
        check = self._permitted(by, admin, "restores")

        def changes(row: Correction) -> dict:
            check(row)
            return {"deleted_at": None, "deleted_by": None}

        self._change(cid, changes)
        return self._get_existing(cid)
