"""Alembic environment of the sink stage: connects as the owner role from crawlstream Settings.

Settings come from ``config.attributes["settings"]`` (see :mod:`sinks.migrate`); when alembic
is run some other way, they are loaded from the environment.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from sinks.migrate import migration_settings as _settings
from sinks.tables import metadata


def run_offline() -> None:
    context.configure(
        url=_settings().postgres.sqlalchemy_url(owner=True),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(_settings().postgres.sqlalchemy_url(owner=True), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
