"""Statements over a batch of rows (the beat's claim, the publisher's bookkeeping).

PostgreSQL gets each column as one array parameter (`unnest`, `= ANY`): a 500-row batch is
one short statement with a handful of parameters, which psycopg parses once and PostgreSQL
plans once. A multi-row VALUES or an IN list of 500 placeholders costs more to parse in
psycopg than to run, and executemany is one statement per row. SQLite gets executemany and
IN lists, which sqlite3 runs in C. A batch of at most `FEW` rows gets the plain statement on
both: SQLAlchemy caches its compiled form, while the array form is built per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Table,
    any_,
    bindparam,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import TypeEngine

# Up to this many rows, a batch statement is the plain one (executemany, a VALUES list): the
# array form is built per call, which costs more than a few rows' parameters save.
FEW = 8


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def lock_for_write(session: Session) -> None:
    """SQLite has no row locks: take the database's write lock at the start of the caller's
    transaction (BEGIN IMMEDIATE; other writers wait on busy_timeout), so the rows it reads
    cannot change before it writes them. Other databases: nothing (lock rows instead)."""
    if session.get_bind().dialect.name != "sqlite":
        return
    if not session.connection().connection.dbapi_connection.in_transaction:
        session.execute(text("BEGIN IMMEDIATE"))


def array(values: Sequence[Any], item_type: TypeEngine[Any]) -> BindParameter[Any]:
    """A PostgreSQL array parameter (its items bound as `item_type`)."""
    return bindparam(None, list(values), type_=ARRAY(item_type))


def one_of(session: Session, column: ColumnClause, values: Sequence[Any]) -> ColumnElement[bool]:
    """`column IN values`: one array parameter on PostgreSQL."""
    if is_postgresql(session):
        return column == any_(array(values, column.type))
    return column.in_(values)


def unnest(columns: dict[str, tuple[Sequence[Any], TypeEngine[Any]]]) -> TableValuedAlias:
    """PostgreSQL: rows from parallel arrays, `{name: (values, item type)}`, as a FROM item."""
    params = [array(values, item_type) for values, item_type in columns.values()]
    return func.unnest(*params).table_valued(*columns).render_derived()


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (dicts with the same keys) in one statement on PostgreSQL; past `FEW`
    rows, from arrays, where a column with the same value in every row is one scalar
    parameter instead of an array."""
    if not rows:
        return
    if len(rows) <= FEW or not is_postgresql(session):
        session.execute(insert(table), list(rows))
        return
    first = rows[0]
    same = [name for name in first if all(row[name] == first[name] for row in rows)]
    varying = {
        name: ([row[name] for row in rows], table.c[name].type)
        for name in first
        if name not in same
    }
    source = unnest(varying)
    constants = [bindparam(None, first[name], type_=table.c[name].type) for name in same]
    names = [*varying, *same]
    session.execute(insert(table).from_select(names, select(*source.c, *constants)))
