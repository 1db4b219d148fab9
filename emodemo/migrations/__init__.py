"""Alembic migration environment for the corrections store (see emodemo.store).

Kept inside the package so that it ships with emodemo; `CorrectionStore` runs
`alembic upgrade head` on open with absolute paths derived from this folder.
"""
