"""The store's tables at the head revision (the history lives in emodemo/migrations/versions).

Imports nothing else of emodemo, so the Alembic environment can load it on its own.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import (DateTime, Float, ForeignKey, Index, Integer, PrimaryKeyConstraint, String,
                        Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Alembic's version table (named so that it cannot clash with an application's own).
VERSION_TABLE = "emodemo_alembic_version"


class Base(DeclarativeBase):
    pass


class Media(Base):
    """One audio file, stored once per content hash."""
    __tablename__ = "media"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(300))          # relative to media_dir, '/'-separated
    duration: Mapped[Optional[float]] = mapped_column(Float)
    sample_rate: Mapped[Optional[int]] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Correction(Base):
    """One person's label (and transcript, note) for an audio file or a span of it."""
    __tablename__ = "corrections"
    __table_args__ = (
        Index("ix_corrections_created_at", "created_at"),
        Index("ix_corrections_media_sha256", "media_sha256"),
        Index("ix_corrections_annotator", "annotator"),
        Index("ix_corrections_annotator_account", "annotator_account"),
        Index("ix_corrections_queue_item_id", "queue_item_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    media_sha256: Mapped[str] = mapped_column(
        String(64), ForeignKey("media.sha256", name="fk_corrections_media_sha256",
                               ondelete="RESTRICT"))
    label: Mapped[str] = mapped_column(String(64))
    annotator: Mapped[Optional[str]] = mapped_column(String(200))          # typed, free text
    annotator_account: Mapped[Optional[str]] = mapped_column(String(200))  # signed-in account
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
    # 0004: the speaker's language (as the ASR identified it), the English text the model read
    file_name: Mapped[Optional[str]] = mapped_column(String(300))        # as uploaded
    language: Mapped[Optional[str]] = mapped_column(String(16))           # code, e.g. "pl"
    language_probability: Mapped[Optional[float]] = mapped_column(Float)
    translation: Mapped[Optional[str]] = mapped_column(Text)
    # soft delete: the row stays (restorable); excluded from votes, fine-tuning and exports
    deleted_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    deleted_by: Mapped[Optional[str]] = mapped_column(String(200))
    # a vote in the annotation queue (emodemo.annotate): the queue item it answers
    queue_item_id: Mapped[Optional[int]] = mapped_column(Integer)
    # 0006: who speaks (or the session): fine-tuning keeps one speaker's clips on one side
    speaker: Mapped[Optional[str]] = mapped_column(String(200))


class QueueItem(Base):
    """One clip (a file or a span of a long recording) waiting in the annotation queue."""
    __tablename__ = "queue_items"
    __table_args__ = (
        UniqueConstraint("media_sha256", "start_sec", "end_sec", name="uq_queue_items_clip"),
        Index("ix_queue_items_priority", "priority"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    media_sha256: Mapped[str] = mapped_column(
        String(64), ForeignKey("media.sha256", name="fk_queue_items_media_sha256",
                               ondelete="RESTRICT"))
    file_name: Mapped[Optional[str]] = mapped_column(String(300))
    start: Mapped[float] = mapped_column("start_sec", Float)
    end: Mapped[float] = mapped_column("end_sec", Float)
    priority: Mapped[float] = mapped_column(Float)                  # model uncertainty, 0..1
    model_label: Mapped[Optional[str]] = mapped_column(String(64))
    prob_fused: Mapped[Optional[str]] = mapped_column(Text)         # JSON {label: p}
    transcript: Mapped[Optional[str]] = mapped_column(Text)
    bundle_name: Mapped[Optional[str]] = mapped_column(String(200))
    lease_annotator: Mapped[Optional[str]] = mapped_column(String(200))
    lease_until: Mapped[Optional[float]] = mapped_column(Float)     # Unix time; portable compare
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    embedding: Mapped[Optional[str]] = mapped_column(Text)          # 0005: JSON [float] (rank.compact)
    speaker: Mapped[Optional[str]] = mapped_column(String(200))     # 0006: copied into its votes


class QueueSkip(Base):
    """An annotator passed on a queue item: it is not served to them again."""
    __tablename__ = "queue_skips"
    __table_args__ = (PrimaryKeyConstraint("item_id", "annotator", name="pk_queue_skips"),)

    item_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("queue_items.id", name="fk_queue_skips_item_id", ondelete="CASCADE"))
    annotator: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
