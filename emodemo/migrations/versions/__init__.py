"""Alembic revisions for the corrections store (alembic skips this file)."""
