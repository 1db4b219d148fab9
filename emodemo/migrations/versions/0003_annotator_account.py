"""Add corrections.annotator_account: the signed-in account (e.g. Hugging Face) that made it.

Where sign-in is on, votes are counted per account (`emodemo.labels.voter`); the free-text
annotator name stays for local use. Indexed for per-account listings.

Revision ID: 0003
Revises: 0002
Create Date: 2025-06-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("corrections", sa.Column("annotator_account", sa.String(200), nullable=True))
    op.create_index("ix_corrections_annotator_account", "corrections", ["annotator_account"])


def downgrade() -> None:
    op.drop_index("ix_corrections_annotator_account", table_name="corrections")
    with op.batch_alter_table("corrections") as batch:
        batch.drop_column("annotator_account")
