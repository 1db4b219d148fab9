"""Alembic environment for the emodemo corrections store.

Normally driven by `emodemo.store.CorrectionStore`, which passes an open connection (already in
a transaction that holds the migration lock) as ``config.attributes["connection"]``. For manual
use (new revisions, offline SQL), build a config with `emodemo.store.alembic_config(url)`:

    from alembic import command
    from emodemo.store import alembic_config
    command.revision(alembic_config("sqlite:///data/corrections.db"), "message", autogenerate=True)
"""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from emodemo.store.schema import VERSION_TABLE, Base  # the tables only, not the whole store

config = context.config
target_metadata = Base.metadata


def _configure(**kw) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
        **kw,
    )


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"},
               render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.begin() as conn:
            _run_with(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
