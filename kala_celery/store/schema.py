"""The job store's schema version (Alembic, kala_celery/store/migrations/) and who may change it.

Every process checks the schema when it connects (db.init_schema):

- an empty database is created at head, by running the migrations;
- a database at head is used as it is;
- a database behind head is upgraded there and then when it is SQLite (the embedded
  default: one machine, one installation, so `kala-celery serve` upgrades by itself);
  any other database (PostgreSQL, shared by machines that may run different versions
  during an upgrade) is refused with SchemaBehind, which names `kala-celery db upgrade`;
- a database newer than this code (a revision it does not know) is refused.

A database made by kala-celery 0.1.0 has the tables but no alembic_version: it is at 0001.
On PostgreSQL all of this runs in one transaction under an advisory lock, so processes that
start together take turns and only one of them creates or upgrades the schema.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

if logging.getLogger("alembic").level == logging.NOTSET:  # no banner at every start
    logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LEGACY = "0001"  # what a database with kala's tables and no alembic_version is at
UPGRADE_COMMAND = "kala-celery db upgrade"
_LOCK = "SELECT pg_advisory_xact_lock(7040516)"


class SchemaError(RuntimeError):
    """The job store's schema is not one this code can use."""


class SchemaBehind(SchemaError):
    pass


class SchemaAhead(SchemaError):
    pass


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@cache
def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    revision = script().get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    """The database's revision: None for an empty database, LEGACY for 0.1.0's tables."""
    revision = MigrationContext.configure(connection).get_current_revision()
    if revision is None and inspect(connection).has_table("jobs"):
        return LEGACY
    return revision


def known(revision: str) -> bool:
    """Whether this code has migration `revision`."""
    try:
        return script().get_revision(revision) is not None
    except Exception:  # alembic raises several kinds for an unknown id
        return False


def _describe(url: str, revision: str) -> str:
    return f"the job store {url} is at schema revision {revision}, this kala-celery at {head()}"


def _upgrade(connection: Connection, revision: str | None) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    if revision == LEGACY and MigrationContext.configure(connection).get_current_revision() is None:
        command.stamp(config, LEGACY)
    command.upgrade(config, "head")


def _begin(engine: Engine) -> Connection:
    connection = engine.connect()
    if engine.dialect.name == "sqlite":  # pysqlite runs DDL outside transactions otherwise
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif engine.dialect.name == "postgresql":
        connection.execute(text(_LOCK))
    return connection


def ensure(engine: Engine, *, upgrade: bool | None = None) -> str:
    """Make sure the database is at head (see the module's docstring); return what it was at
    ("" for an empty database). `upgrade` None: only SQLite is upgraded; True: any database
    (`kala-celery db upgrade`); False: none."""
    if upgrade is None:
        upgrade = engine.dialect.name == "sqlite"
    url = engine.url.render_as_string(hide_password=True)
    with _begin(engine) as connection:
        try:
            revision = current(connection)
            if revision == head():
                connection.rollback()
                return revision
            if revision is not None and not known(revision):
                raise SchemaAhead(f"{_describe(url, revision)}, which does not know "
                                  f"{revision}: upgrade kala-celery on this machine")
            if revision is not None and not upgrade:
                raise SchemaBehind(f"{_describe(url, revision)}: run `{UPGRADE_COMMAND}` "
                                   "(with the same KALA_DATABASE_URL or --db) first")
            _upgrade(connection, revision)
            connection.commit()
            log.info("job store %s: %s schema revision %s", url,
                     f"upgraded from {revision} to" if revision else "created at", head())
        except BaseException:
            connection.rollback()
            raise
    return revision or ""


def revision_of(engine: Engine) -> str | None:
    """The database's revision, read without changing anything."""
    with engine.connect() as connection:
        return current(connection)
