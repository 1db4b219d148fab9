"""Initial schema: media (content-addressed audio) and corrections.

Revision ID: 0001
Revises:
Create Date: 2024-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("path", sa.String(300), nullable=False),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("sample_rate", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("media_sha256", sa.String(64),
                  sa.ForeignKey("media.sha256", name="fk_corrections_media_sha256",
                                ondelete="RESTRICT"),
                  nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("annotator", sa.String(200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("transcript_shown", sa.Text(), nullable=True),
        sa.Column("transcript_corrected", sa.Text(), nullable=True),
        sa.Column("predicted_label", sa.String(64), nullable=True),
        sa.Column("prob_audio", sa.Text(), nullable=True),
        sa.Column("prob_text", sa.Text(), nullable=True),
        sa.Column("prob_fused", sa.Text(), nullable=True),
        sa.Column("bundle_name", sa.String(200), nullable=True),
        sa.Column("bundle_version", sa.String(100), nullable=True),
        sa.Column("start_sec", sa.Float(), nullable=True),
        sa.Column("end_sec", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("corrections")
    op.drop_table("media")
