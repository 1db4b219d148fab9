"""The store's tables at the head revision (the history lives in emodemo/migrations/versions).

Imports nothing else of emodemo, so the Alembic environment can load it on its own.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String, Text
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
