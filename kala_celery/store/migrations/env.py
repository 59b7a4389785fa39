"""Alembic's environment for kala-celery's job store.

kala_celery/store/schema.py runs it with an open connection (config.attributes["connection"]),
already in the transaction that holds PostgreSQL's advisory lock. Run by hand
(`alembic -c <ini>`), it connects to `sqlalchemy.url` or, without one, KALA_DATABASE_URL.
"""

from __future__ import annotations

from alembic import context

from kala_celery.store.tables import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_with(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():  # a no-op when the caller's transaction is open
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    from kala_celery.config import Settings
    from kala_celery.store.db import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url") or Settings.from_env().db_url)
    try:
        with engine.begin() as conn:
            run_with(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
