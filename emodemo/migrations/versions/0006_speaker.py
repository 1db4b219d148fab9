"""Who speaks in a clip: ``corrections.speaker`` and ``queue_items.speaker``.

Fine-tuning keeps a held-out part of the corrections and picks its adapter by cross-validation,
both grouped so that one group never sits on both sides (`emodemo.finetune.dataset.Clip.group`).
Without a speaker every recording is its own group, so a campaign of single clips of a few
voices is checked on voices the adapter already heard: an optimistic check that decides whether
a fine-tune is accepted. The speaker (or session / recording setup) a team lead gives when
queueing or importing is kept on the queue item and copied into each vote. Free text, nullable:
rows from before this revision have none and are grouped by recording as before. A plain ADD
COLUMN on SQLite and PostgreSQL; the downgrade drops both (batch mode, for SQLite).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-20
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("corrections", "queue_items")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("speaker", sa.String(200), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("speaker")
