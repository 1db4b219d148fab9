"""The annotation queue's clip embedding: ``queue_items.embedding``.

A compact vector per clip (JSON list of floats; `emodemo.annotate.rank.compact`: the audio
branch's standardised pooled features through a fixed random projection), which the queue's
coverage order spreads what it serves over. Nullable: clips queued before this revision have
none and are ordered by their probability vector instead. A plain ADD COLUMN on SQLite and
PostgreSQL; the downgrade drops it (batch mode, for SQLite).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("queue_items", sa.Column("embedding", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("queue_items") as batch:
        batch.drop_column("embedding")
