"""Statements a hot path runs on the database driver's own cursor (docs/design.md Decision
36): those every run executes on a worker (its claim and its end) and every create in the API
(the job's INSERT and its audit row's).

Each is a Core statement, compiled by SQLAlchemy once per dialect; at each run the driver
(psycopg, which prepares it on the server; sqlite3, which keeps it in its statement cache)
executes its SQL on the connection SQLAlchemy checked out, in that connection's transaction
or autocommit, and hands back plain tuples. What is skipped is SQLAlchemy's per-execution
work: the execution context, the result's metadata (psycopg describes every column of the
claim's 50 at each execution) and the rows' processing. The types' own conversions still
apply (an aware UTC datetime in, one out).

SQLAlchemy still owns the connection: its pool checks it out and takes it back, and a driver's
error goes through SQLAlchemy's own handling, so an outage raises what `store.db.DatabaseAway`
names and a dropped connection invalidates the pool's older ones, as for any statement. On a
Connection the statement joins its transaction (or begins one, as `Connection.execute` does).
Given the Engine instead, the statement runs alone, as a worker's claim and end do: on the
DB-API connection the thread holds out of the pool of the engine's autocommit sibling
(`store.db.autocommit_engine`, `store.db.held_connection`), with no Connection made around
it unless it fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Dialect,
    Engine,
    Insert,
    Integer,
    SmallInteger,
    Table,
    bindparam,
    insert,
)
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import Executable

from kala_celery.store.db import autocommit_engine, held_connection, let_go


class DriverStatement:
    """A statement compiled once for `dialect`, run by the driver. Its bound parameters
    without a value are the caller's at each execution; the others are bound once here."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        # A copy (a statement with no new options) is what is compiled and asked for its
        # columns: SQLAlchemy memoizes an UPDATE's (empty) RETURNING columns on the statement
        # asked, and a statement built on it later (`.returning()`) inherited that empty set.
        statement = statement.execution_options()
        compiled = statement.compile(dialect=dialect)
        if "POSTCOMPILE" in compiled.string:
            raise ValueError("an expanding parameter is compiled at each execution")
        self.sql = compiled.string
        self._binds: dict[str, Callable[[Any], Any]] = {}
        self._fixed: dict[str, Any] = {}
        for bind, name in compiled.bind_names.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if dialect.driver == "psycopg" and processor is None:
                processor = _sized_int(bind.type)
            if processor is not None:
                self._binds[name] = processor
            if not bind.required:
                self._fixed[name] = self._bound(name, bind.effective_value)
        self._order = tuple(compiled.positiontup or ()) if compiled.positional else None
        columns = getattr(statement, "exported_columns", ())  # a SELECT's, or a RETURNING
        results = [column.type.dialect_impl(dialect).result_processor(dialect, None)
                   for column in columns]
        self._rows = bool(results)  # the statement returns rows (it has columns)
        # the columns whose type converts a value (a few of the claim's 60)
        self._converts = tuple((at, convert) for at, convert in enumerate(results) if convert)
        self._options = {"prepare": True} if dialect.driver == "psycopg" else {}
        self._error = dialect.loaded_dbapi.Error

    def _bound(self, name: str, value: Any) -> Any:
        processor = self._binds.get(name)  # called for None too, as SQLAlchemy calls it (a
        return value if processor is None else processor(value)  # JSON None is 'null')

    def first(self, conn: Connection | Engine, params: Mapping[str, Any]
              ) -> tuple[Any, ...] | None:
        """The statement's first row on `conn`, or None (also when it returns no rows). Given
        an Engine, the statement runs alone, on the connection the thread holds of the
        engine's autocommit sibling (`store.db.autocommit_engine`): its own transaction."""
        return self._run(conn, params, rows=True)

    def count(self, conn: Connection | Engine, params: Mapping[str, Any]) -> int:
        """The rows the statement changed on `conn` (an UPDATE without RETURNING)."""
        return self._run(conn, params, rows=False)

    def execute(self, conn: Connection | Engine, params: Mapping[str, Any]) -> None:
        """Run the statement on `conn` (an INSERT), reading no answer."""
        self._run(conn, params, rows=None)

    def _run(self, conn: Connection | Engine, params: Mapping[str, Any], *,
             rows: bool | None) -> Any:
        values = dict(self._fixed)
        binds = self._binds
        for name, value in params.items():  # _bound, inlined: a create binds 50 values
            processor = binds.get(name)
            values[name] = value if processor is None else processor(value)
        bound: Any = values if self._order is None else tuple(values[n] for n in self._order)
        if isinstance(conn, Engine):
            found = self._alone(autocommit_engine(conn), bound, rows)
        else:
            if not conn.in_transaction():  # autobegin, as Connection.execute does: commit()
                conn.begin()  # then commits (a no-op under AUTOCOMMIT); `begin` events fire
            found = self._on(conn, conn.connection, bound, rows)
        if rows is not True or found is None or not self._converts:
            return found
        row = list(found)
        for at, convert in self._converts:
            row[at] = convert(row[at])
        return tuple(row)

    def _alone(self, engine: Engine, bound: Any, rows: bool | None) -> Any:
        """Run on the connection this thread holds out of `engine`'s pool for statements run
        alone (`store.db.held_connection`), without a SQLAlchemy Connection (whose making,
        closing and checks cost as much CPU as the statement's own client work); one is
        made around it only for an error, after which the connection goes back."""
        pooled = held_connection(engine)
        try:
            return self._on(engine, pooled, bound, rows)
        except BaseException:
            let_go(engine)
            raise

    def _on(self, owner: Connection | Engine, pooled: PoolProxiedConnection, bound: Any,
            rows: bool | None) -> Any:
        """Execute on `pooled`, the DB-API connection of `owner` (a Connection, or the
        engine whose pool the thread holds it out of for statements run alone)."""
        cursor = pooled.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, bound, **self._options)
            if rows is None:
                return None
            if not rows:
                return cursor.rowcount
            # none from a statement that returns no rows (an UPDATE without RETURNING; not
            # asked of the cursor: psycopg describes every column at each asking)
            return cursor.fetchone() if self._rows else None
        except self._error as exc:
            # SQLAlchemy's own handling of a driver's error, as Connection.execute does it:
            # wrapped in sqlalchemy.exc, a dropped connection invalidated with the pool's
            # older ones. (Private to SQLAlchemy; tests/test_driver.py holds it to this.)
            conn = owner if isinstance(owner, Connection) else Connection(owner, pooled)
            conn._handle_dbapi_exception(exc, self.sql, bound, cursor, None)
            raise  # not reached: the call above raises
        finally:
            cursor.close()


def _sized_int(type_: Any) -> Callable[[Any], Any] | None:
    """For psycopg, an integer column's values sent as its own PostgreSQL type. psycopg sends
    a Python int as the smallest type that holds it (0 as smallint, a duration in
    nanoseconds as integer or bigint), and a prepared statement is one per query and
    parameter types: a run's end was prepared anew, and planned for its parameters five
    times over, for each size its numbers came in."""
    from psycopg.types.numeric import Int2, Int4, Int8

    if not isinstance(type_, Integer):
        return None
    sized = Int8 if isinstance(type_, BigInteger) else Int2 if isinstance(
        type_, SmallInteger) else Int4
    return lambda value: value if value is None else sized(value)


def insert_of(table: Table, names: tuple[str, ...] | None = None) -> Insert:
    """An INSERT into `table` of the columns `names` (default: every column), each bound as
    `p_<name>` (a parameter named as its column is reserved by SQLAlchemy in VALUES)."""
    columns = [table.c[name] for name in names] if names else list(table.c)
    return insert(table).values(
        {column.key: bindparam(f"p_{column.key}", type_=column.type) for column in columns})


@cache
def driven(statement: Executable, dialect: Dialect) -> DriverStatement:
    """`statement` compiled for `dialect`, once (statements are module constants: cached by
    identity)."""
    return DriverStatement(statement, dialect)
