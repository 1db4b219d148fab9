"""Add corrections.updated_at (backfilled from created_at) and lookup indexes.

Indexes: corrections(created_at) for newest-first listing, corrections(media_sha256) for
agreement/dedupe lookups, corrections(annotator) for per-annotator stats.

Revision ID: 0002
Revises: 0001
Create Date: 2024-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("corrections", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    corrections = sa.table("corrections", sa.column("updated_at"), sa.column("created_at"))
    op.execute(corrections.update().where(corrections.c.updated_at.is_(None))
               .values(updated_at=corrections.c.created_at))
    op.create_index("ix_corrections_created_at", "corrections", ["created_at"])
    op.create_index("ix_corrections_media_sha256", "corrections", ["media_sha256"])
    op.create_index("ix_corrections_annotator", "corrections", ["annotator"])


def downgrade() -> None:
    op.drop_index("ix_corrections_annotator", table_name="corrections")
    op.drop_index("ix_corrections_media_sha256", table_name="corrections")
    op.drop_index("ix_corrections_created_at", table_name="corrections")
    with op.batch_alter_table("corrections") as batch:
        batch.drop_column("updated_at")
