"""Corrections: language, translation, original file name, soft delete, queue link; the
annotation queue's tables (emodemo.annotate).

* ``corrections.language`` / ``language_probability``: the language the ASR identified;
  ``translation``: the English text the text model read when the speech was not English.
* ``corrections.file_name``: the name the audio was uploaded under (media files are named by hash).
* ``corrections.deleted_at`` / ``deleted_by``: soft delete (the row stays and can be restored).
* ``corrections.queue_item_id``: the annotation-queue item a vote answers (no foreign key, so
  adding it to a big SQLite table is a plain ALTER TABLE ADD COLUMN, not a table copy).
* ``queue_items`` (one clip or span waiting for votes, with the model's pre-label and a lease)
  and ``queue_skips`` (who passed on what).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

NEW_CORRECTION_COLUMNS = (
    ("file_name", sa.String(300)), ("language", sa.String(16)),
    ("language_probability", sa.Float()), ("translation", sa.Text()),
    ("deleted_at", sa.DateTime(timezone=True)), ("deleted_by", sa.String(200)),
    ("queue_item_id", sa.Integer()),
)


def upgrade() -> None:
    for name, type_ in NEW_CORRECTION_COLUMNS:
        op.add_column("corrections", sa.Column(name, type_, nullable=True))
    op.create_index("ix_corrections_queue_item_id", "corrections", ["queue_item_id"])
    op.create_table(
        "queue_items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("media_sha256", sa.String(64),
                  sa.ForeignKey("media.sha256", name="fk_queue_items_media_sha256",
                                ondelete="RESTRICT"), nullable=False),
        sa.Column("file_name", sa.String(300), nullable=True),
        sa.Column("start_sec", sa.Float(), nullable=False),
        sa.Column("end_sec", sa.Float(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("model_label", sa.String(64), nullable=True),
        sa.Column("prob_fused", sa.Text(), nullable=True),
        sa.Column("transcript", sa.Text(), nullable=True),
        sa.Column("bundle_name", sa.String(200), nullable=True),
        sa.Column("lease_annotator", sa.String(200), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("media_sha256", "start_sec", "end_sec", name="uq_queue_items_clip"),
    )
    op.create_index("ix_queue_items_priority", "queue_items", ["priority"])
    op.create_table(
        "queue_skips",
        sa.Column("item_id", sa.Integer(),
                  sa.ForeignKey("queue_items.id", name="fk_queue_skips_item_id",
                                ondelete="CASCADE"), nullable=False),
        sa.Column("annotator", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("item_id", "annotator", name="pk_queue_skips"),
    )


def downgrade() -> None:
    op.drop_table("queue_skips")
    op.drop_index("ix_queue_items_priority", table_name="queue_items")
    op.drop_table("queue_items")
    op.drop_index("ix_corrections_queue_item_id", table_name="corrections")
    with op.batch_alter_table("corrections") as batch:
        for name, _ in reversed(NEW_CORRECTION_COLUMNS):
            batch.drop_column(name)
